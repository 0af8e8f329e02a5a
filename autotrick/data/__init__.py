"""Data sets: where examples come from and how they reach the device, one module per job.

  sources     the data sets by spec (digits, torchvision's on-disk sets, image folders, the user's
              function), loaded whole as uint8 tensors, or described without decoding
  synthetic   synthetic:SHAPE: generated, learnable data of a known shape (throughput checks)
  placement   in memory or streamed: the decoded size against a memory budget, or --data-mode
  feed        batches on the device; the in-memory feed
  stream      the streamed feed: a DataLoader with persistent workers, JPEG decoded on the GPU

A package rather than one module: the in-memory loaders, the generator, the budget and the
streaming loader each have their own imports and tests, and a trainer needs only `open_feed`.
"""

from autotrick.data.feed import Feed, open_feed
from autotrick.data.placement import DATA_MODES, DataPlan, check_data_mode, plan_data
from autotrick.data.sources import (
    DATASETS,
    EXPECTED,
    DataSize,
    ImageData,
    absolute_data_spec,
    describe_data,
    load_data,
)

__all__ = [
    "DATASETS", "DATA_MODES", "EXPECTED", "DataPlan", "DataSize", "Feed", "ImageData", "absolute_data_spec",
    "check_data_mode", "describe_data", "load_data", "open_feed", "plan_data",
]
