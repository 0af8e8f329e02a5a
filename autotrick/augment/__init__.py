"""Augmentation policies on uint8 batches, on the batch's device, each image its own draw.

ops.py: the ops (torchvision's v2 functional ops with a magnitude per image);
policies.py: AutoAugment, RandAugment and TrivialAugmentWide, their tables and draws.
"""

from autotrick.augment.policies import AutoAugment, Policy, RandAugment, TrivialAugmentWide

__all__ = ["AutoAugment", "Policy", "RandAugment", "TrivialAugmentWide"]
