"""Scene maps and change detection on mosaics of generated patches of known classes.

The oracle is the tiny model's own prediction for each patch: at stride 64 the map must reproduce
``predict_tensor`` on the same tiles exactly, and should mostly match the true classes.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from affine import Affine
from PIL import Image

from datagen import class_patch
from landcover.readers import raster
from landcover.scenes import adaptation, change, export, mapping, render
from landcover.core.labels import CLASS_COLOURS, EUROSAT_CLASSES, PATCH_SIZE_PX
from landcover.inference.predictor import Predictor

ROOT = Path(__file__).resolve().parents[1]
P = PATCH_SIZE_PX
TEN_M = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5200000.0)  # 10 m pixels: tiled as they are


@pytest.fixture(scope="module")
def predictor(tiny_model_dir) -> Predictor:
    return Predictor.load(str(tiny_model_dir))


def make_classes(rows: int, cols: int, seed: int) -> np.ndarray:
    """A rows x cols grid of class indices in which every class occurs."""
    rng = np.random.default_rng(seed)
    flat = np.concatenate([np.arange(10), rng.integers(0, 10, rows * cols - 10)])
    return rng.permutation(flat).reshape(rows, cols)


def make_mosaic(classes: np.ndarray, seed: int, pad: tuple[int, int] = (0, 0)) -> np.ndarray:
    """uint8 (H, W, 3) mosaic of generated patches; ``pad`` adds black rows/cols (less than one tile)."""
    rng = np.random.default_rng(seed)
    mosaic = np.concatenate([np.concatenate([class_patch(int(c), rng) for c in row], axis=1) for row in classes])
    return np.pad(mosaic, ((0, pad[0]), (0, pad[1]), (0, 0)))


def tiles_of(mosaic: np.ndarray, rows: int, cols: int, stride: int = P) -> torch.Tensor:
    """(rows*cols, 3, 64, 64) tiles at ``stride``, row-major, the way the map should cut them."""
    out = [mosaic[i * stride:i * stride + P, j * stride:j * stride + P].transpose(2, 0, 1)
           for i in range(rows) for j in range(cols)]
    return torch.from_numpy(np.stack(out).copy())


def write_geotiff(path: Path, bands: np.ndarray, crs: str = "EPSG:32633", transform=None, descriptions=None):
    """Write ``bands`` (count, H, W) as a GeoTIFF with a known CRS and transform."""
    import rasterio

    transform = transform or TEN_M
    with rasterio.open(path, "w", driver="GTiff", height=bands.shape[1], width=bands.shape[2], count=bands.shape[0],
                       dtype=bands.dtype, crs=crs, transform=transform) as dst:
        dst.write(bands)
        for i, d in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, d)
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "landcover", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def test_map_at_stride_64_equals_patch_predictions(predictor, tmp_path):
    classes = make_classes(5, 6, seed=1)
    mosaic = make_mosaic(classes, seed=2, pad=(17, 40))
    Image.fromarray(mosaic).save(tmp_path / "scene.png")
    with raster.open_scene(tmp_path / "scene.png") as scene:
        result = mapping.map_scene(predictor, scene, stride=64, batch_size=7)  # batches straddle tile rows
    expected = predictor.predict_tensor(tiles_of(mosaic, 5, 6)).numpy()
    assert result.grid.shape == (5, 6)
    np.testing.assert_array_equal(result.grid.ravel(), expected.argmax(1))
    np.testing.assert_allclose(result.probs.reshape(10, -1).T, expected, atol=1e-5)
    np.testing.assert_allclose(result.confidence.ravel(), expected.max(1), atol=1e-5)
    assert (result.grid == classes).mean() >= 0.8


def test_maps_use_one_pass_unless_tta_is_asked_for(predictor, tmp_path):
    classes = make_classes(3, 4, seed=5)
    mosaic = make_mosaic(classes, seed=6)
    Image.fromarray(mosaic).save(tmp_path / "scene.png")
    tiles = tiles_of(mosaic, 3, 4)
    with raster.open_scene(tmp_path / "scene.png") as scene:
        single = mapping.map_scene(predictor, scene)
        averaged = mapping.map_scene(predictor, scene, tta=True)
    np.testing.assert_allclose(single.probs.reshape(10, -1).T, predictor.predict_tensor(tiles, tta=False).numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(averaged.probs.reshape(10, -1).T, predictor.predict_tensor(tiles, tta=True).numpy(),
                               atol=1e-5)
    # The 8 views really are different inputs (compared in log space: the tiny model is very confident).
    assert np.abs(np.log(single.probs + 1e-30) - np.log(averaged.probs + 1e-30)).max() > 1e-3


def test_area_table_and_legend_colours(predictor, tmp_path):
    classes = make_classes(4, 5, seed=3)
    Image.fromarray(make_mosaic(classes, seed=4, pad=(10, 0))).save(tmp_path / "scene.png")
    with raster.open_scene(tmp_path / "scene.png") as scene:
        result = mapping.map_scene(predictor, scene)
    table = result.area_table()
    counts = np.bincount(result.grid.ravel(), minlength=10)
    assert [table[n]["cells"] for n in EUROSAT_CLASSES] == counts.tolist()
    assert sum(v["percent"] for v in table.values()) == pytest.approx(100.0)
    # No georeference: 10 m/px assumed (and said), so a 64 px tile is 640 m x 640 m = 0.4096 km².
    assert "assumed 10 m/px" in result.pixel_size_source
    for n in EUROSAT_CLASSES:
        assert table[n]["km2"] == pytest.approx(counts[EUROSAT_CLASSES.index(n)] * 0.4096)
    data = result.to_json()
    assert data["classified_km2"] == pytest.approx(20 * 0.4096)
    assert sum(data["area_km2"].values()) == pytest.approx(data["classified_km2"], abs=1e-4)
    # Every class has its own fixed colour, and the rendered map uses it at each tile's centre.
    assert set(CLASS_COLOURS) == set(EUROSAT_CLASSES) and len(set(CLASS_COLOURS.values())) == 10
    image = np.asarray(render.render_map(result, size=(result.height, result.width)))
    for i in range(4):
        for j in range(5):
            label = EUROSAT_CLASSES[result.grid[i, j]]
            assert tuple(image[i * P + 32, j * P + 32]) == CLASS_COLOURS[label]
    assert tuple(image[-1, 0]) == render.UNCLASSIFIED_COLOUR  # the 10 px edge below the last tile row
    legend = render.map_legend_entries(result)
    assert [tuple(int(v) for v in c) for c, _ in legend[:10]] == [CLASS_COLOURS[n] for n in EUROSAT_CLASSES]
    assert legend[-1][1].startswith("not classified")
    picture = render.render_map_with_legend(result)
    assert picture.width > image.shape[1]


def test_overlapping_tiles_are_averaged_per_cell(predictor, tmp_path):
    classes = make_classes(3, 4, seed=5)
    mosaic = make_mosaic(classes, seed=6)
    Image.fromarray(mosaic).save(tmp_path / "scene.png")
    with raster.open_scene(tmp_path / "scene.png") as scene:
        result = mapping.map_scene(predictor, scene, stride=32, batch_size=5)
    rows, cols = (3 * P - P) // 32 + 1, (4 * P - P) // 32 + 1  # 5 x 7 tiles -> 6 x 8 cells of 32 px
    assert result.grid.shape == (rows + 1, cols + 1)
    probs = predictor.predict_tensor(tiles_of(mosaic, rows, cols, stride=32)).numpy().reshape(rows, cols, 10)
    # Interior cell (2, 3) is covered by tiles (1..2, 2..3); corner cell (0, 0) by tile (0, 0) only.
    np.testing.assert_allclose(result.probs[:, 2, 3], probs[1:3, 2:4].mean(axis=(0, 1)), atol=1e-5)
    np.testing.assert_allclose(result.probs[:, 0, 0], probs[0, 0], atol=1e-5)
    assert sum(v["percent"] for v in result.area_table().values()) == pytest.approx(100.0)
    assert result.cell_area_km2 == pytest.approx(0.1024)


def test_geotiff_round_trip_keeps_georeference(tiny_model_dir, predictor, tmp_path):
    import rasterio
    from rasterio.transform import from_origin

    classes = make_classes(3, 4, seed=7)
    mosaic = make_mosaic(classes, seed=8, pad=(30, 5))
    transform = from_origin(500000.0, 5200000.0, 10.0, 10.0)  # 10 m pixels: a tile is 640 m on a side
    src = write_geotiff(tmp_path / "scene.tif", mosaic.transpose(2, 0, 1).copy(), "EPSG:32633", transform)
    out = tmp_path / "out"
    proc = run_cli("map", str(src), "--model", str(tiny_model_dir), "--out", f"{out}.png", "--json",
                   "--geotiff", f"{out}.tif", "--overlay", f"{out}-overlay.png", "--confidence", f"{out}-conf.png")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    expected = predictor.predict_tensor(tiles_of(mosaic, 3, 4)).numpy().argmax(1).reshape(3, 4)
    assert data["grid"] == [[EUROSAT_CLASSES[k] for k in row] for row in expected.tolist()]
    assert np.array(data["confidence"]).shape == (3, 4)
    assert data["crs"] == "EPSG:32633" and data["pixel_area_m2"] == pytest.approx(100.0)
    assert data["resampled"] is None and data["radiometry"]["scaling"]["kind"] == "uint8"
    tile_km2 = (64 * 10) ** 2 / 1e6
    counts = np.bincount(expected.ravel(), minlength=10)
    assert [data["area_km2"][n] for n in EUROSAT_CLASSES] == pytest.approx(list(counts * tile_km2))
    assert sum(data["area_percent"].values()) == pytest.approx(100.0, abs=1e-3)
    codes, labels, crs, out_transform = export.read_class_geotiff(f"{out}.tif")
    assert crs.to_string() == "EPSG:32633" and out_transform == transform
    assert codes.shape == mosaic.shape[:2] and labels == list(EUROSAT_CLASSES)
    np.testing.assert_array_equal(codes[:3 * P:P, :4 * P:P], expected)  # one value per tile, on the input grid
    np.testing.assert_array_equal(codes[3 * P - 1, :4 * P], np.repeat(expected[2], P))
    assert (codes[3 * P:] == export.NODATA).all() and (codes[:, 4 * P:] == export.NODATA).all()
    with rasterio.open(f"{out}.tif") as ds:
        cmap = ds.colormap(1)
        assert ds.nodata == export.NODATA
    assert all(cmap[i][:3] == CLASS_COLOURS[n] for i, n in enumerate(EUROSAT_CLASSES))
    for suffix in ("-overlay.png", "-conf.png", ".png"):
        with Image.open(f"{out}{suffix}") as im:
            assert im.width >= render.MIN_RENDER_PX


def test_sentinel2_16bit_bands_scaled_to_eurosat_range(predictor, tmp_path):
    classes = make_classes(3, 4, seed=9)
    rgb = make_mosaic(classes, seed=10).transpose(2, 0, 1)
    dn = np.rint(rgb.astype(np.float64) * 2750 / 255).astype(np.uint16)  # reflectance x 10000
    nir = np.full_like(dn[0], 4000)
    stack = np.stack([nir, dn[2], dn[0], dn[1]])  # bands B08, B02, B04, B03 - not in RGB order
    path = write_geotiff(tmp_path / "s2.tif", stack, descriptions=["B08", "B02", "B04", "B03"],
                         transform=TEN_M)
    with raster.open_scene(path) as scene:
        assert scene.radiometry.bands == (3, 4, 2) and "B04/B03/B02" in scene.radiometry.band_note
        assert scene.radiometry.scaling.kind == "x10000"
        np.testing.assert_array_equal(scene.read(0, 0, scene.height, scene.width)[0], rgb)
        s2_map = mapping.map_scene(predictor, scene, evidence="rgb")  # the same RGB, the CNN alone
    Image.fromarray(rgb.transpose(1, 2, 0)).save(tmp_path / "rgb.png")
    with raster.open_scene(tmp_path / "rgb.png") as scene:
        np.testing.assert_array_equal(s2_map.grid, mapping.map_scene(predictor, scene).grid)


def swapped_pair(classes: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, list]:
    """Before/after mosaics: the after one has three pairs of tiles of different classes swapped."""
    before = make_mosaic(classes, seed=seed)
    after = before.copy()
    rows, cols = classes.shape
    swaps, used = [], set()
    for a in range(rows * cols):
        for b in range(a + 1, rows * cols):
            pa, pb = divmod(a, cols), divmod(b, cols)
            if len(swaps) < 3 and classes[pa] != classes[pb] and not {pa, pb} & used:
                swaps.append((pa, pb))
                used |= {pa, pb}
    for (i, j), (k, m) in swaps:
        after[i * P:(i + 1) * P, j * P:(j + 1) * P] = before[k * P:(k + 1) * P, m * P:(m + 1) * P]
        after[k * P:(k + 1) * P, m * P:(m + 1) * P] = before[i * P:(i + 1) * P, j * P:(j + 1) * P]
    return before, after, swaps


def test_change_matrix_counts_swapped_tiles(tiny_model_dir, predictor, tmp_path):
    classes = make_classes(3, 5, seed=11)
    before, after, swaps = swapped_pair(classes, seed=12)
    Image.fromarray(before).save(tmp_path / "before.png")
    Image.fromarray(after).save(tmp_path / "after.png")
    proc = run_cli("change", str(tmp_path / "before.png"), str(tmp_path / "after.png"), "--model",
                   str(tiny_model_dir), "--out", str(tmp_path / "change.png"), "--json", "--min-confidence", "0")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    pb = predictor.predict_tensor(tiles_of(before, 3, 5)).numpy().argmax(1).reshape(3, 5)
    pa = predictor.predict_tensor(tiles_of(after, 3, 5)).numpy().argmax(1).reshape(3, 5)
    expected = np.zeros((10, 10), dtype=int)
    np.add.at(expected, (pb.ravel(), pa.ravel()), 1)
    assert data["transition_tiles"] == expected.tolist()
    assert np.array(data["transition_km2"]) == pytest.approx(expected * 0.4096)
    swapped = {p for pair in swaps for p in pair}
    changed = {(i, j) for i in range(3) for j in range(5) if data["changed"][i][j]}
    assert changed == {(i, j) for (i, j) in swapped if pb[i, j] != pa[i, j]}
    assert len(changed) >= 4  # most of the 6 swapped tiles are recognised as their true classes
    assert data["changed_tiles"] + data["unchanged_tiles"] + data["uncertain_tiles"] == 15
    assert sum(t["tiles"] for t in data["transitions"]) == data["changed_tiles"]
    with Image.open(tmp_path / "change.png") as im:
        assert im.width > 3 * render.MIN_RENDER_PX
    # A confidence threshold only ever removes tiles from the comparison.
    with raster.open_scene(tmp_path / "before.png") as b, raster.open_scene(tmp_path / "after.png") as a:
        strict = change.detect_change(predictor, b, a, min_confidence=0.99)
    assert strict.matrix().sum() == strict.confident.sum() <= 15
    assert not (strict.changed & ~np.array(data["changed"])).any()


def test_change_rejects_scenes_not_on_the_same_grid(tiny_model_dir, tmp_path):
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (128, 192, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(tmp_path / "b.png")
    proc = run_cli("change", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--model", str(tiny_model_dir),
                   "--out", str(tmp_path / "c.png"))
    assert proc.returncode == 2 and "differ in size" in proc.stderr and "192x128" in proc.stderr
    bands = rng.integers(0, 255, (3, 128, 128), dtype=np.uint8)
    one = write_geotiff(tmp_path / "one.tif", bands)
    shifted = write_geotiff(tmp_path / "two.tif", bands, transform=from_origin(500640.0, 5200000.0, 10.0, 10.0))
    other_crs = write_geotiff(tmp_path / "three.tif", bands, crs="EPSG:32632")
    with raster.open_scene(one) as a, raster.open_scene(shifted) as b, raster.open_scene(other_crs) as c:
        with pytest.raises(ValueError, match="different transforms"):
            change.check_same_grid(a, b)
        with pytest.raises(ValueError, match="different CRSs"):
            change.check_same_grid(a, c)


def test_bad_scenes_and_options_give_clear_errors(tiny_model_dir, predictor, tmp_path):
    Image.fromarray(np.zeros((40, 100, 3), dtype=np.uint8)).save(tmp_path / "small.png")
    with raster.open_scene(tmp_path / "small.png") as scene, pytest.raises(ValueError, match="at least 64x64"):
        mapping.map_scene(predictor, scene)
    with pytest.raises(ValueError, match="divide the patch size"):
        mapping.tile_grid(128, 128, stride=48)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="Cannot read junk.png"):
        raster.open_scene(tmp_path / "junk.png")
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(tmp_path / "plain.png")
    proc = run_cli("map", str(tmp_path / "plain.png"), "--model", str(tiny_model_dir), "--out",
                   str(tmp_path / "m.png"), "--geotiff", str(tmp_path / "m.tif"))
    assert proc.returncode == 2 and "--geotiff needs a georeferenced scene" in proc.stderr
    assert not (tmp_path / "m.png").exists()


def test_app_tabs_over_http(predictor, tmp_path):
    import gradio as gr
    from gradio_client import Client, handle_file

    from landcover.app.scene_tabs import add_scene_tabs

    classes = make_classes(2, 5, seed=13)
    before, after, _ = swapped_pair(classes, seed=14)
    Image.fromarray(before).save(tmp_path / "before.png")
    Image.fromarray(after).save(tmp_path / "after.png")
    src = write_geotiff(tmp_path / "scene.tif", before.transpose(2, 0, 1).copy())
    with gr.Blocks() as demo:
        with gr.Tabs():
            add_scene_tabs(predictor)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        map_png, overlay, areas, summary, files = client.predict(handle_file(str(src)), 64, api_name="/map_scene")
        assert Image.open(map_png).width > render.MIN_RENDER_PX and Image.open(overlay).size
        assert sum(row[1] for row in areas["data"]) == pytest.approx(100.0, abs=0.1)
        assert "EPSG:32633" in summary
        assert sorted(Path(f).suffix for f in files) == [".geojson", ".json", ".png", ".png", ".tif"]
        # Left out, the confidence and adaptation controls take landcover map's defaults.
        saved = json.loads(next(Path(f) for f in files if f.endswith(".json")).read_text())
        assert saved["min_confidence"] == mapping.DEFAULT_MIN_CONFIDENCE and saved["adaptation"] is None
        assert "Adapted" not in summary and f"below confidence {mapping.DEFAULT_MIN_CONFIDENCE:g}" in summary
        *_, summary, files = client.predict(handle_file(str(src)), 32, 0.0, True, api_name="/map_scene")
        saved = json.loads(next(Path(f) for f in files if f.endswith(".json")).read_text())
        assert saved["adaptation"] == adaptation.describe() and saved["min_confidence"] == 0.0
        assert f"Adapted: {adaptation.describe()}" in summary and "0 cells below confidence 0 " in summary
        change, transitions, summary, files = client.predict(handle_file(str(tmp_path / "before.png")),
                                                             handle_file(str(tmp_path / "after.png")), 0.0, 64,
                                                             api_name="/compare_scenes")
        assert Image.open(change).size and "changed" in summary
        assert all(row[0] != row[1] for row in transitions["data"])
        Image.fromarray(before[:, :128]).save(tmp_path / "narrow.png")
        with pytest.raises(Exception, match="differ in size"):
            client.predict(handle_file(str(tmp_path / "before.png")), handle_file(str(tmp_path / "narrow.png")),
                           0.5, 64, api_name="/compare_scenes")
    finally:
        demo.close()


def test_real_mosaic_tile_accuracy_matches_patch_accuracy(real_eurosat, tmp_path):
    """A 32 x 32 mosaic of real held-out patches (fixed seed): per-tile accuracy of the map = patch accuracy.

    Maps run one pass per tile (no TTA), so they are compared with the same patches classified one by
    one in one pass, and with the single-pass test accuracy recorded in the model's metrics.json.
    """
    from landcover.models.hub import DEFAULT_MODEL_DIR

    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        pytest.skip("the embedded default model is not there yet")
    predictor = Predictor.load(tta=False)
    metrics = json.loads((DEFAULT_MODEL_DIR / "metrics.json").read_text())
    recorded = (metrics.get("test_without_tta") or metrics["test"])["accuracy"]
    files = json.loads((DEFAULT_MODEL_DIR / "splits.json").read_text())["files"]["test"]
    rng = np.random.default_rng(0)
    side = 32
    chosen = [files[i] for i in rng.choice(len(files), side * side, replace=False)]
    truth = np.array([EUROSAT_CLASSES.index(Path(f).parts[0]) for f in chosen]).reshape(side, side)
    patches = [np.asarray(Image.open(real_eurosat / f).convert("RGB")) for f in chosen]
    mosaic = np.concatenate([np.concatenate(patches[r * side:(r + 1) * side], axis=1) for r in range(side)])
    Image.fromarray(mosaic).save(tmp_path / "real.png")  # temp dir only: never committed
    patch_pred = np.array([EUROSAT_CLASSES.index(max(r, key=r.get))
                           for r in predictor.predict([Image.fromarray(p) for p in patches])])
    patch_acc = (patch_pred == truth.ravel()).mean()
    with raster.open_scene(tmp_path / "real.png") as scene:
        result = mapping.map_scene(predictor, scene)
    tile_acc = (result.grid == truth).mean()
    assert abs(tile_acc - patch_acc) <= 0.01, (tile_acc, patch_acc)
    assert abs(tile_acc - recorded) <= 0.01, (tile_acc, recorded)
