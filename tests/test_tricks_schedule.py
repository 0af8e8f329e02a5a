"""The learning-rate schedule (tricks/schedule.py): warmup then cosine, linear or step, against the formula."""

import pytest
import torch
from torch import nn

from autotrick.tricks.schedule import build_scheduler, lr_factor

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
