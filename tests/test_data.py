"""The data sets autotrick reads (data/sources.py): digits, torchvision's on-disk layouts, imagefolder and the user's
own function, with real torch, sklearn, torchvision and files on disk (synthetic data: test_data_synthetic.py)."""

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import one_line
from PIL import Image

from autotrick.data import DATASETS, ImageData, absolute_data_spec, load_data
from autotrick.errors import ConfigError, DataError

# --- digits ------------------------------------------------------------------------------------


def test_digits_shapes_dtypes_and_split() -> None:
    data = load_data("digits")
    assert data.train_x.shape == (1437, 1, 8, 8) and data.val_x.shape == (360, 1, 8, 8)
    assert data.train_x.dtype == data.val_x.dtype == torch.uint8
    assert data.train_y.shape == (1437,) and data.val_y.shape == (360,)
    assert data.train_y.dtype == data.val_y.dtype == torch.int64
    assert (data.num_classes, data.in_channels, data.image_size) == (10, 1, (8, 8))
    assert (data.crop_padding, data.flip, data.name) == (1, False, "digits")
    assert int(data.train_x.max()) == 255 and int(data.train_x.min()) == 0
    assert set(data.train_y.tolist()) == set(range(10)) == set(data.val_y.tolist())


def test_digits_is_sklearns_load_digits_in_the_reference_split() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(np.round(digits.images * 255 / 16)).to(torch.uint8).unsqueeze(1)
    order = torch.randperm(1797, generator=torch.Generator().manual_seed(0))
    data = load_data("digits")
    assert torch.equal(data.train_x, x[order[:1437]]) and torch.equal(data.val_x, x[order[1437:]])
    assert torch.equal(data.train_y, torch.from_numpy(digits.target)[order[:1437]])


def test_digits_is_cached_and_deterministic() -> None:
    from autotrick.data import sources as data_module

    first = load_data("digits")
    assert load_data("digits") is first  # once per process, not once per trial
    data_module._load.cache_clear()
    again = load_data("digits")
    assert again is not first
    assert torch.equal(again.train_x, first.train_x) and torch.equal(again.val_y, first.val_y)


def test_mean_and_std_come_from_the_training_split() -> None:
    data = load_data("digits")
    pixels = data.train_x.double() / 255
    assert data.mean == pytest.approx((pixels.mean().item(),))
    assert data.std == pytest.approx((pixels.std(unbiased=False).item(),))
    assert 0.1 < data.mean[0] < 0.5 and 0.2 < data.std[0] < 0.5


def test_image_size_resizes_both_splits() -> None:
    data = load_data("digits", image_size=16)
    assert data.train_x.shape == (1437, 1, 16, 16) and data.val_x.shape == (360, 1, 16, 16)
    assert data.train_x.dtype == torch.uint8 and data.num_classes == 10
    with pytest.raises(ConfigError):
        load_data("digits", image_size=0)


# --- torchvision's on-disk layouts ---------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """MNIST's idx format: zero, zero, type 0x08 (ubyte), ndim, big-endian sizes, then the bytes."""
    path.write_bytes(struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
                     + array.astype(np.uint8).tobytes())


def fake_mnist(root: Path, folder: str, n_train: int = 6, n_test: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": np.arange(n_train) % 10,
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": (np.arange(n_test) + 3) % 10}
    for name, array in arrays.items():
        write_idx(raw / name, array)
    return arrays


@pytest.mark.parametrize(("spec", "folder", "flip"),
                         [("mnist", "MNIST", False), ("fashion_mnist", "FashionMNIST", True)])
def test_mnist_raw_idx_files_load(tmp_path: Path, spec: str, folder: str, flip: bool) -> None:
    arrays = fake_mnist(tmp_path, folder)
    data = load_data(spec, tmp_path)
    assert isinstance(data, ImageData)
    assert data.train_x.shape == (6, 1, 28, 28) and data.val_x.shape == (4, 1, 28, 28)
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    train_images = torch.from_numpy(arrays["train-images-idx3-ubyte"].astype(np.uint8))
    assert torch.equal(data.train_x[:, 0], train_images)
    assert data.val_y.tolist() == [3, 4, 5, 6]
    assert data.num_classes == 7  # max label + 1 over both splits: the fake has no 7, 8, 9
    assert (data.crop_padding, data.flip) == (2, flip)
    # Pointing at the data set's own folder is accepted too.
    assert torch.equal(load_data(spec, tmp_path / folder).val_x, data.val_x)


def test_missing_cifar_folder_names_it(tmp_path: Path) -> None:
    with pytest.raises(DataError) as error:
        load_data("cifar10", tmp_path)
    message = one_line(error)
    assert str(tmp_path) in message and "cifar-10-batches-py" in message and "never downloads" in message
    with pytest.raises(DataError) as error:
        load_data("cifar100", None)
    assert "--data-dir" in one_line(error) and "cifar-100-python" in str(error.value)


def test_corrupted_cifar_files_are_a_data_error(tmp_path: Path) -> None:
    # CIFAR-10's real pickle layout with a few images: torchvision checks each file's MD5 against
    # the official release, so a fake cannot load, and the failure must say which folder is bad.
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), "labels": [0, 1]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a", "b"]}))
    with pytest.raises(DataError) as error:
        load_data("cifar10", tmp_path)
    assert str(folder) in one_line(error) and "cifar-10-python.tar.gz" in str(error.value)


# --- imagefolder -------------------------------------------------------------------------------


COLORS = {"blue": (0, 0, 255), "red": (255, 0, 0)}


def image_folder(root: Path, split_sizes: dict[str, int]) -> Path:
    for split, n in split_sizes.items():
        for name, color in COLORS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (10, 12), color).save(root / split / name / f"{i}.png")
    return root


def test_imagefolder_loads_resized_rgb(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "pets", {"train": 3, "val": 2})
    data = load_data(f"imagefolder:{root}")
    assert data.train_x.shape == (6, 3, 32, 32) and data.val_x.shape == (4, 3, 32, 32)
    assert data.num_classes == 2 and data.train_y.tolist() == [0, 0, 0, 1, 1, 1]  # blue, red: sorted
    assert data.train_x[0, :, 5, 5].tolist() == [0, 0, 255]
    assert data.val_x[-1, :, 5, 5].tolist() == [255, 0, 0]
    assert load_data(f"imagefolder:{root}", image_size=16).val_x.shape == (4, 3, 16, 16)


def test_relative_specs_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = image_folder(tmp_path / "pets", {"train": 1, "val": 1})
    monkeypatch.chdir(tmp_path)
    assert absolute_data_spec("imagefolder:pets") == f"imagefolder:{root}"
    assert absolute_data_spec("my_data.py:load") == f"{tmp_path / 'my_data.py'}:load"
    assert absolute_data_spec("my_data:load") == "my_data:load" and absolute_data_spec("digits") == "digits"
    relative = load_data("imagefolder:pets")
    monkeypatch.chdir(root)  # elsewhere, the absolute spec finds the same (cached) data
    assert load_data(f"imagefolder:{root}") is relative


def test_imagefolder_says_what_to_put_where(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "only_train", {"train": 1})
    with pytest.raises(DataError) as error:
        load_data(f"imagefolder:{root}")
    assert str(root / "val") in one_line(error) and "train/<class>/" in str(error.value)
    (root / "val" / "blue").mkdir(parents=True)
    with pytest.raises(DataError) as error:
        load_data(f"imagefolder:{root}")
    assert "no images" in one_line(error) and str(root / "val") in str(error.value)
    (root / "val" / "cat").mkdir()
    with pytest.raises(DataError) as error:
        load_data(f"imagefolder:{root}")
    assert "val classes cat" in one_line(error)
    empty = tmp_path / "empty"
    (empty / "train" / "cat").mkdir(parents=True)
    (empty / "val").mkdir()
    with pytest.raises(DataError) as error:
        load_data(f"imagefolder:{empty}")
    assert "cat" in one_line(error)


# --- the user's own function -------------------------------------------------------------------


USER_DATA = '''
import torch
from PIL import Image
from torch.utils.data import TensorDataset


def tensor_datasets():
    x = torch.linspace(0, 1, 5 * 3 * 4 * 4).view(5, 3, 4, 4)
    return TensorDataset(x, torch.tensor([0, 1, 2, 0, 1])), TensorDataset(x[:2], torch.tensor([4, 0]))


def tuples(data_dir=None):
    assert data_dir is not None
    x = torch.arange(6 * 2 * 2, dtype=torch.uint8).view(6, 2, 2)  # (N, H, W): one channel
    return (x, torch.arange(6) % 3), (x[:3], torch.tensor([0, 1, 2]))


def pil_samples():
    images = [(Image.new("L", (4, 4), 10 * i), i % 2) for i in range(4)]
    return images, images[:2]


def normalized():
    x = torch.randn(4, 1, 4, 4)
    return (x, torch.zeros(4, dtype=torch.long)), (x, torch.zeros(4, dtype=torch.long))


def one_split():
    return torch.zeros(3, 1, 4, 4)
'''


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_data.py"
    path.write_text(USER_DATA)
    return path


def test_user_function_returning_tensor_datasets(user_file: Path) -> None:
    data = load_data(f"{user_file}:tensor_datasets")
    assert data.train_x.shape == (5, 3, 4, 4) and data.train_x.dtype == torch.uint8
    assert int(data.train_x.min()) == 0 and int(data.train_x.max()) == 255  # [0, 1] floats -> 0..255
    assert data.num_classes == 5 and (data.crop_padding, data.flip) == (0, False)
    assert len(data.mean) == 3


def test_user_function_returning_tuples_gets_data_dir(user_file: Path, tmp_path: Path) -> None:
    data = load_data(f"{user_file}:tuples", tmp_path)
    assert data.train_x.shape == (6, 1, 2, 2) and data.val_x.shape == (3, 1, 2, 2)
    assert torch.equal(data.train_x.flatten(), torch.arange(24, dtype=torch.uint8))
    assert data.num_classes == 3


def test_user_function_yielding_pil_images(user_file: Path) -> None:
    data = load_data(f"{user_file}:pil_samples")
    assert data.train_x.shape == (4, 1, 4, 4) and data.train_x[:, 0, 0, 0].tolist() == [0, 10, 20, 30]


def test_user_module_function(user_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(user_file.parent))
    assert load_data("my_data:tensor_datasets").train_x.shape == (5, 3, 4, 4)


@pytest.mark.parametrize(("function", "expected"), [
    ("normalized", "[0, 1]"), ("one_split", "(train, val)"), ("missing", "no function 'missing'")])
def test_user_function_mistakes_are_config_errors(user_file: Path, function: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_data(f"{user_file}:{function}")
    assert expected in one_line(error) and f"{user_file}:{function}" in str(error.value)


def test_user_file_that_does_not_import(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import not_a_module_anywhere\n")
    with pytest.raises(ConfigError) as error:
        load_data(f"{tmp_path / 'broken.py'}:f")
    assert "not_a_module_anywhere" in one_line(error)
    with pytest.raises(ConfigError) as error:
        load_data(f"{tmp_path / 'absent.py'}:f")
    assert "not found" in one_line(error)


def test_unknown_spec_lists_the_alternatives() -> None:
    with pytest.raises(ConfigError) as error:
        load_data("imagenet")
    message = one_line(error)
    assert "'imagenet'" in message and ", ".join(DATASETS) in message
    assert "imagefolder:DIR" in message and "path/file.py:function" in message
