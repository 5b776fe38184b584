"""One decode path: uploads, ``predict``, the Predictor and data loading turn the same file into the same pixels."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from landcover.data.eurosat import _decode_one
from landcover.readers.imageio import UploadError, decode_rgb8, open_image_file, open_upload
from landcover.inference.predictor import pil_to_tensor


def _png(image: Image.Image, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **params)
    return buf.getvalue()


def _every_entry_point(data: bytes, tmp_path) -> list[np.ndarray]:
    """The pixels each entry point decodes from ``data``: bytes, upload, file, PIL (Predictor), data loading."""
    path = tmp_path / "image.bin"
    path.write_bytes(data)
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        via_pil = pil_to_tensor(im).permute(1, 2, 0).numpy()
    return [decode_rgb8(data), np.asarray(open_upload(data)), np.asarray(open_image_file(path)), via_pil,
            _decode_one({"bytes": data}, None).permute(1, 2, 0).numpy()]


def _assert_all(data: bytes, tmp_path, expected: np.ndarray) -> None:
    for got in _every_entry_point(data, tmp_path):
        assert got.dtype == np.uint8 and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)


def test_16_bit_greyscale_is_rounded_not_truncated(tmp_path):
    values = np.array([[0, 257 * 100 + 128, 65535, 1000]], dtype=np.uint16)  # 100.498 -> 100, 3.89 -> 4
    expected_grey = np.rint(values / 65535 * 255).astype(np.uint8)
    assert expected_grey.tolist() == [[0, 100, 255, 4]]  # truncation would give 3 for 1000
    data = _png(Image.fromarray(values))  # uint16: mode I;16
    _assert_all(data, tmp_path, np.repeat(expected_grey[..., None], 3, axis=2))


def test_transparency_is_composited_onto_black_everywhere(tmp_path):
    rgb = np.full((2, 2, 3), 200, dtype=np.uint8)
    alpha = np.array([[255, 128], [0, 64]], dtype=np.uint8)
    data = _png(Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA"))
    expected = ((rgb.astype(np.uint16) * alpha[..., None] + 127) // 255).astype(np.uint8)
    assert expected[0, 1, 0] == 100 and expected[1, 0, 0] == 0
    _assert_all(data, tmp_path, expected)

    palette = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8), mode="P")
    palette.putpalette([10, 20, 30, 250, 240, 230] + [0] * 762)
    data = _png(palette, transparency=0)  # index 0 is transparent
    _assert_all(data, tmp_path, np.array([[[0, 0, 0], [250, 240, 230]], [[250, 240, 230], [0, 0, 0]]], np.uint8))


def test_exif_orientation_is_applied_once(tmp_path):
    stored = np.zeros((4, 6, 3), dtype=np.uint8)
    stored[0, :, 0] = 255  # a red top row
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    data = _png(Image.fromarray(stored), exif=exif.tobytes())
    upright = np.rot90(stored, k=-1)  # 6 x 4, the red row now the right column
    _assert_all(data, tmp_path, upright)


def test_float_pixels_in_unit_range_are_scaled(tmp_path):
    image = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F")
    out = decode_rgb8(image)
    assert out[0, :, 0].tolist() == [0, 128, 255]  # 127.5 rounds to 128 (numpy: half to even -> 128)


def test_bad_inputs_are_upload_errors_with_the_expected_format(tmp_path):
    (tmp_path / "notes.png").write_text("hello, not an image")
    with pytest.raises(UploadError, match="not a readable image.*expected one of PNG"):
        decode_rgb8(tmp_path / "notes.png")
    with pytest.raises(UploadError, match="is a folder; expected an image file"):
        open_image_file(tmp_path)
    assert _decode_one({"bytes": b"not an image"}, None) is None  # data loading skips it


def test_data_loading_decodes_like_the_predictor(eurosat_folder):
    path = next(eurosat_folder.rglob("*.jpg"))
    with Image.open(path) as im:
        expected = pil_to_tensor(im)
    assert torch.equal(_decode_one({"path": str(path), "bytes": None}, None), expected)


def _geotiff(array: np.ndarray, descriptions=None) -> bytes:
    """An in-memory GeoTIFF of ``array`` (bands, H, W), optionally with band descriptions."""
    from rasterio.io import MemoryFile

    with MemoryFile() as memfile:
        with memfile.open(driver="GTiff", width=array.shape[2], height=array.shape[1], count=array.shape[0],
                          dtype=array.dtype) as ds:
            ds.write(array)
            for i, text in enumerate(descriptions or [], start=1):
                ds.set_band_description(i, text)
        return memfile.read()


def _sentinel2_patch(bands: int, seed: int = 0) -> np.ndarray:
    """Reflectance x 10000 digital numbers with a land-like spread (dark water to bright fields)."""
    rng = np.random.default_rng(seed)
    return rng.integers(200, 3500, size=(bands, 64, 64)).astype(np.uint16)


def test_multiband_16_bit_geotiffs_decode_like_map(tmp_path):
    """EuroSAT-MS's 13-band stacks (no descriptions) and described 3-band L2A patches take map's radiometry."""
    from landcover.readers.radiometry import to_eurosat_rgb8

    stack = _sentinel2_patch(13)
    expected = to_eurosat_rgb8(stack)[0].transpose(1, 2, 0)  # what map does with a 13-band scene
    assert expected.std() > 10  # a real picture, not a black or white square
    data = _geotiff(stack)
    for got in (decode_rgb8(data), np.asarray(open_upload(data))):
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(decode_rgb8(data), to_eurosat_rgb8(stack[[3, 2, 1]], bands=(1, 2, 3))[0]
                                  .transpose(1, 2, 0))  # B04/B03/B02 of the Sentinel-2 order

    bgr = _sentinel2_patch(3, seed=1)
    described = _geotiff(bgr, descriptions=["B02", "B03", "B04"])  # stored blue first
    np.testing.assert_array_equal(decode_rgb8(described), to_eurosat_rgb8(bgr[::-1].copy(), bands=(1, 2, 3))[0]
                                  .transpose(1, 2, 0))

    with pytest.raises(UploadError, match="--bands"):  # 5 undescribed bands: no rule says which are RGB
        decode_rgb8(_geotiff(_sentinel2_patch(5)))
