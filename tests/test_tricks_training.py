"""The training-side tricks against their formulas, with real torch (nothing mocked)."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from autotrick.apply import apply_tricks
from autotrick.tricks import precision
from autotrick.tricks.augment import policy_transform
from autotrick.tricks.clipping import clip_gradients
from autotrick.tricks.early_stop import EarlyStopper
from autotrick.tricks.mixing import mix_batch
from autotrick.tricks.optim import OPTIMIZERS, build_optimizer, l1_penalty
from autotrick.tricks.schedule import build_scheduler, lr_factor
from autotrick.tricks.smoothing import soft_cross_entropy, soft_targets

# --- label smoothing -----------------------------------------------------------------------------


def test_soft_targets_and_loss_by_hand() -> None:
    # K = 2, eps = 0.2: targets (0.1, 0.9); logits (0, ln 3) give softmax (1/4, 3/4).
    targets = soft_targets(torch.tensor([1]), num_classes=2, eps=0.2)
    assert targets.dtype == torch.float32
    assert targets[0].tolist() == pytest.approx([0.1, 0.9])
    loss = soft_cross_entropy(torch.tensor([[0.0, math.log(3)]]), targets)
    assert loss.item() == pytest.approx(-(0.1 * math.log(1 / 4) + 0.9 * math.log(3 / 4)))


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_smoothed_loss_equals_torch_label_smoothing(eps: float) -> None:
    logits, labels = torch.randn(16, 10, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 10
    expected = F.cross_entropy(logits, labels, label_smoothing=eps)
    assert soft_cross_entropy(logits, soft_targets(labels, 10, eps)).item() == pytest.approx(expected.item())


def test_smoothed_loss_is_float32_for_bf16_logits() -> None:
    logits = torch.randn(8, 10, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    targets = soft_targets(torch.arange(8), 10, 0.1)
    loss = soft_cross_entropy(logits, targets)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(soft_cross_entropy(logits.float(), targets).item())


# --- learning-rate schedule ----------------------------------------------------------------------

PEAK = 0.1
# 12 epochs of 10 steps, 2 of them warmup (20 steps): cosine/linear then run over the remaining 100.
RUN = {"steps_per_epoch": 10, "epochs": 12, "warmup_epochs": 2.0}
WARMUP = {0: PEAK * 1 / 20, 9: PEAK * 10 / 20, 19: PEAK}  # (step + 1) / warmup_steps


def lrs(steps: list[int], **schedule: object) -> list[float]:
    return [PEAK * lr_factor(s, **RUN, **schedule) for s in steps]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        # eta_min = 0.01; the cosine midpoint (step 70) is halfway: 0.01 + 0.09 / 2; at T it is eta_min.
        ({"name": "cosine", "min_lr_ratio": 0.1}, {20: PEAK, 70: 0.055, 120: 0.01, 150: 0.01}),
        # t_max 5 epochs: the cosine ends at step 70 and stays at eta_min for the 5 epochs left.
        ({"name": "cosine", "min_lr_ratio": 0.1, "t_max": 5}, {45: 0.055, 70: 0.01, 100: 0.01, 119: 0.01}),
        ({"name": "linear", "min_lr_ratio": 0.1}, {20: PEAK, 45: 0.1 - 0.09 / 4, 70: 0.055, 120: 0.01}),
        ({"name": "linear"}, {70: 0.05, 120: 0.0}),
        # step: x gamma every 3 epochs (30 steps) counted from the end of warmup.
        ({"name": "step", "step_epochs": 3, "gamma": 0.5}, {20: PEAK, 49: PEAK, 50: 0.05, 80: 0.025}),
        ({"name": "constant"}, {20: PEAK, 119: PEAK}),
    ],
)
def test_lr_factor_follows_the_formula(schedule: dict[str, object], expected: dict[int, float]) -> None:
    points = {**WARMUP, **expected}
    assert lrs(list(points), **schedule) == pytest.approx(list(points.values()))


def test_no_warmup_starts_at_the_peak() -> None:
    assert lr_factor(0, steps_per_epoch=10, epochs=3, name="cosine") == 1.0


def test_scheduler_drives_a_real_optimizer() -> None:
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=PEAK)
    scheduler = build_scheduler(optimizer, **RUN, name="cosine", min_lr_ratio=0.1)
    seen = []
    for _ in range(121):
        seen.append(optimizer.param_groups[0]["lr"])  # the lr this step's update uses
        model(torch.ones(1, 2)).sum().backward()
        optimizer.step()
        scheduler.step()
    expected = {**WARMUP, 20: PEAK, 70: 0.055, 120: 0.01}
    assert [seen[s] for s in expected] == pytest.approx(list(expected.values()))


# --- mixup / cutmix ------------------------------------------------------------------------------


def identity_targets(n: int) -> Tensor:
    """Row i is one_hot(i), so a mixed row tells its partner and lam."""
    return soft_targets(torch.arange(n), n, 0.0)


def partners(mixed: Tensor) -> tuple[list[int], float]:
    """The partner of each example and the lam of the batch, read off identity targets mixed."""
    pairs = [int(row.clone().index_fill_(0, torch.tensor(i), 0).argmax()) if row[i] < 1 else i
             for i, row in enumerate(mixed)]
    lams = {round(float(row[i]), 5) for i, row in enumerate(mixed) if pairs[i] != i}
    assert len(lams) == 1, "one lam per batch"
    return pairs, lams.pop()


def test_mixup_is_the_convex_combination() -> None:
    x, y = torch.randn(8, 3, 4, 4), identity_targets(8)
    mixed_x, mixed_y = mix_batch(x, y, mixup_alpha=0.4, cutmix_alpha=0.0,
                                 generator=torch.Generator().manual_seed(0))
    pairs, lam = partners(mixed_y)
    assert 0 < lam < 1
    torch.testing.assert_close(mixed_x, lam * x + (1 - lam) * x[pairs])


def test_mixup_works_on_any_shape() -> None:
    x, y = torch.randn(8, 5), identity_targets(8)
    mixed_x, mixed_y = mix_batch(x, y, mixup_alpha=1.0, cutmix_alpha=0.0,
                                 generator=torch.Generator().manual_seed(0))
    pairs, lam = partners(mixed_y)
    torch.testing.assert_close(mixed_x, lam * x + (1 - lam) * x[pairs])


@pytest.mark.parametrize("seed", range(5))
def test_cutmix_pastes_one_box_of_area_one_minus_lam(seed: int) -> None:
    x, y = torch.randn(8, 1, 8, 8), identity_targets(8)
    mixed_x, mixed_y = mix_batch(x, y, mixup_alpha=0.0, cutmix_alpha=1.0,
                                 generator=torch.Generator().manual_seed(seed))
    pairs, lam = partners(mixed_y)
    changed = (mixed_x != x).any(dim=1)  # (N, H, W): where the partner's pixels were pasted
    box = changed[[i for i in range(8) if pairs[i] != i]]
    assert (box == box[0]).all(), "the same box in every image"
    rows, cols = box[0].any(dim=1).nonzero(), box[0].any(dim=0).nonzero()
    area = int(box[0].sum())
    if area:  # the box is the full rectangle spanned by its changed rows and columns
        assert area == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert lam == pytest.approx(1 - area / 64, abs=1e-5)
    torch.testing.assert_close(mixed_x[:, :, box[0]], x[pairs][:, :, box[0]])


def test_both_alphas_pick_mixup_or_cutmix_per_batch() -> None:
    x, y = torch.randn(8, 3, 8, 8), identity_targets(8)
    kinds = set()
    for seed in range(20):
        mixed_x, _ = mix_batch(x, y, mixup_alpha=1.0, cutmix_alpha=1.0,
                               generator=torch.Generator().manual_seed(seed))
        # cutmix only moves pixels around, mixup blends them into new values
        kinds.add("cutmix" if torch.isin(mixed_x, x).all() else "mixup")
    assert kinds == {"mixup", "cutmix"}


@pytest.mark.parametrize(("mixup_alpha", "cutmix_alpha"), [(0.4, 0.0), (0.0, 1.0), (1.0, 1.0)])
def test_mixed_smoothed_targets_sum_to_one_and_repeat_with_the_seed(mixup_alpha: float,
                                                                    cutmix_alpha: float) -> None:
    x, y = torch.rand(16, 3, 32, 32), soft_targets(torch.arange(16) % 10, 10, 0.1)
    first, again = (mix_batch(x, y, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
                              generator=torch.Generator().manual_seed(7)) for _ in range(2))
    torch.testing.assert_close(first[1].sum(dim=1), torch.ones(16))
    torch.testing.assert_close(first, again, rtol=0, atol=0)


def test_both_alphas_zero_is_the_identity() -> None:
    x, y = torch.rand(4, 3, 8, 8), identity_targets(4)
    mixed_x, mixed_y = mix_batch(x, y, mixup_alpha=0.0, cutmix_alpha=0.0)
    assert mixed_x is x and mixed_y is y


# --- optimizer, weight decay, L1 -----------------------------------------------------------------


def small_convnet() -> nn.Sequential:
    frozen = nn.Linear(3, 3)
    frozen.requires_grad_(False)
    # LayerNorm over (C, H, W) has 3-d parameters: exempt for being a norm's, not for being 1-d.
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.LayerNorm([4, 6, 6]), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 3), frozen)


def ids(params: list[Tensor]) -> set[int]:
    return {id(p) for p in params}


def test_no_decay_bias_norm_groups() -> None:
    model = small_convnet()
    conv, bn, ln, linear = model[0], model[1], model[2], model[5]
    optimizer = build_optimizer(model, name="sgd", lr=0.1, weight_decay=0.01, no_decay_bias_norm=True)
    by_decay = {g["weight_decay"]: ids(g["params"]) for g in optimizer.param_groups}
    assert by_decay == {
        0.01: ids([conv.weight, linear.weight]),
        0.0: ids([conv.bias, bn.weight, bn.bias, ln.weight, ln.bias, linear.bias]),
    }


def test_without_the_exemption_every_trainable_parameter_decays() -> None:
    model = small_convnet()
    (group,) = build_optimizer(model, name="adamw", lr=1e-3, weight_decay=0.05).param_groups
    assert group["weight_decay"] == 0.05
    assert ids(group["params"]) == ids([p for p in model.parameters() if p.requires_grad])


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_builds_and_steps(name: str) -> None:
    torch.manual_seed(0)
    model = small_convnet()
    optimizer = build_optimizer(model, name=name, lr=0.01, weight_decay=1e-4, no_decay_bias_norm=True,
                                l1=1e-5)
    before = model[0].weight.detach().clone()
    model(torch.randn(4, 1, 8, 8)).square().mean().backward()
    optimizer.step()
    assert not torch.equal(model[0].weight, before)
    assert optimizer.param_groups[0]["lr"] == 0.01


def test_adam_is_l2_and_adamw_decoupled() -> None:
    model = nn.Linear(2, 2)
    assert type(build_optimizer(model, name="adam", lr=1e-3, weight_decay=0.1)) is torch.optim.Adam
    assert type(build_optimizer(model, name="adamw", lr=1e-3, weight_decay=0.1)) is torch.optim.AdamW


def test_nesterov_without_momentum_is_off() -> None:
    optimizer = build_optimizer(nn.Linear(2, 2), name="sgd", lr=0.1, momentum=0.0, nesterov=True)
    assert optimizer.param_groups[0]["nesterov"] is False
    optimizer = build_optimizer(nn.Linear(2, 2), name="sgd", lr=0.1, momentum=0.9, nesterov=True)
    assert optimizer.param_groups[0]["nesterov"] is True


def test_l1_penalty_is_l1_times_the_sum_of_absolute_weights() -> None:
    model = small_convnet()
    conv, linear, frozen = model[0], model[5], model[6]
    expected = 1e-3 * sum(float(w.detach().abs().sum()) for w in (conv.weight, linear.weight, frozen.weight))
    penalty = l1_penalty(model, 1e-3)
    assert isinstance(penalty, Tensor) and penalty.item() == pytest.approx(expected, rel=1e-5)
    penalty.backward()
    torch.testing.assert_close(conv.weight.grad, 1e-3 * conv.weight.sign())
    assert l1_penalty(model, 0.0) == 0.0


# --- augmentation policies -----------------------------------------------------------------------

POLICIES = [{"policy": "autoaugment", "autoaugment_policy": p} for p in ("imagenet", "cifar10", "svhn")] + [
    {"policy": "randaugment", "num_ops": 2, "magnitude": 9},
    {"policy": "trivialaugment"},
]


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)], ids=["digits", "cifar"])
@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: "-".join(str(v) for v in p.values()))
def test_policy_runs_per_image_on_uint8(policy: dict[str, object], shape: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    images = image.expand(16, *shape).clone()  # one image 16 times: only the draws can tell them apart
    transform = policy_transform(**policy)  # type: ignore[arg-type]
    assert transform is not None
    out = transform(images, generator)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert (out != images).flatten(1).any(dim=1).sum() > 0, "some images changed"
    assert len({tuple(o.flatten().tolist()) for o in out}) > 1, "each image gets its own random op"


def test_no_policy_leaves_the_batch_alone() -> None:
    images = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    assert policy_transform(policy="none") is None
    setup = apply_tricks({"augment.policy": "none"}, nn.Linear(64, 10), num_classes=10, steps_per_epoch=1, epochs=1)
    assert setup.augment(images) is images


# --- precision, clipping, early stopping ---------------------------------------------------------


def test_half_precision_on_the_cpu_runs_fp32_and_warns_once() -> None:
    precision._warn_fallback.cache_clear()  # another test may have warned already in this process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # so that "once" is ours, not the warnings registry's
        assert [precision.resolve_precision("bf16", "cpu") for _ in range(3)] == ["fp32"] * 3
        assert precision.resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert [str(w.message) for w in caught] == ["precision bf16 needs CUDA; running fp32 on the CPU"]


def test_autocast_and_scaler_are_off_on_the_cpu() -> None:
    with precision.autocast("bf16", "cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert not precision.grad_scaler("fp16", "cpu").is_enabled()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_autocast_and_scaler_on_cuda() -> None:
    a = torch.ones(2, 2, device="cuda")
    for dtype, torch_dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with precision.autocast(dtype, "cuda"):
            assert (a @ a).dtype == torch_dtype
    assert precision.grad_scaler("fp16", "cuda").is_enabled()
    assert not precision.grad_scaler("bf16", "cuda").is_enabled()


def grad_norm(model: nn.Module) -> float:
    return float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()])))


def test_clipping_brings_the_norm_to_max_norm() -> None:
    model = nn.Linear(4, 3)
    (100 * model(torch.ones(2, 4))).sum().backward()
    before = grad_norm(model)
    assert before > 1.0
    assert float(clip_gradients(model, 1.0)) == pytest.approx(before, rel=1e-5)
    assert grad_norm(model) == pytest.approx(1.0, rel=1e-4)
    assert float(clip_gradients(model, 10.0)) == pytest.approx(1.0, rel=1e-4)  # below the cap: unchanged
    assert grad_norm(model) == pytest.approx(1.0, rel=1e-4)
    assert clip_gradients(model, None) is None


def test_early_stopper_stops_after_exactly_patience_epochs_without_improvement() -> None:
    stopper = EarlyStopper(patience=3)
    # 0.6 improves and resets the count; then 0.6 (a tie), 0.5, 0.55 are three epochs without improvement.
    decisions = [stopper.update(acc) for acc in (0.5, 0.4, 0.45, 0.6, 0.6, 0.5, 0.55)]
    assert decisions == [False, False, False, False, False, False, True]
    assert stopper.best == 0.6


def test_early_stopper_without_patience_never_stops() -> None:
    stopper = EarlyStopper(patience=None)
    assert not any(stopper.update(0.1) for _ in range(100))
