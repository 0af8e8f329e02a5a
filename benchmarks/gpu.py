"""GPU benchmark: autotrick's search throughput against a bare training loop and the hand-wired peer,
on one GPU, in one run.

    python3 benchmarks/gpu.py [--trials 12] [--epochs 4] [--images 25000] [--skip-peer] [--out FILE]
    python3 benchmarks/gpu.py --smoke     # the same script end to end on a CPU, tiny sizes

What it measures, on `synthetic:cifar10:IMAGES` (CIFAR-10's shape, generated: no download), the
CIFAR ResNet-18, bf16 autocast, channels_last, batch 256:
1. a bare training loop (no Ray, no tricks; the data on the GPU as uint8, normalized per batch):
   images/s in steady state, and so the epochs a minute a GPU can train;
2. `autotrick search` (fresh processes, a local Ray) over lr, weight decay and label smoothing,
   TRIALS trials of up to EPOCHS epochs, ASHA with a grace of 1 epoch (the peer's budget): epochs
   trained per minute of the trial phase, all trials together, at 1 and at 0.25 GPU per trial;
3. the same two searches with `augment.policy=trivialaugment`;
4. ../shared/bench/peer_glue_gpu.py with the same images, epochs and trials.
Prints one JSON object: each figure, and each search's ratio to the bare loop's epochs a minute
(targets: >= 0.85 at 1 and at 0.25 GPU per trial; >= 0.8 with trivialaugment).

--smoke runs every step on the CPU at toy sizes (the digits-sized cnn, 256 images, 2 trials of 2
epochs), against a Ray head of its own with a logical GPU and trials told to train on the CPU
(the command run through tests/cpu_trials.py), and skips the peer (it needs CUDA): it checks the script, not speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BATCH = 256
TARGETS = {"search_gpu1": 0.85, "search_gpu0.25": 0.85, "search_gpu1_trivialaugment": 0.8,
           "search_gpu0.25_trivialaugment": 0.8}

SPACE = """description: GPU benchmark on CIFAR-shaped synthetic data
model: {model}
data: {data}
budget: {{trials: {trials}, max_epochs: {epochs}, grace_epochs: 1, metric: val_accuracy}}
train: {{batch_size: {batch}}}
tricks:
  precision: {{dtype: bf16}}
  optim: {{name: sgd, lr: {{low: 0.001, high: 0.3, log: true}}, momentum: 0.9, nesterov: true,
          weight_decay: {{low: 0.00001, high: 0.001, log: true}}}}
  smoothing: {{eps: {{low: 0.0, high: 0.2}}}}
"""


def bare_loop(*, model_name: str, data_spec: str, epochs: int, device: str) -> dict[str, float]:
    """The loop a user would write for this model and data, with nothing around it."""
    import torch

    from autotrick.augment import normalize
    from autotrick.data import load_data
    from autotrick.models import build_model

    data = load_data(data_spec)
    x, y = data.train_x.to(device), data.train_y.to(device)
    model = build_model(model_name, num_classes=data.num_classes, in_channels=data.in_channels,
                        image_size=data.image_size).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4,
                                **({"fused": True} if device == "cuda" else {}))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")
    per_epoch = []
    for _ in range(epochs):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        order = torch.randperm(len(y), device=device)
        for i in range(0, len(y) - BATCH + 1, BATCH):
            index = order[i:i + BATCH]
            batch = normalize(x[index], data.mean, data.std).contiguous(memory_format=torch.channels_last)
            with autocast:
                loss = torch.nn.functional.cross_entropy(model(batch), y[index], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        per_epoch.append((len(y) // BATCH) * BATCH / (time.perf_counter() - started))
    steady = per_epoch[1:] or per_epoch  # the first epoch pays cuDNN's and the allocator's warm-up
    images_per_s = sum(steady) / len(steady)
    return {"bare_images_per_s": round(images_per_s), "bare_images_per_s_by_epoch": [round(v) for v in per_epoch],
            "bare_epochs_per_min": round(images_per_s * 60 / len(y), 2)}


def search(workdir: Path, name: str, space: str, gpus: float, *, address: str | None,
           env: dict[str, str], autotrick: list[str]) -> dict[str, float]:
    """One `autotrick search` as a user runs it; epochs a minute over its trial phase."""
    folder = workdir / name
    folder.mkdir()
    (folder / "space.yaml").write_text(space)
    command = [*autotrick, "search", "--space", "space.yaml", "--name", name,
               "--gpus-per-trial", f"{gpus:g}", "--tracking-uri", f"sqlite:///{folder}/mlflow.db"]
    if address:
        command += ["--address", address, "--cpus-per-trial", f"{min(1.0, gpus) if gpus else 1.0:g}"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **env})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    out = done.stdout
    epochs = sum(int(m) for m in re.findall(r"^trial .*?\s(\d+) ep\s", out, flags=re.MULTILINE))
    trials_s = _number(r"time:.*?\btrials ([\d.]+)s", out)
    return {"gpus_per_trial": gpus, "epochs": epochs, "trials_s": trials_s, "process_wall_s": round(wall, 2),
            "epochs_per_min": round(epochs / trials_s * 60, 2),
            "trials_at_once": _number(r"trials_at_once ([\d.]+)", out),
            "best_val_accuracy": _number(r"best val_accuracy ([\d.]+)", out)}


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    if not match:
        raise SystemExit(f"no match for {pattern!r} in:\n{text}")
    return float(match.group(1))


def peer(script: Path, workdir: Path, *, images: int, epochs: int, trials: int) -> dict[str, object]:
    env = {**os.environ, "N": str(images), "EPOCHS": str(epochs), "SAMPLES": str(trials),
           "CPUS": str(os.cpu_count() or 8)}
    done = subprocess.run([sys.executable, str(script)], cwd=workdir, capture_output=True, text=True, env=env,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"the peer failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    result: dict[str, object] = {"peer_lines": lines}
    bare = next((line for line in lines if "bare_loop" in line), None)
    if bare:
        steady = bare["bare_loop"][1:] or bare["bare_loop"]
        result["peer_bare_images_per_s"] = round(sum(steady) / len(steady))
        bare_per_min = result["peer_bare_images_per_s"] * 60 / images  # type: ignore[operator]
        for line in lines:
            if "gpu_per_trial" in line:
                result[f"peer_search_gpu{line['gpu_per_trial']:g}_epochs_per_min"] = line["epochs_per_min"]
                ratio = line["epochs_per_min"] / bare_per_min
                result[f"peer_search_gpu{line['gpu_per_trial']:g}_ratio"] = round(ratio, 3)
    return result


@contextmanager
def logical_gpu_ray() -> Iterator[str]:
    """--smoke: a Ray head of its own with 2 CPUs and 1 logical GPU, stopped (only it) afterwards."""
    import psutil

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp_dir = tempfile.mkdtemp(prefix="rb-", dir="/tmp")
    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    subprocess.run([ray_cli, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                    f"--temp-dir={temp_dir}", "--num-cpus=2", "--num-gpus=1", "--include-dashboard=false",
                    "--disable-usage-stats"], check=True, capture_output=True, timeout=180)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        ours = [p for p in psutil.process_iter(["cmdline"]) if any(temp_dir in a for a in p.info["cmdline"] or ())]
        for process in ours:
            process.terminate()
        for process in psutil.wait_procs(ours, timeout=5)[1]:
            process.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", type=Path, default=ROOT.parent / "shared" / "bench" / "peer_glue_gpu.py")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--trials", type=int, default=12, help="trials per search (the peer's default: 12)")
    parser.add_argument("--epochs", type=int, default=4, help="max epochs per trial (the peer's default: 4)")
    parser.add_argument("--images", type=int, default=25_000, help="training images (the peer's default: 25,000)")
    parser.add_argument("--smoke", action="store_true", help="the whole script on a CPU at toy sizes")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing it (the GPU machine)
    import torch

    if args.smoke:
        args.trials, args.epochs, args.images, args.skip_peer = 2, 2, 256, True
        device, model, env = "cpu", "cnn", {}
        autotrick = [sys.executable, str(ROOT / "tests" / "cpu_trials.py")]  # trials on the CPU
    elif not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs CUDA; run it with --smoke to check it on a CPU")
    else:
        device, model, env = "cuda", "resnet18", {}
        autotrick = [sys.executable, "-m", "autotrick"]
    data = f"synthetic:cifar10:{args.images}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    results: dict[str, object] = {
        "machine": f"{platform.node()} {os.cpu_count()} cores", "python": platform.python_version(),
        "torch": torch.__version__, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)",
        "date": time.strftime("%Y-%m-%d %H:%M"), "data": data, "model": model, "batch": BATCH,
        "trials": args.trials, "max_epochs": args.epochs}
    results.update(bare_loop(model_name=model, data_spec=data, epochs=max(3, args.epochs), device=device))
    bare_per_min = results["bare_epochs_per_min"]
    with tempfile.TemporaryDirectory() as tmp, (logical_gpu_ray() if args.smoke else _no_address()) as address:
        workdir = Path(tmp)
        for policy in ("none", "trivialaugment"):
            space = SPACE.format(model=model, data=data, trials=args.trials, epochs=args.epochs, batch=BATCH)
            if policy != "none":
                space += f"  augment: {{policy: {policy}}}\n"
            for gpus in (1.0, 0.25):
                key = f"search_gpu{gpus:g}" + ("" if policy == "none" else f"_{policy}")
                run = search(workdir, key.replace(".", "_"), space, gpus, address=address, env=env,
                             autotrick=autotrick)
                run["ratio_to_bare"] = round(run["epochs_per_min"] / bare_per_min, 3)  # type: ignore[operator]
                results[key] = run
        if not args.skip_peer:
            results.update(peer(args.peer, workdir, images=args.images, epochs=args.epochs, trials=args.trials))
    results["ratios"] = {key: results[key]["ratio_to_bare"] for key in TARGETS}  # type: ignore[index]
    results["targets_met"] = {key: results["ratios"][key] >= target for key, target in TARGETS.items()}  # type: ignore[index]
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


@contextmanager
def _no_address() -> Iterator[None]:
    yield None  # autotrick starts its own local Ray, as a user's search does


if __name__ == "__main__":
    main()
