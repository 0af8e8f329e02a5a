"""The nodes of a Ray cluster whose nodes share nothing but the network: what the cluster has, a
wait for a node that can run a trial, the data checked on each node, the trained models brought
back to the driver's node, and the node of a trial whose worker was lost."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from autotrick.data.size import DataSize
from autotrick.errors import ConfigError
from autotrick.params import Value
from autotrick.shipping import files_to_ship
from autotrick.trainer import TrainConfig


def alive_nodes() -> list[dict[str, Any]]:
    return [node for node in ray.nodes() if node.get("Alive")]


def describe_cluster() -> str:
    """The cluster joined, in words: its nodes and what they have for trials."""
    nodes = alive_nodes()
    total: dict[str, float] = {}
    for node in nodes:
        for key in ("CPU", "GPU"):
            total[key] = total.get(key, 0.0) + float(node.get("Resources", {}).get(key, 0.0))
    gib = sum(float(node.get("Resources", {}).get("memory", 0.0)) for node in nodes) / 2**30
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    return (f"{len(nodes)} node{'s' * (len(nodes) != 1)}, {cpus:g} CPU{'s' * (cpus != 1)}, "
            f"{gpus:g} GPU{'s' * (gpus != 1)}, {gib:.0f} GiB for tasks")


@ray.remote(num_cpus=0)
class _ModelSink:
    """Lives on the driver's node and writes there the models that trials on any node send it
    (through Ray's object store): the driver registers and exports them from its own disk. Ray
    Tune's own checkpoints would need a storage_path that every node shares (NFS, S3)."""

    def __init__(self) -> None:
        self.sent, self.seconds = 0, 0.0  # what sending models cost the trials, for the time: line

    def took(self, seconds: float) -> None:
        self.sent, self.seconds = self.sent + 1, self.seconds + seconds

    def totals(self) -> tuple[int, float]:
        return self.sent, self.seconds

    def write(self, path: str, data: bytes) -> None:
        from autotrick.atomic import write_bytes_atomically

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomically(path, data)


def model_sink(env_vars: dict[str, str]) -> Any:
    """A sink for trained models on this (the driver's) node, whatever CPUs it has for trials;
    `env_vars` for its worker process (the data preload left out)."""
    here = ray.get_runtime_context().get_node_id()
    return _ModelSink.options(  # type: ignore[attr-defined]
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
        runtime_env={"env_vars": env_vars}).remote()


def trial_parameters(train: TrainConfig, *, save_models: bool, env_vars: dict[str, str]) -> dict[str, Any]:
    """The trainable's parameters on a cluster, only those with something to give: the sink of the
    trained models (`save_models`), and the driver's files that the trials open, which go once per
    search in the object store (the trainable's parameters are put there once)."""
    extra: dict[str, Any] = {"models": model_sink(env_vars)} if save_models else {}
    if files := files_to_ship(train):
        extra["files"] = files
    return extra


def save_model(path: Path, train: TrainConfig, size: DataSize, values: dict[str, Value], models: Any,
                model: Any) -> None:
    """In a trial: the trained model as an autotrick checkpoint (checkpoint.load_checkpoint rebuilds
    it); with a sink (`models`, on a cluster), written on the driver's disk at the same path."""
    from autotrick.checkpoint import save_checkpoint

    write = partial(save_checkpoint, model=model, spec=train.model, tricks=values, num_classes=size.num_classes,
                    input_shape=(size.in_channels, *size.image_size))
    if models is not None:
        return send_model(models, str(path), write)
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path)


def send_model(sink: Any, path: str, write: Callable[[Path], object]) -> None:
    """From a trial on any node: `write` writes the model to a file here, which is on the driver's
    disk at `path` when this returns."""
    with tempfile.TemporaryDirectory(prefix="autotrick-model-") as folder:
        local = Path(folder) / Path(path).name
        write(local)
        started = time.perf_counter()
        ray.get(sink.write.remote(path, local.read_bytes()))
        sink.took.remote(time.perf_counter() - started)


def models_sent(parameters: dict[str, Any]) -> dict[str, float]:
    """The search's `time:` line entries for the models sent to the driver's node (trial_parameters)."""
    if "models" not in parameters:
        return {}
    sent, seconds = ray.get(parameters["models"].totals.remote(), timeout=60)
    return {"models_sent": float(sent), "model_transfer_s": seconds}


@ray.remote(num_cpus=0)
def _lacking(paths: list[str]) -> list[str]:
    return [path for path in paths if not os.path.exists(path)]


def nodes_lacking(paths: list[str], env_vars: dict[str, str], timeout_s: float = 120) -> list[tuple[str, str]]:
    """(node, path) for each path that a live node does not have, found by a tiny task on each
    node, before any trial starts there."""
    nodes = alive_nodes()
    checks = [_lacking.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
        runtime_env={"env_vars": env_vars}).remote(paths) for node in nodes]
    lacking = ray.get(checks, timeout=timeout_s)
    return [(node_name(node), path) for node, missing in zip(nodes, lacking, strict=True) for path in missing]


def check_data_on_nodes(data: str, data_dir: str | None, env_vars: dict[str, str]) -> None:
    """The data's folders are read where the trials run: on a cluster each node must have them."""
    paths = [p for p in (data.removeprefix("imagefolder:") if data.startswith("imagefolder:") else None, data_dir)
             if p]
    lacking = nodes_lacking(paths, env_vars) if paths else []
    if lacking:
        node, path = lacking[0]
        others = f" (and {len(lacking) - 1} more)" if len(lacking) > 1 else ""
        raise ConfigError(f"{path}: not on the Ray node {node}{others}, where trials run; put the data at the "
                          "same path on every node (a copy, or a shared mount), then search again")


def node_name(node: dict[str, Any]) -> str:
    """A node as a user finds it: its address, and its id's start (two nodes may share an address)."""
    return f"{node.get('NodeManagerAddress', '?')} ({str(node.get('NodeID', ''))[:8]})"


def _fits(node: dict[str, Any], cpus: float, gpus: float) -> bool:
    resources = node.get("Resources", {})
    return float(resources.get("CPU", 0.0)) >= cpus and float(resources.get("GPU", 0.0)) >= gpus


def say(line: str) -> None:
    print(f"autotrick: {line}", file=sys.stderr, flush=True)


def wait_for_a_node(cpus: float, gpus: float, *, wait_s: float | None, local: bool) -> None:
    """Ray keeps a trial that no node can hold pending, without a word: say what a trial waits for
    and what the cluster has, then wait for a node that fits (an autoscaler, or a user's
    `ray start`, may add one) or stop after `wait_s` seconds (None: wait until interrupted). A
    `local` Ray gets no new node: it stops at once."""
    wait_s = 0.0 if local else wait_s
    deadline = None if wait_s is None else time.monotonic() + wait_s
    need = f"{cpus:g} CPU{'s' * (cpus != 1)}" + (f" and {gpus:g} GPU{'s' * (gpus != 1)}" if gpus else "")
    said = False
    while not any(_fits(node, cpus, gpus) for node in alive_nodes()):
        if deadline is not None and time.monotonic() >= deadline:
            waited = f" after waiting {wait_s:g} s" if wait_s else ""
            more = "give the local Ray more (--num-cpus)" if local else "add a node with `ray start --address=...`"
            raise ConfigError(f"no Ray node can run a trial{waited}: each asks {need}, and the cluster has "
                              f"{describe_cluster()}; {more}, or ask less with --cpus-per-trial / --gpus-per-trial")
        if not said:
            until = (f"stopping after {wait_s:g} s" if wait_s is not None else
                     "until a node joins (Ctrl-C stops; --wait-for-resources SECONDS stops by itself)")
            say(f"waiting for a Ray node that can run a trial ({need}): the cluster has {describe_cluster()}; {until}")
            said = True
        time.sleep(1.0)
    if said:
        say(f"a node that can run a trial has joined: the cluster has {describe_cluster()}")


def alive_node_ids() -> set[str]:
    return {str(node["NodeID"]) for node in alive_nodes()}


def where_it_ran(address: str | None, nodes_at_start: set[str], *, wait_s: float) -> str:
    """Words for the reason of a trial whose worker died: the node it ran on (`address`, once the
    trial has reported; None before), and whether a node of the search's start left the cluster (a
    lost machine, its raylet killed). Ray's health checks notice a lost node after some seconds:
    it is asked again for up to `wait_s` seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        lost = [node for node in ray.nodes() if str(node["NodeID"]) in nodes_at_start and not node.get("Alive")
                and address in (None, node.get("NodeManagerAddress"))]
        if lost:
            name = node_name(lost[-1])
            return f" on the Ray node {name}, which left the cluster" if address else \
                f" as the Ray node {name} left the cluster"
        if time.monotonic() >= deadline:
            return f" on the Ray node {address}" if address else ""
        time.sleep(1.0)


def with_node(reason: str, address: str | None, nodes_at_start: set[str]) -> str:
    """A dead worker's reason with its node: a lost node cuts the actor off ("unavailable"), which
    Ray's health checks confirm after some seconds; a worker that crashed "died" on a live node."""
    where = where_it_ran(address, nodes_at_start, wait_s=20.0 if "unavailable" in reason else 0.0)
    return reason.replace("its worker failed", f"its worker failed{where}", 1)[:500]
