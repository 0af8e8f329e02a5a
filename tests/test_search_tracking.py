"""What a real search leaves in MLflow: one search on digits (a real Ray cluster of 2 CPUs, real
Optuna, real torch, a real MLflow sqlite store), shared by every test of this module, then read
back with MlflowClient and checked against the Optuna study the search kept."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import mlflow
import mlflow.pytorch
import optuna
import pytest
import torch
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run

from autotrick.augment import normalize
from autotrick.commands import SearchRequest, run_search_command
from autotrick.data import load_data
from autotrick.records import Outcome, TrialRecord
from autotrick.space import load_space
from autotrick.study import records_from_study
from autotrick.tracking import (
    CHAMPION,
    TAG_BASELINE,
    TAG_BEST,
    TAG_BEST_RUN,
    TAG_OUTCOME,
    TAG_PARENT,
    TAG_ROLE,
    TAG_SEARCH,
    TAG_TRIAL,
)

pytestmark = pytest.mark.slow

ML = "?workflowType=machine_learning"  # the UI's machine-learning view
NAME, MODEL_NAME = "tracked", "digits-cnn"
TRIALS, MAX_EPOCHS = 6, 4
QUICK = load_space("quick")
GRACE_EPOCHS = min(QUICK.budget.grace_epochs, MAX_EPOCHS)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# How each outcome is told to Optuna (autotrick.search) and how its run ends in MLflow (tracking.py).
STATE = {Outcome.FINISHED: optuna.trial.TrialState.COMPLETE,
         Outcome.PATIENCE_STOPPED: optuna.trial.TrialState.COMPLETE,
         Outcome.ASHA_STOPPED: optuna.trial.TrialState.PRUNED, Outcome.DIVERGED: optuna.trial.TrialState.FAIL,
         Outcome.OOM: optuna.trial.TrialState.FAIL, Outcome.FAILED: optuna.trial.TrialState.FAIL}
RUN_STATUS = {Outcome.FINISHED: "FINISHED", Outcome.PATIENCE_STOPPED: "FINISHED", Outcome.ASHA_STOPPED: "FINISHED",
              Outcome.DIVERGED: "FAILED", Outcome.OOM: "FAILED", Outcome.FAILED: "FAILED"}


@dataclass
class Tracked:
    workdir: Path
    uri: str
    code: int
    client: MlflowClient
    parent: Run
    children: dict[int, Run]   # by trial number
    study: optuna.Study
    records: dict[int, TrialRecord]
    recipe_file: Path
    warnings: list[str]        # what SearchTracker.close() reported


def text(value: object) -> str:
    """A trick value as the recipe's YAML writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def shown(value: object) -> str:
    """A trick value as an MLflow param shows it: floats to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else text(value)


@pytest.fixture(scope="module")
def tracked(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tracked]:
    workdir = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{workdir}/mlflow.db"
    previous = os.getcwd()
    os.chdir(workdir)  # the search writes .autotrick/ and tracked.recipe.yaml in the working directory
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code = run_search_command(SearchRequest(space="quick", trials=TRIALS, max_epochs=MAX_EPOCHS,
                                                    name=NAME, register=MODEL_NAME, tracking_uri=uri,
                                                    no_confirm=True))  # tests/test_confirm.py confirms
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(NAME)
        assert experiment is not None, f"no MLflow experiment '{NAME}'"
        runs = client.search_runs([experiment.experiment_id], max_results=1000)
        parents = [run for run in runs if run.data.tags.get(TAG_ROLE) == "parent"]
        assert len(parents) == 1, [run.info.run_name for run in runs]
        children: dict[int, Run] = {}
        for run in runs:
            if run.data.tags.get(TAG_PARENT) == parents[0].info.run_id:
                number = int(run.data.tags[TAG_TRIAL])
                assert number not in children, f"two child runs for trial {number}"
                children[number] = run
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
            str(workdir / ".autotrick" / NAME / "optuna.journal")))
        study = optuna.load_study(study_name=NAME, storage=storage)
        records = {r.number: r for r in records_from_study(study)}
        yield Tracked(workdir, uri, code, client, parents[0], children, study, records,
                      workdir / f"{NAME}.recipe.yaml",
                      [str(w.message) for w in caught if "MLflow logging" in str(w.message)])
    finally:
        os.chdir(previous)


def test_the_search_succeeds_and_logs_without_warnings(tracked: Tracked) -> None:
    assert tracked.code == 0
    assert tracked.warnings == []
    assert sorted(tracked.records) == list(range(TRIALS))
    assert tracked.recipe_file.is_file()


def test_one_parent_run_describes_the_search(tracked: Tracked) -> None:
    parent = tracked.parent
    assert parent.info.run_name == NAME and parent.info.status == "FINISHED"
    assert parent.data.tags[TAG_SEARCH] == NAME
    params = parent.data.params
    assert params["space"] == "quick"  # a built-in space by its name, not its path
    assert {k: params[k] for k in ("name", "model", "data", "metric", "mode", "device")} == {
        "name": NAME, "model": "cnn", "data": "digits", "metric": "val_accuracy", "mode": "max", "device": "cpu"}
    assert (params["trials"], params["max_epochs"], params["batch_size"], params["seed"]) == (
        str(TRIALS), str(MAX_EPOCHS), str(QUICK.batch_size), "0")
    for package in ("autotrick", "torch", "ray", "optuna", "mlflow"):
        assert parent.data.tags[f"autotrick.version.{package}"] == version(package)


def test_exactly_one_child_run_per_trial_with_its_trick_params(tracked: Tracked) -> None:
    assert sorted(tracked.children) == list(range(TRIALS))
    for number, run in tracked.children.items():
        record = tracked.records[number]
        tags, params = run.data.tags, run.data.params
        assert tags[TAG_ROLE] == "trial" and tags[TAG_SEARCH] == NAME
        assert tags[TAG_BASELINE] == text(number == 0) and record.baseline == (number == 0)
        assert run.info.run_name.startswith(f"trial-{number:03d}" + (" (baseline)" if number == 0 else ""))
        assert ("(stopped at " in run.info.run_name) == (record.outcome is Outcome.ASHA_STOPPED)
        # every trick value the trial drew that is not off, under its dotted name, rounded for display,
        # beside the model, the data and the budget
        assert {"norm.type", "optim.name", "optim.lr", "schedule.name", "smoothing.eps"} <= set(params)
        assert params == {"model": "cnn", "data": "digits", "max_epochs": str(MAX_EPOCHS),
                          "batch_size": str(QUICK.batch_size),
                          **{key: shown(value) for key, value in record.values.items() if value is not None}}
    baseline = tracked.children[0].data.params
    assert (baseline["norm.type"], baseline["optim.lr"], baseline["smoothing.eps"]) == ("keep", "0.05", "0")
    assert "dropout.p" not in baseline  # off in the baseline: no param, not "null"


def test_each_child_holds_its_per_epoch_curves(tracked: Tracked) -> None:
    for number, run in tracked.children.items():
        record = tracked.records[number]
        assert record.epochs >= 1
        for curve in ("val_accuracy", "val_loss", "train_loss", "lr"):
            points = tracked.client.get_metric_history(run.info.run_id, curve)
            steps = sorted(point.step for point in points)
            assert steps == list(range(1, record.epochs + 1)), (
                f"trial {number} ({record.outcome}) ran {record.epochs} epochs; its {curve} curve has steps {steps}")
        accuracy = sorted(tracked.client.get_metric_history(run.info.run_id, "val_accuracy"), key=lambda p: p.step)
        if record.metric is not None:  # the last epoch's accuracy is the trial's result
            assert accuracy[-1].value == pytest.approx(record.metric)
        if record.successful:
            assert run.data.metrics["final_val_accuracy"] == pytest.approx(record.metric)
        if not record.outcome.failed:  # one column in which every trial compares: the common budget
            assert run.data.metrics[f"val_accuracy_at_epoch_{GRACE_EPOCHS}"] == pytest.approx(
                accuracy[GRACE_EPOCHS - 1].value)
        assert run.data.metrics["epochs_trained"] == record.epochs
        cpu = tracked.client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
        assert sorted(p.step for p in cpu) == list(range(1, record.epochs + 1))
        assert all(0 <= p.value <= 100 for p in cpu)
        memory = run.data.metrics["system/system_memory_usage_megabytes"]
        assert memory > 0
        lrs = tracked.client.get_metric_history(run.info.run_id, "lr_per_step")
        steps_per_epoch = -(-len(load_data("digits").train_y) // QUICK.batch_size)
        assert sorted(p.step for p in lrs) == list(range(1, record.epochs * steps_per_epoch + 1))
        inputs = tracked.client.get_run(run.info.run_id).inputs.dataset_inputs
        assert {i.dataset.name for i in inputs} == {"digits-training", "digits-validation"}


def test_outcomes_agree_with_the_optuna_study(tracked: Tracked) -> None:
    trials = {trial.number: trial for trial in tracked.study.trials}
    assert sorted(trials) == list(range(TRIALS))
    for number, run in tracked.children.items():
        outcome, record, trial = Outcome(run.data.tags[TAG_OUTCOME]), tracked.records[number], trials[number]
        assert outcome == record.outcome
        assert trial.state == STATE[outcome], (number, outcome, trial.state)
        assert run.info.status == RUN_STATUS[outcome]
        assert {key: text(value) for key, value in trial.params.items()} == {
            key: text(record.values[key]) for key in trial.params}
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert trial.value == pytest.approx(run.data.metrics["final_val_accuracy"])
        if outcome == "finished":
            assert record.epochs == MAX_EPOCHS
        elif outcome == "asha_stopped":  # by ASHA, at a rung: never before the grace period
            assert GRACE_EPOCHS <= record.epochs < MAX_EPOCHS
    assert tracked.records[0].outcome == "finished"  # ASHA never stops the baseline


def test_the_parent_description_names_the_winning_run_and_its_value(tracked: Tracked) -> None:
    best = tracked.client.get_run(tracked.parent.data.tags[TAG_BEST_RUN])
    assert best.info.run_name.endswith("★ best")
    note = tracked.parent.data.tags["mlflow.note.content"]
    value = tracked.parent.data.metrics["best_val_accuracy"]
    assert note.startswith(f"**Winner: [{best.info.run_name}](#/experiments/{best.info.experiment_id}/runs/"
                           f"{best.info.run_id}{ML})**: val_accuracy **{value:.4g}**")
    assert f"{TRIALS} of {TRIALS} ran" in note
    assert f"[{MODEL_NAME} version 1](#/models/{MODEL_NAME}/versions/1{ML})" in note


def test_the_parent_holds_the_gain_and_names_the_best_child(tracked: Tracked) -> None:
    metrics = tracked.parent.data.metrics
    assert metrics["best_val_accuracy"] >= metrics["baseline_val_accuracy"]
    assert metrics["baseline_val_accuracy"] == pytest.approx(tracked.records[0].metric)
    gain = metrics["best_val_accuracy"] - metrics["baseline_val_accuracy"]
    assert metrics["gain_val_accuracy"] == pytest.approx(gain)
    assert metrics["best_val_accuracy"] == pytest.approx(tracked.study.best_value)
    finals = {n: run.data.metrics["final_val_accuracy"] for n, run in tracked.children.items()
              if Outcome(run.data.tags[TAG_OUTCOME]).successful}
    assert metrics["best_val_accuracy"] == pytest.approx(max(finals.values()))
    best_id = tracked.parent.data.tags[TAG_BEST_RUN]
    tagged = [run.info.run_id for run in tracked.children.values() if run.data.tags.get(TAG_BEST) == "true"]
    assert tagged == [best_id]
    best = tracked.client.get_run(best_id)
    assert best.data.metrics["final_val_accuracy"] == pytest.approx(metrics["best_val_accuracy"])


def test_the_recipe_is_an_artifact_of_the_parent_and_the_best_child(tracked: Tracked, tmp_path: Path) -> None:
    written = yaml.safe_load(tracked.recipe_file.read_text())
    assert written["provenance"]["mlflow_run_id"] == tracked.parent.info.run_id
    best_id = tracked.parent.data.tags[TAG_BEST_RUN]
    for run_id in (tracked.parent.info.run_id, best_id):
        assert "recipe.yaml" in [f.path for f in tracked.client.list_artifacts(run_id)]
        path = tracked.client.download_artifacts(run_id, "recipe.yaml", str(tmp_path / run_id))
        logged = yaml.safe_load(Path(path).read_text())
        assert {k: v for k, v in logged.items() if k != "provenance"} == {
            k: v for k, v in written.items() if k != "provenance"}
        assert logged["provenance"]["value"] == written["provenance"]["value"]
    best_number = int(tracked.client.get_run(best_id).data.tags[TAG_TRIAL])
    assert written["provenance"]["trial"] == best_number
    assert written["training"] == {"model": "cnn", "data": "digits", "epochs": MAX_EPOCHS,
                                   "batch_size": QUICK.batch_size,
                                   "seed": 0, "precision": "fp32", "threads": 1}
    # the recipe holds the best trial's values, nested by trick
    flat = {f"{trick}.{param}": value for trick, params in written["tricks"].items() for param, value in params.items()}
    assert flat == tracked.records[best_number].values
    baseline_children = [run.info.run_id for run in tracked.children.values() if run.info.run_id != best_id]
    for run_id in baseline_children:  # only the best child carries it
        assert "recipe.yaml" not in [f.path for f in tracked.client.list_artifacts(run_id)]


def test_the_plots_are_png_files_and_an_interactive_page_under_plots(tracked: Tracked, tmp_path: Path) -> None:
    parent_id = tracked.parent.info.run_id
    names = {Path(f.path).name for f in tracked.client.list_artifacts(parent_id, "plots")}
    assert {"optimization_history.png", "interactive.html"} <= names
    # importance and choices rest on every trial that reached the common budget, not only the finished ones
    compared = [r for r in tracked.records.values() if not r.outcome.failed and r.epochs >= GRACE_EPOCHS]
    if len(compared) >= 2:
        assert "param_importance.png" in names
    if len({r.values["norm.type"] for r in compared}) >= 2:  # a choice that took two values
        assert "choice_norm.type.png" in names
    folder = Path(tracked.client.download_artifacts(parent_id, "plots", str(tmp_path)))
    for name in names - {"interactive.html"}:
        data = (folder / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000, name
    page = (folder / "interactive.html").read_text()
    assert "Parallel Coordinate Plot" in page
    assert f"val_accuracy_at_epoch_{GRACE_EPOCHS}, {len(compared)} trials" in page


def test_the_best_model_is_the_registered_champion_and_predicts_digits(tracked: Tracked) -> None:
    model = tracked.client.get_registered_model(MODEL_NAME)
    assert CHAMPION in model.aliases
    champion = tracked.client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
    assert champion.run_id == tracked.parent.data.tags[TAG_BEST_RUN]
    mlflow.set_tracking_uri(tracked.uri)
    loaded = mlflow.pytorch.load_model(f"models:/{MODEL_NAME}@{CHAMPION}")
    data = load_data("digits")
    loaded.eval()
    with torch.no_grad():
        predicted = loaded(normalize(data.val_x, data.mean, data.std)).argmax(1)
    accuracy = float((predicted == data.val_y).float().mean())
    best = tracked.parent.data.metrics["best_val_accuracy"]
    assert accuracy >= best - 0.01, f"the champion scores {accuracy:.4f}; its trial scored {best:.4f}"
    info = mlflow.models.get_model_info(f"models:/{MODEL_NAME}@{CHAMPION}")
    assert info.signature is not None and info.saved_input_example_info is not None
    assert list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 1, 8, 8]  # digits images
    assert list(info.signature.outputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 10]
    assert "val_accuracy" in tracked.client.get_model_version(MODEL_NAME, champion.version).description


def test_nothing_is_left_running(tracked: Tracked) -> None:
    experiment_id = tracked.parent.info.experiment_id
    runs = tracked.client.search_runs([experiment_id], max_results=1000)
    assert len(runs) == TRIALS + 1
    assert [run.info.run_name for run in runs if run.info.status == "RUNNING"] == []
    assert all(run.info.end_time is not None for run in runs)
    assert optuna.trial.TrialState.RUNNING not in {t.state for t in tracked.study.trials}
