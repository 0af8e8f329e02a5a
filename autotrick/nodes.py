"""The nodes of a Ray cluster whose nodes share nothing but the network: what the cluster is made
of, and the trained models brought back to the driver's node. Imports Ray (with search.py, the
only modules that do): search.py runs the search, this module knows about nodes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


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
    return (f"{len(nodes)} node{'s' * (len(nodes) != 1)}, {total['CPU'] if nodes else 0:g} CPUs, "
            f"{total['GPU'] if nodes else 0:g} GPUs, {gib:.0f} GiB for tasks")


@ray.remote(num_cpus=0)
class _ModelSink:
    """Lives on the driver's node and writes there the models that trials on any node send it
    (through Ray's object store): the driver registers and exports them from its own disk. Ray
    Tune's own checkpoints would need a storage_path that every node shares (NFS, S3)."""

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


def send_model(sink: Any, path: str, data: bytes) -> None:
    """From a trial on any node: the model is on the driver's disk when this returns."""
    ray.get(sink.write.remote(path, data))


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


def node_name(node: dict[str, Any]) -> str:
    """A node as a user finds it: its address, and its id's start (two nodes may share an address)."""
    return f"{node.get('NodeManagerAddress', '?')} ({str(node.get('NodeID', ''))[:8]})"
