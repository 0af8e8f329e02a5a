"""The data set's own batched crop, flip and normalization (autotrick.augment.basic), with real torch."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from autotrick.augment import basic_augment, normalize


def test_normalize_is_per_channel() -> None:
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    out = normalize(x, mean, std)
    expected = (x.float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert out.dtype == torch.float32 and torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(normalize(x[0], mean, std), expected[0], atol=1e-6)


def candidates(image: torch.Tensor, p: int, flip: bool) -> list[torch.Tensor]:
    """Every crop (and mirror) basic_augment may return for one image, computed one by one."""
    h, w = image.shape[1:]
    padded = F.pad(image, (p, p, p, p))
    crops = [padded[:, y:y + h, x:x + w] for y in range(2 * p + 1) for x in range(2 * p + 1)]
    return crops + [c.flip(-1) for c in crops] if flip else crops


@pytest.mark.parametrize(("p", "flip"), [(2, False), (0, True), (1, True)])
def test_basic_augment_returns_crops_and_flips_of_each_image(p: int, flip: bool) -> None:
    x = torch.randint(1, 256, (64, 2, 6, 7), dtype=torch.uint8)  # no zeros: padding is recognizable
    out = basic_augment(x, crop_padding=p, flip=flip, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    chosen = []
    for image, augmented in zip(x, out, strict=True):
        matches = [i for i, c in enumerate(candidates(image, p, flip)) if torch.equal(c, augmented)]
        assert matches, "not a crop or mirror of its input"
        chosen.append(matches[0])
    assert len(set(chosen)) > 1  # each image draws its own offset / flip
    assert sum(not torch.equal(a, b) for a, b in zip(x, out, strict=True)) > 32


def test_basic_augment_shifts_content_by_the_drawn_offset() -> None:
    # One bright pixel in the middle of an otherwise empty image: where it lands is the shift.
    x = torch.zeros(200, 1, 9, 9, dtype=torch.uint8)
    x[:, :, 4, 4] = 255
    out = basic_augment(x, crop_padding=2, flip=False, generator=torch.Generator().manual_seed(1))
    assert out.sum(dim=(1, 2, 3)).eq(255).all()  # never cropped away with p=2 < 4
    rows, cols = (out[:, 0] == 255).nonzero()[:, 1:].T
    assert set(rows.tolist()) == set(range(2, 7)) == set(cols.tolist())  # all 5 shifts in each direction
    again = basic_augment(x, crop_padding=2, flip=False, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)  # reproducible from the generator


def test_basic_augment_without_augmentation_returns_the_batch() -> None:
    x = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    assert basic_augment(x, crop_padding=0, flip=False, generator=torch.Generator()) is x


class CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.count += 1
        return func(*args, **(kwargs or {}))


def test_basic_augment_is_vectorized() -> None:
    # The same number of tensor ops for 4 images as for 512: no Python loop over images.
    counts = []
    for n in (4, 512):
        x = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
        with CountOps() as ops:
            basic_augment(x, crop_padding=4, flip=True, generator=torch.Generator().manual_seed(0))
        counts.append(ops.count)
    assert counts[0] == counts[1] < 40
