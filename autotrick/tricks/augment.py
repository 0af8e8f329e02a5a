"""Augmentation policies on top of the data set's basic crop and flip (torchvision.transforms.v2).

autoaugment: learned policies (Cubuk et al., 2019) for imagenet, cifar10 or svhn.
randaugment: num_ops random ops at one shared magnitude (Cubuk et al., 2020).
trivialaugment: one random op at a random magnitude (Müller & Hutter, 2021).
"""

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
