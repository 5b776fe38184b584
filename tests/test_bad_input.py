"""Bad and odd uploads over real HTTP against a launched app: each gets a clear 4xx JSON ``error`` (REST)
or ``gr.Error`` (Gradio API), valid odd formats are classified, and the next valid request still works."""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

import badimages
from app_server import running_app

LIMIT = 2 * 2**20  # a small upload limit for this app instance, so the over-size case stays cheap


@pytest.fixture(scope="module")
def predictor(tiny_model_dir):
    from landcover.inference.predictor import Predictor
    return Predictor.load(str(tiny_model_dir))


@pytest.fixture(scope="module")
def app_url(predictor):
    from landcover.app.blocks import build_app
    with running_app(build_app(predictor, max_file_size=LIMIT)) as url:
        yield url


@pytest.fixture(scope="module")
def valid_png() -> bytes:
    import io
    buf = io.BytesIO()
    badimages.patch(3).save(buf, format="PNG")
    return buf.getvalue()


def _post(url: str, data: bytes, name: str = "patch.jpg") -> httpx.Response:
    return httpx.post(url + "/classify", files={"file": (name, data, "application/octet-stream")}, timeout=60)


def _assert_still_serving(url: str, valid_png: bytes) -> None:
    r = _post(url, valid_png, "ok.png")
    assert r.status_code == 200, r.text
    assert sum(r.json()["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


REJECTED = {  # case -> (expected status, words the message must contain)
    "text_as_jpg": (415, "not a readable image"),
    "truncated_jpeg": (400, "truncated or corrupt"),
    "empty": (400, "empty (0 bytes)"),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_rest_rejects_broken_files_clearly(app_url, valid_png, case):
    status, words = REJECTED[case]
    r = _post(app_url, getattr(badimages, case)())
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    _assert_still_serving(app_url, valid_png)


def test_rest_refuses_decompression_bomb_before_decoding(app_url, valid_png):
    bomb = badimages.decompression_bomb(30000)  # 900 megapixels, ~110 KB
    assert len(bomb) < 200_000
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; server runs in this process
    start = time.perf_counter()
    r = _post(app_url, bomb, "bomb.png")
    elapsed = time.perf_counter() - start
    assert r.status_code == 413, r.text
    assert "refused before decoding" in r.json()["error"] and "900000000" in r.json()["error"]
    # Decoding would need >= 900 MB (1 byte per pixel); refusing from the header needs nothing.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 200 * 1024
    assert elapsed < 20
    _assert_still_serving(app_url, valid_png)


def test_rest_over_size_upload_is_413(app_url, valid_png):
    r = _post(app_url, badimages.oversize(LIMIT + 256 * 1024), "huge.png")
    assert r.status_code == 413
    assert "limit" in r.json()["error"]
    _assert_still_serving(app_url, valid_png)


VALID = ["one_pixel", "rgba", "grayscale", "palette", "png16", "tiff16", "multipage_tiff", "animated_gif"]


@pytest.mark.parametrize("case", VALID)
def test_rest_classifies_valid_odd_formats(app_url, predictor, valid_png, case):
    r = _post(app_url, getattr(badimages, case)(), f"{case}.img")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] in predictor.labels
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    _assert_still_serving(app_url, valid_png)


def test_rest_applies_exif_rotation(app_url, predictor):
    data, upright = badimages.exif_rotated_jpeg()
    r = _post(app_url, data, "rotated.jpg")
    assert r.status_code == 200, r.text
    expected = predictor.predict([upright.convert("RGB")])[0]
    got = r.json()["probabilities"]
    for label, p in expected.items():
        assert got[label] == pytest.approx(p, abs=2e-3)


def test_rest_downscales_large_valid_photo(app_url, valid_png):
    photo = badimages.large_photo(6000, 4000)  # 24 MP, well under the pixel limit
    assert len(photo) < LIMIT
    r = _post(app_url, photo, "photo.jpg")
    assert r.status_code == 200, r.text
    assert sum(r.json()["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    _assert_still_serving(app_url, valid_png)


def test_gradio_api_bad_inputs_raise_clear_errors_and_keep_serving(app_url, valid_png, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(app_url + "/", verbose=False, httpx_kwargs={"timeout": 300}, download_files=False)
    cases = {"notes.jpg": (badimages.text_as_jpg(), "not a readable image"),
             "cut.jpg": (badimages.truncated_jpeg(), "truncated or corrupt"),
             "bomb.png": (badimages.decompression_bomb(30000), "refused before decoding")}
    for name, (data, words) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(AppError, match=words):
            client.predict(handle_file(str(path)), api_name="/predict")
    ok = tmp_path / "ok.png"
    ok.write_bytes(valid_png)
    assert client.predict(handle_file(str(ok)), api_name="/predict")["label"]


def test_bad_uploads_in_flight_with_good_ones_fail_alone(app_url, valid_png, tmp_path):
    """Concurrent Gradio and REST requests share the batcher's passes; a corrupt upload among them gets its own
    error and every valid one its probabilities (a batched Gradio function would send one error to all)."""
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(app_url + "/", verbose=False, httpx_kwargs={"timeout": 300}, download_files=False)
    good, bad = tmp_path / "ok.png", tmp_path / "cut.jpg"
    good.write_bytes(valid_png)
    bad.write_bytes(badimages.truncated_jpeg())
    files = [good, good, bad, good, good, good, bad, good]
    jobs = [client.submit(handle_file(str(f)), api_name="/predict") for f in files]
    with ThreadPoolExecutor(8) as pool:
        rest = list(pool.map(lambda data: _post(app_url, data), [valid_png, badimages.truncated_jpeg()] * 4))
    for f, job in zip(files, jobs):
        if f == bad:
            with pytest.raises(AppError, match="truncated or corrupt"):
                job.result()
        else:
            assert job.result()["label"]
    assert [r.status_code for r in rest] == [200, 400] * 4
    assert all(sum(r.json()["probabilities"].values()) == pytest.approx(1.0, abs=1e-4) for r in rest[::2])


def test_gradio_upload_limit_and_temp_dir_only(app_url, tmp_path):
    """Gradio's own upload route: 413 over the limit; a hostile file name cannot escape its temp dir."""
    big = httpx.post(app_url + "/gradio_api/upload", files={"files": ("big.png", badimages.oversize(LIMIT + 1024))})
    assert big.status_code == 413
    escape = Path(tempfile.gettempdir()) / "landcover-escape-test.png"
    escape.unlink(missing_ok=True)
    hostile = "../" * 12 + str(escape).lstrip("/")
    r = httpx.post(app_url + "/gradio_api/upload", files={"files": (hostile, badimages.one_pixel())})
    assert r.status_code == 200, r.text
    (stored,) = r.json()
    from gradio.utils import get_upload_folder
    assert Path(stored).resolve().is_relative_to(Path(get_upload_folder()).resolve()), stored
    assert not escape.exists()
    with Image.open(stored) as im:
        assert im.size == (1, 1)


def test_rest_over_size_upload_without_content_length_is_cut_off(app_url, valid_png):
    """A chunked body (no Content-Length) is refused with 413 once it crosses the limit, not read to the end."""
    def body():
        head = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"huge.png\"\r\n"
                b"Content-Type: application/octet-stream\r\n\r\n")
        yield head
        for _ in range(64):  # 64 x 256 KiB = 16 MiB offered against a 2 MiB limit
            yield b"\0" * (256 * 1024)
        yield b"\r\n--b--\r\n"

    try:
        r = httpx.post(app_url + "/classify", content=body(), timeout=60,
                       headers={"Content-Type": "multipart/form-data; boundary=b"})
    except httpx.TransportError:  # the server may close the connection before the client finishes sending
        pass
    else:
        assert r.status_code == 413, r.text
        assert "limit" in r.json()["error"]
    _assert_still_serving(app_url, valid_png)


@pytest.mark.parametrize("bands", [3, 13])
def test_rest_classifies_16_bit_sentinel2_geotiff_patches(app_url, predictor, bands):
    """16-bit Sentinel-2 patches (3-band L2A with band names, EuroSAT-MS 13-band stacks) read like `map` reads them."""
    import numpy as np

    from landcover.readers.imageio import decode_rgb8
    from test_imageio import _geotiff, _sentinel2_patch

    data = _geotiff(_sentinel2_patch(bands, seed=bands), ["B04", "B03", "B02"] if bands == 3 else None)
    r = _post(app_url, data, "patch.tif")
    assert r.status_code == 200, r.text
    rgb = decode_rgb8(data)
    expected = predictor.predict([Image.fromarray(np.ascontiguousarray(rgb))])[0]
    got = r.json()["probabilities"]
    for label, p in expected.items():
        assert got[label] == pytest.approx(p, abs=1e-5)
