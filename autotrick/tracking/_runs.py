"""A search's runs in MLflow: the parent run, one child run per trial, the results, the plots and
the registered model, written through MlflowClient with explicit run ids (the fluent API's active
run is per thread, and the writer is not the caller's thread). Runs on the writer thread only."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autotrick.params import value_text
from autotrick.recipe import RECIPE_FILE
from autotrick.records import Outcome, SearchInfo, SearchResult, TrialRecord
from autotrick.tracking._plots import (
    categorical_params,
    choice_figure,
    history_figure,
    importance_figure,
    param_importances,
)
from autotrick.tracking._store import (
    CHAMPION,
    TAG_BASELINE,
    TAG_BEST,
    TAG_BEST_RUN,
    TAG_IMPORTANCE,
    TAG_NOTE,
    TAG_OUTCOME,
    TAG_PARENT,
    TAG_REASON,
    TAG_ROLE,
    TAG_SEARCH,
    TAG_TRIAL,
    all_runs,
    experiment_for,
    latest_parent,
    seed_sqlite_store,
    tag_filter,
)

if TYPE_CHECKING:
    import torch
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from autotrick.recipe import Recipe

# log_batch limits of MLflow's stores: entities per call, and params or tags among them.
_MAX_BATCH, _MAX_PARAMS = 1000, 100
_MAX_TAG_CHARS = 5000  # MLflow refuses tag values over 8000 characters
ERROR_FILE = "error.txt"  # a failed trial's traceback, as an artifact of its run


@dataclass(frozen=True)
class _Child:
    """A trial's child run, and what it holds: a replayed trial matches it, a re-run does not."""

    run_id: str
    content: tuple[Any, ...]


class SearchLog:
    """A search's parent run and its children, written through MlflowClient with explicit run
    ids (the fluent API's active run is per thread, and this is not the caller's thread)."""

    def __init__(self, info: SearchInfo, tracking_uri: str, resume: bool) -> None:
        import mlflow

        seed_sqlite_store(tracking_uri)
        mlflow.set_tracking_uri(tracking_uri)  # for mlflow.pytorch.log_model and the registry
        self.info = info
        self.client = mlflow.MlflowClient(tracking_uri)
        self.experiment_id = experiment_for(self.client, info.name, tracking_uri)
        parent = latest_parent(self.client, self.experiment_id, info.name) if resume else None
        self.parent_id = parent.info.run_id if parent else self._create_parent()
        self.best_id = parent.data.tags.get(TAG_BEST_RUN) if parent else None
        self.children: dict[int, _Child] = {}
        if parent:
            self._resume()
            if TAG_REASON in parent.data.tags:  # why an earlier session ended: this one goes on
                self.client.delete_tag(self.parent_id, TAG_REASON)

    def _create_parent(self) -> str:
        info = self.info
        note = (f"autotrick search '{info.name}': {info.space} space, {info.model} on {info.data}, "
                f"{info.trials} trials of up to {info.max_epochs} epochs, {info.metric} ({info.mode})")
        tags = {TAG_SEARCH: info.name, TAG_ROLE: "parent", TAG_NOTE: note,
                **{f"autotrick.version.{lib}": v for lib, v in info.versions.items()}}
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=info.name)
        _log_batch(self.client, run.info.run_id, params=_params(info.params()))
        return run.info.run_id

    def _resume(self) -> None:
        """Reopen the parent; a child still RUNNING was cut off when the search was killed."""
        self.client.update_run(self.parent_id, status="RUNNING")
        for run in all_runs(self.client, self.experiment_id, tag_filter(TAG_PARENT, self.parent_id)):
            status = run.info.status
            if status == "RUNNING":
                self.client.set_terminated(run.info.run_id, "KILLED")
                status = "KILLED"
            if TAG_TRIAL in run.data.tags:
                outcome = Outcome.parse(run.data.tags.get(TAG_OUTCOME, Outcome.FAILED.value))
                content = (dict(run.data.params), outcome, run.data.metrics.get(self._final_metric), status)
                self.children[int(run.data.tags[TAG_TRIAL])] = _Child(run.info.run_id, content)

    @property
    def _final_metric(self) -> str:
        return f"final_{self.info.metric}"

    def log_trial(self, record: TrialRecord) -> None:
        """One child run per trial number: a replayed trial keeps its run, a re-run replaces it."""
        params = _params(record.values)
        content = ({p.key: p.value for p in params}, record.outcome, record.metric, record.outcome.mlflow_status)
        old = self.children.get(record.number)
        if old is not None:
            if old.content == content:
                return
            self.client.delete_run(old.run_id)  # MLflow cannot remove params or metric points in place
        self.children[record.number] = _Child(self._create_child(record, params), content)

    def _create_child(self, record: TrialRecord, params: list[Param]) -> str:
        end = _now_ms()  # the run spans the trial's time, so the UI shows its duration
        run = self.client.create_run(self.experiment_id, start_time=end - round(record.seconds * 1000),
                                     tags=self._child_tags(record), run_name=_trial_name(record))
        run_id = run.info.run_id
        _log_batch(self.client, run_id, metrics=self._trial_metrics(record, end), params=params)
        if record.error:  # the traceback, or Ray's report of a dead worker: the console shows one line
            self.client.log_text(run_id, record.error, ERROR_FILE)
        self.client.set_terminated(run_id, record.outcome.mlflow_status, end_time=end)
        return run_id

    def _trial_metrics(self, record: TrialRecord, timestamp: int) -> list[Metric]:
        """The per-epoch curves (step = epoch), the final value of the search metric and what the
        trial measured (sparsity and non-zero parameters after pruning, ...)."""
        points: list[Metric] = []
        for row in record.history:
            curves = {key: value for key, value in row.items() if key != "epoch" and value is not None}
            points += _metrics(curves, timestamp, step=int(row["epoch"]))
        if record.metric is not None:
            points += _metrics({self._final_metric: record.metric}, timestamp, step=record.epochs)
        return points + _metrics(record.measurements, timestamp, step=record.epochs)

    def _child_tags(self, record: TrialRecord) -> dict[str, str]:
        return {TAG_PARENT: self.parent_id, TAG_SEARCH: self.info.name, TAG_ROLE: "trial",
                TAG_TRIAL: str(record.number), TAG_OUTCOME: record.outcome.value,
                TAG_REASON: record.reason[:_MAX_TAG_CHARS], TAG_BASELINE: value_text(record.baseline)}

    def _child_id(self, record: TrialRecord | None) -> str | None:
        child = self.children.get(record.number) if record else None
        return child.run_id if child else None

    def log_results(self, result: SearchResult, recipe: Recipe | None) -> None:
        """The best and baseline metric and the gain on the parent; the best child tagged; the
        recipe on both."""
        for record in result.records:  # a trial whose run was still queued when a search was killed
            if record.number not in self.children:
                self.log_trial(record)
        metrics = _result_metrics(result)
        _log_batch(self.client, self.parent_id, metrics=_metrics(metrics, _now_ms()))
        best_id = self._child_id(result.best)
        if best_id:
            self._mark_best(best_id)
        if recipe is not None:
            for run_id in filter(None, (self.parent_id, best_id)):
                self.client.log_text(run_id, recipe.to_yaml(), RECIPE_FILE)

    def end(self, interrupted: bool) -> None:
        self.client.set_terminated(self.parent_id, Outcome.INTERRUPTED.mlflow_status if interrupted else "FINISHED")

    def end_early(self, status: str, reason: str) -> None:
        """The search stopped before it had results: KILLED (interrupted) or FAILED, and why."""
        self.client.set_tag(self.parent_id, TAG_REASON, reason[:_MAX_TAG_CHARS])
        self.client.set_terminated(self.parent_id, status)

    def _mark_best(self, best_id: str) -> None:
        live_ids = {child.run_id for child in self.children.values()}
        if self.best_id not in (None, best_id) and self.best_id in live_ids:  # a resumed search moved on
            self.client.delete_tag(self.best_id, TAG_BEST)
        self.client.set_tag(best_id, TAG_BEST, "true")
        self.client.set_tag(self.parent_id, TAG_BEST_RUN, best_id)
        self.best_id = best_id

    def log_plots(self, result: SearchResult) -> None:
        metric = self.info.metric
        figures = {"plots/optimization_history.png": history_figure(result.records, metric, self.info.mode)}
        importances = param_importances(result.study)
        if isinstance(importances, str):
            self.client.set_tag(self.parent_id, TAG_IMPORTANCE, importances)
        else:
            figures["plots/param_importance.png"] = importance_figure(importances, metric)
        for name in categorical_params(result.records, result.study):
            figures[f"plots/choice_{name}.png"] = choice_figure(result.records, name, metric)
        for path, figure in figures.items():
            self.client.log_figure(self.parent_id, figure, path, save_kwargs={"dpi": 110})

    def register(self, best: TrialRecord, name: str, model: torch.nn.Module,
                 example: torch.Tensor | None) -> None:
        """The best trial's model, logged on its run, registered under `name` as the champion."""
        import mlflow
        import mlflow.pytorch

        run_id = self._child_id(best)
        if run_id is None:
            raise RuntimeError(f"trial {best.number} has no run to log its model on")
        # log_model files its LoggedModel under the active experiment, not the run's.
        mlflow.set_experiment(experiment_id=self.experiment_id)
        logged = mlflow.pytorch.log_model(
            model, name="model", run_id=run_id, registered_model_name=name,
            # pickle takes any nn.Module; "pt2" (torch.export) fails on data-dependent code.
            serialization_format="pickle",
            # given requirements spare MLflow seconds of inferring them in a subprocess
            pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
            **_example_kwargs(model, example))
        self.client.set_registered_model_alias(name, CHAMPION, str(logged.registered_model_version))


def _log_batch(client: MlflowClient, run_id: str, *, metrics: Sequence[Metric] = (),
               params: Sequence[Param] = ()) -> None:
    """Usually one log_batch call; more only past MLflow's per-call limits."""
    while metrics or params:
        chunk_params, params = params[:_MAX_PARAMS], params[_MAX_PARAMS:]
        room = _MAX_BATCH - len(chunk_params)
        chunk_metrics, metrics = metrics[:room], metrics[room:]
        client.log_batch(run_id, metrics=chunk_metrics, params=chunk_params)


def _params(values: dict[str, Any]) -> list[Param]:
    from mlflow.entities import Param

    return [Param(key, value_text(value)) for key, value in values.items()]


def _metrics(values: dict[str, float], timestamp: int, step: int = 0) -> list[Metric]:
    from mlflow.entities import Metric

    return [Metric(key, float(value), timestamp, step) for key, value in values.items()]


def _result_metrics(result: SearchResult) -> dict[str, float]:
    """The best and the baseline value of the search metric, and the gain (> 0: the tricks helped)."""
    metric, best, baseline, gain = result.info.metric, result.best, result.baseline, result.gain
    found: dict[str, float] = {}
    if best is not None and best.metric is not None:
        found[f"best_{metric}"] = best.metric
    if baseline is not None and baseline.metric is not None:
        found[f"baseline_{metric}"] = baseline.metric
        if gain is not None:
            found[f"gain_{metric}"] = gain
            if baseline.metric:
                found[f"relative_gain_{metric}"] = gain / abs(baseline.metric)
    return found


def _example_kwargs(model: torch.nn.Module, example: torch.Tensor | None) -> dict[str, Any]:
    """Input example and signature, so the registered model documents what it takes and gives."""
    if example is None:
        return {}
    import torch
    from mlflow.models import infer_signature

    inputs = example.detach().cpu()
    with torch.no_grad():
        outputs = model(inputs)
    return {"input_example": inputs.numpy(), "signature": infer_signature(inputs.numpy(), outputs.numpy())}


def _trial_name(record: TrialRecord) -> str:
    return f"trial-{record.number:03d}" + (" (baseline)" if record.baseline else "")


def _now_ms() -> int:
    return int(time.time() * 1000)

