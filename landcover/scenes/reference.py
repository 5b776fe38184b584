"""Scoring a scene map against an independent land-cover reference (vector polygons or a class raster).

Both sides are collapsed onto four classes that EuroSAT's ten and common reference legends share
(:data:`REFERENCE_CLASSES`): Forest, Grass/crop, Urban, Water. The reference is rasterized on the scene's own
10 m grid (the grid the map was made on), and every map cell (``stride x stride`` px) whose pixels are at least
``purity`` one reference class is scored. A cell the map left out (masked, uncertain) counts as a miss: being
unsure is better than being wrong, but right is the goal.

Crosswalks (reference value -> reference class; anything else is unscored):

* :data:`OSM_CROSSWALK` for OpenStreetMap land-use / water polygons (``fclass``): forest; farm, meadow, grass,
  scrub; residential; water. Wetland is unscored (EuroSAT has no such class).
* :data:`WORLDCOVER_CROSSWALK` for ESA WorldCover 10 m rasters: 10 tree cover; 20 shrubland, 30 grassland,
  40 cropland; 50 built-up; 80 permanent water. Bare, snow, wetland, mangroves and moss are unscored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

import numpy as np

if TYPE_CHECKING:
    from landcover.scenes.mapping import SceneMap

REFERENCE_CLASSES = ("Forest", "Grass/crop", "Urban", "Water")
EUROSAT_TO_REFERENCE = {
    "Forest": "Forest",
    "AnnualCrop": "Grass/crop", "PermanentCrop": "Grass/crop", "Pasture": "Grass/crop",
    "HerbaceousVegetation": "Grass/crop",
    "Residential": "Urban", "Industrial": "Urban", "Highway": "Urban",
    "River": "Water", "SeaLake": "Water",
}
OSM_CROSSWALK = {"forest": "Forest", "farm": "Grass/crop", "meadow": "Grass/crop", "grass": "Grass/crop",
                 "scrub": "Grass/crop", "residential": "Urban", "water": "Water"}
WORLDCOVER_CROSSWALK = {10: "Forest", 20: "Grass/crop", 30: "Grass/crop", 40: "Grass/crop", 50: "Urban",
                        80: "Water"}
CROSSWALKS = {"osm": OSM_CROSSWALK, "worldcover": WORLDCOVER_CROSSWALK}
# The scoring rule of the development scene's README: a cell is scored when >= 75 % of it is one reference class.
DEFAULT_PURITY = 0.75
UNLABELLED = 0  # reference raster value of pixels without a scored class (1 + REFERENCE_CLASSES index otherwise)


@dataclass(frozen=True)
class GridSpec:
    """The pixel grid a reference is rasterized on: the scene's 10 m grid."""

    height: int
    width: int
    crs: object  # rasterio CRS
    transform: object  # affine.Affine

    @classmethod
    def of_scene(cls, scene) -> "GridSpec":
        """The grid of an open :class:`~landcover.readers.raster.Scene` (its 10 m grid, what maps are made on)."""
        return cls(scene.height, scene.width, scene.grid.crs, scene.grid.transform)


def map_to_reference(labels: Sequence[str]) -> np.ndarray:
    """int array: reference class index (0..3) of each model label, -1 for labels without one."""
    index = {name: i for i, name in enumerate(REFERENCE_CLASSES)}
    return np.array([index.get(EUROSAT_TO_REFERENCE.get(name, ""), -1) for name in labels], dtype=np.int64)


def rasterize_reference(path: str | Path, grid: GridSpec, crosswalk: Mapping, field_name: str = "fclass"
                        ) -> np.ndarray:
    """uint8 ``(height, width)``: ``1 + REFERENCE_CLASSES`` index per pixel, :data:`UNLABELLED` elsewhere.

    ``path`` is a vector file GDAL reads (GeoPackage, GeoJSON, Shapefile; ``field_name`` holds the class) or a
    single-band class raster (GeoTIFF; its values are looked up in ``crosswalk``), in any CRS.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Reference {str(path)!r} does not exist; expected a vector file (GeoPackage, "
                                f"GeoJSON) or a class raster (GeoTIFF).")
    if path.suffix.lower() in (".tif", ".tiff", ".vrt"):
        return _raster_reference(path, grid, crosswalk)
    return _vector_reference(path, grid, crosswalk, field_name)


def _vector_reference(path: Path, grid: GridSpec, crosswalk: Mapping, field_name: str) -> np.ndarray:
    import pyogrio
    import shapely
    from rasterio.features import rasterize
    from rasterio.warp import transform_geom

    meta, _, geometries, fields = pyogrio.raw.read(str(path))
    names = list(meta["fields"])
    if field_name not in names:
        raise ValueError(f"The reference {path.name} has no field {field_name!r}; its fields are {names}. "
                         f"Pass the field that holds the land-cover class.")
    values = fields[names.index(field_name)]
    source_crs = meta.get("crs")
    target_crs = grid.crs.to_string() if hasattr(grid.crs, "to_string") else str(grid.crs)
    shapes = []
    for wkb, value in zip(geometries, values):
        name = crosswalk.get(value)
        if name is None or wkb is None:
            continue
        geom = shapely.from_wkb(wkb).__geo_interface__
        if source_crs and source_crs != target_crs:
            geom = transform_geom(source_crs, target_crs, geom)
        shapes.append((geom, 1 + REFERENCE_CLASSES.index(name)))
    if not shapes:
        raise ValueError(f"No polygon of {path.name} has a scored class; values of {field_name!r} expected "
                         f"among {sorted(crosswalk)}.")
    # Later shapes overwrite earlier ones; polygons of one class rarely overlap another in these references.
    return rasterize(shapes, out_shape=(grid.height, grid.width), transform=grid.transform, fill=UNLABELLED,
                     dtype="uint8")


def _raster_reference(path: Path, grid: GridSpec, crosswalk: Mapping) -> np.ndarray:
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    with rasterio.open(path) as ds, WarpedVRT(ds, crs=grid.crs, transform=grid.transform, width=grid.width,
                                              height=grid.height, resampling=Resampling.nearest) as vrt:
        values = vrt.read(1)
    lut = np.zeros(max(256, int(values.max()) + 1), dtype=np.uint8)
    for value, name in crosswalk.items():
        lut[int(value)] = 1 + REFERENCE_CLASSES.index(name)
    return lut[values]


@dataclass
class Score:
    """Cell-level agreement of a map with a reference (see the module docstring for the rule)."""

    confusion: np.ndarray  # int (4, 5): reference class x mapped class, last column = not classified
    left_out: int = 0  # scored cells the map did not classify (masked / uncertain): misses
    classes: tuple = REFERENCE_CLASSES
    notes: list = field(default_factory=list)

    @property
    def cells(self) -> int:
        return int(self.confusion.sum())

    @property
    def agreement(self) -> float:
        return float(_metrics(self.confusion)[0])

    @property
    def recall(self) -> dict[str, Optional[float]]:
        rows = self.confusion.sum(axis=1)
        return {c: (float(self.confusion[i, i] / rows[i]) if rows[i] else None) for i, c in enumerate(self.classes)}

    @property
    def balanced(self) -> float:
        """Mean recall over the reference classes present."""
        return float(_metrics(self.confusion)[1])

    @property
    def coverage(self) -> float:
        """Share of scored cells the map classified."""
        return 1.0 - self.left_out / max(self.cells, 1)

    def to_json(self) -> dict:
        return {"cells": self.cells, "agreement": round(self.agreement, 4), "balanced": round(self.balanced, 4),
                "coverage": round(self.coverage, 4),
                "recall": {k: (round(v, 4) if v is not None else None) for k, v in self.recall.items()},
                "cells_per_class": dict(zip(self.classes, self.confusion.sum(axis=1).tolist())),
                "confusion": {"rows (reference)": list(self.classes),
                              "columns (map)": [*self.classes, "not classified"],
                              "counts": self.confusion.tolist()}}


def reference_cells(reference: np.ndarray, stride: int, rows: int, cols: int, purity: float = DEFAULT_PURITY
                    ) -> np.ndarray:
    """int ``(rows, cols)``: the reference class (0..3) of each map cell at least ``purity`` one class, else -1."""
    if not 0.5 < purity <= 1.0:
        raise ValueError(f"purity must be in (0.5, 1] (share of a cell's pixels of one class), got {purity}.")
    cells = reference[:rows * stride, :cols * stride].reshape(rows, stride, cols, stride)
    counts = np.stack([(cells == 1 + k).sum(axis=(1, 3)) for k in range(len(REFERENCE_CLASSES))])
    best = counts.argmax(axis=0)
    pure = counts.max(axis=0) >= purity * stride * stride
    return np.where(pure, best, -1)


def score_cells(mapped: np.ndarray, truth: np.ndarray) -> Score:
    """Score mapped reference classes (``(rows, cols)``, 0..3, -1 = not classified) against ``truth`` cells."""
    if mapped.shape != truth.shape:
        raise ValueError(f"The map has {mapped.shape} cells and the reference {truth.shape}; expected the same grid.")
    scored = truth >= 0
    t, m = truth[scored], mapped[scored]
    m = np.where(m < 0, len(REFERENCE_CLASSES), m)
    confusion = np.zeros((len(REFERENCE_CLASSES), len(REFERENCE_CLASSES) + 1), dtype=np.int64)
    np.add.at(confusion, (t, m), 1)
    return Score(confusion, left_out=int(confusion[:, -1].sum()))


def score_map(result: "SceneMap", reference: np.ndarray, purity: float = DEFAULT_PURITY
              ) -> tuple[np.ndarray, np.ndarray, Score]:
    """Score a scene map against a reference rasterized on its
    scene's grid (:func:`rasterize_reference`): ``(mapped, truth, score)``, the two cell grids (reference classes
    0..3, -1 = not classified / not scored) for :func:`paired_difference`, and the :class:`Score`."""
    rows, cols = result.grid.shape
    truth = reference_cells(reference, result.stride, rows, cols, purity)
    mapped = np.where(result.classified, map_to_reference(result.labels)[result.grid], -1)
    return mapped, truth, score_cells(mapped, truth)


@dataclass
class PairedDifference:
    """Map B against map A on the same reference cells: differences (B - A) with 95 % block-bootstrap intervals."""

    agreement: tuple[float, float, float]  # difference, low, high
    balanced: tuple[float, float, float]
    only_a: int  # cells right in A only
    only_b: int  # cells right in B only
    blocks: int  # blocks of cells resampled

    def describe(self, a: str = "A", b: str = "B") -> str:
        agr, bal = self.agreement, self.balanced
        return (f"{b} - {a}: agreement {agr[0]:+.3f} (95 % CI {agr[1]:+.3f} to {agr[2]:+.3f}), balanced "
                f"{bal[0]:+.3f} ({bal[1]:+.3f} to {bal[2]:+.3f}); cells right only in {a} {self.only_a}, only in "
                f"{b} {self.only_b}; bootstrap over {self.blocks} blocks of cells")


def _metrics(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Agreement and balanced accuracy (mean recall over the classes present) of one confusion matrix ``(4, 5)`` or
    a stack ``(..., 4, 5)``: the one definition :class:`Score` and :func:`paired_difference` share."""
    n = len(REFERENCE_CLASSES)
    cells = confusion.sum(axis=(-2, -1))
    diag = np.trace(confusion[..., :n], axis1=-2, axis2=-1)
    rows = confusion.sum(axis=-1)
    recall = np.divide(np.diagonal(confusion[..., :n], axis1=-2, axis2=-1), rows, out=np.zeros(rows.shape),
                       where=rows > 0)
    return diag / np.maximum(cells, 1), recall.sum(axis=-1) / np.maximum((rows > 0).sum(axis=-1), 1)


def paired_difference(mapped_a: np.ndarray, mapped_b: np.ndarray, truth: np.ndarray, block: int = 4,
                      draws: int = 2000, seed: int = 0) -> PairedDifference:
    """How much better map B scores than map A on the same reference cells, and how sure that is.

    Neighbouring cells are not independent (at stride 16 each tile covers 4 x 4 cells, and land cover comes in
    patches), so the interval resamples ``block x block`` blocks of cells with replacement, not single cells; it is
    still narrower than the spread over *other scenes*, which one scene cannot measure.
    """
    if not mapped_a.shape == mapped_b.shape == truth.shape:
        raise ValueError(f"Expected maps and reference on one grid; got {mapped_a.shape}, {mapped_b.shape} and "
                         f"{truth.shape}.")
    n = len(REFERENCE_CLASSES)
    rows, cols = truth.shape
    block_id = (np.arange(rows)[:, None] // block) * (-(-cols // block)) + np.arange(cols)[None, :] // block
    scored = truth >= 0
    ids, inverse = np.unique(block_id[scored], return_inverse=True)
    t = truth[scored]
    per_block = np.zeros((2, len(ids), n, n + 1), dtype=np.int64)
    for k, mapped in enumerate((mapped_a, mapped_b)):
        m = mapped[scored]
        np.add.at(per_block[k], (inverse, t, np.where(m < 0, n, m)), 1)
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(len(ids), np.full(len(ids), 1 / len(ids)), size=draws)  # (draws, blocks)
    figures = []
    for k in range(2):
        whole = _metrics(per_block[k].sum(axis=0))
        boot = _metrics(np.einsum("db,bij->dij", weights, per_block[k]))
        figures.append((whole, boot))
    out = []
    for i in range(2):  # agreement, balanced
        diff = float(figures[1][0][i] - figures[0][0][i])
        low, high = np.percentile(figures[1][1][i] - figures[0][1][i], [2.5, 97.5])
        out.append((diff, float(low), float(high)))
    right_a = mapped_a[scored] == t
    right_b = mapped_b[scored] == t
    return PairedDifference(out[0], out[1], int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum()), len(ids))


def score_class_geotiff(path: str | Path, reference: str | Path, crosswalk: str = "osm", field_name: str = "fclass",
                        purity: float = DEFAULT_PURITY) -> Score:
    """Score a class GeoTIFF written by ``landcover map --geotiff`` (or a scene of ``map-region``) against
    ``reference`` (see :func:`rasterize_reference`), cell by cell as the module docstring says."""
    import rasterio
    import rasterio.errors

    if crosswalk not in CROSSWALKS:
        raise ValueError(f"Unknown crosswalk {crosswalk!r}; expected one of {sorted(CROSSWALKS)}.")
    try:
        ds = rasterio.open(path)
    except rasterio.errors.RasterioIOError as err:
        raise ValueError(f"{path} cannot be read as a raster ({err}); expected the class GeoTIFF of "
                         f"`landcover map --geotiff`.") from None
    with ds:
        tags = ds.tags()
        if "classes" not in tags or "stride_px" not in tags:
            raise ValueError(f"{path} has no 'classes' / 'stride_px' tags: expected the class GeoTIFF of "
                             f"`landcover map --geotiff` (its first band, one value per cell).")
        labels, stride = json.loads(tags["classes"]), int(tags["stride_px"])
        codes = ds.read(1)
        grid = GridSpec(ds.height, ds.width, ds.crs, ds.transform)
    rows, cols = grid.height // stride, grid.width // stride
    cells = codes[:rows * stride:stride, :cols * stride:stride].astype(np.int64)  # a cell's pixels share its code
    classified = cells < len(labels)  # 2xx masked or uncertain, 255 no data
    mapped = np.where(classified, map_to_reference(labels)[np.where(classified, cells, 0)], -1)
    truth = reference_cells(rasterize_reference(reference, grid, CROSSWALKS[crosswalk], field_name), stride, rows,
                            cols, purity)
    return score_cells(mapped, truth)


def format_score(score: Score) -> str:
    """Agreement, balanced accuracy, coverage, recall per class and the confusion matrix, as text."""
    recall = " / ".join("-" if v is None else f"{v:.2f}" for v in score.recall.values())
    lines = [f"cells scored {score.cells}: agreement {score.agreement:.3f}, balanced accuracy {score.balanced:.3f}, "
             f"coverage {score.coverage:.3f}",
             f"recall {' / '.join(score.classes)}: {recall}",
             "reference / map ".ljust(16) + "".join(f"{c[:10]:>11s}" for c in [*score.classes, "none"])]
    lines += [f"{cls:16s}" + "".join(f"{v:11d}" for v in row) for cls, row in zip(score.classes, score.confusion)]
    return "\n".join(lines)
