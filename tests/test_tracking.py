"""SearchTracker and the recipe look-ups against a real MLflow sqlite store, a real Optuna study
and a real (tiny) torch model: nothing mocked."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.pytorch
import optuna
import pytest
import torch
from mlflow import MlflowClient
from mlflow.entities import Run
from torch import nn

from autotrick.data import load_data
from autotrick.errors import ConfigError
from autotrick.recipe import Recipe
from autotrick.records import Outcome, SearchInfo, SearchResult, TrialRecord, best_of
from autotrick.tracking import (
    CHAMPION,
    TAG_BEST,
    TAG_BEST_RUN,
    TAG_NOTE,
    TAG_OUTCOME,
    TAG_PARENT,
    TAG_REASON,
    TAG_TRIAL,
    SearchTracker,
    export_recipe_text,
    fetch_recipe_text,
    load_recipe,
    ui_url,
)
from autotrick.tricks import defaults

ML = "?workflowType=machine_learning"  # the UI's machine-learning view
NAME = "unit-search"
MODEL_NAME = "unit-digits"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CURVES = ("train_loss", "val_loss", "val_accuracy", "lr", "epoch_seconds", "images_per_s",
          "system/cpu_utilization_percentage")
GRACE = 2
STEPS_PER_EPOCH = 3
# Trial 1 onwards take their outcome in this order; the baseline (trial 0) finishes.
OUTCOMES = tuple(Outcome.parse(name) for name in (  # the two stopped ones by their names before the rename
    "finished", "stopped_early", "diverged", "failed", "finished", "early_stopped"))
LONG_EPOCHS = 180  # 180 epochs x 6 curves: past MLflow's 1000 metrics per log_batch call


def search_info(name: str = NAME) -> SearchInfo:
    return SearchInfo(name=name, space="quick", model="cnn", data="digits", metric="val_accuracy",
                      mode="max", trials=len(OUTCOMES) + 1, max_epochs=LONG_EPOCHS, batch_size=64, seed=0,
                      device="cpu", grace_epochs=GRACE, versions={"autotrick": "0.1.0", "mlflow": mlflow.__version__})


def history(epochs: int, final: float, diverged: bool = False) -> list[dict[str, float]]:
    rows = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_accuracy": final * e / epochs,
             "lr": 0.05, "seconds": 0.5, "images_per_s": 3000.0, "setup_seconds": 1.5,
             "system/cpu_utilization_percentage": 50.0 + e} for e in range(1, epochs + 1)]
    if diverged:
        rows[-1]["val_loss"] = math.nan
    return rows


def make_study() -> optuna.Study:
    """A real study over a categorical, a conditional categorical, a bool and a float parameter."""

    def objective(trial: optuna.Trial) -> float:
        norm = trial.suggest_categorical("norm.type", ["keep", "batch", "group"])
        if norm == "group":
            trial.suggest_categorical("norm.groups", [4, 8])
        nesterov = trial.suggest_categorical("optim.nesterov", [False, True])
        lr = trial.suggest_float("optim.lr", 0.001, 0.3, log=True)
        return 0.9 + 0.03 * (norm != "keep") + 0.01 * nesterov - 0.02 * abs(math.log10(lr) + 1.3)

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=3))
    study.enqueue_trial({"norm.type": "keep", "optim.nesterov": False, "optim.lr": 0.05})  # trial 0: the baseline
    study.optimize(objective, n_trials=len(OUTCOMES) + 1)
    return study


def warmup_lrs(epochs: int) -> list[list[float]]:
    """[step, lr] pairs of a linear warmup over the first epoch, as the trainer reports them."""
    return [[step, 0.05 * min(1.0, step / STEPS_PER_EPOCH)] for step in range(1, epochs * STEPS_PER_EPOCH + 1)]


def make_records(study: optuna.Study) -> list[TrialRecord]:
    baseline = TrialRecord(number=0, values=defaults(), outcome="finished", metric=0.9,
                           epochs=LONG_EPOCHS, history=history(LONG_EPOCHS, 0.9), baseline=True, seconds=100.0,
                           step_lrs=warmup_lrs(LONG_EPOCHS))
    records = [baseline]
    for trial, outcome in zip(study.trials[1:], OUTCOMES, strict=True):
        number, values = trial.number, {**defaults(), **trial.params}
        if outcome in ("diverged", "failed"):
            reason = "loss became nan at epoch 2" if outcome == "diverged" else "RuntimeError: boom"
            curves = history(2, 0.3, diverged=True)
            trace = 'Traceback (most recent call last):\n  File "trainer.py", line 1\nRuntimeError: boom\n'
            records.append(TrialRecord(number, values, outcome, None, 2, curves, reason,
                                       error=trace if outcome == "failed" else ""))
        else:
            epochs = 2 if outcome is Outcome.ASHA_STOPPED else 4
            # The patience-stopped trial was also pruned: what it measured goes to its run.
            measured = {"sparsity": 0.5, "nonzero_params": 1234.0} if outcome is Outcome.PATIENCE_STOPPED else {}
            records.append(TrialRecord(number, values, outcome, trial.value, epochs,
                                       history(epochs, trial.value), seconds=3.0, measurements=measured,
                                       step_lrs=warmup_lrs(epochs)))
    return records


def recipe_for(best: TrialRecord) -> Recipe:
    return Recipe(tricks=dict(best.values), training={"model": "cnn", "data": "digits", "epochs": 4},
                  provenance={"metric": "val_accuracy", "value": best.metric, "search": NAME})


def children(client: MlflowClient, run: Run) -> dict[int, Run]:
    found = client.search_runs([run.info.experiment_id], f"tags.`{TAG_PARENT}` = '{run.info.run_id}'")
    numbers = [int(r.data.tags[TAG_TRIAL]) for r in found]
    assert len(numbers) == len(set(numbers)), f"more than one child run for a trial: {sorted(numbers)}"
    return {int(r.data.tags[TAG_TRIAL]): r for r in found}


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty sqlite store, copied by each test: migrations take seconds."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    started = time.perf_counter()
    MlflowClient(f"sqlite:///{path}").search_experiments()
    print(f"fresh MLflow sqlite store created in {time.perf_counter() - started:.2f}s")
    return path


def copy_store(empty_store: Path, folder: Path) -> str:
    return f"sqlite:///{shutil.copy(empty_store, folder / 'mlflow.db')}"


def close_cleanly(tracker: SearchTracker) -> None:
    """close() turns a failed write into a warning: here, that is a test failure."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker.close(timeout=120)
    assert not [str(w.message) for w in caught if "MLflow logging" in str(w.message)]


@dataclass
class Logged:
    uri: str
    client: MlflowClient
    tracker: SearchTracker
    parent: Run
    children: dict[int, Run]
    records: list[TrialRecord]
    best: TrialRecord
    recipe: str
    model: nn.Module
    example: torch.Tensor
    environment: tuple[dict[str, str | None], dict[str, str | None]]  # MLflow's variables before, after


MLFLOW_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")


def mlflow_variables() -> dict[str, str | None]:
    return {key: os.environ.get(key) for key in MLFLOW_VARIABLES}


@pytest.fixture(scope="module")
def logged(empty_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Logged:
    """One whole search logged: its trials, its end, the best model registered."""
    uri = copy_store(empty_store, tmp_path_factory.mktemp("search"))
    study = make_study()
    records = make_records(study)
    best = best_of(records, "max")
    assert best is not None and not best.baseline
    model, example = nn.Sequential(nn.Linear(4, 3)).eval(), torch.randn(2, 4)
    before = mlflow_variables()
    tracker = SearchTracker(search_info(), tracking_uri=uri, dataset=load_data("digits"))
    for record in records:
        tracker.trial_finished(record)
    recipe = recipe_for(best)
    result = SearchResult(info=search_info(), records=records, interrupted=False, study=study)
    assert result.best is best and result.baseline is records[0]
    tracker.search_finished(result, recipe, model=model, register_name=MODEL_NAME, example_input=example)
    close_cleanly(tracker)
    client = MlflowClient(uri)
    parent = client.get_run(tracker.parent_run_id)
    return Logged(uri, client, tracker, parent, children(client, parent), records, best, recipe.to_yaml(), model,
                  example, (before, mlflow_variables()))


def test_registering_leaves_mlflows_environment_variables_as_they_were(logged: Logged) -> None:
    """mlflow.set_tracking_uri and set_experiment export MLFLOW_TRACKING_URI and MLFLOW_EXPERIMENT_ID
    for subprocesses: left set, every later `autotrick` started from the process would use this store."""
    before, after = logged.environment
    assert after == before


def test_parent_run_describes_the_search(logged: Logged) -> None:
    parent = logged.parent
    assert parent.info.status == "FINISHED"
    assert logged.client.get_experiment(parent.info.experiment_id).name == NAME
    assert parent.data.params["model"] == "cnn" and parent.data.params["max_epochs"] == str(LONG_EPOCHS)
    assert parent.data.tags["autotrick.role"] == "parent"
    assert parent.data.tags["autotrick.version.mlflow"] == mlflow.__version__
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(logged.best.metric)
    assert parent.data.metrics["baseline_val_accuracy"] == pytest.approx(0.9)
    assert parent.data.metrics["gain_val_accuracy"] == pytest.approx(logged.best.metric - 0.9)
    # sorted by the final value, the search stands beside its winner
    assert parent.data.metrics["final_val_accuracy"] == pytest.approx(logged.best.metric)


def test_the_parent_description_tells_the_winner_its_gain_and_the_counts(logged: Logged) -> None:
    note = logged.parent.data.tags[TAG_NOTE]
    best_run = logged.children[logged.best.number]
    experiment_id = logged.parent.info.experiment_id
    # the winner by its run name, linked to its run page, with its value and the gain
    run_link = f"#/experiments/{experiment_id}/runs/{best_run.info.run_id}{ML}"
    assert f"**Winner: [{best_run.info.run_name}]({run_link})**" in note
    assert f"val_accuracy **{logged.best.metric:.4g}**" in note
    assert f"**{logged.best.metric - 0.9:+.4f}** over the baseline (0.9, [trial-000 (baseline)]" in note
    assert note.startswith("**Winner: ")  # first: the UI shows a description's first lines
    assert "| `norm.type` |" in note and "| trick | winner | baseline |" in note  # its tricks against the baseline's
    assert "1 stopped early by ASHA" in note and "2 failed (1 diverged, 1 failed)" in note
    assert "all 7 trials ran" in note
    assert f"[{MODEL_NAME} version 1](#/models/{MODEL_NAME}/versions/1{ML})" in note
    # the experiment's description is the latest search's story
    assert logged.client.get_experiment(experiment_id).tags[TAG_NOTE] == note


def test_the_experiment_opens_on_the_trials_sorted_by_the_metric(logged: Logged) -> None:
    tags = logged.client.get_experiment(logged.parent.info.experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    key = logged.parent.data.tags["autotrick.view_key"]
    view = json.loads(tags[f"mlflow.sharedViewState.{key}"])
    assert view["orderByKey"] == "metrics.`final_val_accuracy`" and view["orderByAsc"] is False
    assert view["selectedColumns"][:3] == ["metrics.`final_val_accuracy`", f"metrics.`val_accuracy_at_epoch_{GRACE}`",
                                           "metrics.`epochs_trained`"]
    assert {"params.`norm.type`", "params.`optim.lr`", "tags.`autotrick.outcome`"} <= set(view["selectedColumns"])
    url = ui_url(search_name=NAME, tracking_uri=logged.uri, port=5123)
    assert url == (f"http://127.0.0.1:5123/#/experiments/{logged.parent.info.experiment_id}/runs"
                   f"?workflowType=machine_learning&viewStateShareKey={key}")
    assert ui_url(tracking_uri=logged.uri, port=5123) == url  # the latest search, without a name


def test_one_child_per_trial_with_params_curves_and_outcomes(logged: Logged) -> None:
    assert sorted(logged.children) == [r.number for r in logged.records]
    for record in logged.records:
        run = logged.children[record.number]
        assert run.data.tags[TAG_OUTCOME] == record.outcome
        assert run.data.tags["autotrick.reason"] == record.reason
        assert run.data.tags["autotrick.baseline"] == ("true" if record.baseline else "false")
        assert run.info.status == ("FAILED" if record.outcome in ("diverged", "failed") else "FINISHED")
        params = run.data.params
        assert params["norm.type"] == record.values["norm.type"]
        assert "dropout.p" not in params and "null" not in params.values()  # a trick that is off: no param
        assert params["optim.lr"] == f"{record.values['optim.lr']:.4g}"  # rounded for display
        assert params["optim.nesterov"] in ("true", "false")
        assert (params["model"], params["data"], params["max_epochs"], params["batch_size"]) == (
            "cnn", "digits", str(LONG_EPOCHS), "64")
        for curve in CURVES:
            points = logged.client.get_metric_history(run.info.run_id, curve)
            assert sorted(p.step for p in points) == list(range(1, record.epochs + 1))
        assert "seconds" not in run.data.metrics
        assert len(logged.client.get_metric_history(run.info.run_id, "setup_seconds")) == 1
        for key, value in record.measurements.items():
            assert run.data.metrics[key] == pytest.approx(value)
        assert run.data.metrics["epochs_trained"] == record.epochs
        if record.successful:
            assert run.data.metrics["final_val_accuracy"] == pytest.approx(record.metric)
        else:  # failed, or stopped by ASHA at an epoch the finished trials passed long ago
            assert "final_val_accuracy" not in run.data.metrics
        comparable = run.data.metrics.get(f"val_accuracy_at_epoch_{GRACE}")
        if record.outcome.failed:
            assert comparable is None
        else:  # every trial that did not fail, in one comparable column
            assert comparable == pytest.approx(record.history[GRACE - 1]["val_accuracy"])
    assert math.isnan(logged.client.get_metric_history(logged.children[3].info.run_id, "val_loss")[-1].value)
    assert any(record.measurements for record in logged.records)


def test_run_names_tell_the_baseline_the_winner_and_the_stopped_trials_apart(logged: Logged) -> None:
    names = {number: run.info.run_name for number, run in logged.children.items()}
    assert names[0] == "trial-000 (baseline)"
    assert names[logged.best.number] == f"trial-{logged.best.number:03d} ★ best"
    assert names[2] == f"trial-002 (stopped at 2/{LONG_EPOCHS})"
    assert (names[3], names[4]) == ("trial-003 (diverged)", "trial-004 (failed)")
    stopped = logged.children[2].data.tags[TAG_NOTE]
    assert stopped.startswith(f"Stopped early by ASHA after 2 of {LONG_EPOCHS} epochs")


def test_the_epochs_are_timestamped_through_the_trial(logged: Logged) -> None:
    run = logged.children[0]
    points = sorted(logged.client.get_metric_history(run.info.run_id, "val_accuracy"), key=lambda p: p.step)
    stamps = [p.timestamp for p in points]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert run.info.start_time < stamps[0] and stamps[-1] <= run.info.end_time


def test_the_learning_rate_is_logged_per_optimizer_step(logged: Logged) -> None:
    run = logged.children[0]
    points = sorted(logged.client.get_metric_history(run.info.run_id, "lr_per_step"), key=lambda p: p.step)
    assert [p.step for p in points] == list(range(1, LONG_EPOCHS * STEPS_PER_EPOCH + 1))
    assert [round(p.value, 6) for p in points[:4]] == [round(0.05 * k / 3, 6) for k in (1, 2, 3, 3)]  # the warmup


def test_a_failed_trial_says_why_in_its_description_and_an_artifact(logged: Logged, tmp_path: Path) -> None:
    for number, reason in ((3, "loss became nan at epoch 2"), (4, "RuntimeError: boom")):
        run = logged.children[number]
        assert reason in run.data.tags[TAG_NOTE]
        path = logged.client.download_artifacts(run.info.run_id, "error.txt", str(tmp_path / str(number)))
        failure = Path(path).read_text()
        assert reason in failure
    assert "Traceback (most recent call last)" in failure and 'File "trainer.py"' in failure


def test_the_data_set_is_a_dataset_input_of_every_run(logged: Logged) -> None:
    for run in (logged.parent, *logged.children.values()):
        inputs = logged.client.get_run(run.info.run_id).inputs.dataset_inputs
        contexts = {i.dataset.name: {t.key: t.value for t in i.tags}["mlflow.data.context"] for i in inputs}
        assert contexts == {"digits-training": "training", "digits-validation": "validation"}
        assert all(len(i.dataset.digest) == 16 for i in inputs)


def test_best_child_is_tagged_and_both_runs_hold_the_recipe(logged: Logged) -> None:
    best = logged.children[logged.best.number]
    assert logged.parent.data.tags[TAG_BEST_RUN] == best.info.run_id
    tagged = [n for n, run in logged.children.items() if run.data.tags.get(TAG_BEST) == "true"]
    assert tagged == [logged.best.number]
    assert best.data.tags[TAG_NOTE].startswith(f"★ Best trial of search '{NAME}': val_accuracy")
    for run in (logged.parent, best):
        assert fetch_recipe_text(f"runs:/{run.info.run_id}/recipe.yaml", logged.uri) == logged.recipe


def test_plots_are_png_files_and_an_interactive_page(logged: Logged, tmp_path: Path) -> None:
    names = {Path(f.path).name for f in logged.client.list_artifacts(logged.parent.info.run_id, "plots")}
    # norm.groups is drawn only with the group norm: a choice, yet absent from most trials
    choices = {f"choice_{name}.png" for name in ("norm.type", "optim.nesterov")}
    assert {"optimization_history.png", "param_importance.png", "interactive.html"} | choices <= names
    folder = Path(logged.client.download_artifacts(logged.parent.info.run_id, "plots", str(tmp_path)))
    for name in names - {"interactive.html"}:
        data = (folder / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000, name
    page = (folder / "interactive.html").read_text()
    # Optuna's parallel coordinates and slice over the 5 trials that reached the common budget
    assert "Parallel Coordinate Plot" in page and "Slice Plot" in page
    assert f"val_accuracy_at_epoch_{GRACE}, 5 trials" in page
    assert page.count("plotly.js v") == 1  # plotly embedded once: works offline


def test_registered_champion_loads_and_predicts(logged: Logged) -> None:
    mlflow.set_tracking_uri(logged.uri)
    loaded = mlflow.pytorch.load_model(f"models:/{MODEL_NAME}@{CHAMPION}")
    with torch.no_grad():
        assert torch.allclose(loaded(logged.example), logged.model(logged.example))
    version = logged.client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
    assert version.run_id == logged.children[logged.best.number].info.run_id


def test_the_registered_model_has_a_signature_description_and_metrics(logged: Logged) -> None:
    mlflow.set_tracking_uri(logged.uri)  # for get_model_info (conftest puts it back after the test)
    version = logged.client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
    info = mlflow.models.get_model_info(f"models:/{MODEL_NAME}@{CHAMPION}")
    assert info.signature is not None
    assert list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 4]
    assert list(info.signature.outputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 3]
    assert info.saved_input_example_info is not None
    for text in (version.description, logged.client.get_registered_model(MODEL_NAME).description):
        assert f"val_accuracy {logged.best.metric:.4g}" in text and "| `norm.type` |" in text
    model = logged.client.get_logged_model(info.model_id)
    assert {m.key for m in model.metrics} >= {"final_val_accuracy", "final_val_loss"}
    chosen_by = {m.key: m for m in model.metrics if m.key.startswith("final_")}
    assert chosen_by["final_val_accuracy"].value == pytest.approx(logged.best.metric)
    assert {m.dataset_name for m in chosen_by.values()} == {"digits-validation"}


def test_recipe_from_the_registry_and_by_search(logged: Logged) -> None:
    assert fetch_recipe_text(f"models:/{MODEL_NAME}@{CHAMPION}", logged.uri) == logged.recipe
    assert fetch_recipe_text(f"models:/{MODEL_NAME}/1", logged.uri) == logged.recipe
    assert export_recipe_text(search_name=NAME, tracking_uri=logged.uri) == logged.recipe
    assert export_recipe_text(run_id=logged.parent.info.run_id, tracking_uri=logged.uri) == logged.recipe
    recipe = load_recipe(f"models:/{MODEL_NAME}@{CHAMPION}", tracking_uri=logged.uri)
    assert recipe.tricks["norm.type"] == logged.best.values["norm.type"]


@pytest.mark.parametrize(("ref", "message"), [
    ("runs:/0123456789abcdef/recipe.yaml", "no run '0123456789abcdef'"),
    (f"models:/{MODEL_NAME}@best", f"model '{MODEL_NAME}' has no alias 'best'; its aliases: champion"),
    (f"models:/{MODEL_NAME}/7", f"model '{MODEL_NAME}' has no version '7'"),
    ("models:/nobody@champion", "no registered model 'nobody' in sqlite:///"),
    ("models:/nobody", "expected models:/NAME@champion or models:/NAME/<version>"),
])
def test_missing_things_are_config_errors(logged: Logged, ref: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        fetch_recipe_text(ref, logged.uri)
    text = str(error.value)
    assert text.startswith(f"{ref}: ") and message in text and "\n" not in text


def test_missing_artifact_search_and_store_are_config_errors(logged: Logged, tmp_path: Path) -> None:
    baseline_id = logged.children[0].info.run_id
    with pytest.raises(ConfigError, match=r"has no artifact 'recipe\.yaml'"):
        fetch_recipe_text(f"runs:/{baseline_id}/recipe.yaml", logged.uri)
    with pytest.raises(ConfigError, match=rf"no search named 'other' .* searches there: {NAME}$"):
        export_recipe_text(search_name="other", tracking_uri=logged.uri)
    missing = tmp_path / "none.db"
    with pytest.raises(ConfigError, match="no MLflow store at"):
        fetch_recipe_text("runs:/abc/recipe.yaml", f"sqlite:///{missing}")
    assert not missing.exists()


def test_logging_time_is_measured(logged: Logged) -> None:
    assert logged.tracker.logging_seconds > 0


def test_resume_keeps_one_child_per_trial_and_kills_orphans(empty_store: Path, tmp_path: Path) -> None:
    uri = copy_store(empty_store, tmp_path)
    study = make_study()
    first, second, third = make_records(study)[1:4]
    killed = SearchTracker(search_info(), tracking_uri=uri)
    for record in (first, second):
        killed.trial_finished(record)
    close_cleanly(killed)
    client = MlflowClient(uri)
    parent = client.get_run(killed.parent_run_id)
    before = children(client, parent)
    # What a search killed mid-write leaves: a child run still RUNNING.
    orphan = client.create_run(parent.info.experiment_id, run_name="trial-003",
                               tags={TAG_PARENT: parent.info.run_id, TAG_TRIAL: "3"})

    resumed = SearchTracker(search_info(), tracking_uri=uri, resume=True)
    resumed.trial_finished(first)  # replayed as it was: its run stays
    changed = TrialRecord(second.number, {**second.values, "norm.type": "layer"}, "finished", 0.95, 4,
                          history(4, 0.95))
    resumed.trial_finished(second)
    resumed.trial_finished(changed)  # re-run with new values: replaces the run
    close_cleanly(resumed)
    assert resumed.parent_run_id == parent.info.run_id
    assert client.get_run(orphan.info.run_id).info.status == "KILLED"
    after = children(client, parent)
    assert sorted(after) == [first.number, second.number, 3]
    assert after[first.number].info.run_id == before[first.number].info.run_id
    assert after[second.number].data.params["norm.type"] == "layer"
    assert len(client.get_metric_history(after[second.number].info.run_id, "val_loss")) == 4

    resumed = SearchTracker(search_info(), tracking_uri=uri, resume=True)
    resumed.trial_finished(third)  # the orphan's trial, run again
    resumed.search_finished(SearchResult(info=search_info(), records=[first, changed, third], interrupted=True),
                            None)
    close_cleanly(resumed)
    after = children(client, parent)
    assert after[3].info.run_id != orphan.info.run_id and after[3].info.status == "FAILED"
    assert client.get_run(parent.info.run_id).info.status == "KILLED"
    assert client.get_run(parent.info.run_id).data.tags["autotrick.importance"].startswith("skipped")


def test_a_broken_store_warns_instead_of_failing(tmp_path: Path) -> None:
    tracker = SearchTracker(search_info(), tracking_uri=f"nosuchscheme://{tmp_path}")
    tracker.trial_finished(make_records(make_study())[0])
    with pytest.warns(RuntimeWarning, match="MLflow logging to nosuchscheme://.* failed"):
        tracker.close()
    assert tracker.parent_run_id is None


def test_a_store_failing_as_the_parent_run_is_described_ends_it_failed(empty_store: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer drops its jobs once the search's log could not start, the final one included:
    the parent run it had created must not stay RUNNING (e.g. "database is locked" mid-way)."""
    from autotrick.tracking import _runs

    def locked(*args: object, **kwargs: object) -> None:
        raise RuntimeError("database is locked")

    uri = copy_store(empty_store, tmp_path)
    monkeypatch.setattr(_runs, "_log_batch", locked)
    tracker = SearchTracker(search_info(), tracking_uri=uri)
    tracker.search_ended_early("FAILED", "what the search said")
    with pytest.warns(RuntimeWarning, match="database is locked"):
        tracker.close()
    client = MlflowClient(uri)
    [parent] = client.search_runs([client.get_experiment_by_name(search_info().name).experiment_id])
    assert parent.info.status == "FAILED"
    assert parent.data.tags[TAG_REASON] == "MLflow: RuntimeError: database is locked"


def test_the_parent_run_id_is_there_as_soon_as_it_is_asked_for(empty_store: Path, tmp_path: Path) -> None:
    """A search that ends before the writer has made the parent run (a resume with nothing left
    to run) still writes its id into the recipe: asking waits for it."""
    tracker = SearchTracker(search_info(), tracking_uri=copy_store(empty_store, tmp_path))
    run_id = tracker.parent_run_id
    close_cleanly(tracker)
    assert run_id is not None and MlflowClient(tracker.tracking_uri).get_run(run_id).info.run_id == run_id


def test_a_child_run_cut_off_mid_write_is_written_whole_from_the_journal(empty_store: Path, tmp_path: Path) -> None:
    """kill -9 between a child's create_run and its last write: the trial's record survived in the
    journal, so the resumed search's end writes its run whole (it stayed a KILLED stub)."""
    uri = copy_store(empty_store, tmp_path)
    first, second = make_records(make_study())[1:3]
    killed = SearchTracker(search_info(), tracking_uri=uri)
    killed.trial_finished(first)
    close_cleanly(killed)
    client = MlflowClient(uri)
    parent = client.get_run(killed.parent_run_id)
    first_run = children(client, parent)[first.number].info.run_id
    stub = client.create_run(parent.info.experiment_id, run_name=f"trial-{second.number:03d}",
                             tags={TAG_PARENT: parent.info.run_id, TAG_TRIAL: str(second.number)})
    resumed = SearchTracker(search_info(), tracking_uri=uri, resume=True)
    resumed.search_finished(SearchResult(info=search_info(), records=[first, second], interrupted=False), None)
    close_cleanly(resumed)
    after = children(client, parent)
    assert after[second.number].info.run_id != stub.info.run_id
    assert after[second.number].info.status == "FINISHED"
    assert after[first.number].info.run_id == first_run  # an intact run is left as it is
