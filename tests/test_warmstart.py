"""Starting from what is known (priors, --warm-start recipes and earlier searches) and stopping
when flat (--patience), against a real Ray cluster, Optuna, torch and MLflow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from autotrick.commands import SearchRequest, run_search_command
from autotrick.study import open_journal, records_from_study
from autotrick.warmstart import TOLD_FROM

pytestmark = pytest.mark.slow

SPACE = """model: cnn
data: digits
budget: {trials: 5, max_epochs: 2, grace_epochs: 2}
train: {batch_size: 128}
tricks:
  smoothing: {eps: {low: 0.0, high: 0.2}}
  optim: {lr: {low: 0.005, high: 0.1, log: true}}
priors:
  bag_of_tricks: {schedule: {name: cosine, warmup_epochs: 1}, smoothing: {eps: 0.1}}
"""

RECIPE = """autotrick_recipe: 1
tricks: {optim: {lr: 0.02, nesterov: true}, dropout: {p: 0.1}}
"""


def study(workdir: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_journal(workdir / ".autotrick" / name))


def test_priors_and_warm_start_recipes_run_after_the_baseline_with_their_exact_values_and_patience_stops(
        ray_address: str, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "space.yaml").write_text(SPACE)
    (workdir / "known.recipe.yaml").write_text(RECIPE)
    code = run_search_command(SearchRequest(space="space.yaml", name="warm", warm_start=("known.recipe.yaml",),
                                            concurrency=1, no_confirm=True, patience=3, min_gain=1.0,
                                            tracking_uri=f"sqlite:///{workdir}/mlflow.db"))
    out = capsys.readouterr().out
    assert code == 0, out
    records = sorted(records_from_study(study(workdir, "warm")), key=lambda r: r.number)
    assert records[0].baseline
    prior, known = records[1].values, records[2].values  # trials 2 and 3, as listed
    assert (prior["schedule.name"], prior["schedule.warmup_epochs"], prior["smoothing.eps"]) == ("cosine", 1, 0.1)
    assert (known["optim.lr"], known["optim.nesterov"], known["dropout.p"]) == (0.02, True, 0.1)
    # --min-gain 1.0: nothing can gain that much, so 3 trials after the baseline end the search
    assert len(records) == 4 and "stopped early after 4 of 5 trials: 3 trials in a row did not beat the best " \
        "by more than --min-gain 1 (--patience 3)" in out
    assert (workdir / "warm.recipe.yaml").exists()  # stopped by patience is a finished search

    code = run_search_command(SearchRequest(space="space.yaml", name="again", warm_start=("warm",), trials=2,
                                            no_confirm=True, tracking_uri=f"sqlite:///{workdir}/mlflow.db"))
    assert code == 0
    again = study(workdir, "again")
    told = [t for t in again.trials if t.user_attrs.get(TOLD_FROM) == "warm"]
    assert len(told) == 4 and {t.params["optim.lr"] for t in told} >= {0.02}  # the same space: every trial told
    assert len(records_from_study(again)) == 2  # told trials are the sampler's knowledge, not this search's trials


def test_bad_warm_start_and_patience_are_one_line_and_exit_2(workdir: Path) -> None:
    for flags, words in ((["--warm-start", "nowhere"], "--warm-start nowhere: not an earlier search's name here"),
                         (["--patience", "0"], "--patience 0: must be at least 1")):
        done = subprocess.run([sys.executable, "-m", "autotrick", "search", *flags], cwd=workdir,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and words in done.stderr, done.stderr
        assert not (workdir / ".autotrick").exists()
