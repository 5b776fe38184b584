"""Drawing scene maps: fixed class colours, the map, the overlay, confidence, and legends.

Display pixels look their cell up (nearest); large scenes are shrunk to ``MAX_RENDER_PX`` and small ones
enlarged to ``MIN_RENDER_PX``. Cells left out by masks (:data:`landcover.readers.raster.MASK_REASONS`) get their
own colours, and the legend lists them with their areas, apart from the classes.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from landcover.core.labels import CLASS_COLOURS
from landcover.scenes.mapping import CELL_REASONS, SceneMap
from landcover.readers.raster import Scene

UNCLASSIFIED_COLOUR = (255, 255, 255)
MASK_COLOURS = {"no data": (245, 245, 245), "saturated/defective": (255, 0, 255), "cloud shadow": (70, 70, 70),
                "cloud": (200, 200, 200), "thin cirrus": (175, 215, 250), "snow/ice": (150, 230, 230),
                "uncertain": (150, 150, 150)}
HATCH_COLOUR = (110, 110, 110)  # diagonal lines over uncertain cells
HATCH_PERIOD = 6  # display pixels between hatch lines
MAX_RENDER_PX = 2048  # longest side of rendered maps (large scenes are downsampled for display)
MIN_RENDER_PX = 512  # small scenes are enlarged (nearest neighbour) so the map stays readable


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


def display_colours(labels: Sequence[str]) -> np.ndarray:
    """uint8 ``(C + 1 + len(CELL_REASONS), 3)``: class colours, "not classified", then one per mask reason and
    "uncertain"."""
    masks = np.array([MASK_COLOURS[r] for r in CELL_REASONS], dtype=np.uint8)
    return np.concatenate([class_colours(labels), masks])


def display_grid(scene_map: SceneMap) -> np.ndarray:
    """int per cell: class index, or ``C + reason`` for masked cells (indices into :func:`display_colours`)."""
    n = len(scene_map.labels)
    return np.where(scene_map.classified, scene_map.grid, n + scene_map.reason.astype(np.int64))


def display_size(height: int, width: int, max_px: int = MAX_RENDER_PX, min_px: int = MIN_RENDER_PX
                 ) -> tuple[int, int]:
    """Rendered (height, width): the scene's own size, shrunk to ``max_px`` or grown to ``min_px``."""
    longest = max(height, width)
    f = min(1.0, max_px / longest) if longest > min_px else min_px / longest
    return max(1, round(height * f)), max(1, round(width * f))


def cell_image(grid: np.ndarray, stride: int, height: int, width: int, size: tuple[int, int], fill: int
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
    index = cell_image(display_grid(scene_map), scene_map.stride, scene_map.height, scene_map.width, size,
                         fill=len(scene_map.labels))
    image = display_colours(scene_map.labels)[index]
    yy, xx = np.mgrid[0:size[0], 0:size[1]]
    hatch = (index == len(scene_map.labels) + len(CELL_REASONS)) & ((yy + xx) % HATCH_PERIOD == 0)
    image[hatch] = HATCH_COLOUR
    return Image.fromarray(image)


def render_overlay(scene_map: SceneMap, scene: Scene, alpha: float = 0.5,
                   size: Optional[tuple[int, int]] = None) -> Image.Image:
    """The class map blended over the scene (``alpha`` = map weight); unclassified and masked cells show the scene."""
    size = size or display_size(scene_map.height, scene_map.width)
    base = scene.thumbnail(*size).astype(np.float32)
    index = cell_image(display_grid(scene_map), scene_map.stride, scene_map.height, scene_map.width, size,
                         fill=len(scene_map.labels))
    colours = display_colours(scene_map.labels)[index].astype(np.float32)
    weight = np.where(index >= len(scene_map.labels), 0.0, alpha)[..., None]
    return Image.fromarray(np.rint(base * (1 - weight) + colours * weight).astype(np.uint8))


def render_confidence(scene_map: SceneMap, size: Optional[tuple[int, int]] = None) -> Image.Image:
    """Per-cell confidence as greyscale (black = 0, white = 1; unclassified edges black)."""
    size = size or display_size(scene_map.height, scene_map.width)
    conf = np.rint(scene_map.confidence * 255).astype(np.uint8)
    return Image.fromarray(cell_image(conf, scene_map.stride, scene_map.height, scene_map.width, size, fill=0))


def legend_font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def add_legend(image: Image.Image, entries: Sequence[tuple[tuple[int, int, int], str]], title: str = "",
               note: str = "", width: int = 380) -> Image.Image:
    """``image`` with a legend panel on its right: a swatch and a text line per entry, then a note."""
    font, small, line = legend_font(15), legend_font(12), 24
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
    """One legend line per class (colour, name, % and km² of the classified area), then masks and edges."""
    colours = class_colours(scene_map.labels)
    table = scene_map.area_table()
    entries = [(tuple(colours[i]), f"{name}  {table[name]['percent']:5.1f} %  {table[name]['km2']:.3f} km2")
               for i, name in enumerate(scene_map.labels)]
    for reason, row in scene_map.masked_table().items():
        entries.append((MASK_COLOURS[reason], f"masked: {reason}  {row['km2']:.3f} km2"))
    if scene_map.cloud_flagged.any():
        km2 = int(scene_map.cloud_flagged.sum()) * scene_map.cell_area_km2
        entries.append((MASK_COLOURS["cloud"], f"of which cloud/haze suspected (class kept)  {km2:.3f} km2"))
    if scene_map.uncertain.any():
        km2 = int(scene_map.uncertain.sum()) * scene_map.cell_area_km2
        entries.append((MASK_COLOURS["uncertain"], f"uncertain (top-1 < {scene_map.min_confidence:g})  {km2:.3f} km2"))
    rows, cols = scene_map.grid.shape
    if rows * scene_map.stride < scene_map.height or cols * scene_map.stride < scene_map.width:
        entries.append((UNCLASSIFIED_COLOUR, "not classified (edge < one tile)"))
    return entries


def render_map_with_legend(scene_map: SceneMap) -> Image.Image:
    """The PNG written by ``map --out``: class map plus legend with areas and the pixel-size note."""
    rows, cols = scene_map.grid.shape
    note = (f"{rows}x{cols} cells of {scene_map.stride} px, {scene_map.patch_size} px tiles. "
            f"{method_note(scene_map)}Pixel size: {scene_map.pixel_size_source}. {scene_note(scene_map)}")
    return add_legend(render_map(scene_map), map_legend_entries(scene_map), "Land cover", note)


def method_note(scene_map: SceneMap) -> str:
    """Which evidence decided the classes and how the CNN was adapted, for legends and summaries."""
    return (f"Evidence: {scene_map.evidence_note}. "
            + (f"Adapted: {scene_map.adaptation}. " if scene_map.adaptation else ""))


def scene_note(scene_map: SceneMap) -> str:
    """Radiometry and warnings in one sentence, for legends and summaries."""
    radiometry = scene_map.scene_info.get("radiometry") or {}
    text = f"Radiometry: {radiometry['scaling']['description']}." if radiometry else ""
    warnings = scene_map.scene_info.get("warnings") or []
    return text + "".join(f" WARNING: {w}" for w in warnings)
