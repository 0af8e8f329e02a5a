"""What the CLI commands do and print, kept apart from argument parsing (cli.py)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click

from autotrick.atomic import write_text_atomically
from autotrick.errors import ConfigError
from autotrick.recipe import Recipe
from autotrick.records import Outcome, SearchInfo, SearchResult, TrialRecord, better
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
              sets: Mapping[str, Any], weights: str | None = None) -> None:
    """Validate everything, then train once and print one line per epoch and a summary."""
    from autotrick.data import load_data
    from autotrick.space import resolve_values

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
    load_data(config.data, config.data_dir)  # a missing folder fails here, before anything trains
    weights = weights or settings.get("weights")
    if weights or values.get("distill.teacher"):
        spec, weights_file, teachers = resolve_model_files(
            model=model and config.model, default_model=config.model, data=config.data, data_dir=config.data_dir,
            weights=weights, teacher=values.get("distill.teacher"), tracking_uri=None)
        config = replace(config, model=spec, weights=weights_file, teachers=teachers)
    changed = {k: v for k, v in values.items() if k in given}
    click.echo(f"train {config.model} on {config.data}, {config.epochs} epochs, batch {config.batch_size}, "
               f"seed {config.seed}, {config.device}; tricks: {_short(changed) or 'none (the baseline)'}")
    started = time.perf_counter()
    result = run_trial(values, config, lambda r: click.echo(format_epoch(r)))
    summary = (f"{result.outcome}: val_accuracy {result.val_accuracy:.4f}  val_loss {result.val_loss:.4f}  "
               f"epochs {result.epochs_run}  training {result.train_seconds:.2f}s "
               f"(with setup {time.perf_counter() - started:.2f}s)")
    if result.measurements:
        summary += "  " + _measured(result.measurements)
    click.echo(summary + (f"  ({result.reason})" if result.reason else ""))
    if result.outcome.failed:
        raise SystemExit(1)


def _short(values: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in values.items())


def _measured(measurements: Mapping[str, float]) -> str:
    """sparsity 0.6  nonzero_params 34,522: counts in full, shares to 4 digits."""
    return "  ".join(f"{key} {value:,.0f}" if float(value).is_integer() and abs(value) >= 1000 else f"{key} {value:.4g}"
                     for key, value in measurements.items())


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------- search

STATE_ROOT = Path(".autotrick")


@dataclass(frozen=True)
class SearchRequest:
    """`autotrick search`'s options, as given (None: the space's own value)."""

    space: str = "quick"
    model: str | None = None
    data: str | None = None
    data_dir: str | None = None
    trials: int | None = None
    max_epochs: int | None = None
    time_budget: float | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    concurrency: int | None = None
    address: str | None = None
    name: str | None = None
    seed: int = 0
    resume: bool = False
    output: str | None = None
    verbose: bool = False
    tracking_uri: str | None = None
    register: str | None = None
    num_cpus: int | None = None  # a local Ray's CPUs (tests and benchmarks pin 2)
    weights: str | None = None  # the model starts from these: a file, models:/ or runs:/


def prepare_search(request: SearchRequest) -> tuple[Any, Path]:
    """Validate every input of a search, before Ray or MLflow start and before anything is written."""
    from autotrick.params import Fixed
    from autotrick.search import SearchOptions
    from autotrick.space import load_space

    space = load_space(request.space)
    max_epochs = request.max_epochs or space.budget.max_epochs
    space = space.with_budget(trials=request.trials, max_epochs=max_epochs,
                              grace_epochs=min(space.budget.grace_epochs, max_epochs))
    from autotrick.data import absolute_data_spec
    from autotrick.entrypoints import absolute_spec

    # Absolute paths: Ray runs trials in folders of their own.
    model, data = absolute_spec(request.model or space.model), absolute_data_spec(request.data or space.data)
    check_model_and_data(model, data, request.data_dir)
    name = request.name or space.name
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"--name {name!r}: use letters, digits, '-' and '_' only")
    state_dir = (STATE_ROOT / name).resolve()  # absolute: Ray workers run in other folders
    exists = (state_dir / "optuna.journal").exists()
    if request.resume and not exists:
        raise ConfigError(f"--resume: no search named '{name}' in {state_dir}; start it without --resume")
    if exists and not request.resume:
        raise ConfigError(f"a search named '{name}' exists in {state_dir}: add --resume to continue it, "
                          "or pick another --name")
    if request.cpus_per_trial <= 0 or request.gpus_per_trial < 0:
        raise ConfigError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")
    output = Path(request.output or f"{name}.recipe.yaml")
    if not output.parent.is_dir():
        raise ConfigError(f"--output {output}: the folder {output.parent} does not exist")
    data_dir = str(Path(request.data_dir).resolve()) if request.data_dir else None
    train = TrainConfig(model=model, data=data, data_dir=data_dir, epochs=max_epochs,
                        batch_size=space.batch_size, seed=request.seed,
                        device="cuda" if request.gpus_per_trial > 0 else "cpu")
    teacher = space.domains.get("distill.teacher")
    teacher = teacher.value if isinstance(teacher, Fixed) else None  # free text is only ever fixed
    if request.weights or teacher is not None:
        spec, weights_file, teachers = resolve_model_files(
            model=request.model and model, default_model=model, data=data, data_dir=data_dir,
            weights=request.weights, teacher=teacher, tracking_uri=request.tracking_uri)
        train = replace(train, model=spec, weights=weights_file, teachers=teachers)
    options = SearchOptions(name=name, space=space, train=train, state_dir=state_dir,
                            cpus_per_trial=request.cpus_per_trial, gpus_per_trial=request.gpus_per_trial,
                            concurrency=request.concurrency, address=request.address,
                            num_cpus=request.num_cpus, time_budget_s=request.time_budget,
                            resume=request.resume, verbose=request.verbose,
                            save_models=request.register is not None)
    return options, output


MODELS_DIR = STATE_ROOT / "models"  # MLflow models fetched as checkpoints that trials can read


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
    from autotrick.data import load_data

    images = load_data(data, data_dir)
    shape = (images.in_channels, *images.image_size)

    def local_file(ref: str) -> str:
        if is_mlflow_ref(ref):
            from autotrick.tracking import fetch_checkpoint

            return str(fetch_checkpoint(ref, MODELS_DIR.resolve(), input_shape=shape, tracking_uri=tracking_uri))
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


def check_model_and_data(model: str, data: str, data_dir: str | None) -> None:
    """Fail early, in the driver, on a model or data set that cannot be built or found."""
    from autotrick.data import load_data
    from autotrick.models import build_model

    images = load_data(data, data_dir)
    build_model(model, num_classes=images.num_classes, in_channels=images.in_channels,
                image_size=images.image_size)


def run_search_command(request: SearchRequest) -> int:
    """Validate, search, print one line per trial and a summary, write the recipe; the exit code."""
    from autotrick.search import run_search
    from autotrick.tracking import SearchTracker

    options, output = prepare_search(request)
    info = replace(options.info(versions()), weights=request.weights)
    tracker = SearchTracker(info, tracking_uri=request.tracking_uri, resume=request.resume)
    progress = _ProgressPrinter(info)
    click.echo(f"search '{info.name}': {options.space.name} space, {info.model} on {info.data}, "
               f"{info.trials} trials x up to {info.max_epochs} epochs, {info.metric} ({info.mode})"
               + ("; resuming" if request.resume else ""))

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
        tracker.search_finished(result, recipe, model=model, register_name=request.register)

    result = run_search(options, info, on_record, before_shutdown)
    waited = time.perf_counter()
    tracker.close()
    result.timings["logging_wait_s"] = time.perf_counter() - waited  # what MLflow cost the wall time
    result.timings["logging_cpu_s"] = tracker.logging_seconds
    click.echo(_summary(result, output if result.complete else None, tracker.parent_run_id))
    if result.interrupted:
        click.echo(f"interrupted after {len(result.records)} of {info.trials} trials: resume with "
                   f"`autotrick search --name {info.name} --resume`", err=True)
        return 130
    return 0 if result.best is not None else 1


def _summary(result: SearchResult, output: Path | None, parent_run_id: str | None) -> str:
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
        lines.append(f"MLflow run {parent_run_id} (see it with `autotrick ui`)")
    return "\n".join(lines)


def _best_model(options: Any, best: TrialRecord | None) -> Any:
    """The best trial's trained weights, saved by its worker, in a model built the same way."""
    import torch

    from autotrick.apply import prepare_trained
    from autotrick.data import load_data
    from autotrick.models import build_model
    from autotrick.search import saved_model_path

    if best is None:
        return None
    path = saved_model_path(options.state_dir, best.number)
    if not path.exists():
        return None
    images = load_data(options.train.data, options.train.data_dir)
    model = prepare_trained(build_model(options.train.model, num_classes=images.num_classes,
                                        in_channels=images.in_channels, image_size=images.image_size),
                            best.values, num_classes=images.num_classes,
                            example_inputs=torch.zeros(2, images.in_channels, *images.image_size))
    model.load_state_dict(torch.load(path, map_location="cpu"))
    return model.eval()


class _ProgressPrinter:
    """One line per finished trial: its number, metric, epochs, outcome, best so far, its tricks."""

    def __init__(self, info: SearchInfo) -> None:
        self.trials, self.metric, self.mode = info.trials, info.metric, info.mode
        self.done = 0
        self.best: float | None = None

    def __call__(self, record: TrialRecord) -> None:
        self.done += 1
        if record.successful and better(record.metric, self.best, self.mode):  # type: ignore[arg-type]
            self.best = record.metric
        metric = f"{record.metric:.4f}" if record.metric is not None else "  -   "
        best = f"{self.best:.4f}" if self.best is not None else "  -   "
        tricks = "baseline (no tricks)" if record.baseline else _short(_changed(record.values))
        why = f" ({record.reason})" if record.reason and not record.successful else ""
        click.echo(f"trial {self.done:>3}/{self.trials}  #{record.number:<3} {self.metric} {metric}  "
                   f"{record.epochs:>3} ep  {record.outcome:<16} best {best}  {tricks}{why}")


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

    from autotrick.tracking import serve_ui, ui_url

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
