"""The batched augmentation policies against torchvision's v2 ones, with real torch and torchvision
(nothing mocked): every op against torchvision's functional op, every policy replaying torchvision's
own random draws, each image's draw against torchvision's outcome distribution, and training.

Images up to 32x32 (autotrick.augment.policies.MAPPED_PIXELS) run their fixed ops from precomputed
pixel maps and tables, bigger ones compute them per batch: the shapes below cover both."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from autotrick.augment.policies import (
    AUTOAUGMENT_POLICIES,
    AUTOAUGMENT_SPACE,
    KINDS,
    RANDAUGMENT_SPACE,
    TRIVIALAUGMENT_SPACE,
    AutoAugment,
    Policy,
    RandAugment,
    Space,
    TrivialAugmentWide,
    apply_ops,
)
from autotrick.space import resolve_values
from autotrick.trainer import TrainConfig, run_trial
from autotrick.tricks.augment import policy_transform


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Small tensor ops run fastest on one thread, all the more on a shared machine, where a parallel
    region can wait milliseconds for its second core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def torchvision_op(name: str, image: Tensor, magnitude: float) -> Tensor:
    """What torchvision's _AutoAugmentBase does for op `name` at `magnitude` (its public functional ops,
    called with the arguments _apply_image_or_video_transform passes: nearest, fill None, i.e. 0)."""
    nearest = TF.InterpolationMode.NEAREST
    if name == "Identity":
        return image
    if name in ("ShearX", "ShearY"):
        shear = math.degrees(math.atan(magnitude))
        return TF.affine(image, angle=0.0, translate=[0, 0], scale=1.0, interpolation=nearest, center=[0, 0],
                         shear=[shear, 0.0] if name == "ShearX" else [0.0, shear])
    if name in ("TranslateX", "TranslateY"):
        shift = int(magnitude)
        return TF.affine(image, angle=0.0, translate=[shift, 0] if name == "TranslateX" else [0, shift], scale=1.0,
                         interpolation=nearest, shear=[0.0, 0.0])
    if name == "Rotate":
        return TF.rotate(image, angle=magnitude, interpolation=nearest)
    colour: dict[str, Callable[[], Tensor]] = {
        "Brightness": lambda: TF.adjust_brightness(image, brightness_factor=1.0 + magnitude),
        "Color": lambda: TF.adjust_saturation(image, saturation_factor=1.0 + magnitude),
        "Contrast": lambda: TF.adjust_contrast(image, contrast_factor=1.0 + magnitude),
        "Sharpness": lambda: TF.adjust_sharpness(image, sharpness_factor=1.0 + magnitude),
        "Posterize": lambda: TF.posterize(image, bits=int(magnitude)),
        "Solarize": lambda: TF.solarize(image, threshold=255.0 * magnitude),
        "AutoContrast": lambda: TF.autocontrast(image),
        "Equalize": lambda: TF.equalize(image),
        "Invert": lambda: TF.invert(image),
    }
    return colour[name]()


GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
# Share of pixels allowed to differ from torchvision. Colour ops: none, they do torchvision's float32
# steps. Geometric ops sample the pixel nearest to where the matrix sends each pixel center; when
# that point is exactly half-way between two pixels (shears of magnitude 0.05, 0.1, ... put m·y there
# for whole rows), the last bit of the float32 grid decides, and torchvision's grid comes from a
# matrix product whose summation order MKL does not fix. How many ties fall either way depends on the
# CPU's kernels: 2 of 17 million pixels on an AMD EPYC, up to 1 in 1,000 (ShearY on 224x224) on an
# Intel Xeon with AVX-512 FP16. 2 in 1,000 bounds both and still fails any real error (a wrong sign,
# center or rounding moves whole rows or columns: one row of a 224x224 image is 4.5 in 1,000).
TIE_SHARE = 2e-3
TOLERANCE = {name: TIE_SHARE if name in GEOMETRIC else 0.0 for name in KINDS}
SHAPES = [(1, 8, 8), (3, 8, 8), (3, 32, 32), (1, 31, 17), (3, 20, 33), (1, 48, 37), (3, 224, 224)]


def sample_images(n: int, shape: tuple[int, int, int], seed: int = 0) -> Tensor:
    """Random images, with the edge cases an op may treat apart: a flat image, a two-level one and
    one already spanning 0..255."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=generator)
    images[0] = 77  # flat: autocontrast and equalize leave it alone
    if n > 2:
        images[1] = torch.where(images[1] > 127, 200, 30).to(torch.uint8)  # two levels
        images[2] = (images[2].float() * 0.5 + 40).to(torch.uint8)  # a narrow range
    return images


def magnitudes_of(name: str, height: int, width: int) -> list[float]:
    """Every magnitude a policy can give op `name` on this image size, with both signs if signed."""
    values: set[float] = set()
    for space, bins in ((TRIVIALAUGMENT_SPACE, 31), (RANDAUGMENT_SPACE, 31), (AUTOAUGMENT_SPACE, 10)):
        if name not in space:
            continue
        magnitudes_fn, signed = space[name]
        magnitudes = magnitudes_fn(bins, height, width)
        for m in ([0.0] if magnitudes is None else [float(v) for v in magnitudes]):
            values.update({m, -m} if signed else {m})
    return sorted(values)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", KINDS[1:])
def test_each_op_matches_torchvision_for_every_magnitude(name: str, shape: tuple[int, int, int]) -> None:
    _, h, w = shape
    magnitudes = magnitudes_of(name, h, w)
    if shape[-1] == 224:  # big images: every 4th magnitude, still both signs and both ends of each range
        magnitudes = magnitudes[::4] + magnitudes[-1:]
    images = sample_images(len(magnitudes), shape)
    kinds = torch.full((len(magnitudes), 1), KINDS.index(name))
    out = apply_ops(images, kinds, torch.tensor(magnitudes, dtype=torch.float32).view(-1, 1))
    expected = torch.stack([torchvision_op(name, image, m) for image, m in zip(images, magnitudes, strict=True)])
    assert out.dtype == torch.uint8 and out.shape == images.shape
    differing = (out != expected).float().mean().item()
    assert differing <= TOLERANCE[name], (name, shape, differing, "of the pixels differ")


# --- whole policies: torchvision's own draws, replayed --------------------------------------------


def replay_trivialaugment(image: Tensor) -> list[tuple[str, float]]:
    """The draws TrivialAugmentWide.forward makes from the global generator, in its order."""
    names = list(TRIVIALAUGMENT_SPACE)
    name = names[int(torch.randint(len(names), ()))]
    magnitudes_fn, signed = TRIVIALAUGMENT_SPACE[name]
    magnitudes = magnitudes_fn(31, *image.shape[-2:])
    if magnitudes is None:
        return [(name, 0.0)]
    magnitude = float(magnitudes[int(torch.randint(31, ()))])
    return [(name, -magnitude if signed and torch.rand(()) <= 0.5 else magnitude)]


def replay_randaugment(image: Tensor, num_ops: int, magnitude_bin: int) -> list[tuple[str, float]]:
    steps = []
    for _ in range(num_ops):
        steps.append(_one(RANDAUGMENT_SPACE, list(RANDAUGMENT_SPACE)[int(torch.randint(14, ()))], magnitude_bin,
                          31, image))
    return steps


def replay_autoaugment(image: Tensor, policy: str) -> list[tuple[str, float]]:
    sub_policies = AUTOAUGMENT_POLICIES[policy]
    steps = []
    for name, probability, magnitude_bin in sub_policies[int(torch.randint(len(sub_policies), ()))]:
        applied = torch.rand(()) <= probability
        steps.append(_one(AUTOAUGMENT_SPACE, name, magnitude_bin, 10, image) if applied else ("Identity", 0.0))
    return steps


def _one(space: Space, name: str, magnitude_bin: int | None, bins: int, image: Tensor) -> tuple[str, float]:
    magnitudes_fn, signed = space[name]
    magnitudes = magnitudes_fn(bins, *image.shape[-2:])
    if magnitudes is None or magnitude_bin is None:
        return name, 0.0
    magnitude = float(magnitudes[magnitude_bin])
    return name, -magnitude if signed and torch.rand(()) <= 0.5 else magnitude


REPLAYS: dict[str, tuple[Callable[[], v2.Transform], Callable[[Tensor], list[tuple[str, float]]]]] = {
    "trivialaugment": (v2.TrivialAugmentWide, replay_trivialaugment),
    "randaugment-2-9": (lambda: v2.RandAugment(num_ops=2, magnitude=9), lambda i: replay_randaugment(i, 2, 9)),
    "randaugment-3-30": (lambda: v2.RandAugment(num_ops=3, magnitude=30), lambda i: replay_randaugment(i, 3, 30)),
    **{f"autoaugment-{p}": ((lambda p=p: v2.AutoAugment(v2.AutoAugmentPolicy(p))),
                            (lambda i, p=p: replay_autoaugment(i, p))) for p in AUTOAUGMENT_POLICIES},
}


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32), (3, 23, 40), (3, 36, 45)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("policy", REPLAYS)
def test_policy_tables_replay_torchvisions_own_draws(policy: str, shape: tuple[int, int, int]) -> None:
    """Seed torch, let torchvision's policy augment an image; seed again, replay the same draws
    through autotrick's tables and ops: the same image. This checks op lists, magnitude tables,
    signs and sub-policies against torchvision's, whatever its internals."""
    make, replay = REPLAYS[policy]
    transform, images = make(), sample_images(60, shape, seed=1)
    expected, steps = [], []
    for seed, image in enumerate(images):
        torch.manual_seed(seed)
        expected.append(transform(image))
        torch.manual_seed(seed)
        steps.append(replay(image))
    kinds = torch.tensor([[KINDS.index(name) for name, _ in s] for s in steps])
    magnitudes = torch.tensor([[m for _, m in s] for s in steps], dtype=torch.float32)
    out = apply_ops(images, kinds, magnitudes)
    differing = (out != torch.stack(expected)).float().mean().item()
    assert differing <= TIE_SHARE, (policy, shape, differing)


# --- the draws: each image its own, at the rates the policy implies ---------------------------------

POLICIES: dict[str, Callable[[], Policy]] = {
    "trivialaugment": TrivialAugmentWide,
    "randaugment": lambda: RandAugment(num_ops=2, magnitude=9),
    **{f"autoaugment-{p}": (lambda p=p: AutoAugment(p)) for p in AUTOAUGMENT_POLICIES},
}

Alternatives = list[tuple[str, float, float]]  # (op, magnitude, probability) of one step


def torchvision_branches(policy: str, height: int, width: int) -> list[tuple[float, list[Alternatives]]]:
    """The random choices of torchvision's forward, written out from its code (independently of
    autotrick's Programs): [(probability, [each step's alternatives])]."""
    def alternatives(space: Space, name: str, magnitude_bin: int | None, bins: int, p: float) -> Alternatives:
        magnitudes_fn, signed = space[name]
        magnitudes = magnitudes_fn(bins, height, width)
        if magnitudes is None or magnitude_bin is None:
            return [(name, 0.0, p)]
        m = float(magnitudes[magnitude_bin])
        return [(name, m, p / 2), (name, -m, p / 2)] if signed else [(name, m, p)]

    if policy == "trivialaugment":  # an op uniformly, then a bin uniformly, then a sign (rand <= 0.5)
        space = TRIVIALAUGMENT_SPACE
        return [(1.0, [[a for name, (fn, _) in space.items()
                        for b in ([None] if fn(31, height, width) is None else range(31))
                        for a in alternatives(space, name, b, 31, 1 / len(space) / (1 if b is None else 31))]])]
    if policy == "randaugment":  # num_ops times: an op uniformly, the fixed bin, a sign
        step = [a for name in RANDAUGMENT_SPACE for a in alternatives(RANDAUGMENT_SPACE, name, 9, 31, 1 / 14)]
        return [(1.0, [step, step])]
    sub_policies = AUTOAUGMENT_POLICIES[policy.removeprefix("autoaugment-")]
    return [(1 / len(sub_policies), [[("Identity", 0.0, 1 - p), *alternatives(AUTOAUGMENT_SPACE, name, b, 10, p)]
                                     for name, p, b in sub_policy]) for sub_policy in sub_policies]


def outcome_distribution(policy: str, image: Tensor) -> dict[bytes, float]:
    """Every image torchvision's policy can make of `image`, with its exact probability (equal images merged)."""
    total: dict[bytes, float] = defaultdict(float)
    for branch_probability, steps in torchvision_branches(policy, *image.shape[-2:]):
        outcomes = {image.numpy().tobytes(): (branch_probability, image)}
        for step in steps:
            after: dict[bytes, tuple[float, Tensor]] = {}
            for probability, current in outcomes.values():
                for name, magnitude, p in step:
                    if p > 0:
                        out = torchvision_op(name, current, magnitude)
                        key = out.numpy().tobytes()
                        after[key] = (after.get(key, (0.0, out))[0] + probability * p, out)
            outcomes = after
        for key, (probability, _) in outcomes.items():
            total[key] += probability
    return total


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("policy", POLICIES)
def test_each_image_gets_its_own_draw_at_torchvisions_rates(policy: str, shape: tuple[int, int, int]) -> None:
    """One image 20,000 times in a batch, against torchvision's exact outcome distribution: the chance
    an output is the image itself (identity draws, zero magnitudes, posterize to 8 bits, skipped
    sub-policy ops, ...) and the chance two outputs are equal (sum of squared outcome probabilities;
    1 if a batch shared one draw) must hold within 5 binomial standard deviations; every output must
    be one torchvision can make, and their counts must fit its probabilities (chi-square below its
    mean + 5 standard deviations: a sign drawn 70/30 instead of 50/50 fails it)."""
    image = sample_images(3, shape, seed=2)[2]  # the narrow-range one: autocontrast changes it
    distribution = outcome_distribution(policy, image)
    assert sum(distribution.values()) == pytest.approx(1.0)
    unchanged = distribution.get(image.numpy().tobytes(), 0.0)
    collision = sum(p * p for p in distribution.values())
    n = 20_000
    out = POLICIES[policy]()(image.expand(n, *shape).contiguous(), torch.Generator().manual_seed(3))
    measured_unchanged = (out == image).flatten(1).all(1).float().mean().item()
    pairs = (out[0::2] == out[1::2]).flatten(1).all(1).float().mean().item()
    assert abs(measured_unchanged - unchanged) <= 5 * math.sqrt(unchanged * (1 - unchanged) / n) + 1e-9
    assert abs(pairs - collision) <= 5 * math.sqrt(collision * (1 - collision) / (n // 2)) + 1e-9
    assert collision < 0.5  # many distinct outcomes: one draw per batch would make every pair equal
    counts = Counter(o.numpy().tobytes() for o in out)
    assert set(counts) <= set(distribution), "an output torchvision's policy cannot make"
    expected = {key: n * p for key, p in distribution.items()}
    common = [key for key, e in expected.items() if e >= 5]  # the rest pooled into one class
    rare_expected = n - sum(expected[key] for key in common)
    rare_counted = n - sum(counts[key] for key in common)
    chi2 = sum((counts[key] - expected[key]) ** 2 / expected[key] for key in common)
    if rare_expected >= 1:
        chi2 += (rare_counted - rare_expected) ** 2 / rare_expected
    dof = len(common) - (rare_expected < 1)
    assert chi2 <= dof + 5 * math.sqrt(2 * dof), (chi2, dof)


# --- reproducibility, shapes, devices ---------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 8, 8), (3, 32, 32)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("policy", POLICIES)
def test_same_seed_same_batch_other_seed_other_batch(policy: str, shape: tuple[int, int, int]) -> None:
    images = sample_images(64, shape, seed=4)
    made = POLICIES[policy]()
    first = made(images, torch.Generator().manual_seed(5))
    assert first.dtype == torch.uint8 and first.shape == images.shape
    assert torch.equal(first, POLICIES[policy]()(images, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, made(images, torch.Generator().manual_seed(6)))
    assert images.equal(sample_images(64, shape, seed=4)), "the input is left as it was"


def test_policies_refuse_what_they_cannot_augment() -> None:
    generator = torch.Generator()
    with pytest.raises(TypeError, match="needs uint8 images"):
        TrivialAugmentWide()(torch.zeros(2, 3, 8, 8), generator)
    with pytest.raises(TypeError, match="needs uint8 images"):
        TrivialAugmentWide()(torch.zeros(2, 4, 8, 8, dtype=torch.uint8), generator)
    assert policy_transform(policy="none") is None
    assert repr(policy_transform(policy="autoaugment", autoaugment_policy="svhn")) == "AutoAugment('svhn')"
    assert repr(policy_transform(policy="randaugment", num_ops=3, magnitude=5)) == "RandAugment(num_ops=3, magnitude=5)"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("policy", POLICIES)
def test_cuda_gives_the_cpu_batch_without_a_host_sync(policy: str) -> None:
    for shape in [(1, 8, 8), (3, 32, 32), (3, 20, 33), (3, 224, 224)]:
        images = sample_images(256, shape, seed=7)
        on_cpu = POLICIES[policy]()(images, torch.Generator().manual_seed(8))
        made, on_device = POLICIES[policy](), images.cuda()
        made(on_device, torch.Generator().manual_seed(0))  # first call: caches, pinned memory
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # any host sync inside the policy raises
        try:
            on_cuda = made(on_device, torch.Generator().manual_seed(8))
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.equal(on_cuda.cpu(), on_cpu), (policy, shape)


# --- training -------------------------------------------------------------------------------------


def test_the_trainer_trains_with_each_policy() -> None:
    config = TrainConfig(epochs=2, batch_size=128, threads=1)
    baseline = run_trial(resolve_values({}, "test"), config)
    for values in ({"augment.policy": "trivialaugment"},
                   {"augment.policy": "randaugment", "augment.num_ops": 2, "augment.magnitude": 9},
                   {"augment.policy": "autoaugment", "augment.autoaugment_policy": "svhn"}):
        result = run_trial(resolve_values(values, "test"), config)
        assert result.outcome == "finished" and result.epochs_run == 2, values
        assert result.val_accuracy > 0.5, (values, result.val_accuracy)
        # the same seed with the policy trains on other images than without it
        assert result.history[0].train_loss != baseline.history[0].train_loss, values
