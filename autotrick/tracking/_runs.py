"""A search's runs in MLflow: the parent run, one child run per trial, the results, the plots and
the registered model, written through MlflowClient with explicit run ids (the fluent API's active
run is per thread, and the writer is not the caller's thread). Runs on the writer thread only.

What a reviewer sees, and where it is made: run names and descriptions in _describe, the runs
table's opening view in _ui, the plots in _plots. Each trial's run holds its curves per epoch
(timestamped through the trial), the learning rate per optimizer step (`lr_per_step`), its system
metrics (`system/...`), `final_<metric>` only for a trial that trained to its own end, the metric
at the common budget (`<metric>_at_epoch_<grace>`, which every trial that did not fail reached,
so all trials compare in one column) and `epochs_trained`; the model, the data, the epochs and the
batch size as params beside the tricks that are on, rounded for display (a trick that is off has
no param).
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autotrick.errors import first_line
from autotrick.recipe import RECIPE_FILE
from autotrick.records import UNSETTLED_DEVICE, Outcome, SearchInfo, SearchResult, TrialRecord
from autotrick.tracking._describe import (
    BEST_MARK,
    Links,
    best_note,
    display_value,
    model_note,
    search_note,
    trial_name,
    trial_note,
)
from autotrick.tracking._plots import (
    categorical_params,
    choice_figure,
    comparable_study,
    history_figure,
    importance_figure,
    interactive_html,
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
    TAG_SEARCH_RUN,
    TAG_TRIAL,
    all_runs,
    experiment_for,
    fluent_api_on,
    latest_parent,
    seed_sqlite_store,
    tag_filter,
)
from autotrick.tracking._ui import EXPERIMENT_KIND, ML_KIND, TAG_VIEW_KEY, VIEW_TAG_PREFIX, column, view_state

if TYPE_CHECKING:
    import torch
    from mlflow import MlflowClient
    from mlflow.entities import DatasetInput, Metric, Param
    from mlflow.entities.model_registry import ModelVersion

    from autotrick.data import ImageData
    from autotrick.recipe import Recipe

# log_batch limits of MLflow's stores: entities per call, and params or tags among them.
_MAX_BATCH, _MAX_PARAMS = 1000, 100
_MAX_TAG_CHARS = 5000  # MLflow refuses tag values over 8000 characters
ERROR_FILE = "error.txt"  # a failed trial's reason and traceback (or Ray's report), on its run
# An epoch report's fields as the run's metrics: `seconds` says which seconds; the set-up is one
# figure for the trial, logged once.
_CURVE_NAMES = {"seconds": "epoch_seconds"}
_ONCE = ("setup_seconds",)


@dataclass(frozen=True)
class _Child:
    """A trial's child run, and what it holds: a replayed trial matches it, a re-run does not."""

    run_id: str
    content: tuple[Any, ...]


class SearchLog:
    """A search's parent run and its children, written through MlflowClient with explicit run
    ids (the fluent API's active run is per thread, and this is not the caller's thread)."""

    def __init__(self, info: SearchInfo, tracking_uri: str, resume: bool, dataset: ImageData | None = None) -> None:
        import mlflow

        seed_sqlite_store(tracking_uri)
        self.tracking_uri = tracking_uri
        self.info = info
        self.client = mlflow.MlflowClient(tracking_uri)
        self.experiment_id = experiment_for(self.client, info.name, tracking_uri)
        # the experiment opens on its runs ("Machine learning"), not on MLflow's GenAI overview
        self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND, ML_KIND)
        self.inputs = _dataset_inputs(dataset, info) if dataset is not None else []
        self.children: dict[int, _Child] = {}
        self._model: tuple[str, str, str] | None = None  # the registered (name, version, alias)
        parent = latest_parent(self.client, self.experiment_id, info.name) if resume else None
        self.parent_id = parent.info.run_id if parent else self._create_parent()
        self.best_id = parent.data.tags.get(TAG_BEST_RUN) if parent else None
        try:
            if parent is None:
                self._describe_parent()
            else:
                self._resume()
                if TAG_REASON in parent.data.tags:  # why an earlier session ended: this one goes on
                    self.client.delete_tag(self.parent_id, TAG_REASON)
        except Exception as error:  # nothing else could end the parent run: the writer drops its jobs
            with contextlib.suppress(Exception):
                self.client.set_tag(self.parent_id, TAG_REASON, f"MLflow: {first_line(error)}")
                self.client.set_terminated(self.parent_id, "FAILED")
            raise

    @property
    def _final_metric(self) -> str:
        return f"final_{self.info.metric}"

    @property
    def _comparable_metric(self) -> str | None:
        """The metric at the common budget: ASHA's grace, which every trial that did not fail reached."""
        return f"{self.info.metric}_at_epoch_{self.info.grace_epochs}" if self.info.grace_epochs else None

    def _create_parent(self) -> str:
        info = self.info
        note = search_note(SearchResult(info=info, records=[], interrupted=False), self._links(), running=True)
        tags = {TAG_SEARCH: info.name, TAG_ROLE: "parent", TAG_NOTE: note, **_source_tags(),
                **{f"autotrick.version.{lib}": v for lib, v in info.versions.items()}}
        return self.client.create_run(self.experiment_id, tags=tags, run_name=info.name).info.run_id

    def _describe_parent(self) -> None:
        # A device still to be settled (auto GPUs on a cluster) is logged once it is: settle().
        params = {k: v for k, v in self.info.params().items() if not (k == "device" and v == UNSETTLED_DEVICE)}
        _log_batch(self.client, self.parent_id, params=_params(params))
        if self.inputs:
            self.client.log_inputs(self.parent_id, datasets=self.inputs)

    def settle(self, info: SearchInfo) -> None:
        """The search's settled configuration (its trials' device, known once Ray is connected)."""
        self.info = info
        if info.device != UNSETTLED_DEVICE:
            self.client.log_param(self.parent_id, "device", info.device)

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

    def log_trial(self, record: TrialRecord) -> None:
        """One child run per trial number: a replayed trial keeps its run, a re-run replaces it."""
        params = self._trial_params(record)
        final = record.metric if record.successful else None
        content = ({p.key: p.value for p in params}, record.outcome, final, record.outcome.mlflow_status)
        old = self.children.get(record.number)
        if old is not None:
            if old.content == content:
                return
            self.client.delete_run(old.run_id)  # MLflow cannot remove params or metric points in place
        self.children[record.number] = _Child(self._create_child(record, params), content)

    def _trial_params(self, record: TrialRecord) -> list[Param]:
        """What the trial ran with: the model, data and budget, and each trick value that is set."""
        info = self.info
        setting = {"model": info.model, "data": info.data, "max_epochs": info.max_epochs,
                   "batch_size": info.batch_size}
        tricks = {key: value for key, value in record.values.items() if value is not None}
        return _params({**setting, **tricks})

    def _create_child(self, record: TrialRecord, params: list[Param]) -> str:
        end = _now_ms()  # the run spans the trial's time, so the UI shows its duration
        start = end - round(record.seconds * 1000)
        tags = self._child_tags(record)
        note = trial_note(record, self.info, self._comparable_metric)
        if note:
            tags[TAG_NOTE] = note
        run = self.client.create_run(self.experiment_id, start_time=start, tags=tags,
                                     run_name=trial_name(record, self.info.max_epochs))
        run_id = run.info.run_id
        _log_batch(self.client, run_id, metrics=self._trial_metrics(record, start, end), params=params)
        if self.inputs:
            self.client.log_inputs(run_id, datasets=self.inputs)
        if record.outcome.failed:  # the console shows one line; the whole story is the run's error.txt
            failure = f"{record.outcome.value} after {record.epochs} epoch(s): {record.reason}\n"
            self.client.log_text(run_id, failure + (f"\n{record.error}" if record.error else ""), ERROR_FILE)
        self.client.set_terminated(run_id, record.outcome.mlflow_status, end_time=end)
        return run_id

    def _trial_metrics(self, record: TrialRecord, start: int, end: int) -> list[Metric]:
        """The per-epoch curves (step = epoch, timestamped through the trial), the learning rate
        per optimizer step, the final value (of a trial that trained to its own end), the value at
        the common budget, the epochs trained and what the trial measured."""
        points: list[Metric] = []
        elapsed = record.history[0].get("setup_seconds", 0.0) if record.history else 0.0
        for row in record.history:
            epoch = int(row["epoch"])
            elapsed += row.get("seconds", 0.0)  # the epoch's end, from the trial's start
            at = min(end, start + round(elapsed * 1000))
            curves = {_CURVE_NAMES.get(key, key): value for key, value in row.items()
                      if key not in ("epoch", *_ONCE) and value is not None}
            points += _metrics(curves, at, step=epoch)
        if record.history:
            points += _metrics({key: record.history[0][key] for key in _ONCE if key in record.history[0]}, start)
        steps = [(int(step), lr) for step, lr in record.step_lrs]
        if steps:
            last = steps[-1][0]
            points += [_metric("lr_per_step", lr, start + (end - start) * step // last, step) for step, lr in steps]
        summary: dict[str, float] = {"epochs_trained": record.epochs, **record.measurements}
        if record.successful:
            summary[self._final_metric] = record.metric  # type: ignore[assignment]
        comparable = self._comparable_metric
        at_grace = record.metric_at(self.info.metric, self.info.grace_epochs)
        if comparable and at_grace is not None and math.isfinite(at_grace) and not record.outcome.failed:
            summary[comparable] = at_grace
        return points + _metrics(summary, end, step=record.epochs)

    def _child_tags(self, record: TrialRecord) -> dict[str, str]:
        return {TAG_PARENT: self.parent_id, TAG_SEARCH: self.info.name, TAG_ROLE: "trial",
                TAG_TRIAL: str(record.number), TAG_OUTCOME: record.outcome.value,
                TAG_REASON: record.reason[:_MAX_TAG_CHARS], TAG_BASELINE: "true" if record.baseline else "false",
                **_source_tags()}

    def _child_id(self, record: TrialRecord | None) -> str | None:
        child = self.children.get(record.number) if record else None
        return child.run_id if child else None

    def _links(self) -> Links:
        return Links(self.experiment_id, {n: c.run_id for n, c in self.children.items()}, self._model)

    def log_results(self, result: SearchResult, recipe: Recipe | None) -> None:
        """The best and baseline metric and the gain on the parent; the best child named, tagged
        and described; the recipe on both; the search's story as the parent's and the
        experiment's description; the runs table's opening view."""
        for record in result.records:  # a run still queued, or cut off, when a search was killed: written
            self.log_trial(record)       # whole now (an intact run is left as it is)
        metrics = _result_metrics(result)
        _log_batch(self.client, self.parent_id, metrics=_metrics(metrics, _now_ms()))
        best_id = self._child_id(result.best)
        if best_id and result.best is not None:
            self._mark_best(best_id, result.best, result)
        if recipe is not None:
            for run_id in filter(None, (self.parent_id, best_id)):
                self.client.log_text(run_id, recipe.to_yaml(), RECIPE_FILE)
        self.describe(result)
        self._write_view(result)

    def describe(self, result: SearchResult) -> None:
        """The search's story on its parent run, and on the experiment (its latest search)."""
        note = search_note(result, self._links())[:_MAX_TAG_CHARS]
        self.client.set_tag(self.parent_id, TAG_NOTE, note)
        self.client.set_experiment_tag(self.experiment_id, TAG_NOTE, note)

    def _write_view(self, result: SearchResult) -> None:
        info = self.info
        searched = _searched_params(result)
        metrics = [self._final_metric, *filter(None, [self._comparable_metric]), "epochs_trained"]
        columns = ([column("metrics", name) for name in metrics] + [column("tags", TAG_OUTCOME)]
                   + [column("params", name) for name in searched])
        key, state = view_state(info.name, info.metric, info.mode, columns)
        self.client.set_experiment_tag(self.experiment_id, VIEW_TAG_PREFIX + key, state)
        self.client.set_tag(self.parent_id, TAG_VIEW_KEY, key)

    def end(self, interrupted: bool) -> None:
        self.client.set_terminated(self.parent_id, Outcome.INTERRUPTED.mlflow_status if interrupted else "FINISHED")

    def end_early(self, status: str, reason: str) -> None:
        """The search stopped before it had results: KILLED (interrupted) or FAILED, and why."""
        self.client.set_tag(self.parent_id, TAG_REASON, reason[:_MAX_TAG_CHARS])
        self.client.set_terminated(self.parent_id, status)

    def _mark_best(self, best_id: str, best: TrialRecord, result: SearchResult) -> None:
        live_ids = {child.run_id for child in self.children.values()}
        if self.best_id not in (None, best_id) and self.best_id in live_ids:  # a resumed search moved on
            self.client.delete_tag(self.best_id, TAG_BEST)
            old = self.client.get_run(self.best_id)
            self.client.update_run(self.best_id, name=(old.info.run_name or "").removesuffix(BEST_MARK))
            self.client.delete_tag(self.best_id, TAG_NOTE)
        self.client.set_tag(best_id, TAG_BEST, "true")
        self.client.update_run(best_id, name=trial_name(best, self.info.max_epochs, best=True))
        self.client.set_tag(best_id, TAG_NOTE, best_note(best, result, self._links())[:_MAX_TAG_CHARS])
        self.client.set_tag(self.parent_id, TAG_BEST_RUN, best_id)
        self.best_id = best_id

    def log_plots(self, result: SearchResult) -> None:
        """The PNGs (history, importance, each choice) and Optuna's interactive plots as one HTML
        page, over the trials at the common budget (see _plots)."""
        info = self.info
        figures = {"plots/optimization_history.png": history_figure(result.records, info)}
        study = comparable_study(result, self._comparable_metric)
        target = study.metric_names[0] if study is not None and study.metric_names else info.metric
        importances = param_importances(study)
        if isinstance(importances, str):
            self.client.set_tag(self.parent_id, TAG_IMPORTANCE, importances)
        else:
            figures["plots/param_importance.png"] = importance_figure(importances, target, len(study.trials))  # type: ignore[union-attr]
        for name in categorical_params(study):
            figures[f"plots/choice_{name}.png"] = choice_figure(study, name, target)  # type: ignore[arg-type]
        for path, figure in figures.items():
            self.client.log_figure(self.parent_id, figure, path, save_kwargs={"dpi": 110})
        if study is not None:
            self.client.log_text(self.parent_id, interactive_html(study, target), "plots/interactive.html")

    def _registered_version(self, name: str, identity: dict[str, str]) -> ModelVersion | None:
        """The version of `name` registered for this search and trial, if a session did it already."""
        where = f"name = '{name}' and " + " and ".join(tag_filter(key, value) for key, value in identity.items())
        found = self.client.search_model_versions(where)
        return min(found, key=lambda version: int(version.version)) if found else None

    def _link_validation_metrics(self, best: TrialRecord, run_id: str, model_id: str | None) -> None:
        """The values the model was chosen by, under the run's names for them (not as new curve
        points), linked to the logged model."""
        last = best.history[-1] if best.history else {}
        validation = {f"final_{key}": last[key] for key in ("val_accuracy", "val_loss") if key in last}
        dataset = self.inputs[1].dataset if len(self.inputs) > 1 else None
        linked = [_linked_metric(m, model_id=model_id, dataset=dataset)
                  for m in _metrics(validation, _now_ms(), step=best.epochs)]
        _log_batch(self.client, run_id, metrics=linked)

    def register(self, best: TrialRecord, name: str, model: torch.nn.Module,
                 example: torch.Tensor | None, result: SearchResult | None = None, *,
                 alias: str | None = None) -> None:
        """The best trial's model, logged on its run with its signature, input example and
        validation metrics, registered under `name` (once: see below), and described. The version
        takes the champion alias (or `alias`: a winner not confirmed beyond seed noise never moves
        the champion) once it is READY."""
        import mlflow
        import mlflow.pytorch

        run_id = self._child_id(best)
        if run_id is None:
            raise RuntimeError(f"trial {best.number} has no run to log its model on")
        # Once per search and trial, across kills and resumes: the version carries their identity,
        # and a resume that finds it (a kill cut the registration after it) does not register again.
        identity = {TAG_SEARCH_RUN: self.parent_id, TAG_TRIAL: str(best.number)}
        registered = self._registered_version(name, identity)
        if registered is None:
            with fluent_api_on(self.tracking_uri, self.experiment_id):
                logged = mlflow.pytorch.log_model(
                    model, name="model", run_id=run_id,
                    # pickle takes any nn.Module; "pt2" (torch.export) fails on data-dependent code.
                    serialization_format="pickle",
                    # given requirements spare MLflow seconds of inferring them in a subprocess
                    pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
                    params={key: display_value(value) for key, value in best.values.items() if value is not None},
                    **_example_kwargs(model, example))
                registered = mlflow.register_model(logged.model_uri, name, tags=identity)
            self._link_validation_metrics(best, run_id, logged.model_id)
        version = str(registered.version)
        status = self.client.get_model_version(name, version).status
        if status != "READY":  # the alias moves only to a whole version
            raise RuntimeError(f"model version {name} {version} is {status}, not READY: the {alias or CHAMPION} "
                               "alias stays")
        self.client.set_registered_model_alias(name, alias or CHAMPION, version)
        if result is not None:
            note = model_note(best, result)[:_MAX_TAG_CHARS]
            self.client.update_registered_model(name, description=note)
            self.client.update_model_version(name, version, description=note)
            self._model = (name, version, alias or CHAMPION)
            self.describe(result)


def _linked_metric(metric: Metric, *, model_id: str | None, dataset: Any) -> Metric:
    """A metric linked to a logged model (and the data set it was measured on), as MLflow 3 shows
    it on the model's page."""
    from mlflow.entities import Metric

    return Metric(metric.key, metric.value, metric.timestamp, metric.step, model_id=model_id,
                  dataset_name=dataset.name if dataset else None, dataset_digest=dataset.digest if dataset else None)


def _searched_params(result: SearchResult) -> list[str]:
    """The trick parameters the search drew (those that took more than one value), in order."""
    seen: dict[str, set[str]] = {}
    for record in result.records:
        for key, value in record.values.items():
            seen.setdefault(key, set()).add(repr(value))
    return [key for key, values in seen.items() if len(values) > 1]


def _source_tags() -> dict[str, str]:
    """MLflow's own "Source" and "User" columns (the fluent API sets them, MlflowClient does not)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return {"mlflow.source.name": "autotrick search", "mlflow.source.type": "LOCAL", "mlflow.user": user}


def _dataset_inputs(data: ImageData, info: SearchInfo) -> list[DatasetInput]:
    """The data set as MLflow dataset inputs, training and validation split, with a digest of
    their tensors (MLflow's own digest reads only their first 10,000 values)."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.numpy_dataset import from_numpy
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = []
    source = CodeDatasetSource(tags={"autotrick.data": info.data})
    for context, (x, y) in (("training", (data.train_x, data.train_y)), ("validation", (data.val_x, data.val_y))):
        digest = hashlib.sha256()
        for tensor in (x, y):
            digest.update(tensor.contiguous().numpy().data)
        features, targets = x.numpy(), y.numpy()
        dataset = from_numpy(features, source=source, targets=targets, name=f"{data.name}-{context}",
                             digest=digest.hexdigest()[:16])
        inputs.append(DatasetInput(Dataset(**dataset.to_dict()), tags=[InputTag("mlflow.data.context", context)]))
    return inputs


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

    return [Param(key, display_value(value)) for key, value in values.items()]


def _metrics(values: dict[str, float], timestamp: int, step: int = 0) -> list[Metric]:
    return [_metric(key, value, timestamp, step) for key, value in values.items()]


def _metric(key: str, value: float, timestamp: int, step: int) -> Metric:
    from mlflow.entities import Metric

    return Metric(key, float(value), timestamp, step)


def _result_metrics(result: SearchResult) -> dict[str, float]:
    """The best and the baseline value of the search metric, and the gain (> 0: the tricks helped)."""
    metric, best, baseline, gain = result.info.metric, result.best, result.baseline, result.gain
    found: dict[str, float] = {}
    if best is not None and best.metric is not None:
        found[f"best_{metric}"] = best.metric
        # the search's final value is its winner's: sorted by it, the parent stands beside the winner
        found[f"final_{metric}"] = best.metric
    if baseline is not None and baseline.metric is not None:
        found[f"baseline_{metric}"] = baseline.metric
        if gain is not None:
            found[f"gain_{metric}"] = gain
            if baseline.metric:
                found[f"relative_gain_{metric}"] = gain / abs(baseline.metric)
    confirmed = result.confirmed or {}
    for key in ("mean", "sd", "gain", "gain_low", "gain_high", "p_adjusted"):  # over seeds, paired
        if isinstance(confirmed.get(key), int | float):
            found[f"confirmed_{key}_{metric}" if key != "p_adjusted" else "confirmed_p_adjusted"] = confirmed[key]
    if "significant" in confirmed:
        found["confirmed_significant"] = float(bool(confirmed["significant"]))
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


def _now_ms() -> int:
    return int(time.time() * 1000)

