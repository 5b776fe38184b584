"""Whole scenes: tile, classify, map, measure areas, and compare two dates.

A scene is any RGB image larger than a EuroSAT patch (PNG/JPEG), or a GeoTIFF (3-band RGB, or
Sentinel-2 bands from which B04/B03/B02 are picked). It is cut into ``PATCH_SIZE_PX`` (64 px, i.e.
640 m at 10 m/px) tiles at a stride that divides the patch size; the predictor resizes each tile to
its own input size, exactly as it does for single patches.

Conventions (documented once, used everywhere):

* **Grid cells.** The map is a grid of ``stride x stride`` px cells; cell ``(i, j)`` covers pixels
  starting at ``(i*stride, j*stride)`` (row, column). At ``stride == 64`` a cell is one tile. With a
  smaller stride, tiles overlap and a cell's class probabilities are the *mean over every tile covering
  it* -- the same as averaging per pixel, since all pixels of a cell are covered by the same tiles.
* **Edges.** Only whole tiles are classified; the last ``< stride`` px at the bottom/right edge (if any)
  are "not classified", drawn white, written as nodata (255) and left out of the area table.
* **Pixel values.** 8-bit data is used as is. 16-bit integer data is taken as Sentinel-2 L1C/L2A
  reflectance x 10000 and scaled as ``clip((v - offset) * 255 / 2750, 0, 255)``: EuroSAT's RGB JPEGs map
  reflectance ~0.275 to 255, so this reproduces their brightness (``offset`` = 1000 for L2A products of
  processing baseline >= 04.00, which add 1000 to every value). Float data is taken as reflectance 0..1.
* **Areas.** Pixel area comes from the GeoTIFF transform (projected CRS: its linear unit; geographic CRS:
  degrees converted at the scene centre's latitude). Without a georeference 10 m/px is assumed, and the
  result says so (``pixel_size_source``).

Memory is bounded by the batch size, not the scene size: GeoTIFF tiles are read as rasterio windows
(``patch`` rows by at most ``batch_size`` tiles) and classified ``batch_size`` at a time; only the
per-cell probability grid (``C x 4`` bytes per cell) grows with the scene. PNG/JPEG files cannot be
read by window, so they are decoded whole first: convert large scenes to GeoTIFF.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .config import TTA_MODES, tta_choices_help
from .labels import CLASS_COLOURS, GROUND_SAMPLING_M, PATCH_SIZE_PX

if TYPE_CHECKING:
    from .predict import Predictor

S2_CLIP = 2750.0  # Sentinel-2 reflectance x 10000 shown as 255 (EuroSAT RGB brightness)
NODATA = 255  # class raster value of pixels not covered by a whole tile
UNCLASSIFIED_COLOUR = (255, 255, 255)
GEOTIFF_SUFFIXES = (".tif", ".tiff")
MAX_RENDER_PX = 2048  # longest side of rendered maps (large scenes are downsampled for display)
MIN_RENDER_PX = 512  # small scenes are enlarged (nearest neighbour) so the map stays readable


# ---------------------------------------------------------------- reading scenes


@dataclass
class Scene:
    """A scene opened for streaming reads. Use :func:`open_scene`; close it (or use ``with``)."""

    path: str
    height: int
    width: int
    pixel_area_m2: float
    pixel_size_source: str
    crs: Optional[object] = None  # rasterio CRS for GeoTIFFs
    transform: Optional[object] = None  # affine.Affine for GeoTIFFs
    bands: tuple[int, ...] = (1, 2, 3)
    band_note: str = ""
    clip: float = S2_CLIP
    offset: float = 0.0
    _array: Optional[np.ndarray] = field(default=None, repr=False)  # (3, H, W) uint8 for PNG/JPEG
    _dataset: Optional[object] = field(default=None, repr=False)  # open rasterio dataset

    @property
    def is_geotiff(self) -> bool:
        return self._dataset is not None

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None

    def read(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        """uint8 ``(3, height, width)`` block starting at ``(row, col)`` (EuroSAT RGB range)."""
        if self._array is not None:
            return self._array[:, row:row + height, col:col + width]
        from rasterio.windows import Window

        data = self._dataset.read(list(self.bands), window=Window(col, row, width, height))
        return to_uint8(data, self.clip, self.offset)

    def thumbnail(self, height: int, width: int) -> np.ndarray:
        """The whole scene as uint8 ``(height, width, 3)`` for display (decimated read for GeoTIFFs)."""
        if self._array is not None:
            img = Image.fromarray(np.ascontiguousarray(self._array.transpose(1, 2, 0)))
            return np.asarray(img.resize((width, height), Image.Resampling.BILINEAR))
        from rasterio.enums import Resampling

        data = self._dataset.read(list(self.bands), out_shape=(3, height, width), resampling=Resampling.average)
        return to_uint8(data, self.clip, self.offset).transpose(1, 2, 0)

    def close(self) -> None:
        if self._dataset is not None:
            self._dataset.close()
            self._dataset = None

    def __enter__(self) -> "Scene":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def to_uint8(data: np.ndarray, clip: float = S2_CLIP, offset: float = 0.0) -> np.ndarray:
    """Scale raw band values to EuroSAT's 8-bit RGB range (see the module docstring)."""
    if data.dtype == np.uint8:
        return data
    values = data.astype(np.float32)
    if np.issubdtype(data.dtype, np.floating):
        values = values * 10000.0  # reflectance 0..1 -> Sentinel-2 digital numbers
    values = (values - offset) * (255.0 / clip)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def open_scene(path: str | Path, bands: Optional[Sequence[int]] = None, clip: float = S2_CLIP,
               offset: float = 0.0, pixel_size_m: Optional[float] = None) -> Scene:
    """Open a PNG/JPEG or GeoTIFF scene.

    Args:
        path: Image file. ``.tif``/``.tiff`` files are read with rasterio (windowed); others with PIL.
        bands: 1-based band numbers to use as R, G, B (default: from band descriptions B04/B03/B02, then
            the colour interpretation, then bands 1-3 of a 3-band file, then 4/3/2 of a 12/13-band file in
            Sentinel-2 order).
        clip: Raw value shown as 255 for 16-bit data (Sentinel-2 reflectance x 10000).
        offset: Subtracted from 16-bit data first (1000 for L2A products of baseline >= 04.00).
        pixel_size_m: Override the ground pixel size (metres).

    Raises:
        ValueError: unreadable file, not RGB, or unusable band choice. FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Scene {str(path)!r} does not exist; expected a PNG, JPEG or GeoTIFF file.")
    if clip <= 0:
        raise ValueError(f"--clip must be positive (the raw value shown as 255), got {clip}.")
    if _is_tiff(path):
        return _open_geotiff(path, bands, clip, offset, pixel_size_m)
    if bands:
        raise ValueError("--bands applies to GeoTIFF scenes only; a PNG/JPEG is used as RGB.")
    from .predict import pil_to_tensor  # same decoding as single patches (EXIF, palette, alpha)

    try:
        with Image.open(path) as im:
            im.load()
            array = pil_to_tensor(im).numpy()
    except (OSError, Image.DecompressionBombError) as err:
        raise ValueError(f"Cannot read {path.name} as an image ({err}); expected a PNG, JPEG or GeoTIFF.") from err
    area, source = _assumed_pixel_area(pixel_size_m)
    return Scene(str(path), array.shape[1], array.shape[2], area, source, _array=array)


def _is_tiff(path: Path) -> bool:
    with open(path, "rb") as f:
        magic = f.read(4)
    return magic in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+") or path.suffix.lower() in GEOTIFF_SUFFIXES


def _assumed_pixel_area(pixel_size_m: Optional[float]) -> tuple[float, str]:
    if pixel_size_m:
        return float(pixel_size_m) ** 2, f"given: {pixel_size_m:g} m/px"
    return GROUND_SAMPLING_M ** 2, f"assumed {GROUND_SAMPLING_M:g} m/px (no georeference; EuroSAT's Sentinel-2 GSD)"


def _open_geotiff(path: Path, bands, clip, offset, pixel_size_m) -> Scene:
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        ds = rasterio.open(path)
    except RasterioIOError as err:
        raise ValueError(f"Cannot read {path.name} as a GeoTIFF ({err}).") from err
    try:
        chosen, note = choose_rgb_bands(ds.count, ds.descriptions, ds.colorinterp, bands)
        georef = ds.crs is not None and not ds.transform.is_identity
        if pixel_size_m:
            area, source = _assumed_pixel_area(pixel_size_m)
        elif georef:
            area, source = _pixel_area_from_crs(ds)
        else:
            area, source = _assumed_pixel_area(None)
    except Exception:
        ds.close()
        raise
    return Scene(str(path), ds.height, ds.width, area, source, crs=ds.crs if georef else None,
                 transform=ds.transform if georef else None, bands=chosen, band_note=note, clip=clip,
                 offset=offset, _dataset=ds)


_BAND_NAME = re.compile(r"\bB0?([234])\b")


def choose_rgb_bands(count: int, descriptions: Sequence[Optional[str]], colorinterp: Sequence[object] = (),
                     bands: Optional[Sequence[int]] = None) -> tuple[tuple[int, int, int], str]:
    """1-based (R, G, B) band numbers of a raster, and how they were chosen.

    Order of preference: explicit ``bands``; band descriptions naming Sentinel-2 B04/B03/B02; the colour
    interpretation (red/green/blue); a 3-band file as is; a 12/13-band file in Sentinel-2 order (B01..).
    """
    if bands:
        bands = tuple(int(b) for b in bands)
        if len(bands) != 3 or not all(1 <= b <= count for b in bands):
            raise ValueError(f"--bands needs three 1-based band numbers between 1 and {count} (R,G,B), got {bands}.")
        return bands, "bands given"
    found: dict[str, int] = {}
    for number, desc in enumerate(descriptions or (), start=1):
        match = _BAND_NAME.search((desc or "").upper())
        if match:
            found.setdefault(match.group(1), number)
    if all(k in found for k in "432"):
        return (found["4"], found["3"], found["2"]), "Sentinel-2 B04/B03/B02 from band descriptions"
    names = [getattr(ci, "name", str(ci)) for ci in colorinterp or ()]
    if all(c in names for c in ("red", "green", "blue")):
        return tuple(names.index(c) + 1 for c in ("red", "green", "blue")), "red/green/blue colour interpretation"
    if count == 3:
        return (1, 2, 3), "bands 1-3 as RGB"
    if count in (12, 13):
        return (4, 3, 2), f"{count} bands without descriptions: assumed Sentinel-2 order B01, B02, ... (4,3,2 = RGB)"
    raise ValueError(f"The GeoTIFF has {count} band(s) and none is described as B04/B03/B02 or red/green/blue. "
                     f"Pass --bands R,G,B with 1-based band numbers (e.g. --bands 4,3,2).")


def _pixel_area_from_crs(ds) -> tuple[float, str]:
    t = ds.transform
    det = abs(t.a * t.e - t.b * t.d)
    if ds.crs.is_geographic:
        lat = t.f + t.d * ds.width / 2 + t.e * ds.height / 2  # latitude of the scene centre
        area = det * (111_320.0 * math.cos(math.radians(lat))) * 110_574.0
        return area, f"GeoTIFF transform ({ds.crs.to_string()}, degrees at latitude {lat:.3f})"
    _, factor = ds.crs.linear_units_factor
    area = det * factor ** 2
    return area, f"GeoTIFF transform ({ds.crs.to_string()}, {math.sqrt(area):g} m/px)"


# ---------------------------------------------------------------- tiling and classifying


def tile_grid(height: int, width: int, patch: int = PATCH_SIZE_PX, stride: int = PATCH_SIZE_PX) -> tuple[int, int]:
    """Number of whole tiles (rows, cols) of ``patch`` px at ``stride`` px that fit in the scene."""
    if not (1 <= stride <= patch and patch % stride == 0):
        valid = ", ".join(str(s) for s in range(patch, 0, -1) if patch % s == 0)
        raise ValueError(f"--stride must divide the patch size {patch} px (one of {valid}), got {stride}.")
    if height < patch or width < patch:
        raise ValueError(f"The scene is {width}x{height} px; a scene map needs at least {patch}x{patch} px (one "
                         f"EuroSAT patch at 10 m/px). Classify a single patch with `python -m landcover predict`.")
    return (height - patch) // stride + 1, (width - patch) // stride + 1


def iter_tiles(scene: Scene, stride: int, max_tiles: int, patch: int = PATCH_SIZE_PX
               ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(tile_rows, tile_cols, tiles uint8 (n, 3, patch, patch))`` with ``n <= max_tiles``.

    Reads one window per yield: ``patch`` rows by just enough columns for ``n`` tiles.
    """
    rows, cols = tile_grid(scene.height, scene.width, patch, stride)
    for i in range(rows):
        for j0 in range(0, cols, max_tiles):
            n = min(max_tiles, cols - j0)
            strip = scene.read(i * stride, j0 * stride, patch, (n - 1) * stride + patch)
            view = np.lib.stride_tricks.sliding_window_view(strip, (patch, patch), axis=(1, 2))
            tiles = np.ascontiguousarray(view[:, 0, ::stride].transpose(1, 0, 2, 3))
            yield np.full(n, i), np.arange(j0, j0 + n), tiles


@dataclass
class SceneMap:
    """Per-cell class probabilities of a scene, and what is needed to measure and draw them."""

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

    @property
    def grid(self) -> np.ndarray:
        """int ``(rows, cols)`` class index per cell."""
        return self.probs.argmax(axis=0)

    @property
    def confidence(self) -> np.ndarray:
        """float ``(rows, cols)`` probability of the chosen class per cell."""
        return self.probs.max(axis=0)

    @property
    def cell_area_km2(self) -> float:
        return self.stride ** 2 * self.pixel_area_m2 / 1e6

    def area_table(self) -> dict[str, dict[str, float]]:
        """``{label: {"cells", "percent", "km2"}}`` over the classified area (percent sums to 100)."""
        counts = np.bincount(self.grid.ravel(), minlength=len(self.labels))
        total = max(int(counts.sum()), 1)
        return {name: {"cells": int(c), "percent": 100.0 * int(c) / total, "km2": int(c) * self.cell_area_km2}
                for name, c in zip(self.labels, counts)}

    def to_json(self) -> dict:
        """The ``--json`` object: grid and confidence (rows x cols), areas per class, and metadata."""
        table = self.area_table()
        rows, cols = self.grid.shape
        return {
            "scene": self.source,
            "scene_size": [self.height, self.width],
            "patch_size": self.patch_size,
            "stride": self.stride,
            "rows": rows,
            "cols": cols,
            "labels": self.labels,
            "grid": [[self.labels[k] for k in row] for row in self.grid.tolist()],
            "confidence": np.round(self.confidence, 4).tolist(),
            "area_percent": {k: round(v["percent"], 4) for k, v in table.items()},
            "area_km2": {k: round(v["km2"], 6) for k, v in table.items()},
            "classified_km2": round(rows * cols * self.cell_area_km2, 6),
            "pixel_area_m2": self.pixel_area_m2,
            "pixel_size_source": self.pixel_size_source,
            "crs": self.crs.to_string() if self.crs is not None else None,
            "transform": list(self.transform)[:6] if self.transform is not None else None,
            "bands": self.band_note or None,
        }


def map_scene(predictor: "Predictor", scene: Scene, stride: int = PATCH_SIZE_PX, batch_size: int = 256,
              progress: Optional[bool] = None, tta: "bool | str" = False) -> SceneMap:
    """Classify every tile of ``scene`` and average overlapping tiles per cell.

    Args:
        predictor: A loaded :class:`~landcover.predict.Predictor` (``predict_tensor``, ``labels``).
        scene: From :func:`open_scene`.
        stride: Tile step in px; must divide the patch size (64). Smaller = finer map, more tiles.
        batch_size: Tiles per forward pass (bounds memory).
        progress: Show a tqdm bar on stderr (default: when there are more than 4 batches).
        tta: Average flips/rotations of every tile (True: the model's mode or d4, or a mode name; see
            ``Predictor.resolve_tta``; up to 8x the compute). Off by default for scenes,
            whatever the model's config says: maps are about throughput, and overlapping strides
            already average neighbouring views of each cell.

    Returns:
        A :class:`SceneMap` with ``(C, rows, cols)`` cell probabilities.
    """
    import torch
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}.")
    patch = PATCH_SIZE_PX
    rows, cols = tile_grid(scene.height, scene.width, patch, stride)
    k = patch // stride  # tiles covering a cell along each axis (away from the edges)
    n_labels = len(predictor.labels)
    acc = np.zeros((n_labels, rows + k - 1, cols + k - 1), dtype=np.float32)
    show = progress if progress is not None else rows * cols > 4 * batch_size
    bar = tqdm(total=rows * cols, unit="tile", desc="mapping", disable=not show, file=sys.stderr)
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    n_pending = 0

    def flush() -> None:
        nonlocal pending, n_pending
        ii = np.concatenate([p[0] for p in pending])
        jj = np.concatenate([p[1] for p in pending])
        batch = torch.from_numpy(np.concatenate([p[2] for p in pending]))
        probs = predictor.predict_tensor(batch, batch_size=batch_size, tta=tta).numpy().T  # (C, n)
        for di in range(k):  # (ii, jj) are distinct within a batch, so plain += is exact
            for dj in range(k):
                acc[:, ii + di, jj + dj] += probs
        bar.update(len(ii))
        pending, n_pending = [], 0

    for item in iter_tiles(scene, stride, batch_size, patch):
        pending.append(item)
        n_pending += len(item[0])
        if n_pending >= batch_size:
            flush()
    if pending:
        flush()
    bar.close()
    acc /= np.outer(_cover_counts(rows, k), _cover_counts(cols, k))[None]
    return SceneMap(list(predictor.labels), acc, stride, patch, scene.height, scene.width, scene.pixel_area_m2,
                    scene.pixel_size_source, scene.crs, scene.transform, scene.path, scene.band_note)


def _cover_counts(n_tiles: int, k: int) -> np.ndarray:
    """How many tiles (along one axis) cover each of the ``n_tiles + k - 1`` cells."""
    a = np.arange(n_tiles + k - 1)
    return (np.minimum(a, n_tiles - 1) - np.maximum(a - k + 1, 0) + 1).astype(np.float32)


# ---------------------------------------------------------------- colours, rendering, legend


def class_colours(labels: Sequence[str]) -> np.ndarray:
    """uint8 ``(C + 1, 3)``: the fixed colour of each label (``CLASS_COLOURS``), then "not classified".

    Labels outside EuroSAT (a model trained on other classes) get stable colours from matplotlib's tab20.
    """
    out = []
    for i, name in enumerate(labels):
        if name in CLASS_COLOURS:
            out.append(CLASS_COLOURS[name])
        else:
            from matplotlib import colormaps

            r, g, b, _ = colormaps["tab20"](i % 20)
            out.append((round(r * 255), round(g * 255), round(b * 255)))
    out.append(UNCLASSIFIED_COLOUR)
    return np.array(out, dtype=np.uint8)


def display_size(height: int, width: int, max_px: int = MAX_RENDER_PX, min_px: int = MIN_RENDER_PX
                 ) -> tuple[int, int]:
    """Rendered (height, width): the scene's own size, shrunk to ``max_px`` or grown to ``min_px``."""
    longest = max(height, width)
    f = min(1.0, max_px / longest) if longest > min_px else min_px / longest
    return max(1, round(height * f)), max(1, round(width * f))


def _index_image(grid: np.ndarray, stride: int, height: int, width: int, size: tuple[int, int], fill: int
                 ) -> np.ndarray:
    """Cell values looked up per display pixel (nearest); pixels outside the cell grid get ``fill``."""
    dh, dw = size
    ys = (np.arange(dh) * height / dh).astype(np.int64) // stride
    xs = (np.arange(dw) * width / dw).astype(np.int64) // stride
    padded = np.full((grid.shape[0] + 1, grid.shape[1] + 1), fill, dtype=grid.dtype)
    padded[:-1, :-1] = grid
    return padded[np.minimum(ys, grid.shape[0])[:, None], np.minimum(xs, grid.shape[1])[None, :]]


def render_map(scene_map: SceneMap, size: Optional[tuple[int, int]] = None) -> Image.Image:
    """The colour-coded class map (no legend) at ``size`` (default :func:`display_size`)."""
    size = size or display_size(scene_map.height, scene_map.width)
    colours = class_colours(scene_map.labels)
    index = _index_image(scene_map.grid, scene_map.stride, scene_map.height, scene_map.width, size,
                         fill=len(scene_map.labels))
    return Image.fromarray(colours[index])


def render_overlay(scene_map: SceneMap, scene: Scene, alpha: float = 0.5,
                   size: Optional[tuple[int, int]] = None) -> Image.Image:
    """The class map blended over the scene (``alpha`` = map weight); unclassified edges show the scene."""
    size = size or display_size(scene_map.height, scene_map.width)
    base = scene.thumbnail(*size).astype(np.float32)
    index = _index_image(scene_map.grid, scene_map.stride, scene_map.height, scene_map.width, size,
                         fill=len(scene_map.labels))
    colours = class_colours(scene_map.labels)[index].astype(np.float32)
    weight = np.where(index == len(scene_map.labels), 0.0, alpha)[..., None]
    return Image.fromarray(np.rint(base * (1 - weight) + colours * weight).astype(np.uint8))


def render_confidence(scene_map: SceneMap, size: Optional[tuple[int, int]] = None) -> Image.Image:
    """Per-cell confidence as greyscale (black = 0, white = 1; unclassified edges black)."""
    size = size or display_size(scene_map.height, scene_map.width)
    conf = np.rint(scene_map.confidence * 255).astype(np.uint8)
    return Image.fromarray(_index_image(conf, scene_map.stride, scene_map.height, scene_map.width, size, fill=0))


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def add_legend(image: Image.Image, entries: Sequence[tuple[tuple[int, int, int], str]], title: str = "",
               note: str = "", width: int = 380) -> Image.Image:
    """``image`` with a legend panel on its right: a swatch and a text line per entry, then a note."""
    font, small, line = _font(15), _font(12), 24
    note_lines = _wrap(note, 52) if note else []
    height = max(image.height, 16 + line * (len(entries) + (2 if title else 1)) + 16 * len(note_lines))
    canvas = Image.new("RGB", (image.width + width, height), (255, 255, 255))
    canvas.paste(image.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x, y = image.width + 14, 12
    if title:
        draw.text((x, y), title, fill=(0, 0, 0), font=font)
        y += line + 4
    for colour, text in entries:
        draw.rectangle([x, y + 2, x + 18, y + 18], fill=tuple(int(c) for c in colour), outline=(0, 0, 0))
        draw.text((x + 28, y + 2), text, fill=(0, 0, 0), font=font)
        y += line
    y += 6
    for text in note_lines:
        draw.text((x, y), text, fill=(80, 80, 80), font=small)
        y += 16
    return canvas


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]


def map_legend_entries(scene_map: SceneMap) -> list[tuple[tuple[int, int, int], str]]:
    """One legend line per class: colour, name, % and km² of the classified area."""
    colours = class_colours(scene_map.labels)
    table = scene_map.area_table()
    entries = [(tuple(colours[i]), f"{name}  {table[name]['percent']:5.1f} %  {table[name]['km2']:.3f} km2")
               for i, name in enumerate(scene_map.labels)]
    rows, cols = scene_map.grid.shape
    if rows * scene_map.stride < scene_map.height or cols * scene_map.stride < scene_map.width:
        entries.append((UNCLASSIFIED_COLOUR, "not classified (edge < one tile)"))
    return entries


def render_map_with_legend(scene_map: SceneMap) -> Image.Image:
    """The PNG written by ``map --out``: class map plus legend with areas and the pixel-size note."""
    rows, cols = scene_map.grid.shape
    note = (f"{rows}x{cols} cells of {scene_map.stride} px, {scene_map.patch_size} px tiles. "
            f"Pixel size: {scene_map.pixel_size_source}.")
    return add_legend(render_map(scene_map), map_legend_entries(scene_map), "Land cover", note)


# ---------------------------------------------------------------- GeoTIFF output


def write_class_geotiff(scene_map: SceneMap, path: str | Path) -> Path:
    """Write the class map as a 1-band uint8 GeoTIFF on the scene's own pixel grid.

    Same size, CRS and transform as the input; value = class index (tag ``classes`` lists the labels),
    ``255`` = not classified (nodata); a colormap gives each class its legend colour. Written one row of
    cells at a time, so memory stays ``stride x width`` bytes.
    """
    import rasterio
    from rasterio.windows import Window

    if scene_map.crs is None:
        raise ValueError(f"--geotiff needs a georeferenced GeoTIFF scene (with a CRS); {scene_map.source!r} has "
                         f"none. Use --out for a PNG map instead.")
    path = Path(path)
    s, w, h = scene_map.stride, scene_map.width, scene_map.height
    grid = scene_map.grid.astype(np.uint8)
    profile = dict(driver="GTiff", height=h, width=w, count=1, dtype="uint8", crs=scene_map.crs,
                   transform=scene_map.transform, nodata=NODATA, compress="deflate", tiled=True,
                   blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **profile) as dst:
        for a in range(math.ceil(h / s)):
            line = np.full(w, NODATA, dtype=np.uint8)
            if a < grid.shape[0]:
                line[:grid.shape[1] * s] = np.repeat(grid[a], s)
            n = min(s, h - a * s)
            dst.write(np.broadcast_to(line, (n, w))[None], window=Window(0, a * s, w, n))
        colours = class_colours(scene_map.labels)
        cmap = {i: (*map(int, colours[i]), 255) for i in range(len(scene_map.labels))}
        cmap[NODATA] = (255, 255, 255, 0)
        dst.write_colormap(1, cmap)
        dst.set_band_description(1, "land-cover class index (tag 'classes'); 255 = not classified")
        dst.update_tags(classes=json.dumps(scene_map.labels), stride_px=str(s), patch_px=str(scene_map.patch_size))
    return path


def read_class_geotiff(path: str | Path) -> tuple[np.ndarray, list[str], object, object]:
    """``(class raster, labels, crs, transform)`` of a GeoTIFF written by :func:`write_class_geotiff`."""
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read(1), json.loads(ds.tags()["classes"]), ds.crs, ds.transform


# ---------------------------------------------------------------- change detection


@dataclass
class ChangeResult:
    """Two scene maps on the same grid, compared cell by cell."""

    before: SceneMap
    after: SceneMap
    min_confidence: float

    @property
    def confident(self) -> np.ndarray:
        """bool ``(rows, cols)``: both dates at least ``min_confidence``."""
        return (self.before.confidence >= self.min_confidence) & (self.after.confidence >= self.min_confidence)

    @property
    def changed(self) -> np.ndarray:
        """bool ``(rows, cols)``: confident cells whose class differs."""
        return self.confident & (self.before.grid != self.after.grid)

    def matrix(self) -> np.ndarray:
        """int ``(C, C)`` cell counts from class (row) to class (column), confident cells only."""
        n = len(self.before.labels)
        pairs = self.before.grid[self.confident] * n + self.after.grid[self.confident]
        return np.bincount(pairs, minlength=n * n).reshape(n, n)

    def transitions(self) -> list[dict]:
        """Changed from->to pairs with tile counts and km², largest first."""
        m, labels, cell = self.matrix(), self.before.labels, self.before.cell_area_km2
        rows = [{"from": labels[a], "to": labels[b], "tiles": int(m[a, b]), "km2": round(m[a, b] * cell, 6)}
                for a in range(len(labels)) for b in range(len(labels)) if a != b and m[a, b]]
        return sorted(rows, key=lambda r: -r["tiles"])

    def to_json(self) -> dict:
        m, cell, labels = self.matrix(), self.before.cell_area_km2, self.before.labels
        changed, confident = self.changed, self.confident
        return {
            "before": self.before.source, "after": self.after.source,
            "scene_size": [self.before.height, self.before.width], "stride": self.before.stride,
            "rows": int(changed.shape[0]), "cols": int(changed.shape[1]),
            "labels": labels, "min_confidence": self.min_confidence,
            "before_grid": [[labels[k] for k in r] for r in self.before.grid.tolist()],
            "after_grid": [[labels[k] for k in r] for r in self.after.grid.tolist()],
            "before_confidence": np.round(self.before.confidence, 4).tolist(),
            "after_confidence": np.round(self.after.confidence, 4).tolist(),
            "changed": changed.tolist(),
            "changed_tiles": int(changed.sum()), "unchanged_tiles": int((confident & ~changed).sum()),
            "uncertain_tiles": int((~confident).sum()),
            "changed_km2": round(float(changed.sum()) * cell, 6),
            "transition_tiles": m.tolist(),
            "transition_km2": np.round(m * cell, 6).tolist(),
            "transitions": self.transitions(),
            "cell_area_km2": cell, "pixel_size_source": self.before.pixel_size_source,
        }


def check_same_grid(before: Scene, after: Scene) -> None:
    """Raise ValueError unless the two scenes share one pixel grid (size; CRS and transform if georeferenced)."""
    fix = "Resample one onto the other first (e.g. gdalwarp -te/-tr, or crop both to the same window)."
    if (before.height, before.width) != (after.height, after.width):
        raise ValueError(f"The scenes differ in size: BEFORE is {before.width}x{before.height} px, AFTER is "
                         f"{after.width}x{after.height} px; change detection needs co-registered scenes on the "
                         f"same pixel grid. {fix}")
    if before.georeferenced and after.georeferenced:
        if before.crs != after.crs:
            raise ValueError(f"The scenes are in different CRSs (BEFORE {before.crs.to_string()}, AFTER "
                             f"{after.crs.to_string()}); expected the same grid. {fix}")
        tol = 1e-6 * max(abs(before.transform.a), abs(before.transform.e))
        if not before.transform.almost_equals(after.transform, precision=tol):
            raise ValueError(f"The scenes have the same size but different transforms (BEFORE "
                             f"{tuple(before.transform)[:6]}, AFTER {tuple(after.transform)[:6]}): they do not "
                             f"cover the same place pixel for pixel. {fix}")


def detect_change(predictor: "Predictor", before: Scene, after: Scene, stride: int = PATCH_SIZE_PX,
                  batch_size: int = 256, min_confidence: float = 0.5, progress: Optional[bool] = None,
                  tta: "bool | str" = False) -> ChangeResult:
    """Map both scenes on the same grid and compare them (see :class:`ChangeResult`)."""
    if not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"--min-confidence must be between 0 and 1, got {min_confidence}.")
    check_same_grid(before, after)
    a = map_scene(predictor, before, stride, batch_size, progress, tta)
    b = map_scene(predictor, after, stride, batch_size, progress, tta)
    if after.georeferenced and not before.georeferenced:  # areas from whichever date is georeferenced
        a.pixel_area_m2, a.pixel_size_source = b.pixel_area_m2, b.pixel_size_source
    return ChangeResult(a, b, min_confidence)


CHANGED_COLOUR = (255, 0, 64)
UNCERTAIN_COLOUR = (235, 235, 235)  # washed out: not enough confidence to say


def render_change(result: ChangeResult, after_scene: Scene, panel_px: int = 768) -> Image.Image:
    """Before map | after map | changes over the AFTER scene (greyed), with a legend."""
    m = result.before
    size = display_size(m.height, m.width, max_px=panel_px, min_px=min(panel_px, MIN_RENDER_PX))
    state = np.where(result.changed, 1, np.where(result.confident, 0, 2)).astype(np.int64)
    index = _index_image(state, m.stride, m.height, m.width, size, fill=0)
    grey = after_scene.thumbnail(*size).astype(np.float32).mean(axis=2, keepdims=True).repeat(3, axis=2)
    grey = 60 + 0.6 * grey  # dimmed so highlights stand out
    colours = np.array([(0, 0, 0), CHANGED_COLOUR, UNCERTAIN_COLOUR], dtype=np.float32)[index]
    weight = np.array([0.0, 0.75, 0.6], dtype=np.float32)[index][..., None]
    change = Image.fromarray(np.rint(grey * (1 - weight) + colours * weight).astype(np.uint8))
    gap = 12
    panels = [render_map(result.before, size), render_map(result.after, size), change]
    strip = Image.new("RGB", (3 * size[1] + 2 * gap, size[0] + 26), (255, 255, 255))
    draw, font = ImageDraw.Draw(strip), _font(15)
    for n, (panel, title) in enumerate(zip(panels, ("before", "after", "change"))):
        strip.paste(panel, (n * (size[1] + gap), 26))
        draw.text((n * (size[1] + gap) + 4, 4), title, fill=(0, 0, 0), font=font)
    cell, c = m.cell_area_km2, result.changed
    conf = result.confident
    entries = [(CHANGED_COLOUR, f"changed  {int(c.sum())} tiles  {c.sum() * cell:.3f} km2"),
               ((150, 150, 150), f"unchanged  {int((conf & ~c).sum())} tiles"),
               (UNCERTAIN_COLOUR, f"below {result.min_confidence:g} confidence  {int((~conf).sum())} tiles")]
    colours_cls = class_colours(m.labels)
    entries += [(tuple(colours_cls[i]), name) for i, name in enumerate(m.labels)]
    top = result.transitions()[:3]
    note = "Largest changes: " + "; ".join(f"{t['from']} -> {t['to']} {t['km2']:.3f} km2" for t in top) if top \
        else "No confident change."
    return add_legend(strip, entries, "Change", note.rstrip(".") + f". Pixel size: {m.pixel_size_source}.")


# ---------------------------------------------------------------- command line


def _bands_arg(text: str) -> tuple[int, ...]:
    import argparse

    try:
        bands = tuple(int(b) for b in text.replace(" ", "").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three 1-based band numbers like 4,3,2, got {text!r}") from None
    if len(bands) != 3:
        raise argparse.ArgumentTypeError(f"expected three band numbers (R,G,B), got {text!r}")
    return bands


def _add_common(p, model_help: str) -> None:
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument("--stride", type=int, default=PATCH_SIZE_PX,
                   help=f"Tile step in px; divides {PATCH_SIZE_PX}. Below {PATCH_SIZE_PX}, overlapping tiles are "
                        f"averaged per stride x stride cell (default {PATCH_SIZE_PX}: one cell per tile).")
    p.add_argument("--batch-size", type=int, default=256, help="Tiles per forward pass (bounds memory).")
    p.add_argument("--bands", type=_bands_arg, default=None,
                   help="GeoTIFF bands to use as R,G,B, 1-based (default: B04/B03/B02 from band descriptions).")
    p.add_argument("--clip", type=float, default=S2_CLIP,
                   help=f"16-bit data: raw value shown as 255 (default {S2_CLIP:g}: Sentinel-2 reflectance x 10000 "
                        f"clipped at 0.275, EuroSAT's RGB brightness).")
    p.add_argument("--offset", type=float, default=0.0,
                   help="16-bit data: subtracted before scaling (1000 for Sentinel-2 L2A baseline >= 04.00).")
    p.add_argument("--pixel-size", type=float, default=None,
                   help="Ground pixel size in metres (default: from the GeoTIFF, else 10 m assumed).")
    p.add_argument("--backend", default="onnx", choices=("torch", "onnx"),  # predict.BACKENDS (torch-free here)
                   help="Inference backend (default onnx: ONNX Runtime, exported once and cached, 5.5x torch's "
                        "tiles/s on 2 CPU cores; falls back to torch if the export fails).")
    p.add_argument("--tta", nargs="?", const=True, default=False, choices=tuple(TTA_MODES), metavar="MODE",
                   help=f"Average flips/rotations of every tile ({tta_choices_help()}; bare --tta: the model's mode "
                        f"or d4). Maps use one pass by default, even for models whose config asks for test-time "
                        f"augmentation on single patches.")
    p.add_argument("--json", action="store_true", help="Print one JSON object on stdout.")
    p.add_argument("--no-progress", action="store_true", help="No progress bar.")


def register_scene_commands(sub) -> None:
    """Add ``map`` and ``change`` to the ``python -m landcover`` subparsers."""
    model_help = "Model folder or Hub id org/name[@revision] (default: the embedded model)."
    mp = sub.add_parser("map", help="Land-cover map of a whole scene (PNG/JPEG or GeoTIFF).",
                        description="Tile a scene into 64 px patches, classify them, and write a colour-coded "
                                    "map with legend and per-class areas.")
    mp.add_argument("scene", help="RGB PNG/JPEG larger than 64 px, or a GeoTIFF (RGB or Sentinel-2 bands).")
    mp.add_argument("--out", required=True, help="Class map PNG with legend and areas.")
    mp.add_argument("--overlay", default=None, help="Also write the map blended over the scene (PNG).")
    mp.add_argument("--confidence", default=None, help="Also write per-cell confidence as a greyscale PNG.")
    mp.add_argument("--geotiff", default=None,
                    help="Also write the class raster as a GeoTIFF with the input's CRS and transform "
                         "(GeoTIFF input only).")
    _add_common(mp, model_help)
    mp.set_defaults(func=_map_command)

    ch = sub.add_parser("change", help="Land-cover change between two co-registered scenes.",
                        description="Map two scenes of the same place on the same grid and report per-tile "
                                    "class changes and a from->to transition matrix.")
    ch.add_argument("before", help="Earlier scene.")
    ch.add_argument("after", help="Later scene (same size; for GeoTIFFs the same CRS and transform).")
    ch.add_argument("--out", required=True, help="Change map PNG (before | after | changes, with legend).")
    ch.add_argument("--min-confidence", type=float, default=0.5,
                    help="A tile counts as changed only where both dates reach this confidence (default 0.5).")
    _add_common(ch, model_help)
    ch.set_defaults(func=_change_command)


def _open(path: str, args) -> Scene:
    return open_scene(path, bands=args.bands, clip=args.clip, offset=args.offset, pixel_size_m=args.pixel_size)


def _map_command(args) -> int:
    from .predict import load_predictor

    with _open(args.scene, args) as scene:
        if args.geotiff and not scene.georeferenced:
            raise ValueError(f"--geotiff needs a georeferenced GeoTIFF scene; {args.scene!r} has no CRS/transform. "
                             f"Drop --geotiff, or use --out for a PNG map.")
        predictor = load_predictor(args.model, backend=args.backend)
        result = map_scene(predictor, scene, args.stride, args.batch_size, False if args.no_progress else None,
                           args.tta)
        render_map_with_legend(result).save(args.out)
        written = {"map": args.out}
        if args.overlay:
            render_overlay(result, scene).save(args.overlay)
            written["overlay"] = args.overlay
        if args.confidence:
            render_confidence(result).save(args.confidence)
            written["confidence"] = args.confidence
        if args.geotiff:
            write_class_geotiff(result, args.geotiff)
            written["geotiff"] = args.geotiff
    if args.json:
        print(json.dumps({**result.to_json(), "outputs": written}))
        return 0
    rows, cols = result.grid.shape
    print(f"scene {args.scene}: {result.width}x{result.height} px, {rows}x{cols} cells of {result.stride} px")
    print(f"pixel size: {result.pixel_size_source}")
    for name, row in sorted(result.area_table().items(), key=lambda kv: -kv[1]["cells"]):
        print(f"  {name:22s} {row['percent']:6.2f} %  {row['km2']:10.4f} km²")
    print("wrote " + ", ".join(f"{k} {v}" for k, v in written.items()))
    return 0


def _change_command(args) -> int:
    with _open(args.before, args) as before, _open(args.after, args) as after:
        check_same_grid(before, after)  # before loading the model: fail fast
        from .predict import load_predictor

        predictor = load_predictor(args.model, backend=args.backend)
        result = detect_change(predictor, before, after, args.stride, args.batch_size, args.min_confidence,
                               False if args.no_progress else None, args.tta)
        render_change(result, after).save(args.out)
    if args.json:
        print(json.dumps({**result.to_json(), "outputs": {"change": args.out}}))
        return 0
    data = result.to_json()
    print(f"{data['rows']}x{data['cols']} tiles: {data['changed_tiles']} changed ({data['changed_km2']:.4f} km²), "
          f"{data['unchanged_tiles']} unchanged, {data['uncertain_tiles']} below confidence {args.min_confidence:g}")
    for t in data["transitions"]:
        print(f"  {t['from']:22s} -> {t['to']:22s} {t['tiles']:6d} tiles  {t['km2']:10.4f} km²")
    print(f"wrote change {args.out}")
    return 0
