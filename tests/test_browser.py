"""A real browser against the launched app: headless Debian Chromium driven by Playwright (no browser
download; skips when ``/usr/bin/chromium`` is absent). Saves a screenshot to ``test-artifacts/``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app_server import running_app
from datagen import class_patch

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_upload_in_browser_shows_label_and_screenshot(browser, tiny_model_dir, tmp_path):
    from landcover.predict import Predictor
    from landcover.ui import build_app

    predictor = Predictor.load(str(tiny_model_dir))
    patch = tmp_path / "forest-like.png"
    Image.fromarray(class_patch(1, np.random.default_rng(11))).save(patch)
    expected = next(iter(predictor.predict([Image.open(patch).convert("RGB")])[0]))
    with running_app(build_app(predictor)) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url + "/", wait_until="domcontentloaded")
        page.locator("#patch-input input[type=file]").set_input_files(str(patch))
        # The upload triggers /predict; wait until the label component shows the predicted class.
        page.wait_for_function(
            "label => { const el = document.querySelector('#label-output');"
            " return !!el && el.innerText.includes(label); }",
            arg=expected, timeout=180_000)
        assert expected in page.locator("#label-output").inner_text()
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "app-classify.png"
        page.screenshot(path=str(shot), full_page=True)
        page.close()
    assert shot.stat().st_size > 10_000
