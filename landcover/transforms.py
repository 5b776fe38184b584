"""Batched tensor preprocessing and augmentation, shared by training, evaluation and the app.

Everything here works on whole ``(N, 3, H, W)`` batches on any device, so the same code runs on a
GPU in the training loop and on the CPU in the app. ``preprocess`` is *the* inference
preprocessing: evaluation and ``Predictor`` both call it, so what the model sees in the app is what
it saw when it was measured.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def preprocess(images: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float],
               memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """uint8 ``(N, 3, H, W)`` -> normalised float ``(N, 3, size, size)``.

    Resizes with antialiased bilinear interpolation (a no-op at the native size; EuroSAT is 64 px,
    so ``crop_pct`` is 1.0: the whole patch is used, nothing is cropped).
    """
    x = images.float().div_(255.0)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return normalize(x, mean, std).contiguous(memory_format=memory_format)


def resize_uint8(img: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``(3, H, W)`` -> uint8 ``(1, 3, size, size)`` (antialiased bilinear; a view-free no-op size is kept)."""
    if tuple(img.shape[-2:]) == (size, size):
        return img.unsqueeze(0)
    out = F.interpolate(img[None].float(), size=(size, size), mode="bilinear", antialias=True)
    return out.round().clamp(0, 255).to(torch.uint8)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


def dihedral(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Apply one of the 8 symmetries of the square to each image: ``k`` in 0..7 per sample.

    Nadir satellite patches have no "up", so all 8 rotations/flips are label-preserving. Each symmetry
    is a fixed pixel permutation (``rot90`` by ``k % 4``, then a horizontal flip when ``k >= 4``), so
    the whole batch is one ``gather``: no per-sample Python and no host-device sync (a boolean mask
    per group would sync the GPU 16 times per step).
    """
    n, c, h, w = x.shape
    if h != w:
        return _dihedral_masked(x, k)
    index = _dihedral_index(h, x.device)[k]  # (N, H*W): source pixel of each output pixel
    return x.reshape(n, c, h * w).gather(2, index.unsqueeze(1).expand(n, c, h * w)).view(n, c, h, w)


_DIHEDRAL_CACHE: dict[tuple[int, str], torch.Tensor] = {}


def _dihedral_index(size: int, device: torch.device) -> torch.Tensor:
    key = (size, str(device))
    if key not in _DIHEDRAL_CACHE:
        base = torch.arange(size * size).view(size, size)
        perms = []
        for g in range(8):
            part = torch.rot90(base, g % 4, dims=(-2, -1))
            perms.append((torch.flip(part, dims=(-1,)) if g >= 4 else part).reshape(-1))
        _DIHEDRAL_CACHE[key] = torch.stack(perms).to(device)
    return _DIHEDRAL_CACHE[key]


def _dihedral_masked(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    # Non-square images (only the 180-degree turns and flips keep their shape): the reference version.
    out = x.clone()
    for g in range(8):
        mask = k == g
        if not bool(mask.any()):
            continue
        part = torch.rot90(x[mask], g % 4, dims=(-2, -1))
        out[mask] = torch.flip(part, dims=(-1,)) if g >= 4 else part
    return out


# Test-time augmentation modes: which of the 8 symmetries (numbered as in :func:`dihedral`) are averaged.
# Each is a subgroup of D4, so the averaged prediction is itself invariant to those symmetries.
TTA_MODES: dict[str, tuple[int, ...]] = {
    "hflip": (0, 4),  # identity, horizontal flip
    "flips": (0, 2, 4, 6),  # identity, 180-degree turn, horizontal and vertical flips
    "d4": tuple(range(8)),  # all 4 rotations and their mirror images
}


def tta_views(x: torch.Tensor, mode: str = "d4") -> torch.Tensor:
    """The symmetries of ``mode`` (see ``TTA_MODES``) of every image, stacked view-major.

    View ``v`` of image ``i`` is row ``v * N + i``; the prediction is the mean probability over views.
    """
    if mode not in TTA_MODES:
        raise ValueError(f"Unknown test-time augmentation {mode!r}; expected one of {sorted(TTA_MODES)}.")
    views = []
    for g in TTA_MODES[mode]:
        v = torch.rot90(x, g % 4, dims=(-2, -1))
        views.append(torch.flip(v, dims=(-1,)) if g >= 4 else v)
    return torch.cat(views)


def resample_matrix(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int) -> torch.Tensor:
    """Antialiased bilinear weights ``(N, out_size, in_size)`` mapping ``[start, start + length)`` to ``out_size``.

    Row ``i`` holds the triangle-filter weights of output pixel ``i`` (its footprint widened by the
    scale when downsampling, as in ``F.interpolate(..., antialias=True)``; plain bilinear when
    upsampling), normalised to sum to 1 so pixels outside the image are ignored.
    """
    scale = (length / out_size).unsqueeze(1)  # (N, 1): input pixels per output pixel
    centre = start.unsqueeze(1) + (torch.arange(out_size, device=start.device) + 0.5) * scale - 0.5
    support = scale.clamp_min(1.0).unsqueeze(2)
    pixels = torch.arange(in_size, device=start.device, dtype=centre.dtype)
    # 1 - |pixel - centre| / support, clamped at 0, with in-place steps (this runs on every training batch).
    weights = (pixels - centre.unsqueeze(2)).abs_().div_(support).neg_().add_(1.0).clamp_min_(0.0)
    return weights.div_(weights.sum(2, keepdim=True))


def _crop_params(n: int, min_scale: float, device: torch.device, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Side (fraction of each axis) and start (fraction, x then y) of ``n`` random square crops."""
    side = torch.empty(n, device=device).uniform_(min_scale ** 0.5, 1.0, generator=generator)
    shift = (torch.rand(n, 2, device=device, generator=generator) * 2 - 1) * (1 - side).unsqueeze(1)
    return side, (shift - side.unsqueeze(1) + 1) / 2


def crop_resize_d4(images: torch.Tensor, size: int, min_scale: float, k: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
    """Random square crop (``min_scale..1`` of the area), D4 symmetry ``k`` and resize in one resampling.

    Crop + resize along one axis is a linear map, so a view is ``Wy @ src @ Wx^T`` (antialiased bilinear
    weights from :func:`resample_matrix`) with ``src`` the image or its transpose: two batched matmuls,
    about 2x faster than ``grid_sample`` on one CPU thread and exact at the borders. The flips reverse
    the rows of ``Wy``/``Wx``. ``k`` in 0..7 selects transpose (bit 0), vertical flip (bit 1) and horizontal
    flip (bit 2): the same 8 symmetries as :func:`dihedral`, numbered differently. Non-square images
    skip the transpose (4 symmetries). Returns floats in [0, 1].
    """
    n, _, h, w = images.shape
    side, start = _crop_params(n, min_scale, images.device, generator)
    transpose = (k & 1).bool() & (h == w)
    flip_y, flip_x = (k & 2).bool(), (k & 4).bool()
    wy = resample_matrix(start[:, 1] * h, side * h, h, size)
    wx = resample_matrix(start[:, 0] * w, side * w, w, size) / 255.0  # fold the uint8 scaling in
    wy = torch.where(flip_y.view(n, 1, 1), wy.flip(1), wy)
    wx = torch.where(flip_x.view(n, 1, 1), wx.flip(1), wx)
    src_t = images.transpose(-1, -2)  # src^T for each sample: the image itself where src is its transpose
    if h == w:
        src_t = torch.where(transpose.view(n, 1, 1, 1), images, src_t)
    src_t = src_t.to(torch.float32, memory_format=torch.contiguous_format)  # (N, 3, W, H) for the views below
    cols = torch.bmm(src_t.view(n, 3 * w, h), wy.transpose(1, 2))  # (Wy src)^T: (N, 3 * W, size)
    rows = cols.view(n, 3, w, size).transpose(-1, -2).contiguous()  # Wy src: (N, 3, size, W)
    return torch.bmm(rows.view(n, 3 * size, w), wx.transpose(1, 2)).view(n, 3, size, size)


def color_jitter(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Per-sample brightness, contrast and saturation factors in ``1 ± strength`` (x in [0, 1]).

    Brightness ``b x``, then contrast about the mean grey ``c x + (1 - c) m``, then saturation
    ``s x + (1 - s) grey(x)`` compose into one affine colour map ``A x + o`` per image (``grey`` weights
    sum to 1), applied as a single batched 3x3 matmul and clamped once at the end.
    """
    n, ch = x.shape[:2]
    if ch != 3:
        raise ValueError(f"Colour jitter expects RGB batches (N, 3, H, W); got {ch} channels.")
    b, c, s = (torch.empty(n, device=x.device).uniform_(1 - strength, 1 + strength, generator=generator)
               .to(x.dtype) for _ in range(3))
    grey = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype)
    mean_grey = b * (x.mean(dim=(2, 3)) @ grey)  # mean grey level after the brightness change
    eye = torch.eye(3, device=x.device, dtype=x.dtype)
    sat = s.view(n, 1, 1) * eye + (1 - s).view(n, 1, 1) * grey.view(1, 1, 3)  # rows: s e_i + (1 - s) grey
    colour = (b * c).view(n, 1, 1) * sat
    offset = ((1 - c) * mean_grey).view(n, 1, 1).expand(n, 3, 1)
    out = torch.baddbmm(offset, colour, x.reshape(n, 3, -1))
    return out.view_as(x).clamp_(0.0, 1.0)


def augment(images: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float],
            generator: torch.Generator, crop_scale: float = 0.8, jitter: float = 0.1,
            memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """Training view of a uint8 batch: D4 symmetry, random crop, resize, colour jitter, normalise.

    A few whole-batch passes, no per-sample Python (see :func:`crop_resize_d4`, :func:`color_jitter`).
    """
    k = torch.randint(0, 8, (images.shape[0],), device=images.device, generator=generator)
    if crop_scale >= 1.0 and tuple(images.shape[-2:]) == (size, size):
        x = dihedral(images.float().div_(255.0), k)
    else:
        x = crop_resize_d4(images, size, min(crop_scale, 1.0), k, generator)
    if jitter > 0:
        x = color_jitter(x, jitter, generator)
    return normalize(x, mean, std).contiguous(memory_format=memory_format)


def make_generator(seed: int, device: Optional[torch.device] = None) -> torch.Generator:
    gen = torch.Generator(device=device or "cpu")
    gen.manual_seed(seed)
    return gen
