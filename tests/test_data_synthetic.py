"""Synthetic data (data/synthetic.py: synthetic:NAME or synthetic:CxHxW:K[:N]): its shapes, the same data in every
process, the specs it refuses, and a model that learns it, with real torch."""

import subprocess
import sys

import pytest
import torch
from helpers import one_line

from autotrick.data import describe_data, load_data
from autotrick.errors import ConfigError


def test_synthetic_shapes_and_sizes() -> None:
    data = load_data("synthetic:cifar10:500")
    assert data.train_x.shape == (500, 3, 32, 32) and data.val_x.shape == (100, 3, 32, 32)
    assert data.train_x.dtype == torch.uint8 and data.num_classes == 10 and data.name == "synthetic:cifar10:500"
    assert (data.crop_padding, data.flip) == (0, False)
    assert set(data.train_y.tolist()) == set(range(10))
    mnist = load_data("synthetic:mnist:50")
    assert mnist.train_x.shape == (50, 1, 28, 28) and mnist.num_classes == 10
    custom = load_data("synthetic:3x12x20:7:40")
    assert custom.train_x.shape == (40, 3, 12, 20) and custom.val_x.shape == (8, 3, 12, 20)
    assert custom.num_classes == 7
    big = describe_data("synthetic:imagenet")  # described, not generated
    assert (big.num_classes, big.in_channels, big.image_size, big.train_count) == (1000, 3, (224, 224), 10_000)
    assert big.decoded_bytes == 12_000 * 3 * 224 * 224 and not big.streamable


def test_synthetic_data_is_the_same_in_every_process() -> None:
    from autotrick.data.synthetic import synthetic_splits

    here = synthetic_splits("synthetic:3x8x8:3:20")
    code = ("from autotrick.data.synthetic import synthetic_splits; import sys; "
            "sys.stdout.buffer.write(synthetic_splits('synthetic:3x8x8:3:20')[0].numpy().tobytes())")
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=120).stdout
    assert there == here[0].numpy().tobytes()
    assert not torch.equal(synthetic_splits("synthetic:3x8x8:3:21")[0][:20], here[0])  # another spec, other data


@pytest.mark.parametrize(("spec", "expected"), [
    ("synthetic:svhn", "unknown shape 'svhn'"), ("synthetic:3x32x32", "class count"),
    ("synthetic:cifar10:lots", "'lots' is not a whole number"), ("synthetic:2x32x32:10", "out of range"),
    ("synthetic:cifar10:1:2", "too many"), ("synthetic:3x2x32:10", "out of range")])
def test_bad_synthetic_specs_name_the_form(spec: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_data(spec)
    assert expected in one_line(error) and "synthetic:CxHxW:K[:N]" in str(error.value)


def test_a_cnn_learns_synthetic_data_well_above_chance() -> None:
    from autotrick.trainer import TrainConfig, run_trial

    result = run_trial({}, TrainConfig(data="synthetic:cifar10:1000", epochs=2, batch_size=64, threads=1))
    assert result.outcome == "finished" and result.val_accuracy > 0.5  # chance: 0.1
