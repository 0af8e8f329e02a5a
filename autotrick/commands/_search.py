"""`autotrick search`: validate the request before Ray or MLflow start, own the search's folder,
run it, and print a line per trial and the summary."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click

from autotrick.commands._ablate import ablate_after_search, log_to_mlflow
from autotrick.commands._confirm import (
    UNCONFIRMED,
    check_confirm_options,
    confirmation_lines,
    confirmed_recipe,
    run_confirmation,
    seed_scores,
)
from autotrick.commands._format import measurements_text, tricks_text
from autotrick.commands._inputs import check_model_and_data, resolve_model_files
from autotrick.errors import ConfigError, first_line
from autotrick.recipe import Recipe
from autotrick.records import UNSETTLED_DEVICE, Outcome, SearchInfo, SearchResult, TrialRecord, better
from autotrick.search_options import SearchOptions, trial_device
from autotrick.signals import StopSignals
from autotrick.trainer import TrainConfig

DEFAULT_SPACE = "quick"
# The longest the search's end waits for MLflow: each request is bounded (tracking._store), and the
# writer gives up on the rest once the catch-up fails; this bounds a store that is merely slow.
_TRACKER_WAIT_S = 300.0


@dataclass(frozen=True)
class SearchRequest:
    """`autotrick search`'s options, as given (None: not given: the stored value of a resumed
    search, else the default or the space's own value)."""

    space: str | None = None  # default quick
    model: str | None = None
    data: str | None = None
    data_dir: str | None = None
    trials: int | None = None
    max_epochs: int | None = None
    time_budget: float | None = None
    cpus_per_trial: float | None = None  # default 1
    gpus_per_trial: float | str | None = None  # a number, or auto (the default): 1 when Ray has GPUs, else 0
    concurrency: int | None = None
    address: str | None = None
    name: str | None = None
    seed: int | None = None  # default 0
    resume: bool = False
    output: str | None = None
    verbose: bool = False
    tracking_uri: str | None = None
    register: str | None = None
    num_cpus: int | None = None  # a local Ray's CPUs (tests and benchmarks pin 2)
    data_mode: str | None = None  # memory | stream | auto (the default: by size)
    weights: str | None = None  # the model starts from these: a file, models:/ or runs:/
    objectives: str | None = None  # several, comma-separated: the Pareto front (autotrick.objectives)
    confirm_top: int | None = None  # recipes confirmed over seeds after the search (default 3)
    confirm_seeds: int | None = None  # default 5
    no_confirm: bool | None = None
    ablate: bool | None = None  # ablate the confirmed winner trick by trick (autotrick.ablate)
    warm_start: tuple[str, ...] | None = None  # recipes (file, runs:/, models:/) or earlier searches' names
    patience: int | None = None  # stop after this many trials in a row without a gain
    min_gain: float | None = None  # the gain that counts for --patience (default: the metric's sampling noise)
    wait_for_resources: float | None = None  # seconds to wait for a node that can run a trial (None: until one joins)
    skip_bad_images: bool | None = None  # leave out an image folder's unreadable files (default: refuse them)


def search_name(request: SearchRequest) -> str:
    from autotrick.space import resolve_space_path

    name = request.name or resolve_space_path(request.space or DEFAULT_SPACE).stem
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"--name {name!r}: use letters, digits, '-' and '_' only")
    return name


def prepare_search(request: SearchRequest, state_dir: Path, space_yaml: str | None = None) -> SearchOptions:
    """Validate every input of a search, before Ray or MLflow start and before anything is written,
    and settle it into the one SearchOptions (the data's measured size, the trials' device).
    `space_yaml`: a resumed search's space, as it was when the search started."""
    from autotrick.cluster import check_address
    from autotrick.data import absolute_data_spec
    from autotrick.entrypoints import absolute_spec
    from autotrick.params import Fixed
    from autotrick.request import stored_form
    from autotrick.space import read_space_text, resolve_space_path, space_from_text
    from autotrick.tracking import check_store, resolve_tracking_uri

    if space_yaml is None:
        space_file = resolve_space_path(request.space or DEFAULT_SPACE).resolve()
        space_yaml = read_space_text(space_file)
    else:  # a resumed search's space: the file named may since have changed or gone
        space_file = Path(request.space or DEFAULT_SPACE)
    space = space_from_text(space_yaml, space_file)
    max_epochs = request.max_epochs or space.budget.max_epochs
    objectives = _objectives(request.objectives)
    space = space.with_budget(trials=request.trials, max_epochs=max_epochs,
                              grace_epochs=min(space.budget.grace_epochs, max_epochs),
                              metric=objectives[0] if objectives else None)  # ASHA stops on the first
    from autotrick.data import check_data_mode, plan_data
    from autotrick.device import gpus_per_trial, trials_at_once

    # Absolute paths: Ray runs trials in folders of their own.
    model, data = absolute_spec(request.model or space.model), absolute_data_spec(request.data or space.data)
    data_dir = str(Path(request.data_dir).resolve()) if request.data_dir else None
    data_mode = check_data_mode(request.data_mode or "auto")
    check_confirm_options(request.confirm_top, request.confirm_seeds)
    if request.patience is not None and request.patience < 1:
        raise ConfigError(f"--patience {request.patience}: must be at least 1 (trials in a row without a gain)")
    if request.min_gain is not None and not 0 <= request.min_gain < math.inf:
        raise ConfigError(f"--min-gain {request.min_gain}: must be a number >= 0")
    gpus = gpus_per_trial(request.gpus_per_trial, address=request.address)
    skip_bad = bool(request.skip_bad_images)
    size = check_model_and_data(model, data, data_dir, skip_bad_images=skip_bad)
    cpus = request.cpus_per_trial or 1.0
    if cpus <= 0:
        raise ConfigError(f"--cpus-per-trial {cpus:g}: must be > 0")
    output = Path(request.output or f"{state_dir.name}.recipe.yaml")
    if not output.parent.is_dir():
        raise ConfigError(f"--output {output}: the folder {output.parent} does not exist")
    if request.address:
        check_address(request.address)
    tracking_uri = resolve_tracking_uri(request.tracking_uri)  # the flag, MLFLOW_TRACKING_URI, or mlflow.db
    check_store(tracking_uri)
    from autotrick.state import STATE_ROOT
    from autotrick.warmstart import resolve_warm_starts

    warm = resolve_warm_starts(tuple(request.warm_start or ()), tracking_uri=tracking_uri, state_root=STATE_ROOT)
    seed = request.seed or 0
    # Each trial process holds its own copy of in-memory data: the budget is split between them
    # (a cluster's GPUs are counted once connected: here only its CPUs limit the count).
    machine_cpus = request.num_cpus or os.cpu_count() or 1
    at_once = request.concurrency or trials_at_once(machine_cpus, _local_gpus(), cpus_per_trial=cpus,
                                                    gpus_per_trial=None if request.address else gpus)
    plan = plan_data(size, data_mode, device=trial_device(gpus or 0.0), trials_at_once=at_once,
                     gpu_share=gpus or 1.0)
    train = TrainConfig(model=model, data=data, data_dir=data_dir, epochs=max_epochs,
                        batch_size=space.batch_size, seed=seed, device=UNSETTLED_DEVICE, data_mode=plan.mode,
                        skip_bad_images=skip_bad)
    fixed = space.domains.get("distill.teacher")
    teacher = fixed.value if isinstance(fixed, Fixed) else None  # free text is only ever fixed
    if request.weights or teacher is not None:
        spec, weights_file, teachers = resolve_model_files(
            model=request.model and model, default_model=model, data=data, data_dir=data_dir,
            weights=request.weights, teacher=teacher, tracking_uri=tracking_uri)
        train = replace(train, model=spec, weights=weights_file, teachers=teachers)
    effective = replace(request, space=str(space_file), model=model, data=data, data_dir=data_dir,
                        trials=space.budget.trials, max_epochs=max_epochs, cpus_per_trial=cpus,
                        seed=seed, output=str(output), tracking_uri=tracking_uri,
                        data_mode=data_mode, skip_bad_images=skip_bad)
    from autotrick.data.image_folder import skipped_images

    options = SearchOptions(name=state_dir.name, space=space, train=train, state_dir=state_dir, data_size=size,
                            cpus_per_trial=cpus, gpus_per_trial=None, requested_gpus=request.gpus_per_trial,
                            data_plan=plan.describe(), concurrency=request.concurrency, address=request.address,
                            num_cpus=request.num_cpus, time_budget_s=request.time_budget,
                            wait_for_resources_s=request.wait_for_resources,
                            resume=request.resume, verbose=request.verbose,
                            save_models=request.register is not None, output=output, tracking_uri=tracking_uri,
                            register=request.register, weights=request.weights, objectives=objectives,
                            warm_start=warm, patience=request.patience, min_gain=request.min_gain,
                            confirm=not request.no_confirm, confirm_top=request.confirm_top or 3,
                            confirm_seeds=request.confirm_seeds or 5, ablate=bool(request.ablate),
                            stored_request=stored_form(effective, space_yaml),
                            skipped_images=skipped_images(data) if skip_bad else ())
    return options if gpus is None else options.with_gpus(gpus)  # auto on a cluster: settled once connected


def _objectives(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    from autotrick.objectives import parse_objectives

    names = tuple(o.name for o in parse_objectives(text))
    if "int8_accuracy" in names:
        from autotrick.commands._export import check_deploy_installed

        check_deploy_installed()
    return names



def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def describe_gpus(gpus: float | None, requested: float | str | None) -> str:
    """The header's words for the trials' GPUs."""
    auto = requested is None or requested == "auto"
    if gpus is None:
        return "1 GPU per trial if the cluster has GPUs, else the CPU (auto)"
    if gpus == 0:
        return "CPU only (auto: no GPU here)" if auto else "CPU only"
    share = f"{gpus:g} GPU per trial" + (f" ({1 / gpus:g} trials per GPU)" if gpus < 1 else "")
    return share + (" (auto: a GPU is here)" if auto else "")


def _resumed_request(request: SearchRequest, stored: dict[str, Any] | None,
                     name: str) -> tuple[SearchRequest, str | None]:
    """A resumed search's request: what it started with, and what may change (autotrick.request)."""
    from autotrick.checkpoint import is_mlflow_ref
    from autotrick.data import absolute_data_spec
    from autotrick.device import gpus_per_trial
    from autotrick.entrypoints import absolute_spec
    from autotrick.request import as_path, check_space_unchanged, resumed
    from autotrick.space import builtin_spaces, read_space_text, resolve_space_path
    from autotrick.tracking import same_store

    if stored is None:  # started by an autotrick that did not store its request: as given
        return request, None

    def space_file(space: str) -> str:
        return str(builtin_spaces().get(space, Path(space)).resolve())

    merged, space_yaml = resumed(request, stored, name, same={
        "space": space_file, "model": absolute_spec, "data": absolute_data_spec, "data_dir": as_path,
        "tracking_uri": same_store, "gpus_per_trial": lambda gpus: gpus_per_trial(gpus, address=request.address),
        "weights": lambda ref: ref if is_mlflow_ref(ref) else as_path(ref)})
    if request.space is not None:
        check_space_unchanged(request.space, read_space_text(resolve_space_path(request.space)), space_yaml, name)
    return merged, space_yaml


def run_search_command(request: SearchRequest) -> int:
    """Validate, take the search (one owner per name), search, print one line per trial and a
    summary, write the recipe; the exit code. SIGTERM and SIGHUP stop it as Ctrl-C does."""
    with StopSignals() as signals, contextlib.ExitStack() as held:
        try:
            return _search(request, signals, held)
        except KeyboardInterrupt:  # outside the search's own handling: while starting, or closing
            click.echo(f"autotrick: stopped by {signals.name}", err=True)
            return signals.exit_code


def _search(request: SearchRequest, signals: StopSignals, held: contextlib.ExitStack) -> int:
    from autotrick.state import SearchFolder

    name = search_name(request)
    folder = SearchFolder(name)
    space_yaml = None
    if request.resume:
        if not folder.started():
            raise ConfigError(f"--resume: no search named '{name}' in {folder.path}; start it without --resume")
        _say(held.enter_context(folder.owned("resume")))  # refuses while another process runs it
        request, space_yaml = _resumed_request(request, folder.read_request(), name)
    elif folder.started():
        held.enter_context(folder.owned("start"))  # a running search is named; a finished one:
        raise ConfigError(f"a search named '{name}' exists in {folder.path}: add --resume to continue it, "
                          "or pick another --name")
    options = prepare_search(request, folder.path, space_yaml)
    if not request.resume:
        _say(held.enter_context(folder.owned("start")))
        if folder.started():  # the same search started by another process a moment ago, and ended
            raise ConfigError(f"a search named '{name}' exists in {folder.path}: add --resume to continue it, "
                              "or pick another --name")
    _say(folder.repair_journal())  # a journal refused here leaves the stored request as it was
    folder.write_request(options.stored_request)
    return _run(options, signals)


def _say(line: str | None) -> None:
    if line:
        click.echo(f"autotrick: {line}", err=True)


def _run(options: SearchOptions, signals: StopSignals) -> int:
    from autotrick.data import load_data
    from autotrick.search import run_search
    from autotrick.study import finished_records
    from autotrick.tracking import SearchTracker, resolve_tracking_uri

    output, budget = options.output, options.space.budget
    # The data set as MLflow's dataset input, digest and all: only one the driver holds already
    # (prepare_search's description loaded the small built-in sets); image folders and the user's
    # lazy datasets are not decoded here just for it, whether the trials hold them in memory or stream them.
    data = load_data(options.train.data, options.train.data_dir) \
        if options.train.data_mode == "memory" and not options.data_size.streamable else None
    # The parent run opens now, while Ray starts (MLflow's import and the store's set-up overlap
    # it), so that a failure from here on ends it FAILED; auto GPUs on a cluster settle once
    # connected, and the device goes on the parent run then.
    tracker = SearchTracker(options.info(), tracking_uri=options.tracking_uri, resume=options.resume, dataset=data,
                            on_failure=lambda line: click.echo(f"autotrick: {line}", err=True))
    progress = _ProgressPrinter(options.info(), verbose=options.verbose)
    click.echo(f"search '{options.name}': {options.space.name} space, {options.train.model} on {options.train.data}, "
               f"{budget.trials} trials x up to {budget.max_epochs} epochs, {budget.metric} ({budget.mode}); "
               f"{describe_gpus(options.gpus_per_trial, options.requested_gpus)}, {options.data_plan}; "
               f"MLflow {resolve_tracking_uri(options.tracking_uri)}" + ("; resuming" if options.resume else "")
               + (f"; objectives {', '.join(options.objectives)}" if options.objectives else ""))
    from autotrick.data.bad_images import skipped_line

    if skipped := skipped_line(options.skipped_images):
        click.echo(skipped)
    resume_hint = f"resume with `autotrick search --name {options.name} --resume`"

    def on_started(settled: SearchOptions) -> None:
        if settled.address:  # which cluster the trials run on, before any of them starts
            from autotrick.search import describe_cluster

            click.echo(f"joined the Ray cluster at {settled.address}: {describe_cluster()}")
        if not options.settled:
            tracker.search_settled(settled.info())

    deadline = time.monotonic() + options.time_budget_s if options.time_budget_s else None
    confirmed: list[Any] = []  # the confirmation, once made; [None] when it was cut off
    ablated: list[tuple[Any, Recipe]] = []    # (the ablation, the minimal recipe), once made

    def _ablated(recipe: Recipe, result: SearchResult, scores: Any) -> Recipe:
        seeds = options.confirm_seeds
        scores = scores or seed_scores(options, seeds=seeds, deadline=deadline)
        made = ablate_after_search(options, recipe, result.baseline.values, scores,  # type: ignore[union-attr]
                                   result.info.metric)
        if made is None:
            return recipe
        ablated.append(made)
        return Recipe(recipe.tricks, recipe.training, {**recipe.provenance, "ablation": made[0].to_dict()})

    def on_record(record: TrialRecord) -> None:
        progress(record)
        tracker.trial_finished(record)

    def before_shutdown(result: SearchResult) -> None:
        """The confirmation over seeds (on the search's Ray), the recipe, and MLflow's last writes
        queued while Ray is still up (not waited for)."""
        recipe = Recipe.from_search(result, mlflow_run_id=tracker.parent_run_id)
        scores = None
        if recipe is not None and options.confirm:
            confirmation, whole, scores = run_confirmation(options, result, top=options.confirm_top,
                                                           seeds=options.confirm_seeds, deadline=deadline)
            if not whole:  # cut off: the search's trials are kept, --resume confirms what is missing
                confirmed.append(None)
                return
            if confirmation is not None:
                confirmed.append(confirmation)
                result.confirmed = confirmation.to_dict()
                result.timings["confirm_s"] = confirmation.seconds
                recipe = confirmed_recipe(recipe, confirmation, result)
        if recipe is not None and options.ablate and result.baseline is not None:
            recipe = _ablated(recipe, result, scores)
        if recipe is not None:
            recipe.write(output)
        chosen = next((r for r in result.records if recipe and r.number == recipe.provenance.get("trial")), None)
        model = _best_model(options, chosen) if options.register and recipe else None
        significant = result.confirmed is None or bool(result.confirmed.get("significant"))
        tracker.search_finished(result, recipe, model=model, register_name=options.register if recipe else None,
                                example_input=_example_input(data, options) if model is not None else None,
                                registered=chosen, alias=None if significant else UNCONFIRMED)

    try:
        result = run_search(options, on_record, before_shutdown, on_started)
    except KeyboardInterrupt:  # a signal outside Tune's loop (starting, or a second one)
        done = len(finished_records(options.state_dir, options.name))
        tracker.search_ended_early("KILLED", f"interrupted by {signals.name} after {done} of {budget.trials} trials")
        tracker.close(_TRACKER_WAIT_S, warn=False)
        click.echo(f"interrupted by {signals.name} after {done} of {budget.trials} trials: {resume_hint}", err=True)
        return signals.exit_code
    except BaseException as error:  # the parent run must not be left RUNNING
        tracker.search_ended_early("FAILED", first_line(error))
        tracker.close(_TRACKER_WAIT_S, warn=False)
        raise
    if confirmed == [None]:
        cut = f"{len(result.records)} trials finished; the confirmation was cut off"
        tracker.search_ended_early("KILLED", cut)
        tracker.close(_TRACKER_WAIT_S, warn=False)
        click.echo(f"{cut}: {resume_hint} to confirm the missing seeds", err=True)
        return signals.exit_code
    waited = time.perf_counter()
    tracker.close(_TRACKER_WAIT_S, warn=False)
    result.timings["logging_wait_s"] = time.perf_counter() - waited  # what MLflow cost the wall time
    result.timings["logging_cpu_s"] = tracker.logging_seconds
    click.echo(_summary(result, output if result.complete else None, tracker.parent_run_id, options.tracking_uri))
    if options.objectives:
        from autotrick.commands._pareto import finish_front

        click.echo("\n".join(finish_front(result, output, tracker.parent_run_id, options.tracking_uri)))
    if ablated:
        log_to_mlflow(ablated[0][0], ablated[0][1], tracker.parent_run_id, options.tracking_uri)
    if confirmed and confirmed[0] is not None:
        click.echo("\n".join(confirmation_lines(confirmed[0])))
    if result.interrupted:
        click.echo(f"interrupted after {len(result.records)} of {budget.trials} trials: {resume_hint}", err=True)
        return signals.exit_code
    if tracker.missed:  # the journal holds every trial; the store does not
        click.echo(f"autotrick: error: MLflow store {tracker.tracking_uri} missed records ({tracker.failure}): "
                   f"once it is back, {resume_hint} writes them", err=True)
        return 1
    if tracker.registration_error:  # said on the parent run too
        click.echo(f"autotrick: error: {tracker.registration_error}", err=True)
        return 1
    return 0 if result.best is not None else 1


def _summary(result: SearchResult, output: Path | None, parent_run_id: str | None,
             tracking_uri: str | None = None) -> str:
    failed = sum(1 for r in result.records if r.outcome.failed)
    stopped = result.count(Outcome.ASHA_STOPPED)
    lines = [f"{len(result.records)} trials ({stopped} stopped early by ASHA, {failed} failed) in "
             f"{result.timings.get('total_s', 0):.1f}s",
             "time: " + ", ".join(f"{k.removesuffix('_s')} {v:.2f}s" if k.endswith("_s") else f"{k} {v:.2f}"
                                  for k, v in result.timings.items())]
    if result.stop_reason:
        lines.append(f"stopped early after {len(result.records)} of {result.info.trials} trials: {result.stop_reason}")
    best, baseline, metric = result.best, result.baseline, result.info.metric
    if best is None or best.metric is None:
        lines.append("no trial succeeded: no recipe written")
        return "\n".join(lines)
    gain = ""
    if baseline is not None and baseline.metric is not None:
        gain = f" vs baseline {baseline.metric:.4f} ({best.metric - baseline.metric:+.4f})"
    # Confirmed, the single best run is one seed among others: the verdict below names the winner.
    lines.append(f"best {metric} {best.metric:.4f} (trial {best.number}{', one seed' if result.confirmed else ''})"
                 f"{gain}")
    lines.append(f"best tricks: {tricks_text(_changed(best.values)) or 'none: the baseline won'}")
    if best.measurements:
        lines.append("best measured: " + measurements_text(best.measurements))
    if output is not None:
        winner = (result.confirmed or {}).get("winner_trial", best.number)
        which = f" (the confirmed winner's: {_trial_name(winner)})" if result.confirmed else ""
        lines.append(f"recipe written to {output}{which}; re-run it with `autotrick train --recipe {output}`")
    if parent_run_id:
        from autotrick.tracking import resolve_tracking_uri

        # `autotrick ui` run here finds the same store by itself unless it came from the flag
        flag = f" --tracking-uri {tracking_uri}" if tracking_uri and tracking_uri != resolve_tracking_uri() else ""
        lines.append(f"MLflow run {parent_run_id} (see it with `autotrick ui{flag}`)")
    return "\n".join(lines)


def _trial_name(number: int | None) -> str:
    return "the baseline" if number is None else f"trial {number}"


def _example_input(data: Any, options: SearchOptions) -> Any:
    """Two validation images as the model takes them: the registered model's input example; for
    streamed data (never loaded whole), two blank images of its shape."""
    import torch

    from autotrick.augment import normalize

    if data is None:
        size = options.data_size
        return torch.zeros(2, size.in_channels, *size.image_size)
    return normalize(data.val_x[:2], data.mean, data.std).float()


def _best_model(options: SearchOptions, best: TrialRecord | None) -> Any:
    """The best trial's trained model, saved by its worker as a checkpoint, rebuilt and loaded."""
    from autotrick.checkpoint import load_checkpoint
    from autotrick.search import saved_model_path

    if best is None:
        return None
    path = saved_model_path(options.state_dir, best.number)
    return load_checkpoint(path) if path.exists() else None


class _ProgressPrinter:
    """One line per finished trial: its number, metric, epochs, outcome, best so far, its tricks."""

    def __init__(self, info: SearchInfo, *, verbose: bool = False) -> None:
        self.trials, self.metric, self.mode = info.trials, info.metric, info.mode
        self.verbose = verbose  # a failed trial's traceback too
        self.done = 0
        self.best: float | None = None

    def __call__(self, record: TrialRecord) -> None:
        self.done += 1
        if record.successful and better(record.metric, self.best, self.mode):  # type: ignore[arg-type]
            self.best = record.metric
        metric = f"{record.metric:.4f}" if record.metric is not None else "  -   "
        best = f"{self.best:.4f}" if self.best is not None else "  -   "
        tricks = "baseline (no tricks)" if record.baseline else tricks_text(_changed(record.values))
        why = f" ({record.reason})" if record.reason else ""  # a failure's cause, or the model check's warning
        click.echo(f"trial {self.done:>3}/{self.trials}  #{record.number:<3} {self.metric} {metric}  "
                   f"{record.epochs:>3} ep  {record.outcome:<16} best {best}  {tricks}{why}")
        if self.verbose and record.error:
            click.echo(record.error.rstrip(), err=True)


def _changed(values: Mapping[str, Any]) -> dict[str, Any]:
    """The values that differ from their defaults (the baseline)."""
    from autotrick.tricks import defaults

    baseline = defaults()
    return {k: v for k, v in values.items() if baseline.get(k) != v}
