"""MLflow: a search as a parent run with one child run per trial, its plots, the recipe and,
on request, the best model in the registry. The only module of autotrick that imports mlflow.

`SearchTracker` hands every write to one background thread, so the search never waits on the
store and the store never sees racing writers; `import mlflow` (about 2 s) and creating a fresh
sqlite store (about 3 s of schema migrations) happen on that thread too, while Ray starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autotrick.errors import ConfigError
from autotrick.params import Value
from autotrick.recipe import RECIPE_FILE
from autotrick.records import SUCCESSFUL, SearchInfo, TrialRecord, better

if TYPE_CHECKING:
    import optuna
    import torch
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, Run

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow 3's own default; 3.13+ refuses the file store
CHAMPION = "champion"

TAG_SEARCH = "autotrick.search"
TAG_ROLE = "autotrick.role"
TAG_TRIAL = "autotrick.trial"
TAG_OUTCOME = "autotrick.outcome"
TAG_REASON = "autotrick.reason"
TAG_BASELINE = "autotrick.baseline"
TAG_BEST = "autotrick.best"
TAG_BEST_RUN = "autotrick.best_run_id"
TAG_IMPORTANCE = "autotrick.importance"
TAG_PARENT = "mlflow.parentRunId"
TAG_NOTE = "mlflow.note.content"  # the run's description in the MLflow UI

_STATUS = {"finished": "FINISHED", "early_stopped": "FINISHED", "stopped_early": "FINISHED",
           "diverged": "FAILED", "oom": "FAILED", "failed": "FAILED"}
# log_batch limits of MLflow's stores: entities per call, and params or tags among them.
_MAX_BATCH, _MAX_PARAMS = 1000, 100
_MAX_TAG_CHARS = 5000  # MLflow refuses tag values over 8000 characters

_log = logging.getLogger(__name__)
# A search prints one line per trial: MLflow's download bars and "creating tables" INFO lines
# would interleave with them.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# `import mlflow` (lazy, below) sets its logger to MLFLOW_LOGGING_LEVEL, INFO when unset, undoing
# a setLevel made before it: the variable is what holds. setLevel covers an mlflow imported already.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
logging.getLogger("mlflow").setLevel(logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)


# --- the tracker: a queue and one writer thread ----------------------------------------------


class SearchTracker:
    """Records a search in MLflow without slowing it: every call enqueues and returns at once."""

    def __init__(self, info: SearchInfo, *, tracking_uri: str | None = None, resume: bool = False) -> None:
        self.info = info
        self.tracking_uri = tracking_uri or DEFAULT_TRACKING_URI
        self._jobs: queue.SimpleQueue[Callable[[_SearchLog], None] | None] = queue.SimpleQueue()
        self._log: _SearchLog | None = None
        self._errors: list[str] = []
        self._seconds = 0.0
        self._closed = False
        self._thread = threading.Thread(target=self._write, args=(resume,), name="autotrick-mlflow",
                                        daemon=True)
        self._thread.start()

    @property
    def parent_run_id(self) -> str | None:
        return self._log.parent_id if self._log else None

    @property
    def logging_seconds(self) -> float:
        """CPU time the writer spent on MLflow, store set-up and plots included (its wall time
        says little: it runs at low priority, in the gaps the trials leave)."""
        return self._seconds

    def trial_finished(self, record: TrialRecord) -> None:
        self._jobs.put(lambda log: log.log_trial(record))

    def search_finished(self, *, records: list[TrialRecord], best: TrialRecord | None,
                        baseline: TrialRecord | None, recipe_yaml: str | None, study: optuna.Study | None,
                        interrupted: bool, registered_model: torch.nn.Module | None = None,
                        register_name: str | None = None, example_input: torch.Tensor | None = None) -> None:
        # Separate jobs, so that a plot that fails still leaves the parent run ended.
        result = _SearchResult(list(records), best, baseline, recipe_yaml, study)
        self._jobs.put(lambda log: log.log_results(result))
        self._jobs.put(lambda log: log.log_plots(result))
        if best is not None and register_name and registered_model is not None:
            self._jobs.put(lambda log: log.register(best, register_name, registered_model, example_input))
        self._jobs.put(lambda log: log.end(interrupted))

    def close(self, timeout: float | None = None) -> None:
        """Wait for the queued writes; report a failed one as a warning rather than fail the search."""
        if not self._closed:
            self._closed = True
            self._jobs.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            warnings.warn(f"MLflow logging to {self.tracking_uri} still running after {timeout:g}s; "
                          "the runs may be incomplete", RuntimeWarning, stacklevel=2)
        for error in self._errors:
            warnings.warn(f"MLflow logging to {self.tracking_uri} failed: {error}", RuntimeWarning,
                          stacklevel=2)
        self._errors.clear()

    def _write(self, resume: bool) -> None:
        _lower_this_threads_priority()
        self._log = self._timed(lambda: _SearchLog(self.info, self.tracking_uri, resume))
        self._timed(_import_plotting)  # now, in the search's gaps, not after its last trial
        while (job := self._jobs.get()) is not None:
            if self._log is not None:  # without a parent run there is nothing to write to
                self._timed(partial(job, self._log))

    def _timed(self, job: Callable[[], Any]) -> Any:
        started = time.thread_time()
        try:
            return job()
        except Exception as exc:
            _log.debug("MLflow write failed", exc_info=True)
            self._errors.append(f"{type(exc).__name__}: {_first_line(exc)}")
            return None
        finally:
            self._seconds += time.thread_time() - started


@dataclass
class _SearchResult:
    records: list[TrialRecord]
    best: TrialRecord | None
    baseline: TrialRecord | None
    recipe_yaml: str | None
    study: optuna.Study | None


@dataclass(frozen=True)
class _Child:
    """A trial's child run, and what it holds: a replayed trial matches it, a re-run does not."""

    run_id: str
    content: tuple[Any, ...]


def _import_plotting() -> None:
    """The plots' imports: ~2.3 s, mostly scikit-learn under Optuna's importance evaluator."""
    import matplotlib.figure  # noqa: F401
    import optuna.importance  # noqa: F401


def _lower_this_threads_priority() -> None:
    """Let the writer use only CPU the trials leave idle: on a small machine its MLflow and
    SQLAlchemy work would otherwise slow the trials. Its queue is drained at the end anyway."""
    with contextlib.suppress(AttributeError, OSError):  # Linux threads have their own nice value
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 15)


def _seed_sqlite_store(uri: str) -> None:
    """A new sqlite store costs seconds of schema migrations: copy an empty store migrated once
    per MLflow version (kept in the user's cache) instead."""
    import mlflow

    path = _sqlite_path(uri)
    if path is None or path.exists():
        return
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "autotrick"
    template = cache / f"mlflow-{mlflow.__version__}-empty.db"
    if not template.exists():
        cache.mkdir(parents=True, exist_ok=True)
        fresh = cache / f"{template.name}.{os.getpid()}.tmp"
        mlflow.MlflowClient(f"sqlite:///{fresh}").search_experiments()  # runs the migrations
        os.replace(fresh, template)  # atomic: a concurrent search sees the whole file or none
    shutil.copyfile(template, path)


# --- the MLflow side (writer thread only) ----------------------------------------------------


class _SearchLog:
    """A search's parent run and its children, written through MlflowClient with explicit run
    ids (the fluent API's active run is per thread, and this is not the caller's thread)."""

    def __init__(self, info: SearchInfo, tracking_uri: str, resume: bool) -> None:
        import mlflow

        _seed_sqlite_store(tracking_uri)
        mlflow.set_tracking_uri(tracking_uri)  # for mlflow.pytorch.log_model and the registry
        self.info = info
        self.client = mlflow.MlflowClient(tracking_uri)
        self.experiment_id = _experiment_id(self.client, info.name, tracking_uri)
        parent = _latest_parent(self.client, self.experiment_id, info.name) if resume else None
        self.parent_id = parent.info.run_id if parent else self._create_parent()
        self.best_id = parent.data.tags.get(TAG_BEST_RUN) if parent else None
        self.children: dict[int, _Child] = {}
        if parent:
            self._resume()

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
        for run in _all_runs(self.client, self.experiment_id, _tag_filter(TAG_PARENT, self.parent_id)):
            status = run.info.status
            if status == "RUNNING":
                self.client.set_terminated(run.info.run_id, "KILLED")
                status = "KILLED"
            if TAG_TRIAL in run.data.tags:
                content = (dict(run.data.params), run.data.tags.get(TAG_OUTCOME),
                           run.data.metrics.get(self._final_metric), status)
                self.children[int(run.data.tags[TAG_TRIAL])] = _Child(run.info.run_id, content)

    @property
    def _final_metric(self) -> str:
        return f"final_{self.info.metric}"

    def log_trial(self, record: TrialRecord) -> None:
        """One child run per trial number: a replayed trial keeps its run, a re-run replaces it."""
        params = _params(record.values)
        content = ({p.key: p.value for p in params}, record.outcome, record.metric, _status(record))
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
        self.client.set_terminated(run_id, _status(record), end_time=end)
        return run_id

    def _trial_metrics(self, record: TrialRecord, timestamp: int) -> list[Metric]:
        """The per-epoch curves (step = epoch) and the final value of the search metric."""
        points: list[Metric] = []
        for row in record.history:
            curves = {key: value for key, value in row.items() if key != "epoch" and value is not None}
            points += _metrics(curves, timestamp, step=int(row["epoch"]))
        if record.metric is not None:
            points += _metrics({self._final_metric: record.metric}, timestamp, step=record.epochs)
        return points

    def _child_tags(self, record: TrialRecord) -> dict[str, str]:
        return {TAG_PARENT: self.parent_id, TAG_SEARCH: self.info.name, TAG_ROLE: "trial",
                TAG_TRIAL: str(record.number), TAG_OUTCOME: record.outcome,
                TAG_REASON: record.reason[:_MAX_TAG_CHARS], TAG_BASELINE: _text(record.baseline)}

    def _child_id(self, record: TrialRecord | None) -> str | None:
        child = self.children.get(record.number) if record else None
        return child.run_id if child else None

    def log_results(self, result: _SearchResult) -> None:
        """The best and baseline metric and the gain on the parent; the best child tagged; the
        recipe on both."""
        for record in result.records:  # a trial whose run was still queued when a search was killed
            if record.number not in self.children:
                self.log_trial(record)
        metrics = _result_metrics(self.info.metric, self.info.mode, result.best, result.baseline)
        _log_batch(self.client, self.parent_id, metrics=_metrics(metrics, _now_ms()))
        best_id = self._child_id(result.best)
        if best_id:
            self._mark_best(best_id)
        if result.recipe_yaml:
            for run_id in filter(None, (self.parent_id, best_id)):
                self.client.log_text(run_id, result.recipe_yaml, RECIPE_FILE)

    def end(self, interrupted: bool) -> None:
        self.client.set_terminated(self.parent_id, "KILLED" if interrupted else "FINISHED")

    def _mark_best(self, best_id: str) -> None:
        live_ids = {child.run_id for child in self.children.values()}
        if self.best_id not in (None, best_id) and self.best_id in live_ids:  # a resumed search moved on
            self.client.delete_tag(self.best_id, TAG_BEST)
        self.client.set_tag(best_id, TAG_BEST, "true")
        self.client.set_tag(self.parent_id, TAG_BEST_RUN, best_id)
        self.best_id = best_id

    def log_plots(self, result: _SearchResult) -> None:
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


def _experiment_id(client: MlflowClient, name: str, tracking_uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=_artifact_location(tracking_uri, name))


def _artifact_location(tracking_uri: str, name: str) -> str | None:
    """Artifacts of a sqlite store beside its file (MLflow would put them under the current
    folder), so a store moves or goes as one folder; other stores choose their own."""
    path = _sqlite_path(tracking_uri)
    return (path.resolve().parent / "mlruns" / name).as_uri() if path else None


def _latest_parent(client: MlflowClient, experiment_id: str, search: str) -> Run | None:
    runs = client.search_runs([experiment_id], f"{_tag_filter(TAG_SEARCH, search)} and "
                              f"{_tag_filter(TAG_ROLE, 'parent')}",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def _all_runs(client: MlflowClient, experiment_id: str, filter_string: str) -> Iterator[Run]:
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string, page_token=token)
        yield from page
        if not (token := page.token):
            return


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

    return [Param(key, _text(value)) for key, value in values.items()]


def _metrics(values: dict[str, float], timestamp: int, step: int = 0) -> list[Metric]:
    from mlflow.entities import Metric

    return [Metric(key, float(value), timestamp, step) for key, value in values.items()]


def _result_metrics(metric: str, mode: str, best: TrialRecord | None,
                    baseline: TrialRecord | None) -> dict[str, float]:
    best_value = best.metric if best else None
    base_value = baseline.metric if baseline else None
    found: dict[str, float] = {}
    if best_value is not None:
        found[f"best_{metric}"] = best_value
    if base_value is not None:
        found[f"baseline_{metric}"] = base_value
    if best_value is not None and base_value is not None:
        gain = (best_value - base_value) * (1 if mode == "max" else -1)  # > 0: the tricks helped
        found[f"gain_{metric}"] = gain
        if base_value:
            found[f"relative_gain_{metric}"] = gain / abs(base_value)
    return found


def _status(record: TrialRecord) -> str:
    return _STATUS.get(record.outcome, "FAILED")


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


def _text(value: Value) -> str:
    """A value as a recipe's YAML writes it: null, true/false, numbers and names as they are."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _tag_filter(key: str, value: str) -> str:
    return f"tags.`{key}` = '{value}'"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


# --- plots (matplotlib's Figure directly: Agg, and no pyplot state shared across threads) -----


def _new_axes(title: str, xlabel: str, ylabel: str, size: tuple[float, float] = (7.5, 4.5)) -> Axes:
    from matplotlib.figure import Figure

    axes = Figure(figsize=size, layout="constrained").add_subplot()
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
    axes.grid(alpha=0.3)
    return axes


def history_figure(records: list[TrialRecord], metric: str, mode: str) -> Figure:
    """The metric of every trial by trial number, the best so far, and where trials failed."""
    axes = _new_axes(f"Optimization history: {metric} per trial ({mode})", "trial number", metric)
    done = sorted((r for r in records if r.successful), key=lambda r: r.number)
    numbers, values = [r.number for r in done], [r.metric for r in done]
    axes.scatter(numbers, values, color="C0", zorder=3, label="finished trial")
    axes.step(numbers, _best_so_far(values, mode), where="post", color="C1", label="best so far")  # type: ignore[arg-type]
    baseline = next((r.metric for r in done if r.baseline), None)
    if baseline is not None:
        axes.axhline(baseline, color="grey", linestyle="--", linewidth=1, label="baseline")
    stopped = [r for r in records if r.outcome == "stopped_early" and r.metric is not None]
    if stopped:
        axes.scatter([r.number for r in stopped], [r.metric for r in stopped], facecolors="none",
                     edgecolors="C0", label="stopped early by ASHA")
    failed = [r.number for r in records if r.outcome not in (*SUCCESSFUL, "stopped_early")]
    if failed:  # no metric: marked along the bottom edge
        axes.plot(failed, [0.02] * len(failed), "x", color="C3", transform=axes.get_xaxis_transform(),
                  label="diverged / failed")
    axes.legend(loc="best", fontsize="small")
    return axes.figure


def _best_so_far(values: list[float], mode: str) -> list[float]:
    best: list[float] = []
    for value in values:
        best.append(value if not best or better(value, best[-1], mode) else best[-1])
    return best


def param_importances(study: optuna.Study | None) -> dict[str, float] | str:
    """Each parameter's importance from the study's completed trials, or why there is none."""
    if study is None:
        return "skipped: no Optuna study"
    from optuna.importance import get_param_importances
    from optuna.trial import TrialState

    completed = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if completed < 2:
        return f"skipped: {completed} completed trial(s), importance needs at least 2"
    try:
        with warnings.catch_warnings():  # "few trials per regime": expected in a short search
            warnings.simplefilter("ignore")
            return get_param_importances(study)
    except Exception as exc:  # e.g. no parameter shared by every completed trial
        return f"skipped: {type(exc).__name__}: {_first_line(exc)}"


def importance_figure(importances: dict[str, float], metric: str) -> Figure:
    ranked = sorted(importances.items(), key=lambda item: item[1])  # barh draws bottom-up
    height = 1.5 + 0.35 * len(ranked)
    axes = _new_axes(f"Importance of each trick parameter for {metric}",
                     "importance (Optuna, from the completed trials, normalized)", "",
                     size=(7.5, height))
    axes.barh([name for name, _ in ranked], [value for _, value in ranked], color="C0")
    return axes.figure


def categorical_params(records: list[TrialRecord], study: optuna.Study | None) -> list[str]:
    """Parameters drawn from a list of choices (per the study, or named/boolean values) that
    took at least two values among the successful trials."""
    drawn_from_choices = _categorical_in_study(study) if study is not None else set()
    found = []
    for name in sorted({name for r in records for name in r.values}):
        values = [r.values[name] for r in records if r.successful and name in r.values]
        named = all(v is None or isinstance(v, str | bool) for v in values)
        if len(set(map(_text, values))) >= 2 and (named or name in drawn_from_choices):
            found.append(name)
    return found


def _categorical_in_study(study: optuna.Study) -> set[str]:
    from optuna.distributions import CategoricalDistribution

    return {name for trial in study.get_trials(deepcopy=False)
            for name, distribution in trial.distributions.items()
            if isinstance(distribution, CategoricalDistribution)}


def choice_figure(records: list[TrialRecord], name: str, metric: str) -> Figure:
    """The metric of each trial, and its mean, for every choice of one parameter."""
    by_choice: dict[str, list[float]] = {}
    for r in records:
        if r.successful and name in r.values:
            by_choice.setdefault(_text(r.values[name]), []).append(r.metric)  # type: ignore[arg-type]
    choices = sorted(by_choice)
    axes = _new_axes(f"{metric} by {name}: each trial and the mean", name, metric,
                     size=(1.6 + 1.3 * len(choices), 4.5))
    for x, choice in enumerate(choices):
        values = by_choice[choice]
        axes.scatter([x + offset for offset in _spread(len(values))], values, color="C0", alpha=0.6,
                     zorder=3, label="trial" if x == 0 else None)
        mean = sum(values) / len(values)
        axes.hlines(mean, x - 0.3, x + 0.3, color="C1", linewidth=2.5, zorder=4,
                    label="mean" if x == 0 else None)
    axes.set_xticks(range(len(choices)), [f"{c}\n(n={len(by_choice[c])})" for c in choices])
    axes.legend(loc="best", fontsize="small")
    return axes.figure


def _spread(n: int) -> list[float]:
    """Offsets that keep a choice's points apart, the same on every run (no random jitter)."""
    return [0.0] if n == 1 else [-0.15 + 0.3 * i / (n - 1) for i in range(n)]


# --- reading back: recipes, the UI ------------------------------------------------------------


def fetch_recipe_text(ref: str, tracking_uri: str | None = None) -> str:
    """The recipe at runs:/<run_id>[/recipe.yaml] or models:/NAME@alias / models:/NAME/<version>
    (the recipe of the run that produced that model version)."""
    uri = tracking_uri or DEFAULT_TRACKING_URI
    client = _open_client(uri)
    if ref.startswith("models:/"):
        return _artifact_text(client, _model_run_id(client, ref, uri), RECIPE_FILE, ref, uri)
    run_id, _, path = ref.removeprefix("runs:/").partition("/")
    return _artifact_text(client, run_id, path or RECIPE_FILE, ref, uri)


def export_recipe_text(*, search_name: str | None = None, run_id: str | None = None,
                       tracking_uri: str | None = None) -> str:
    """The best recipe of a run, or of the latest search of that name."""
    uri = tracking_uri or DEFAULT_TRACKING_URI
    if run_id:
        return fetch_recipe_text(f"runs:/{run_id}/{RECIPE_FILE}", uri)
    if not search_name:
        raise ConfigError("give a search name or a run id to export a recipe from")
    client = _open_client(uri)
    experiment = client.get_experiment_by_name(search_name)
    parent = _latest_parent(client, experiment.experiment_id, search_name) if experiment else None
    if parent is None:
        raise ConfigError(f"no search named '{search_name}' in {uri}; searches there: "
                          f"{_search_names(client)}")
    return _artifact_text(client, parent.info.run_id, RECIPE_FILE, f"search '{search_name}'", uri)


def _open_client(uri: str) -> MlflowClient:
    _require_store(uri)
    from mlflow import MlflowClient

    return MlflowClient(uri)


def _require_store(uri: str) -> None:
    """Opening a missing sqlite file would silently create an empty store (seconds of migrations)."""
    path = _sqlite_path(uri)
    if path is not None and not path.is_file():
        raise ConfigError(f"no MLflow store at {uri} ({path} does not exist): run `autotrick search` "
                          "first, or pass --tracking-uri")


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///") or ":memory:" in uri:
        return None
    return Path(uri.removeprefix("sqlite:///").partition("?")[0])


def _artifact_text(client: MlflowClient, run_id: str, path: str, ref: str, uri: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"{ref}: no run '{run_id}' in {uri}; expected runs:/RUN_ID/{RECIPE_FILE} "
                          "with the id of a search's run or of its best trial") from None
    folder, _, _ = path.rpartition("/")
    present = [f.path for f in client.list_artifacts(run_id, folder or None)]
    if path not in present:
        kind = "a search or its best trial" if path == RECIPE_FILE else "the run"
        raise ConfigError(f"{ref}: run '{run.info.run_name}' ({run_id}) has no artifact '{path}'; "
                          f"expected the recipe of {kind} (artifacts there: {', '.join(present) or 'none'})")
    with tempfile.TemporaryDirectory() as tmp:
        return Path(client.download_artifacts(run_id, path, tmp)).read_text()


def _model_run_id(client: MlflowClient, ref: str, uri: str) -> str:
    """The run behind models:/NAME@alias or models:/NAME/<version>."""
    from mlflow.exceptions import MlflowException

    name, alias, number = _parse_model_ref(ref)
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        registered = ", ".join(m.name for m in client.search_registered_models()) or "none"
        message = f"{ref}: no registered model '{name}' in {uri} (registered: {registered})"
        raise ConfigError(message) from None
    if alias is not None:
        if alias not in model.aliases:
            raise ConfigError(f"{ref}: model '{name}' has no alias '{alias}'; its aliases: "
                              f"{', '.join(model.aliases) or 'none'}")
        number = model.aliases[alias]
    try:
        version = client.get_model_version(name, number)
    except MlflowException:
        raise ConfigError(f"{ref}: model '{name}' has no version '{number}'") from None
    if not version.run_id:
        raise ConfigError(f"{ref}: version {version.version} of '{name}' was not logged from a run, "
                          "so it has no recipe")
    return version.run_id


def _parse_model_ref(ref: str) -> tuple[str, str | None, str]:
    """models:/NAME@alias -> (NAME, alias, ""); models:/NAME/7 -> (NAME, None, "7")."""
    body = ref.removeprefix("models:/")
    alias: str | None = None
    if "@" in body:
        name, _, alias = body.partition("@")
        number = ""
    else:
        name, _, number = body.rpartition("/")
    if not name or not (alias or number):
        raise ConfigError(f"{ref}: expected models:/NAME@{CHAMPION} or models:/NAME/<version>")
    return name, alias, number


def _search_names(client: MlflowClient) -> str:
    names = [e.name for e in client.search_experiments() if e.name != "Default"]
    return ", ".join(sorted(names)) or "none"


def serve_ui(*, tracking_uri: str | None = None, host: str = "127.0.0.1", port: int = 5000,
             timeout: float = 90.0) -> subprocess.Popen[bytes]:
    """Start the MLflow UI on the store as a child process and return once it answers HTTP.
    Its output goes to a log file, so a pipe nobody reads can never block it."""
    uri = tracking_uri or DEFAULT_TRACKING_URI
    _require_store(uri)
    _check_port_free(host, port)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host,
               "--port", str(port), "--workers", "1"]  # one worker: a personal UI, and a quicker start
    fd, log_path = tempfile.mkstemp(prefix="autotrick-ui-", suffix=".log")
    with open(fd, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_http(process, f"http://{host}:{port}/health", timeout, Path(log_path))
    except BaseException:  # a Ctrl-C during the start-up must not leave the server running
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
        raise
    return process


def ui_url(*, search_name: str | None = None, tracking_uri: str | None = None, host: str = "127.0.0.1",
           port: int = 5000) -> str:
    """The UI's address: with a search's name, its runs in the "Model training" view (MLflow 3.17
    opens an experiment in its GenAI view, traces only, unless the address asks otherwise)."""
    base = f"http://{host}:{port}"
    if search_name is None:
        return base
    experiment = _open_client(tracking_uri or DEFAULT_TRACKING_URI).get_experiment_by_name(search_name)
    if experiment is None:
        return base
    return f"{base}/#/experiments/{experiment.experiment_id}?workflowType=machine_learning"


def _check_port_free(host: str, port: int) -> None:
    """Another server on the port would answer our health check in the UI's place."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: TIME_WAIT is fine
        try:
            probe.bind((host, port))
        except OSError:
            raise ConfigError(f"port {port} on {host} is in use; pick another with --port") from None


def _wait_for_http(process: subprocess.Popen[bytes], url: str, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            last = (log.read_text(errors="replace").strip().splitlines() or ["no output"])[-1]
            raise ConfigError(f"the MLflow UI exited with code {process.returncode}: {last} (log: {log})")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.25)
    process.terminate()
    process.wait(timeout=10)
    raise ConfigError(f"the MLflow UI did not answer at {url} within {timeout:g}s (log: {log})")
