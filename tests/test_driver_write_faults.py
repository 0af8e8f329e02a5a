"""Every write on the driver's disk may fail, for `export` and `train` as for `search`
(tests/test_store_faults.py): a full disk (a small tmpfs) or a read-only folder (a read-only bind
mount), each in a private mount namespace (as root; skipped where unshare is not allowed), is one
line naming the file and the cause, exit 1, and nothing half-written."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from test_deploy import trial_run  # noqa: F401  (a fixture: a run with a logged model and its recipe)

from autotrick.checkpoint import save_checkpoint
from autotrick.models import build_model

FULL = "free some space, then run the command again (a search: with --resume)"
READ_ONLY = "the file system is read-only: write elsewhere (run it in another folder), then run the command again"


def in_namespace(mounts: str, folder: Path, args: list[str], *, after: str = "",
                 env: dict[str, str] | None = None) -> tuple[int, str, str, str]:
    """`autotrick ARGS` run in `folder` after `mounts` (shell commands), in a mount namespace of its
    own; returns its exit code, stdout, stderr, and what `after` printed (run in the namespace)."""
    kept = tempfile.mkdtemp(prefix="said-")  # the command's output, off the disk it fills
    try:
        return _run_in_namespace(mounts, folder, args, after, env, shlex.quote(kept))
    finally:
        shutil.rmtree(kept, ignore_errors=True)


def _run_in_namespace(mounts: str, folder: Path, args: list[str], after: str, env: dict[str, str] | None,
                      said: str) -> tuple[int, str, str, str]:
    command = (f"{mounts} && echo mounted && cd {shlex.quote(str(folder))} && "
               f"{shlex.quote(sys.executable)} -m autotrick {shlex.join(args)} > {said}/out 2> {said}/err; "
               f"echo $? > {said}/rc; cat {said}/out; echo '--- err'; cat {said}/err; echo '--- rc'; cat {said}/rc; "
               f"echo '--- after'; {after or 'true'}")
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", command],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    if not done.stdout.startswith("mounted"):
        pytest.skip(f"no private mounts here (unshare --mount, then mount): {done.stderr.strip()}")
    out, rest = done.stdout.removeprefix("mounted\n").split("--- err\n", 1)
    err, rest = rest.split("--- rc\n", 1)
    code, after_text = rest.split("--- after\n", 1)
    return int(code), out, err, after_text


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "cnn.pt"
    model = build_model("cnn", num_classes=10, in_channels=1, image_size=(8, 8))
    return save_checkpoint(path, model, spec="cnn", tricks={}, num_classes=10, input_shape=(1, 8, 8))


def test_export_onnx_on_a_full_disk_is_one_line_and_leaves_no_half_written_model(
        tmp_path: Path, checkpoint: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    # 64 KB, 60 KB of it taken: the model (about 100 KB) does not fit
    mounts = f"mount -t tmpfs -o size=64k tmpfs {disk} && head -c 61440 /dev/zero > {disk}/filler"
    code, out, err, listing = in_namespace(mounts, tmp_path, ["export", "--model", str(checkpoint), "--data",
                                                              "digits", "--onnx", "disk/model.onnx"],
                                           after=f"ls -A {disk}")
    assert code == 1, out + err
    assert err.strip().splitlines() == [f"autotrick: error: OSError: [Errno 28] No space left on device: "
                                        f"'disk/model.onnx': {FULL}"]
    assert listing.split() == ["filler"]  # no model.onnx, no temporary file: nothing half-written


def test_export_onnx_into_a_read_only_folder_is_one_line(tmp_path: Path, checkpoint: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    code, out, err, listing = in_namespace(f"mount --bind -o ro {folder} {folder}", tmp_path,
                                           ["export", "--model", str(checkpoint), "--data", "digits",
                                            "--onnx", "ro/model.onnx"], after=f"ls -A {folder}")
    assert code == 1, out + err
    assert err.strip().splitlines() == [f"autotrick: error: OSError: [Errno 30] Read-only file system: "
                                        f"'ro/model.onnx': {READ_ONLY} (a search: with --resume)"]
    assert listing.split() == []


def test_export_int8_on_a_full_disk_keeps_no_half_written_int8_model(tmp_path: Path, checkpoint: Path) -> None:
    """Room for the fp32 model, not for its INT8 copy and report: ONNX Runtime's quantizer fails
    on the disk, said as the disk's failure."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounts = f"mount -t tmpfs -o size=112k tmpfs {disk}"  # the fp32 model (96 KB on disk), not the int8
    code, out, err, listing = in_namespace(mounts, tmp_path, ["export", "--model", str(checkpoint), "--data",
                                                              "digits", "--onnx", "disk/model.onnx", "--int8"],
                                           after=f"ls -A {disk}")
    assert code == 1, out + err
    [line] = err.strip().splitlines()
    assert line.startswith("autotrick: error: OSError: [Errno 28] No space left on device: 'disk/model.")
    assert line.endswith(FULL) and "Traceback" not in err
    assert not [name for name in listing.split() if name.startswith(".")]  # no temporary file left


def test_train_fetching_its_weights_onto_a_full_disk_is_one_line(
        tmp_path: Path, trial_run: tuple[str, str]) -> None:  # noqa: F811  (the fixture imported above)
    """`train --weights runs:/...` writes the run's model as a checkpoint under .autotrick/ (what
    train writes on the driver's disk; it trains without writing anything else)."""
    uri, run_id = trial_run
    work = tmp_path / "work"
    work.mkdir()
    mounts = f"mount -t tmpfs -o size=64k tmpfs {work} && head -c 61440 /dev/zero > {work}/filler"
    code, out, err, listing = in_namespace(mounts, work, ["train", "--weights", f"runs:/{run_id}/model", "--data",
                                                          "digits", "--epochs", "1"],
                                           after=f"ls -A {work}/.autotrick/.models", env={"MLFLOW_TRACKING_URI": uri})
    assert code == 1, out + err
    assert len(err.strip().splitlines()) == 1, err
    line = err.strip()
    assert line.startswith("autotrick: error: OSError: [Errno 28] No space left on device: '")
    assert "/.autotrick/.models/" in line and line.endswith(f".pt': {FULL}")
    assert listing.split() == []  # no half-written checkpoint, no temporary file


def test_ui_needs_no_write_a_read_only_store_and_a_full_temporary_folder_serve(tmp_path: Path) -> None:
    """`ui` writes only its server's log in the temporary folder: on a read-only store, with that
    folder full, it starts and answers (stopped by SIGINT, as Ctrl-C)."""
    import mlflow
    from conftest import free_port

    store, temp = tmp_path / "store", tmp_path / "temp"
    store.mkdir()
    temp.mkdir()
    mlflow.MlflowClient(f"sqlite:///{store}/mlflow.db").create_experiment("seen")
    mounts = (f"mount --bind -o ro {store} {store} && mount -t tmpfs -o size=16k tmpfs {temp} && "
              f"(head -c 16384 /dev/zero > {temp}/filler; true)")
    command = (f"{mounts} && echo mounted && TMPDIR={temp} exec timeout -s INT 240 {shlex.quote(sys.executable)} -m "
               f"autotrick ui --tracking-uri sqlite:///{store}/mlflow.db --port {free_port()}")
    ui = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", command],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert ui.stdout is not None
    if ui.stdout.readline().strip() != "mounted":
        ui.kill()
        pytest.skip(f"no private mounts here (unshare --mount, then mount): {ui.communicate()[1].strip()}")
    served = ui.stdout.readline()  # printed once the server answers HTTP
    ui.send_signal(signal.SIGINT)  # to timeout, which passes it on: Ctrl-C
    out, err = ui.communicate(timeout=60)
    assert served.startswith("MLflow UI at http://127.0.0.1:"), served + out + err
    assert "Traceback" not in err
