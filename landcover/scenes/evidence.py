"""Spectral evidence per map cell, and its fusion with the CNN's class probabilities.

An RGB patch classifier trained on one season of EuroSAT cannot tell turquoise or sediment-laden water from
forest, nor dark winter conifers from lakes: in RGB they look alike. Most scenes users map carry more than RGB,
and open water is the one class that physics separates cleanly:

* **Water** (per pixel): the normalised difference water index NDWI = (G - NIR) / (G + NIR) > 0 (McFeeters
  1996): water absorbs near-infrared, every land cover reflects more NIR than green. With SWIR (B11) the pixel
  must also have MNDWI = (G - SWIR) / (G + SWIR) > 0 (Xu 2006), which keeps bright built-up surfaces, whose
  NDWI can creep above 0, out. Both thresholds are the published ones, not fitted here.
* **Water from SCL**: in L2A products with a scene classification layer, its water class (6) marks water
  pixels too (either source suffices). Where the product has no NIR band, SCL only adds water (the "land" rule
  below is not applied: Sen2Cor misses some small or turbid water, and its silence must not veto the CNN).
* **Vegetation** (per cell, reported): the mean NDVI = (NIR - R) / (NIR + R).
* **Leaf-off forest** (per pixel, needs NIR and SWIR2 B12): vegetated but not in full leaf
  (``FOREST_NDVI_MIN`` <= NDVI < ``FOREST_NDVI_MAX``), not water, and dark at 2.2 um (B12 below
  ``FOREST_SWIR22_MAX``). Tree canopies shade themselves and hold water, so in the dormant season they stay dark
  in SWIR2 while bare or stubble fields, dry grass and roofs are bright there; and at 2.2 um haze and low sun
  barely change top-of-atmosphere reflectance, unlike the visible bands, where a hazy winter forest no longer
  looks like EuroSAT's dark summer forests. The NDVI ceiling keeps the test silent on canopies in leaf (green
  crops are dark in SWIR2 too), where the CNN sees forests as it was trained to; and in a scene where most
  vegetation is in full leaf (the growing season, ``LEAF_ON_MAJORITY``; decided once per scene on a decimated read
  of it, :func:`scene_in_leaf`) the test is off altogether, since the vegetated pixels left below the ceiling are
  then partly covered crops and grass.
* **Cloud and haze** (per pixel, for products without an SCL layer, whose Sen2Cor cloud classes are masked
  instead): bright, white and hazy. The mean visible reflectance (B02, B03, B04) is above ``CLOUD_BRIGHTNESS``, the
  visible spectrum is flat: Fmask's whiteness sum(|band - mean|) / mean below ``CLOUD_WHITENESS`` (Zhu & Woodcock
  2012), it is not vegetation (NDVI below ``CLOUD_MAX_NDVI``, Fmask's basic test), and blue outweighs red as haze
  and cloud make it: Fmask's haze-optimised transformation test B02 - 0.5 B04 > ``CLOUD_HOT`` (Zhang, Guindon &
  Cihlar 2002), which bright soil, sand and desert fail (their red exceeds their blue). Cells at least half such
  pixels are flagged (``cloud`` layer, counted in the JSON and the legend) but keep their class.
* **Snow and ice** (per pixel, needs SWIR1 B11): NDSI = (G - SWIR1) / (G + SWIR1) above ``SNOW_NDSI`` and red above
  ``SNOW_RED``. Snow is white in the visible and dark at 1.6 um; water shares its high NDSI (NDSI is MNDWI) and
  passes the water test, but is dark in red. EuroSAT has no snow class, so snow pixels are masked like clouds
  (reason ``snow/ice``), which also keeps them out of the water share; SCL's snow class (11) is masked the same way.

Fusion (:func:`fuse`), per cell of ``stride`` px, with ``w`` the share of its valid pixels that are water:

* ``w >= WATER_MAJORITY``: the cell is water; the CNN only chooses between the water classes (River, SeaLake),
  in its own proportions (SeaLake where it gives them no weight at all);
* ``w <= WATER_TRACE``: the cell is land; water classes get no probability and the rest is renormalised;
* in between (shores, river banks, mixed cells): the CNN's probabilities as they are.

and then, on every cell that is not water (``w < WATER_MAJORITY``), with ``f`` the share of leaf-off forest pixels:
Forest gets at least probability ``min(1, FOREST_WEIGHT * f)`` (the other classes keep their proportions of the
rest), so a cell at least a third such pixels is Forest (a half or more of the probability), and one two thirds
such pixels is Forest with confidence 1. The per-pixel test is strict (it must keep bare fields out), so it finds
only part of a winter wood's canopy: gaps, conifers darker than its NDVI floor and crowns over bright litter fail
it. Mixed cells count too: woods on a shore, and dark winter conifers, some of whose pixels pass the water test.

The probabilities stay the CNN's calibrated ones where the evidence is silent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

WATER_CLASSES = ("River", "SeaLake")
WATER_MAJORITY = 0.5  # a cell at least half water pixels is water (majority rule)
WATER_TRACE = 0.05  # a cell with at most 5 % water pixels (a few mixed edge pixels) is land
EVIDENCE_MODES = ("auto", "rgb")
# Cloud/haze test. Whiteness and NDVI limits are Fmask's (Zhu & Woodcock 2012). The brightness limit is set on the
# development scene (Brandenburg L1C, February): 0.18 keeps its band of thin cloud (3.2 % of the pixels) and none of
# its fields, lakes or villages; 0.16 reaches into bright fields.
CLOUD_BRIGHTNESS = 0.18
CLOUD_WHITENESS = 0.7
CLOUD_MAX_NDVI = 0.8
# HOT test threshold: Fmask's (Zhu & Woodcock 2012, after Zhang et al. 2002). On the development scene it keeps 99 %
# of the bright, white pixels (its hazy winter air is bluish everywhere); on the 100 m L2A fixture of the Moroccan
# desert it removes every bare-soil pixel the brightness and whiteness tests took (29 % of the scene) and keeps
# 97 % of SCL's high-probability cloud.
CLOUD_HOT = 0.08
# Snow test: the first pass of the Theia snow product (LIS; Gascoin et al. 2019: NDSI > 0.4 and red > 0.2), whose
# NDSI threshold is the MODIS snow algorithm's (Hall et al. 1995). Not fitted here: 0.016 % of the development
# scene's pixels pass (in no cell more than half), and no snowy scene with a reference is at hand.
SNOW_NDSI = 0.4
SNOW_RED = 0.2
CLOUD_MAJORITY = 0.5  # a cell at least half cloud pixels is flagged
# Leaf-off forest test, set on the development scene (Brandenburg L1C, February; stride-16 cells scored against
# OSM, bench/real_scenes.py): B12 < 0.09 maps 42 of its 81 forest cells Forest at the cost of 3 of 584 field cells
# (0.08: 36 and 1; 0.10: 53, but 21 field and 3 village cells). Its left half alone chose 0.09, its right half 0.10
# (both with NDVI >= 0.10); each choice is within 0.025 balanced accuracy of the other's on the other's half.
# NDVI >= 0.15 keeps out bare soil, snow and shaded roofs (0.10: 6 forest cells more, but 6 field cells and a
# village cell fewer). NDVI < 0.5 is vegetation not in full leaf (dense green canopies and crops are above ~0.6): the
# test is off in the growing season. This gate is physical reasoning, not measured: no growing-season scene with a
# reference is at hand (on the development scene every forest cell is below it, so it changes nothing there).
FOREST_SWIR22_MAX = 0.09
FOREST_NDVI_MIN = 0.15
FOREST_NDVI_MAX = 0.5
# A cell's leaf-off forest share counts 1.5 times towards its Forest probability, set on the development scene
# (stride-16 cells against OSM): weight 1 maps 42 of its 81 forest cells Forest, for 3 of its 584 field cells; 1.5:
# 53, for 11; 2: 58, for 15; 2.5: 61, for 25. By balanced accuracy its left half alone chose 2.5 (1.5 within
# 0.001), its right half 2 (1.5 0.026 lower); 1.5 is the largest weight that costs neither half 0.01 of agreement
# (2 costs the left half 0.021), and raises balanced accuracy on both (+0.022 each). With it, B12 < 0.09 still
# measures best (agreement / balanced 0.08: 0.863 / 0.689; 0.09: 0.867 / 0.710; 0.10: 0.835 / 0.706).
FOREST_WEIGHT = 1.5
# Season guard of the leaf-off forest test: in a scene where at least this share of the vegetated land pixels
# (NDVI >= FOREST_NDVI_MIN) is in full leaf (NDVI >= FOREST_NDVI_MAX), the scene is in its growing season and the
# test is off for the scene: canopies are then in leaf and the CNN sees them as it was trained to, while the
# vegetated pixels left below the ceiling are partly covered crops and grass, which can be dark in SWIR2 too. On the
# development scene (February) 0.08 % of the vegetated pixels are in full leaf. A majority rule, not fitted: no
# growing-season scene with a reference is at hand.
LEAF_ON_MAJORITY = 0.5
_TINY = 1e-30  # probability mass treated as none (a float32 softmax underflows to 0 for very sure models)


@dataclass(frozen=True)
class CellEvidence:
    """Per-cell spectral evidence of a block: shares in 0..1, NaN where a cell has no valid pixel."""

    water: np.ndarray  # float32 (rows, cols): share of water pixels
    ndvi: np.ndarray  # float32 (rows, cols): mean NDVI
    cloud: np.ndarray  # float32 (rows, cols): share of bright, white pixels (cloud or haze)
    forest: np.ndarray  # float32 (rows, cols): share of leaf-off forest pixels (NaN without NIR and SWIR2)


SCL_WATER = 6  # Sentinel-2 L2A scene classification: water


def water_pixels(bands: dict[str, np.ndarray]) -> np.ndarray:
    """bool ``(H, W)``: NDWI > 0 (and MNDWI > 0 where SWIR is there), or SCL water (see the module docstring)."""
    water = None
    if "nir" in bands:
        water = bands["green"] > bands["nir"]  # NDWI > 0 without the division (reflectances are positive)
        if "swir16" in bands:
            water &= bands["green"] > bands["swir16"]
    if "scl" in bands:
        scl_water = bands["scl"] == SCL_WATER
        water = scl_water if water is None else water | scl_water
    return water


def cloud_pixels(reflectance: dict[str, np.ndarray], index: Optional[np.ndarray] = None) -> np.ndarray:
    """bool ``(H, W)``: bright, spectrally flat, not vegetated (see the module docstring). ``index``: the NDVI, when
    the caller has it."""
    index = ndvi(reflectance) if index is None else index
    visible = (reflectance["blue"] + reflectance["green"] + reflectance["red"]) / 3
    spread = sum(np.abs(reflectance[b] - visible) for b in ("blue", "green", "red"))
    hazy = reflectance["blue"] - 0.5 * reflectance["red"] > CLOUD_HOT
    return (visible > CLOUD_BRIGHTNESS) & (spread < CLOUD_WHITENESS * visible) & (index < CLOUD_MAX_NDVI) & hazy


def snow_pixels(reflectance: dict[str, np.ndarray]) -> Optional[np.ndarray]:
    """bool ``(H, W)``: snow or ice by NDSI and red (see the module docstring); None without SWIR1 (B11)."""
    if "swir16" not in reflectance:
        return None
    green, swir = reflectance["green"], reflectance["swir16"]
    return (green - swir > SNOW_NDSI * (green + swir)) & (reflectance["red"] > SNOW_RED)


def forest_pixels(reflectance: dict[str, np.ndarray], index: Optional[np.ndarray] = None,
                  wet: Optional[np.ndarray] = None) -> np.ndarray:
    """bool ``(H, W)``: leaf-off forest, vegetated and dark in SWIR2 (see the module docstring). ``index`` and
    ``wet``: the NDVI and :func:`water_pixels`, when the caller has them."""
    index = ndvi(reflectance) if index is None else index
    wet = water_pixels(reflectance) if wet is None else wet
    vegetated = (index >= FOREST_NDVI_MIN) & (index < FOREST_NDVI_MAX)
    return vegetated & (reflectance["swir22"] < FOREST_SWIR22_MAX) & ~wet


def in_leaf(index: np.ndarray, land: np.ndarray) -> bool:
    """Whether most vegetated pixels of ``land`` (bool: valid, not water) are in full leaf by their NDVI ``index``
    (the season guard, see LEAF_ON_MAJORITY)."""
    vegetated = land & (index >= FOREST_NDVI_MIN)
    n = int(vegetated.sum())
    return n > 0 and int((vegetated & (index >= FOREST_NDVI_MAX)).sum()) >= LEAF_ON_MAJORITY * n


def scene_in_leaf(reflectance: dict[str, np.ndarray], valid: np.ndarray) -> bool:
    """The season guard for a whole scene, from a decimated read of it (``Scene.sample_reflectance``): one decision
    for every block and row part, so that a scene mapped in parts equals its map in one pass."""
    return in_leaf(ndvi(reflectance), valid & ~water_pixels(reflectance))


def ndvi(reflectance: dict[str, np.ndarray]) -> np.ndarray:
    red, nir = reflectance["red"], reflectance["nir"]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(nir + red > 0, (nir - red) / (nir + red), 0.0).astype(np.float32)


def cell_evidence(reflectance: dict[str, np.ndarray], valid: np.ndarray, stride: int,
                  leaf_on: Optional[bool] = None) -> CellEvidence:
    """Evidence of every whole ``stride`` x ``stride`` cell of a block (``valid``: bool pixels to count).

    ``leaf_on``: the scene's season guard (:func:`scene_in_leaf`); None decides it on this block alone."""
    h, w = valid.shape[0] // stride, valid.shape[1] // stride

    def cells(a: np.ndarray) -> np.ndarray:
        return a[:h * stride, :w * stride].reshape(h, stride, w, stride).sum(axis=(1, 3), dtype=np.float32)

    n = cells(valid)
    nan = np.full(n.shape, np.nan, dtype=np.float32)
    spectral = "nir" in reflectance  # reflectance of R, G, B, NIR: vegetation and cloud tests too
    wet = water_pixels(reflectance)
    index = ndvi(reflectance) if spectral else None  # computed once for the vegetation, cloud and forest tests
    with np.errstate(divide="ignore", invalid="ignore"):
        water = cells(wet & valid) / n
        veg = cells(np.where(valid, index, 0.0)) / n if spectral else nan
        tested = spectral and "scl" not in reflectance  # with SCL, its cloud classes are masked instead
        cloud = cells(cloud_pixels(reflectance, index) & valid) / n if tested else nan
        forest = nan
        if spectral and "swir22" in reflectance:  # 0 everywhere in a scene in full leaf (the season guard)
            forest = cells(forest_pixels(reflectance, index, wet) & valid) / n
            if in_leaf(index, valid & ~wet) if leaf_on is None else leaf_on:
                forest = np.where(n > 0, 0.0, np.nan)
    return CellEvidence(*(a.astype(np.float32) for a in (water, veg, cloud, forest)))


def fuse(probs: np.ndarray, labels: Sequence[str], water: np.ndarray,
         majority: float = WATER_MAJORITY, trace: float = WATER_TRACE, forest: Optional[np.ndarray] = None
         ) -> np.ndarray:
    """Class probabilities ``(C, rows, cols)`` after the water and forest rules of the module docstring (a new
    array).

    ``water`` is the per-cell share of water pixels, ``forest`` the share of leaf-off forest pixels (NaN or None:
    no evidence, probabilities kept).
    """
    out = _fuse_water(probs, labels, water, majority, trace)
    if forest is None or "Forest" not in labels:
        return out
    wet = np.nan_to_num(water, nan=0.0) >= majority
    floor = np.minimum(1.0, FOREST_WEIGHT * np.nan_to_num(forest, nan=0.0))
    return _raise_class(out, list(labels).index("Forest"), np.where(wet, 0.0, floor))


def _raise_class(probs: np.ndarray, index: int, floor: np.ndarray) -> np.ndarray:
    """``probs`` with class ``index`` at least ``floor`` per cell, the other classes scaled to fill the rest."""
    old = probs[index]
    new = np.maximum(old, floor.astype(np.float32))
    rest = 1.0 - old
    scale = np.where(rest > _TINY, (1.0 - new) / np.maximum(rest, _TINY), 0.0)
    out = probs * scale[None]
    out[index] = new
    return out.astype(np.float32)


def _fuse_water(probs: np.ndarray, labels: Sequence[str], water: np.ndarray, majority: float, trace: float
                ) -> np.ndarray:
    is_water = np.array([name in WATER_CLASSES for name in labels])
    if not is_water.any() or is_water.all():
        return probs.astype(np.float32, copy=True)
    out = probs.astype(np.float32, copy=True)
    wet = np.nan_to_num(water, nan=-1.0) >= majority
    dry = np.nan_to_num(water, nan=2.0) <= trace
    water_mass = out[is_water].sum(axis=0)
    land_mass = out[~is_water].sum(axis=0)
    # Wet cells: only water classes, in the CNN's proportions (SeaLake where it gave water nothing).
    fallback = np.array([name == "SeaLake" for name in labels], dtype=np.float32)
    if not fallback.any():
        fallback = is_water.astype(np.float32) / is_water.sum()
    share = np.where(water_mass[None] > _TINY, out / np.maximum(water_mass, _TINY)[None], fallback[:, None, None])
    out = np.where(wet[None], np.where(is_water[:, None, None], share, 0.0), out)
    # Dry cells: no water; the land classes keep their proportions, or share it evenly where the CNN gave land
    # nothing at all (it was sure of water: the cell then has no confident class).
    uniform_land = (~is_water).astype(np.float32) / (~is_water).sum()
    land_share = np.where(land_mass[None] > _TINY, out / np.maximum(land_mass, _TINY)[None],
                          uniform_land[:, None, None])
    out = np.where((dry & ~wet)[None], np.where(is_water[:, None, None], 0.0, land_share), out)
    return out.astype(np.float32)


def evidence_note(names: Optional[Sequence[str]], scl: bool, used: bool = True, leaf_on: Optional[bool] = None
                  ) -> str:
    """One line for the legend, the JSON and the GeoTIFF tags: which evidence the map used.

    ``names``: the spectral bands read (beside R, G, B); ``scl``: the scene has an SCL layer; ``used``: the
    evidence was fused (False with ``--evidence rgb``); ``leaf_on``: the scene's season guard, when decided.
    """
    parts = ["CNN on RGB"]
    if used and names:
        index = "NDWI and MNDWI" if "swir16" in names else "NDWI"
        parts.append(f"water from {index} (bands {', '.join(['green', *(n for n in names if n != 'swir22')])})")
        if "nir" in names and "swir22" in names and leaf_on:
            parts.append("leaf-off forest test off (most vegetation of the scene is in full leaf)")
        elif "nir" in names and "swir22" in names:
            parts.append("leaf-off forest from NDVI and SWIR2 (bands red, nir, swir22; off where most vegetation "
                         "is in full leaf)")
        if "swir16" in names:
            parts.append("snow/ice from NDSI masked (bands green, red, swir16)")
    if used and scl:
        parts.append("water from the SCL water class")
    if scl:
        parts.append("SCL masks")
    elif used and names:
        parts.append("cloud/haze flagged by a brightness, whiteness and haze (HOT) test")
    return "; ".join(parts)
