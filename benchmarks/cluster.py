"""`python benchmarks/cluster.py [--runs 2] [--register] --out benchmarks/cluster-latest.json`: the default
search (`quick.yaml`: 20 trials on digits) on one machine's own Ray (`--num-cpus 2`) beside the same
search on a two-node cluster whose nodes share no disk: a head that runs the driver with no CPU for
trials, and a worker node with 2 CPUs that sees an empty folder where the driver keeps the search
(a private mount namespace with a tmpfs: run as root). Both on this machine, so the ratio is what the
cluster's machinery costs (connection, the user's files and models through the object store), not
the network. The runs alternate (one-node, cluster, one-node, ...); each is a fresh process in a
fresh folder; the cluster is started once, before the first run, as a user's would be."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_cluster(folder: Path, temp_dir: str) -> str:
    port = free_port()
    address = f"127.0.0.1:{port}"
    subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", f"--temp-dir={temp_dir}",
                    "--num-cpus=0", "--include-dashboard=false", "--disable-usage-stats"], check=True,
                   capture_output=True)
    worker = (f'mount -t tmpfs tmpfs "$0" && cd / && exec {RAY} start --address={address} '
              f"--node-ip-address=127.0.0.1 --temp-dir={temp_dir} --num-cpus=2 --disable-usage-stats")
    subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", worker, str(folder)], check=True,
                   capture_output=True)
    return address


def stop_cluster(temp_dir: str) -> None:
    """This cluster's processes only (never `ray stop`: other Rays may run on the machine)."""
    import psutil

    ours = [p for p in psutil.process_iter(["cmdline"]) if any(temp_dir in a for a in p.info["cmdline"] or ())]
    for process in ours:
        process.terminate()
    for process in psutil.wait_procs(ours, timeout=10)[1]:
        process.kill()


def search(folder: Path, name: str, extra: list[str]) -> dict[str, object]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "autotrick", "search", "--name", name, *extra], cwd=folder,
                          capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    best = re.search(r"best val_accuracy ([0-9.]+)", done.stdout)
    timing = next((line for line in done.stdout.splitlines() if line.startswith("time:")), "")
    return {"wall_s": round(wall, 2), "best": float(best.group(1)) if best else None, "time_line": timing}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--register", action="store_true", help="also --register the best (its model comes back)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="autotrick-bench-cluster-"))
    cluster_folder = root / "cluster"
    cluster_folder.mkdir()
    temp_dir = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
    load = os.getloadavg()[0]
    extra = ["--register", "bench-model"] if args.register else []
    one_node, cluster = [], []
    try:
        address = start_cluster(cluster_folder, temp_dir)
        for run in range(args.runs):
            local = root / f"local-{run}"
            local.mkdir()
            one_node.append(search(local, "local", ["--num-cpus", "2", *extra]))
            cluster.append(search(cluster_folder, f"cluster-{run}", ["--address", address, *extra]))
    finally:
        stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    local_wall = statistics.median(float(r["wall_s"]) for r in one_node)  # type: ignore[arg-type]
    cluster_wall = statistics.median(float(r["wall_s"]) for r in cluster)  # type: ignore[arg-type]
    result = {"machine": f"{platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}",
              "load_at_start": round(load, 2), "register": args.register,
              "one_node": one_node, "two_nodes": cluster, "one_node_median_s": local_wall,
              "two_nodes_median_s": cluster_wall, "ratio": round(cluster_wall / local_wall, 3)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
