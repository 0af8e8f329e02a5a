"""Augmentation as batched tensor ops on the device: the data set's own crop, flip and
normalization (`basic`)."""

from autotrick.augment.basic import basic_augment, normalize

__all__ = ["basic_augment", "normalize"]
