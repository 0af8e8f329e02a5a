"""What a data set is, as measured once: its shape, class count and sizes. Every layer that needs
the data's size (the model, the placement, the feeds, the search's header) reads this."""

from __future__ import annotations

from dataclasses import dataclass

VAL_BATCH = 1024  # evaluation batch at most
VAL_BATCH_VALUES = 2**23  # and at most 32 MB as float32: 1024 CIFAR images, 55 at 3x224x224


@dataclass(frozen=True)
class DataSize:
    """What a data set is, told without decoding it where possible: enough to build the model and
    to decide whether it fits in memory (autotrick.data.placement)."""

    name: str
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    train_count: int
    val_count: int
    streamable: bool  # can be read batch by batch (image folders, the user's lazy datasets)

    @property
    def decoded_bytes(self) -> int:
        """Both splits as uint8 tensors: what the in-memory path holds."""
        return (self.train_count + self.val_count) * self.in_channels * self.image_size[0] * self.image_size[1]

    @property
    def val_batch_size(self) -> int:
        """The evaluation batch, in memory and streamed alike (so the two sum alike): VAL_BATCH
        images, fewer when they are big."""
        return max(1, min(VAL_BATCH, VAL_BATCH_VALUES // (self.in_channels * self.image_size[0] * self.image_size[1])))
