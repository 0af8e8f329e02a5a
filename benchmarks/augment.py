"""Augmentation policies: autotrick's batched ones against torchvision's per-image path and kornia.

    python benchmarks/augment.py [--out benchmarks/augment-latest.json] [--skip-kornia] [--quick]
                                 [--parts speeds,kornia,digits] [--digits-threads 2,1]

Measures, in this process:
1. images/s of each policy on uint8 batches of 256 (32x32x3 and 224x224x3), 1 and 2 threads:
   (a) torchvision's v2 transform one image at a time (the path autotrick used before),
   (b) kornia's `kornia.augmentation.auto` policy on the float batch (conversion included),
   (c) autotrick's batched policy (`autotrick.augment.policies`);
   each the best of a few runs (the machine is shared: the best run is the least disturbed one);
2. how far kornia's ops are from torchvision's at the same op and magnitude (share of pixels
   more than 1 level apart on 32x32x3 images), to back the choice not to use it;
3. the digits cnn trained by `autotrick.trainer.run_trial` (5 epochs, 2 threads, then 1) with
   each policy against none: training images/s (median of the runs, interleaved) and the ratio
   to none (target, 2 threads: >= 0.7); and, less disturbed by other load, the fastest of 300 runs
   of one training step and of each policy on its batch of 64.
Prints one JSON object. kornia is optional (`pip install kornia`); without it (b) and 2 are skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autotrick.augment.policies import AutoAugment, Policy, RandAugment, TrivialAugmentWide  # noqa: E402
from autotrick.space import resolve_values  # noqa: E402
from autotrick.trainer import TrainConfig, run_trial  # noqa: E402

POLICIES: dict[str, dict[str, object]] = {
    "trivialaugment": {"augment.policy": "trivialaugment"},
    "randaugment": {"augment.policy": "randaugment", "augment.num_ops": 2, "augment.magnitude": 9},
    "autoaugment-imagenet": {"augment.policy": "autoaugment", "augment.autoaugment_policy": "imagenet"},
    "autoaugment-cifar10": {"augment.policy": "autoaugment", "augment.autoaugment_policy": "cifar10"},
    "autoaugment-svhn": {"augment.policy": "autoaugment", "augment.autoaugment_policy": "svhn"},
}


def autotrick_policy(name: str) -> Policy:
    if name == "trivialaugment":
        return TrivialAugmentWide()
    if name == "randaugment":
        return RandAugment(num_ops=2, magnitude=9)
    return AutoAugment(name.removeprefix("autoaugment-"))


def torchvision_policy(name: str) -> Callable[[Tensor], Tensor]:
    from torchvision.transforms import v2

    if name == "trivialaugment":
        return v2.TrivialAugmentWide()
    if name == "randaugment":
        return v2.RandAugment(num_ops=2, magnitude=9)
    return v2.AutoAugment(v2.AutoAugmentPolicy(name.removeprefix("autoaugment-")))


def kornia_policy(name: str) -> Callable[[Tensor], Tensor]:
    from kornia.augmentation import auto

    if name == "trivialaugment":
        return auto.TrivialAugment()
    if name == "randaugment":
        return auto.RandAugment(n=2, m=9)
    return auto.AutoAugment(name.removeprefix("autoaugment-"))


def fastest_seconds(run: Callable[[], object], repeats: int) -> float:
    """The fastest of `repeats` runs, after one warm-up run: on a busy machine, the least disturbed."""
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def best_rate(run: Callable[[], object], images: int, repeats: int) -> float:
    """Images per second of the fastest of `repeats` runs."""
    return round(images / fastest_seconds(run, repeats), 1)


def policy_speeds(sizes: list[int], batch: int, with_kornia: bool, repeats: int) -> dict[str, object]:
    results: dict[str, object] = {}
    for size in sizes:
        images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(0))
        for threads in (1, 2):
            torch.set_num_threads(threads)
            rows = {name: policy_speed(name, images, with_kornia, repeats) for name in POLICIES}
            results[f"{size}x{size}x3, batch {batch}, {threads} thread{'s' if threads > 1 else ''}"] = rows
    return results


def policy_speed(name: str, images: Tensor, with_kornia: bool, repeats: int) -> dict[str, float]:
    per_image, ours, generator = torchvision_policy(name), autotrick_policy(name), torch.Generator().manual_seed(0)
    row = {"torchvision_per_image": best_rate(lambda: torch.stack([per_image(i) for i in images]), len(images),
                                              repeats),
           "autotrick_batched": best_rate(lambda: ours(images, generator), len(images), repeats)}
    if with_kornia:
        theirs = kornia_policy(name)

        def run_kornia() -> Tensor:  # float in [0, 1] in, uint8 back, as a uint8 pipeline would use it
            return theirs(images.float().div_(255)).mul_(255).round_().clamp_(0, 255).to(torch.uint8)

        row["kornia_batched"] = best_rate(run_kornia, len(images), repeats)
    print(f"{tuple(images.shape)} threads={torch.get_num_threads()} {name}: {row}", file=sys.stderr)
    return row


def kornia_faithfulness() -> dict[str, float]:
    """Share of pixels more than 1 level apart between kornia's op and torchvision's at the same
    op and magnitude (random 32x32x3 images; torchvision's policies use these torchvision ops)."""
    import kornia
    from torchvision.transforms.v2 import functional as TF

    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    x = images.float() / 255
    nearest = TF.InterpolationMode.NEAREST
    pairs: dict[str, tuple[Callable[[], Tensor], Callable[[], Tensor]]] = {
        "rotate 20 degrees": (lambda: kornia.geometry.transform.rotate(x, torch.full((64,), 20.0)),
                              lambda: TF.rotate(images, 20.0, interpolation=nearest)),
        "shear x 0.2": (lambda: kornia.geometry.transform.shear(x, torch.tensor([[0.2, 0.0]]).expand(64, 2)),
                        lambda: TF.affine(images, angle=0.0, translate=[0, 0], scale=1.0, center=[0, 0],
                                          shear=[11.309932474020215, 0.0], interpolation=nearest)),
        "translate x 5 px": (lambda: kornia.geometry.transform.translate(x, torch.tensor([[5.0, 0.0]]).expand(64, 2)),
                             lambda: TF.affine(images, angle=0.0, translate=[5, 0], scale=1.0, shear=[0.0, 0.0],
                                               interpolation=nearest)),
        "brightness 1.3": (lambda: kornia.enhance.adjust_brightness(x, 0.3),
                           lambda: TF.adjust_brightness(images, 1.3)),
        "contrast 1.3": (lambda: kornia.enhance.adjust_contrast(x, 1.3), lambda: TF.adjust_contrast(images, 1.3)),
        "saturation 1.3": (lambda: kornia.enhance.adjust_saturation(x, 1.3),
                           lambda: TF.adjust_saturation(images, 1.3)),
        "sharpness 1.3": (lambda: kornia.enhance.sharpness(x, 1.3), lambda: TF.adjust_sharpness(images, 1.3)),
        "posterize 4 bits": (lambda: kornia.enhance.posterize(x, 4), lambda: TF.posterize(images, 4)),
        "solarize 0.5": (lambda: kornia.enhance.solarize(x, 0.5), lambda: TF.solarize(images, 127.5)),
        "equalize": (lambda: kornia.enhance.equalize(x), lambda: TF.equalize(images)),
        "invert": (lambda: kornia.enhance.invert(x), lambda: TF.invert(images)),
    }
    shares = {}
    for name, (theirs, reference) in pairs.items():
        try:
            ours = theirs().mul(255).round().clamp(0, 255)
        except Exception as error:  # an API that moved: say so rather than stop the benchmark
            shares[name] = f"failed: {type(error).__name__}: {error}"
            continue
        shares[name] = round(((ours - reference().float()).abs() > 1).float().mean().item(), 4)
    return shares


def digits_training(repeats: int, threads: int) -> dict[str, object]:
    """run_trial on digits with the cnn, 5 epochs: images/s over the training epochs."""
    config = TrainConfig(epochs=5, threads=threads)
    names = ["none", *POLICIES]
    rates: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):  # interleaved, so that a busy minute on the shared machine hits every policy
        for name in names:
            values = resolve_values(POLICIES.get(name, {}), "benchmark")
            history = run_trial(values, config).history
            images = sum(report.images_per_s * report.seconds for report in history)
            rates[name].append(round(images / sum(report.seconds for report in history), 1))
            print(f"digits, {threads} threads, {name}: {rates[name][-1]} images/s", file=sys.stderr)
    base = statistics.median(rates["none"])
    return {name: {"images_per_s": statistics.median(runs), "runs": runs,
                   "ratio_to_none": round(statistics.median(runs) / base, 3)} for name, runs in rates.items()}


def digits_batch_times(threads: int, repeats: int = 300) -> dict[str, object]:
    """The fastest of `repeats` runs of one digits training step (batch 64, the trainer's cnn, no
    policy) and of each policy on the epoch's block of images as the trainer augments it (the
    whole training split: trainer.AUGMENT_BLOCK_BYTES), per batch: on a busy machine the fastest
    run is the least disturbed one, so step / (step + policy) estimates the ratio to none that a
    quiet machine gets. Also the policy on one batch of 64, what a block saves."""
    from autotrick.apply import apply_tricks
    from autotrick.augment import basic_augment, normalize
    from autotrick.data import load_data
    from autotrick.models import build_model

    torch.set_num_threads(threads)
    data = load_data("digits")
    torch.manual_seed(0)
    model = build_model("cnn", num_classes=10, in_channels=1, image_size=data.image_size)
    setup = apply_tricks(resolve_values({}, "benchmark"), model.to(memory_format=torch.channels_last),
                         num_classes=10, steps_per_epoch=23, epochs=5)
    index = torch.arange(64)

    def step() -> None:  # the trainer's loop body without the policy
        x = basic_augment(data.train_x[index], crop_padding=data.crop_padding, flip=data.flip,
                          generator=setup.generator)
        x, targets = setup.mix(normalize(x, data.mean, data.std), setup.targets(data.train_y[index]))
        setup.step(setup.loss(setup.model(x.contiguous(memory_format=torch.channels_last)), targets))

    def fastest(run: Callable[[], object], repeats: int = repeats) -> float:  # in ms
        return fastest_seconds(run, repeats) * 1e3

    step_ms = fastest(step)
    result: dict[str, object] = {"training_step_ms": round(step_ms, 3)}
    images, block = data.train_x[index], data.train_x
    batches_per_block = math.ceil(len(block) / len(images))
    for name in POLICIES:
        policy, generator = autotrick_policy(name), torch.Generator().manual_seed(0)
        batch_ms = fastest(lambda p=policy, g=generator: p(images, g))
        block_ms = fastest(lambda p=policy, g=generator: p(block, g), repeats=max(1, repeats // 10))
        policy_ms = block_ms / batches_per_block
        result[name] = {"policy_ms_per_batch_in_block": round(policy_ms, 3),
                        "policy_ms_on_one_batch": round(batch_ms, 3),
                        "ratio_estimate": round(step_ms / (step_ms + policy_ms), 3)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--skip-kornia", action="store_true")
    parser.add_argument("--quick", action="store_true", help="32x32 only, fewer repeats")
    parser.add_argument("--parts", default="speeds,kornia,digits", help="which of speeds, kornia, digits to run")
    parser.add_argument("--digits-threads", default="2,1", help="thread counts for the digits training runs")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    try:
        import kornia
        kornia_version = None if args.skip_kornia else kornia.__version__
    except ImportError:
        kornia_version = None
    import torchvision

    started, load_before = time.time(), os.getloadavg()
    result: dict[str, object] = {
        "machine": {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "torchvision": torchvision.__version__, "kornia": kornia_version},
        "load_average_before": [round(v, 2) for v in load_before],
    }
    if "speeds" in parts:
        result["policy_images_per_s"] = policy_speeds([32] if args.quick else [32, 224], 256,
                                                      kornia_version is not None, repeats=2 if args.quick else 3)
    if "kornia" in parts and kornia_version is not None:
        result["kornia_vs_torchvision_pixels_apart"] = kornia_faithfulness()
    if "digits" in parts:
        # 2 threads is the target's setting; 1 thread as well, because on a busy shared machine a
        # parallel region can wait milliseconds for its second core
        for threads in map(int, args.digits_threads.split(",")):
            training = digits_training(repeats=1 if args.quick else 3, threads=threads)
            result[f"digits_cnn_training_{threads}_thread{'s' if threads > 1 else ''}"] = training
            if threads == 2:
                result["target_ratio_met"] = all(row["ratio_to_none"] >= 0.7  # type: ignore[index]
                                                 for row in training.values())
            result[f"digits_batch_fastest_{threads}_thread{'s' if threads > 1 else ''}"] = digits_batch_times(threads)
    result["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    result["seconds"] = round(time.time() - started, 1)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
