"""Scene adaptation (AdaBN): BatchNorm statistics re-estimated on a generated scene's tiles, blended with the
trained ones, in a copy of the predictor; the shipped ONNX graph runs the adapted statistics too."""

import numpy as np
import pytest
import torch
from affine import Affine

from datagen import class_patch
from landcover.core.labels import PATCH_SIZE_PX
from landcover.data.transforms import preprocess
from landcover.inference.predictor import Predictor, load_predictor
from landcover.readers import raster
from landcover.scenes import adaptation, mapping, region

P = PATCH_SIZE_PX
TEN_M = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5200000.0)


def write_scene(path, classes: np.ndarray, gain: float = 1.0, seed: int = 0):
    """An 8-bit RGB GeoTIFF of class patches, its brightness scaled by ``gain`` (a scene unlike the training data)."""
    import rasterio

    rng = np.random.default_rng(seed)
    rgb = np.concatenate([np.concatenate([class_patch(int(c), rng) for c in row], axis=1) for row in classes])
    rgb = np.clip(rgb.astype(np.float64) * gain, 0, 255).astype(np.uint8).transpose(2, 0, 1)
    with rasterio.open(path, "w", driver="GTiff", height=rgb.shape[1], width=rgb.shape[2], count=3, dtype="uint8",
                       crs="EPSG:32633", transform=TEN_M) as dst:
        dst.write(rgb)
    return path


def first_norm(model: torch.nn.Module) -> tuple[str, torch.nn.BatchNorm2d]:
    return next((n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_adabn_blends_the_scenes_statistics_into_a_copy(tiny_model_dir, tmp_path):
    predictor = Predictor.load(str(tiny_model_dir), backend="torch")
    before = {k: v.clone() for k, v in predictor.model.state_dict().items()}
    path = write_scene(tmp_path / "dark.tif", np.arange(10).reshape(2, 5), gain=0.6)
    name, norm = first_norm(predictor.model)
    # The first batch norm's input over every tile the adaptation reads, captured independently by a hook.
    seen = []
    hook = norm.register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    with raster.open_scene(path) as scene, torch.inference_mode():
        tiles = np.concatenate(list(adaptation.scene_tiles(scene)))
        predictor.model(preprocess(torch.from_numpy(tiles), predictor.input_size, predictor.mean, predictor.std))
    hook.remove()
    assert len(tiles) == 3 * 9  # every half-overlapping tile of a 128 x 320 px scene (none masked)
    scene_mean = torch.cat(seen).mean(dim=(0, 2, 3))
    with raster.open_scene(path) as scene:
        full = adaptation.adapt_to_scene(predictor, scene, blend=1.0)
        half = adaptation.adapt_to_scene(predictor, scene, blend=0.5)
        same = adaptation.adapt_to_scene(predictor, scene, blend=0.0)
    adapted = dict(full.model.named_modules())[name]
    torch.testing.assert_close(adapted.running_mean, scene_mean, rtol=1e-4, atol=1e-5)
    trained = before[f"{name}.running_mean"]
    torch.testing.assert_close(dict(half.model.named_modules())[name].running_mean, (trained + scene_mean) / 2,
                               rtol=1e-4, atol=1e-5)
    assert not torch.allclose(trained, scene_mean)  # the darker scene does shift the statistics
    # The shared predictor is untouched, and a blend of 0 classifies exactly as it does.
    for key, value in predictor.model.state_dict().items():
        assert torch.equal(value, before[key]), key
    batch = torch.from_numpy(tiles[:8])
    torch.testing.assert_close(same.predict_tensor(batch), predictor.predict_tensor(batch))
    assert not torch.allclose(full.predict_tensor(batch), predictor.predict_tensor(batch))
    with pytest.raises(ValueError, match="between 0 and 1"):
        adaptation.adapt_to_scene(predictor, scene, blend=1.5)


def test_map_with_adapt_bn_runs_the_shipped_onnx_graph_with_the_adapted_statistics(shipped, tmp_path):
    predictor = load_predictor(str(shipped), backend="onnx")
    assert predictor.engine.session.source == "shipped"
    path = write_scene(tmp_path / "scene.tif", np.array([[1, 3, 5], [7, 9, 0]]), gain=0.7)
    with raster.open_scene(path) as scene:
        adapted = adaptation.adapt_to_scene(predictor, scene)
        tiles = torch.from_numpy(np.concatenate(list(adaptation.scene_tiles(scene))))
    assert adapted.backend == "onnx" and adapted.engine.session.source == "adapted"
    torch_twin = Predictor(adapted.loaded, load_predictor(str(shipped), backend="torch").engine, tta=False)
    torch_twin.engine.model = adapted.model  # the adapted torch weights, run eagerly
    torch.testing.assert_close(adapted.predict_tensor(tiles, tta=False), torch_twin.predict_tensor(tiles, tta=False),
                               rtol=1e-4, atol=1e-4)
    with raster.open_scene(path) as scene:
        plain = mapping.map_scene(predictor, scene, stride=32)
        bn = mapping.map_scene(predictor, scene, stride=32, adapt="bn")
    assert plain.to_json()["adaptation"] is None
    assert bn.to_json()["adaptation"].startswith("BatchNorm statistics re-estimated on the scene's tiles, blended 0.4")
    import rasterio

    from landcover.scenes import export

    with rasterio.open(export.write_class_geotiff(bn, tmp_path / "bn.tif")) as ds:
        assert ds.tags()["adaptation"] == bn.adaptation
    with rasterio.open(export.write_class_geotiff(plain, tmp_path / "plain.tif")) as ds:
        assert "adaptation" not in ds.tags()
    assert bn.probs.shape == plain.probs.shape and not np.allclose(bn.probs, plain.probs)
    assert predictor.engine.session.source == "shipped"  # the caller's predictor still runs its own graph


def test_adapt_is_checked_and_not_offered_for_region_mosaics(tmp_path):
    with pytest.raises(ValueError, match="--adapt must be one of none, bn"):
        mapping.MapOptions(adapt="adabn")
    with pytest.raises(ValueError, match="Region maps do not adapt the CNN per scene"):
        region.RegionOptions(tmp_path, mapping.MapOptions(adapt="bn"))


def test_a_scene_without_an_unmasked_tile_cannot_be_adapted(tiny_model_dir, tmp_path):
    import rasterio

    with rasterio.open(tmp_path / "empty.tif", "w", driver="GTiff", height=64, width=64, count=3, dtype="uint16",
                       crs="EPSG:32633", transform=TEN_M, nodata=0) as dst:
        dst.write(np.zeros((3, 64, 64), dtype=np.uint16))
    predictor = Predictor.load(str(tiny_model_dir), backend="torch")
    with raster.open_scene(tmp_path / "empty.tif") as scene:
        with pytest.raises(ValueError, match="found no unmasked 64 px tile"):
            adaptation.adapt_to_scene(predictor, scene)


def test_statistics_tiles_include_those_on_block_boundaries(tmp_path):
    """Every unmasked tile of a scene taller than one read block is used, the rows where blocks meet included."""
    rows = (mapping.BLOCK_PX + 2 * P) // P  # tiles at stride 64; at stride 32 the scene spans two blocks
    path = write_scene(tmp_path / "tall.tif", np.arange(rows).reshape(rows, 1) % 10)
    with raster.open_scene(path) as scene:
        expected = np.prod(mapping.tile_grid(scene.height, scene.width, P, adaptation.BN_STRIDE))
        tiles = np.concatenate(list(adaptation.scene_tiles(scene)))
        assert len(tiles) == expected
        first_rgb = scene.read(0, 0, P, P)[0]
    np.testing.assert_array_equal(tiles[0], first_rgb)


def test_statistics_leave_snow_out(tmp_path):
    """Snow is masked in the maps (no EuroSAT class): the statistics pass leaves its tiles out too. A 6-band scene of
    a snow tile, a lake and bare sand, at stride 32: of the 5 tiles, the 2 touching the snow are not used."""
    import rasterio

    values = ((0.80, 0.80, 0.78, 0.70, 0.05, 0.04), (0.06, 0.05, 0.03, 0.01, 0.005, 0.004),
              (0.20, 0.30, 0.40, 0.45, 0.55, 0.50))  # B02, B03, B04, B08, B11, B12 per tile
    stack = np.concatenate([np.broadcast_to(np.array(v)[:, None, None], (6, P, P)) for v in values], axis=2)
    path = tmp_path / "snow.tif"
    with rasterio.open(path, "w", driver="GTiff", height=P, width=3 * P, count=6, dtype="uint16", crs="EPSG:32633",
                       transform=TEN_M) as dst:
        dst.write((stack * 10000).round().astype(np.uint16))
        for i, name in enumerate(("B02", "B03", "B04", "B08", "B11", "B12"), start=1):
            dst.set_band_description(i, name)
    with raster.open_scene(path) as scene:
        assert np.prod(mapping.tile_grid(scene.height, scene.width, P, adaptation.BN_STRIDE)) == 5
        tiles = np.concatenate(list(adaptation.scene_tiles(scene)))
        np.testing.assert_array_equal(tiles[0], scene.read(0, 2 * adaptation.BN_STRIDE, P, P)[0])
    assert len(tiles) == 3
