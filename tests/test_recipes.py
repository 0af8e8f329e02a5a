"""Recipes, round trip: a real search (real Ray, Optuna, torch, MLflow sqlite) writes one; the CLI
exports and shows it; `autotrick train --recipe` re-trains it to the same accuracy; the example
loop and the Python API re-apply it to a user's own model; bad recipes fail in one line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import torch
import torch.nn.functional as F
from mlflow import MlflowClient
from torch import nn

from autotrick.cli import main
from autotrick.commands import SearchRequest, run_search_command
from autotrick.recipe import Recipe, parse_recipe
from autotrick.records import TrialRecord
from autotrick.study import records_from_study
from autotrick.tracking import TAG_BEST_RUN, TAG_PARENT, TAG_ROLE, TAG_TRIAL, load_recipe
from autotrick.tricks.init import WEIGHT_LAYERS
from autotrick.tricks.schedule import lr_factor

pytestmark = pytest.mark.slow

NAME, MODEL_NAME = "tracked", "digits-cnn"
TRIALS, MAX_EPOCHS = 4, 4
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "own_loop.py"
SUMMARY = re.compile(r"^(finished|patience_stopped): val_accuracy (\d\.\d+)", re.MULTILINE)
EPOCH_LINE = re.compile(r"^epoch +(\d+) .* val_acc (\d\.\d+) ", re.MULTILINE)


@dataclass
class Searched:
    workdir: Path
    uri: str
    recipe_file: Path
    parent_id: str
    best_run_id: str
    other_run_id: str            # a trial that is not the best: no recipe on its run
    best: TrialRecord
    records: list[TrialRecord]
    best_curve: dict[int, float]  # the best trial's val_accuracy by epoch, as MLflow holds it


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(args)
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def files_under(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def searched(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Searched]:
    """One small search, its best model registered. The module runs in its folder, so that the
    default store (sqlite:///mlflow.db, which `autotrick train --recipe runs:/...` reads) is its store."""
    workdir = tmp_path_factory.mktemp("recipes")
    uri = f"sqlite:///{workdir}/mlflow.db"
    previous = os.getcwd()
    os.chdir(workdir)
    try:
        code = run_search_command(SearchRequest(space="quick", trials=TRIALS, max_epochs=MAX_EPOCHS, name=NAME,
                                                register=MODEL_NAME, tracking_uri=uri,
                                                no_confirm=True))  # the registry as it was: champion
        assert code == 0
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
            str(workdir / ".autotrick" / NAME / "optuna.journal")))
        records = records_from_study(optuna.load_study(study_name=NAME, storage=storage))
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(NAME)
        assert experiment is not None
        runs = client.search_runs([experiment.experiment_id], max_results=100)
        parent = next(run for run in runs if run.data.tags.get(TAG_ROLE) == "parent")
        children = {int(run.data.tags[TAG_TRIAL]): run for run in runs
                    if run.data.tags.get(TAG_PARENT) == parent.info.run_id}
        best_id = parent.data.tags[TAG_BEST_RUN]
        best_number = next(number for number, run in children.items() if run.info.run_id == best_id)
        curve = {p.step: p.value for p in client.get_metric_history(best_id, "val_accuracy")}
        other_id = next(run.info.run_id for run in children.values() if run.info.run_id != best_id)
        yield Searched(workdir, uri, workdir / f"{NAME}.recipe.yaml", parent.info.run_id, best_id, other_id,
                       next(r for r in records if r.number == best_number), records, curve)
    finally:
        os.chdir(previous)


# --------------------------------------------------------------------------- export, show, load


def test_export_by_name_and_by_run_writes_the_search_recipe(searched: Searched,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    written = load_recipe(searched.recipe_file)
    assert written.tricks == searched.best.values  # the recipe is the best trial's values
    for flag, value, output in (("--name", NAME, "by-name.yaml"), ("--run", searched.parent_id, "by-run.yaml"),
                                ("--run", searched.best_run_id, "by-best-run.yaml")):
        code, out, err = run_cli(["export", flag, value, "-o", output, "--tracking-uri", searched.uri], capsys)
        assert (code, err) == (0, ""), err
        assert out.strip() == f"recipe written to {output}"
        exported = parse_recipe(Path(output).read_text(), output)
        assert exported.tricks == written.tricks
        assert exported.training == written.training
        assert exported.provenance["mlflow_run_id"] == searched.parent_id


def test_show_prints_the_gain_over_the_baseline(searched: Searched, capsys: pytest.CaptureFixture[str]) -> None:
    provenance = load_recipe(searched.recipe_file).provenance
    gain = provenance["value"] - provenance["baseline"]
    for ref in (str(searched.recipe_file), f"runs:/{searched.parent_id}/recipe.yaml"):
        code, out, err = run_cli(["show", ref, "--tracking-uri", searched.uri], capsys)
        assert (code, err) == (0, ""), err
        assert f"val_accuracy {provenance['value']:.4f}, baseline {provenance['baseline']:.4f}, gain {gain:+.4f}" in out
        assert f"(search '{NAME}', trial {searched.best.number})" in out
        assert re.search(r"^  optim\.lr +", out, re.MULTILINE) or re.search(r"^\* optim\.lr +", out, re.MULTILINE)


def test_load_recipe_from_a_file_a_run_and_the_registry_agree(searched: Searched) -> None:
    from_file = load_recipe(searched.recipe_file)
    from_run = load_recipe(f"runs:/{searched.parent_id}/recipe.yaml", tracking_uri=searched.uri)
    from_best_run = load_recipe(f"runs:/{searched.best_run_id}", tracking_uri=searched.uri)
    from_registry = load_recipe(f"models:/{MODEL_NAME}@champion", tracking_uri=searched.uri)
    for recipe in (from_run, from_best_run, from_registry):
        assert recipe.tricks == from_file.tricks
        assert recipe.training == from_file.training
        assert recipe.provenance == from_file.provenance


# --------------------------------------------------------------------------- re-training


def test_train_with_the_recipe_reproduces_the_searched_accuracy(searched: Searched,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    recipe = load_recipe(searched.recipe_file)
    code, out, err = run_cli(["train", "--recipe", str(searched.recipe_file)], capsys)
    assert code == 0, out + err
    assert f"{recipe.training['epochs']} epochs, batch {recipe.training['batch_size']}, seed 0, cpu" in out
    epochs = {int(epoch): float(accuracy) for epoch, accuracy in EPOCH_LINE.findall(out)}
    assert sorted(epochs) == list(range(1, recipe.training["epochs"] + 1)), out
    summary = SUMMARY.search(out)
    assert summary is not None, out
    accuracy = float(summary.group(2))
    assert abs(accuracy - recipe.provenance["value"]) <= 0.005, (
        f"re-trained to {accuracy:.4f}; the search's trial {recipe.provenance['trial']} reached "
        f"{recipe.provenance['value']:.4f}\n{out}")
    # The recipe names the trial's thread count (1, in its Ray worker) and `train` uses it: the same
    # kernels in the same order, so epoch by epoch the same numbers, not merely close ones.
    assert recipe.training["threads"] == 1
    for epoch, logged in searched.best_curve.items():
        assert f"{epochs[epoch]:.4f}" == f"{logged:.4f}", (epoch, epochs[epoch], logged)


def test_every_finished_trial_retrains_to_its_logged_accuracy(searched: Searched, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Not only the best: each trial that ran its whole budget, as a recipe of its own values."""
    training = load_recipe(searched.recipe_file).training
    finished = [r for r in searched.records if r.outcome == "finished"]
    assert finished  # the baseline always runs to the end
    for record in finished:
        path = Recipe(tricks=dict(record.values), training=training).write(tmp_path / f"trial-{record.number}.yaml")
        code, out, err = run_cli(["train", "--recipe", str(path)], capsys)
        assert code == 0, out + err
        summary = SUMMARY.search(out)
        assert summary is not None, out
        assert abs(float(summary.group(2)) - record.metric) <= 0.005, (record.number, record.values, out)


def test_the_own_loop_example_trains_with_the_recipe(searched: Searched) -> None:
    done = subprocess.run([sys.executable, str(EXAMPLE), str(searched.recipe_file), "--epochs", "3"],
                          capture_output=True, text=True, timeout=300, cwd=searched.workdir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(re.findall(r"^epoch \d: val_accuracy", done.stdout, re.MULTILINE)) == 3, done.stdout
    final = re.search(r"^final val_accuracy (\d\.\d+)$", done.stdout, re.MULTILINE)
    assert final is not None, done.stdout
    assert float(final.group(1)) > 0.8, done.stdout


# --------------------------------------------------------------------------- the Python API


class OwnNet(nn.Module):
    """A user's model: batch norms, biases, no dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))


API_RECIPE = """\
autotrick_recipe: 1
tricks:
  norm: {type: group, groups: 4}
  dropout: {p: 0.25}
  init: {scheme: orthogonal}
  optim: {name: sgd, lr: 0.1, momentum: 0.9, weight_decay: 0.001, no_decay_bias_norm: true}
  schedule: {name: cosine, warmup_epochs: 1.0, min_lr_ratio: 0.1}
  smoothing: {eps: 0.1}
  prune: {ratio: 0.5, finetune_epochs: 2}
training: {epochs: 3, seed: 0}
"""


def test_recipe_apply_puts_every_trick_on_a_users_own_model() -> None:
    torch.manual_seed(0)
    recipe = parse_recipe(API_RECIPE, "api.yaml")
    steps_per_epoch, epochs, peak = 4, 3, 0.1
    setup = recipe.apply(OwnNet(), num_classes=10, steps_per_epoch=steps_per_epoch)
    model = setup.model

    # model side: norms swapped, dropout inserted before the classifier, weights re-initialized
    assert not [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    groups = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert [(g.num_groups, g.num_channels) for g in groups] == [(4, 16), (4, 32)]
    assert isinstance(model.head, nn.Sequential) and isinstance(model.head[0], nn.Dropout)
    assert model.head[0].p == 0.25 and isinstance(model.head[1], nn.Linear)
    head = model.head[1].weight.detach()
    assert torch.allclose(head @ head.T, torch.eye(10), atol=1e-5)  # orthonormal rows
    first = model.body[0].weight.detach().flatten(1)  # 16 x 9: orthonormal columns
    assert torch.allclose(first.T @ first, torch.eye(9), atol=1e-5)
    for layer in (model.body[0], model.body[3], model.head[1]):
        assert torch.count_nonzero(layer.bias) == 0
    assert all(torch.all(g.weight == 1) and torch.count_nonzero(g.bias) == 0 for g in groups)

    # optimizer: SGD; biases and norm parameters in a group without weight decay
    assert isinstance(setup.optimizer, torch.optim.SGD)
    decayed = {id(m.weight) for m in model.modules() if isinstance(m, WEIGHT_LAYERS)}
    by_decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in setup.optimizer.param_groups}
    assert by_decay == {0.001: decayed, 0.0: {id(p) for p in model.parameters()} - decayed}
    assert all(g["momentum"] == 0.9 for g in setup.optimizer.param_groups)

    # loss: soft cross-entropy with label smoothing, which is torch's label_smoothing
    logits, labels = torch.randn(6, 10), torch.randint(0, 10, (6,))
    targets = setup.targets(labels)
    assert torch.allclose(targets.sum(1), torch.ones(6))
    assert torch.allclose(targets.max(1).values, torch.full((6,), 0.9 + 0.01))
    assert torch.allclose(setup.loss(logits, targets), F.cross_entropy(logits, labels, label_smoothing=0.1))

    # schedule: step k runs at peak * lr_factor(k), warmup then cosine down to 0.1 * peak
    def expected_lr(step: int) -> float:
        return peak * lr_factor(step, steps_per_epoch=steps_per_epoch, epochs=epochs, name="cosine",
                                warmup_epochs=1.0, t_max=None, min_lr_ratio=0.1)

    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    model.train()
    for step in range(steps_per_epoch * epochs):
        assert setup.lr == pytest.approx(expected_lr(step)), step
        assert all(g["lr"] == pytest.approx(expected_lr(step)) for g in setup.optimizer.param_groups)
        setup.step(setup.loss(model(x), setup.targets(y)))
    assert expected_lr(0) == pytest.approx(peak / steps_per_epoch)
    assert setup.lr == pytest.approx(0.1 * peak)

    # pruning: half the conv/linear weights to zero, the mask held while finetuning, then permanent
    assert (setup.prune_ratio, setup.finetune_epochs) == (0.5, 2)
    setup.prune()
    for _ in range(3):
        setup.step(setup.loss(model(x), setup.targets(y)))
    sparsity = setup.finish_pruning()
    assert sparsity.sparsity == pytest.approx(0.5, abs=0.002)
    assert not [name for name, _ in model.named_buffers() if name.endswith("_mask")]
    weights = [m.weight for m in model.modules() if isinstance(m, WEIGHT_LAYERS)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(sparsity.sparsity)
    assert sparsity.nonzero_params == sum(int(torch.count_nonzero(p)) for p in model.parameters())


# --------------------------------------------------------------------------- bad recipes


BAD_FILES = {
    "schema version": ("autotrick_recipe: 2\ntricks: {}\n", "schema version 2 is not supported"),
    "unknown trick": ("autotrick_recipe: 1\ntricks: {warp: {speed: 9}}\n", "unknown trick parameter 'warp.speed'"),
    "unknown param": ("autotrick_recipe: 1\ntricks: {norm: {flavour: 1}}\n",
                      "unknown trick parameter 'norm.flavour'; expected norm.type, norm.groups"),
    "out of range": ("autotrick_recipe: 1\ntricks: {optim: {lr: 50}}\n", "optim.lr: 50 is not allowed"),
    "bad training setting": ("autotrick_recipe: 1\ntricks: {}\ntraining: {threads: 0}\n",
                             "training.threads: 0 must be a positive integer"),
}
BAD_REFS = {
    "no such run": ("runs:/0123456789abcdef0123456789abcdef/recipe.yaml",
                    "no run '0123456789abcdef0123456789abcdef'"),
    "run without recipe": ("runs:/{other}/recipe.yaml", "has no artifact 'recipe.yaml'"),
    "no such alias": (f"models:/{MODEL_NAME}@nope", f"model '{MODEL_NAME}' has no alias 'nope'; its aliases: champion"),
}


def assert_fails_in_one_line(args: list[str], expected: str, folder: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    before = files_under(folder)
    code, out, err = run_cli(args, capsys)
    assert code == 2, out + err
    assert len(err.strip().splitlines()) == 1 and err.startswith("autotrick: error: "), err
    assert expected in err, err
    assert "Traceback" not in out + err
    assert not EPOCH_LINE.search(out), out  # nothing trained
    assert files_under(folder) == before  # nothing written


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_a_bad_recipe_file_exits_2_with_one_line(case: str, searched: Searched, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    text, expected = BAD_FILES[case]
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    assert_fails_in_one_line(["train", "--recipe", str(recipe)], expected, searched.workdir, capsys)
    assert_fails_in_one_line(["show", str(recipe)], expected, searched.workdir, capsys)


@pytest.mark.parametrize("case", BAD_REFS, ids=list(BAD_REFS))
def test_a_missing_recipe_in_the_store_exits_2_with_one_line(case: str, searched: Searched,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    ref, expected = BAD_REFS[case]
    ref = ref.format(other=searched.other_run_id)
    assert Path.cwd() == searched.workdir  # `train` reads the default store: this search's
    assert_fails_in_one_line(["train", "--recipe", ref], expected, searched.workdir, capsys)
    assert_fails_in_one_line(["show", ref, "--tracking-uri", searched.uri], expected, searched.workdir, capsys)
    if ref.startswith("runs:/"):
        run_id = ref.removeprefix("runs:/").partition("/")[0]
        assert_fails_in_one_line(["export", "--run", run_id, "-o", "never.yaml", "--tracking-uri", searched.uri],
                                 expected, searched.workdir, capsys)


# --------------------------------------------------------------------------- distillation from the registry

DISTILL_SPACE = EXAMPLE.parent / "distill.yaml"


def test_the_distill_example_searches_a_student_of_the_registered_model(searched: Searched,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """examples/distill.md, step 2, at a tiny budget: the teacher is this module's registered champion."""
    assert Path.cwd() == searched.workdir
    code = run_search_command(SearchRequest(space=str(DISTILL_SPACE), trials=3, max_epochs=2, name="student",
                                            tracking_uri=searched.uri))
    out, _ = capsys.readouterr()
    assert code == 0, out
    fetched = list((searched.workdir / ".autotrick" / ".models").glob("*.pt"))
    assert len(fetched) == 1  # the registered model, fetched once as a checkpoint the trials load
    client = MlflowClient(searched.uri)
    experiment = client.get_experiment_by_name("student")
    assert experiment is not None
    trials = [r for r in client.search_runs([experiment.experiment_id]) if TAG_TRIAL in r.data.tags]
    teachers = sorted(r.data.params.get("distill.teacher", "") for r in trials)
    assert teachers == [""] + ["models:/digits-cnn@champion"] * 2, teachers  # the baseline has none
    assert all("distill.temperature" in r.data.params for r in trials if r.data.params.get("distill.teacher"))
    recipe = load_recipe(searched.workdir / "student.recipe.yaml")
    assert recipe.training["model"] == "mlp"

    # the model behind the champion, and the same model on its run, load back as models
    from autotrick.tracking import load_model

    x = torch.zeros(2, 1, 8, 8)
    by_alias = load_model(f"models:/{MODEL_NAME}@champion", tracking_uri=searched.uri)
    by_run = load_model(f"runs:/{searched.best_run_id}/model", tracking_uri=searched.uri)
    torch.testing.assert_close(by_alias(x), by_run(x))

    # train --set distill.teacher=models:/... resolves the reference the same way
    code, out, err = run_cli(["train", "--model", "mlp", "--epochs", "1",
                              "--set", f"distill.teacher=models:/{MODEL_NAME}@champion"], capsys)
    assert code == 0, out + err
    assert "distill.teacher=models:/digits-cnn@champion" in out and "finished: val_accuracy" in out
