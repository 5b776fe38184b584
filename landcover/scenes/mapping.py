"""Tiling a scene, classifying the tiles, and the per-cell map with its areas.

Conventions (documented once, used everywhere):

* **Grid cells.** The map is a grid of ``stride x stride`` px cells; cell ``(i, j)`` covers pixels
  starting at ``(i*stride, j*stride)`` (row, column). At ``stride == 64`` a cell is one tile. With a
  smaller stride, tiles overlap and a cell's class probabilities are the *mean over every tile covering
  it* -- the same as averaging per pixel, since all pixels of a cell are covered by the same tiles.
* **Edges.** Only whole tiles are classified; the last ``< stride`` px at the bottom/right edge (if any)
  are "not classified", drawn white, written as nodata (255) and left out of the area table.
* **Masks.** A cell more than ``max_masked`` (default half) covered by masked pixels (input nodata; SCL
  no-data, saturated/defective, cloud shadow, cloud, thin cirrus, snow/ice: see :mod:`landcover.readers.raster`;
  snow/ice by its spectrum too where the scene has SWIR1, see :mod:`landcover.scenes.evidence`) is not
  classified: it is counted under its majority mask reason, apart from the classes. Tiles whose cells
  are all masked are not even run through the model.
* **Areas.** Pixel area comes from the scene's grid (after resampling to 10 m, see
  :mod:`landcover.readers.raster`); without a georeference 10 m/px is assumed, and the result says so.

Memory is bounded by the read block, not the scene: the scene is read in blocks of ``BLOCK_PX`` rows
(whole tile rows, full width), tiles are cut from a block as strided views, and classified
``batch_size`` at a time in :func:`classify_tiles`; only the per-cell probability grid (``C x 4`` bytes
per cell) grows with the scene.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Iterator, Optional

import numpy as np

from landcover.core.labels import PATCH_SIZE_PX
from landcover.readers.raster import MASK_REASONS, SNOW_CODE, Scene
from landcover.scenes.evidence import (CLOUD_MAJORITY, EVIDENCE_MODES, WATER_TRACE, CellEvidence, cell_evidence,
                                      evidence_note, fuse, scene_in_leaf, snow_pixels)

if TYPE_CHECKING:
    from landcover.inference.predictor import Predictor

ADAPT_MODES = ("none", "bn")  # see landcover.scenes.adaptation
BLOCK_PX = 1024  # rows of pixels read at once (rounded to whole tile rows)
MAX_MASKED = 0.5  # a cell more than half masked is not classified
# Why a cell has no class: the input masks, then "uncertain" (top-1 probability below min_confidence).
CELL_REASONS = (*MASK_REASONS, "uncertain")
UNCERTAIN = len(CELL_REASONS)  # its reason code (1 + index)
# Default --min-confidence. Chosen as the threshold below which cells are right at most half the time, on both
# the embedded model's EuroSAT validation split (single pass: 0 of 2,160 patches below 0.3, 1 of 2 right below
# 0.5, 12 of 16 below 0.6) and the development scene (Brandenburg, stride 16, every band fused: 2 right / 4 wrong
# below 0.3, 24 / 10 below 0.35). Since an uncertain cell scores as a miss, a higher default only costs on real
# scenes.
DEFAULT_MIN_CONFIDENCE = 0.3


def tile_grid(height: int, width: int, patch: int = PATCH_SIZE_PX, stride: int = PATCH_SIZE_PX) -> tuple[int, int]:
    """Number of whole tiles (rows, cols) of ``patch`` px at ``stride`` px that fit in the scene."""
    if not (1 <= stride <= patch and patch % stride == 0):
        valid = ", ".join(str(s) for s in range(patch, 0, -1) if patch % s == 0)
        raise ValueError(f"--stride must divide the patch size {patch} px (one of {valid}), got {stride}.")
    if height < patch or width < patch:
        raise ValueError(f"The scene is {width}x{height} px; a scene map needs at least {patch}x{patch} px (one "
                         f"EuroSAT patch at 10 m/px). Classify a single patch with `python -m landcover predict`.")
    return (height - patch) // stride + 1, (width - patch) // stride + 1


@dataclass
class MapOptions:
    """How a scene is mapped: the options of ``landcover map`` (and of the app's scene tab)."""

    stride: int = PATCH_SIZE_PX  # tile step in px; must divide the patch size (64). Smaller = finer, more tiles
    batch_size: int = 256  # tiles per forward pass (bounds memory)
    progress: Optional[bool] = None  # tqdm bar on stderr (default: when there are more than 4 batches)
    # Flips/rotations of every tile (True: the model's mode or d4, or a mode name; up to 8x the compute). Off by
    # default for scenes whatever the model's config says: overlapping strides already average neighbouring views.
    tta: "bool | str" = False
    max_masked: float = MAX_MASKED  # share of a cell's pixels that may be masked before it is left out
    evidence: str = "auto"  # "auto": every band the scene has (see landcover.scenes.evidence); "rgb": CNN alone
    min_confidence: float = DEFAULT_MIN_CONFIDENCE  # cells whose top-1 probability is lower are "uncertain"
    # "bn": the CNN's BatchNorm statistics re-estimated on the scene first (landcover.scenes.adaptation); "none"
    adapt: str = "none"

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"--min-confidence must be between 0 and 1, got {self.min_confidence}.")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}.")
        if self.evidence not in EVIDENCE_MODES:
            raise ValueError(f"--evidence must be one of {', '.join(EVIDENCE_MODES)}, got {self.evidence!r}.")
        if self.adapt not in ADAPT_MODES:
            raise ValueError(f"--adapt must be one of {', '.join(ADAPT_MODES)}, got {self.adapt!r}.")


@dataclass
class Block:
    """Tile rows ``i0 .. i0 + n_rows - 1`` of a scene: tiles as strided views, and cell mask reasons."""

    i0: int
    tiles: np.ndarray  # uint8 view (n_rows, cols, 3, patch, patch)
    cell_rows: slice  # the cell rows whose masks this block holds
    cell_reason: np.ndarray  # uint8 (len(cell_rows), cell cols): 0 = classified, else 1 + MASK_REASONS index
    evidence: Optional[CellEvidence] = None  # spectral evidence of the same cells, when the scene has it


def iter_blocks(scene: Scene, stride: int, patch: int = PATCH_SIZE_PX, block_px: int = BLOCK_PX,
                max_masked: float = MAX_MASKED, evidence: bool = False,
                tile_rows: Optional[tuple[int, int]] = None, leaf_on: Optional[bool] = None,
                spectral_masks: Optional[bool] = None) -> Iterator[Block]:
    """Read the scene in blocks of whole tile rows (full width) and cut them into tiles (no copy).

    ``evidence``: also compute each block's cell evidence; ``spectral_masks``: mask snow by its spectrum (default:
    with ``evidence``). ``tile_rows`` ``(r0, r1)`` limits the blocks to those tile rows (default: all of them);
    ``leaf_on`` is the scene's season guard (:func:`landcover.scenes.evidence.scene_in_leaf`; None: decided per
    block).
    """
    spectral_masks = evidence if spectral_masks is None else spectral_masks
    rows, cols = tile_grid(scene.height, scene.width, patch, stride)
    r0, r1 = tile_rows or (0, rows)
    k = patch // stride
    n_cells_c = cols + k - 1
    step = max(1, (block_px - patch) // stride + 1)  # tile rows per block
    for i0 in range(r0, r1, step):
        n = min(step, r1 - i0)
        top, height = i0 * stride, (n - 1) * stride + patch
        width = (cols - 1) * stride + patch
        rgb, code, reflectance = scene.read_block(top, 0, height, width)
        snow = snow_pixels(reflectance) if spectral_masks and reflectance is not None else None
        if snow is not None:  # masked like SCL's snow class (EuroSAT has no snow class)
            code = np.where((code == 0) & snow, SNOW_CODE, code).astype(np.uint8)
        view = np.lib.stride_tricks.sliding_window_view(rgb, (patch, patch), axis=(1, 2))[:, ::stride, ::stride]
        tiles = view.transpose(1, 2, 0, 3, 4)  # (n, cols, 3, patch, patch)
        last = i0 + n == rows
        n_cell_rows = n + (k - 1 if last else 0)  # the bottom block also owns the last k - 1 cell rows
        cell_code = code[:n_cell_rows * stride, :n_cells_c * stride]
        cells = None
        if evidence and reflectance is not None:
            cells = cell_evidence({k: v[:n_cell_rows * stride, :n_cells_c * stride] for k, v in reflectance.items()},
                                  cell_code == 0, stride, leaf_on)
        yield Block(i0, tiles, slice(i0, i0 + n_cell_rows), cell_reasons(cell_code, stride, max_masked), cells)


def tile_windows(free: np.ndarray, n: int, cols: int, k: int) -> np.ndarray:
    """bool ``(n, cols, k, k)``: for each of ``n`` rows x ``cols`` tiles, the ``k x k`` cells it covers.

    ``free`` holds per-cell flags from the tiles' first cell row on; cell rows it lacks at the bottom (they belong
    to the next block, not read yet) count as True.
    """
    missing = n + k - 1 - free.shape[0]
    if missing > 0:
        free = np.pad(free, ((0, missing), (0, 0)), constant_values=True)
    return np.lib.stride_tricks.sliding_window_view(free, (k, k))[:n, :cols]


def cell_reasons(code: np.ndarray, stride: int, max_masked: float = MAX_MASKED) -> np.ndarray:
    """uint8 per cell: 0 when at most ``max_masked`` of its pixels are masked, else the majority reason."""
    h, w = code.shape[0] // stride, code.shape[1] // stride
    cells = code[:h * stride, :w * stride].reshape(h, stride, w, stride)
    counts = np.stack([(cells == r).sum(axis=(1, 3)) for r in range(1, len(MASK_REASONS) + 1)])
    masked = counts.sum(axis=0) > max_masked * stride * stride
    return np.where(masked, counts.argmax(axis=0) + 1, 0).astype(np.uint8)


def classify_tiles(predictor: "Predictor", tiles: np.ndarray, batch_size: int, tta: "bool | str" = False
                   ) -> np.ndarray:
    """float32 ``(n, C)`` probabilities of uint8 tiles ``(n, 3, patch, patch)``: the one call into the model."""
    import torch

    return predictor.predict_tensor(torch.from_numpy(np.ascontiguousarray(tiles)), batch_size=batch_size,
                                    tta=tta).numpy()


@dataclass
class SceneMap:
    """Per-cell class probabilities of a scene, its masks, and what is needed to measure and draw them."""

    labels: list[str]
    probs: np.ndarray  # float32 (C, rows, cols): mean probability over the tiles covering each cell
    stride: int
    patch_size: int
    height: int
    width: int
    pixel_area_m2: float
    pixel_size_source: str
    crs: Optional[object] = None
    transform: Optional[object] = None
    source: str = ""
    band_note: str = ""
    reason: Optional[np.ndarray] = None  # uint8 (rows, cols): 0 classified, else 1 + CELL_REASONS index
    scene_info: dict = field(default_factory=dict)  # Scene.describe(): radiometry, resampling, warnings
    evidence_note: str = "CNN on RGB"  # which evidence decided the classes (landcover.scenes.evidence)
    evidence: dict = field(default_factory=dict)  # per-cell layers (e.g. "water", "ndvi"), float32 (rows, cols)
    min_confidence: float = 0.0  # the threshold that made cells "uncertain"
    adaptation: Optional[str] = None  # how the CNN was adapted to the scene first, if it was

    def __post_init__(self) -> None:
        if self.reason is None:
            self.reason = np.zeros(self.probs.shape[1:], dtype=np.uint8)

    @property
    def grid(self) -> np.ndarray:
        """int ``(rows, cols)`` class index per cell (meaningful where :attr:`classified`)."""
        return self.probs.argmax(axis=0)

    @property
    def classified(self) -> np.ndarray:
        """bool ``(rows, cols)``: cells that have a class (not masked, not uncertain)."""
        return self.reason == 0

    @property
    def uncertain(self) -> np.ndarray:
        """bool ``(rows, cols)``: cells whose top-1 probability is below :attr:`min_confidence`."""
        return self.reason == UNCERTAIN

    @property
    def confidence(self) -> np.ndarray:
        """float ``(rows, cols)`` top-1 probability per cell (uncertain cells too; 0 where masked)."""
        return np.where(self.classified | self.uncertain, self.probs.max(axis=0), 0.0)

    @property
    def cloud_flagged(self) -> np.ndarray:
        """bool ``(rows, cols)``: classified or uncertain cells the spectral cloud/haze test flags (classes kept)."""
        cloud = self.evidence.get("cloud")
        if cloud is None:
            return np.zeros(self.reason.shape, dtype=bool)
        return (np.nan_to_num(cloud) >= CLOUD_MAJORITY) & ((self.reason == 0) | (self.reason == UNCERTAIN))

    @property
    def cell_area_km2(self) -> float:
        return self.stride ** 2 * self.pixel_area_m2 / 1e6

    def area_table(self) -> dict[str, dict[str, float]]:
        """``{label: {"cells", "percent", "km2"}}`` over the classified cells (percent sums to 100)."""
        counts = np.bincount(self.grid[self.classified], minlength=len(self.labels))
        total = max(int(counts.sum()), 1)
        return {name: {"cells": int(c), "percent": 100.0 * int(c) / total, "km2": int(c) * self.cell_area_km2}
                for name, c in zip(self.labels, counts)}

    def masked_table(self) -> dict[str, dict[str, float]]:
        """``{reason: {"cells", "km2"}}`` of the cells left out by masks (only reasons that occur)."""
        counts = np.bincount(self.reason.ravel(), minlength=len(CELL_REASONS) + 1)[1:]
        return {name: {"cells": int(c), "km2": int(c) * self.cell_area_km2}
                for name, c in zip(MASK_REASONS, counts) if c}

    def named_grid(self) -> list[list[Optional[str]]]:
        """Rows of class names per cell; masked cells read ``"masked: <reason>"``, uncertain cells None."""
        names = np.array(list(self.labels) + [f"masked: {r}" for r in MASK_REASONS] + [None], dtype=object)
        shown = np.where(self.classified, self.grid, len(self.labels) + self.reason.astype(np.int64) - 1)
        return names[shown].tolist()

    def to_json(self) -> dict:
        """The ``--json`` object: grid and confidence (rows x cols), areas, masks, radiometry, metadata."""
        table = self.area_table()
        rows, cols = self.grid.shape
        classified = self.classified
        return {
            "scene": self.source,
            "scene_size": [self.height, self.width],
            "patch_size": self.patch_size,
            "stride": self.stride,
            "rows": rows,
            "cols": cols,
            "labels": self.labels,
            "grid": self.named_grid(),
            "confidence": np.round(self.confidence, 4).tolist(),
            "area_percent": {k: round(v["percent"], 4) for k, v in table.items()},
            "area_km2": {k: round(v["km2"], 6) for k, v in table.items()},
            "classified_km2": round(int(classified.sum()) * self.cell_area_km2, 6),
            "masked_km2": {k: round(v["km2"], 6) for k, v in self.masked_table().items()},
            "masked_cells": {k: v["cells"] for k, v in self.masked_table().items()},
            "min_confidence": self.min_confidence,
            "uncertain_cells": int(self.uncertain.sum()),
            "uncertain_km2": round(int(self.uncertain.sum()) * self.cell_area_km2, 6),
            "cloud_flagged_cells": int(self.cloud_flagged.sum()),
            "cloud_flagged_km2": round(int(self.cloud_flagged.sum()) * self.cell_area_km2, 6),
            "pixel_area_m2": self.pixel_area_m2,
            "pixel_size_source": self.pixel_size_source,
            "crs": self.crs.to_string() if self.crs is not None else None,
            "transform": list(self.transform)[:6] if self.transform is not None else None,
            "bands": self.band_note or None,
            "evidence": self.evidence_note,
            "adaptation": self.adaptation,
            "radiometry": self.scene_info.get("radiometry"),
            "resampled": self.scene_info.get("resampled"),
            "warnings": self.scene_info.get("warnings", []),
        }


# Per-cell layers a map keeps when the scene has spectral bands (landcover.scenes.evidence.CellEvidence).
EVIDENCE_LAYERS = ("water", "ndvi", "cloud", "forest")


@dataclass
class TileSums:
    """What mapping tile rows ``r0 .. r1 - 1`` of a scene yields, before the cells are averaged.

    Sums add up exactly across parts, so one large scene can be mapped in row parts by several workers
    (:mod:`landcover.scenes.region`) and assembled by :func:`assemble_map` into the same map as one pass.
    """

    rows: tuple[int, int]  # tile rows [r0, r1)
    acc: np.ndarray  # float32 (C, r1 - r0 + k - 1, cell cols): sums of the probabilities of the tiles covering a cell
    kept: np.ndarray  # bool (r1 - r0, tile cols): tiles run through the model
    reason: np.ndarray  # uint8 (owned cell rows, cell cols): cell rows r0 .. r1 - 1 (+ the last k - 1 at the bottom)
    layers: dict = field(default_factory=dict)  # EVIDENCE_LAYERS, same rows as ``reason`` (when the scene has them)
    leaf_on: Optional[bool] = None  # the scene's season guard, when its evidence has SWIR2

    @property
    def tiles(self) -> int:
        return int(self.kept.size)


_DECIDE = "decide"  # accumulate_tiles' default: decide the season guard from the scene itself


def accumulate_tiles(predictor: "Predictor", scene: Scene, options: MapOptions,
                     tile_rows: Optional[tuple[int, int]] = None, leaf_on: "Optional[bool] | str" = _DECIDE
                     ) -> TileSums:
    """Classify the tiles of ``tile_rows`` (default: all) and sum their probabilities per cell.

    ``leaf_on``: the scene's season guard when the caller decided it already (:func:`scene_season`; a region
    decides it once per scene for all of the scene's row parts), else decided here."""
    from tqdm.auto import tqdm

    stride, batch_size, patch = options.stride, options.batch_size, PATCH_SIZE_PX
    rows, cols = tile_grid(scene.height, scene.width, patch, stride)
    r0, r1 = tile_rows or (0, rows)
    if not 0 <= r0 < r1 <= rows:
        raise ValueError(f"tile_rows must lie within 0..{rows} and hold at least one row; got {tile_rows}.")
    k = patch // stride  # tiles covering a cell along each axis (away from the edges)
    own = r1 - r0 + (k - 1 if r1 == rows else 0)  # cell rows this part owns (masks, evidence)
    acc = np.zeros((len(predictor.labels), r1 - r0 + k - 1, cols + k - 1), dtype=np.float32)
    reason = np.zeros((r1 - r0 + k - 1, cols + k - 1), dtype=np.uint8)
    use_evidence = fuses_evidence(scene, options)
    layers = {name: np.full((own, cols + k - 1), np.nan, dtype=np.float32) for name in EVIDENCE_LAYERS} \
        if use_evidence else {}
    leaf_on = (scene_season(scene, options) if leaf_on == _DECIDE else leaf_on) if use_evidence else None
    kept = np.zeros((r1 - r0, cols), dtype=bool)
    show = options.progress if options.progress is not None else (r1 - r0) * cols > 4 * batch_size
    bar = tqdm(total=(r1 - r0) * cols, unit="tile", desc="mapping", disable=not show, file=sys.stderr)
    for block in iter_blocks(scene, stride, patch, max_masked=options.max_masked, evidence=use_evidence,
                             tile_rows=(r0, r1), leaf_on=leaf_on):
        local = slice(block.cell_rows.start - r0, block.cell_rows.stop - r0)
        reason[local] = block.cell_reason
        if block.evidence is not None:
            for name in EVIDENCE_LAYERS:
                layers[name][local] = getattr(block.evidence, name)
        i0, n = block.i0 - r0, block.tiles.shape[0]
        # A tile is worth classifying when any of the k x k cells it covers is not masked.
        keep = tile_windows(reason[i0:i0 + n + k - 1] == 0, n, cols, k).any(axis=(2, 3))
        kept[i0:i0 + n] = keep
        ii, jj = np.nonzero(keep)
        for s in range(0, len(ii), batch_size):
            bi, bj = ii[s:s + batch_size], jj[s:s + batch_size]
            probs = classify_tiles(predictor, block.tiles[bi, bj], batch_size, options.tta).T  # (C, n)
            for di in range(k):  # (row, col) pairs are distinct within a batch, so plain += is exact
                for dj in range(k):
                    acc[:, i0 + bi + di, bj + dj] += probs
        bar.update(n * cols)
    bar.close()
    return TileSums((r0, r1), acc, kept, reason[:own], layers, leaf_on)


def fuses_evidence(scene: Scene, options: MapOptions) -> bool:
    """Whether a map of ``scene`` with ``options`` fuses spectral evidence (``--evidence auto`` and bands for it)."""
    return options.evidence == "auto" and scene.has_evidence


def scene_season(scene: Scene, options: MapOptions) -> Optional[bool]:
    """The season guard a map of ``scene`` with ``options`` uses (:func:`season_guard`); None when the map fuses
    no spectral evidence."""
    return season_guard(scene) if fuses_evidence(scene, options) else None


def season_guard(scene: Scene) -> Optional[bool]:
    """Whether most of the scene's vegetation is in full leaf (the leaf-off forest test is then off), decided once
    per scene; None when the scene has no SWIR2 (no forest test to guard)."""
    if not scene.has_spectral or "swir22" not in scene.spectral_names:
        return None
    return scene_in_leaf(*scene.sample_reflectance())


def assemble_map(scene: Scene, labels: list[str], options: MapOptions, parts: list[TileSums]) -> SceneMap:
    """The :class:`SceneMap` of ``parts`` that together cover every tile row of ``scene`` once: sum, average
    overlapping tiles per cell, fuse spectral evidence, mark uncertain cells."""
    stride, patch = options.stride, PATCH_SIZE_PX
    rows, cols = tile_grid(scene.height, scene.width, patch, stride)
    parts = sorted(parts, key=lambda p: p.rows)
    covered_rows = [r for p in parts for r in range(*p.rows)]
    if covered_rows != list(range(rows)):
        raise ValueError(f"The parts cover tile rows {[p.rows for p in parts]}; expected each of 0..{rows} once.")
    k = patch // stride
    if len(parts) == 1:  # one pass: its sums are the whole grid already
        acc = parts[0].acc
    else:
        acc = np.zeros((len(labels), rows + k - 1, cols + k - 1), dtype=np.float32)
        for part in parts:
            acc[:, part.rows[0]:part.rows[1] + k - 1] += part.acc
    kept = np.concatenate([p.kept for p in parts])
    reason = np.concatenate([p.reason for p in parts])
    use_evidence = bool(parts[0].layers)
    layers = {name: np.concatenate([p.layers[name] for p in parts]) for name in EVIDENCE_LAYERS} \
        if use_evidence else {}
    acc /= np.maximum(_covered(kept, k), 1)[None]
    if use_evidence:
        # Without NIR the SCL water class only adds water: a missed small river must not veto the CNN's.
        acc = fuse(acc, labels, layers["water"], trace=WATER_TRACE if scene.has_spectral else -1.0,
                   forest=layers["forest"])
    reason[(reason == 0) & (acc.max(axis=0) < options.min_confidence)] = UNCERTAIN
    return SceneMap(list(labels), acc, stride, patch, scene.height, scene.width, scene.grid.pixel_area_m2,
                    scene.grid.pixel_size_source, scene.grid.crs, scene.grid.transform, scene.source,
                    scene.radiometry.band_note, reason, scene.describe(),
                    evidence_note(scene.spectral_names if scene.has_spectral else None, scene.scl is not None,
                                  use_evidence, parts[0].leaf_on), layers,
                    options.min_confidence)


def map_scene(predictor: "Predictor", scene: Scene, options: Optional[MapOptions] = None, **overrides
              ) -> SceneMap:
    """Classify every tile of ``scene``, average overlapping tiles per cell, and fuse spectral evidence.

    Args:
        predictor: A loaded :class:`~landcover.inference.predictor.Predictor` (``predict_tensor``, ``labels``).
        scene: From :func:`landcover.readers.raster.open_scene`.
        options: :class:`MapOptions` (default: its defaults); ``overrides`` replace single fields
            (``map_scene(p, scene, stride=16)``).

    Returns:
        A :class:`SceneMap` with ``(C, rows, cols)`` cell probabilities and per-cell mask reasons. Where the
        scene has NIR (and SWIR) reflectance and ``options.evidence`` is ``auto``, the probabilities are the
        CNN's after :func:`landcover.scenes.evidence.fuse`. With ``options.adapt == "bn"`` the tiles are
        classified by a copy of the predictor adapted to the scene
        (:func:`landcover.scenes.adaptation.adapt_to_scene`); ``predictor`` itself is not changed.
    """
    options = replace(options or MapOptions(), **overrides)
    adaptation = None
    if options.adapt == "bn":
        from landcover.scenes.adaptation import adapt_to_scene, describe

        predictor = adapt_to_scene(predictor, scene)
        adaptation = describe()
    result = assemble_map(scene, predictor.labels, options, [accumulate_tiles(predictor, scene, options)])
    result.adaptation = adaptation
    return result


def _covered(kept: np.ndarray, k: int) -> np.ndarray:
    """float32 ``(rows + k - 1, cols + k - 1)``: how many classified tiles cover each cell."""
    rows, cols = kept.shape
    counts = np.zeros((rows + k - 1, cols + k - 1), dtype=np.float32)
    for di in range(k):
        for dj in range(k):
            counts[di:di + rows, dj:dj + cols] += kept
    return counts
