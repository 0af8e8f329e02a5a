"""Mixup and CutMix (tricks/mixing.py): the convex combination, the pasted box, the mixed targets."""

import pytest
import torch
from torch import Tensor

from autotrick.tricks.mixing import mix_batch
from autotrick.tricks.smoothing import soft_targets


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
