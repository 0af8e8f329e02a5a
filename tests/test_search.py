"""autotrick search against the real thing: a real Ray cluster (2 CPUs), real Optuna, real torch,
a real MLflow sqlite store. Small budgets keep the whole file to a few minutes on 2 cores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import ray_head

from autotrick.commands import SearchRequest, run_search_command
from autotrick.study import records_from_study
from autotrick.tracking import load_recipe

pytestmark = pytest.mark.slow


def study_of(workdir: Path, name: str) -> optuna.Study:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(workdir / ".autotrick" / name / "optuna.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def search(workdir: Path, **options: object) -> int:
    request = SearchRequest(tracking_uri=f"sqlite:///{workdir}/mlflow.db", **options)  # type: ignore[arg-type]
    return run_search_command(request)


def test_quick_search_writes_a_recipe_that_beats_or_equals_the_baseline(
        ray_address: str, workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir}/mlflow.db")
    code = search(workdir, space="quick", trials=6, max_epochs=4, name="quick6")
    out = capsys.readouterr().out
    assert code == 0, out
    # the store `autotrick ui` finds by itself (the confirmation's verdict, if any, follows)
    assert any(line.endswith("(see it with `autotrick ui`)") for line in out.splitlines())
    recipe = load_recipe(workdir / "quick6.recipe.yaml")
    provenance = recipe.provenance
    assert provenance["value"] >= provenance["baseline"]
    assert recipe.training["epochs"] == 4 and recipe.training["model"] == "cnn"
    assert "best val_accuracy" in out and "vs baseline" in out
    # --gpus-per-trial auto on a machine without a GPU; digits is small enough to hold
    assert "CPU only (auto: no GPU here), data in memory (115.0 KB decoded <= " in out.splitlines()[0]
    assert out.count("\ntrial ") + out.startswith("trial ") == 6
    study = study_of(workdir, "quick6")
    records = records_from_study(study)
    assert len(records) == 6 and sorted(r.number for r in records) == list(range(6))
    assert next(r for r in records if r.number == 0).baseline
    states = {t.state for t in study.trials}
    assert optuna.trial.TrialState.RUNNING not in states
    for record in records:  # conditional parameters appear only under their parent
        values = record.values
        assert ("norm.groups" in values) == (values["norm.type"] == "group")
        assert ("init.mode" in values) == (values["init.scheme"] in ("kaiming_uniform", "kaiming_normal"))
        assert ("optim.momentum" in values) == (values["optim.name"] == "sgd")


FAULTY_MODEL = """
from pathlib import Path
import torch.nn as nn

COUNTER = Path({counter!r})


class Explode(nn.Module):
    def forward(self, x):
        return x * 1e38 * 1e38  # inf logits: a non-finite loss at the first step


def build(num_classes, in_channels):
    calls = int(COUNTER.read_text() or 0) + 1 if COUNTER.exists() else 1
    COUNTER.write_text(str(calls))
    if calls in {raise_on}:
        raise RuntimeError("boom from the user's model")
    layers = [nn.Flatten(), nn.Linear(in_channels * 64, 64), nn.ReLU(), nn.Linear(64, num_classes)]
    return nn.Sequential(*layers, *([Explode()] if calls in {diverge_on} else []))
"""


def faulty_model(workdir: Path, raise_on: str, diverge_on: str = "()") -> str:
    """A user model file whose n-th build raises or diverges (build 1 is the driver's check)."""
    path = workdir / "faulty.py"
    path.write_text(FAULTY_MODEL.format(counter=str(workdir / "calls.txt"), raise_on=raise_on,
                                        diverge_on=diverge_on))
    return f"{path}:build"


def test_a_trial_that_raises_and_trials_that_diverge_are_recorded_and_the_search_goes_on(
        ray_address: str, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = workdir / "wild.yaml"
    space.write_text("budget: {trials: 5, max_epochs: 3, grace_epochs: 3}\n"
                     "tricks: {optim: {lr: {low: 0.01, high: 0.1, log: true}}}\n")
    model = faulty_model(workdir, raise_on="{4}", diverge_on="{3, 5}")
    code = search(workdir, space=str(space), model=model, name="wild")
    out = capsys.readouterr().out
    assert code == 0, out  # two trials succeeded, so there is a best recipe
    records = {r.number: r for r in records_from_study(study_of(workdir, "wild"))}
    assert len(records) == 5
    outcomes = [r.outcome for r in records.values()]
    assert outcomes.count("failed") == 1 and outcomes.count("diverged") == 2, outcomes
    failed = next(r for r in records.values() if r.outcome == "failed")
    assert "boom from the user's model" in failed.reason
    diverged = next(r for r in records.values() if r.outcome == "diverged")
    assert "non-finite" in diverged.reason
    states = [t.state for t in study_of(workdir, "wild").trials]
    assert optuna.trial.TrialState.RUNNING not in states
    assert states.count(optuna.trial.TrialState.FAIL) == 3
    assert "boom from the user's model" in out and "diverged" in out
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    [child] = [run for run in mlflow_runs(workdir, "wild") if run.data.tags.get("autotrick.outcome") == "failed"]
    error = Path(client.download_artifacts(child.info.run_id, "error.txt", str(workdir))).read_text()
    assert error.startswith("failed after") and "Traceback (most recent call last)" in error  # for the run only
    assert 'raise RuntimeError("boom from the user\'s model")' in error and "Traceback" not in out


def test_every_trial_failing_exits_non_zero_without_a_recipe(
        ray_address: str, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = faulty_model(workdir, "range(2, 100)")  # the driver's check builds it once; trials all fail
    code = search(workdir, space="quick", trials=3, max_epochs=2, model=model, name="doomed")
    out = capsys.readouterr().out
    assert code != 0
    assert "no trial succeeded: no recipe written" in out
    assert not (workdir / "doomed.recipe.yaml").exists()


def mlflow_runs(workdir: Path, experiment: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return client.search_runs([experiment_id], max_results=1000)


def cli(workdir: Path, *args: str) -> subprocess.Popen[str]:
    """`autotrick ARGS` in its own process, as a user (or a service manager) runs it."""
    return subprocess.Popen([sys.executable, "-m", "autotrick", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=workdir, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for_trials(process: subprocess.Popen[str], count: int, timeout: float = 240) -> list[str]:
    """Read the process's output until it has printed `count` trial lines."""
    lines: list[str] = []
    deadline = time.time() + timeout
    assert process.stdout is not None
    while len(lines) < count and time.time() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith("trial "):
            lines.append(line)
    assert len(lines) == count, f"the search printed {len(lines)} trial lines"
    return lines


def parents(workdir: Path, experiment: str) -> list:
    return [run for run in mlflow_runs(workdir, experiment) if run.data.tags.get("autotrick.role") == "parent"]


EXIT_CODE = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129, signal.SIGKILL: -signal.SIGKILL}


@pytest.mark.parametrize("stop", list(EXIT_CODE), ids=["ctrl-c", "sigterm", "sighup", "kill-9"])
def test_interrupted_search_resumes_without_losing_or_repeating_trials(
        stop: signal.Signals, ray_address: str, workdir: Path) -> None:
    """Stop a real `autotrick search` process (on the cluster, by --address), then resume it with
    `--name cut --resume` alone: the stored request gives the budget, the address, the store."""
    process = cli(workdir, "search", "--address", ray_address, "--name", "cut", "--trials", "8",
                  "--max-epochs", "3", "--tracking-uri", f"sqlite:///{workdir}/mlflow.db")
    wait_for_trials(process, 2)
    process.send_signal(stop)
    out, err = process.communicate(timeout=180)
    assert process.returncode == EXIT_CODE[stop], out + err
    journal = workdir / ".autotrick" / "cut" / "optuna.journal"
    if stop != signal.SIGKILL:  # every ending is an ending: trials stopped, states recorded, the parent ended
        assert "Traceback" not in err
        assert err.strip().splitlines()[-1].startswith("interrupted after ")
        assert err.strip().endswith(" of 8 trials: resume with `autotrick search --name cut --resume`")
        assert [run.info.status for run in parents(workdir, "cut")] == ["KILLED"]
    else:  # a kill in the middle of a write: the journal's last line cut in half
        data = journal.read_bytes()
        last = data.rstrip(b"\n").rfind(b"\n") + 1
        journal.write_bytes(data[:last + (len(data) - last) // 2])
    before = {r.number for r in records_from_study(study_of(workdir, "cut"))}
    assert 2 <= len(before) < 8
    if stop == signal.SIGHUP:  # its ending is SIGTERM's, with its own code; the resume is the others'
        return
    if stop == signal.SIGTERM:  # what a resume may not change is refused, naming both values
        state = journal.read_bytes()
        refused = subprocess.run([sys.executable, "-m", "autotrick", "search", "--name", "cut", "--resume",
                                  "--max-epochs", "9"], cwd=workdir, capture_output=True, text=True, timeout=180)
        assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
            "autotrick: error: --max-epochs 9: search 'cut' was started with --max-epochs 3, and a resumed search "
            "keeps it (only --trials, --time-budget, --concurrency, --address, --num-cpus, --output, --register, "
            "--data-mode, --wait-for-resources may change); drop --max-epochs, or start a new search with another "
            "--name"]
        assert journal.read_bytes() == state

    again = {signal.SIGINT: ["--trials", "9"],  # may change: the budget raised
             signal.SIGKILL: ["--space", "quick", "--max-epochs", "3", "--tracking-uri", "sqlite:///mlflow.db"],
             }.get(stop, [])  # or given again with the same values (the same store, named otherwise)
    trials = 9 if stop == signal.SIGINT else 8
    resumed = cli(workdir, "search", "--name", "cut", "--resume", *again)
    out, err = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, out + err
    assert out.startswith(f"search 'cut': quick space, cnn on digits, {trials} trials x up to 3 epochs")
    if stop == signal.SIGKILL:
        assert f"autotrick: took over the lock of dead process {process.pid} on " in err
        assert "optuna.journal: set aside " in err and list(journal.parent.glob("optuna.journal.torn-*"))
    records = records_from_study(study_of(workdir, "cut"))
    numbers = [r.number for r in records]
    assert len(records) == trials and len(set(numbers)) == trials
    assert before <= set(numbers)  # nothing finished before the interrupt was lost
    assert max(r.epochs for r in records) <= 3  # the stored budget, not the space's 15 epochs
    drawn = [tuple(sorted((k, str(v)) for k, v in r.values.items())) for r in records]
    assert len(set(drawn)) == trials  # and nothing was repeated
    assert (workdir / "cut.recipe.yaml").exists()

    runs = mlflow_runs(workdir, "cut")
    children = [run for run in runs if run.data.tags.get("autotrick.role") != "parent"]
    assert sorted(int(run.data.tags["autotrick.trial"]) for run in children) == sorted(numbers)
    assert all(run.info.status != "RUNNING" for run in runs)  # orphans KILLED, the parent ended
    assert [run.info.status for run in parents(workdir, "cut")] == ["FINISHED"]


def test_one_owner_per_search(ray_address: str, workdir: Path) -> None:
    """The same search started twice at once, then resumed while it runs: one runs, the others
    are refused with one line naming it; the study and MLflow hold one search's trials."""
    command = ["search", "--address", ray_address, "--name", "twice", "--trials", "4", "--max-epochs", "2"]
    twins = [cli(workdir, *command), cli(workdir, *command)]
    deadline = time.time() + 240
    while all(twin.poll() is None for twin in twins) and time.time() < deadline:
        time.sleep(0.2)
    loser = next(twin for twin in twins if twin.poll() is not None)
    winner = next(twin for twin in twins if twin is not loser)
    out, err = loser.communicate()
    assert loser.returncode == 2 and out == "", err
    holder = f"it is running in process {winner.pid} on "
    assert len(err.strip().splitlines()) == 1 and "cannot start search 'twice': " + holder in err

    wait_for_trials(winner, 1)
    resume = subprocess.run([sys.executable, "-m", "autotrick", "search", "--name", "twice", "--resume"],
                            cwd=workdir, capture_output=True, text=True, timeout=180)
    assert resume.returncode == 2 and len(resume.stderr.strip().splitlines()) == 1
    assert "cannot resume search 'twice': " + holder in resume.stderr
    out, err = winner.communicate(timeout=300)
    assert winner.returncode == 0, out + err

    records = records_from_study(study_of(workdir, "twice"))
    assert sorted(r.number for r in records) == [0, 1, 2, 3] and sum(r.baseline for r in records) == 1
    assert [run.info.status for run in parents(workdir, "twice")] == ["FINISHED"]
    assert len(mlflow_runs(workdir, "twice")) == 1 + 4
    assert not (workdir / ".autotrick" / "twice" / "owner.json").exists()  # released at the end


def test_an_error_after_the_parent_run_exists_marks_it_failed(ray_address: str, workdir: Path) -> None:
    process = cli(workdir, "search", "--address", ray_address, "--name", "gpu", "--gpus-per-trial", "1")
    out, err = process.communicate(timeout=240)
    assert process.returncode == 2, out + err
    assert err.strip().splitlines() == ["autotrick: error: --gpus-per-trial 1: the Ray cluster has 0 GPUs"]
    [parent] = parents(workdir, "gpu")
    assert parent.info.status == "FAILED"
    assert parent.data.tags["autotrick.reason"] == "ConfigError: --gpus-per-trial 1: the Ray cluster has 0 GPUs"
    assert not (workdir / ".autotrick" / "gpu" / "optuna.journal").exists()


def test_an_address_that_answers_but_is_not_ray_fails_within_30_s(workdir: Path) -> None:
    """A port that accepts connections but does not speak Ray's protocol (here: nothing is ever
    accepted from the listen queue). Ray alone retries for ~13 minutes."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        process = cli(workdir, "search", "--address", address, "--name", "nowhere")
        out, err = process.communicate(timeout=240)
        seconds = time.monotonic() - started
    assert process.returncode == 2, out + err
    lines = err.strip().splitlines()  # one line: none of Ray's retry lines
    assert len(lines) == 1 and lines[0].startswith(f"autotrick: error: --address {address}: no Ray cluster "
                                                   "answered there (ConnectionError: Failed to connect"), err
    assert seconds < 60, seconds  # measured 26-28 s on the loaded 2-core machine: 21 s in ray.init
    [parent] = parents(workdir, "nowhere")
    assert parent.info.status == "FAILED" and "no Ray cluster answered" in parent.data.tags["autotrick.reason"]


def test_a_cluster_with_token_authentication_is_reached_with_its_token(workdir: Path) -> None:
    """With a token in ~/.ray/auth_token (`ray get-auth-token --generate`), `ray start --head`
    turns token authentication on, but Ray's driver sends the token only with RAY_AUTH_MODE=token,
    which a user need not set: a search by --address finds the token where Ray keeps it (before,
    it failed with "no Ray cluster answered there")."""
    home = workdir / "home"
    home.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_AUTH")} | {"HOME": str(home)}
    subprocess.run([str(Path(sys.executable).parent / "ray"), "get-auth-token", "--generate"], env=env, check=True,
                   capture_output=True, timeout=120)
    with ray_head(num_cpus=1, env=env) as address:
        done = subprocess.run([sys.executable, "-m", "autotrick", "search", "--address", address, "--name", "authed",
                               "--trials", "2", "--max-epochs", "1", "--tracking-uri", f"sqlite:///{workdir}/mlflow.db"],
                              cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sum(line.startswith("trial ") for line in done.stdout.splitlines()) == 2
    assert len(records_from_study(study_of(workdir, "authed"))) == 2


DYING_MODEL = """
import os
from pathlib import Path
import torch.nn as nn

COUNTER = Path({counter!r})


def build(num_classes, in_channels):
    calls = int(COUNTER.read_text()) + 1 if COUNTER.exists() else 1
    COUNTER.write_text(str(calls))
    if calls == 2:  # the first trial's worker dies (a segfault, the OOM killer)
        os._exit(3)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, 32), nn.ReLU(), nn.Linear(32, num_classes))
"""


def test_a_trial_whose_worker_dies_is_one_line_and_its_error_is_in_mlflow(ray_address: str, workdir: Path) -> None:
    (workdir / "dying.py").write_text(DYING_MODEL.format(counter=str(workdir / "calls.txt")))
    process = cli(workdir, "search", "--address", ray_address, "--name", "dies", "--model", "dying.py:build",
                  "--trials", "3", "--max-epochs", "2", "--tracking-uri", f"sqlite:///{workdir}/mlflow.db",
                  "--no-confirm")
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, out + err
    assert "Traceback" not in out + err and "ActorDiedError" not in out + err
    trial_lines = [line for line in out.splitlines() if line.startswith("trial ")]
    failed = [line for line in trial_lines if " failed " in line]
    assert len(trial_lines) == 3 and len(failed) == 1
    assert "(its worker failed: The actor died unexpectedly before finishing this task.)" in failed[0]
    assert out.rstrip().endswith(f"(see it with `autotrick ui --tracking-uri sqlite:///{workdir}/mlflow.db`)")
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    [child] = [run for run in mlflow_runs(workdir, "dies") if run.data.tags.get("autotrick.outcome") == "failed"]
    assert child.info.status == "FAILED"
    assert [a.path for a in client.list_artifacts(child.info.run_id)] == ["error.txt"]
    error = client.download_artifacts(child.info.run_id, "error.txt", str(workdir))
    assert "The actor died unexpectedly" in Path(error).read_text()
