"""Region maps on a real local Ray cluster (2 workers): generated scenes in two UTM zones, a corrupt scene, resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from datagen import class_patch

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
P = 64


def write_scene(path: Path, crs: str, origin: tuple[float, float], classes: np.ndarray, seed: int) -> Path:
    """A 4-band (B02, B03, B04, B08) reflectance x 10000 GeoTIFF of class patches at 10 m."""
    import rasterio

    rng = np.random.default_rng(seed)
    rgb = np.concatenate([np.concatenate([class_patch(int(c), rng) for c in row], axis=1) for row in classes])
    refl = rgb.astype(np.float64) / 255 * 2750 + 100
    nir = np.full(rgb.shape[:2], 3000.0)
    bands = np.stack([refl[..., 2], refl[..., 1], refl[..., 0], nir]).round().astype(np.uint16)
    with rasterio.open(path, "w", driver="GTiff", height=bands.shape[1], width=bands.shape[2], count=4,
                       dtype="uint16", crs=crs, transform=Affine(10, 0, origin[0], 0, -10, origin[1])) as dst:
        dst.write(bands)
        for i, d in enumerate(("B02", "B03", "B04", "B08"), start=1):
            dst.set_band_description(i, d)
    return path


@pytest.fixture(scope="module")
def region_inputs(tmp_path_factory) -> list[str]:
    """Two scenes either side of the 32/33 UTM boundary (12 E, 50 N), and a file that is no raster."""
    from pyproj import Transformer

    folder = tmp_path_factory.mktemp("region")
    west = Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True).transform(11.98, 50.0)
    east = Transformer.from_crs("EPSG:4326", "EPSG:32633", always_xy=True).transform(12.02, 50.0)
    a = write_scene(folder / "west.tif", "EPSG:32632", west, np.array([[1, 3, 4], [5, 6, 7]]), seed=1)
    b = write_scene(folder / "east.tif", "EPSG:32633", east, np.array([[2, 4], [6, 8], [0, 1]]), seed=2)
    corrupt = folder / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + b"\x00" * 64)
    return [str(a), str(corrupt), str(b)]


def test_region_maps_two_utm_zones_into_one_mosaic_reports_failures_and_resumes(region_inputs, tiny_model_dir,
                                                                              tmp_path):
    import rasterio

    from landcover.scenes.mapping import MapOptions
    from landcover.scenes.region import RegionOptions, map_region

    options = RegionOptions(tmp_path / "out", MapOptions(stride=32, min_confidence=0.0), model=str(tiny_model_dir),
                            backend="torch", workers=2, retries=1, progress=False)
    run = map_region(region_inputs, options)
    assert run["engine"] == "ray" and run["workers"] == 2 and run["scenes"] == 3
    assert run["done"] == 2 and run["mapped"] == 2 and run["skipped"] == 0 and run["tiles_per_s"] > 0
    assert [f["scene"] for f in run["failed"]] == [region_inputs[1]] and run["failed"][0]["error"]
    out = options.out
    with rasterio.open(out / "classes.tif") as ds:
        assert ds.crs.to_string() == "EPSG:32632"  # the first scene's CRS
        assert json.loads(ds.tags()["labels"])[0] == "AnnualCrop" and ds.nodata == 255
        assert ds.overviews(1) or max(ds.shape) < 512  # COG: overviews once large enough
        classes = ds.read(1)
    # Both scenes are in the mosaic: the east one warped from zone 33.
    assert (classes != 255).sum() > 0.9 * (6 + 6) * P * P
    areas = json.loads((out / "areas.json").read_text())
    per_scene = [sum(v.values()) for v in areas["scenes"].values()]
    assert per_scene == pytest.approx([6 * P * P * 100 / 1e6, 6 * P * P * 100 / 1e6], rel=1e-6)
    # Geodesic areas of the mosaic: the same ground (within the warp's nearest-neighbour edge effects).
    total = sum(areas["total"].values())
    assert total == pytest.approx(sum(per_scene), rel=0.03)
    footprints = json.loads((out / "scenes.geojson").read_text())["features"]
    assert [f["properties"]["status"] for f in footprints] == ["done", "failed", "done"]
    summaries = [json.loads(f.read_text()) for f in sorted((out / "scenes").glob("*/summary.json"))]
    assert len(summaries) == 2 and all(s["warnings"] == [] and s["masked_km2"] == {} for s in summaries)
    lon, lat = np.array(footprints[2]["geometry"]["coordinates"][0]).T
    assert 12.0 < lon.min() < 12.1 and 49.9 < lat.min() < 50.1  # WGS 84
    assert (out / "overview.png").stat().st_size > 1000
    # Rerun: the mapped scenes are skipped, the broken one is tried again, and the mosaic is rebuilt.
    (out / "classes.tif").unlink()
    again = map_region(region_inputs, options)
    assert again["skipped"] == 2 and again["mapped"] == 0 and len(again["failed"]) == 1
    assert (out / "classes.tif").is_file()


def test_cli_map_region_runs_and_writes_run_json(region_inputs, tiny_model_dir, tmp_path):
    listing = tmp_path / "scenes.txt"
    listing.write_text(f"# two scenes\n{region_inputs[0]}\n\n{region_inputs[2]}\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "landcover", "map-region", f"@{listing}", "--out",
                        str(tmp_path / "out"), "--workers", "2", "--model", str(tiny_model_dir), "--stride", "64",
                        "--backend", "torch", "--no-progress", "--json"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    run = json.loads(r.stdout)
    assert run["done"] == 2 and run["failed"] == [] and run["crs"] == "EPSG:32632"
    assert json.loads((tmp_path / "out" / "run.json").read_text())["done"] == 2


def test_a_worker_killed_mid_run_is_replaced_and_the_run_completes(tiny_model_dir, tmp_path):
    """kill -9 of the worker mapping a scene: Ray restarts the actor and runs the scene again."""
    import signal
    import threading
    import time

    from landcover.scenes.mapping import MapOptions
    from landcover.scenes.region import RegionOptions, map_region

    scenes = [str(write_scene(tmp_path / f"s{i}.tif", "EPSG:32633", (500000.0 + 20000 * i, 5600000.0),
                              np.arange(64).reshape(8, 8) % 10, seed=i)) for i in range(3)]
    options = RegionOptions(tmp_path / "out", MapOptions(stride=8, min_confidence=0.0), model=str(tiny_model_dir),
                            backend="torch", workers=2, retries=2, progress=False)
    killed = []

    def kill_first_in_flight():  # a scene in flight is a folder named <id>.tmp-<worker pid>
        deadline = time.monotonic() + 240
        while not killed and time.monotonic() < deadline:
            for entry in (tmp_path / "out" / "scenes").glob("*.tmp-*"):
                pid = int(entry.name.rsplit("-", 1)[1])
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.02)  # polling for the condition, bounded by the deadline

    watcher = threading.Thread(target=kill_first_in_flight)
    watcher.start()
    run = map_region(scenes, options)
    watcher.join()
    assert killed, "no scene was seen in flight"
    assert run["done"] == 3 and run["failed"] == []
    assert not list((tmp_path / "out" / "scenes").glob("*.tmp-*"))  # the killed worker's partial result is gone


def test_map_region_searches_a_stac_api_and_maps_what_it_finds(region_inputs, tiny_model_dir, tmp_path):
    """A small STAC API on loopback (landing page with its conformance classes, POST /search): the search sent is
    the one asked for, and each item found is saved with absolute asset hrefs for map-region (reading items over
    HTTP is tested with the STAC-over-HTTP scene test)."""
    import functools
    import shutil

    from http_files import RangeHandler, base_url, running_server

    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(region_inputs[2], served / "east.tif")
    searches = []

    class StacApi(RangeHandler):
        def _json(self, data):
            body = json.dumps(data).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            url = base_url(self.server)
            if self.path in ("/", ""):
                return self._json({"type": "Catalog", "id": "test", "stac_version": "1.0.0", "description": "t",
                                   "conformsTo": ["https://api.stacspec.org/v1.0.0/core",
                                                  "https://api.stacspec.org/v1.0.0/item-search",
                                                  "https://api.stacspec.org/v1.0.0/item-search#query"],
                                   "links": [{"rel": "self", "href": url + "/"},
                                             {"rel": "root", "href": url + "/"},
                                             {"rel": "search", "href": url + "/search", "method": "POST",
                                              "type": "application/geo+json"}]})
            return super().do_GET()

        def do_POST(self):
            searches.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            url = base_url(self.server)
            item = {"type": "Feature", "stac_version": "1.0.0", "id": "S2_east", "collection": "sentinel-2-l2a",
                    "geometry": None, "properties": {"datetime": "2024-06-01T10:00:00Z", "eo:cloud_cover": 3},
                    "links": [],
                    "assets": {k: {"href": f"{url}/east.tif", "eo:bands": [{"common_name": k}]}
                               for k in ("red", "green", "blue")}}
            return self._json({"type": "FeatureCollection", "features": [item], "links": []})

    with running_server(functools.partial(StacApi, directory=str(served))) as server:
        server.log = []
        from landcover.scenes.region import StacSearch, search_stac

        items = search_stac(StacSearch(base_url(server), ("sentinel-2-l2a",), (11.9, 49.9, 12.1, 50.1),
                                       "2024-06-01/2024-06-30", 20.0), tmp_path / "items")
        assert [Path(p).name for p in items] == ["S2_east.json"]
        body = searches[0]
        assert body["collections"] == ["sentinel-2-l2a"] and body["bbox"] == [11.9, 49.9, 12.1, 50.1]
        assert body["datetime"].startswith("2024-06-01") and body["query"] == {"eo:cloud_cover": {"lt": 20.0}}
        item = json.loads(Path(items[0]).read_text())
        assert item["assets"]["red"]["href"] == base_url(server) + "/east.tif"
        assert item["properties"]["eo:cloud_cover"] == 3


def test_a_large_scene_is_split_into_row_parts_across_workers_and_equals_one_pass(tiny_model_dir, tmp_path,
                                                                                  monkeypatch):
    """A scene above PART_TILES is planned into tile-row parts, mapped by both workers and assembled: the same
    classes and confidences as mapping it in one pass in this process."""
    import rasterio

    from landcover.inference.predictor import load_predictor
    from landcover.readers.raster import open_scene
    from landcover.scenes import export, region
    from landcover.scenes.mapping import MapOptions, map_scene

    scene = str(write_scene(tmp_path / "big.tif", "EPSG:32633", (500000.0, 5600000.0),
                            np.arange(24).reshape(6, 4) % 10, seed=5))  # 384 x 256 px: 11 x 7 tiles at stride 32
    monkeypatch.setattr(region, "PART_TILES", 20)  # -> parts of 2 tile rows: 6 parts
    options = region.RegionOptions(tmp_path / "out", MapOptions(stride=32, min_confidence=0.0),
                                   model=str(tiny_model_dir), backend="torch", workers=2, progress=False)
    run = region.map_region([scene], options)
    assert run["done"] == 1 and run["failed"] == [] and run["tiles"] == 11 * 7 and run["scene_parts"] == 6
    predictor = load_predictor(str(tiny_model_dir), backend="torch", task="scenes")
    with open_scene(scene) as opened:
        export.write_class_geotiff(map_scene(predictor, opened, options.map), tmp_path / "one_pass.tif")
    with rasterio.open(tmp_path / "one_pass.tif") as a, \
            rasterio.open(options.out / "scenes" / region.scene_id(scene) / "classes.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
        assert np.abs(a.read(2).astype(int) - b.read(2).astype(int)).max() <= 1  # percent, summed in another order
        assert a.transform == b.transform and a.crs == b.crs


def test_assembling_parts_checks_that_they_cover_every_tile_row_once(tiny_model_dir, tmp_path):
    from landcover.inference.predictor import load_predictor
    from landcover.readers.raster import open_scene
    from landcover.scenes.mapping import MapOptions, accumulate_tiles, assemble_map

    scene = write_scene(tmp_path / "s.tif", "EPSG:32633", (500000.0, 5600000.0), np.array([[1, 2], [3, 4]]), seed=3)
    predictor = load_predictor(str(tiny_model_dir), backend="torch")
    options = MapOptions(stride=32)
    with open_scene(str(scene)) as opened:  # 3 tile rows
        first = accumulate_tiles(predictor, opened, options, (0, 1))
        with pytest.raises(ValueError, match="each of 0..3 once"):
            assemble_map(opened, predictor.labels, options, [first])
        with pytest.raises(ValueError, match="tile_rows must lie within"):
            accumulate_tiles(predictor, opened, options, (2, 5))
        parts = [first, accumulate_tiles(predictor, opened, options, (1, 3))]
        np.testing.assert_allclose(assemble_map(opened, predictor.labels, options, parts[::-1]).probs,
                                   assemble_map(opened, predictor.labels, options,
                                                [accumulate_tiles(predictor, opened, options)]).probs, atol=1e-6)
