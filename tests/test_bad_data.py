"""A file the data set cannot read is named in one line: an image folder with a corrupt, a
truncated and a not-an-image JPEG, and a decompression bomb, read in memory, streamed through real
DataLoader workers, and in a real search's trial (its line and its MLflow run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image

from autotrick.commands import SearchRequest, run_search_command
from autotrick.data import load_data
from autotrick.errors import DataError
from autotrick.tracking import TAG_REASON, TAG_ROLE

COLORS = {"blue": (0, 0, 255), "red": (255, 0, 0)}


def jpeg_folder(root: Path, bad: dict[str, bytes | None]) -> Path:
    """A two-class folder of 20x20 JPEGs; `bad` maps a file (train/red/1.jpg) to the bytes it
    gets instead (None: its own first half, a truncated JPEG)."""
    for split, count in (("train", 6), ("val", 3)):
        for name, color in COLORS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (20, 20), color).save(root / split / name / f"{i}.jpg", quality=90)
    for file, data in bad.items():
        path = root / file
        path.write_bytes(data if data is not None else path.read_bytes()[: path.stat().st_size // 2])
    return root


def refusal(root: Path, file: str, why: str) -> str:
    return (f"imagefolder:{root}: cannot read image {root / file} ({why}): replace or remove it, "
            "or pass --skip-bad-images")


def test_a_truncated_jpeg_in_memory_is_named(tmp_path: Path) -> None:
    root = jpeg_folder(tmp_path / "pets", {"train/red/1.jpg": None})
    with pytest.raises(DataError) as refused:
        load_data(f"imagefolder:{root}")
    assert str(refused.value) == refusal(root, "train/red/1.jpg", "Truncated File Read")


def test_a_file_that_is_not_an_image_is_named(tmp_path: Path) -> None:
    root = jpeg_folder(tmp_path / "pets", {"val/blue/0.jpg": b"<html>not an image</html>"})
    with pytest.raises(DataError) as refused:
        load_data(f"imagefolder:{root}")
    assert str(refused.value) == refusal(root, "val/blue/0.jpg", "cannot identify image file")


@pytest.mark.parametrize("limit", [300, 150], ids=["over-twice-the-limit", "over-the-limit"])
def test_a_decompression_bomb_is_refused_before_it_is_decoded(tmp_path: Path, limit: int,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """PIL raises above twice MAX_IMAGE_PIXELS and only warns above it: both are refused (the
    20x20 = 400-pixel images stand for a bomb against a lowered limit)."""
    root = jpeg_folder(tmp_path / "pets", {})
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(DataError, match=r"cannot read image .*/0\.jpg \(Image size \(400 pixels\) exceeds limit"):
        load_data(f"imagefolder:{root}")


def test_a_corrupt_jpeg_streamed_is_one_line_naming_it(tmp_path: Path) -> None:
    """`train --data-mode stream`: the DataLoader worker's exception comes back as its own line,
    not the worker's traceback."""
    root = jpeg_folder(tmp_path / "pets", {"train/blue/2.jpg": b"\xff\xd8\xff\xe0 cut"})
    done = subprocess.run([sys.executable, "-m", "autotrick", "train", "--data", f"imagefolder:{root}",
                           "--data-mode", "stream", "--epochs", "1"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 2, done.stdout + done.stderr
    expected = refusal(root, "train/blue/2.jpg", "Truncated File Read")  # a JPEG header, then nothing
    assert done.stderr.strip().splitlines() == [f"autotrick: error: {expected}"]


@pytest.mark.slow
def test_a_corrupt_jpeg_is_a_searchs_trial_reason(ray_address: str, workdir: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    root = jpeg_folder(workdir / "pets", {"train/red/1.jpg": None})
    uri = f"sqlite:///{workdir}/mlflow.db"
    code = run_search_command(SearchRequest(space="quick", data=f"imagefolder:{root}", trials=1, max_epochs=1,
                                            name="badimage", tracking_uri=uri))
    out = capsys.readouterr().out
    assert code == 1, out
    expected = f"DataError: {refusal(root, 'train/red/1.jpg', 'Truncated File Read')}"
    [line] = [line for line in out.splitlines() if line.startswith("trial ")]
    assert line.endswith(f"baseline (no tricks) ({expected})") and "Traceback" not in out
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("badimage").experiment_id])
    [child] = [run for run in runs if run.data.tags[TAG_ROLE] == "trial"]
    assert child.data.tags[TAG_REASON] == expected
