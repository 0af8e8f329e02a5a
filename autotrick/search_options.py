"""A search's configuration, resolved once: what `autotrick search` was asked (commands/_search.py's
SearchRequest), settled by `prepare_search` into one typed object with the data's measured size
and the trials' device. The search (autotrick.search), MLflow (through `info()`) and the recipe read it;
nothing decides the device again.

The trials' device follows their GPU share, one way (`trial_device`). It is settled when the
share is: in `prepare_search` for a local Ray or a number given with --address; for `auto` on a
cluster, once connected, when the search knows the cluster's GPUs (`with_gpus`). MLflow's parent
run opens while Ray starts; an unsettled device goes on it once settled (SearchTracker's
search_settled), so the run records the device the trials really use.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from autotrick.data.size import DataSize
from autotrick.records import SearchInfo
from autotrick.space import SearchSpace
from autotrick.trainer import TrainConfig
from autotrick.warmstart import NO_WARM_START, WarmStart


def trial_device(gpus_per_trial: float) -> str:
    """Where a trial trains: CUDA when it holds a GPU share, else the CPU."""
    return "cuda" if gpus_per_trial > 0 else "cpu"


@dataclass(frozen=True)
class SearchOptions:
    name: str
    space: SearchSpace
    train: TrainConfig                 # model, data, epochs (= max epochs), batch size, seed, the trials' device
    state_dir: Path                    # .autotrick/<name>: the Optuna journal, Ray's files, saved models
    data_size: DataSize                # the data set as measured once, in prepare_search
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = 0.0  # None: auto on a cluster, settled by with_gpus once connected
    requested_gpus: float | str | None = None  # --gpus-per-trial as given (the header says "auto")
    concurrency: int | None = None     # default: as many trials as the resources hold
    address: str | None = None         # an existing Ray cluster; None starts a local one
    num_cpus: int | None = None        # for a local Ray; None: every core
    time_budget_s: float | None = None
    wait_for_resources_s: float | None = None  # on a cluster that cannot run a trial: None waits for a node
    resume: bool = False
    verbose: bool = False
    save_models: bool = False          # keep each trial's weights so the best can be registered
    data_plan: str = ""                # how the data reaches the trials, as the header says it
    output: Path = Path("search.recipe.yaml")  # where the recipe goes
    tracking_uri: str = ""             # the MLflow store, resolved
    register: str | None = None        # --register: the registered model's name
    weights: str | None = None         # --weights as given: what the model starts from
    objectives: tuple[str, ...] = ()   # several: a multi-objective study, ASHA on the first (budget.metric)
    warm_start: WarmStart = NO_WARM_START  # recipes tried after the baseline, earlier searches told to the study
    patience: int | None = None        # stop after this many ended trials without a gain > min_gain
    min_gain: float | None = None      # None: the validation accuracy's sampling noise (autotrick.patience)
    confirm: bool = True               # re-train the best recipes and the baseline over paired seeds (confirm.py)
    confirm_top: int = 3               # the distinct recipes confirmed
    confirm_seeds: int = 5             # seeds per recipe, paired across recipes
    ablate: bool = False               # then ablate the confirmed winner trick by trick (ablate.py)
    stored_request: dict[str, Any] = field(default_factory=dict)  # request.json: every option's effective value
    skipped_images: tuple[str, ...] = ()  # the files --skip-bad-images leaves out (train.skip_bad_images)

    @property
    def threads_per_trial(self) -> int:
        """torch's CPU threads in each trial: its whole CPUs."""
        return max(1, int(self.cpus_per_trial))

    @property
    def settled(self) -> bool:
        return self.gpus_per_trial is not None

    def with_gpus(self, gpus_per_trial: float) -> SearchOptions:
        """These options with the trials' GPU share settled, and the device that follows."""
        return replace(self, gpus_per_trial=gpus_per_trial,
                       train=replace(self.train, device=trial_device(gpus_per_trial)))

    def info(self) -> SearchInfo:
        """The search as MLflow's parent run and the recipe's provenance describe it."""
        budget = self.space.budget
        return SearchInfo(name=self.name, space=self.space.label, model=self.train.model, data=self.train.data,
                          metric=budget.metric, mode=budget.mode, trials=budget.trials,
                          max_epochs=budget.max_epochs, batch_size=self.space.batch_size, seed=self.train.seed,
                          device=self.train.device, threads=self.threads_per_trial,
                          grace_epochs=budget.grace_epochs, versions=versions(), weights=self.weights,
                          objectives=self.objectives,
                          skipped_images=len(self.skipped_images) if self.train.skip_bad_images else None)


def versions() -> dict[str, str]:
    """The installed versions of autotrick and the libraries a search's numbers depend on."""
    return dict(_installed())


@functools.cache
def _installed() -> tuple[tuple[str, str], ...]:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for package in ("autotrick", "torch", "ray", "optuna", "mlflow"):
        try:
            found.append((package, version(package)))
        except PackageNotFoundError:
            continue
    return tuple(found)
