"""Bad input on the command line: exit code 2 and one line naming the bad value and what is
allowed, before Ray or MLflow start, with nothing written and no traceback."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from autotrick.cli import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(args)
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


@pytest.fixture(autouse=True)
def in_empty_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


CASES = {
    "unknown trick": (["train", "--set", "warp.speed=9"], "unknown trick parameter 'warp.speed'"),
    "unknown param": (["train", "--set", "norm.flavour=1"], "expected norm.type, norm.groups"),
    "out of range": (["train", "--set", "smoothing.eps=0.995"], "smoothing.eps: 0.995 is not allowed"),
    "wrong type": (["train", "--set", "optim.lr=fast"], "optim.lr: 'fast' is not allowed; expected a number"),
    "bad choice": (["train", "--set", "norm.type=batchy"], "expected one of keep, batch, group"),
    "malformed set": (["train", "--set", "normtype"], "expected trick.param=value"),
    "unknown model": (["train", "--model", "nosuchnet"], "unknown model 'nosuchnet'"),
    "unknown data": (["train", "--data", "nosuchdata"], "unknown data set 'nosuchdata'"),
    "missing data folder": (["train", "--data", "cifar10", "--data-dir", "nowhere"], "nowhere"),
    "missing recipe": (["train", "--recipe", "gone.yaml"], "recipe gone.yaml: no such file"),
    "bad epochs": (["train", "--epochs", "0"], "--epochs"),
    "unknown space": (["search", "--space", "nope"], "unknown search space 'nope'"),
    "search unknown model": (["search", "--model", "nosuchnet"], "unknown model 'nosuchnet'"),
    "search missing data": (["search", "--data", "cifar10"], "cifar10"),
    "resume unknown": (["search", "--name", "never", "--resume"], "no search named 'never'"),
    "bad name": (["search", "--name", "a b"], "--name 'a b'"),
    "bad gpus": (["search", "--gpus-per-trial", "-1"], "--gpus-per-trial -1: expected auto or a number >= 0"),
    "gpus not a number": (["search", "--gpus-per-trial", "all"], "--gpus-per-trial all: expected auto"),
    "gpus infinite": (["search", "--gpus-per-trial", "inf"], "--gpus-per-trial inf: expected auto or a number"),
    "unknown store scheme": (["search", "--tracking-uri", "foo://bar"],
                             "--tracking-uri foo://bar: not an MLflow tracking URI; expected sqlite:///PATH"),
    "bare store path": (["show", "runs:/0123456789abcdef/recipe.yaml", "--tracking-uri", "mlflow.db"],
                        "--tracking-uri mlflow.db: not an MLflow tracking URI"),
    "bad data mode": (["train", "--data-mode", "disk"], "'disk' is not one of 'auto', 'memory', 'stream'"),
    "search bad data mode": (["search", "--data-mode", "disk"], "'disk' is not one of 'auto', 'memory', 'stream'"),
    "digits cannot stream": (["search", "--data-mode", "stream"], "'digits' is only held in memory"),
    "bad device": (["train", "--device", "tpu"], "'tpu' is not one of 'auto', 'cpu', 'cuda'"),
    "bad synthetic": (["train", "--data", "synthetic:cifar11"], "synthetic:CxHxW:K[:N]"),
    **({} if torch.cuda.is_available() else
       {"no cuda": (["train", "--device", "cuda"], "--device cuda: no CUDA device is visible"),
        "no gpu for a local ray": (["search", "--gpus-per-trial", "1"],
                                   "--gpus-per-trial 1: this machine has 0 GPUs, which a local Ray gets")}),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_input_exits_2_with_one_line(case: str, capsys: pytest.CaptureFixture[str], in_empty_dir: Path) -> None:
    args, expected = CASES[case]
    code, out, err = run_cli(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err + out
    assert list(in_empty_dir.iterdir()) == []  # nothing written: no mlflow.db, no .autotrick/


@pytest.mark.parametrize("text, expected", [
    ("tricks: {optim: {lr: {low: 0.5, high: 0.1}}}\n", "low (0.5) > high (0.1)"),
    ("tricks: {norm: [keep\n", "is not valid YAML"),
    ("tricks: {warp: search}\n", "tricks.warp: unknown key"),
])
def test_bad_space_file_exits_2_before_anything_starts(text: str, expected: str, in_empty_dir: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    space = write(in_empty_dir / "space.yaml", text)
    code, _, err = run_cli(["search", "--space", space], capsys)
    assert code == 2 and expected in err and "space.yaml" in err
    assert sorted(p.name for p in in_empty_dir.iterdir()) == ["space.yaml"]


@pytest.mark.parametrize("text, expected", [
    ("autotrick_recipe: 99\ntricks: {}\n", "schema version 99 is not supported"),
    ("autotrick_recipe: 1\ntricks: {norm: {type: batchy}}\n", "'batchy' is not allowed"),
    ("autotrick_recipe: 1\ntricks: {warp: {speed: 1}}\n", "unknown trick parameter 'warp.speed'"),
    ("autotrick_recipe: 1\ntricks: {smoothing: {eps: 5}}\n", "smoothing.eps: 5 is not allowed"),
    ("autotrick_recipe: 1\ntraining: {epochs: -1}\n", "training.epochs: -1 must be a positive integer"),
    ("just: text\n", "not an autotrick recipe"),
])
def test_broken_recipe_exits_2(text: str, expected: str, in_empty_dir: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    recipe = write(in_empty_dir / "r.yaml", text)
    code, _, err = run_cli(["train", "--recipe", recipe], capsys)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1


def test_no_traceback_from_the_real_console_script(in_empty_dir: Path) -> None:
    """The installed entry point, in a fresh process: what a user actually sees."""
    done = subprocess.run([sys.executable, "-m", "autotrick", "train", "--set", "norm.type=batchy"],
                          capture_output=True, text=True, env={**os.environ}, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "autotrick: error: --set: norm.type: 'batchy' is not allowed; expected one of keep, batch, group, "
        "layer, instance, none, batch_renorm"]


def test_the_quick_exit_still_runs_the_atexit_handlers(tmp_path: Path) -> None:
    """`autotrick` skips the interpreter's teardown (os._exit) but runs the atexit handlers through
    the one private call it makes, atexit._run_exitfuncs: this fails if Python drops or changes it."""
    marker = tmp_path / "ran"
    script = (f"import atexit, pathlib, sys\n"
              f"atexit.register(lambda: pathlib.Path({str(marker)!r}).write_text('yes'))\n"
              "from autotrick.cli import run\n"
              "sys.argv = ['autotrick', '--version']\n"
              "run()\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert marker.read_text() == "yes"


# --------------------------------------------------------------------------- the real command, in a process

def run_real(args: list[str], cwd: Path, timeout: float = 180) -> tuple[int, str, str]:
    """`autotrick ARGS` in a fresh process, as a user runs it."""
    done = subprocess.run([sys.executable, "-m", "autotrick", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return done.returncode, done.stdout, done.stderr


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autotrick: error: "), err
    return lines[0]


RAISING = """
def build(num_classes):
    raise RuntimeError("boom in the user's model\\nits second line")


def data():
    raise ValueError("no data in the user's function")
"""


@pytest.mark.parametrize("args, expected", [
    (["search", "--space", "empty.yaml"], "empty.yaml: tricks: the space searches nothing"),
    (["search", "--space", "binary.yaml"], "binary.yaml: not a text file"),
    (["train", "--recipe", "binary.yaml"], "recipe binary.yaml: not a text file"),
    (["show", "binary.yaml"], "recipe binary.yaml: not a text file"),
    (["search", "--model", "raising.py:build"],
     "raising.py:build' raised RuntimeError: boom in the user's model (-v shows its traceback)"),
    (["train", "--model", "raising.py:build"],
     "model 'raising.py:build' raised RuntimeError: boom in the user's model (-v shows its traceback)"),
    (["search", "--data", "raising.py:data"],
     "raising.py:data' raised ValueError: no data in the user's function (-v shows its traceback)"),
    (["search", "--data", "imagefolder:one_class"], "its training images are all of one class"),
], ids=["empty space", "binary space", "binary recipe", "show binary", "search model raises", "train model raises",
        "search data raises", "one class"])
def test_the_remaining_bad_inputs_exit_2_with_one_line_and_write_nothing(
        args: list[str], expected: str, in_empty_dir: Path) -> None:
    from PIL import Image

    (in_empty_dir / "empty.yaml").write_text("")
    (in_empty_dir / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (in_empty_dir / "raising.py").write_text(RAISING)
    for split in ("train", "val"):
        folder = in_empty_dir / "one_class" / split / "cats"
        folder.mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(folder / f"{i}.png")
    before = sorted(p.name for p in in_empty_dir.iterdir())
    code, out, err = run_real(args, in_empty_dir)
    assert code == 2 and expected in one_error_line(err) and out == ""
    assert "Traceback" not in err
    assert sorted(p.name for p in in_empty_dir.iterdir() if p.name != "__pycache__") == before


def test_a_users_raising_code_shows_its_traceback_with_v(in_empty_dir: Path) -> None:
    (in_empty_dir / "raising.py").write_text(RAISING)
    code, _, err = run_real(["train", "--model", "raising.py:build", "-v"], in_empty_dir)
    assert code == 2
    assert 'raising.py", line 3, in build' in err and "its second line" in err  # the user's traceback
    assert err.strip().splitlines()[-1] == ("autotrick: error: model 'raising.py:build' raised RuntimeError: "
                                            "boom in the user's model")


def test_v_among_combined_short_flags_shows_the_traceback_too(in_empty_dir: Path) -> None:
    """click parses -v, wherever and however it is written: `-vo FILE` is -v and -o FILE."""
    (in_empty_dir / "raising.py").write_text(RAISING)
    code, _, err = run_real(["search", "--model", "raising.py:build", "-vo", "x.yaml"], in_empty_dir)
    assert code == 2
    assert 'raising.py", line 3, in build' in err
    assert err.strip().splitlines()[-1].endswith("raised RuntimeError: boom in the user's model")


def test_resumes_help_names_every_option_a_resume_may_change() -> None:
    from click.testing import CliRunner

    from autotrick.cli import cli
    from autotrick.request import RESUME_MAY_CHANGE

    help_text = " ".join(CliRunner().invoke(cli, ["search", "--help"], terminal_width=1000,
                                            max_content_width=1000).output.split())
    flags = ", ".join("--" + name.replace("_", "-") for name in RESUME_MAY_CHANGE)
    assert f"only {flags} and -v may differ" in help_text


def test_a_file_where_the_state_folder_goes_exits_2_before_mlflow(in_empty_dir: Path) -> None:
    (in_empty_dir / ".autotrick").write_text("not a folder")
    code, _, err = run_real(["search", "--name", "blocked"], in_empty_dir)
    assert code == 2 and "cannot create the search's folder" in one_error_line(err) and ".autotrick" in err
    assert sorted(p.name for p in in_empty_dir.iterdir()) == [".autotrick"]  # no mlflow.db


def test_an_address_where_no_ray_answers_fails_fast_with_one_line(in_empty_dir: Path) -> None:
    from conftest import free_port

    started = time.monotonic()
    code, _, err = run_real(["search", "--address", f"127.0.0.1:{free_port()}"], in_empty_dir)
    assert code == 2 and "no Ray cluster answers there (ConnectionRefusedError" in one_error_line(err)
    assert time.monotonic() - started < 60  # measured 3-5 s: process start and validation; Ray would retry ~13 min
    assert list(in_empty_dir.iterdir()) == []


def foreign_database(path: Path) -> None:
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount REAL)")
        db.execute("INSERT INTO invoices (amount) VALUES (12.5)")


def corrupted_store(path: Path) -> None:
    """A real MLflow store with a page in its middle overwritten."""
    from autotrick.tracking._store import seed_sqlite_store

    seed_sqlite_store(f"sqlite:///{path}")
    data = bytearray(path.read_bytes())
    page = 4096
    data[8 * page:10 * page] = bytes(range(256)) * (2 * page // 256)
    path.write_bytes(bytes(data))


COMMANDS = {
    "search": ["search"],
    "export": ["export", "--name", "quick", "-o", "out.yaml"],
    "show": ["show", "runs:/0123456789abcdef/recipe.yaml"],
    "ui": ["ui", "--port", "1"],  # the store is refused before the port is looked at
    "train": ["train", "--recipe", "runs:/0123456789abcdef/recipe.yaml"],
}


@pytest.mark.parametrize("store", ["foreign", "corrupted"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_store_that_is_not_mlflows_or_not_sane_is_refused_untouched(
        store: str, command: str, in_empty_dir: Path) -> None:
    db = in_empty_dir / "mlflow.db"
    (foreign_database if store == "foreign" else corrupted_store)(db)
    before = db.read_bytes()
    code, _, err = run_real(COMMANDS[command], in_empty_dir)
    line = one_error_line(err)
    assert code == 2 and str(db) in line
    assert ("another application's SQLite database (tables: invoices)" if store == "foreign"
            else "the SQLite database is damaged") in line
    assert db.read_bytes() == before
    assert sorted(p.name for p in in_empty_dir.iterdir()) == ["mlflow.db"]


KILLED_MID_TRANSACTION = """
import os, signal, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA cache_size=1")  # pages spill to the file: the journal is needed to undo them
db.execute("BEGIN")
db.execute("CREATE TABLE scratch (x BLOB)")
db.execute("INSERT INTO scratch SELECT randomblob(1000) FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL "
           "SELECT i + 1 FROM n WHERE i < 2000) SELECT i FROM n)")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_store_cut_mid_transaction_by_kill_9_is_rolled_back_not_refused(tmp_path: Path) -> None:
    """kill -9 while MLflow wrote leaves a hot journal that a read-only connection may not roll
    back: the store is whole (SQLite's journal undoes the cut transaction), so a resume must take it."""
    from mlflow import MlflowClient

    from autotrick.tracking import check_store
    from autotrick.tracking._store import seed_sqlite_store

    db, uri = tmp_path / "mlflow.db", f"sqlite:///{tmp_path / 'mlflow.db'}"
    seed_sqlite_store(uri)
    MlflowClient(uri).create_experiment("kept")
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_TRANSACTION, str(db)], capture_output=True, timeout=120)
    assert killed.returncode == -9 and (tmp_path / "mlflow.db-journal").stat().st_size > 0
    check_store(uri)  # before: "the SQLite database is damaged (attempt to write a readonly database)"
    assert not (tmp_path / "mlflow.db-journal").exists()
    assert MlflowClient(uri).get_experiment_by_name("kept") is not None


@pytest.mark.parametrize("command", ["search", "show"])
def test_an_unreachable_tracking_server_is_refused_fast(command: str, in_empty_dir: Path) -> None:
    from conftest import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    code, _, err = run_real([*COMMANDS[command], "--tracking-uri", uri], in_empty_dir)
    assert code == 2 and f"--tracking-uri {uri}: no MLflow tracking server answers there" in one_error_line(err)
    assert time.monotonic() - started < 60
    assert list(in_empty_dir.iterdir()) == []
