"""`autotrick ablate` against the real thing (a real Ray cluster, torch, a real MLflow store), on a
recipe with two planted tricks: a no-op (label smoothing 1e-7) and a harmful one (a learning rate
30x the baseline's 0.05)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from autotrick.tracking import load_recipe

pytestmark = pytest.mark.slow

PLANTED = """autotrick_recipe: 1
tricks:
  optim: {lr: 1.5}
  smoothing: {eps: 1.0e-07}
training: {model: cnn, data: digits, epochs: 3, batch_size: 128, seed: 0}
provenance: {metric: val_accuracy, search: planted, mlflow_run_id: RUN_ID}
"""


def autotrick(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autotrick", *args], cwd=workdir, capture_output=True, text=True,
                          timeout=600)


def test_a_planted_no_op_is_not_significant_and_a_planted_harmful_lr_is(ray_address: str, workdir: Path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{workdir}/mlflow.db"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("planted"))
    (workdir / "planted.recipe.yaml").write_text(PLANTED.replace("RUN_ID", run.info.run_id))
    done = autotrick(workdir, "ablate", "planted.recipe.yaml", "--seeds", "3", "--address", ray_address,
                     "--tracking-uri", uri)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {row[0]: row for row in csv.reader((workdir / "planted.ablation.csv").read_text().splitlines())}
    head = rows["trick"]
    noop, harmful = dict(zip(head, rows["smoothing.eps"], strict=True)), dict(zip(head, rows["optim.lr"], strict=True))
    assert noop["in minimal"] == "no" and harmful["in minimal"] == "no"
    p_removed, p_added = (i for i, name in enumerate(head) if name == "p (Holm)")
    assert float(rows["smoothing.eps"][p_added].split()[-1]) >= 0.05  # the no-op: not significant either way
    assert float(rows["smoothing.eps"][p_removed].split()[-1]) >= 0.05
    assert harmful["change when added alone ± 95%"].startswith("-")  # a significant loss when added alone
    added_p = rows["optim.lr"][p_added]
    assert added_p == "p < 0.001" or float(added_p.split()[-1]) < 0.05
    assert done.stdout.count("\nablate ") == 12  # recipe, baseline, each removed and added alone: 4 x 3 seeds
    minimal = load_recipe(workdir / "planted.minimal.recipe.yaml")
    assert minimal.tricks["smoothing.eps"] == 0.0 and minimal.tricks["optim.lr"] == 0.05
    # the table in the recipe (autotrick show prints it), and in MLflow
    assert load_recipe(workdir / "planted.recipe.yaml").provenance["ablation"]["table"][0][0] == "trick"
    shown = autotrick(workdir, "show", "planted.recipe.yaml")
    assert "ablation over 3 paired seeds" in shown.stdout and "smoothing.eps" in shown.stdout.split("ablation")[-1]
    files = {f.path for f in client.list_artifacts(run.info.run_id, "ablation")}
    assert files == {"ablation/ablation.csv", "ablation/ablation.md", "ablation/ablation.png",
                     "ablation/minimal.recipe.yaml"}
    assert "**Ablation**" in client.get_run(run.info.run_id).data.tags["mlflow.note.content"]
    again = autotrick(workdir, "ablate", "planted.recipe.yaml", "--seeds", "3", "--address", ray_address,
                      "--tracking-uri", uri)  # every run is in the journal: nothing is trained again
    assert again.returncode == 0 and "\nablate " not in again.stdout, again.stderr


def test_ablating_the_baseline_or_one_seed_is_one_line_and_exit_2(workdir: Path) -> None:
    (workdir / "base.yaml").write_text("autotrick_recipe: 1\ntricks: {}\n")
    (workdir / "one.yaml").write_text(PLANTED)
    for args, words in ((["base.yaml"], "recipe base.yaml: equal to the baseline"),
                        (["one.yaml", "--seeds", "1"], "--seeds 1: a paired test needs at least 2 seeds")):
        done = autotrick(workdir, "ablate", *args)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and words in done.stderr, done.stderr
        assert not (workdir / ".autotrick").exists()
