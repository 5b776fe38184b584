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


def d4_views(x: torch.Tensor) -> torch.Tensor:
    """The 8 symmetries of the square of every image, stacked view-major: ``(8 * N, C, H, W)``.

    View ``g`` of image ``i`` is row ``g * N + i`` (same ``g`` numbering as :func:`dihedral`); used for
    test-time augmentation, whose probabilities are the mean over the 8 views.
    """
    views = []
    for g in range(8):
        v = torch.rot90(x, g % 4, dims=(-2, -1))
        views.append(torch.flip(v, dims=(-1,)) if g >= 4 else v)
    return torch.cat(views)


def random_crop_resize(x: torch.Tensor, size: int, min_scale: float, generator: torch.Generator) -> torch.Tensor:
    """Random square crops covering ``min_scale..1`` of the area, resized to ``size`` (one grid_sample)."""
    n = x.shape[0]
    side = torch.empty(n, device=x.device).uniform_(min_scale ** 0.5, 1.0, generator=generator)
    shift = (torch.rand(n, 2, device=x.device, generator=generator) * 2 - 1) * (1 - side).unsqueeze(1)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = side
    theta[:, 1, 1] = side
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def color_jitter(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Per-sample brightness, contrast and saturation factors in ``1 ± strength`` (x in [0, 1])."""
    n = x.shape[0]

    def factors() -> torch.Tensor:
        f = torch.empty(n, 1, 1, 1, device=x.device).uniform_(1 - strength, 1 + strength, generator=generator)
        return f.to(x.dtype)

    x = x * factors()
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - gray.mean(dim=(2, 3), keepdim=True)) * factors() + gray.mean(dim=(2, 3), keepdim=True)
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = gray + (x - gray) * factors()
    return x.clamp_(0.0, 1.0)


def augment(images: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float],
            generator: torch.Generator, crop_scale: float = 0.8, jitter: float = 0.1,
            memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """Training view of a uint8 batch: D4 symmetry, random crop, colour jitter, resize, normalise."""
    x = images.float().div_(255.0)
    k = torch.randint(0, 8, (x.shape[0],), device=x.device, generator=generator)
    x = dihedral(x, k)
    if crop_scale < 1.0:
        x = random_crop_resize(x, size, crop_scale, generator)
    elif x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if jitter > 0:
        x = color_jitter(x, jitter, generator)
    return normalize(x, mean, std).contiguous(memory_format=memory_format)


def make_generator(seed: int, device: Optional[torch.device] = None) -> torch.Generator:
    gen = torch.Generator(device=device or "cpu")
    gen.manual_seed(seed)
    return gen
