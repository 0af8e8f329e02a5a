"""CPU benchmark: autotrick against the hand-wired peer glue, side by side, in one run.

    python benchmarks/cpu.py [--peer ../shared/bench/peer_glue_cpu.py] [--skip-peer] [--out results.json]

Measures, each as a fresh process (start-up included, as a user sees it):
1. `autotrick train` on digits with the default cnn, 15 epochs: training seconds, process wall,
   final validation accuracy (target: training <= 3 s on 2 cores, accuracy >= 0.97);
2. `autotrick search --no-confirm` (quick.yaml: 20 trials on digits; what the peer does, so the
   ratio compares like with like): wall seconds, best accuracy, the time breakdown autotrick
   prints, and MLflow logging time (target: <= 30 s wall, best >= 0.98, logging < 5% of wall);
   then the default search once, with its confirmation over seeds (what it adds: `confirm_s`);
3. the peer script (one bare trial, then its 20-trial Ray Tune + Optuna + MLflow search).
The search runs `--repeat` times (default 3), each in a fresh folder; the median is reported with all walls.
Prints one JSON object; ratios are what to quote, the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(command: list[str], cwd: Path) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return wall, done.stdout


def number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    if not match:
        raise SystemExit(f"no match for {pattern!r} in:\n{text}")
    return float(match.group(1))


def bench_train(workdir: Path) -> dict[str, float]:
    wall, out = timed([sys.executable, "-m", "autotrick", "train", "--epochs", "15"], workdir)
    python_start, _ = timed([sys.executable, "-c", "import autotrick.trainer"], workdir)
    return {"train_wall_s": round(wall, 2), "train_training_s": number(r"training ([\d.]+)s", out),
            "train_setup_and_training_s": number(r"with setup ([\d.]+)s", out),
            "import_s": round(python_start, 2), "train_val_accuracy": number(r"val_accuracy ([\d.]+)", out)}


def bench_search(workdir: Path, *options: str) -> dict[str, float]:
    workdir.mkdir()  # a fresh folder: a fresh MLflow store and Optuna journal, as on a first run
    wall, out = timed([sys.executable, "-m", "autotrick", "search", *options], workdir)
    result = {"search_wall_s": round(wall, 2), "search_best": number(r"best val_accuracy ([\d.]+)", out),
              "search_baseline": number(r"vs baseline ([\d.]+)", out),
              "search_trials": number(r"^(\d+) trials", _line(out, " trials (")),
              "search_stopped_early": number(r"(\d+) stopped early", out)}
    for key, value in re.findall(r"(\w+) ([\d.]+)s", _line(out, "time:")):
        result[f"search_{key}_s"] = float(value)
    result["logging_wait_share_of_wall"] = round(result.get("search_logging_wait_s", 0.0) / wall, 4)
    result["logging_cpu_share_of_wall"] = round(result.get("search_logging_cpu_s", 0.0) / wall, 4)
    return result


def _line(text: str, marker: str) -> str:
    return next((line for line in text.splitlines() if marker in line), "")


def bench_peer(script: Path, workdir: Path) -> dict[str, float]:
    wall, out = timed([sys.executable, str(script)], workdir)
    peer: dict[str, float] = {"peer_process_wall_s": round(wall, 2)}
    for line in out.splitlines():
        if line.startswith("{"):
            peer.update({f"peer_{k}": v for k, v in json.loads(line).items()})
    return peer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peer", type=Path, default=ROOT.parent / "shared" / "bench" / "peer_glue_cpu.py")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="autotrick searches; the median one is reported")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results: dict[str, object] = {"machine": f"{platform.node()} {os.cpu_count()} cores {platform.machine()}",
                                  "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M")}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        results.update(bench_train(workdir))
        searches = sorted((bench_search(workdir / f"search-{i}", "--no-confirm") for i in range(args.repeat)),
                          key=lambda run: run["search_wall_s"])
        results["search_walls_s"] = [run["search_wall_s"] for run in searches]  # type: ignore[assignment]
        results.update(searches[len(searches) // 2])
        confirmed = bench_search(workdir / "confirmed")
        results.update({"confirmed_search_wall_s": confirmed["search_wall_s"],
                        "confirmed_search_confirm_s": confirmed.get("search_confirm_s", 0.0)})
        if not args.skip_peer:
            results.update(bench_peer(args.peer, workdir))
            results["search_speedup_vs_peer"] = round(results["peer_search_wall_s"] / results["search_wall_s"], 2)  # type: ignore[operator]
            results["train_speedup_vs_peer_bare_trial"] = round(
                results["peer_bare_trial_s"] / results["train_training_s"], 2)  # type: ignore[operator]
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
