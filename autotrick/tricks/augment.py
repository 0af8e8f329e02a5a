"""Augmentation policies on top of the data set's basic crop and flip (torchvision.transforms.v2).

autoaugment: learned policies (Cubuk et al., 2019) for imagenet, cifar10 or svhn.
randaugment: num_ops random ops at one shared magnitude (Cubuk et al., 2020).
trivialaugment: one random op at a random magnitude (Müller & Hutter, 2021).
"""

from collections.abc import Callable

import torch
from torch import Tensor

from autotrick.params import Param, Trick, When

POLICIES = ("none", "autoaugment", "randaugment", "trivialaugment")
_RAND = When("policy", ("randaugment",))

AUGMENT = Trick(
    name="augment",
    summary="augmentation policy: none | autoaugment | randaugment (N ops, magnitude M) | trivialaugment",
    params=(
        Param("policy", "choice", "none", "policy applied after the basic crop and flip", choices=POLICIES),
        Param("autoaugment_policy", "choice", "imagenet", "which learned AutoAugment policy",
              choices=("imagenet", "cifar10", "svhn"), when=When("policy", ("autoaugment",))),
        Param("num_ops", "int", 2, "RandAugment: ops per image", low=1, high=3, bounds=(1, 10), when=_RAND),
        Param("magnitude", "int", 9, "RandAugment: shared magnitude (of 31 bins)", low=1, high=15,
              bounds=(0, 30), when=_RAND),
    ),
)

Transform = Callable[[Tensor], Tensor]


def policy_transform(*, policy: str, autoaugment_policy: str = "imagenet", num_ops: int = 2,
                     magnitude: int = 9) -> Transform | None:
    """The policy as a transform of one uint8 image tensor (C, H, W); None for "none".

    Its randomness is torch's global generator (torchvision's transforms take no other).
    """
    if policy == "none":
        return None
    from torchvision.transforms import v2  # imported on first use: ~2 s a process otherwise

    if policy == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy(autoaugment_policy))
    if policy == "randaugment":
        return v2.RandAugment(num_ops=num_ops, magnitude=magnitude)
    if policy == "trivialaugment":
        return v2.TrivialAugmentWide()
    raise ValueError(f"unknown augment policy {policy!r}; expected one of {', '.join(POLICIES)}")


def augment_batch(images: Tensor, transform: Transform | None) -> Tensor:
    """Apply `transform` to every image of a uint8 (N, C, H, W) CPU batch; None returns it as is.

    One image at a time: given the whole batch, a v2 transform would draw a single op for all of it.
    Works for 1 or 3 channels, down to 8x8 (checked on every policy with torchvision 0.29).
    """
    if transform is None:
        return images
    if images.dtype != torch.uint8:  # posterize, solarize and equalize are defined on 0..255
        raise TypeError(f"augment_batch needs uint8 images, got {images.dtype}")
    return torch.stack([transform(image) for image in images])
