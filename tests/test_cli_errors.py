"""Bad input on the command line: exit code 2 and one line naming the bad value and what is
allowed, before Ray or MLflow start, with nothing written and no traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    "bad gpus": (["search", "--gpus-per-trial", "-1"], "--gpus-per-trial"),
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
