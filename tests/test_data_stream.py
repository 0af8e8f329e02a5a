"""Data larger than memory: image folders and the user's lazy datasets streamed through a DataLoader,
against the in-memory path, with real JPEG files on disk, real torch and real worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from autotrick.cli import main
from autotrick.data import describe_data, open_feed, placement
from autotrick.data.synthetic import synthetic_splits
from autotrick.errors import ConfigError
from autotrick.space import resolve_values
from autotrick.trainer import TrainConfig, run_trial


def jpeg_folder(root: Path, spec: str, *, quality: int = 90) -> Path:
    """The synthetic data set `spec` written as an image folder of JPEG files."""
    train_x, train_y, val_x, val_y = synthetic_splits(spec)
    for split, images, labels in (("train", train_x, train_y), ("val", val_x, val_y)):
        for i, (image, label) in enumerate(zip(images, labels.tolist(), strict=True)):
            folder = root / split / f"class{label:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i}.jpg", quality=quality)
    return root


@pytest.fixture(scope="module")
def small_jpegs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2,400 JPEGs of 32x32 (2,000 to train, 400 to validate), 10 classes."""
    return jpeg_folder(tmp_path_factory.mktemp("jpegs"), "synthetic:3x32x32:10:2000")


def test_streamed_and_in_memory_runs_train_to_the_same_numbers(small_jpegs: Path) -> None:
    """Same pixels (one reader), same batches in the same order (the trainer draws the order),
    same augmentation draws and dropout masks (the loader's worker seeds leave torch's generator
    alone), same normalization (all 2,000 training images are under the
    statistics' sample of 2,048): so the same numbers, not merely the same within seed noise.
    Tolerance 1e-6 relative on the losses (a summation order could differ in the last bits) and
    none on the accuracy."""
    values = resolve_values({"smoothing.eps": 0.1, "dropout.p": 0.3}, "test")
    runs = {}
    for mode in ("stream", "memory", "stream again"):  # again: a worker's later trial, its statistics cached
        config = TrainConfig(model="mlp", data=f"imagefolder:{small_jpegs}", epochs=2, batch_size=64, threads=1,
                             data_mode=mode.split()[0])
        runs[mode] = run_trial(values, config)
    streamed, in_memory = runs["stream"], runs["memory"]
    assert (runs["stream again"].val_loss, runs["stream again"].val_accuracy) == (streamed.val_loss,
                                                                                  streamed.val_accuracy)
    assert streamed.outcome == in_memory.outcome == "finished"
    assert in_memory.val_accuracy > 0.5  # learnt: chance is 0.1
    assert streamed.val_accuracy == in_memory.val_accuracy
    assert [r.train_loss for r in streamed.history] == pytest.approx([r.train_loss for r in in_memory.history],
                                                                     rel=1e-6)
    assert streamed.val_loss == pytest.approx(in_memory.val_loss, rel=1e-6)


def test_a_stream_feeds_the_same_batches_as_memory(small_jpegs: Path) -> None:
    spec = f"imagefolder:{small_jpegs}"
    streamed = open_feed(spec, None, device=torch.device("cpu"), mode="stream", workers=2)
    in_memory = open_feed(spec, None, device=torch.device("cpu"), mode="memory")
    assert (streamed.mode, in_memory.mode) == ("stream", "memory")
    assert streamed.size == describe_data(spec) and streamed.size.train_count == 2000
    assert streamed.mean == in_memory.mean and streamed.std == in_memory.std
    order = torch.randperm(2000, generator=torch.Generator().manual_seed(1))
    for (x1, y1), (x2, y2) in zip(streamed.train_batches(order, 300), in_memory.train_batches(order, 300),
                                  strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert sum(len(y) for _, y in streamed.val_batches()) == 400


def test_auto_streams_what_does_not_fit_and_says_so(small_jpegs: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(placement, "MEMORY_SHARE", 1e-9)  # a budget of a few bytes: nothing fits
    size = describe_data(f"imagefolder:{small_jpegs}")
    assert size.decoded_bytes == 2400 * 3 * 32 * 32 and size.streamable
    assert placement.plan_data(size, "auto", device="cpu").mode == "stream"
    assert placement.plan_data(size, "memory", device="cpu").mode == "memory"  # the user's word wins
    assert placement.plan_data(describe_data("digits"), "auto", device="cpu").mode == "memory"  # cannot stream
    with pytest.raises(ConfigError, match="'digits' is only held in memory"):
        placement.plan_data(describe_data("digits"), "stream", device="cpu")
    with pytest.raises(SystemExit) as exited:
        main(["train", "--data", f"imagefolder:{small_jpegs}", "--model", "mlp", "--epochs", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    assert exited.value.code == 0, out
    assert "data streamed (7.4 MB decoded > " in out.splitlines()[0]
    assert out.splitlines()[-1].startswith("finished: ")


LAZY_DATA = '''
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

SIDE = {side}


class Files(Dataset):
    """Reads each JPEG when asked, at SIDE x SIDE: nothing is held."""

    def __init__(self, folder):
        self.files = sorted(Path(folder).glob("*/*.jpg"))
        self.classes = sorted({{f.parent.name for f in self.files}})
        self.targets = [self.classes.index(f.parent.name) for f in self.files]

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with Image.open(self.files[i]) as image:
            return image.convert("RGB").resize((SIDE, SIDE)), self.targets[i]


def splits():
    return Files({root!r} + "/train"), Files({root!r} + "/val")
'''

TINY_MODEL = '''
import torch.nn as nn


def build(num_classes, in_channels):
    return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(in_channels * 16, num_classes))
'''


MEASURE = """
import json, sys, threading, time
import psutil
import torch
from autotrick.data import open_feed
from autotrick.trainer import TrainConfig, run_trial

spec, model = sys.argv[1], sys.argv[2]
process = psutil.Process()


def peak_rss_growth(run):
    before, peak, done = process.memory_info().rss, [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    run()
    done.set()
    sampler.join()
    return max(peak[0], process.memory_info().rss) - before


def train_streamed():
    config = TrainConfig(model=model, data=spec, epochs=1, batch_size=32, threads=2, data_mode="stream")
    assert run_trial({}, config).outcome == "finished"


train_streamed()  # the first run in a process imports and allocates what later ones reuse
streamed = peak_rss_growth(train_streamed)
held = peak_rss_growth(lambda: open_feed(spec, None, device=torch.device("cpu"), mode="memory"))
print(json.dumps({"stream": streamed, "memory": held}))
"""


def test_streaming_keeps_memory_bounded(small_jpegs: Path, tmp_path: Path) -> None:
    """The 2,400 JPEGs read at 256x256 by the user's lazy dataset: 472 MB decoded. Streamed, the
    process's peak grows by under a third of that (what is in flight: a float32 evaluation batch
    of up to 32 MB, training batches of 32, the loader's prefetched batches); held in memory, by at
    least the data set itself (loading it, so the measurement can see it). Measured in a fresh process whose
    allocator returns big blocks when they are freed (a fixed mmap threshold), so that its RSS
    is what it holds, not what glibc kept; after one unmeasured streamed run, since the first
    run in a process also imports and allocates what every later one reuses."""
    (tmp_path / "lazy.py").write_text(LAZY_DATA.format(side=256, root=str(small_jpegs)))
    (tmp_path / "tiny.py").write_text(TINY_MODEL)
    spec = f"{tmp_path / 'lazy.py'}:splits"
    size = describe_data(spec)
    assert size.streamable and size.image_size == (256, 256) and size.num_classes == 10
    decoded = size.decoded_bytes
    assert decoded == 2400 * 3 * 256 * 256
    done = subprocess.run([sys.executable, "-c", MEASURE, spec, f"{tmp_path / 'tiny.py'}:build"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)})
    assert done.returncode == 0, done.stderr
    growth = json.loads(done.stdout.splitlines()[-1])
    print(f"peak RSS growth: streamed {growth['stream'] / 1e6:.0f} MB, in memory {growth['memory'] / 1e6:.0f} MB, "
          f"decoded {decoded / 1e6:.0f} MB")
    assert growth["stream"] < decoded / 3, (growth, decoded)
    assert growth["memory"] > 0.8 * decoded, (growth, decoded)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_jpeg_folders_stream_with_gpu_decoding(small_jpegs: Path) -> None:
    """On CUDA the workers read bytes and nvJPEG decodes: other decoders and resizing than PIL's,
    so the accuracy is compared within 0.05 (more than the 0.0025 per image of 400 validation
    images, less than a learning failure), not equal."""
    from autotrick.data.stream import StreamFeed

    spec = f"imagefolder:{small_jpegs}"
    feed = open_feed(spec, None, device=torch.device("cuda"), mode="stream", workers=2)
    assert isinstance(feed, StreamFeed) and feed.gpu_decode
    images, _ = next(iter(feed.val_batches()))
    assert images.is_cuda and images.dtype == torch.uint8 and images.shape[1:] == (3, 32, 32)
    accuracy = {}
    for mode in ("stream", "memory"):
        config = TrainConfig(model="mlp", data=spec, epochs=2, batch_size=64, device="cuda", data_mode=mode)
        accuracy[mode] = run_trial({}, config).val_accuracy
    assert accuracy["memory"] > 0.5 and abs(accuracy["stream"] - accuracy["memory"]) < 0.05, accuracy


def test_a_streamed_search_registers_its_best_model(small_jpegs: Path, ray_address: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """--register with data that is never loaded whole: the model is registered, its input example
    two blank images of the data's shape (it used to fail reading a validation split it never had)."""
    import mlflow

    from autotrick.commands import SearchRequest, run_search_command

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = run_search_command(SearchRequest(space="quick", model="mlp", data=f"imagefolder:{small_jpegs}",
                                            data_mode="stream", trials=2, max_epochs=1, name="streamed",
                                            register="streamed-mlp", tracking_uri=uri))
    assert code == 0
    mlflow.set_tracking_uri(uri)
    info = mlflow.models.get_model_info("models:/streamed-mlp/1")
    assert list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 3, 32, 32]


def test_a_lazy_dataset_has_the_class_count_it_tells_in_memory_and_streamed(small_jpegs: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A dataset whose `classes` name more classes than its labels use (a class with no image yet):
    one head for both modes, as its `classes` say."""
    from autotrick.data import load_data

    (tmp_path / "lazy_extra.py").write_text(LAZY_DATA.format(side=8, root=str(small_jpegs)) + '''

class MoreClasses(Files):
    def __init__(self, folder):
        super().__init__(folder)
        self.classes = self.classes + ["unseen"]


def more():
    return MoreClasses({root!r} + "/train"), MoreClasses({root!r} + "/val")
'''.format(root=str(small_jpegs)))
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = "lazy_extra:more"
    assert describe_data(spec).num_classes == load_data(spec).num_classes == 11


def test_a_workers_later_trials_reuse_its_stream_and_its_loader_processes(small_jpegs: Path) -> None:
    feed = open_feed(f"imagefolder:{small_jpegs}", None, device=torch.device("cpu"), mode="stream", workers=2)
    again = open_feed(f"imagefolder:{small_jpegs}", None, device=torch.device("cpu"), mode="stream", workers=2)
    assert again is feed
    first = [len(y) for _, y in feed.val_batches()]
    assert [len(y) for _, y in again.val_batches()] == first == [400]
