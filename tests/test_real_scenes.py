"""The embedded model's map of a real Sentinel-2 scene, scored against its independent reference as
``bench/real_scenes.py`` scores it: the documented figures must hold.

The scene (``brandenburg-2017-02-16-l1c``: L1C band files and OpenStreetMap polygons) is read from
``LANDCOVER_REAL_SCENES_DIR``, else ``../shared/real-scenes`` beside the checkout; the test skips when neither has it.
"""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCENES = Path(os.environ.get("LANDCOVER_REAL_SCENES_DIR", ROOT.parent / "shared" / "real-scenes"))
BRANDENBURG = SCENES / "brandenburg-2017-02-16-l1c"


@pytest.fixture(scope="module")
def brandenburg() -> Path:
    if not (BRANDENBURG / "IMG_DATA").is_dir():
        pytest.skip(f"no real scene at {BRANDENBURG} (set LANDCOVER_REAL_SCENES_DIR)")
    return BRANDENBURG


def test_the_development_scene_keeps_its_documented_figures(brandenburg):
    """Every band fused, stride 16, 728 cells (docs/scenes.md: agreement 0.867, balanced 0.710, every water cell
    right, 53 of 81 forest cells). Floors at the second decimal, so that a float difference between ONNX Runtime
    builds cannot fail it while a real regression of a cell class or two does."""
    from landcover.inference.predictor import load_predictor
    from landcover.readers.raster import open_scene
    from landcover.scenes.mapping import MapOptions, map_scene
    from landcover.scenes.reference import CROSSWALKS, GridSpec, rasterize_reference, score_map

    predictor = load_predictor(None, task="scenes")
    with open_scene(str(brandenburg / "IMG_DATA")) as scene:
        grid = GridSpec.of_scene(scene)
        reference = rasterize_reference(brandenburg / "osm_landuse_water_1-50ha.gpkg", grid, CROSSWALKS["osm"])
        result = map_scene(predictor, scene, MapOptions(stride=16, progress=False))
    _, _, score = score_map(result, reference)
    assert score.cells == 728
    assert score.agreement >= 0.86 and score.balanced >= 0.70, score.to_json()
    assert score.recall["Water"] == 1.0 and score.recall["Forest"] >= 0.64, score.recall
    assert "leaf-off forest from NDVI and SWIR2" in result.evidence_note and result.adaptation is None
