"""Predictor: probabilities, resizing, memory formats and the micro-batcher, with real threads."""

import json
import shutil
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from landcover.inference.batching import MicroBatcher
from landcover.inference.predictor import Predictor


def _images(n: int, size: int = 32, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _as_tensor(images) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1) for im in images])


@pytest.fixture(scope="module")
def predictor(tiny_model_dir) -> Predictor:
    return Predictor.load(str(tiny_model_dir))


def test_predict_returns_sorted_probabilities_matching_predict_tensor(predictor):
    images = _images(5)
    results = predictor.predict(images)
    probs = predictor.predict_tensor(_as_tensor(images))
    assert len(results) == 5
    for row, result in zip(probs, results):
        values = list(result.values())  # highest first (the order of classes tied at ~0 is arbitrary)
        assert values == sorted(values, reverse=True) and list(result)[0] == predictor.labels[int(row.argmax())]
        assert sum(result.values()) == pytest.approx(1.0, abs=1e-5)
        assert [result[name] for name in predictor.labels] == pytest.approx(row.tolist(), abs=1e-6)
    top2 = predictor.predict(images[:1], top_k=2)[0]
    assert list(top2) == list(results[0])[:2]
    assert predictor.predict([]) == []


def test_predict_resizes_patches_of_other_sizes(predictor):
    big, native = _images(1, size=96)[0], _images(1, size=predictor.input_size, seed=1)[0]
    results = predictor.predict([big, native])
    assert len(results) == 2 and all(len(r) == len(predictor.labels) for r in results)
    # Same image alone or next to another: float32 kernels may sum in another order per batch (seen: 2.9e-6).
    assert results[1] == pytest.approx(predictor.predict([native])[0], abs=1e-5)


def test_predict_tensor_batches_and_rejects_bad_shapes(predictor):
    batch = _as_tensor(_images(7))
    whole = predictor.predict_tensor(batch)
    assert torch.allclose(predictor.predict_tensor(batch, batch_size=2), whole, atol=1e-6)
    assert predictor.predict_tensor(batch[:0]).shape == (0, len(predictor.labels))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        predictor.predict_tensor(batch[0])


def test_channels_last_gives_the_same_probabilities(tiny_model_dir, predictor):
    cl = Predictor.load(str(tiny_model_dir), channels_last=True)
    assert cl.memory_format == torch.channels_last and not predictor.channels_last
    batch = _as_tensor(_images(4))
    assert torch.allclose(cl.predict_tensor(batch), predictor.predict_tensor(batch), atol=1e-5)


def _symmetries(batch: torch.Tensor, codes) -> list[torch.Tensor]:
    """An independent numbering: rot90 by ``g % 4``, then a horizontal flip when ``g >= 4``. Its sets (0, 4),
    (0, 2, 4, 6) and 0..7 are the same subgroups as those codes in landcover.data.transforms' bit numbering."""
    views = [torch.rot90(batch, g % 4, dims=(-2, -1)) for g in codes]
    return [(torch.flip(v, dims=(-1,)) if g >= 4 else v).contiguous() for g, v in zip(codes, views)]


@pytest.mark.parametrize("mode,codes", [("d4", range(8)), ("flips", (0, 2, 4, 6)), ("hflip", (0, 4))])
def test_test_time_augmentation_comes_from_config_and_can_be_overridden(tiny_model_dir, predictor, tmp_path,
                                                                        mode, codes):
    folder = tmp_path / "tta_model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    # One temperature for every mode, so a mode's mean probability equals the mean over its single passes
    # (per-mode temperatures are tested in test_calibration.py).
    (folder / "config.json").write_text(json.dumps({**config, "test_time_augmentation": mode, "temperature": 1.0}))
    tta = Predictor.load(str(folder))
    base = Predictor.load(str(folder), tta=False)
    assert tta.tta == mode and predictor.tta is None and base.tta is None
    assert tta.info["test_time_augmentation"] == mode
    batch = _as_tensor(_images(3, size=predictor.input_size))
    expected = torch.stack([base.predict_tensor(v) for v in _symmetries(batch, codes)]).mean(0)
    torch.testing.assert_close(tta.predict_tensor(batch), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(tta.predict_tensor(batch, tta=False), base.predict_tensor(batch), rtol=0, atol=0)
    torch.testing.assert_close(base.predict_tensor(batch, tta=mode), expected, rtol=0, atol=1e-5)
    full = torch.stack([base.predict_tensor(v) for v in _symmetries(batch, range(8))]).mean(0)
    modeless = {k: v for k, v in config.items() if k != "test_time_augmentation"}
    (folder / "config.json").write_text(json.dumps({**modeless, "temperature": 1.0}))
    torch.testing.assert_close(Predictor.load(str(folder)).predict_tensor(batch, tta=True), full, rtol=0,
                               atol=1e-5)  # tta=True without a mode in config.json: d4
    with pytest.raises(ValueError, match="hflip"):
        predictor.predict_tensor(batch, tta="rot45")


def test_unknown_backend_is_a_value_error(tiny_model_dir):
    with pytest.raises(ValueError, match="Unknown backend 'tensorrt'"):
        Predictor.load(str(tiny_model_dir), backend="tensorrt")
    with pytest.raises(ValueError, match="onnx backend runs on the CPU"):
        Predictor.load(str(tiny_model_dir), backend="onnx", device="cuda")
    with pytest.raises(ValueError, match="Unknown task"):
        Predictor.load(str(tiny_model_dir), task="video")


def _run_in_threads(fn, n: int) -> list:
    """Call ``fn(i)`` from ``n`` threads released together by a barrier; return results in order."""
    barrier = threading.Barrier(n)
    results, errors = [None] * n, []

    def worker(i):
        barrier.wait()
        try:
            results[i] = fn(i)
        except BaseException as err:  # surfaced by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def test_batcher_merges_concurrent_predict_calls_into_one_forward_pass(tiny_model_dir, predictor):
    n = 6
    images = _images(n, seed=3)
    expected = [predictor.predict([im])[0] for im in images]
    # The leader waits (up to a minute) until all n images are queued: one pass, deterministically.
    batcher = MicroBatcher(predictor.predict_tensor, max_batch=n, max_wait_s=60.0)
    results = _run_in_threads(lambda i: batcher.submit(_as_tensor([images[i]]))[0], n)
    assert batcher.passes == 1 and batcher.requests == n
    for got, want in zip(results, expected):
        assert [want[name] for name in predictor.labels] == pytest.approx(got.tolist(), abs=1e-5)


def test_batcher_without_waiting_serves_every_request_correctly(tiny_model_dir, predictor):
    images = _images(8, seed=4)
    expected = predictor.predict_tensor(_as_tensor(images))
    batcher = MicroBatcher(predictor.predict_tensor, max_batch=3, max_wait_s=0.0)

    def calls(i):  # each thread asks three times, with one or two images
        out = []
        for j in range(3):
            picks = [(i + j) % 8, (i * 3 + j) % 8][: 1 + (i + j) % 2]
            out.append((picks, batcher.submit(_as_tensor([images[p] for p in picks]))))
        return out

    for per_thread in _run_in_threads(calls, 4):
        for picks, results in per_thread:
            for p, result in zip(picks, results):
                assert result.tolist() == pytest.approx(expected[p].tolist(), abs=1e-5)
    assert batcher.requests == 12 and 1 <= batcher.passes <= 12


def test_micro_batcher_splits_rows_back_to_each_caller():
    sizes = []

    def run(x):
        sizes.append(x.shape[0])
        return x * 10

    rows = [1, 2, 1, 3]
    batcher = MicroBatcher(run, max_batch=sum(rows), max_wait_s=60.0)  # waits for all 7 rows: one pass
    out = _run_in_threads(lambda i: batcher.submit(torch.full((rows[i], 1), float(i))), len(rows))
    for i, res in enumerate(out):
        assert res.shape == (rows[i], 1) and torch.all(res == 10 * i)
    assert sizes == [7] and batcher.passes == 1 and batcher.requests == 4


def test_micro_batcher_never_runs_more_than_max_batch_rows():
    sizes = []
    batcher = MicroBatcher(lambda x: sizes.append(x.shape[0]) or x + 1, max_batch=4, max_wait_s=60.0)
    out = _run_in_threads(lambda i: batcher.submit(torch.full((2, 1), float(i))), 4)
    assert all(torch.all(res == i + 1) for i, res in enumerate(out))
    assert sizes == [4, 4] and batcher.requests == 4


def test_micro_batcher_hands_the_error_to_every_merged_caller():
    def run(x):
        raise RuntimeError(f"boom on {x.shape[0]} rows")

    batcher = MicroBatcher(run, max_batch=3, max_wait_s=60.0)

    def call(i):
        with pytest.raises(RuntimeError, match="boom on 3 rows"):
            batcher.submit(torch.zeros(1, 1))
        return True

    assert _run_in_threads(call, 3) == [True, True, True]
    with pytest.raises(ValueError, match="max_batch >= 1"):
        MicroBatcher(run, max_batch=0)
