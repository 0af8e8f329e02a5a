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

from autotrick.commands import SearchRequest, run_search_command
from autotrick.search import records_from_study
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
        ray_address: str, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = search(workdir, space="quick", trials=6, max_epochs=4, name="quick6")
    out = capsys.readouterr().out
    assert code == 0, out
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


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_interrupted_search_resumes_without_losing_or_repeating_trials(
        stop: signal.Signals, ray_address: str, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Stop a real `autotrick search` process (on the cluster, by --address), then --resume."""
    command = [sys.executable, "-m", "autotrick", "search", "--address", ray_address, "--name", "cut",
               "--trials", "8", "--max-epochs", "3", "--tracking-uri", f"sqlite:///{workdir}/mlflow.db"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=workdir, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    finished_lines = []
    deadline = time.time() + 240
    assert process.stdout is not None
    while len(finished_lines) < 2 and time.time() < deadline:
        line = process.stdout.readline()
        if line.startswith("trial "):
            finished_lines.append(line)
    assert len(finished_lines) == 2, "the search printed no trials"
    process.send_signal(stop)
    out, err = process.communicate(timeout=180)
    if stop == signal.SIGINT:
        assert process.returncode == 130, out + err
        assert "interrupted after" in err and "autotrick search --name cut --resume" in err
    else:
        assert process.returncode == -signal.SIGKILL
    before = {r.number for r in records_from_study(study_of(workdir, "cut"))}
    assert 2 <= len(before) < 8

    code = search(workdir, name="cut", resume=True, trials=8, max_epochs=3)
    assert code == 0, capsys.readouterr().out
    records = records_from_study(study_of(workdir, "cut"))
    numbers = [r.number for r in records]
    assert len(records) == 8 and len(set(numbers)) == 8
    assert before <= set(numbers)  # nothing finished before the interrupt was lost
    drawn = [tuple(sorted((k, str(v)) for k, v in r.values.items())) for r in records]
    assert len(set(drawn)) == 8  # and nothing was repeated
    assert (workdir / "cut.recipe.yaml").exists()

    runs = mlflow_runs(workdir, "cut")
    children = [run for run in runs if run.data.tags.get("autotrick.role") != "parent"]
    assert sorted(int(run.data.tags["autotrick.trial"]) for run in children) == sorted(numbers)
    assert all(run.info.status != "RUNNING" for run in runs)  # orphans KILLED, the parent ended
