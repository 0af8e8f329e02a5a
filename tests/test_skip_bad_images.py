"""--skip-bad-images: an image folder with a truncated JPEG and a file that is not an image trains
on its readable images, in memory and streamed through real DataLoader workers, in `train` and in
a real search (real Ray, real MLflow), and says how many it skipped and which."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autotrick.data import load_data, open_feed
from autotrick.data.bad_images import skipped_images, skipped_line
from autotrick.errors import DataError
from tests.test_bad_data import jpeg_folder

BAD = {"train/red/1.jpg": None, "val/blue/0.jpg": b"<html>not an image</html>"}  # None: truncated


def test_in_memory_the_unreadable_files_are_left_out_and_counted(tmp_path: Path) -> None:
    root = jpeg_folder(tmp_path / "pets", BAD)
    data = load_data(f"imagefolder:{root}", skip_bad_images=True)
    # 6 + 6 training images less the truncated one, 3 + 3 validation images less the HTML file
    assert (len(data.train_y), len(data.val_y)) == (11, 5)
    assert data.train_y.bincount().tolist() == [6, 5] and data.val_y.bincount().tolist() == [2, 3]
    assert skipped_images(f"imagefolder:{root}") == (str(root / "train/red/1.jpg"), str(root / "val/blue/0.jpg"))
    with pytest.raises(DataError, match=r"1\.jpg"):  # without the flag: today's refusal
        load_data(f"imagefolder:{root}")


def test_streamed_the_loader_reads_only_the_readable_files(tmp_path: Path) -> None:
    root = jpeg_folder(tmp_path / "pets", BAD)
    feed = open_feed(f"imagefolder:{root}", None, device=torch.device("cpu"), mode="stream", workers=1,
                     skip_bad_images=True)
    assert feed.mode == "stream" and (feed.size.train_count, feed.size.val_count) == (11, 5)
    train = [labels for _, labels in feed.train_batches(torch.arange(11), 4)]
    val = [labels for _, labels in feed.val_batches()]
    assert torch.cat(train).bincount().tolist() == [6, 5] and torch.cat(val).bincount().tolist() == [2, 3]


def test_the_line_names_the_first_few_and_counts_the_rest() -> None:
    assert skipped_line(()) == ""
    assert skipped_line(("a.jpg",)) == "skipped 1 unreadable image (--skip-bad-images): a.jpg"
    assert skipped_line(tuple(f"{i}.jpg" for i in range(5))) == \
        "skipped 5 unreadable images (--skip-bad-images): 0.jpg, 1.jpg, 2.jpg and 2 more"


def test_a_folder_of_only_unreadable_images_is_refused_in_one_line(tmp_path: Path) -> None:
    root = jpeg_folder(tmp_path / "pets", {f"val/{c}/{i}.jpg": b"junk" for c in ("red", "blue") for i in range(3)})
    with pytest.raises(DataError, match=r"no readable images in .*/val \(--skip-bad-images skipped all 6"):
        load_data(f"imagefolder:{root}", skip_bad_images=True)


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_train_skips_counts_and_names_them_in_one_line(tmp_path: Path, mode: str) -> None:
    root = jpeg_folder(tmp_path / "pets", BAD)
    done = subprocess.run([sys.executable, "-m", "autotrick", "train", "--data", f"imagefolder:{root}",
                           "--data-mode", mode, "--epochs", "1", "--skip-bad-images"], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert f"skipped 2 unreadable images (--skip-bad-images): {root}/train/red/1.jpg, {root}/val/blue/0.jpg" in lines
    # 16 readable images of 3x32x32 bytes: the data set trained on is the readable one
    assert "(49.2 KB decoded" in lines[0] and f"data {'in memory' if mode == 'memory' else 'streamed'}" in lines[0]
    assert lines[-1].startswith("finished: ") and "Traceback" not in done.stderr
