"""In the driver: Ray started (or joined), the search's trials run through Tune until the study holds
them all, and Ray stopped."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune

from autotrick.cluster import native_stderr_hidden
from autotrick.device import trials_at_once
from autotrick.errors import ConfigError, first_line
from autotrick.patience import Patience
from autotrick.records import SearchResult, TrialRecord
from autotrick.search import _nodes as nodes
from autotrick.search._searcher import ASHA, Progress, TrickSearcher
from autotrick.search._trial import PRELOAD_ENV, run_one_trial
from autotrick.search_options import SearchOptions
from autotrick.shipping import cluster_runtime_env, files_to_ship
from autotrick.state import JOURNAL_FILE
from autotrick.study import (
    open_journal,
    records_from_study,
)

# No per-trial result files are kept, so the ResultGrid that fit() builds cannot read metrics back
# and would warn about every trial; autotrick reads the outcome from the Optuna study instead.
logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)

_CONNECT_ENV = {"RAY_gcs_server_port_wait_time_s": "1"}



def start_ray(options: SearchOptions) -> bool:
    """Start a local Ray, or connect to a cluster; returns whether we started it (to stop it)."""
    if ray.is_initialized():
        return False
    # A streamed data set is read by each trial's loader workers, never loaded whole.
    preload = "" if options.train.data_mode == "stream" else \
        f"{options.train.data}|{options.train.data_dir or ''}|{int(options.train.skip_bad_images)}"
    if options.address and files_to_ship(options.train):
        preload = ""  # a file shipped to the nodes is found by each trial
    runtime_env = {"worker_process_setup_hook": "autotrick.search.warm_worker", "env_vars": {PRELOAD_ENV: preload},
                   **(cluster_runtime_env(options.train) if options.address else {})}
    if options.address:
        for key, value in _CONNECT_ENV.items():
            os.environ.setdefault(key, value)
    main_thread = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
    quiet = native_stderr_hidden() if options.address and not options.verbose else contextlib.nullcontext()
    try:
        with quiet:
            # "local": our own Ray, whatever `ray start` left here (a dead one's address file hangs None)
            ray.init(address=options.address or "local", num_cpus=None if options.address else options.num_cpus,
                     include_dashboard=False, log_to_driver=options.verbose,
                     logging_level=logging.INFO if options.verbose else logging.ERROR,
                     runtime_env=runtime_env)
    except ConnectionError as error:
        if not options.address:
            raise
        auth = ("" if os.environ.get("RAY_AUTH_MODE") == "token" else
                "; a cluster with token authentication needs its token in RAY_AUTH_TOKEN or ~/.ray/auth_token")
        raise ConfigError(f"--address {options.address}: no Ray cluster answered there ({first_line(error)}); "
                          f"check it with `ray status` on the head{auth}, or drop --address to start a local Ray"
                          ) from None
    finally:
        if sigterm is not None:  # ray.init makes SIGTERM a bare sys.exit: keep the caller's handler
            signal.signal(signal.SIGTERM, sigterm)
    return True


def concurrency(options: SearchOptions) -> int:
    if options.concurrency:
        return options.concurrency
    resources = ray.cluster_resources()
    return trials_at_once(resources.get("CPU", 1), resources.get("GPU", 0), cpus_per_trial=options.cpus_per_trial,
                          gpus_per_trial=options.gpus_per_trial)


def run_search(options: SearchOptions, on_record: Callable[[TrialRecord], None],
               before_shutdown: Callable[[SearchResult], None] | None = None,
               on_started: Callable[[SearchOptions], None] | None = None) -> SearchResult:
    """Run (or resume) the search until the study holds `trials` finished trials.

    `on_started` gets the options once Ray is up and the trials' GPUs and device are settled
    (`auto` on a cluster is settled here), before any trial runs: the caller records what
    settled. `before_shutdown` gets the result while Ray is still up, so that the caller's last
    work (MLflow plots, the registry) overlaps Ray's shutdown instead of following it."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    budget = options.space.budget
    we_started_ray = start_ray(options)
    timings["ray_start_s"] = time.perf_counter() - started
    try:
        options = settle_gpus(options)
        check_gpus(options)
        nodes.wait_for_a_node(options.cpus_per_trial, options.gpus_per_trial or 0.0,
                              wait_s=options.wait_for_resources_s, local=not options.address)
        if options.address:
            nodes.check_data_on_nodes(options.train.data, options.train.data_dir, {PRELOAD_ENV: ""})
        if on_started is not None:
            on_started(options)
        options.state_dir.mkdir(parents=True, exist_ok=True)
        storage = open_journal(options.state_dir)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        scheduler = ASHA(time_attr="training_iteration", max_t=budget.max_epochs,
                          grace_period=budget.grace_epochs, reduction_factor=4)
        searcher = TrickSearcher(options.space, study_name=options.name, storage=storage,
                                  seed=options.train.seed, scheduler=scheduler, objectives=options.objectives,
                                  warm_start=options.warm_start)
        remaining = budget.trials - len(records_from_study(searcher.study))
        patience = _patience(options, records_from_study(searcher.study))
        if remaining > 0 and not (patience and patience.stopped):
            fit_started = time.perf_counter()
            at_once = _fit(options, searcher, scheduler, remaining, on_record, timings, patience)
            timings["trials_s"] = time.perf_counter() - fit_started
            timings["trials_at_once"] = at_once
        records = records_from_study(searcher.study)
        timings.update(_trial_time(records, concurrency(options), timings.get("trials_s", 0.0)))
        stopped = patience.reason() if patience and patience.stopped else ""
        result = SearchResult(info=options.info(), records=records, study=searcher.study, timings=timings,
                              interrupted=len(records) < budget.trials and not stopped, stop_reason=stopped)
        if before_shutdown is not None:
            before_shutdown(result)
    finally:
        if we_started_ray:
            shutdown_started = time.perf_counter()
            # Tune leaves ObjectRefs in reference cycles: freed by a garbage collection after the
            # shutdown (in whichever thread triggers it), they call into the stopped core worker,
            # which ends the process. Collect them while Ray is up.
            gc.collect()
            ray.shutdown()
            timings["ray_shutdown_s"] = time.perf_counter() - shutdown_started
    timings["total_s"] = time.perf_counter() - started
    return result


def _trial_time(records: list[TrialRecord], slots: int, wall: float) -> dict[str, float]:
    """Where the trial phase went: set-up in the trials (data, model, tricks), their epochs, and
    the share of the slots' time spent training (1.0: every slot trained all the time)."""
    setup = sum(r.history[0].get("setup_seconds", 0.0) for r in records if r.history)
    epochs = sum(row.get("seconds", 0.0) for r in records for row in r.history)
    busy = {"trial_setup_s": setup, "epochs_s": epochs}
    if wall > 0:
        busy["slot_busy_ratio"] = epochs / (wall * slots)
    return busy


def settle_gpus(options: SearchOptions) -> SearchOptions:
    """auto on a cluster: one GPU per trial when it has a GPU, none otherwise (the device
    follows, in SearchOptions.with_gpus); options settled before are left as they are."""
    if options.settled:
        return options
    return options.with_gpus(1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0)


def check_gpus(options: SearchOptions) -> None:
    """Ray would keep a trial that asks for a GPU the cluster lacks pending forever."""
    if options.gpus_per_trial:
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus < options.gpus_per_trial:
            raise ConfigError(f"--gpus-per-trial {options.gpus_per_trial:g}: the Ray cluster has {gpus:g} GPUs")


class _PatienceStopper(tune.Stopper):
    """Tune's side of --patience (autotrick.patience): stop the whole search once it says so."""

    def __init__(self, patience: Patience) -> None:
        self.patience = patience

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.patience.stopped


def _fit(options: SearchOptions, searcher: TrickSearcher, scheduler: ASHA, trials: int,
         on_record: Callable[[TrialRecord], None], timings: dict[str, float], patience: Patience | None = None) -> int:
    """Run the trials; returns the most that ran at once (what the cluster's models cost: `timings`)."""
    tune_output(options.verbose)
    gpus = options.gpus_per_trial or 0.0
    train = replace(options.train, epochs=options.space.budget.max_epochs, threads=options.threads_per_trial)
    progress = Progress(searcher, on_record if patience is None else partial(_both, patience.record, on_record))
    cluster = cluster_parameters(options, save_models=options.save_models)
    trainable = tune.with_parameters(run_one_trial, train=train, metric=options.space.budget.metric,
                                     state_dir=str(options.state_dir.resolve()) if options.save_models else None,
                                     size=options.data_size, objectives=options.objectives, **cluster)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": options.cpus_per_trial, "gpu": gpus}),
        tune_config=tune.TuneConfig(
            metric=options.space.budget.metric, mode=options.space.budget.mode, search_alg=searcher,
            scheduler=scheduler, num_samples=trials, max_concurrent_trials=concurrency(options),
            reuse_actors=True, time_budget_s=options.time_budget_s),
        run_config=tune.RunConfig(
            name=f"session-{int(time.time())}", storage_path=str((options.state_dir / "ray").resolve()),
            verbose=2 if options.verbose else 0, log_to_file=False,
            stop=_PatienceStopper(patience) if patience else None,
            callbacks=[progress],
            failure_config=tune.FailureConfig(max_failures=0)),
    )
    fit_keeping_sigint(tuner, options.state_dir)
    if (error := searcher.write_error) is not None:  # Optuna's own error names no file
        raise OSError(error.errno, error.strerror, str(options.state_dir / JOURNAL_FILE)) from error
    timings.update(nodes.models_sent(cluster))
    return progress.most_at_once


def cluster_parameters(options: SearchOptions, *, save_models: bool) -> dict[str, Any]:
    """What the trainable needs on a cluster (nodes.trial_parameters); a local Ray's trials share
    the driver's disk."""
    if not options.address:
        return {}
    return nodes.trial_parameters(options.train, save_models=save_models, env_vars={PRELOAD_ENV: ""})


def _patience(options: SearchOptions, earlier: list[TrialRecord]) -> Patience | None:
    if not options.patience:
        return None
    return Patience.after(earlier, patience=options.patience, min_gain=options.min_gain,
                          mode=options.space.budget.mode, val_count=options.data_size.val_count)


def _both(first: Callable[[TrialRecord], None], second: Callable[[TrialRecord], None], record: TrialRecord) -> None:
    first(record)
    second(record)


def tune_output(verbose: bool) -> None:
    # Ray's own progress tables only with --verbose: its legacy reporter at verbose=0 prints nothing.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if verbose else "0"
    # A failed trial is one line of ours (its error goes to its MLflow run): Ray's tracebacks of it,
    # and its closing "Trials did not complete" list, only with --verbose.
    os.environ["TUNE_PRINT_ALL_TRIAL_ERRORS"] = "1" if verbose else "0"
    # Neither, nor a failure to save Ray's experiment state (a full disk), which autotrick does not
    # resume from (its Optuna journal is what it resumes).
    for name in ("ray.tune.tune", "ray.tune.execution.experiment_state"):
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.CRITICAL)


def fit_keeping_sigint(tuner: tune.Tuner, state_dir: Path) -> None:
    main_thread = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if main_thread else None
    try:
        tuner.fit()  # SIGINT (and SIGTERM, SIGHUP: autotrick.signals) stops it gracefully
    except OSError as error:  # Tune's own state, written under the search's folder, names no file
        if error.filename is not None:
            raise
        raise OSError(error.errno, error.strerror, str(state_dir)) from error
    finally:
        if sigint is not None:  # Tune leaves its SIGINT handler installed after a fit nobody interrupted
            signal.signal(signal.SIGINT, sigint)
