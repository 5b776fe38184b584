"""Every band a scene has: spectral bands found in each storage, water evidence fused with the CNN, and maps
scored against an independent reference. Generated rasters; the tiny model is the CNN."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from datagen import class_patch
from landcover.core.labels import EUROSAT_CLASSES, PATCH_SIZE_PX
from landcover.inference.predictor import Predictor
from landcover.readers import raster
from landcover.readers.radiometry import choose_rgb_bands, choose_spectral_bands
from landcover.scenes import evidence, export, mapping, reference

ROOT = Path(__file__).resolve().parents[1]
P = PATCH_SIZE_PX
TEN_M = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5200000.0)
FOREST, SEALAKE, RIVER = (EUROSAT_CLASSES.index(c) for c in ("Forest", "SeaLake", "River"))
WHITE = 2750  # reflectance x 10000 shown as 255 (EuroSAT's stretch)


@pytest.fixture(scope="module")
def predictor(tiny_model_dir) -> Predictor:
    return Predictor.load(str(tiny_model_dir))


def spectral_stack(classes: np.ndarray, nir_x10000: np.ndarray, seed: int = 0) -> np.ndarray:
    """uint16 ``(4, H, W)`` B02, B03, B04, B08 x 10000: RGB from the class patches, NIR constant per tile."""
    rng = np.random.default_rng(seed)
    rgb = np.concatenate([np.concatenate([class_patch(int(c), rng) for c in row], axis=1) for row in classes])
    reflectance = rgb.astype(np.float64) / 255 * WHITE + 100  # never 0: every pixel has some green
    nir = np.kron(nir_x10000, np.ones((P, P)))
    return np.stack([reflectance[..., 2], reflectance[..., 1], reflectance[..., 0], nir]).round().astype(np.uint16)


def write_stack(path: Path, bands: np.ndarray, descriptions=("B02", "B03", "B04", "B08")) -> Path:
    import rasterio

    with rasterio.open(path, "w", driver="GTiff", height=bands.shape[1], width=bands.shape[2], count=len(bands),
                       dtype=bands.dtype, crs="EPSG:32633", transform=TEN_M) as dst:
        dst.write(bands)
        for i, d in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, d)
    return path


def test_spectral_bands_are_found_in_stacks_folders_and_stac_items(tmp_path):
    assert choose_spectral_bands(4, ["B02", "B03", "B04", "B08"]) == {"nir": 4}
    assert choose_spectral_bands(6, ["B2", "B3", "B4", "B8", "B11", "B12"]) == {"nir": 4, "swir16": 5, "swir22": 6}
    for count, expected in ((4, {"nir": 4}), (10, {"nir": 7, "swir16": 9, "swir22": 10}),
                            (12, {"nir": 8, "swir16": 11, "swir22": 12}), (13, {"nir": 8, "swir16": 12, "swir22": 13})):
        _, note = choose_rgb_bands(count)
        assert choose_spectral_bands(count, [None] * count, note) == expected
    assert choose_spectral_bands(5, [None] * 5, "bands given") == {}  # no known order: no guess
    # A band folder with 20 m SWIR: read on the 10 m grid of the visible bands.
    import rasterio

    folder = tmp_path / "bands"
    folder.mkdir()
    stack = spectral_stack(np.array([[FOREST, SEALAKE]]), np.array([[3000, 50]]))
    for name, band in zip(("B02", "B03", "B04", "B08"), stack):
        write_stack(folder / f"T33UUU_20170216T102101_{name}.tif", band[None], None)
    for name, value in (("B11", 2000), ("B12", 900)):
        with rasterio.open(folder / f"T33UUU_20170216T102101_{name}.tif", "w", driver="GTiff", height=32, width=64,
                           count=1, dtype="uint16", crs="EPSG:32633", transform=TEN_M * Affine.scale(2)) as dst:
            dst.write(np.full((1, 32, 64), value, dtype=np.uint16))
    with raster.open_scene(folder) as scene:
        assert scene.spectral_names == ("nir", "swir16", "swir22") and scene.has_spectral
        rgb, code, reflectance = scene.read_block(0, 0, 64, 128)
        assert reflectance["swir16"].shape == reflectance["swir22"].shape == (64, 128)
        np.testing.assert_allclose(reflectance["swir16"], 0.2, atol=1e-6)
        np.testing.assert_allclose(reflectance["swir22"], 0.09, atol=1e-6)
        np.testing.assert_allclose(reflectance["nir"][:, :64], 0.3, atol=1e-6)
        assert "spectral bands read: nir, swir16, swir22" in scene.describe()["notes"]
    # A STAC item names its assets; a missing remote band is left out, with a note, not an error.
    item = {"type": "Feature", "properties": {}, "assets": {
        **{k: {"href": f"T33UUU_20170216T102101_{b}.tif"} for k, b in
           (("blue", "B02"), ("green", "B03"), ("red", "B04"), ("nir", "B08"))},
        "swir16": {"href": "https://127.0.0.1:9/missing/B11.tif"}}}
    (folder / "item.json").write_text(json.dumps(item))
    with raster.open_scene(folder / "item.json") as scene:
        assert scene.spectral_names == ("nir",)
        assert any(n.startswith("swir16 band not read") for n in scene.notes)


def test_an_8bit_image_carries_no_spectral_evidence(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(class_patch(FOREST, rng)).save(tmp_path / "patch.png")
    with raster.open_scene(tmp_path / "patch.png") as scene:
        assert not scene.has_spectral and scene.read_block(0, 0, 64, 64)[2] is None


def test_fuse_forces_water_by_majority_and_removes_it_from_dry_cells():
    labels = list(EUROSAT_CLASSES)
    probs = np.zeros((10, 1, 4), dtype=np.float32)
    probs[FOREST] = 0.9
    probs[SEALAKE, 0, :] = [0.02, 0.02, 0.1, 0.1]
    probs[RIVER, 0, :] = [0.08, 0.08, 0.0, 0.0]
    probs /= probs.sum(axis=0, keepdims=True)
    water = np.array([[0.9, 0.3, 0.01, np.nan]], dtype=np.float32)
    fused = evidence.fuse(probs, labels, water)
    np.testing.assert_allclose(fused.sum(axis=0), 1.0, atol=1e-6)
    # Wet: only the water classes, in the CNN's proportions (River 0.08 vs SeaLake 0.02).
    np.testing.assert_allclose(fused[[RIVER, SEALAKE], 0, 0], [0.8, 0.2], atol=1e-6)
    assert fused[FOREST, 0, 0] == 0
    np.testing.assert_allclose(fused[:, 0, 1], probs[:, 0, 1])  # mixed: unchanged
    assert fused[SEALAKE, 0, 2] == 0 and fused[RIVER, 0, 2] == 0 and fused[FOREST, 0, 2] == pytest.approx(1.0)
    np.testing.assert_allclose(fused[:, 0, 3], probs[:, 0, 3])  # no evidence: unchanged
    # The CNN gave water nothing at all: SeaLake.
    none = np.zeros((10, 1, 1), dtype=np.float32)
    none[FOREST] = 1.0
    assert evidence.fuse(none, labels, np.array([[1.0]]))[SEALAKE, 0, 0] == pytest.approx(1.0)
    # The CNN gave land nothing: over dry land every land class is as likely (no confident class).
    sure_water = np.zeros((10, 1, 1), dtype=np.float32)
    sure_water[SEALAKE] = 1.0
    np.testing.assert_allclose(evidence.fuse(sure_water, labels, np.array([[0.0]]))[:, 0, 0],
                               [0 if i in (SEALAKE, RIVER) else 1 / 8 for i in range(10)], atol=1e-7)


def test_fuse_raises_forest_by_its_weighted_pixel_share_on_every_cell_not_mostly_water():
    labels = list(EUROSAT_CLASSES)
    herb, crop = (EUROSAT_CLASSES.index(c) for c in ("HerbaceousVegetation", "AnnualCrop"))
    probs = np.zeros((10, 1, 5), dtype=np.float32)
    probs[herb], probs[crop], probs[FOREST], probs[RIVER] = 0.6, 0.3, 0.01, 0.09
    water = np.array([[0.0, 0.0, 0.0, 0.3, 0.9]], dtype=np.float32)
    forest = np.array([[0.6, 0.005, np.nan, 0.4, 0.8]], dtype=np.float32)
    fused = evidence.fuse(probs, labels, water, forest=forest)
    np.testing.assert_allclose(fused.sum(axis=0), 1.0, atol=1e-6)
    # Land cell, 60 % leaf-off forest pixels: Forest 1.5 x 0.6 = 0.9; the rest keeps the CNN's land proportions.
    assert evidence.FOREST_WEIGHT == 1.5 and fused[FOREST, 0, 0] == pytest.approx(0.9)
    assert fused[herb, 0, 0] == pytest.approx(0.1 * 2 / 3) and fused[crop, 0, 0] == pytest.approx(0.1 / 3)
    full = evidence.fuse(probs, labels, water, forest=np.full((1, 5), 0.7, dtype=np.float32))
    assert full[FOREST, 0, 0] == 1.0 and full[herb, 0, 0] == 0.0  # two thirds and more: Forest, confidence 1
    # A share below the CNN's own Forest probability changes nothing but the water rule; no evidence neither.
    np.testing.assert_allclose(fused[:, 0, 1], evidence.fuse(probs, labels, water)[:, 0, 1])
    np.testing.assert_allclose(fused[:, 0, 2], evidence.fuse(probs, labels, water)[:, 0, 2])
    # Mixed cells (woods on a shore): Forest too, the CNN's water probability scaled with the rest; water cells: no.
    assert fused[FOREST, 0, 3] == pytest.approx(0.6)
    assert fused[RIVER, 0, 3] == pytest.approx(0.09 * 0.4 / 0.99)
    assert fused[herb, 0, 3] == pytest.approx(0.6 * 0.4 / 0.99)
    assert fused[FOREST, 0, 4] == 0
    # Pixels: vegetated, not in full leaf, dark at 2.2 um and not water.
    red = np.array([0.05, 0.05, 0.05, 0.05, 0.05, 0.02])
    nir = np.array([0.10, 0.10, 0.25, 0.10, 0.055, 0.01])
    refl = {"red": red, "nir": nir, "green": np.full(6, 0.05), "swir16": np.full(6, 0.15),
            "swir22": np.array([0.05, 0.15, 0.05, 0.089, 0.05, 0.02])}
    np.testing.assert_array_equal(evidence.forest_pixels(refl), [True, False, False, True, False, False])


def test_leaf_off_forest_that_rgb_calls_vegetation_is_mapped_forest_when_swir2_says_so(predictor, tmp_path):
    """Three tiles the CNN calls HerbaceousVegetation: dark at 2.2 um with leaf-off NDVI (1/3) -> Forest; bright
    at 2.2 um (a field) -> unchanged; dark at 2.2 um but in full leaf (NDVI 2/3, the growing season) -> unchanged.
    A stack without B12 maps as the CNN does."""
    herb = EUROSAT_CLASSES.index("HerbaceousVegetation")
    rng = np.random.default_rng(0)
    rgb = np.concatenate([class_patch(herb, rng) for _ in range(3)], axis=1).astype(np.float64) / 255 * WHITE + 100
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    nir = red * np.kron([[2.0, 2.0, 5.0]], np.ones((P, P)))  # NDVI (k - 1) / (k + 1): 1/3, 1/3, 2/3
    swir16 = np.full(red.shape, 4000.0)  # above every green: no pixel is water
    swir22 = np.kron([[500.0, 2000.0, 500.0]], np.ones((P, P)))
    stack = np.stack([blue, green, red, nir, swir16, swir22]).round().astype(np.uint16)
    names = np.array(EUROSAT_CLASSES)
    path = write_stack(tmp_path / "winter.tif", stack, ("B02", "B03", "B04", "B08", "B11", "B12"))
    with raster.open_scene(path) as scene:
        rgb_map = mapping.map_scene(predictor, scene, evidence="rgb")
        fused = mapping.map_scene(predictor, scene)
    assert list(names[rgb_map.grid[0]]) == ["HerbaceousVegetation"] * 3
    assert list(names[fused.grid[0]]) == ["Forest", "HerbaceousVegetation", "HerbaceousVegetation"]
    np.testing.assert_allclose(fused.evidence["forest"][0], [1.0, 0.0, 0.0])
    assert fused.confidence[0, 0] == pytest.approx(1.0)
    np.testing.assert_allclose(fused.probs[:, 0, 1:], rgb_map.probs[:, 0, 1:], atol=1e-6)
    assert "leaf-off forest from NDVI and SWIR2" in fused.to_json()["evidence"]
    no_b12 = write_stack(tmp_path / "no_b12.tif", stack[:5], ("B02", "B03", "B04", "B08", "B11"))
    with raster.open_scene(no_b12) as scene:
        without = mapping.map_scene(predictor, scene)
    assert list(names[without.grid[0]]) == ["HerbaceousVegetation"] * 3
    assert "forest" not in without.to_json()["evidence"] and np.isnan(without.evidence["forest"]).all()


def test_leaf_off_forest_test_is_off_where_most_vegetation_is_in_full_leaf(predictor, tmp_path):
    """The same leaf-off tile (NDVI 1/3, dark at 2.2 um) beside two tiles in full leaf (the growing season: most
    vegetation above the ceiling) is left to the CNN; beside two leaf-off field tiles it becomes Forest."""
    herb = EUROSAT_CLASSES.index("HerbaceousVegetation")
    rng = np.random.default_rng(0)
    rgb = np.concatenate([class_patch(herb, rng) for _ in range(3)], axis=1).astype(np.float64) / 255 * WHITE + 100
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    swir16 = np.full(red.shape, 4000.0)  # no pixel is water
    swir22 = np.kron([[500.0, 2000.0, 2000.0]], np.ones((P, P)))
    names = np.array(EUROSAT_CLASSES)
    grids = {}
    for season, k in (("summer", [2.0, 5.0, 5.0]), ("winter", [2.0, 2.0, 2.0])):  # NDVI (k - 1) / (k + 1)
        nir = red * np.kron([k], np.ones((P, P)))
        stack = np.stack([blue, green, red, nir, swir16, swir22]).round().astype(np.uint16)
        path = write_stack(tmp_path / f"{season}.tif", stack, ("B02", "B03", "B04", "B08", "B11", "B12"))
        with raster.open_scene(path) as scene:
            grids[season] = mapping.map_scene(predictor, scene)
    assert list(names[grids["winter"].grid[0]]) == ["Forest", "HerbaceousVegetation", "HerbaceousVegetation"]
    assert list(names[grids["summer"].grid[0]]) == ["HerbaceousVegetation"] * 3
    np.testing.assert_array_equal(grids["summer"].evidence["forest"][0], [0.0, 0.0, 0.0])
    assert evidence.in_leaf(evidence.ndvi({"red": red, "nir": red * 5.0}), np.ones(red.shape, dtype=bool))


def test_the_season_guard_is_decided_once_per_scene_so_row_parts_equal_one_pass(predictor, tiny_model_dir, tmp_path,
                                                                               monkeypatch):
    """A scene of two read blocks: the top one leaf-off woods (NDVI 1/3, dark at 2.2 um) but for one tile row in
    full leaf, the bottom one in full leaf. 53 % of the scene's vegetation is in leaf: the test is off for the whole
    scene, though the top block alone would have it on; mapped in two row parts, the map equals one pass. A region
    worker that plans the scene in parts decides the guard once and hands it to the parts, which read no sample."""
    from landcover.scenes import region

    herb = EUROSAT_CLASSES.index("HerbaceousVegetation")
    rng = np.random.default_rng(0)
    rows = 2 * mapping.BLOCK_PX // P  # tile rows: two read blocks of 16 at stride 64
    rgb = np.concatenate([class_patch(herb, rng) for _ in range(rows)], axis=0).astype(np.float64) / 255 * WHITE + 100
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    leaf_on = np.repeat(np.arange(rows) >= rows // 2 - 1, P)[:, None]  # the top block's last tile row, and below
    nir = red * np.where(leaf_on, 5.0, 2.0)  # NDVI 2/3 or 1/3
    swir16 = np.full(red.shape, 4000.0)  # no pixel is water
    swir22 = np.where(leaf_on, 2000.0, 500.0) * np.ones(red.shape)
    stack = np.stack([blue, green, red, nir, swir16, swir22]).round().astype(np.uint16)
    path = write_stack(tmp_path / "two_blocks.tif", stack, ("B02", "B03", "B04", "B08", "B11", "B12"))
    with raster.open_scene(path) as scene:
        options = mapping.MapOptions(progress=False)
        one_pass = mapping.map_scene(predictor, scene, options)
        parts = [mapping.accumulate_tiles(predictor, scene, options, r) for r in ((0, 8), (8, rows))]
        in_parts = mapping.assemble_map(scene, predictor.labels, options, parts)
        top = next(mapping.iter_blocks(scene, P, evidence=True))  # the top block deciding alone
        assert mapping.season_guard(scene) is True
    assert np.nanmax(top.evidence.forest) == 1.0  # would have found its woods
    assert np.nanmax(one_pass.evidence["forest"]) == 0.0
    assert "leaf-off forest test off" in one_pass.evidence_note
    np.testing.assert_array_equal(in_parts.evidence["forest"], one_pass.evidence["forest"])
    np.testing.assert_array_equal(in_parts.grid, one_pass.grid)
    np.testing.assert_allclose(in_parts.probs, one_pass.probs, atol=1e-6)  # batches differ: float rounding only

    mapper = region.SceneMapper(str(tiny_model_dir), "torch", options, {}, part_tiles=8)
    plan = mapper.start(str(path), str(tmp_path / "region"))
    assert plan["leaf_on"] is True and plan["parts"] == [[r, r + 8] for r in range(0, rows, 8)]

    def no_second_read(self):
        raise AssertionError("a part read the scene sample again")

    monkeypatch.setattr(raster.Scene, "sample_reflectance", no_second_read)
    sums = [mapper.part(str(path), part, plan["leaf_on"]) for part in plan["parts"]]
    with raster.open_scene(path) as scene:
        planned = mapping.assemble_map(scene, mapper.predictor.labels, options, sums)
    assert "leaf-off forest test off" in planned.evidence_note
    np.testing.assert_array_equal(planned.grid, one_pass.grid)
    np.testing.assert_allclose(planned.probs, one_pass.probs, atol=1e-5)


def test_water_that_rgb_calls_forest_is_mapped_water_when_nir_says_so(predictor, tmp_path):
    """Forest-looking tiles over water (NIR below green) become water; water-looking tiles over land stop being
    water. RGB-only maps of the same file are the CNN's alone."""
    classes = np.array([[FOREST, FOREST, SEALAKE], [SEALAKE, FOREST, SEALAKE]])
    nir = np.array([[50, 3000, 3000], [50, 3000, 50]])  # tile (0,0) forest-looking water, (0,2) water-looking land
    path = write_stack(tmp_path / "scene.tif", spectral_stack(classes, nir))
    with raster.open_scene(path) as scene:
        rgb_map = mapping.map_scene(predictor, scene, evidence="rgb")
        fused = mapping.map_scene(predictor, scene)
    names = np.array(EUROSAT_CLASSES)
    cnn = names[rgb_map.grid]
    assert cnn[0, 0] == "Forest" and cnn[0, 2] == "SeaLake"  # what RGB says (the tiny model knows its patches)
    got = names[fused.grid]
    assert got[0, 0] in ("SeaLake", "River") and got[1, 0] in ("SeaLake", "River") and got[1, 2] in ("SeaLake", "River")
    assert got[0, 2] not in ("SeaLake", "River") and got[0, 1] == "Forest" and got[1, 1] == "Forest"
    # The tiny model was certain of SeaLake there: over land it has no preference left, and says so.
    assert fused.confidence[0, 2] == pytest.approx(1 / 8, abs=1e-6)
    assert "NDWI" in fused.to_json()["evidence"] and rgb_map.to_json()["evidence"] == "CNN on RGB"
    np.testing.assert_allclose(fused.evidence["water"][0, 0], 1.0)
    geotiff = export.write_class_geotiff(fused, tmp_path / "classes.tif")
    import rasterio

    with rasterio.open(geotiff) as ds:
        assert "NDWI" in ds.tags()["evidence"]


def test_map_options_are_checked():
    with pytest.raises(ValueError, match="--evidence must be one of auto, rgb"):
        mapping.MapOptions(evidence="ndvi")
    with pytest.raises(ValueError, match="--batch-size must be at least 1"):
        mapping.MapOptions(batch_size=0)


def _write_geojson(path: Path, features: list[tuple[list, str]]) -> Path:
    """Polygons in the scene's CRS (EPSG:32633), named in the legacy ``crs`` member GDAL reads."""
    data = {"type": "FeatureCollection",
            "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}},
            "features": [{"type": "Feature", "properties": {"fclass": c},
                          "geometry": {"type": "Polygon", "coordinates": [ring]}} for ring, c in features]}
    path.write_text(json.dumps(data))
    return path


def _box(col0: int, row0: int, col1: int, row1: int) -> list:
    """A ring around pixel columns col0..col1 and rows row0..row1 of TEN_M."""
    x0, y0 = TEN_M * (col0, row0)
    x1, y1 = TEN_M * (col1, row1)
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def test_reference_polygons_are_rasterized_collapsed_and_scored(tmp_path):
    ref = _write_geojson(tmp_path / "ref.geojson", [
        (_box(0, 0, 32, 32), "forest"), (_box(32, 0, 64, 16), "water"), (_box(32, 16, 64, 32), "wetland"),
        (_box(0, 32, 20, 64), "farm"), (_box(20, 32, 64, 64), "residential")])
    grid = reference.GridSpec(64, 64, "EPSG:32633", TEN_M)
    pixels = reference.rasterize_reference(ref, grid, reference.OSM_CROSSWALK)
    assert pixels[0, 0] == 1 and pixels[0, 40] == 4 and pixels[20, 40] == reference.UNLABELLED  # wetland unscored
    cells = reference.reference_cells(pixels, 16, 4, 4)
    # Row 2-3, col 1 (px 16..31): 4 of 16 columns farm, 12 residential -> 75 % residential: scored Urban.
    np.testing.assert_array_equal(cells, [[0, 0, 3, 3], [0, 0, -1, -1], [1, 2, 2, 2], [1, 2, 2, 2]])
    labels = list(EUROSAT_CLASSES)
    to_ref = reference.map_to_reference(labels)
    assert [reference.REFERENCE_CLASSES[to_ref[labels.index(n)]] for n in ("Pasture", "Highway", "River")] == \
        ["Grass/crop", "Urban", "Water"]
    mapped = np.array([[0, 1, 3, -1], [0, 0, 2, 2], [1, 2, 2, 0], [1, 2, 2, 2]])
    score = reference.score_cells(mapped, cells)
    assert score.cells == 14 and score.left_out == 1
    assert score.agreement == pytest.approx(11 / 14)
    assert score.recall == {"Forest": 0.75, "Grass/crop": 1.0, "Urban": pytest.approx(5 / 6), "Water": 0.5}
    assert score.balanced == pytest.approx((0.75 + 1 + 5 / 6 + 0.5) / 4)
    assert score.coverage == pytest.approx(13 / 14)
    assert score.to_json()["confusion"]["counts"][3] == [0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="has no field 'landuse'"):
        reference.rasterize_reference(ref, grid, reference.OSM_CROSSWALK, field_name="landuse")


def test_cli_score_scores_a_class_geotiff_against_reference_polygons(tmp_path):
    """`landcover score MAP.tif --reference REF`: the cells of a `map --geotiff` raster, scored like the harness
    (the map of the test above, its uncertain cell a miss)."""
    from rasterio.crs import CRS

    ref = _write_geojson(tmp_path / "ref.geojson", [
        (_box(0, 0, 32, 32), "forest"), (_box(32, 0, 64, 16), "water"), (_box(32, 16, 64, 32), "wetland"),
        (_box(0, 32, 20, 64), "farm"), (_box(20, 32, 64, 64), "residential")])
    as_label = [EUROSAT_CLASSES.index(c) for c in ("Forest", "Pasture", "Residential", "SeaLake")]
    mapped = np.array([[0, 1, 3, -1], [0, 0, 2, 2], [1, 2, 2, 0], [1, 2, 2, 2]])
    probs = np.zeros((len(EUROSAT_CLASSES), 4, 4), dtype=np.float32)
    for (i, j), m in np.ndenumerate(mapped):
        probs[as_label[max(m, 0)], i, j] = 0.2 if m < 0 else 0.9
    reason = np.where(mapped < 0, mapping.UNCERTAIN, 0).astype(np.uint8)
    scene_map = mapping.SceneMap(list(EUROSAT_CLASSES), probs, 16, P, 64, 64, 100.0, "test", CRS.from_epsg(32633),
                                 TEN_M, reason=reason, min_confidence=0.3)
    export.write_class_geotiff(scene_map, tmp_path / "classes.tif")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "landcover", "score", str(tmp_path / "classes.tif"), "--reference",
                        str(ref), "--json"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    figures = json.loads(r.stdout)
    assert figures["cells"] == 14 and figures["agreement"] == round(11 / 14, 4)
    assert figures["coverage"] == round(13 / 14, 4) and figures["recall"]["Water"] == 0.5
    r = subprocess.run([sys.executable, "-m", "landcover", "score", str(tmp_path / "classes.tif"), "--reference",
                        str(ref)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0 and "agreement 0.786, balanced accuracy 0.771" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "landcover", "score", str(ref), "--reference", str(ref)],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode != 0 and "Traceback" not in r.stderr


def test_reference_class_raster_is_warped_onto_the_scene_grid(tmp_path):
    import rasterio

    codes = np.full((16, 16), 40, dtype=np.uint8)  # WorldCover cropland at 20 m ...
    codes[:8] = 80  # ... the top half permanent water
    with rasterio.open(tmp_path / "wc.tif", "w", driver="GTiff", height=16, width=16, count=1, dtype="uint8",
                       crs="EPSG:32633", transform=TEN_M * Affine.scale(2)) as dst:
        dst.write(codes[None])
    pixels = reference.rasterize_reference(tmp_path / "wc.tif", reference.GridSpec(32, 32, "EPSG:32633", TEN_M),
                                           reference.WORLDCOVER_CROSSWALK)
    assert (pixels[:16] == 4).all() and (pixels[16:] == 2).all()


def test_cli_map_reports_its_evidence_and_takes_rgb_only(tmp_path):
    path = write_stack(tmp_path / "scene.tif", spectral_stack(np.array([[FOREST, SEALAKE]]), np.array([[3000, 50]])))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    outputs = {}
    for flag in ("auto", "rgb"):
        r = subprocess.run([sys.executable, "-m", "landcover", "map", str(path), "--out", str(tmp_path / "m.png"),
                            "--json", "--evidence", flag, "--no-progress"], capture_output=True, text=True, env=env,
                           cwd=ROOT, timeout=300)
        assert r.returncode == 0, r.stderr
        outputs[flag] = json.loads(r.stdout)
    assert "NDWI" in outputs["auto"]["evidence"] and outputs["rgb"]["evidence"] == "CNN on RGB"


def test_uncertain_cells_are_flagged_everywhere_a_map_goes(predictor, tmp_path):
    """Cells below --min-confidence: hatched grey, null in the JSON grid, counted apart, code 207 in the GeoTIFF
    with their confidence in band 2; scored as misses."""
    import rasterio

    from landcover.scenes import render

    classes = np.array([[FOREST, SEALAKE, 2], [3, 4, 5]])
    path = write_stack(tmp_path / "scene.tif", spectral_stack(classes, np.full((2, 3), 3000)))
    with raster.open_scene(path) as scene:
        sure = mapping.map_scene(predictor, scene, min_confidence=0.0)
        conf = sure.confidence
        threshold = float(np.median(conf))  # half of the cells fall below
        result = mapping.map_scene(predictor, scene, min_confidence=threshold)
    below = conf < threshold
    assert below.any() and (result.uncertain == below).all() and not (result.classified & below).any()
    np.testing.assert_allclose(result.confidence, conf)  # uncertain cells keep their confidence
    data = result.to_json()
    assert [[c is None for c in row] for row in data["grid"]] == below.tolist()
    assert data["uncertain_cells"] == int(below.sum()) and data["min_confidence"] == threshold
    assert data["uncertain_km2"] == pytest.approx(below.sum() * result.cell_area_km2)
    assert sum(v["cells"] for v in result.area_table().values()) == int((~below).sum())
    assert "uncertain" not in result.masked_table()
    entries = [text for _, text in render.map_legend_entries(result)]
    assert any(text.startswith(f"uncertain (top-1 < {threshold:g})") for text in entries)
    image = np.asarray(render.render_map(result, size=(128, 192)))  # 64 display px per cell
    r, c = np.argwhere(below)[0]
    cell = image[r * 64:(r + 1) * 64, c * 64:(c + 1) * 64].reshape(-1, 3)
    colours = {tuple(v) for v in cell}
    assert colours == {render.MASK_COLOURS["uncertain"], render.HATCH_COLOUR}
    export.write_class_geotiff(result, tmp_path / "classes.tif")
    with rasterio.open(tmp_path / "classes.tif") as ds:
        codes, percent = ds.read(1)[::64, ::64], ds.read(2)[::64, ::64]
        assert json.loads(ds.tags()["mask_codes"])["207"] == "uncertain" == mapping.CELL_REASONS[207 - 201]
    np.testing.assert_array_equal(codes == 207, below)
    np.testing.assert_array_equal(percent, np.rint(conf * 100))
    truth = reference.map_to_reference(result.labels)[classes]
    pixels = np.kron(truth + 1, np.ones((result.stride, result.stride), dtype=np.int64))  # on the scene's grid
    mapped, scored, score = reference.score_map(result, pixels)
    np.testing.assert_array_equal(scored, truth)
    np.testing.assert_array_equal(mapped == -1, below)
    assert score.left_out == int(below.sum()) and score.coverage == pytest.approx(1 - below.mean())
    with pytest.raises(ValueError, match="--min-confidence must be between 0 and 1"):
        mapping.MapOptions(min_confidence=1.5)


def test_bright_white_cells_are_flagged_as_cloud_but_keep_their_class(predictor, tmp_path):
    """An L1C-like stack without SCL: a tile under thick haze (visible ~0.35, flat spectrum) is flagged in the JSON
    and the legend; bright but coloured or vegetated tiles are not."""
    from landcover.scenes import render

    stack = spectral_stack(np.array([[FOREST, FOREST, FOREST]]), np.full((1, 3), 3000)).astype(np.float64)
    stack[:3, :, :P] = 3500 + np.random.default_rng(0).normal(0, 50, (3, P, P))  # white haze
    stack[3, :, :P] = 3800
    stack[:3, :, P:2 * P] = np.array([3600, 2000, 800])[:, None, None]  # bright but yellow (bare sand, not white)
    path = write_stack(tmp_path / "hazy.tif", stack.round().astype(np.uint16))
    with raster.open_scene(path) as scene:
        result = mapping.map_scene(predictor, scene, min_confidence=0.0)
    assert result.cloud_flagged.tolist() == [[True, False, False]]
    assert result.classified.all()  # flagged, not masked: the class stays
    data = result.to_json()
    assert data["cloud_flagged_cells"] == 1 and "whiteness and haze (HOT)" in data["evidence"]
    assert any("cloud/haze suspected" in text for _, text in render.map_legend_entries(result))
    np.testing.assert_allclose(evidence.cloud_pixels({"blue": np.array([0.3, 0.3, 0.1]),
                                                      "green": np.array([0.3, 0.25, 0.1]),
                                                      "red": np.array([0.3, 0.1, 0.1]),
                                                      "nir": np.array([0.3, 0.3, 0.3])}),
                               [True, False, False])  # white and bright / bright but blue / dark


def test_snow_is_masked_not_mapped_as_water_and_bright_soil_is_not_cloud(predictor, tmp_path):
    """Six bands, no SCL: a snow tile (white, bright in NIR, dark at 1.6 um) passes the water test by its NIR and
    would be mapped a lake; it is masked "snow/ice". A lake (high NDSI too, but dark in red) stays water; bright
    bare sand (reddish, flat enough for the whiteness test) is not flagged as cloud. SCL's snow class masks alike."""
    reflectance = {  # B02, B03, B04, B08, B11, B12 per tile: snow, lake, desert sand
        "snow": (0.80, 0.80, 0.78, 0.70, 0.05, 0.04), "lake": (0.06, 0.05, 0.03, 0.01, 0.005, 0.004),
        "sand": (0.20, 0.30, 0.40, 0.45, 0.55, 0.50)}
    stack = np.concatenate([np.broadcast_to(np.array(v)[:, None, None], (6, P, P)) for v in reflectance.values()],
                           axis=2)
    path = write_stack(tmp_path / "snow.tif", (stack * 10000).round().astype(np.uint16),
                       ("B02", "B03", "B04", "B08", "B11", "B12"))
    with raster.open_scene(path) as scene:
        result = mapping.map_scene(predictor, scene, min_confidence=0.0)
        rgb_only = mapping.map_scene(predictor, scene, min_confidence=0.0, evidence="rgb")
    names = np.array(EUROSAT_CLASSES)
    assert result.reason[0, 0] == raster.SNOW_CODE and result.to_json()["grid"][0][0] == "masked: snow/ice"
    assert result.masked_table()["snow/ice"]["cells"] == 1
    assert names[result.grid[0, 1]] in ("SeaLake", "River") and result.classified[0, 1:].all()
    assert result.cloud_flagged.tolist() == [[False, False, False]]  # the sand fails the HOT test
    assert "snow/ice from NDSI" in result.evidence_note
    assert rgb_only.reason[0, 0] == 0  # a spectral test: not part of --evidence rgb
    sand = {k: np.array([v]) for k, v in zip(("blue", "green", "red", "nir"), reflectance["sand"])}
    brightness_and_whiteness_only = (sum(sand[b] for b in ("blue", "green", "red")) / 3 > evidence.CLOUD_BRIGHTNESS)
    assert brightness_and_whiteness_only.all() and not evidence.cloud_pixels(sand).any()
    # An L2A band folder: SCL snow (11) is masked with the same reason, in RGB-only maps too.
    folder = tmp_path / "l2a"
    folder.mkdir()
    for name, band in zip(("B02", "B03", "B04"), (stack[:3] * 10000).round().astype(np.uint16)):
        write_stack(folder / f"{name}.tif", band[None], None)
    scl = np.full((1, P, 3 * P), 5, dtype=np.uint8)
    scl[:, :, :P] = 11
    write_stack(folder / "SCL.tif", scl, None)
    with raster.open_scene(folder) as scene:
        for mode in ("auto", "rgb"):
            masked = mapping.map_scene(predictor, scene, min_confidence=0.0, evidence=mode)
            assert masked.reason[0].tolist() == [raster.SNOW_CODE, 0, 0]


def test_a_scene_in_degrees_gets_geodesic_pixel_sizes_and_is_resampled_to_10_m(tmp_path):
    """EPSG:4326 pixels of 1e-4 degrees at 52 N: ~6.9 m east-west, ~11.1 m north-south on WGS 84 (geodesic), not
    a spherical rule of thumb; the scene is read on a 10 m grid with the same ground area."""
    import rasterio
    from pyproj import Geod

    transform = Affine(1e-4, 0, 13.0, 0, -1e-4, 52.0 + 200 * 1e-4)
    data = np.full((3, 400, 400), 1200, dtype=np.uint16)
    with rasterio.open(tmp_path / "deg.tif", "w", driver="GTiff", height=400, width=400, count=3, dtype="uint16",
                       crs="EPSG:4326", transform=transform) as dst:
        dst.write(data)
    geod = Geod(ellps="WGS84")
    mx = geod.inv(13.02 - 5e-5, 52.0, 13.02 + 5e-5, 52.0)[2]
    my = geod.inv(13.02, 52.0 - 5e-5, 13.02, 52.0 + 5e-5)[2]
    assert 6.8 < mx < 7.0 and 11.1 < my < 11.2
    with raster.open_scene(tmp_path / "deg.tif") as scene:
        assert scene.grid.resampled and "degrees at latitude 52.000" in scene.grid.pixel_size_source
        assert scene.width == round(400 * mx / 10) and scene.height == round(400 * my / 10)
        total = scene.grid.pixel_area_m2 * scene.width * scene.height
        assert total == pytest.approx(400 * 400 * mx * my, rel=1e-9)


def test_scl_water_class_is_water_evidence_even_without_nir(predictor, tmp_path):
    """An L2A-style band folder with R, G, B and SCL only: SCL water (6) under a forest-looking tile makes it
    water; SCL vegetation (4) keeps the CNN's land class, SCL cloud (9) still masks."""

    folder = tmp_path / "l2a"
    folder.mkdir()
    stack = spectral_stack(np.array([[FOREST, FOREST, FOREST]]), np.full((1, 3), 3000))
    for name, band in zip(("B02", "B03", "B04"), stack[:3]):
        write_stack(folder / f"{name}.tif", band[None], None)
    scl = np.full((1, P, 3 * P), 4, dtype=np.uint8)
    scl[:, :, :P] = 6
    scl[:, :, 2 * P:] = 9
    write_stack(folder / "SCL.tif", scl, None)
    with raster.open_scene(folder) as scene:
        assert not scene.has_spectral and scene.has_evidence
        result = mapping.map_scene(predictor, scene, min_confidence=0.0)
        rgb_only = mapping.map_scene(predictor, scene, min_confidence=0.0, evidence="rgb")
    names = np.array(EUROSAT_CLASSES)
    assert names[rgb_only.grid[0, 0]] == "Forest"
    assert names[result.grid[0, 0]] in ("SeaLake", "River") and names[result.grid[0, 1]] == "Forest"
    assert result.reason[0, 2] != 0 and rgb_only.reason[0, 2] != 0  # cloud: masked either way
    assert "SCL water class" in result.evidence_note and "SCL water" not in rgb_only.evidence_note
    assert np.isnan(result.evidence["ndvi"]).all()  # no NIR: no vegetation index


def test_paired_difference_counts_the_cells_each_map_gets_right_and_bounds_the_difference():
    rng = np.random.default_rng(0)
    truth = rng.integers(-1, 4, (40, 40))
    a = np.where(rng.random(truth.shape) < 0.6, truth, (truth + 1) % 4)  # A right on ~60 % of the cells
    same = reference.paired_difference(a, a, truth)
    assert same.agreement == (0.0, 0.0, 0.0) and same.balanced == (0.0, 0.0, 0.0)
    assert (same.only_a, same.only_b, same.blocks) == (0, 0, 100)  # 4 x 4 cells per block
    b = a.copy()
    fixed = (truth >= 0) & (a != truth) & (rng.random(truth.shape) < 0.5)
    b[fixed] = truth[fixed]
    b[:2][(truth[:2] >= 0) & (a[:2] == truth[:2])] = -1  # B leaves a few cells A had right unclassified
    diff = reference.paired_difference(a, b, truth)
    lost = int(((truth[:2] >= 0) & (a[:2] == truth[:2])).sum())
    assert (diff.only_a, diff.only_b) == (lost, int(fixed.sum()))
    scored = int((truth >= 0).sum())
    assert diff.agreement[0] == pytest.approx((fixed.sum() - lost) / scored)
    assert 0 < diff.agreement[1] < diff.agreement[0] < diff.agreement[2]
    whole_a, whole_b = reference.score_cells(a, truth), reference.score_cells(b, truth)
    assert diff.balanced[0] == pytest.approx(whole_b.balanced - whole_a.balanced)
    assert "B - A: agreement +" in diff.describe()
    with pytest.raises(ValueError, match="one grid"):
        reference.paired_difference(a, b[:-1], truth)
