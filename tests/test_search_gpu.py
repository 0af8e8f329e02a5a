"""GPUs in a search: fractional GPUs let trials share one, `auto` gives each trial a GPU when Ray
has one, and a trial holding a GPU share trains on CUDA. On a machine without a GPU, a Ray head of
its own with a logical GPU (Ray schedules by it) and trials that train on the CPU (the command
run through tests/cpu_trials.py) show the scheduling; the CUDA test runs where there is a GPU."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import ray_head

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def logical_gpu_ray() -> Iterator[str]:
    with ray_head(num_cpus=2, num_gpus=1) as address:
        yield address


CPU_TRIALS = str(Path(__file__).resolve().parent / "cpu_trials.py")


def search(tmp_path: Path, *args: str, trials_on_the_cpu: bool = False) -> str:
    autotrick = [sys.executable, CPU_TRIALS] if trials_on_the_cpu else [sys.executable, "-m", "autotrick"]
    command = [*autotrick, "search", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", *args]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=400,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def most_at_once(out: str) -> float:
    match = re.search(r"trials_at_once ([\d.]+)", out)
    assert match, out
    return float(match.group(1))


def test_a_quarter_gpu_per_trial_runs_four_trials_at_once(logical_gpu_ray: str, tmp_path: Path) -> None:
    out = search(tmp_path, "--address", logical_gpu_ray, "--name", "quarter", "--trials", "4", "--max-epochs", "2",
                 "--gpus-per-trial", "0.25", "--cpus-per-trial", "0.5", trials_on_the_cpu=True)
    assert "0.25 GPU per trial (4 trials per GPU)" in out.splitlines()[0]
    assert out.count("\ntrial ") == 4
    assert most_at_once(out) == 4  # the callback's count of trials started and not yet ended


def test_auto_gives_each_trial_the_clusters_gpu(logical_gpu_ray: str, tmp_path: Path) -> None:
    """auto on a cluster with one GPU: one GPU per trial, so one trial at a time (its 2 CPUs would
    hold 2 CPU-only trials)."""
    out = search(tmp_path, "--address", logical_gpu_ray, "--name", "auto", "--trials", "2", "--max-epochs", "1",
                 trials_on_the_cpu=True)
    assert "1 GPU per trial if the cluster has GPUs, else the CPU (auto)" in out.splitlines()[0]
    assert most_at_once(out) == 1
    # MLflow's parent run opens once the cluster's GPUs settled the device: the one the trials used
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("auto")
    assert experiment is not None
    parent = next(run for run in client.search_runs([experiment.experiment_id])
                  if run.data.tags.get("autotrick.role") == "parent")
    assert parent.data.params["device"] == "cpu"  # not "auto"; cpu: tests/cpu_trials.py


DEVICE_SPY = """
import torch.nn as nn
from pathlib import Path


class Spy(nn.Module):
    def forward(self, x):
        Path({out!r}).write_text(x.device.type)  # where the trial's batches really are
        return x


def build(num_classes, in_channels):
    return nn.Sequential(Spy(), nn.Flatten(), nn.LazyLinear(num_classes))
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_trial_holding_a_gpu_share_trains_on_cuda(tmp_path: Path) -> None:
    (tmp_path / "spy.py").write_text(DEVICE_SPY.format(out=str(tmp_path / "device.txt")))
    out = search(tmp_path, "--model", f"{tmp_path / 'spy.py'}:build", "--name", "share", "--trials", "2",
                 "--max-epochs", "1", "--gpus-per-trial", "0.5", "--num-cpus", "2")
    assert "0.5 GPU per trial" in out.splitlines()[0]
    assert (tmp_path / "device.txt").read_text() == "cuda"
    out = search(tmp_path, "--name", "auto", "--trials", "1", "--max-epochs", "1", "--num-cpus", "2")
    assert "1 GPU per trial (auto: a GPU is here)" in out.splitlines()[0]


def test_trials_at_once_count_the_gpus_when_trials_take_them() -> None:
    """What the data's memory budget is split by, and what Ray runs side by side: on a 16-core
    machine with one GPU and a GPU per trial, one trial at a time, not 16."""
    from autotrick.device import trials_at_once

    assert trials_at_once(16, 1, cpus_per_trial=1, gpus_per_trial=1) == 1
    assert trials_at_once(16, 1, cpus_per_trial=1, gpus_per_trial=0.25) == 4
    assert trials_at_once(16, 0, cpus_per_trial=2, gpus_per_trial=None) == 8
    assert trials_at_once(1, 0, cpus_per_trial=4, gpus_per_trial=0) == 1
