"""A real browser against the launched app: headless Chromium driven by Playwright (the system browser, no
download; skips when none is installed). Saves screenshots to ``test-artifacts/``."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app_server import running_app
from datagen import class_patch

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
EXAMPLES_JS = "() => document.querySelectorAll('#examples .thumbnail-item').length"  # one thumbnail per example


def _chromium() -> Path | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    return Path(found) if found else None


@pytest.fixture(scope="module")
def browser():
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no chromium on PATH (apt-get install chromium; .ci/run installs it under CI)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def ten_examples_model(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model folder with ten example patches in examples/, as a released model folder has."""
    folder = tmp_path_factory.mktemp("examples-model") / "model"
    shutil.copytree(tiny_model_dir, folder, ignore=shutil.ignore_patterns("checkpoints", "examples"))
    (folder / "examples").mkdir()
    for c in range(10):
        Image.fromarray(class_patch(c, np.random.default_rng(c))).save(folder / "examples" / f"class-{c}.jpg")
    return folder


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url + "/", wait_until="domcontentloaded")
    page.wait_for_selector("#patch-input", timeout=120_000)
    return page


def test_upload_in_browser_shows_label_examples_and_screenshot(browser, ten_examples_model, tmp_path):
    from landcover.inference.predictor import load_predictor
    from landcover.app.blocks import build_app

    predictor = load_predictor(str(ten_examples_model))
    patch = tmp_path / "forest-like.png"
    Image.fromarray(class_patch(1, np.random.default_rng(11))).save(patch)
    expected = next(iter(predictor.predict([Image.open(patch).convert("RGB")])[0]))
    with running_app(build_app(predictor)) as url:
        page = _open(browser, url)
        page.wait_for_function(f"() => ({EXAMPLES_JS})() >= 10", timeout=60_000)
        assert page.evaluate(EXAMPLES_JS) == 10
        page.locator("#patch-input input[type=file]").set_input_files(str(patch))
        # The upload triggers /predict; wait until the label component shows the predicted class.
        page.wait_for_function(
            "label => { const el = document.querySelector('#label-output');"
            " return !!el && el.innerText.includes(label); }",
            arg=expected, timeout=180_000)
        assert expected in page.locator("#label-output").inner_text()
        # The examples are image thumbnails named by class; a click puts the patch in the input and classifies it.
        thumb = page.locator("#examples .thumbnail-item").nth(3)
        assert "class-3" in thumb.inner_text()
        example = Image.open(ten_examples_model / "examples" / "class-3.jpg").convert("RGB")
        example_label = next(iter(predictor.predict([example])[0]))
        thumb.click()
        page.wait_for_function(
            "label => { const el = document.querySelector('#label-output');"
            " return !!el && el.innerText.includes(label); }",
            arg=example_label, timeout=180_000)
        rendering = page.evaluate("() => getComputedStyle(document.querySelector('#patch-input img')).imageRendering")
        assert rendering == "pixelated"  # a 64 px patch shown enlarged keeps crisp pixels
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "app-classify.png"
        page.screenshot(path=str(shot), full_page=True)
        page.close()
    assert shot.stat().st_size > 10_000


def _embedded_examples() -> list[Path]:
    from landcover.models.hub import DEFAULT_MODEL_DIR
    return sorted((DEFAULT_MODEL_DIR / "examples").glob("*.jpg"))


def test_app_without_flags_shows_the_embedded_models_ten_examples(browser):
    """`python app.py` with no flags: the embedded model and the ten patches of its examples/."""
    from landcover.models.hub import DEFAULT_MODEL_DIR
    from landcover.inference.predictor import load_predictor
    from landcover.app.blocks import build_app

    shipped = _embedded_examples()
    assert len(shipped) == 10, f"the embedded model should ship 10 example JPEGs in examples/; found {len(shipped)}"
    with running_app(build_app(load_predictor())) as url:
        page = _open(browser, url)
        page.wait_for_function(f"() => ({EXAMPLES_JS})() >= 10", timeout=60_000)
        assert page.evaluate(EXAMPLES_JS) == 10
        page.locator("button[role=tab]", has_text="Model").click()
        panel = page.locator("#model-panel").inner_text()
        assert "efficientnet_lite0" in panel and str(DEFAULT_MODEL_DIR) not in panel
        page.close()


def test_map_tab_in_browser_maps_an_uploaded_scene_adapted(browser, tiny_model_dir, tmp_path):
    """The "Map a scene" tab: upload a scene, tick the adaptation, map it; the map and a summary that says it
    was adapted appear."""
    from landcover.app.blocks import build_app
    from landcover.inference.predictor import load_predictor
    from landcover.scenes.adaptation import describe

    rng = np.random.default_rng(5)
    rows = [np.concatenate([class_patch(int(c), rng) for c in row], axis=1) for row in ((0, 1, 2), (3, 4, 5))]
    scene = tmp_path / "scene.png"
    Image.fromarray(np.concatenate(rows)).save(scene)
    with running_app(build_app(load_predictor(str(tiny_model_dir)))) as url:
        page = _open(browser, url)
        page.locator("button[role=tab]", has_text="Map a scene").click()
        page.locator("#scene-input input[type=file]").set_input_files(str(scene))
        page.locator("#scene-adapt input[type=checkbox]").check()
        page.locator("#map-button").click()
        page.wait_for_function("() => (document.querySelector('#map-summary')?.innerText || '').includes('Adapted')",
                               timeout=180_000)
        summary = page.locator("#map-summary").inner_text()
        assert "scene.png" in summary and describe() in summary and "2×3 cells" in summary
        assert page.locator("#map-image img").count() == 1
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "app-map-scene.png"), full_page=True)
        page.close()
