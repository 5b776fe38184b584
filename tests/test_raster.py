"""Real-product reading on generated rasters: storages, resampling, nodata/SCL masks, STAC, band folders, GIS output.

Every raster is tiny and written to ``tmp_path`` with rasterio; the model is the tiny test model.
The real Sentinel-2 fixture (``LANDCOVER_S2_FIXTURE_DIR``, else ``../shared/sentinel2-l2a-fixture``
next to the repository) is used for reading only, and its tests skip when it is absent.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from PIL import Image

from landcover.readers import radiometry, raster
from landcover.scenes import change, export, mapping, render
from landcover.core.labels import EUROSAT_CLASSES, PATCH_SIZE_PX
from landcover.inference.predictor import Predictor
from test_scene import make_classes, make_mosaic, run_cli, swapped_pair

P = PATCH_SIZE_PX
ROOT = Path(__file__).resolve().parents[1]
ORIGIN = (500000.0, 5200000.0)
FIXTURE = Path(os.environ.get("LANDCOVER_S2_FIXTURE_DIR", ROOT.parent / "shared" / "sentinel2-l2a-fixture"))


@pytest.fixture(scope="module")
def predictor(tiny_model_dir) -> Predictor:
    return Predictor.load(str(tiny_model_dir))


def transform_for(pixel_m: float) -> Affine:
    return Affine(pixel_m, 0.0, ORIGIN[0], 0.0, -pixel_m, ORIGIN[1])


def write(path: Path, bands: np.ndarray, pixel_m: float = 10.0, nodata=None, descriptions=None, tags=None) -> Path:
    import rasterio

    with rasterio.open(path, "w", driver="GTiff", height=bands.shape[1], width=bands.shape[2], count=bands.shape[0],
                       dtype=bands.dtype, crs="EPSG:32633", transform=transform_for(pixel_m), nodata=nodata) as dst:
        dst.write(bands)
        for i, d in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, d)
        if tags:
            dst.update_tags(**tags)
    return path


def stored(rgb8: np.ndarray, kind: str) -> np.ndarray:
    """``rgb8`` (3, H, W) stored as reflectance (EuroSAT stretch: 255 = 0.275) in one of the usual ways."""
    refl = rgb8.astype(np.float64) * radiometry.EUROSAT_WHITE / 255
    return {"uint8": rgb8, "x10000": np.rint(refl * 1e4).astype(np.uint16),
            "x10000+1000": np.rint(refl * 1e4 + 1000).astype(np.uint16),
            "x1000": np.rint(refl * 1e3).astype(np.uint16), "float": refl.astype(np.float32)}[kind]


def scene_rgb(rows: int, cols: int, seed: int) -> np.ndarray:
    return make_mosaic(make_classes(rows, cols, seed), seed + 1).transpose(2, 0, 1).copy()


def test_every_storage_maps_identically_without_flags(tiny_model_dir, predictor, tmp_path):
    rgb = scene_rgb(3, 4, seed=20)
    grids = {}
    for kind in ("uint8", "x10000", "x10000+1000", "x1000", "float"):
        path = write(tmp_path / f"{kind}.tif", stored(rgb, kind))
        with raster.open_scene(path) as scene:
            assert scene.radiometry.scaling.kind == kind.split("+")[0] and not scene.warnings
            np.testing.assert_array_equal(scene.read(0, 0, scene.height, scene.width)[0], rgb)
            grids[kind] = mapping.map_scene(predictor, scene).probs
    for kind, probs in grids.items():
        np.testing.assert_array_equal(probs, grids["uint8"], err_msg=kind)
    # The command line says what it chose: on stderr, and in the JSON and the legend note.
    proc = run_cli("map", str(tmp_path / "x1000.tif"), "--model", str(tiny_model_dir), "--out",
                   str(tmp_path / "m.png"), "--json", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "radiometry: bands 1,2,3" in proc.stderr and "reflectance x 1000" in proc.stderr
    data = json.loads(proc.stdout)
    assert data["radiometry"]["scaling"]["kind"] == "x1000" and data["warnings"] == []
    # Explicit flags override the inference (here deliberately wrong: x10000 makes the x1000 scene black).
    proc = run_cli("map", str(tmp_path / "x1000.tif"), "--model", str(tiny_model_dir), "--out",
                   str(tmp_path / "w.png"), "--json", "--no-progress", "--scale", "x10000")
    data = json.loads(proc.stdout)
    assert data["radiometry"]["scaling"]["kind"] == "x10000" and "far darker than EuroSAT" in data["warnings"][0]
    assert "WARNING" in proc.stderr and "--scale" in proc.stderr


def test_scenes_not_at_10_m_are_resampled_and_areas_stay_right(predictor, tmp_path):
    rgb = scene_rgb(3, 4, seed=22)
    write(tmp_path / "ten.tif", rgb)
    fine = np.repeat(np.repeat(rgb, 4, axis=1), 4, axis=2)  # the same ground at 2.5 m/px
    write(tmp_path / "fine.tif", fine, pixel_m=2.5)
    with raster.open_scene(tmp_path / "ten.tif") as scene:
        reference = mapping.map_scene(predictor, scene)
    with raster.open_scene(tmp_path / "fine.tif") as scene:
        assert (scene.height, scene.width) == rgb.shape[1:] and "resampled from 2.5" in scene.grid.resampled
        assert scene.grid.transform == transform_for(10.0)
        np.testing.assert_array_equal(scene.read(0, 0, scene.height, scene.width)[0], rgb)  # 4x4 averages
        result = mapping.map_scene(predictor, scene)
    np.testing.assert_array_equal(result.grid, reference.grid)
    assert result.pixel_area_m2 == pytest.approx(100.0) and result.cell_area_km2 == pytest.approx(0.4096)
    assert "resampled" in result.to_json()["pixel_size_source"]
    # 20 m data is enlarged (bilinear) to 10 m: twice the pixels per side, the same ground area.
    coarse = rgb[:, ::2, ::2].copy()
    write(tmp_path / "coarse.tif", coarse, pixel_m=20.0)
    with raster.open_scene(tmp_path / "coarse.tif") as scene:
        assert (scene.height, scene.width) == (2 * coarse.shape[1], 2 * coarse.shape[2])
        assert scene.height * scene.width * scene.grid.pixel_area_m2 == pytest.approx(coarse[0].size * 400.0)
        assert scene.warnings == ()  # 20 m: Sentinel-2's own coarser bands, no warning
    # 60 m data maps with a warning (in the JSON, the legend and on stderr): it lacks the 10 m detail.
    write(tmp_path / "sixty.tif", rgb[:, ::6, ::6].copy(), pixel_m=60.0)
    for resample in (True, False):
        with raster.open_scene(tmp_path / "sixty.tif", resample=resample) as scene:
            assert len(scene.warnings) == 1 and "pixels are 60 m, 6x coarser" in scene.warnings[0]
            assert ("enlarged to 10 m" in scene.warnings[0]) is resample
    # A PNG with a stated pixel size is resampled the same way; --no-resample keeps it as it is.
    Image.fromarray(fine.transpose(1, 2, 0)).save(tmp_path / "fine.png")
    with raster.open_scene(tmp_path / "fine.png", pixel_size_m=2.5) as scene:
        assert (scene.height, scene.width) == rgb.shape[1:]
        np.testing.assert_array_equal(scene.read(0, 0, scene.height, scene.width)[0], rgb)
    with raster.open_scene(tmp_path / "fine.png", pixel_size_m=2.5, resample=False) as scene:
        assert (scene.height, scene.width) == fine.shape[1:] and scene.grid.pixel_area_m2 == pytest.approx(6.25)


def masked_product(folder: Path, rgb: np.ndarray, scl_values: dict, nodata_tile=(0, 0), l2a_offset=True):
    """Per-band files B02/B03/B04 (uint16, nodata 0) and a 20 m SCL; returns the folder."""
    folder.mkdir()
    dn = np.maximum(stored(rgb, "x10000+1000" if l2a_offset else "x10000"), 1)  # 0 is reserved for nodata
    i, j = nodata_tile
    dn[:, i * P:(i + 1) * P, j * P:(j + 1) * P] = 0
    for name, band in zip(("B04", "B03", "B02"), dn):
        write(folder / f"{name}.tif", band[None], nodata=0)
    scl = np.full((rgb.shape[1] // 2, rgb.shape[2] // 2), 4, dtype=np.uint8)  # 4 = vegetation
    half = P // 2
    for (ti, tj), value in scl_values.items():
        scl[ti * half:(ti + 1) * half, tj * half:(tj + 1) * half] = value
    write(folder / "SCL.tif", scl[None], pixel_m=20.0)
    return folder


def test_nodata_and_scl_cells_are_masked_and_counted_apart(predictor, tmp_path):
    rgb = scene_rgb(3, 4, seed=24)
    scl = {(0, 1): 9, (1, 2): 3, (2, 3): 10, (2, 0): 1}  # cloud, cloud shadow, cirrus, saturated
    folder = masked_product(tmp_path / "product", rgb, scl, l2a_offset=False)
    with raster.open_scene(folder) as scene:
        assert scene.scl is not None and "band files B04.tif/B03.tif/B02.tif" in scene.radiometry.band_note
        result = mapping.map_scene(predictor, scene)
    expected_reason = np.zeros((3, 4), dtype=np.uint8)
    expected_reason[0, 0] = 1  # no data
    expected_reason[0, 1], expected_reason[1, 2], expected_reason[2, 3], expected_reason[2, 0] = 4, 3, 5, 2
    np.testing.assert_array_equal(result.reason, expected_reason)
    assert result.masked_table() == {r: {"cells": 1, "km2": pytest.approx(0.4096)}
                                     for r in ("no data", "saturated/defective", "cloud shadow", "cloud",
                                               "thin cirrus")}
    table = result.area_table()
    assert sum(v["cells"] for v in table.values()) == 12 - 5
    data = result.to_json()
    assert data["grid"][0][0] == "masked: no data" and data["grid"][0][1] == "masked: cloud"
    assert data["classified_km2"] == pytest.approx(7 * 0.4096) and data["masked_cells"]["cloud"] == 1
    # Unmasked cells get the same classes as the plain scene.
    with raster.open_scene(write(tmp_path / "plain.tif", rgb)) as scene:
        plain = mapping.map_scene(predictor, scene)
    np.testing.assert_array_equal(result.grid[result.classified], plain.grid[result.classified])
    legend = [text for _, text in render.map_legend_entries(result)]
    assert any(t.startswith("masked: cloud ") for t in legend) and any("no data" in t for t in legend)
    # The class GeoTIFF keeps the reasons apart: 255 nodata, 2xx masks.
    export.write_class_geotiff(result, tmp_path / "classes.tif")
    codes, labels, crs, _ = export.read_class_geotiff(tmp_path / "classes.tif")
    assert codes[0, 0] == export.NODATA and codes[0, P] == export.MASK_CODE_BASE + 4
    assert codes[P, 2 * P] == export.MASK_CODE_BASE + 3 and codes[2 * P, 0] == export.MASK_CODE_BASE + 2


def test_geojson_polygons_cover_the_map_with_its_crs(predictor, tmp_path):
    rgb = scene_rgb(3, 4, seed=26)
    with raster.open_scene(write(tmp_path / "scene.tif", rgb)) as scene:
        result = mapping.map_scene(predictor, scene)
    collection = export.class_geojson(result)
    assert collection["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    features = collection["features"]
    assert sum(f["properties"]["cells"] for f in features) == 12
    for name in {EUROSAT_CLASSES[k] for k in result.grid.ravel()}:
        cells = sum(f["properties"]["cells"] for f in features if f["properties"]["class"] == name)
        assert cells == int((result.grid == EUROSAT_CLASSES.index(name)).sum())
    xs = [x for f in features for ring in f["geometry"]["coordinates"] for x, _ in ring]
    ys = [y for f in features for ring in f["geometry"]["coordinates"] for _, y in ring]
    assert min(xs) == ORIGIN[0] and max(xs) == ORIGIN[0] + 4 * P * 10
    assert max(ys) == ORIGIN[1] and min(ys) == ORIGIN[1] - 3 * P * 10
    Image.fromarray(rgb.transpose(1, 2, 0)).save(tmp_path / "plain.png")
    with raster.open_scene(tmp_path / "plain.png") as scene:
        unreferenced = mapping.map_scene(predictor, scene)
    with pytest.raises(ValueError, match="--geojson needs a georeferenced scene"):
        export.class_geojson(unreferenced)


def stac_item(names: dict, offset: float, baseline: str) -> dict:
    """A STAC item in the earth-search layout: remote hrefs, ``raster:bands`` scale/offset."""
    base = "https://example.invalid/sentinel-cogs/S2X_33TXX_20240101_0_L2A/"
    assets = {key: {"href": base + file, "type": "image/tiff; application=geotiff", "roles": ["data"],
                    "eo:bands": [{"name": key, "common_name": key}],
                    "raster:bands": [{"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": offset}]}
              for key, file in names.items()}
    assets["scl"] = {"href": base + "SCL.tif", "type": "image/tiff", "roles": ["data"]}
    return {"type": "Feature", "stac_version": "1.0.0", "id": "S2X_33TXX_20240101_0_L2A",
            "properties": {"s2:processing_baseline": baseline, "datetime": "2024-01-01T10:00:00Z"},
            "geometry": None, "assets": assets, "links": []}


def test_stac_item_and_band_folder_read_the_same_product(predictor, tmp_path):
    rgb = scene_rgb(3, 4, seed=28)
    folder = masked_product(tmp_path / "product", rgb, {(1, 1): 8}, nodata_tile=(2, 3), l2a_offset=True)
    item = stac_item({"red": "B04.tif", "green": "B03.tif", "blue": "B02.tif"}, offset=-0.1, baseline="05.10")
    (folder / "item.json").write_text(json.dumps(item))
    with raster.open_scene(folder / "item.json") as scene:
        scaling = scene.radiometry.scaling
        assert (scaling.kind, scaling.offset) == ("x10000", pytest.approx(1000)) and "band metadata" in scaling.source
        rgb_stac, code = scene.read(0, 0, scene.height, scene.width)
        stac_map = mapping.map_scene(predictor, scene)
    expected = rgb.copy()
    expected[:, 2 * P:, 3 * P:] = 0
    np.testing.assert_array_equal(rgb_stac, expected)  # local files next to the item, not the URLs
    assert (code[P:2 * P, P:2 * P] == 4).all() and (code[2 * P:, 3 * P:] == 1).all()
    assert stac_map.reason[1, 1] == 4 and stac_map.reason[2, 3] == 1
    (folder / "item.json").unlink()
    with raster.open_scene(folder) as scene:  # the same files as a band folder: offset from the values
        assert scene.radiometry.scaling.offset == 1000
        np.testing.assert_array_equal(mapping.map_scene(predictor, scene).probs, stac_map.probs)
    broken = stac_item({"red": "B04.tif", "green": "B03.tif"}, offset=0.0, baseline="02.14")
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="no blue asset"):
        raster.open_scene(tmp_path / "broken.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no red/green/blue band file"):
        raster.open_scene(tmp_path / "empty")


def test_stac_item_over_http_reads_its_cogs_by_range_and_maps_like_the_local_product(predictor, tmp_path,
                                                                                   monkeypatch):
    from http_files import serving

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # GDAL's curl honours proxy variables; loopback never needs one
    monkeypatch.setenv("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")  # as for S3/HTTP COGs: no directory listing
    rgb = scene_rgb(3, 4, seed=29)
    folder = masked_product(tmp_path / "product", rgb, {(0, 2): 9}, nodata_tile=(2, 0), l2a_offset=True)
    item = stac_item({"red": "B04.tif", "green": "B03.tif", "blue": "B02.tif"}, offset=-0.1, baseline="05.10")
    for asset in item["assets"].values():  # hrefs relative to the item, resolved against its URL
        asset["href"] = asset["href"].rsplit("/", 1)[1]
    (folder / "item.json").write_text(json.dumps(item))
    with raster.open_scene(folder) as scene:
        local = mapping.map_scene(predictor, scene)
    with serving(folder) as (url, log):
        with raster.open_scene(url + "item.json") as scene:
            assert scene.radiometry.scaling.offset == pytest.approx(1000) and scene.scl is not None
            remote = mapping.map_scene(predictor, scene)
    np.testing.assert_array_equal(remote.grid, local.grid)
    np.testing.assert_array_equal(remote.reason, local.reason)
    assert remote.reason[0, 2] == 4 and remote.reason[2, 0] == 1  # cloud and no data masked from the remote SCL
    np.testing.assert_allclose(remote.probs, local.probs, atol=1e-6)
    fetched = {line.split()[1] for line in log if line.startswith("GET")}
    assert {"/item.json", "/B04.tif", "/B03.tif", "/B02.tif", "/SCL.tif"} <= fetched
    assert any("bytes=" in line for line in log if "/B04.tif" in line)  # read by range, as from an object store


def test_safe_jp2_band_files_map_like_the_geotiff_product(predictor, tmp_path):
    """A SAFE-style granule folder (R10m/R20m JPEG 2000 bands, as the Copernicus hub ships L2A) reads and maps
    exactly like the same product stored as GeoTIFFs (lossless JPEG 2000)."""
    import rasterio

    rgb = scene_rgb(3, 4, seed=32)
    tif = masked_product(tmp_path / "product", rgb, {(1, 3): 8}, nodata_tile=(0, 0), l2a_offset=True)
    img = tmp_path / "S2X_MSIL2A_20240101T100000.SAFE" / "GRANULE" / "L2A_T33TXX" / "IMG_DATA"
    names = {"B04": "R10m/T33TXX_20240101T100000_B04_10m.jp2", "B03": "R10m/T33TXX_20240101T100000_B03_10m.jp2",
             "B02": "R10m/T33TXX_20240101T100000_B02_10m.jp2", "SCL": "R20m/T33TXX_20240101T100000_SCL_20m.jp2"}
    for band, name in names.items():
        (img / name).parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(tif / f"{band}.tif") as src:
            profile = {**src.profile, "driver": "JP2OpenJPEG", "QUALITY": 100, "REVERSIBLE": "YES"}
            profile.pop("blockxsize", None), profile.pop("blockysize", None), profile.pop("tiled", None)
            with rasterio.open(img / name, "w", **profile) as dst:
                dst.write(src.read())
    with raster.open_scene(tif) as scene:
        expected = mapping.map_scene(predictor, scene)
    with raster.open_scene(img.parents[2]) as scene:  # the .SAFE folder itself
        assert "B04_10m.jp2" in scene.radiometry.band_note and scene.scl is not None
        assert scene.radiometry.scaling.offset == 1000
        got = mapping.map_scene(predictor, scene)
    np.testing.assert_array_equal(got.grid, expected.grid)
    np.testing.assert_array_equal(got.reason, expected.reason)
    assert got.reason[1, 3] == 4 and got.reason[0, 0] == 1
    np.testing.assert_allclose(got.probs, expected.probs, atol=1e-6)


def test_change_reads_both_dates_through_the_same_path(tiny_model_dir, predictor, tmp_path):
    classes = make_classes(3, 4, seed=30)
    before, after, swaps = swapped_pair(classes, seed=31)
    write(tmp_path / "before.tif", stored(before.transpose(2, 0, 1).copy(), "x10000+1000"))
    write(tmp_path / "after.tif", stored(after.transpose(2, 0, 1).copy(), "float"))
    out = tmp_path / "change"
    proc = run_cli("change", str(tmp_path / "before.tif"), str(tmp_path / "after.tif"), "--model",
                   str(tiny_model_dir), "--out", f"{out}.png", "--geotiff", f"{out}.tif", "--geojson",
                   f"{out}.geojson", "--json", "--min-confidence", "0", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["radiometry"]["before"]["scaling"]["kind"] == "x10000"
    assert data["radiometry"]["after"]["scaling"]["kind"] == "float"
    # Same answer as the two dates stored as plain 8-bit PNGs.
    Image.fromarray(before).save(tmp_path / "before.png")
    Image.fromarray(after).save(tmp_path / "after.png")
    with raster.open_scene(tmp_path / "before.png") as b, raster.open_scene(tmp_path / "after.png") as a:
        plain = change.detect_change(predictor, b, a, min_confidence=0.0)
    assert data["changed"] == plain.changed.tolist() and data["transition_tiles"] == plain.matrix().tolist()
    import rasterio

    with rasterio.open(f"{out}.tif") as ds:
        assert ds.count == 3 and ds.crs.to_string() == "EPSG:32633"
        layers = ds.read()
    np.testing.assert_array_equal(layers[2, ::P, ::P], plain.changed.astype(np.uint8))
    np.testing.assert_array_equal(layers[0, ::P, ::P], plain.before.grid)
    geo = json.loads(Path(f"{out}.geojson").read_text())
    assert sum(f["properties"]["cells"] for f in geo["features"]) == data["changed_tiles"]
    assert all(f["properties"]["from"] != f["properties"]["to"] for f in geo["features"])


fixture_needed = pytest.mark.skipif(not (FIXTURE / "S2A_29RKH_20200219_0_L2A").is_dir(),
                                    reason="Sentinel-2 L2A fixture absent (set LANDCOVER_S2_FIXTURE_DIR)")


@fixture_needed
def test_real_l2a_stac_item_maps_end_to_end_with_clouds_masked(predictor, tmp_path):
    product = FIXTURE / "S2A_29RKH_20200219_0_L2A"
    with raster.open_scene(product / "S2A_29RKH_20200219_0_L2A.json") as scene:
        # 100 m data is resampled to 10 m by default: 10x the pixels per side, the same 109.8 km tile.
        assert (scene.height, scene.width) == (10980, 10980) and scene.grid.pixel_area_m2 == pytest.approx(100.0)
        scaling = scene.radiometry.scaling
        assert (scaling.kind, scaling.offset) == ("x10000", 0.0)  # baseline 02.14: no offset
        assert scene.warnings == (scene.grid.warning,) and "pixels are 100 m" in scene.grid.warning
        rgb, code = scene.read(5000, 5000, 256, 256)
        assert rgb.dtype == np.uint8 and 20 < rgb.mean() < 250
    # Mapped on the native 100 m grid (the model needs 10 m: reading and masks only, not accuracy).
    with raster.open_scene(product, resample=False) as scene:
        assert scene.scl is not None and scene.grid.pixel_area_m2 == pytest.approx(1e4)
        result = mapping.map_scene(predictor, scene)
    masked = result.masked_table()
    assert masked.get("cloud", {}).get("cells", 0) + masked.get("thin cirrus", {}).get("cells", 0) > 0
    data = result.to_json()
    total = data["classified_km2"] + sum(data["masked_km2"].values())
    assert total == pytest.approx(17 * 17 * 0.64 ** 2 * 100, rel=1e-6)  # 17 x 17 tiles of 6.4 km
    render.render_map_with_legend(result).save(tmp_path / "fixture.png")
