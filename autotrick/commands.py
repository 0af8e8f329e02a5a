"""What the CLI commands do and print, kept apart from argument parsing (cli.py)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click

from autotrick.atomic import write_text_atomically
from autotrick.errors import ConfigError, first_line
from autotrick.recipe import Recipe
from autotrick.records import Outcome, SearchInfo, SearchResult, TrialRecord, better
from autotrick.signals import StopSignals
from autotrick.trainer import EpochReport, TrainConfig, run_trial


def list_tricks() -> None:
    from autotrick.tricks import TRICKS

    for trick in TRICKS:
        click.echo(f"{trick.name}: {trick.summary}")
        for p in trick.params:
            key, default = f"{trick.name}.{p.name}", "null" if p.default is None else str(p.default)
            when = f"  (when {p.when})" if p.when else ""
            search = "given, not searched" if p.kind == "str" else p.search
            click.echo(f"  {key:<26} default {default:<9} search {search}{when}")
            click.echo(f"  {'':<26} {p.help}")


def list_spaces() -> None:
    from autotrick.space import builtin_spaces, describe_space, load_space

    for name in builtin_spaces():
        click.echo(f"{name:<14} {describe_space(load_space(name))}")


def format_epoch(r: EpochReport) -> str:
    return (f"epoch {r.epoch:>3}  train_loss {r.train_loss:.4f}  val_loss {r.val_loss:.4f}  "
            f"val_acc {r.val_accuracy:.4f}  lr {r.lr:.4g}  {r.seconds:.2f}s  {r.images_per_s:,.0f} img/s")


def run_train(*, model: str | None, data: str | None, data_dir: str | None, seed: int, device: str,
              epochs: int | None, batch_size: int | None, recipe_ref: str | None,
              sets: Mapping[str, Any], data_mode: str = "auto", weights: str | None = None) -> None:
    """Validate everything, then train once and print one line per epoch and a summary."""
    from autotrick.data import check_data_mode, plan_data
    from autotrick.device import resolve_device
    from autotrick.space import resolve_values

    device, data_mode = resolve_device(device), check_data_mode(data_mode)

    given: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    if recipe_ref:
        from autotrick.tracking import load_recipe

        recipe = load_recipe(recipe_ref)
        given.update(recipe.tricks)
        settings = recipe.training
    given.update(sets)
    values = resolve_values(given, "--set" if not recipe_ref else "recipe")
    config = TrainConfig(
        model=model or settings.get("model") or "cnn", data=data or settings.get("data") or "digits",
        data_dir=data_dir, epochs=epochs or settings.get("epochs") or 15,
        batch_size=batch_size or settings.get("batch_size") or 64,
        seed=seed if not recipe_ref or seed else settings.get("seed", seed), device=device)
    if device == "cpu":  # re-running a recipe's own trial: its thread count, for the same numbers
        same_trial = (config.model, config.data) == (settings.get("model"), settings.get("data"))
        config = replace(config, threads=(settings.get("threads") if same_trial else None) or os.cpu_count())
    # Fails here, before anything is printed or trained: a missing folder, a user function that
    # raises; a data set too big for memory streams.
    plan = plan_data(check_model_and_data(config.model, config.data, config.data_dir), data_mode,
                     device=config.device)
    config = replace(config, data_mode=plan.mode)
    weights = weights or settings.get("weights")
    if weights or values.get("distill.teacher"):
        spec, weights_file, teachers = resolve_model_files(
            model=model and config.model, default_model=config.model, data=config.data, data_dir=config.data_dir,
            weights=weights, teacher=values.get("distill.teacher"), tracking_uri=None)
        config = replace(config, model=spec, weights=weights_file, teachers=teachers)
    changed = {k: v for k, v in values.items() if k in given}
    click.echo(f"train {config.model} on {config.data}, {config.epochs} epochs, batch {config.batch_size}, "
               f"seed {config.seed}, {config.device}, {plan.describe()}; "
               f"tricks: {_short(changed) or 'none (the baseline)'}")
    started = time.perf_counter()
    result = run_trial(values, config, lambda r: click.echo(format_epoch(r)), on_prepared=_print_prepared)
    summary = (f"{result.outcome}: val_accuracy {result.val_accuracy:.4f}  val_loss {result.val_loss:.4f}  "
               f"epochs {result.epochs_run}  training {result.train_seconds:.2f}s "
               f"(with setup {time.perf_counter() - started:.2f}s)")
    if result.measurements:
        summary += "  " + _measured(result.measurements)
    click.echo(summary + (f"  ({result.reason})" if result.reason else ""))
    if result.outcome.failed:
        raise SystemExit(1)


def _print_prepared(notes: list[str], warning: str) -> None:
    """What the model-side tricks did, and the model check's warning, before the first epoch."""
    for note in notes:
        click.echo(f"note: {note}")
    if warning:
        click.echo(f"warning: {warning}")


def _short(values: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in values.items())


def _measured(measurements: Mapping[str, float]) -> str:
    """sparsity 0.6  nonzero_params 34,522: counts in full, shares to 4 digits."""
    return "  ".join(f"{key} {value:,.0f}" if float(value).is_integer() and abs(value) >= 1000 else f"{key} {value:.4g}"
                     for key, value in measurements.items())


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------- search

DEFAULT_SPACE = "quick"


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


@dataclass(frozen=True)
class _Prepared:
    """A validated search: what to run, where the recipe goes, and the request as stored."""

    options: Any  # search.SearchOptions
    output: Path
    request: SearchRequest  # every option at its effective value
    space_yaml: str


def search_name(request: SearchRequest) -> str:
    from autotrick.space import resolve_space_path

    name = request.name or resolve_space_path(request.space or DEFAULT_SPACE).stem
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"--name {name!r}: use letters, digits, '-' and '_' only")
    return name


def prepare_search(request: SearchRequest, state_dir: Path, space_yaml: str | None = None) -> _Prepared:
    """Validate every input of a search, before Ray or MLflow start and before anything is written.
    `space_yaml`: a resumed search's space, as it was when the search started."""
    from autotrick.data import absolute_data_spec
    from autotrick.entrypoints import absolute_spec
    from autotrick.params import Fixed
    from autotrick.search import SearchOptions, check_address
    from autotrick.space import read_space_text, resolve_space_path, space_from_text
    from autotrick.tracking import check_store, resolve_tracking_uri

    if space_yaml is None:
        space_file = resolve_space_path(request.space or DEFAULT_SPACE).resolve()
        space_yaml = read_space_text(space_file)
    else:  # a resumed search's space: the file named may since have changed or gone
        space_file = Path(request.space or DEFAULT_SPACE)
    space = space_from_text(space_yaml, space_file)
    max_epochs = request.max_epochs or space.budget.max_epochs
    space = space.with_budget(trials=request.trials, max_epochs=max_epochs,
                              grace_epochs=min(space.budget.grace_epochs, max_epochs))
    from autotrick.data import check_data_mode, plan_data

    # Absolute paths: Ray runs trials in folders of their own.
    model, data = absolute_spec(request.model or space.model), absolute_data_spec(request.data or space.data)
    data_dir = str(Path(request.data_dir).resolve()) if request.data_dir else None
    data_mode = check_data_mode(request.data_mode or "auto")
    gpus = gpus_per_trial(request.gpus_per_trial, address=request.address)
    size = check_model_and_data(model, data, data_dir)
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
    seed = request.seed or 0
    # Each trial process holds its own copy of in-memory data: the budget is split between them.
    machine_cpus = request.num_cpus or os.cpu_count() or 1
    at_once = request.concurrency or max(1, int(machine_cpus // cpus))
    plan = plan_data(size, data_mode, device="cuda" if gpus else "cpu", trials_at_once=at_once,
                     gpu_share=gpus or 1.0)
    train = TrainConfig(model=model, data=data, data_dir=data_dir, epochs=max_epochs,
                        batch_size=space.batch_size, seed=seed,
                        device="auto" if gpus is None else "cuda" if gpus > 0 else "cpu", data_mode=plan.mode)
    teacher = space.domains.get("distill.teacher")
    teacher = teacher.value if isinstance(teacher, Fixed) else None  # free text is only ever fixed
    if request.weights or teacher is not None:
        spec, weights_file, teachers = resolve_model_files(
            model=request.model and model, default_model=model, data=data, data_dir=data_dir,
            weights=request.weights, teacher=teacher, tracking_uri=tracking_uri)
        train = replace(train, model=spec, weights=weights_file, teachers=teachers)
    options = SearchOptions(name=state_dir.name, space=space, train=train, state_dir=state_dir,
                            cpus_per_trial=cpus, gpus_per_trial=gpus, data_plan=plan.describe(),
                            concurrency=request.concurrency, address=request.address,
                            num_cpus=request.num_cpus, time_budget_s=request.time_budget,
                            resume=request.resume, verbose=request.verbose,
                            save_models=request.register is not None)
    effective = replace(request, space=str(space_file), model=model, data=data, data_dir=data_dir,
                        trials=space.budget.trials, max_epochs=max_epochs, cpus_per_trial=cpus,
                        seed=seed, output=str(output), tracking_uri=tracking_uri,
                        data_mode=data_mode)
    return _Prepared(options, output, effective, space_yaml)


def resolve_model_files(*, model: str | None, default_model: str, data: str, data_dir: str | None,
                        weights: str | None, teacher: Any, tracking_uri: str | None,
                        ) -> tuple[str, str | None, tuple[tuple[str, str], ...]]:
    """--weights and distill.teacher as absolute local files, since trials run in other folders:
    a file as given, an MLflow model fetched as a checkpoint. Each is loaded here once, so that one
    that does not fit the model or the data fails now, in one line. Returns the model spec (a
    checkpoint given as --weights names its own; `model`, if given, must agree), the weights file
    and the teacher's (reference, file)."""
    import torch

    from autotrick.checkpoint import build_initial_model, is_mlflow_ref, load_teacher, read_model_file
    from autotrick.data import describe_data
    from autotrick.state import FETCHED_MODELS

    images = describe_data(data, data_dir)  # the shape and classes, without loading a data set to stream
    shape = (images.in_channels, *images.image_size)

    def local_file(ref: str) -> str:
        if is_mlflow_ref(ref):
            from autotrick.tracking import fetch_checkpoint

            return str(fetch_checkpoint(ref, FETCHED_MODELS.resolve(), input_shape=shape, tracking_uri=tracking_uri))
        return str(Path(ref).expanduser().resolve())

    spec, weights_file = model or default_model, local_file(weights) if weights else None
    if weights_file is not None:
        named = read_model_file(weights_file, "--weights").spec
        if named is not None and model is not None and named != model:
            raise ConfigError(f"--weights {weights}: a checkpoint of model '{named}', not --model {model}")
        spec = named or spec
        build_initial_model(spec, weights=weights_file, num_classes=images.num_classes,
                            in_channels=images.in_channels, image_size=images.image_size)
    teachers: tuple[tuple[str, str], ...] = ()
    if teacher is not None:
        teachers = ((str(teacher), local_file(str(teacher))),)
        with torch.no_grad():
            outputs = load_teacher(str(teacher), dict(teachers))(torch.zeros(2, *shape)).shape[-1]
        if outputs != images.num_classes:
            raise ConfigError(f"distill.teacher {teacher}: the teacher gives {outputs} classes, the data set "
                              f"'{data}' has {images.num_classes}; expected a teacher trained on the same classes")
    return spec, weights_file, teachers


def check_model_and_data(model: str, data: str, data_dir: str | None) -> Any:
    """Fail early, in the driver, on a model or data set that cannot be built or found; returns
    the data set's DataSize (told without decoding it where it may not fit in memory)."""
    from autotrick.data import describe_data
    from autotrick.models import build_model

    size = describe_data(data, data_dir)
    build_model(model, num_classes=size.num_classes, in_channels=size.in_channels, image_size=size.image_size)
    return size


def gpus_per_trial(value: float | str | None, *, address: str | None) -> float | None:
    """--gpus-per-trial as a number. auto (or not given): 1 when this machine has a GPU (what a local
    Ray will have), else 0; None on a cluster (--address), whose GPUs the search counts once it is
    connected."""
    if value is None or value == "auto":
        if address:
            return None
        import torch

        return 1.0 if torch.cuda.device_count() > 0 else 0.0
    try:
        gpus = float(value)
    except (TypeError, ValueError):
        gpus = -1.0
    if not gpus >= 0:  # also NaN
        raise ConfigError(f"--gpus-per-trial {value}: expected auto or a number >= 0 (0.25: 4 trials per GPU)")
    return gpus


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
    from autotrick.request import stored_form
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
    prepared = prepare_search(request, folder.path, space_yaml)
    if not request.resume:
        _say(held.enter_context(folder.owned("start")))
        if folder.started():  # the same search started by another process a moment ago, and ended
            raise ConfigError(f"a search named '{name}' exists in {folder.path}: add --resume to continue it, "
                              "or pick another --name")
    folder.write_request(stored_form(prepared.request, prepared.space_yaml))
    _say(folder.repair_journal())
    return _run(prepared, signals)


def _say(line: str | None) -> None:
    if line:
        click.echo(f"autotrick: {line}", err=True)


def _run(prepared: _Prepared, signals: StopSignals) -> int:
    from autotrick.data import load_data
    from autotrick.search import finished_records, run_search
    from autotrick.tracking import SearchTracker, resolve_tracking_uri

    options, output, request = prepared.options, prepared.output, prepared.request
    info = replace(options.info(versions()), weights=request.weights)
    # The data set as MLflow's dataset input, digest and all: in-memory data only, which
    # prepare_search loaded (and cached) already; a streamed one is never loaded whole.
    data = load_data(options.train.data, options.train.data_dir) if options.train.data_mode == "memory" else None
    tracker = SearchTracker(info, tracking_uri=request.tracking_uri, resume=request.resume, dataset=data)
    progress = _ProgressPrinter(info, verbose=request.verbose)
    click.echo(f"search '{info.name}': {options.space.name} space, {info.model} on {info.data}, "
               f"{info.trials} trials x up to {info.max_epochs} epochs, {info.metric} ({info.mode}); "
               f"{describe_gpus(options.gpus_per_trial, request.gpus_per_trial)}, {options.data_plan}; "
               f"MLflow {resolve_tracking_uri(request.tracking_uri)}" + ("; resuming" if request.resume else ""))
    resume_hint = f"resume with `autotrick search --name {info.name} --resume`"

    def on_record(record: TrialRecord) -> None:
        progress(record)
        tracker.trial_finished(record)

    def before_shutdown(result: SearchResult) -> None:
        """The recipe, and MLflow's last writes queued while Ray is still up (not waited for)."""
        recipe = Recipe.from_search(result, mlflow_run_id=tracker.parent_run_id)
        if recipe is not None:
            recipe.write(output)
        model = _best_model(options, result.best) if request.register and recipe else None
        if request.register and recipe and model is None:
            click.echo(f"warning: --register {request.register}: trial {result.best.number}'s weights were "  # type: ignore[union-attr]
                       "not saved; nothing registered", err=True)
        tracker.search_finished(result, recipe, model=model, register_name=request.register,
                                example_input=_example_input(data) if model is not None else None)

    try:
        result = run_search(options, info, on_record, before_shutdown)
    except KeyboardInterrupt:  # a signal outside Tune's loop (starting, or a second one)
        done = len(finished_records(options))
        tracker.search_ended_early("KILLED", f"interrupted by {signals.name} after {done} of {info.trials} trials")
        tracker.close()
        click.echo(f"interrupted by {signals.name} after {done} of {info.trials} trials: {resume_hint}", err=True)
        return signals.exit_code
    except BaseException as error:  # the parent run must not be left RUNNING
        tracker.search_ended_early("FAILED", first_line(error))
        tracker.close()
        raise
    waited = time.perf_counter()
    tracker.close()
    result.timings["logging_wait_s"] = time.perf_counter() - waited  # what MLflow cost the wall time
    result.timings["logging_cpu_s"] = tracker.logging_seconds
    click.echo(_summary(result, output if result.complete else None, tracker.parent_run_id, request.tracking_uri))
    if result.interrupted:
        click.echo(f"interrupted after {len(result.records)} of {info.trials} trials: {resume_hint}", err=True)
        return signals.exit_code
    return 0 if result.best is not None else 1


def _summary(result: SearchResult, output: Path | None, parent_run_id: str | None,
             tracking_uri: str | None = None) -> str:
    failed = sum(1 for r in result.records if r.outcome.failed)
    stopped = result.count(Outcome.ASHA_STOPPED)
    lines = [f"{len(result.records)} trials ({stopped} stopped early by ASHA, {failed} failed) in "
             f"{result.timings.get('total_s', 0):.1f}s",
             "time: " + ", ".join(f"{k.removesuffix('_s')} {v:.2f}s" if k.endswith("_s") else f"{k} {v:.2f}"
                                  for k, v in result.timings.items())]
    best, baseline, metric = result.best, result.baseline, result.info.metric
    if best is None or best.metric is None:
        lines.append("no trial succeeded: no recipe written")
        return "\n".join(lines)
    gain = ""
    if baseline is not None and baseline.metric is not None:
        gain = f" vs baseline {baseline.metric:.4f} ({best.metric - baseline.metric:+.4f})"
    lines.append(f"best {metric} {best.metric:.4f} (trial {best.number}){gain}")
    lines.append(f"best tricks: {_short(_changed(best.values)) or 'none: the baseline won'}")
    if best.measurements:
        lines.append("best measured: " + _measured(best.measurements))
    if output is not None:
        lines.append(f"recipe written to {output}; re-run it with `autotrick train --recipe {output}`")
    if parent_run_id:
        from autotrick.tracking import resolve_tracking_uri

        # `autotrick ui` run here finds the same store by itself unless it came from the flag
        flag = f" --tracking-uri {tracking_uri}" if tracking_uri and tracking_uri != resolve_tracking_uri() else ""
        lines.append(f"MLflow run {parent_run_id} (see it with `autotrick ui{flag}`)")
    return "\n".join(lines)


def _example_input(data: Any) -> Any:
    """Two validation images as the model takes them: the registered model's input example."""
    from autotrick.augment import normalize

    return normalize(data.val_x[:2], data.mean, data.std).float()


def _best_model(options: Any, best: TrialRecord | None) -> Any:
    """The best trial's trained weights, saved by its worker, in a model built the same way."""
    import torch

    from autotrick.apply import prepare_trained
    from autotrick.data import describe_data
    from autotrick.models import build_model
    from autotrick.search import saved_model_path

    if best is None:
        return None
    path = saved_model_path(options.state_dir, best.number)
    if not path.exists():
        return None
    images = describe_data(options.train.data, options.train.data_dir)
    model = prepare_trained(build_model(options.train.model, num_classes=images.num_classes,
                                        in_channels=images.in_channels, image_size=images.image_size),
                            best.values, num_classes=images.num_classes,
                            example_inputs=torch.zeros(2, images.in_channels, *images.image_size))
    model.load_state_dict(torch.load(path, map_location="cpu"))
    return model.eval()


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
        tricks = "baseline (no tricks)" if record.baseline else _short(_changed(record.values))
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


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("autotrick", "torch", "ray", "optuna", "mlflow"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


# --------------------------------------------------------------------------- recipes and the UI

def export_recipe(*, search_name: str | None, run_id: str | None, output: str, tracking_uri: str | None) -> None:
    from autotrick.recipe import parse_recipe
    from autotrick.tracking import export_recipe_text

    if bool(search_name) == bool(run_id):
        raise ConfigError("export: give exactly one of --name SEARCH or --run RUN_ID")
    if not Path(output).parent.is_dir():
        raise ConfigError(f"--output {output}: the folder {Path(output).parent} does not exist")
    text = export_recipe_text(search_name=search_name, run_id=run_id, tracking_uri=tracking_uri)
    parse_recipe(text, search_name or run_id or "")  # never write a recipe that would not load
    write_text_atomically(output, text)
    click.echo(f"recipe written to {output}")


def show_recipe(ref: str, *, tracking_uri: str | None) -> None:
    """The recipe as a table: each trick parameter that differs from the baseline, then the rest."""
    from autotrick.tracking import load_recipe
    from autotrick.tricks import defaults

    recipe = load_recipe(ref, tracking_uri=tracking_uri)
    provenance, baseline = recipe.provenance, defaults()
    metric = provenance.get("metric", "metric")
    value, base = provenance.get("value"), provenance.get("baseline")
    click.echo(f"recipe {ref}" + (f" (search '{provenance['search']}', trial {provenance.get('trial')})"
                                  if "search" in provenance else ""))
    if isinstance(value, int | float):
        gain = f", baseline {base:.4f}, gain {value - base:+.4f}" if isinstance(base, int | float) else ""
        click.echo(f"{metric} {value:.4f}{gain}")
    click.echo("training: " + ", ".join(f"{k} {v}" for k, v in recipe.training.items()))
    rows = sorted(recipe.tricks.items(), key=lambda kv: (baseline.get(kv[0]) == kv[1], kv[0]))
    click.echo(f"{'trick parameter':<28} {'value':<16} baseline")
    for key, v in rows:
        mark = "*" if baseline.get(key) != v else " "
        click.echo(f"{mark} {key:<26} {_fmt(v):<16} {_fmt(baseline.get(key))}")
    click.echo("* differs from the baseline")


def run_ui(*, port: int, search_name: str | None, tracking_uri: str | None) -> None:
    import signal

    from autotrick.tracking import is_server, resolve_tracking_uri, serve_ui, ui_url

    if is_server(resolve_tracking_uri(tracking_uri)):  # a tracking server has its UI already
        click.echo(f"MLflow UI at {ui_url(search_name=search_name, tracking_uri=tracking_uri)}")
        return
    # SIGTERM (a service manager, `timeout`, `docker stop`) stops the server as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    process = serve_ui(tracking_uri=tracking_uri, port=port)
    click.echo(f"MLflow UI at {ui_url(search_name=search_name, tracking_uri=tracking_uri, port=port)} "
               "(Ctrl-C to stop)")
    try:
        process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
