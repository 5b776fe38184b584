"""Change between two dates: both scenes through the same reading path, mapped on one grid, compared per cell.

A cell is compared where both dates classified it (masks and edges are left out, counted as
``masked_tiles``); it is *confident* where both reach ``min_confidence``, and *changed* where it is
confident and the classes differ.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Optional

import numpy as np
from PIL import Image, ImageDraw

from landcover.scenes.mapping import MapOptions, SceneMap, map_scene
from landcover.readers.raster import Scene
from landcover.scenes.render import MIN_RENDER_PX, add_legend, cell_image, class_colours, display_size, legend_font, render_map

if TYPE_CHECKING:
    from landcover.inference.predictor import Predictor


@dataclass
class ChangeResult:
    """Two scene maps on the same grid, compared cell by cell."""

    before: SceneMap
    after: SceneMap
    min_confidence: float

    @property
    def comparable(self) -> np.ndarray:
        """bool ``(rows, cols)``: cells classified on both dates (not masked on either)."""
        return self.before.classified & self.after.classified

    @property
    def confident(self) -> np.ndarray:
        """bool ``(rows, cols)``: comparable and both dates at least ``min_confidence``."""
        return self.comparable & (self.before.confidence >= self.min_confidence) & (
            self.after.confidence >= self.min_confidence)

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
            "before_grid": self.before.named_grid(),
            "after_grid": self.after.named_grid(),
            "before_confidence": np.round(self.before.confidence, 4).tolist(),
            "after_confidence": np.round(self.after.confidence, 4).tolist(),
            "changed": changed.tolist(),
            "changed_tiles": int(changed.sum()), "unchanged_tiles": int((confident & ~changed).sum()),
            "uncertain_tiles": int((self.comparable & ~confident).sum()),
            "masked_tiles": int((~self.comparable).sum()),
            "changed_km2": round(float(changed.sum()) * cell, 6),
            "transition_tiles": m.tolist(),
            "transition_km2": np.round(m * cell, 6).tolist(),
            "transitions": self.transitions(),
            "cell_area_km2": cell, "pixel_size_source": self.before.pixel_size_source,
            "crs": self.before.crs.to_string() if self.before.crs is not None else None,
            "radiometry": {"before": self.before.scene_info.get("radiometry"),
                           "after": self.after.scene_info.get("radiometry")},
            "warnings": [f"BEFORE: {w}" for w in self.before.scene_info.get("warnings", [])]
                        + [f"AFTER: {w}" for w in self.after.scene_info.get("warnings", [])],
        }


def check_same_grid(before: Scene, after: Scene) -> None:
    """Raise ValueError unless the two scenes share one pixel grid (size; CRS and transform if georeferenced)."""
    fix = "Resample one onto the other first (e.g. gdalwarp -te/-tr, or crop both to the same window)."
    if (before.height, before.width) != (after.height, after.width):
        raise ValueError(f"The scenes differ in size: BEFORE is {before.width}x{before.height} px, AFTER is "
                         f"{after.width}x{after.height} px; change detection needs co-registered scenes on the "
                         f"same pixel grid. {fix}")
    if before.georeferenced and after.georeferenced:
        if before.grid.crs != after.grid.crs:
            raise ValueError(f"The scenes are in different CRSs (BEFORE {before.grid.crs.to_string()}, AFTER "
                             f"{after.grid.crs.to_string()}); expected the same grid. {fix}")
        tol = 1e-6 * max(abs(before.grid.transform.a), abs(before.grid.transform.e))
        if not before.grid.transform.almost_equals(after.grid.transform, precision=tol):
            raise ValueError(f"The scenes have the same size but different transforms (BEFORE "
                             f"{tuple(before.grid.transform)[:6]}, AFTER {tuple(after.grid.transform)[:6]}): they "
                             f"do not cover the same place pixel for pixel. {fix}")


def detect_change(predictor: "Predictor", before: Scene, after: Scene, options: Optional[MapOptions] = None,
                  min_confidence: float = 0.5, **overrides) -> ChangeResult:
    """Map both scenes on the same grid with the same :class:`MapOptions` and compare them (:class:`ChangeResult`).

    ``overrides`` replace single option fields, as in :func:`~landcover.scenes.mapping.map_scene`.
    """
    if not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"--min-confidence must be between 0 and 1, got {min_confidence}.")
    check_same_grid(before, after)
    # Each date keeps a class in every cell: the change's own min_confidence (both dates) decides what is compared.
    options = replace(options or MapOptions(), **{**overrides, "min_confidence": 0.0})
    a = map_scene(predictor, before, options)
    b = map_scene(predictor, after, options)
    if after.georeferenced and not before.georeferenced:  # areas from whichever date is georeferenced
        a.pixel_area_m2, a.pixel_size_source = b.pixel_area_m2, b.pixel_size_source
    return ChangeResult(a, b, min_confidence)


CHANGED_COLOUR = (255, 0, 64)
UNCERTAIN_COLOUR = (235, 235, 235)  # washed out: not enough confidence to say
MASKED_COLOUR = (255, 255, 255)  # masked (cloud, no data...) on either date: not compared


def render_change(result: ChangeResult, after_scene: Scene, panel_px: int = 768) -> Image.Image:
    """Before map | after map | changes over the AFTER scene (greyed), with a legend."""
    m = result.before
    size = display_size(m.height, m.width, max_px=panel_px, min_px=min(panel_px, MIN_RENDER_PX))
    state = np.where(result.changed, 1, np.where(result.confident, 0, np.where(result.comparable, 2, 3)))
    index = cell_image(state, m.stride, m.height, m.width, size, fill=0)
    grey = after_scene.thumbnail(*size).astype(np.float32).mean(axis=2, keepdims=True).repeat(3, axis=2)
    grey = 60 + 0.6 * grey  # dimmed so highlights stand out
    colours = np.array([(0, 0, 0), CHANGED_COLOUR, UNCERTAIN_COLOUR, MASKED_COLOUR], dtype=np.float32)[index]
    weight = np.array([0.0, 0.75, 0.6, 0.85], dtype=np.float32)[index][..., None]
    change = Image.fromarray(np.rint(grey * (1 - weight) + colours * weight).astype(np.uint8))
    gap = 12
    panels = [render_map(result.before, size), render_map(result.after, size), change]
    strip = Image.new("RGB", (3 * size[1] + 2 * gap, size[0] + 26), (255, 255, 255))
    draw, font = ImageDraw.Draw(strip), legend_font(15)
    for n, (panel, title) in enumerate(zip(panels, ("before", "after", "change"))):
        strip.paste(panel, (n * (size[1] + gap), 26))
        draw.text((n * (size[1] + gap) + 4, 4), title, fill=(0, 0, 0), font=font)
    cell, c = m.cell_area_km2, result.changed
    conf = result.confident
    entries = [(CHANGED_COLOUR, f"changed  {int(c.sum())} tiles  {c.sum() * cell:.3f} km2"),
               ((150, 150, 150), f"unchanged  {int((conf & ~c).sum())} tiles"),
               (UNCERTAIN_COLOUR, f"below {result.min_confidence:g} confidence  "
                                  f"{int((result.comparable & ~conf).sum())} tiles")]
    if (~result.comparable).any():
        entries.append((MASKED_COLOUR, f"masked on either date  {int((~result.comparable).sum())} tiles"))
    colours_cls = class_colours(m.labels)
    entries += [(tuple(colours_cls[i]), name) for i, name in enumerate(m.labels)]
    top = result.transitions()[:3]
    note = "Largest changes: " + "; ".join(f"{t['from']} -> {t['to']} {t['km2']:.3f} km2" for t in top) if top \
        else "No confident change."
    return add_legend(strip, entries, "Change", note.rstrip(".") + f". Pixel size: {m.pixel_size_source}.")
