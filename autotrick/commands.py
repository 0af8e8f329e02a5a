"""What the CLI commands do and print, kept apart from argument parsing (cli.py)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click

from autotrick.errors import ConfigError
from autotrick.params import Param
from autotrick.records import TrialRecord
from autotrick.trainer import EpochReport, TrainConfig, run_trial


def list_tricks() -> None:
    from autotrick.tricks import TRICKS

    for trick in TRICKS:
        click.echo(f"{trick.name}: {trick.summary}")
        for p in trick.params:
            key, default = f"{trick.name}.{p.name}", "null" if p.default is None else str(p.default)
            when = f"  (when {p.when})" if p.when else ""
            click.echo(f"  {key:<26} default {default:<9} search {_range(p)}{when}")
            click.echo(f"  {'':<26} {p.help}")


def _range(param: Param) -> str:
    if param.kind == "choice":
        return "{" + ", ".join(str(c) for c in param.choices) + "}"
    if param.kind == "bool":
        return "{false, true}"
    scale = " log" if param.log else ""
    return f"[{param.low:g}, {param.high:g}]{scale}"


def list_spaces() -> None:
    from autotrick.space import builtin_spaces, describe_space, load_space

    for name in builtin_spaces():
        click.echo(f"{name:<14} {describe_space(load_space(name))}")


def format_epoch(r: EpochReport) -> str:
    return (f"epoch {r.epoch:>3}  train_loss {r.train_loss:.4f}  val_loss {r.val_loss:.4f}  "
            f"val_acc {r.val_accuracy:.4f}  lr {r.lr:.4g}  {r.seconds:.2f}s  {r.images_per_s:,.0f} img/s")


def run_train(*, model: str | None, data: str | None, data_dir: str | None, seed: int, device: str,
              epochs: int | None, batch_size: int | None, recipe_ref: str | None,
              sets: Mapping[str, Any]) -> None:
    """Validate everything, then train once and print one line per epoch and a summary."""
    from autotrick.data import load_data
    from autotrick.space import resolve_values

    given: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    if recipe_ref:
        from autotrick.recipe import load_recipe

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
    changed = {k: v for k, v in values.items() if k in given}
    click.echo(f"train {config.model} on {config.data}, {config.epochs} epochs, batch {config.batch_size}, "
               f"seed {config.seed}, {config.device}; tricks: {_short(changed) or 'none (the baseline)'}")
    started = time.perf_counter()
    result = run_trial(values, config, lambda r: click.echo(format_epoch(r)), on_prepared=_print_prepared)
    summary = (f"{result.outcome}: val_accuracy {result.val_accuracy:.4f}  val_loss {result.val_loss:.4f}  "
               f"epochs {result.epochs_run}  training {result.train_seconds:.2f}s "
               f"(with setup {time.perf_counter() - started:.2f}s)")
    if result.sparsity is not None:
        summary += f"  sparsity {result.sparsity:.3f}  nonzero params {result.nonzero_params:,}"
    click.echo(summary + (f"  ({result.reason})" if result.reason else ""))
    if result.outcome in ("diverged", "oom", "failed"):
        raise SystemExit(1)


def _print_prepared(notes: list[str], warning: str) -> None:
    """What the model-side tricks did, and the model check's warning, before the first epoch."""
    for note in notes:
        click.echo(f"note: {note}")
    if warning:
        click.echo(f"warning: {warning}")


def _short(values: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in values.items())


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


def prepare_search(request: SearchRequest) -> tuple[Any, Path]:
    """Validate every input of a search, before Ray or MLflow start and before anything is written."""
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
    options = SearchOptions(name=name, space=space, train=train, state_dir=state_dir,
                            cpus_per_trial=request.cpus_per_trial, gpus_per_trial=request.gpus_per_trial,
                            concurrency=request.concurrency, address=request.address,
                            num_cpus=request.num_cpus, time_budget_s=request.time_budget,
                            resume=request.resume, verbose=request.verbose,
                            save_models=request.register is not None)
    return options, output


def check_model_and_data(model: str, data: str, data_dir: str | None) -> None:
    """Fail early, in the driver, on a model or data set that cannot be built or found."""
    from autotrick.data import load_data
    from autotrick.models import build_model

    images = load_data(data, data_dir)
    build_model(model, num_classes=images.num_classes, in_channels=images.in_channels,
                image_size=images.image_size)


def run_search_command(request: SearchRequest) -> int:
    """Validate, search, print one line per trial and a summary, write the recipe; the exit code."""
    from autotrick.records import SearchInfo
    from autotrick.search import run_search
    from autotrick.tracking import SearchTracker

    options, output = prepare_search(request)
    budget = options.space.budget
    info = SearchInfo(name=options.name, space=options.space.source, model=options.train.model,
                      data=options.train.data, metric=budget.metric, mode=budget.mode, trials=budget.trials,
                      max_epochs=budget.max_epochs, batch_size=options.space.batch_size, seed=options.train.seed,
                      device=options.train.device, versions=versions())
    tracker = SearchTracker(info, tracking_uri=request.tracking_uri, resume=request.resume)
    progress = _ProgressPrinter(budget.trials, budget.metric, budget.mode)
    click.echo(f"search '{options.name}': {options.space.name} space, {options.train.model} on "
               f"{options.train.data}, {budget.trials} trials x up to {budget.max_epochs} epochs, "
               f"{budget.metric} ({budget.mode})" + ("; resuming" if request.resume else ""))

    def on_record(record: TrialRecord) -> None:
        progress(record)
        tracker.trial_finished(record)

    recipe: list[Any] = []  # filled while Ray is still up

    def before_shutdown(result: Any) -> None:
        recipe.append(_record_best(result, options, tracker, request))

    result = run_search(options, on_record, before_shutdown)
    waited = time.perf_counter()
    tracker.close()
    result.timings["logging_wait_s"] = time.perf_counter() - waited  # what MLflow cost the wall time
    result.timings["logging_cpu_s"] = tracker.logging_seconds
    if recipe[0] is not None:
        recipe[0].write(output)
    click.echo(_summary(result, result.best, result.baseline, budget, output if recipe[0] else None, tracker))
    if result.interrupted:
        click.echo(f"interrupted after {len(result.records)} of {result.requested} trials: resume with "
                   f"`autotrick search --name {options.name} --resume`", err=True)
        return 130
    return 0 if result.best is not None else 1


def _record_best(result: Any, options: Any, tracker: Any, request: SearchRequest) -> Any:
    """The best recipe, and everything MLflow gets at the end of a search (queued, not waited for)."""
    from autotrick.recipe import Recipe

    budget = options.space.budget
    best, baseline = result.best, result.baseline
    recipe = None
    if best is not None and not result.interrupted:
        recipe = Recipe(tricks=dict(best.values), training={
            "model": options.train.model, "data": options.train.data, "epochs": budget.max_epochs,
            "batch_size": options.space.batch_size, "seed": options.train.seed,
            "precision": best.values.get("precision.dtype", "fp32"),
            "threads": options.threads_per_trial},
            provenance={"metric": budget.metric, "value": best.metric,
                        "baseline": baseline.metric if baseline else None, "search": options.name,
                        "space": options.space.name, "trial": best.number, "versions": versions(),
                        "mlflow_run_id": tracker.parent_run_id})
    registered = _best_model(options, best) if request.register and recipe else None
    if request.register and recipe and registered is None:
        click.echo(f"warning: --register {request.register}: trial {best.number}'s weights were not saved; "
                   "nothing registered", err=True)
    tracker.search_finished(records=result.records, best=best, baseline=baseline,
                            recipe_yaml=recipe.to_yaml() if recipe else None, study=result.study,
                            interrupted=result.interrupted, registered_model=registered,
                            register_name=request.register)
    return recipe


def _summary(result: Any, best: TrialRecord | None, baseline: TrialRecord | None, budget: Any,
             output: Path | None, tracker: Any) -> str:
    failed = sum(1 for r in result.records if not r.successful and r.outcome != "stopped_early")
    stopped = sum(1 for r in result.records if r.outcome == "stopped_early")
    lines = [f"{len(result.records)} trials ({stopped} stopped early by ASHA, {failed} failed) in "
             f"{result.timings.get('total_s', 0):.1f}s",
             "time: " + ", ".join(f"{k.removesuffix('_s')} {v:.2f}s" if k.endswith("_s") else f"{k} {v:.2f}"
                                  for k, v in result.timings.items())]
    if best is None:
        lines.append("no trial succeeded: no recipe written")
        return "\n".join(lines)
    gain = ""
    if baseline is not None and baseline.metric is not None:
        gain = f" vs baseline {baseline.metric:.4f} ({best.metric - baseline.metric:+.4f})"
    lines.append(f"best {budget.metric} {best.metric:.4f} (trial {best.number}){gain}")
    lines.append(f"best tricks: {_short(_changed(best.values)) or 'none: the baseline won'}")
    if output is not None:
        lines.append(f"recipe written to {output}; re-run it with `autotrick train --recipe {output}`")
    if tracker.parent_run_id:
        lines.append(f"MLflow run {tracker.parent_run_id} (see it with `autotrick ui`)")
    return "\n".join(lines)


def _best_model(options: Any, best: TrialRecord | None) -> Any:
    """The best trial's trained weights, saved by its worker, in a model built the same way."""
    import torch

    from autotrick.apply import prepare_model
    from autotrick.data import load_data
    from autotrick.models import build_model
    from autotrick.search import saved_model_path

    if best is None:
        return None
    path = saved_model_path(options.state_dir, best.number)
    if not path.exists():
        return None
    images = load_data(options.train.data, options.train.data_dir)
    model = prepare_model(build_model(options.train.model, num_classes=images.num_classes,
                                      in_channels=images.in_channels, image_size=images.image_size),
                          best.values)
    model.load_state_dict(torch.load(path, map_location="cpu"))
    return model.eval()


class _ProgressPrinter:
    """One line per finished trial: its number, metric, epochs, outcome, best so far, its tricks."""

    def __init__(self, trials: int, metric: str, mode: str) -> None:
        self.trials, self.metric, self.mode = trials, metric, mode
        self.done = 0
        self.best: float | None = None

    def __call__(self, record: TrialRecord) -> None:
        from autotrick.records import better

        self.done += 1
        if record.successful and better(record.metric, self.best, self.mode):  # type: ignore[arg-type]
            self.best = record.metric
        metric = f"{record.metric:.4f}" if record.metric is not None else "  -   "
        best = f"{self.best:.4f}" if self.best is not None else "  -   "
        tricks = "baseline (no tricks)" if record.baseline else _short(_changed(record.values))
        why = f" ({record.reason})" if record.reason else ""  # a failure's cause, or the model check's warning
        click.echo(f"trial {self.done:>3}/{self.trials}  #{record.number:<3} {self.metric} {metric}  "
                   f"{record.epochs:>3} ep  {record.outcome:<13} best {best}  {tricks}{why}")


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
    Path(output).write_text(text)
    click.echo(f"recipe written to {output}")


def show_recipe(ref: str, *, tracking_uri: str | None) -> None:
    """The recipe as a table: each trick parameter that differs from the baseline, then the rest."""
    from autotrick.recipe import load_recipe
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
