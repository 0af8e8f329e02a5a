"""--skip-bad-images: an image folder with a truncated JPEG and a file that is not an image trains
on its readable images, in memory and streamed through real DataLoader workers, in `train` and in
a real search (real Ray, real MLflow), and says how many it skipped and which."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_bad_data import jpeg_folder

from autotrick.data import load_data, open_feed
from autotrick.data.bad_images import skipped_line
from autotrick.data.image_folder import skipped_images
from autotrick.errors import DataError

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


def test_a_resumed_search_keeps_skip_bad_images(tmp_path: Path) -> None:
    """What the trials train on is what the search compares: a resume may not change it."""
    from autotrick.commands import SearchRequest
    from autotrick.errors import ConfigError
    from autotrick.request import resumed

    stored = {"skip_bad_images": True}
    kept, _ = resumed(SearchRequest(), stored, "pets", same={})
    assert kept.skip_bad_images is True
    with pytest.raises(ConfigError, match=r"--skip-bad-images False: search 'pets' was started with "
                                          r"--skip-bad-images True, and a resumed search keeps it"):
        resumed(SearchRequest(skip_bad_images=False), stored, "pets", same={})


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_a_search_skips_counts_says_and_records_them(ray_address: str, workdir: Path, mode: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow import MlflowClient

    from autotrick.commands import SearchRequest, run_search_command
    from autotrick.tracking import TAG_ROLE

    root = jpeg_folder(workdir / "pets", BAD)
    uri = f"sqlite:///{workdir}/mlflow.db"
    code = run_search_command(SearchRequest(space="quick", data=f"imagefolder:{root}", trials=1, max_epochs=1,
                                            name="skipping", tracking_uri=uri, data_mode=mode, no_confirm=True,
                                            skip_bad_images=True))
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    assert lines.count(f"skipped 2 unreadable images (--skip-bad-images): {root}/train/red/1.jpg, "
                       f"{root}/val/blue/0.jpg") == 1
    assert f"data {'in memory' if mode == 'memory' else 'streamed'} (49.2 KB decoded" in lines[0]  # 16 images
    [trial] = [line for line in lines if line.startswith("trial ")]
    assert " finished " in trial and "Error" not in out, out
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("skipping").experiment_id])
    [parent] = [run for run in runs if run.data.tags[TAG_ROLE] == "parent"]
    [child] = [run for run in runs if run.data.tags[TAG_ROLE] == "trial"]
    assert parent.data.params["skipped_images"] == "2" and parent.info.status == "FINISHED"
    assert child.info.status == "FINISHED" and 0 <= child.data.metrics["val_accuracy"] <= 1
    stored = json.loads((workdir / ".autotrick" / "skipping" / "request.json").read_text())
    assert stored["skip_bad_images"] is True
