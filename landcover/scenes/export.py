"""GIS outputs of scene maps: class GeoTIFFs and GeoJSON polygons, on the scene's own CRS.

Class raster, band 1: class index ``0 .. C-1``; ``255`` = nodata (edge not covered by a whole tile, or
input no-data); ``MASK_CODE_BASE + k`` for cells left out for reason ``k`` of
:data:`landcover.scenes.mapping.CELL_REASONS` (202 saturated/defective, 203 cloud shadow, 204 cloud, 205 thin
cirrus, 206 snow/ice, 207 uncertain). The tag ``classes`` lists the labels, ``mask_codes`` those values,
``evidence`` what decided the classes. Band 2: the top-1 probability in percent (255 where masked).

GeoJSON: one polygon (with holes) per connected region of equal value on the cell grid
(``rasterio.features.shapes``), coordinates in the scene's CRS, named in the legacy ``crs`` member
that GDAL and QGIS read (RFC 7946 readers that assume WGS 84 need ``ogr2ogr -t_srs EPSG:4326``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from landcover.scenes.mapping import CELL_REASONS, SceneMap
from landcover.readers.raster import MASK_REASONS
from landcover.scenes.render import display_colours

if TYPE_CHECKING:
    from landcover.scenes.change import ChangeResult

NODATA = 255
MASK_CODE_BASE = 200


def _need_crs(scene_map: SceneMap, flag: str) -> None:
    if scene_map.crs is None:
        raise ValueError(f"{flag} needs a georeferenced scene (with a CRS); {scene_map.source!r} has none. "
                         f"Use --out for a PNG map instead.")


def class_codes(scene_map: SceneMap) -> np.ndarray:
    """uint8 per cell: class index, 255 for input no-data, ``MASK_CODE_BASE + reason`` for other masks."""
    reason = scene_map.reason.astype(np.int64)
    codes = np.where(reason == 0, scene_map.grid, MASK_CODE_BASE + reason)
    codes[reason == 1] = NODATA  # reason 1 = "no data"
    return codes.astype(np.uint8)


def _write_cells(path: Path, layers: list[np.ndarray], scene_map: SceneMap, descriptions: list[str],
                 tags: dict, colormap: Optional[dict] = None) -> Path:
    """Write per-cell uint8 ``layers`` expanded to the scene's pixel grid, one row of cells at a time."""
    import rasterio
    from rasterio.windows import Window

    s, w, h = scene_map.stride, scene_map.width, scene_map.height
    profile = dict(driver="GTiff", height=h, width=w, count=len(layers), dtype="uint8", crs=scene_map.crs,
                   transform=scene_map.transform, nodata=NODATA, compress="deflate", tiled=True,
                   blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **profile) as dst:
        for a in range(math.ceil(h / s)):
            lines = np.full((len(layers), w), NODATA, dtype=np.uint8)
            for b, layer in enumerate(layers):
                if a < layer.shape[0]:
                    lines[b, :layer.shape[1] * s] = np.repeat(layer[a], s)
            n = min(s, h - a * s)
            dst.write(np.broadcast_to(lines[:, None], (len(layers), n, w)), window=Window(0, a * s, w, n))
        if colormap:
            dst.write_colormap(1, colormap)
        for b, text in enumerate(descriptions, start=1):
            dst.set_band_description(b, text)
        dst.update_tags(**tags)
    return path


def _colormap(labels) -> dict:
    colours = display_colours(labels)
    n = len(labels)
    cmap = {i: (*map(int, colours[i]), 255) for i in range(n)}
    for k in range(2, len(CELL_REASONS) + 1):
        cmap[MASK_CODE_BASE + k] = (*map(int, colours[n + k]), 255)
    cmap[NODATA] = (255, 255, 255, 0)
    return cmap


def _tags(scene_map: SceneMap) -> dict:
    codes = {MASK_CODE_BASE + k: r for k, r in enumerate(CELL_REASONS, start=1) if k > 1}
    tags = dict(classes=json.dumps(scene_map.labels), mask_codes=json.dumps(codes), stride_px=str(scene_map.stride),
                patch_px=str(scene_map.patch_size), evidence=scene_map.evidence_note)
    if scene_map.adaptation:
        tags["adaptation"] = scene_map.adaptation
    return tags


def write_class_geotiff(scene_map: SceneMap, path: str | Path) -> Path:
    """Write the class map as a 1-band uint8 GeoTIFF on the scene's own pixel grid (see the module docstring).

    Same size, CRS and transform as the scene's grid (after any resampling to 10 m); a colormap gives
    each class its legend colour. Memory stays ``stride x width`` bytes.
    """
    _need_crs(scene_map, "--geotiff")
    return _write_cells(Path(path), [class_codes(scene_map), confidence_percent(scene_map)], scene_map,
                        ["land-cover class index (tag 'classes'); 2xx = masked or uncertain (tag 'mask_codes'); "
                         "255 = nodata", "top-1 probability in percent (0-100); 255 = masked or nodata"],
                        _tags(scene_map), _colormap(scene_map.labels))


def confidence_percent(scene_map: SceneMap) -> np.ndarray:
    """uint8 per cell: the top-1 probability in percent (uncertain cells too), 255 where masked."""
    shown = scene_map.classified | scene_map.uncertain
    return np.where(shown, np.rint(scene_map.confidence * 100), NODATA).astype(np.uint8)


def read_class_geotiff(path: str | Path) -> tuple[np.ndarray, list[str], object, object]:
    """``(class raster, labels, crs, transform)`` of a GeoTIFF written by :func:`write_class_geotiff`."""
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read(1), json.loads(ds.tags()["classes"]), ds.crs, ds.transform


def write_change_geotiff(result: "ChangeResult", path: str | Path) -> Path:
    """3-band uint8 GeoTIFF: before class, after class (codes as :func:`class_codes`), change state.

    Change state: 0 unchanged, 1 changed, 2 below the confidence threshold, 255 masked on either date.
    """
    m = result.before
    _need_crs(m, "--geotiff")
    state = np.where(result.changed, 1, np.where(result.confident, 0, 2))
    state = np.where(result.comparable, state, NODATA).astype(np.uint8)
    tags = {**_tags(m), "change_states": json.dumps({0: "unchanged", 1: "changed", 2: "uncertain"})}
    return _write_cells(Path(path), [class_codes(result.before), class_codes(result.after), state], m,
                        ["before: class index", "after: class index", "0 unchanged, 1 changed, 2 uncertain"],
                        tags, _colormap(m.labels))


# ---------------------------------------------------------------- GeoJSON


def _ring_area(ring) -> float:
    xs, ys = np.asarray(ring, dtype=np.float64).T
    return 0.5 * abs(float(np.dot(xs[:-1], ys[1:]) - np.dot(xs[1:], ys[:-1])))


def _polygons(values: np.ndarray, mask: np.ndarray, scene_map: SceneMap):
    """``(geometry in the scene CRS, value, area in cells)`` per connected region of ``values`` where ``mask``."""
    from affine import Affine
    from rasterio.features import shapes

    cell_to_crs = scene_map.transform @ Affine.scale(scene_map.stride)
    for geom, value in shapes(values.astype(np.int32), mask=mask, connectivity=4, transform=Affine.identity()):
        rings = geom["coordinates"]
        cells = _ring_area(rings[0]) - sum(_ring_area(r) for r in rings[1:])
        moved = [[list(cell_to_crs @ (x, y)) for x, y in ring] for ring in rings]
        yield {"type": "Polygon", "coordinates": moved}, int(value), round(cells)


def _collection(scene_map: SceneMap, features: list) -> dict:
    crs = scene_map.crs
    epsg = crs.to_epsg() if hasattr(crs, "to_epsg") else None
    name = f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else crs.to_string()
    return {"type": "FeatureCollection", "name": Path(scene_map.source).stem or "landcover",
            "crs": {"type": "name", "properties": {"name": name}}, "features": features}


def class_geojson(scene_map: SceneMap) -> dict:
    """FeatureCollection of class (and mask) regions; properties: ``class``, ``class_index``, ``cells``, ``km2``."""
    _need_crs(scene_map, "--geojson")
    n = len(scene_map.labels)
    names = list(scene_map.labels) + [f"masked: {r}" for r in MASK_REASONS] + ["uncertain"]
    values = np.where(scene_map.classified, scene_map.grid, n - 1 + scene_map.reason.astype(np.int64))
    features = []
    for geom, value, cells in _polygons(values, np.ones(values.shape, dtype=bool), scene_map):
        features.append({"type": "Feature", "geometry": geom,
                         "properties": {"class": names[value], "class_index": value if value < n else None,
                                        "cells": cells, "km2": round(cells * scene_map.cell_area_km2, 6)}})
    return _collection(scene_map, features)


def change_geojson(result: "ChangeResult") -> dict:
    """FeatureCollection of changed regions; properties: ``from``, ``to``, ``cells``, ``km2``."""
    m = result.before
    _need_crs(m, "--geojson")
    n = len(m.labels)
    pairs = result.before.grid * n + result.after.grid
    features = []
    for geom, value, cells in _polygons(pairs, result.changed, m):
        a, b = divmod(value, n)
        features.append({"type": "Feature", "geometry": geom,
                         "properties": {"from": m.labels[a], "to": m.labels[b], "cells": cells,
                                        "km2": round(cells * m.cell_area_km2, 6)}})
    return _collection(m, features)


def write_geojson(collection: dict, path: str | Path) -> Path:
    """Write a FeatureCollection from :func:`class_geojson` / :func:`change_geojson`."""
    path = Path(path)
    path.write_text(json.dumps(collection))
    return path

