"""Can a search's winner be trusted? (issue 18). A script, not a timed test; prints one JSON object.

(a) false winners: N searches, each with its own --seed, over a null space (dropout.p and
    smoothing.eps in [0, 1e-6]: nothing searched can matter): how many declare a significant
    winner after confirmation (goal: at most 1 of 20);
(b) power: N searches over a space where one value is known to help (the baseline's learning rate
    0.05 against 0.3, at batch 1024 and 8 epochs, where 0.05 is too small for so few steps: 0.76
    against 0.91 mean validation accuracy over 5 seeds, measured once by hand): how many find it
    significant (goal: at least 18 of 20);
(c) cost: the default `autotrick search` (quick.yaml) alone (--no-confirm), with its confirmation
    (the default), and with --ablate, each as a fresh process in a fresh folder: wall times, and
    the confirmation's and ablation's share (goal: confirmation <= the search's own wall time).

(a) and (b) run in this process on one private Ray head (2 CPUs), as the tests do; (c) starts
each command as a user would (its own local Ray).

    python benchmarks/trust.py --out benchmarks/trust-latest.json            # the full run
    python benchmarks/trust.py --parts a,b --searches 5 --trials 8           # smaller
"""

from __future__ import annotations

import argparse
import contextlib
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
sys.path.insert(0, str(ROOT / "tests"))

NULL_SPACE = """description: "null space (issue 18 benchmark), nothing searched can matter"
model: cnn
data: digits
budget: {{trials: {trials}, max_epochs: {epochs}, grace_epochs: {epochs}}}
train: {{batch_size: 128}}
tricks:
  dropout: {{p: {{low: 0.0, high: 1.0e-6}}}}
  smoothing: {{eps: {{low: 0.0, high: 1.0e-6}}}}
"""

POWER_SPACE = """description: "power space (issue 18 benchmark), lr 0.3 beats the baseline 0.05 at batch 1024"
model: cnn
data: digits
budget: {{trials: {trials}, max_epochs: {epochs}, grace_epochs: {epochs}}}
train: {{batch_size: 1024}}
tricks:
  optim: {{lr: [0.05, 0.3]}}
"""


def _searches(kind: str, text: str, count: int, *, seeds: int, address: str) -> dict[str, object]:
    from autotrick.commands import SearchRequest, run_search_command
    from autotrick.tracking import load_recipe

    results = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"trust-{kind}-") as folder, contextlib.chdir(folder):
        Path("space.yaml").write_text(text)
        for seed in range(count):
            t0 = time.perf_counter()
            with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
                code = run_search_command(SearchRequest(space="space.yaml", name=f"{kind}{seed}", seed=seed,
                                                        confirm_seeds=seeds, address=address,
                                                        tracking_uri=f"sqlite:///{folder}/mlflow.db"))
            recipe = load_recipe(f"{kind}{seed}.recipe.yaml") if code == 0 else None
            confirmed = (recipe.provenance.get("confirmed") or {}) if recipe else {}
            results.append({"seed": seed, "exit": code, "significant": bool(confirmed.get("significant")),
                            "gain": confirmed.get("gain"), "gain_low": confirmed.get("gain_low"),
                            "gain_high": confirmed.get("gain_high"), "p_adjusted": confirmed.get("p_adjusted"),
                            "verdict": confirmed.get("verdict", "no confirmation"),
                            "seconds": round(time.perf_counter() - t0, 1)})
            print(f"{kind} {seed}: {results[-1]['verdict']}", file=sys.stderr, flush=True)
    return {"searches": count, "significant": sum(r["significant"] for r in results),
            "seconds": round(time.perf_counter() - started, 1), "runs": results}


_TIME_LINE = re.compile(r"^time: (.*)$", re.MULTILINE)


def _command(args: list[str]) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="trust-cost-") as folder:
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "autotrick", "search", "--num-cpus", "2", *args], cwd=folder,
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        wall = time.perf_counter() - t0
    timings = {}
    if match := _TIME_LINE.search(done.stdout):
        for part in match.group(1).split(", "):
            key, _, value = part.rpartition(" ")
            with contextlib.suppress(ValueError):
                timings[key] = float(value.removesuffix("s"))
    verdict = next((line for line in reversed(done.stdout.splitlines()) if "beyond seed noise" in line), "")
    ablating = re.search(r"^ablating (\d+) trick", done.stdout, re.MULTILINE)
    return {"args": args, "exit": done.returncode, "wall_s": round(wall, 1), "timings": timings, "verdict": verdict,
            "ablated": "ablation written to" in done.stdout, "tricks_ablated": int(ablating[1]) if ablating else 0}


def cost() -> dict[str, object]:
    alone = _command(["--no-confirm"])
    confirmed = _command([])
    ablated = _command(["--ablate"])
    search_s = alone["timings"].get("trials", 0.0)  # type: ignore[union-attr]
    confirm_s = confirmed["timings"].get("confirm", 0.0)  # type: ignore[union-attr]
    return {"search_alone": alone, "with_confirmation": confirmed, "with_ablation": ablated,
            "confirm_over_search_trials": round(confirm_s / search_s, 2) if search_s else None,
            "confirmed_wall_over_alone_wall": round(confirmed["wall_s"] / alone["wall_s"], 2),  # type: ignore[operator]
            "ablated_wall_over_alone_wall": round(ablated["wall_s"] / alone["wall_s"], 2)}  # type: ignore[operator]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="a,b,c")
    parser.add_argument("--searches", type=int, default=20)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--null-epochs", type=int, default=5)
    parser.add_argument("--power-epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    report: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "load_average_at_start": os.getloadavg(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "trials": args.trials, "seeds": args.seeds}
    if parts & {"a", "b"}:
        import ray
        from conftest import ray_head

        with ray_head() as address:
            ray.init(address=address, log_to_driver=False,
                     runtime_env={"worker_process_setup_hook": "autotrick.search.warm_worker"})
            try:
                if "a" in parts:
                    report["a_false_winners"] = _searches(
                        "null", NULL_SPACE.format(trials=args.trials, epochs=args.null_epochs), args.searches,
                        seeds=args.seeds, address=address)
                if "b" in parts:
                    report["b_power"] = _searches(
                        "power", POWER_SPACE.format(trials=args.trials, epochs=args.power_epochs), args.searches,
                        seeds=args.seeds, address=address)
            finally:
                ray.shutdown()
    if "c" in parts:
        report["c_cost"] = cost()
    report["load_average_at_end"] = os.getloadavg()
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
