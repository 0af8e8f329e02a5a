"""Augmentation policies on top of the data set's basic crop and flip: torchvision's v2 policies,
batched on the device (autotrick.augment), each image its own draw.

autoaugment: learned policies (Cubuk et al., 2019) for imagenet, cifar10 or svhn.
randaugment: num_ops random ops at one shared magnitude (Cubuk et al., 2020).
trivialaugment: one random op at a random magnitude (Müller & Hutter, 2021).
"""

from autotrick.augment.policies import AutoAugment, Policy, RandAugment, TrivialAugmentWide
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


def policy_transform(*, policy: str, autoaugment_policy: str = "imagenet", num_ops: int = 2,
                     magnitude: int = 9) -> Policy | None:
    """The policy as a batched transform, `transform(images, generator)` on uint8 (N, C, H, W) on any
    device, each image its own draw from `generator` (a CPU generator); None for "none"."""
    if policy == "none":
        return None
    if policy == "autoaugment":
        return AutoAugment(autoaugment_policy)
    if policy == "randaugment":
        return RandAugment(num_ops=num_ops, magnitude=magnitude)
    if policy == "trivialaugment":
        return TrivialAugmentWide()
    raise ValueError(f"unknown augment policy {policy!r}; expected one of {', '.join(POLICIES)}")
