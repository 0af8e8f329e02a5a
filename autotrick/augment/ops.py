"""The augmentation ops on uint8 batches (N, C, H, W), C = 1 or 3, each image with its own magnitude.

Each op is torchvision's v2 functional op (`torchvision.transforms.v2.functional`, 0.29) rewritten
for a magnitude per image: the same float32 steps in the same order, so that an image comes out
bit for bit as torchvision makes it (tests/test_augment.py compares every op). `magnitude` is a
float32 tensor (N,) on the images' device, in torchvision's signed units (a colour factor is
1 + m); the geometric ops are inverse affine matrices (N, 2, 3), built here in float64 from the
magnitudes the way torchvision builds its own, and applied by one `warp` of the whole batch.

Everything runs on the batch's device with no host sync: no `.item()`, no branch on a value.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _per_image(values: Tensor) -> Tensor:
    """(N,) -> (N, 1, 1, 1), to broadcast over each image."""
    return values.view(-1, 1, 1, 1)


# --- geometric ops: an inverse affine matrix per image, one warp for the batch --------------------


def inverse_affine_matrix(*, angle: Tensor | float = 0.0, translate: tuple[Tensor | float, Tensor | float] = (0.0, 0.0),
                          shear: tuple[Tensor | float, Tensor | float] = (0.0, 0.0),
                          center: tuple[float, float] = (0.0, 0.0)) -> Tensor:
    """torchvision's `_get_inverse_affine_matrix` at scale 1, per image, in float64: (N, 2, 3).

    Maps an output pixel to where it reads from, in pixels about the image center: with
    a = cos(r − sy)/cos(sy), b = −(a·tan(sx) + sin(r)), c = sin(r − sy)/cos(sy), d = cos(r) − c·tan(sx)
    (r the angle, sx and sy the shears, in radians), M⁻¹ = [[d, −b, ·], [−c, a, ·]], its last column
    cx − M⁻¹·(cx + tx, cy + ty): the rotation-shear about `center`, then the translation, undone.
    """
    def radians(degrees: Tensor | float) -> Tensor:
        return torch.as_tensor(degrees, dtype=torch.float64) * (math.pi / 180.0)

    rot, sx, sy = radians(angle), radians(shear[0]), radians(shear[1])
    cx, cy = center
    cx_plus_tx = torch.as_tensor(translate[0], dtype=torch.float64) + cx
    cy_plus_ty = torch.as_tensor(translate[1], dtype=torch.float64) + cy
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -(a * torch.tan(sx) + torch.sin(rot))
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = torch.cos(rot) - c * torch.tan(sx)
    m0, m1, m3, m4 = d, -b, -c, a
    m2 = cx - m0 * cx_plus_tx - m1 * cy_plus_ty
    m5 = cy - m3 * cx_plus_tx - m4 * cy_plus_ty
    return torch.stack(torch.broadcast_tensors(m0, m1, m2, m3, m4, m5), dim=-1).view(-1, 2, 3)


def shear_x_matrix(magnitude: Tensor, height: int, width: int) -> Tensor:
    """x reads from x + m·y, about the top-left corner: torchvision's
    affine(shear=(degrees(atan m), 0), center=(0, 0))."""
    return inverse_affine_matrix(shear=(_atan_degrees(magnitude), 0.0), center=(-0.5 * width, -0.5 * height))


def shear_y_matrix(magnitude: Tensor, height: int, width: int) -> Tensor:
    """y reads from y + m·x, about the top-left corner: affine(shear=(0, degrees(atan m)), center=(0, 0))."""
    return inverse_affine_matrix(shear=(0.0, _atan_degrees(magnitude)), center=(-0.5 * width, -0.5 * height))


def _atan_degrees(magnitude: Tensor) -> Tensor:
    # torchvision shears by math.degrees(math.atan(m)), turned back into radians by the matrix.
    return magnitude.to(torch.float64).atan() * (180.0 / math.pi)


def translate_x_matrix(magnitude: Tensor, height: int, width: int) -> Tensor:
    """Shift right by int(m) pixels (truncated toward zero, as torchvision's `int(magnitude)`)."""
    return inverse_affine_matrix(translate=(magnitude.to(torch.float64).trunc(), 0.0))


def translate_y_matrix(magnitude: Tensor, height: int, width: int) -> Tensor:
    """Shift down by int(m) pixels."""
    return inverse_affine_matrix(translate=(0.0, magnitude.to(torch.float64).trunc()))


def rotate_matrix(magnitude: Tensor, height: int, width: int) -> Tensor:
    """Rotate m degrees counter-clockwise about the image center: torchvision's rotate, which takes
    m mod 360 and builds the affine matrix of −m."""
    return inverse_affine_matrix(angle=-torch.remainder(magnitude.to(torch.float64), 360.0))


def warp(images: Tensor, matrices: Tensor) -> Tensor:
    """Each image through its own inverse affine matrix (N, 2, 3): nearest neighbour, fill 0."""
    return remap(images, source_index(matrices, *images.shape[-2:]))


def source_index(matrices: Tensor, height: int, width: int) -> Tensor:
    """For inverse affine matrices (N, 2, 3): the pixel each output pixel reads, as an int64 index
    (N, H·W) into the image with a zero border of 1 pixel around it ((H + 2)·(W + 2) pixels).

    torchvision's `_affine_grid` and `grid_sample` (nearest, zero padding, align_corners=False), as
    elementwise float32 steps: output pixel (x, y) about the center reads the normalized point
    g = (x, y, 1)·(M⁻¹ / (W/2, H/2))ᵀ, that is pixel round(((g + 1)·size − 1) / 2), ties to even.
    Separate elementwise ops round the same way on every device (a matrix product or grid_sample
    need not). (2 of 17 million pixels differed from torchvision in the tests of 224 x 224 and
    smaller images: ties at exactly half a pixel, which torchvision's matrix product can round
    either way.)
    """
    n, device = len(matrices), matrices.device
    theta = matrices.to(torch.float32)
    xs, ys = _pixel_centers(width, device).view(1, 1, width), _pixel_centers(height, device).view(1, height, 1)

    def source(row: Tensor, size: int) -> Tensor:  # row (N, 3) of the matrix -> pixel read (N, H, W)
        a, b, t = (v.view(n, 1, 1) for v in (row / (0.5 * size)).unbind(1))  # normalized, as torchvision
        grid = xs * a + ys * b + t
        return grid.add_(1).mul_(size).sub_(1).div_(2).round_()

    # Clamped to one pixel outside, a read off the image lands on the zero border.
    col, row = source(theta[:, 0], width).clamp_(-1, width), source(theta[:, 1], height).clamp_(-1, height)
    # the flat index in float32 (exact for whole numbers below 2^24), converted to int64 once
    return row.add_(1).mul_(width + 2).add_(col).add_(1).long().view(n, -1)


def remap(images: Tensor, index: Tensor) -> Tensor:
    """Output pixel p of image i is pixel index[i, p] of image i with a zero border around it (see
    source_index): one gather of uint8 pixels."""
    n, c, h, w = images.shape
    bordered = F.pad(images, (1, 1, 1, 1)).view(n, c, -1)
    return bordered.gather(2, index.view(n, 1, h * w).expand(n, c, h * w)).view(n, c, h, w)


@functools.lru_cache(maxsize=32)
def _pixel_centers(size: int, device: torch.device) -> Tensor:
    """(1 − size)/2 ... (size − 1)/2: pixel centers about the image center, as torchvision's linspace."""
    return torch.linspace((1.0 - size) * 0.5, (size - 1.0) * 0.5, steps=size, device=device)


# --- colour ops: the pointwise ones as a look-up table per image ---------------------------------------


def brightness(images: Tensor, magnitude: Tensor) -> Tensor:
    """v·(1 + m), clamped to 0..255 and truncated (adjust_brightness)."""
    return lookup(images, (_levels(images.device) * (1 + magnitude).view(-1, 1)).clamp_(0, 255))


def color(images: Tensor, magnitude: Tensor) -> Tensor:
    """Saturation: blend(x, floor(grey(x)), 1 + m) (adjust_saturation); a grey image is left as is."""
    if images.shape[1] == 1:
        return images
    return _blend(images.float(), _grey(images).floor_(), magnitude).to(torch.uint8)


def contrast(images: Tensor, magnitude: Tensor) -> Tensor:
    """blend(v, mean of floor(grey(x)) over the image, 1 + m) (adjust_contrast; a grey image is its own grey)."""
    grey = _grey(images).floor_() if images.shape[1] == 3 else images.float()
    # The float64 sum of whole numbers is exact, so the mean is the same in any summation order
    # (torchvision's float32 sum, then / H·W, is exact too below 2^24 / 255 pixels: 256 x 256).
    mean = grey.sum(dim=(1, 2, 3), dtype=torch.float64).float() / grey.shape[-2:].numel()
    return lookup(images, _blend(_levels(images.device), mean.view(-1, 1), magnitude.view(-1, 1)))


def sharpness(images: Tensor, magnitude: Tensor) -> Tensor:
    """Inner pixels: blend(x, blurred, 1 + m) with blurred = round(x * [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13);
    the border, and images 2 pixels or less across, are left as is (adjust_sharpness)."""
    h, w = images.shape[-2:]
    if h <= 2 or w <= 2:
        return images
    x = images.float()
    inner = x[..., 1:-1, 1:-1]
    rows = x[..., :-2] + x[..., 1:-1] + x[..., 2:]
    box = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]  # 3 x 3 sums: whole numbers, exact
    # torchvision convolves with float32 weights 1/13 and 5/13, then rounds: a whole number / 13
    # is never within 1/26 of a tie, so rounding the exact quotient gives the same number
    blurred = box.add_(inner, alpha=4).div_(13).round_()
    out = images.clone()
    # torchvision: inner + (1 − (1 + m))·(blurred − inner), one fused multiply-add
    sharpened = _add_scaled(inner, blurred.sub_(inner), -_per_image(magnitude))
    out[..., 1:-1, 1:-1] = sharpened.clamp_(0, 255).to(torch.uint8)
    return out


def _grey(images: Tensor) -> Tensor:
    """0.2989 r + 0.587 g + 0.114 b in float32, in torchvision's steps (rgb_to_grayscale): (N, 1, H, W)."""
    r, g, b = (channel.float() for channel in images.unbind(1))
    return r.mul_(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1)


def _blend(x: Tensor, other: Tensor, magnitude: Tensor) -> Tensor:
    """torchvision's _blend(x, other, ratio = 1 + m) = x·ratio + other·(1 − ratio), clamped to 0..255
    (float32; a uint8 conversion then truncates); m per image."""
    factor = magnitude.view(-1, *[1] * (x.dim() - 1))
    return _add_scaled(x.mul(1 + factor), other, -factor).clamp_(0, 255)


def _add_scaled(x: Tensor, y: Tensor, factor: Tensor) -> Tensor:
    """x + y·factor rounded once to float32: torchvision's x.add_(y, alpha=factor), a fused
    multiply-add, with a factor per image. addcmul is fused on the CPU but not on CUDA, so this
    uses float64: it holds x + y·factor exactly when y is a whole number (saturation, sharpness),
    and for contrast's float32 mean it is off by less than a float64 rounding, which can only
    matter on an exact float32 tie. One rounding to float32 then gives the same number on every device."""
    return x.double().addcmul_(y.double(), factor.double()).float()


def posterize(images: Tensor, bits: Tensor) -> Tensor:
    """Keep the top `bits` bits of each value: x AND (255 << (8 − bits)) (posterize; 8 keeps all)."""
    mask = (255 << (8 - bits.to(torch.int32))) & 255
    return images & _per_image(mask.to(torch.uint8))


def solarize(images: Tensor, magnitude: Tensor) -> Tensor:
    """255 − v for every value v >= 255·m, compared in float32 (solarize with threshold 255·m;
    m = 1 still inverts 255)."""
    levels = _levels(images.device)
    return lookup(images, torch.where(levels >= 255 * magnitude.view(-1, 1), 255 - levels, levels))


def autocontrast(images: Tensor) -> Tensor:
    """Per image and channel: (v − min)·255/(max − min), clamped, truncated; a flat channel as is."""
    low = images.amin(dim=(-2, -1)).float().unsqueeze(-1)  # (N, C, 1)
    high = images.amax(dim=(-2, -1)).float().unsqueeze(-1)
    flat = high == low
    inv_scale = (high - low).mul_(1.0 / 255.0).masked_fill_(flat, 1.0)  # as torchvision: one multiply
    return lookup(images, (_levels(images.device) - low.masked_fill_(flat, 0.0)).div_(inv_scale).clamp_(0, 255))


def equalize(images: Tensor) -> Tensor:
    """Histogram equalization per image and channel, with PIL's look-up table (equalize):
    step = (pixels − count of the largest value) // 255, lut[0] = 0,
    lut[v] = min((cumulative_count[v − 1] + step // 2) // step, 255); a channel with step 0 is left as is.
    """
    n, c, h, w = images.shape
    values = images.reshape(n * c, h * w).long()
    hist = torch.zeros(n * c, 256, dtype=torch.int32, device=images.device)
    hist.scatter_add_(1, values, torch.ones(1, dtype=torch.int32, device=images.device).expand_as(values))
    cumulative = hist.cumsum(1)
    largest = cumulative.argmax(1, keepdim=True)  # the first bin reaching the total: the largest value
    step = (h * w - hist.gather(1, largest)).div_(255, rounding_mode="floor")
    table = (cumulative[:, :-1] + step // 2).div_(step.clamp(min=1), rounding_mode="floor").clamp_(0, 255)
    table = torch.cat([torch.zeros_like(table[:, :1]), table], dim=1)
    table = torch.where(step != 0, table, torch.arange(256, device=images.device)).to(torch.uint8)
    return table.gather(1, values).view(n, c, h, w)


def invert(images: Tensor) -> Tensor:
    """255 − x."""
    return images.bitwise_not()


def lookup(images: Tensor, table: Tensor) -> Tensor:
    """Each value v of image i (channel c) replaced by table[i, v] ((N, 256)) or table[i, c, v] ((N, C, 256)),
    truncated to uint8: one gather, whatever a pointwise op computed on the 256 levels."""
    n, c, h, w = images.shape
    table = table.to(torch.uint8)
    table = table.unsqueeze(1).expand(n, c, 256) if table.dim() == 2 else table
    return table.gather(2, images.reshape(n, c, h * w).long()).view(n, c, h, w)


@functools.lru_cache(maxsize=8)
def _levels(device: torch.device) -> Tensor:
    """0..255 as float32 (1, 256): the values a pointwise op is computed on."""
    return torch.arange(256, dtype=torch.float32, device=device).unsqueeze(0)
