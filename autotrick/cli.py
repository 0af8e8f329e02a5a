"""The `autotrick` command line: thin. It parses, calls the library, prints, and turns every user
mistake (an AutotrickError or a click usage error) into one line on stderr and exit code 2."""

from __future__ import annotations

import atexit
import errno
import os
import sys
import threading
import traceback
from collections.abc import Sequence
from concurrent.futures import thread as futures_thread
from typing import Any

import click
import yaml

from autotrick.errors import AutotrickError, ConfigError, UserCodeError, first_line
from autotrick.request import RESUME_MAY_CHANGE

EXIT_USAGE = 2
VERBOSE = "verbose"  # set in the context object by -v, which main() reads when a command fails


def _note_verbose(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """-v as click parsed it (also inside -vo FILE), kept where main() can read it after a failure."""
    if value and isinstance(ctx.obj, dict):
        ctx.obj[VERBOSE] = True
    return value
# A file the command could not write (or read), by its cause: what to do about it.
_WRITE_FAILURES = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space (or raise the quota)",
                   errno.EROFS: "the file system is read-only: write elsewhere (run it in another folder)",
                   errno.EACCES: "fix the permissions", errno.EPERM: "fix the permissions"}


def main(argv: Sequence[str] | None = None) -> None:
    args = list(argv) if argv is not None else sys.argv[1:]
    state: dict[str, bool] = {}  # the commands' context object: -v, as click parsed it
    try:
        code = cli.main(args=args, prog_name="autotrick", standalone_mode=False, obj=state)
    except (AutotrickError, click.UsageError, click.BadParameter, click.FileError) as exc:
        message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        if isinstance(exc, UserCodeError) and exc.__cause__ is not None:
            if state.get(VERBOSE):
                traceback.print_exception(exc.__cause__)
            else:
                message += " (-v shows its traceback)"
        click.echo(f"autotrick: error: {' '.join(message.split())}", err=True)
        sys.exit(EXIT_USAGE)
    except click.Abort:
        click.echo("autotrick: aborted", err=True)
        sys.exit(130)
    except OSError as exc:
        if exc.errno not in _WRITE_FAILURES:
            raise
        # What was written stays whole (atomic files; a cut journal line is set aside on the next start).
        click.echo(f"autotrick: error: {first_line(exc)}: {_WRITE_FAILURES[exc.errno]}, then run the command "
                   "again (a search: with --resume)", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def run_exit_handlers() -> None:
    """What a normal exit runs after the threads: the atexit handlers (logging's flush, MLflow's
    and Ray's own). Python has no public call for it; `atexit._run_exitfuncs` is the one the
    interpreter itself uses at exit (CPython since 3.0). tests/test_cli_errors.py fails if it goes."""
    atexit._run_exitfuncs()


def run() -> None:
    """The `autotrick` command. It exits without finalizing the interpreter: after a search,
    tearing down torch, Ray's core library and MLflow takes ~3 s that nobody needs, and by then
    everything is written (the recipe, the Optuna journal; the MLflow writer has been joined)."""
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code
    else:
        code = 0
    # A normal exit first tells thread pools (MLflow's downloads) that no more work is coming, and
    # their idle workers end; joining them without it waits for ever. CPython registers this hook
    # with threading's exit hooks; it is concurrent.futures' own, run as the interpreter would.
    getattr(futures_thread, "_python_exit", lambda: None)()
    for thread in threading.enumerate():  # what a normal exit would wait for
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    run_exit_handlers()
    if not isinstance(code, int):  # sys.exit("message"), as the interpreter would do it
        print(code, file=sys.stderr)
        code = 1 if code is not None else 0
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="autotrick")
def cli() -> None:
    """Find which training tricks pay off for your model and data, and get back a recipe."""


def parse_sets(pairs: Sequence[str]) -> dict[str, Any]:
    """`--set norm.type=group --set optim.lr=0.1` -> {"norm.type": "group", "optim.lr": 0.1}."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--set {pair}: expected trick.param=value, e.g. --set norm.type=group")
        try:
            values[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"--set {pair}: the value {text!r} is not a number, string or null") from None
    return values


def _tracking_uri_option(f: Any) -> Any:
    return click.option("--tracking-uri", default=None,
                        help="an MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")(f)


def _data_mode_option(default: str | None) -> Any:
    """search takes None for not given: a resumed search keeps the mode it started with."""
    return click.option("--data-mode", default=default, type=click.Choice(["auto", "memory", "stream"]),
                        help="hold the data set in memory, or stream it from disk; auto (the default): stream "
                             "what does not fit")


def _skip_bad_images_option(default: bool | None) -> Any:
    """search takes None for not given: a resumed search keeps what it started with."""
    return click.option("--skip-bad-images/--no-skip-bad-images", default=default,
                        help="leave out and count an image folder's files that cannot be read (corrupt, truncated, "
                             "not an image) instead of stopping at the first; costs one extra decode of every image")


def _train_options(f: Any) -> Any:
    for option in reversed([
        click.option("--model", default=None, help="mlp | cnn | resnet18 | a torchvision name | module:function"),
        click.option("--data", default=None, help="digits (embedded) | cifar10 | cifar100 | mnist | "
                     "fashion_mnist | imagefolder:DIR | module:function"),
        click.option("--data-dir", default=None, type=click.Path(file_okay=False),
                     help="root holding torchvision's on-disk layout; nothing is downloaded"),
        click.option("--seed", default=0, show_default=True, type=int),
        click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
                     help="auto: CUDA when there is a GPU"),
        _data_mode_option("auto"),
    ]):
        f = option(f)
    return f


_WEIGHTS_HELP = ("start from these weights: a state dict for --model (e.g. torchvision's .pth, a local file), "
                 "an autotrick checkpoint, models:/NAME@alias or runs:/RUN_ID/model; a new head if the classes differ")


@cli.command()
@_train_options
@click.option("--epochs", default=None, type=click.IntRange(min=1), help="default 15, or the recipe's")
@click.option("--batch-size", default=None, type=click.IntRange(min=1), help="default 64, or the recipe's")
@click.option("--recipe", "recipe_ref", default=None,
              help="a recipe: file.yaml, runs:/RUN_ID/recipe.yaml or models:/NAME@champion")
@click.option("--set", "sets", multiple=True, metavar="TRICK.PARAM=VALUE",
              help="set a trick parameter (repeatable; applied over the recipe)")
@click.option("--weights", default=None, help=_WEIGHTS_HELP)
@_skip_bad_images_option(False)
@click.option("--verbose", "-v", is_flag=True, expose_value=False, callback=_note_verbose,  # read by main()
              help="show your own model's or data code's traceback when it raises")
def train(model: str | None, data: str | None, data_dir: str | None, seed: int, device: str, data_mode: str,
          epochs: int | None, batch_size: int | None, recipe_ref: str | None, sets: Sequence[str],
          weights: str | None, skip_bad_images: bool) -> None:
    """Train once with the given tricks (all off by default) and print each epoch."""
    from autotrick.commands import run_train

    run_train(model=model, data=data, data_dir=data_dir, seed=seed, device=device, epochs=epochs,
              batch_size=batch_size, recipe_ref=recipe_ref, sets=parse_sets(sets), data_mode=data_mode,
              weights=weights, skip_bad_images=skip_bad_images)


@cli.command()
def tricks() -> None:
    """List every trick with its parameters, choices and default ranges."""
    from autotrick.commands import list_tricks

    list_tricks()


@cli.command()
def spaces() -> None:
    """List the built-in search spaces."""
    from autotrick.commands import list_spaces

    list_spaces()


@cli.command()
@click.option("--space", default=None, help="a built-in space name or a .yaml path (default: quick)")
@click.option("--model", default=None, help="default: the space's model")
@click.option("--data", default=None, help="default: the space's data set")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False))
@click.option("--trials", default=None, type=click.IntRange(min=1), help="default: the space's budget")
@click.option("--max-epochs", default=None, type=click.IntRange(min=1), help="default: the space's budget")
@click.option("--time-budget", default=None, type=click.FloatRange(min=1), help="stop after SECONDS")
@click.option("--cpus-per-trial", default=None, type=click.FloatRange(min=0.01), help="default: 1")
@click.option("--gpus-per-trial", default=None,
              help="auto (the default): 1 when Ray has GPUs, else 0; fractional: 0.25 runs 4 trials on one GPU")
@click.option("--concurrency", default=None, type=click.IntRange(min=1),
              help="trials at a time (default: as many as the resources hold)")
@click.option("--address", default=None, help="an existing Ray cluster (default: start a local Ray)")
@click.option("--wait-for-resources", default=None, type=click.FloatRange(min=0), metavar="SECONDS",
              help="on a cluster that no node of which can run a trial: stop after SECONDS (default: wait, with a "
                   "notice, for a node to join)")
@click.option("--name", default=None, help="the search's name (default: the space's name)")
@click.option("--seed", default=None, type=int, help="default: 0")
@click.option("--resume", is_flag=True,
              help="continue the interrupted search --name with the options it started with; only "
                   f"{', '.join('--' + name.replace('_', '-') for name in RESUME_MAY_CHANGE)} and -v may differ")
@click.option("--output", "-o", default=None, help="where to write the best recipe (default NAME.recipe.yaml)")
@_tracking_uri_option
@click.option("--register", default=None, metavar="NAME", help="register the best model in MLflow as NAME")
@click.option("--num-cpus", default=None, type=click.IntRange(min=1), help="CPUs of a local Ray (default: all)")
@_data_mode_option(None)
@_skip_bad_images_option(None)
@click.option("--weights", default=None, help=_WEIGHTS_HELP)
@click.option("--objectives", default=None, metavar="A,B,...",
              help="search several objectives: the first (val_accuracy or val_loss) and any of latency_ms, params, "
                   "size_mb, flops, train_seconds, int8_accuracy; prints and records the Pareto front")
@click.option("--confirm-top", default=None, type=int, metavar="K",
              help="after the search, re-train the K best distinct recipes and the baseline over seeds (default 3)")
@click.option("--confirm-seeds", default=None, type=int, metavar="S",
              help="seeds per recipe in the confirmation, paired across recipes (default 5, at least 2)")
@click.option("--no-confirm", is_flag=True, help="name the winner from one seed per trial, without confirmation")
@click.option("--warm-start", multiple=True, metavar="X",
              help="start from X (repeatable): a recipe (file, runs:/, models:/), run right after the baseline, or "
                   "an earlier search's name, whose finished trials are told to the sampler")
@click.option("--patience", default=None, type=int, metavar="N",
              help="stop when N trials in a row have not beaten the best by more than --min-gain")
@click.option("--min-gain", default=None, type=float,
              help="the gain --patience counts (default: the validation accuracy's sampling noise at the best value)")
@click.option("--ablate", is_flag=True,
              help="then ablate the winner trick by trick over the same seeds (see `autotrick ablate`)")
@click.option("--verbose", "-v", is_flag=True, callback=_note_verbose,
              help="show Ray's own tables and logs, failed trials' tracebacks, and your own code's traceback "
                   "when it raises")
def search(**options: Any) -> None:
    """Search which tricks pay off: Ray Tune runs the trials, Optuna samples them, ASHA stops poor ones."""
    from autotrick.commands import SearchRequest, run_search_command

    for key in ("warm_start", "no_confirm", "ablate"):
        options[key] = options[key] or None  # not given: a resumed search keeps its own
    sys.exit(run_search_command(SearchRequest(**options)))


@cli.command()
@click.option("--name", "search_name", default=None, help="the search whose best recipe (or model) to export")
@click.option("--run", "run_id", default=None, help="an MLflow run id (a search's parent or a trial)")
@click.option("--output", "-o", default=None, help="where to write the recipe .yaml (with --onnx: default "
              "FILE.recipe.yaml, with the deployment's measurements)")
@click.option("--onnx", "onnx", default=None, metavar="FILE.onnx",
              help="export the trained model to ONNX, verified in ONNX Runtime against PyTorch and measured")
@click.option("--int8", is_flag=True, help="with --onnx: also FILE.int8.onnx, ONNX Runtime's static INT8 "
              "quantization calibrated on training images")
@click.option("--model", "model_ref", default=None,
              help="with --onnx: the model to export: models:/NAME@alias, runs:/RUN_ID or a checkpoint .pt")
@click.option("--data", default=None, help="with --onnx: the validation (and calibration) data; default: the recipe's")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False))
@click.option("--register", default=None, metavar="NAME",
              help="with --onnx: register the ONNX models as versions of NAME (aliases champion-onnx, champion-int8)")
@_tracking_uri_option
def export(search_name: str | None, run_id: str | None, output: str | None, onnx: str | None, int8: bool,
           model_ref: str | None, data: str | None, data_dir: str | None, register: str | None,
           tracking_uri: str | None) -> None:
    """Export a search's best recipe from MLflow to a file, or (--onnx) its trained model to ONNX."""
    from autotrick.commands import export_recipe, run_onnx_export

    if onnx is not None:
        run_onnx_export(search_name=search_name, run_id=run_id, model_ref=model_ref, onnx=onnx, int8=int8,
                        output=output, data=data, data_dir=data_dir, register=register, tracking_uri=tracking_uri)
        return
    for flag, given in (("--int8", int8), ("--model", model_ref), ("--data", data), ("--data-dir", data_dir),
                        ("--register", register)):
        if given:
            raise ConfigError(f"{flag} is for a model's export: give --onnx FILE.onnx too")
    if output is None:
        raise ConfigError("export: give --output FILE.yaml for the recipe, or --onnx FILE.onnx for the model")
    export_recipe(search_name=search_name, run_id=run_id, output=output, tracking_uri=tracking_uri)


@cli.command()
@click.argument("recipe")
@click.option("--seeds", default=None, type=int, help="seeds per configuration, paired (default 5, at least 2)")
@click.option("--num-cpus", default=None, type=click.IntRange(min=1), help="CPUs of a local Ray (default: all)")
@click.option("--address", default=None, help="an existing Ray cluster (default: start a local Ray)")
@_tracking_uri_option
@click.option("--verbose", "-v", is_flag=True, help="show Ray's own tables and logs")
def ablate(recipe: str, seeds: int | None, num_cpus: int | None, address: str | None, tracking_uri: str | None,
           verbose: bool) -> None:
    """Which of a recipe's tricks did the work: each removed from it and added alone to the baseline,
    over paired seeds, and the greedy path from the baseline to the recipe; writes the minimal recipe."""
    from autotrick.commands._ablate import ablate_recipe

    ablate_recipe(recipe, seeds=seeds, tracking_uri=tracking_uri, num_cpus=num_cpus, address=address,
                  verbose=verbose)


@cli.command()
@click.argument("recipe")
@_tracking_uri_option
def show(recipe: str, tracking_uri: str | None) -> None:
    """Print a recipe (file, runs:/ or models:/) as a table, with its gain over the baseline."""
    from autotrick.commands import show_recipe

    show_recipe(recipe, tracking_uri=tracking_uri)


@cli.command()
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--name", "search_name", default=None, help="open this search's runs")
@_tracking_uri_option
def ui(port: int, search_name: str | None, tracking_uri: str | None) -> None:
    """Start the MLflow UI on 127.0.0.1 against the search store, print its address and wait."""
    from autotrick.commands import run_ui

    run_ui(port=port, search_name=search_name, tracking_uri=tracking_uri)
