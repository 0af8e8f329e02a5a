"""The nodes of a Ray cluster whose nodes share nothing but the network: what the cluster is made
of, and the trained models brought back to the driver's node. Imports Ray (with search.py, the
only modules that do): search.py runs the search, this module knows about nodes."""

from __future__ import annotations

from typing import Any

import ray


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
