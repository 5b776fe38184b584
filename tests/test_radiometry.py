"""Radiometry: the same scene stored in every usual way decodes to the same EuroSAT 8-bit RGB."""

import json

import numpy as np
import pytest

from landcover.readers import radiometry as rm


def scene_rgb8(seed: int = 0, size: int = 96) -> np.ndarray:
    """uint8 (3, H, W) with dark water (a band of low values), fields and bright roofs: a plausible scene."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(40, 200, (3, size, size)).astype(np.uint8)
    rgb[:, : size // 3] = rng.integers(3, 25, (3, size // 3, size))  # water / shadow
    rgb[:, -4:] = 255  # a few saturated roofs / clouds
    return rgb


def storages(rgb8: np.ndarray) -> dict[str, np.ndarray]:
    """The same reflectance (EuroSAT stretch: 255 = 0.275) stored in the five usual ways."""
    refl = rgb8.astype(np.float64) * rm.EUROSAT_WHITE / 255
    return {
        "uint8": rgb8,
        "x10000": np.rint(refl * 1e4).astype(np.uint16),
        "x10000+1000": np.rint(refl * 1e4 + 1000).astype(np.uint16),
        "x1000": np.rint(refl * 1e3).astype(np.uint16),
        "float": refl.astype(np.float32),
    }


@pytest.mark.parametrize("storage", ["uint8", "x10000", "x10000+1000", "x1000", "float"])
def test_every_storage_decodes_to_the_same_rgb_without_flags(storage):
    rgb8 = scene_rgb8()
    out, info = rm.to_eurosat_rgb8(storages(rgb8)[storage])
    np.testing.assert_array_equal(out, rgb8)
    expected_kind = storage.split("+")[0]
    assert info.scaling.kind == expected_kind and not info.warnings
    assert info.scaling.offset == (1000 if storage.endswith("+1000") else 0)
    json.dumps(info.to_json())  # JSON-able, as written into the map JSON
    assert expected_kind.replace("x", "x ") in info.describe() or storage in ("uint8", "float")


def test_metadata_decides_over_the_values_and_flags_over_both():
    rgb8 = scene_rgb8(1)
    dn = storages(rgb8)["x10000+1000"]
    # A desert-like scene without the offset has no value below 1000 either: metadata settles it.
    assert rm.infer_scaling(dn, metadata={"s2:processing_baseline": "02.14"}).offset == 0
    assert rm.infer_scaling(dn, metadata={"PROCESSING_BASELINE": "04.00"}).offset == 1000
    assert rm.infer_scaling(dn, metadata={"BOA_ADD_OFFSET_B4": "-1000"}).offset == 1000
    assert rm.infer_scaling(dn, metadata={"earthsearch:boa_offset_applied": True}).offset == 0
    stac = rm.infer_scaling(dn, band_scales=[1e-4] * 3, band_offsets=[-0.1] * 3)
    assert (stac.kind, stac.offset) == ("x10000", pytest.approx(1000)) and "band metadata" in stac.source
    assert rm.infer_scaling(dn, band_scales=[1.0] * 3, band_offsets=[0.0] * 3).offset == 1000  # GDAL default: no say
    given = rm.infer_scaling(dn, given=rm.scaling_from_flags("x10000", offset=0))
    assert (given.kind, given.offset) == ("x10000", 0) and "--offset 0 given" in given.source
    clipped = rm.infer_scaling(dn, given=rm.scaling_from_flags(offset=1000, clip=275))
    assert clipped.clip == pytest.approx(275) and clipped.apply(np.array([1275], np.uint16)).tolist() == [255]
    with pytest.raises(ValueError, match="--scale must be"):
        rm.scaling_from_flags("x100")
    with pytest.raises(ValueError, match="--clip must be positive"):
        rm.scaling_from_flags(clip=0)


def test_implausible_ranges_warn_instead_of_a_silent_black_image():
    dark = np.full((3, 32, 32), 3, dtype=np.uint16)
    info = rm.infer_scaling(dark)
    assert info.warnings and "scale to black" in info.warnings[0] and "--scale" in info.warnings[0]
    # 16-bit display images (0..65535) are not reflectance: value / 257.
    display = (scene_rgb8(2).astype(np.uint16) * 257)
    out, info = rm.to_eurosat_rgb8(display)
    assert info.scaling.kind == "display16"
    np.testing.assert_array_equal(out, scene_rgb8(2))
    nothing = rm.infer_scaling(np.zeros((3, 8, 8), np.uint16), nodata=0)
    assert "no valid pixel" in nothing.warnings[0]


def test_band_choice_for_common_stacks():
    assert rm.choose_rgb_bands(3)[0] == (1, 2, 3)
    assert rm.choose_rgb_bands(4)[0] == (3, 2, 1)
    assert rm.choose_rgb_bands(10)[0] == (3, 2, 1)
    assert rm.choose_rgb_bands(12)[0] == (4, 3, 2)
    assert rm.choose_rgb_bands(13, [None] * 13)[0] == (4, 3, 2)
    assert rm.choose_rgb_bands(4, ["B08", "B02", "B04", "B03"])[0] == (3, 4, 2)
    assert rm.choose_rgb_bands(4, ["nir", "blue", "red", "green"])[0] == (3, 4, 2)
    assert rm.choose_rgb_bands(5, ["B4 (665 nm)", "B3", "B2", "B8", "B11"])[0] == (1, 2, 3)
    assert rm.choose_rgb_bands(5, [None] * 5, bands=(5, 4, 1))[0] == (5, 4, 1)
    with pytest.raises(ValueError, match="--bands"):
        rm.choose_rgb_bands(5, [None] * 5)
    with pytest.raises(ValueError, match="between 1 and 5"):
        rm.choose_rgb_bands(5, bands=(6, 1, 2))


def test_multiband_stack_nodata_and_band_selection():
    rgb8 = scene_rgb8(3)
    dn = storages(rgb8)["x10000"]
    stack = np.zeros((13,) + dn.shape[1:], dtype=np.uint16) + 500
    stack[3], stack[2], stack[1] = dn  # B04, B03, B02 at bands 4, 3, 2 (EuroSAT-MS order)
    stack[:, :2, :2] = 0  # a nodata corner
    out, info = rm.to_eurosat_rgb8(stack, rm.BandMetadata(nodata=0))
    assert info.bands == (4, 3, 2) and "EuroSAT-MS" in info.band_note
    expected = rgb8.copy()
    expected[:, :2, :2] = 0
    np.testing.assert_array_equal(out, expected)
    assert rm.valid_mask(stack, 0).sum() == stack.shape[1] * stack.shape[2] - 4
    floats = storages(rgb8)["float"].copy()
    floats[:, 0, 0] = np.nan
    assert not rm.valid_mask(floats)[0, 0] and rm.infer_scaling(floats).kind == "float"


def test_percentile_stretched_quicklooks_are_mapped_back_but_black_borders_are_not():
    rgb8 = scene_rgb8(4, size=128)
    rgb8[:, : 128 // 3] += 30  # EuroSAT's blue/green/red never reach 0: path radiance
    lo, hi = np.percentile(rgb8.reshape(3, -1), [2, 98], axis=1)
    stretched = np.clip((rgb8 - lo[:, None, None]) * 255 / (hi - lo)[:, None, None], 0, 255).round().astype(np.uint8)
    out, info = rm.to_eurosat_rgb8(stretched)
    assert info.scaling.kind == "stretched8" and "percentile" in info.describe()
    assert out.reshape(3, -1).min(axis=1).tolist() == [int(v) for v in rm.EUROSAT_P2]
    # Saved as a JPEG, the clipped pixels ring off 0 and 255 by a step or two: still recognised.
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(stretched.transpose(1, 2, 0)).save(buffer, format="JPEG", quality=85)
    jpeg = np.asarray(Image.open(buffer).convert("RGB")).transpose(2, 0, 1)
    assert (jpeg == 0).mean() < (stretched == 0).mean()  # the ringing is real
    assert rm.to_eurosat_rgb8(np.ascontiguousarray(jpeg))[1].scaling.kind == "stretched8"
    # An EuroSAT-stretched scene with a black border (no nodata value) stays as it is.
    bordered = rgb8.copy()
    bordered[:, :, :10] = 0
    out, info = rm.to_eurosat_rgb8(bordered)
    assert info.scaling.kind == "uint8"
    np.testing.assert_array_equal(out, bordered)
