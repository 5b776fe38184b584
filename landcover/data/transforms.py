"""Batched tensor preprocessing and augmentation, shared by training, evaluation and the app.

Everything here works on whole ``(N, 3, H, W)`` batches on any device, so the same code runs on a
GPU in the training loop and on the CPU in the app. ``preprocess`` is *the* inference
preprocessing: evaluation and ``Predictor`` both call it, so what the model sees in the app is what
it saw when it was measured.
"""

from __future__ import annotations

import ctypes
import io
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from landcover.core.config import TTA_MODES
from landcover.readers.imageio import decode_rgb8


def preprocess(images: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float],
               memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """uint8 ``(N, 3, H, W)`` -> normalised float ``(N, 3, size, size)``.

    Resizes with antialiased bilinear interpolation (a no-op at the native size; EuroSAT is 64 px,
    so ``crop_pct`` is 1.0: the whole patch is used, nothing is cropped).
    """
    if tuple(images.shape[-2:]) != (size, size):
        images = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True,
                               align_corners=False)
    return colour_normalise(images, mean, std, None, memory_format)


def resize_uint8(img: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``(3, H, W)`` -> uint8 ``(1, 3, size, size)`` (antialiased bilinear; a view-free no-op size is kept)."""
    if tuple(img.shape[-2:]) == (size, size):
        return img.unsqueeze(0)
    out = F.interpolate(img[None].float(), size=(size, size), mode="bilinear", antialias=True)
    return out.round().clamp(0, 255).to(torch.uint8)


# ---------------------------------------------------------------- symmetries, crops and training views

CROP_GROUPS = 4  # crop sizes per batch: each run of ~N/4 images (the loader shuffles) shares one size


@dataclass
class ViewParams:
    """The random parameters of one batch of training views: a few numbers per image, drawn on the host.

    Attributes:
        symmetry: ``(N,)`` D4 element per image: bit 0 transposes (square crops only), bit 1 flips
            vertically, bit 2 horizontally.
        corner: ``(N, 2)`` top-left pixel ``(y, x)`` of each image's crop.
        groups: ``(first, stop, crop_h, crop_w)`` per run of images that share one crop size.
        jitter: ``(N, 3)`` brightness, contrast and saturation factors, or None for no colour jitter.
        radiometry: per-image sensor/atmosphere/stretch changes (:class:`Radiometry`), or None.
    """

    symmetry: torch.Tensor
    corner: torch.Tensor
    groups: list[tuple[int, int, int, int]]
    jitter: Optional[torch.Tensor]
    radiometry: Optional["Radiometry"] = None

    def to(self, device: torch.device) -> "ViewParams":
        """The tensors on ``device`` (pinned host memory + non-blocking copies: no host-device sync)."""
        if torch.device(device).type == "cpu":
            return self

        pin = torch.device(device).type == "cuda"

        def move(t):
            return None if t is None else (t.pin_memory() if pin else t).to(device, non_blocking=True)

        radiometry = None if self.radiometry is None else Radiometry(
            *(move(t) for t in (self.radiometry.gamma, self.radiometry.matrix, self.radiometry.offset)))
        return ViewParams(move(self.symmetry), move(self.corner), self.groups, move(self.jitter), radiometry)


@dataclass
class Radiometry:
    """Per-image radiometric change ``y = M x^gamma + o`` on colours in [0, 1] (see :func:`draw_radiometry`).

    Attributes:
        gamma: ``(N,)`` exponents (1 = unchanged).
        matrix: ``(N, 3, 3)`` colour matrices (identity = unchanged).
        offset: ``(N, 3)`` colour offsets.
    """

    gamma: torch.Tensor
    matrix: torch.Tensor
    offset: torch.Tensor


# Ranges of the radiometric augmentation. They cover what separates EuroSAT's fixed L1C stretch from what users
# feed: another stretch or sensor gain (global x0.67..1.5, per band +-15 %), a gamma curve, haze (a blend towards
# bright, bluish path radiance) or its removal by atmospheric correction (L2A: darker, a negative offset), and hue or
# saturation shifts (turquoise coastal water, other colour pipelines).
RADIOMETRY_RANGES = {"gain": 1.5, "band_gain": 0.15, "offset": 0.04, "gamma": 1.4, "haze": 0.35,
                     "haze_probability": 0.5, "hue_degrees": 10.0, "saturation": 0.3}
_HAZE_COLOUR = (0.80, 0.83, 0.90)  # bright, slightly blue: scattered light adds most to the blue band


def _log_uniform(n: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    return torch.empty(n).uniform_(-math.log(ratio), math.log(ratio), generator=generator).exp()


def _hue_rotation(angle: torch.Tensor) -> torch.Tensor:
    """``(N, 3, 3)`` rotations of RGB about the grey axis (Rodrigues' formula): a hue shift that keeps greys."""
    k = torch.full((3,), 3 ** -0.5)
    cross = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    cos, sin = angle.cos().view(-1, 1, 1), angle.sin().view(-1, 1, 1)
    return cos * torch.eye(3) + sin * cross + (1 - cos) * torch.outer(k, k)


def draw_radiometry(n: int, probability: float, generator: torch.Generator,
                    ranges: Optional[dict] = None) -> Radiometry:
    """Random radiometric changes for ``n`` images; each image is changed with ``probability`` (else identity).

    In order, on colours in [0, 1]: a gamma curve, a hue rotation and saturation change, a global and per-band
    gain with a per-band offset, and (for some images) haze ``(1 - h) x + h * haze_colour``. Everything after the
    gamma is one affine map, so it folds into the normalisation matmul of :func:`colour_normalise`.
    """
    r = {**RADIOMETRY_RANGES, **(ranges or {})}
    active = (torch.rand(n, generator=generator) < probability).float()
    gamma = _log_uniform(n, r["gamma"], generator)
    hue = torch.empty(n).uniform_(-1, 1, generator=generator) * math.radians(r["hue_degrees"])
    saturation = torch.empty(n).uniform_(1 - r["saturation"], 1 + r["saturation"], generator=generator)
    gains = _log_uniform(n, r["gain"], generator).view(-1, 1) * \
        torch.empty(n, 3).uniform_(1 - r["band_gain"], 1 + r["band_gain"], generator=generator)
    offset = torch.empty(n, 3).uniform_(-r["offset"], r["offset"], generator=generator)
    hazy = (torch.rand(n, generator=generator) < r["haze_probability"]).float()
    haze = torch.empty(n).uniform_(0, r["haze"], generator=generator) * hazy
    grey = torch.tensor([0.299, 0.587, 0.114])
    sat = saturation.view(-1, 1, 1) * torch.eye(3) + (1 - saturation).view(-1, 1, 1) * grey.view(1, 1, 3)
    matrix = (1 - haze).view(-1, 1, 1) * gains.unsqueeze(2) * (sat @ _hue_rotation(hue))
    shift = (1 - haze).view(-1, 1) * offset + haze.view(-1, 1) * torch.tensor(_HAZE_COLOUR)
    # Inactive images get the identity: gamma 1, matrix I, offset 0.
    a = active.view(-1, 1, 1)
    return Radiometry(gamma=active * gamma + (1 - active), matrix=a * matrix + (1 - a) * torch.eye(3),
                      offset=active.view(-1, 1) * shift)


JPEG_QUALITY = (60, 95)  # quick-looks, browser exports and GIS "save as JPEG" sit in this range


def jpeg_recompress(images: torch.Tensor, probability: float, generator: torch.Generator,
                    quality: tuple[int, int] = JPEG_QUALITY) -> torch.Tensor:
    """Re-encode a share of a uint8 ``(N, 3, H, W)`` batch as JPEG (PIL defaults: 4:2:0 chroma) and decode it.

    PIL rather than kornia's differentiable JPEG: this is the real codec (chroma subsampling, quantisation tables)
    users' files went through, and it runs on the host either way.
    Users feed JPEG quick-looks and screenshots; EuroSAT's own patches are JPEGs of one quality, and a
    second compression alone cost the model without this augmentation 4 points on validation (q85: 0.961 ->
    0.920). The quality is drawn per image, uniform in ``quality``; only the chosen images leave the device.
    """
    chosen = (torch.rand(images.shape[0], generator=generator) < probability).nonzero().flatten().tolist()
    if not chosen:
        return images
    qualities = torch.randint(quality[0], quality[1] + 1, (len(chosen),), generator=generator).tolist()
    out = images.clone()
    host = images[chosen].permute(0, 2, 3, 1).cpu().numpy()
    for row, (index, q) in enumerate(zip(chosen, qualities)):
        buffer = io.BytesIO()
        Image.fromarray(host[row]).save(buffer, format="JPEG", quality=q)
        decoded = decode_rgb8(buffer.getvalue())
        out[index] = torch.from_numpy(decoded).permute(2, 0, 1).to(out.device)
    return out


@dataclass(frozen=True)
class InputSpec:
    """The model input a uint8 batch becomes: its side in px, normalisation and memory layout."""

    size: int
    mean: Sequence[float]
    std: Sequence[float]
    memory_format: torch.memory_format = torch.contiguous_format


@dataclass(frozen=True)
class ViewSpec:
    """How training views are drawn (the augmentation flags of ``TrainConfig``).

    ``crop_scale``: smallest kept share of the area; ``jitter``: colour jitter factors in ``1 ± jitter``;
    ``radiometric``: share of images also given a radiometric change (:func:`draw_radiometry`, with
    ``radiometry_ranges`` overriding entries of ``RADIOMETRY_RANGES``); ``groups``: crop sizes per batch.
    """

    crop_scale: float = 0.8
    jitter: float = 0.1
    radiometric: float = 0.0
    radiometry_ranges: Optional[dict] = None
    groups: int = CROP_GROUPS


def draw_view_params(n: int, height: int, width: int, generator: torch.Generator, view: ViewSpec = ViewSpec()
                     ) -> ViewParams:
    """Random D4 symmetries, square-ish crops of ``crop_scale..1`` of the area, and jitter factors in ``1 ± jitter``.

    The crop side is drawn per group of images (uniform in ``sqrt(crop_scale)..1`` of each axis, whole
    pixels like torchvision's ``RandomResizedCrop``), its position and everything else per image. Sizes
    are Python ints, so grouping costs no device sync; each image still sees the same distribution.
    """
    crop_scale, jitter, groups, radiometric = view.crop_scale, view.jitter, view.groups, view.radiometric
    if not 0.0 < crop_scale:
        raise ValueError(f"crop_scale must be in (0, 1] (fraction of the image area kept); got {crop_scale}.")
    square = height == width
    symmetry = torch.randint(0, 8, (n,), generator=generator) if square else \
        torch.randint(0, 4, (n,), generator=generator) * 2  # no transpose for non-square images
    low = min(crop_scale, 1.0) ** 0.5
    bounds = torch.linspace(0, n, max(1, min(groups, n)) + 1).round().long().tolist()
    sides = torch.empty(len(bounds) - 1).uniform_(low, 1.0, generator=generator).tolist()
    group_list, crop_h, crop_w = [], torch.empty(n, dtype=torch.long), torch.empty(n, dtype=torch.long)
    for first, stop, side in zip(bounds[:-1], bounds[1:], sides):
        ch = min(height, max(1, round(side * height)))
        cw = ch if square else min(width, max(1, round(side * width)))
        group_list.append((first, stop, ch, cw))
        crop_h[first:stop], crop_w[first:stop] = ch, cw
    slack = torch.stack([height - crop_h, width - crop_w], 1) + 1
    corner = (torch.rand(n, 2, generator=generator) * slack).long().clamp_max_(slack - 1)
    factors = torch.empty(n, 3).uniform_(1 - jitter, 1 + jitter, generator=generator) if jitter > 0 else None
    radiometry = draw_radiometry(n, radiometric, generator, view.radiometry_ranges) if radiometric > 0 else None
    return ViewParams(symmetry, corner, group_list, factors, radiometry)


_VIEW_TABLES: dict[tuple[int, int, int, str], torch.Tensor] = {}


def _view_table(crop_h: int, crop_w: int, width: int, device: torch.device) -> torch.Tensor:
    """``(8, crop_h * crop_w)``: for each symmetry, the source offset (``y * width + x`` from the crop
    corner) of every output pixel. Built once per crop size."""
    key = (crop_h, crop_w, width, str(device))
    if key not in _VIEW_TABLES:
        rows = torch.arange(crop_h).view(-1, 1).expand(crop_h, crop_w)
        cols = torch.arange(crop_w).view(1, -1).expand(crop_h, crop_w)
        tables = []
        for g in range(8):
            y, x = (cols, rows) if g & 1 else (rows, cols)  # odd g: transpose (square crops only)
            y = crop_h - 1 - y if g & 2 else y
            x = crop_w - 1 - x if g & 4 else x
            tables.append((y * width + x).reshape(-1))
        _VIEW_TABLES[key] = torch.stack(tables).to(device)
    return _VIEW_TABLES[key]


def tta_views(x: torch.Tensor, mode: str = "d4") -> torch.Tensor:
    """The symmetries of ``mode`` (see ``TTA_MODES``) of every square image, stacked view-major.

    The same pixel tables as the training views (:func:`_view_table`), so a symmetry code means the
    same thing in both. View ``v`` of image ``i`` is row ``v * N + i``; the prediction is the mean
    probability over views.
    """
    if mode not in TTA_MODES:
        raise ValueError(f"Unknown test-time augmentation {mode!r}; expected one of {sorted(TTA_MODES)}.")
    n, c, h, w = x.shape
    if h != w:
        raise ValueError(f"Test-time augmentation needs square inputs; got {h} x {w}.")
    table = _view_table(h, w, w, x.device)
    flat = x.reshape(n, c, h * w)
    return torch.cat([flat.index_select(2, table[g]) for g in TTA_MODES[mode].symmetries]).view(-1, c, h, w)


def crop_resize_d4(images: torch.Tensor, size: int, params: ViewParams,
                   keep_uint8: Optional[bool] = None) -> torch.Tensor:
    """Crop, D4 symmetry and resize of a uint8 batch: ``(N, C, H, W)`` -> ``(N, C, size, size)`` in 0..255.

    Crop and symmetry of each image are one gather (source offsets from :func:`_view_table`, shifted to
    the crop corner); each group of equal crop sizes is then one antialiased bilinear resize. On the
    CPU the resize stays in uint8 (torch's vectorised uint8 kernel, 3-10x faster than float here, rounding
    to whole levels) and the result is uint8; elsewhere (``keep_uint8`` False: CUDA's antialiased resize
    has no uint8 kernel) it runs in float and the result is float.
    """
    n, c, h, w = images.shape
    flat = images.reshape(n, c, h * w)
    offset = params.corner[:, 0] * w + params.corner[:, 1]
    on_cpu = images.device.type == "cpu"
    keep_uint8 = on_cpu if keep_uint8 is None else keep_uint8

    def crop(group: tuple[int, int, int, int]) -> torch.Tensor:
        first, stop, ch, cw = group
        index = _view_table(ch, cw, w, images.device).index_select(0, params.symmetry[first:stop])
        index.add_(offset[first:stop, None])
        # Written channels-last (N, H, W, C): the layout torch's uint8 resize kernel is ~2.5x faster on.
        out = torch.empty((stop - first, ch, cw, c), dtype=images.dtype, device=images.device)
        torch.gather(flat[first:stop], 2, index.unsqueeze(1).expand(-1, c, -1),
                     out=out.view(stop - first, ch * cw, c).permute(0, 2, 1))
        view = out.permute(0, 3, 1, 2)
        return view if keep_uint8 else view.float()

    def resize(view: torch.Tensor) -> torch.Tensor:
        if tuple(view.shape[-2:]) == (size, size):
            return view
        return F.interpolate(view, size=(size, size), mode="bilinear", antialias=True, align_corners=False)

    views = [crop(g) for g in params.groups]
    # The uint8 resize runs on one core per call, so on a multi-core CPU the groups are resized side by
    # side (torch releases the GIL inside the op); on a GPU the kernels are asynchronous anyway.
    threads = torch.get_num_threads() if on_cpu else 1
    views = list(_group_pool(threads).map(resize, views)) if threads > 1 and len(views) > 1 else \
        [resize(v) for v in views]
    return torch.cat(views) if views else images.new_empty((0, c, size, size))


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _group_pool(threads: int) -> ThreadPoolExecutor:
    key = (os.getpid(), threads)  # a forked child (DataLoader worker) must not reuse its parent's dead threads
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(threads, thread_name_prefix="landcover-augment")
    return _POOLS[key]


def jitter_map(factors: torch.Tensor, channel_means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Brightness, contrast and saturation as one affine colour map ``A x + o`` per image (x in [0, 1]).

    Brightness ``b x``, then contrast about the mean grey ``c x + (1 - c) m``, then saturation
    ``s x + (1 - s) grey(x)`` compose exactly (the ``grey`` weights sum to 1). Returns ``A`` ``(N, 3, 3)``
    and ``o`` ``(N, 3)``; ``channel_means`` ``(N, 3)`` are the images' mean R, G, B.
    """
    b, c, s = factors.unbind(1)
    grey = torch.tensor([0.299, 0.587, 0.114], device=factors.device, dtype=factors.dtype)
    mean_grey = b * (channel_means @ grey)  # mean grey level after the brightness change
    eye = torch.eye(3, device=factors.device, dtype=factors.dtype)
    saturation = s.view(-1, 1, 1) * eye + (1 - s).view(-1, 1, 1) * grey.view(1, 1, 3)
    return (b * c).view(-1, 1, 1) * saturation, ((1 - c) * mean_grey).unsqueeze(1).expand(-1, 3)


def colour_normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                     jitter: Optional[torch.Tensor] = None,
                     memory_format: torch.memory_format = torch.contiguous_format,
                     radiometry: Optional[Radiometry] = None) -> torch.Tensor:
    """0..255 RGB ``(N, 3, H, W)`` (uint8 or float) -> ``(x / 255 - mean) / std``, with optional colour changes.

    ``/ 255``, the radiometric change's affine part (:class:`Radiometry`; its gamma is applied first, the one
    non-linear step), the jitter map (:func:`jitter_map`, factors ``(N, 3)``) and the normalisation fold into
    one 3 x 3 matrix and offset per image: one batched matmul over the pixels, then the changed colours are
    clamped to the valid range (the bounds of [0, 1] after normalisation, channel by channel). Kornia's
    ColorJitter would run each change as its own pass over the pixels; folded here they cost one (the data path
    measured 11-15x the PIL/torchvision loader on a CPU, docs/performance.md).
    """
    n, ch, h, w = images.shape
    if ch != 3:
        raise ValueError(f"Expected RGB batches (N, 3, H, W); got {ch} channels.")
    x = images.to(torch.float32, memory_format=torch.contiguous_format).view(n, 3, h * w)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=x.device)
    inv_std = 1.0 / torch.as_tensor(std, dtype=torch.float32, device=x.device)
    scale = 255.0
    colour = torch.eye(3, device=x.device).expand(n, 3, 3)
    shift = torch.zeros(n, 3, device=x.device)
    if radiometry is not None:
        x = (x / 255.0).pow(radiometry.gamma.view(-1, 1, 1))
        scale, colour, shift = 1.0, radiometry.matrix.float(), radiometry.offset.float()
    if jitter is not None:  # jitter after the radiometric change: J (M x + o) + s
        means = torch.baddbmm(shift.unsqueeze(2), colour, x.mean(2, keepdim=True) / scale).squeeze(2)
        j_colour, j_shift = jitter_map(jitter.float(), means)
        colour, shift = j_colour @ colour, (j_colour @ shift.unsqueeze(2)).squeeze(2) + j_shift
    matrix = colour * (inv_std / scale).view(1, 3, 1)
    offset = (shift - mean_t) * inv_std
    out = torch.baddbmm(offset.unsqueeze(2), matrix, x)
    if jitter is not None or radiometry is not None:
        for c in range(3):  # clamp as in [0, 1] before normalising
            out[:, c].clamp_(float(-mean[c] / std[c]), float((1 - mean[c]) / std[c]))
    return out.view(n, 3, h, w).contiguous(memory_format=memory_format)


def augment(images: torch.Tensor, target: InputSpec, generator: torch.Generator, view: ViewSpec = ViewSpec()
            ) -> torch.Tensor:
    """Training view of a uint8 batch on its own device: D4 symmetry, random crop, resize, colour jitter, normalise.

    ``generator`` is a CPU generator: the parameters (:func:`draw_view_params`, a few numbers per
    image) are drawn on the host; the pixels never leave ``images.device``. No per-image Python:
    one gather and one resize per crop size (:func:`crop_resize_d4`), one batched matmul for colour
    and normalisation (:func:`colour_normalise`).
    """
    n, _, h, w = images.shape
    params = draw_view_params(n, h, w, generator, view).to(images.device)
    return colour_normalise(crop_resize_d4(images, target.size, params), target.mean, target.std, params.jitter,
                            target.memory_format, params.radiometry)


def augment_with_clean_view(images: torch.Tensor, clean: torch.Tensor, target: InputSpec, generator: torch.Generator,
                            view: ViewSpec = ViewSpec(), clean_target: Optional[InputSpec] = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`augment` of ``images``, and the same view of ``clean`` without the radiometric change.

    ``clean`` is the batch before its JPEG re-compression (or ``images`` itself). Both views share the
    symmetry, crop and jitter; only the second skips the radiometry, so a teacher that sees it predicts what
    the image *is*, whatever colours the student is shown (consistency distillation). ``clean_target``
    sizes and normalises the clean view for a teacher with another input size or other statistics (default:
    ``target``).
    """
    if clean.shape != images.shape:
        raise ValueError(f"The clean batch must match the augmented one; got {tuple(clean.shape)} and "
                         f"{tuple(images.shape)}.")
    n, _, h, w = images.shape
    params = draw_view_params(n, h, w, generator, view).to(images.device)
    student = colour_normalise(crop_resize_d4(images, target.size, params), target.mean, target.std, params.jitter,
                               target.memory_format, params.radiometry)
    clean_target = clean_target or target
    teacher = colour_normalise(crop_resize_d4(clean, clean_target.size, params), clean_target.mean,
                               clean_target.std, params.jitter, target.memory_format)
    return student, teacher


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt() parameter numbers (malloc.h)


def retain_freed_host_memory(limit_bytes: int = 256 << 20) -> bool:
    """Keep freed host memory for reuse instead of handing it back to the OS after every batch (glibc).

    A CPU batch allocates a few 1-5 MB temporaries. By default glibc serves such blocks with ``mmap``
    or trims them off the heap when freed, so the next batch page-faults the same memory in again:
    on this project's 2-core machine, converting a 64-image uint8 batch to float took 1.7 ms that way
    and 0.12 ms with the memory kept. Fixed mmap/trim thresholds keep up to ``limit_bytes`` of freed
    memory in the process (what jemalloc and tcmalloc do anyway). Called by training on the CPU.

    Returns:
        True when the C library accepted the settings; False elsewhere (no glibc ``mallopt``).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, limit_bytes))


def make_generator(seed: int) -> torch.Generator:
    """A seeded CPU generator (augmentation parameters are drawn on the host, see :func:`augment`)."""
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen
