"""Confirmation over seeds against the real thing: a real Ray cluster, real Optuna, torch and
MLflow. A small space whose trials all train their whole budget (grace = max epochs), so the top
recipes exist after a few trials."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autotrick.commands import SearchRequest, run_search_command
from autotrick.tracking import load_recipe

pytestmark = pytest.mark.slow

SMALL = """model: cnn
data: digits
budget: {trials: 4, max_epochs: 3, grace_epochs: 3}
train: {batch_size: 128}
tricks:
  smoothing: {eps: {low: 0.0, high: 0.2}}
  optim: {lr: {low: 0.005, high: 0.1, log: true}}
"""


def small_space(workdir: Path) -> str:
    (workdir / "small.yaml").write_text(SMALL)
    return str(workdir / "small.yaml")


def journal_runs(workdir: Path, name: str) -> dict:
    return json.loads((workdir / ".autotrick" / name / "seeded-runs.json").read_text())["runs"]


def test_a_confirmed_recipe_holds_paired_values_per_candidate_and_mlflow_leads_with_the_verdict(
        ray_address: str, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{workdir}/mlflow.db"
    code = run_search_command(SearchRequest(space=small_space(workdir), name="conf", confirm_top=2, confirm_seeds=3,
                                            tracking_uri=uri, register="digits-small"))
    out = capsys.readouterr().out
    assert code == 0, out
    confirmed = load_recipe(workdir / "conf.recipe.yaml").provenance["confirmed"]
    rows = {row["name"]: row for row in confirmed["rows"]}
    assert "baseline" in rows and len(rows) == 3  # the baseline and the top 2 recipes
    assert all(len(row["scores"]) == 3 and None not in row["scores"] for row in rows.values())
    for name, row in rows.items():
        if name != "baseline":
            assert row["pairs"] == 3 and row["p_adjusted"] >= row["p"] and row["gain_low"] <= row["gain"]
    assert confirmed["seeds"] == 3 and confirmed["test"] == "paired t-test, Holm over 2"
    # seed 0 of each recipe is its own search trial (trained at the full budget with the search's seed)
    runs = journal_runs(workdir, "conf")
    assert len(runs) == 9 and sum(1 for r in runs.values() if "from_trial" in r) == 3
    assert out.count("\nconfirm ") == 6  # only the 6 missing seeds were trained
    verdict = out.rstrip().splitlines()[-1]
    assert verdict == confirmed["verdict"] and "beyond seed noise" in verdict and "paired t-test" in verdict

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("conf").experiment_id
    parent = next(r for r in client.search_runs([experiment]) if r.data.tags.get("autotrick.role") == "parent")
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith("**Confirmed**" if confirmed["significant"] else "**Not confirmed**")
    assert confirmed["verdict"] in note.splitlines()[0]
    assert parent.data.metrics["confirmed_significant"] == float(confirmed["significant"])
    aliases = client.get_registered_model("digits-small").aliases
    assert list(aliases) == (["champion"] if confirmed["significant"] else ["unconfirmed"])
    shown = subprocess.run([sys.executable, "-m", "autotrick", "show", "conf.recipe.yaml"], cwd=workdir,
                           capture_output=True, text=True, timeout=120).stdout
    head = "CONFIRMED: " if confirmed["significant"] else "NOT CONFIRMED: "
    assert f"{head}{confirmed['verdict']}" in shown.splitlines() and "confirmed over 3 paired seeds" in shown


def test_bad_confirmation_options_are_one_line_and_exit_2(workdir: Path) -> None:
    for flags, words in ((["--confirm-seeds", "1"], "--confirm-seeds 1: a paired test needs at least 2 seeds"),
                         (["--confirm-top", "0"], "--confirm-top 0: must be at least 1")):
        done = subprocess.run([sys.executable, "-m", "autotrick", "search", *flags], cwd=workdir,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and words in done.stderr, done.stderr
        assert not (workdir / ".autotrick").exists() and not (workdir / "mlflow.db").exists()


def test_an_interrupted_confirmation_resumes_without_repeating_finished_seeds(ray_address: str, workdir: Path) -> None:
    command = [sys.executable, "-m", "autotrick", "search", "--space", small_space(workdir), "--name", "cut",
               "--address", ray_address, "--confirm-top", "2", "--confirm-seeds", "4",
               "--tracking-uri", f"sqlite:///{workdir}/mlflow.db"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=workdir,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert process.stdout is not None
    deadline, confirmed = time.time() + 300, 0
    while confirmed < 3 and time.time() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        confirmed += line.startswith("confirm ")
    assert confirmed == 3, "the confirmation did not start"
    process.send_signal(signal.SIGKILL)  # a real kill, in the middle of the confirmation
    process.wait(timeout=60)
    before = journal_runs(workdir, "cut")
    assert 3 + 3 <= len(before) < 12  # the 3 reused search trials, the finished seeds; not all 12
    resumed = subprocess.run([sys.executable, "-m", "autotrick", "search", "--name", "cut", "--resume"],
                             cwd=workdir, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = journal_runs(workdir, "cut")
    assert len(after) == 12 and all(after[key] == entry for key, entry in before.items())  # kept, not re-run
    assert resumed.stdout.count("\nconfirm ") == 12 - len(before)  # only the missing seeds ran
    rows = load_recipe(workdir / "cut.recipe.yaml").provenance["confirmed"]["rows"]
    assert [len(row["scores"]) for row in rows] == [4, 4, 4]


POWER = """model: cnn
data: digits
budget: {trials: 3, max_epochs: 8, grace_epochs: 8}
train: {batch_size: 1024}
tricks:
  optim: {lr: [0.05, 0.3]}
"""


def test_a_real_gain_is_confirmed_registered_as_champion_and_ablated_in_mlflow(
        ray_address: str, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """lr 0.3 against the baseline's 0.05 at batch 1024 (8 epochs: 2 steps each): a gain of about
    0.1 that benchmarks/trust.py found significant in 20 of 20 searches."""
    from mlflow import MlflowClient

    (workdir / "power.yaml").write_text(POWER)
    uri = f"sqlite:///{workdir}/mlflow.db"
    code = run_search_command(SearchRequest(space="power.yaml", name="power", confirm_seeds=5, ablate=True,
                                            register="digits-power", tracking_uri=uri))
    out = capsys.readouterr().out
    assert code == 0, out
    recipe = load_recipe(workdir / "power.recipe.yaml")
    confirmed = recipe.provenance["confirmed"]
    assert confirmed["significant"] and recipe.tricks["optim.lr"] == 0.3, out
    assert out.rstrip().splitlines()[-1].startswith(f"trial {confirmed['trial']}'s recipe beat the baseline beyond "
                                                    "seed noise: +")
    client = MlflowClient(uri)
    assert list(client.get_registered_model("digits-power").aliases) == ["champion"]
    # the ablation of a one-trick recipe needs no new run: removed = the baseline, added alone = the recipe
    assert "ablating 1 trick (optim.lr)" in out and "\nablate " not in out
    assert recipe.provenance["ablation"]["minimal"] == ["optim.lr"]
    assert load_recipe(workdir / "power.minimal.recipe.yaml").tricks["optim.lr"] == 0.3
    experiment = client.get_experiment_by_name("power").experiment_id
    parent = next(r for r in client.search_runs([experiment]) if r.data.tags.get("autotrick.role") == "parent")
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith("**Confirmed**") and "**Ablation**" in note
    assert "ablation/ablation.png" in {f.path for f in client.list_artifacts(parent.info.run_id, "ablation")}
