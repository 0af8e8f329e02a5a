"""The augmentation policies (tricks/augment.py): AutoAugment, RandAugment, TrivialAugment per image on uint8."""

import pytest
import torch
from torch import nn

from autotrick.apply import apply_tricks
from autotrick.tricks.augment import policy_transform

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
