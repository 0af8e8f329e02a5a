"""Augmentation as batched tensor ops on uint8 batches, on the batch's device, each image its own
draw (no per-image Python, no host sync).

basic.py: the data set's own random crop and flip, and normalization;
ops.py: the policies' ops (torchvision's v2 functional ops with a magnitude per image);
policies.py: AutoAugment, RandAugment and TrivialAugmentWide, their tables and draws.
"""

from autotrick.augment.basic import basic_augment, normalize
from autotrick.augment.policies import AutoAugment, Policy, RandAugment, TrivialAugmentWide

__all__ = ["AutoAugment", "Policy", "RandAugment", "TrivialAugmentWide", "basic_augment", "normalize"]
