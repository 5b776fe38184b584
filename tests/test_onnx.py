"""ONNX Runtime backend: same probabilities as torch (1e-4), cached export, cache placement, CLI flag, the graphs a
model folder ships (float without its weights, int8 with its measured cost), their checksums and the auto backend."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from landcover.core.labels import EUROSAT_CLASSES
from landcover.inference.onnx_backend import CACHE_SUBDIR, SHIPPED_DIR, cache_path, read_manifest, user_cache_dir
from landcover.inference.predictor import Predictor, load_predictor

ROOT = Path(__file__).resolve().parents[1]


def _batch(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8))


@pytest.fixture()
def model_copy(tiny_model_dir, tmp_path) -> Path:
    """A private copy of the tiny model folder, so the ONNX cache written here stays out of other tests."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "tiny"))


def test_onnx_probabilities_match_torch_and_the_export_is_cached(model_copy):
    torch_p = Predictor.load(str(model_copy))
    onnx_p = Predictor.load(str(model_copy), backend="onnx")
    assert onnx_p.info["backend"] == "onnx"
    cached = onnx_p.onnx.path
    assert cached.parent == model_copy / CACHE_SUBDIR and cached.is_file()
    for n in (1, 5, 37):  # the batch axis is dynamic
        batch = _batch(n, torch_p.input_size, seed=n)
        assert torch.allclose(onnx_p.predict_tensor(batch), torch_p.predict_tensor(batch), atol=1e-4, rtol=0)
    images = [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in _batch(3, 48, seed=9)]  # resized first
    for got, want in zip(onnx_p.predict(images), torch_p.predict(images)):
        assert list(got) == list(want) and list(got.values()) == pytest.approx(list(want.values()), abs=1e-4)
    mtime = cached.stat().st_mtime_ns
    again = Predictor.load(str(model_copy), backend="onnx")
    assert again.onnx.path == cached and cached.stat().st_mtime_ns == mtime  # reused, not re-exported


def test_changed_weights_get_a_new_cache_file(model_copy):
    first = cache_path(model_copy, 32)
    weights = model_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes() + b" ")
    assert cache_path(model_copy, 32) != first and cache_path(model_copy, 64) != cache_path(model_copy, 32)


def test_hub_snapshots_and_the_packaged_model_cache_in_the_user_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LANDCOVER_ONNX_CACHE", str(tmp_path / "user-cache"))
    snapshot = tmp_path / "hub" / "models--org--eurosat" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    assert cache_path(snapshot, 64).parent == tmp_path / "user-cache" == user_cache_dir()
    plain = tmp_path / "plain"
    plain.mkdir()
    assert cache_path(plain, 64).parent == plain / CACHE_SUBDIR
    assert cache_path(plain, 64, packaged=True).parent == tmp_path / "user-cache"


def test_efficientnet_lite0_onnx_matches_torch(tmp_path):
    import timm

    from landcover.models.factory import create_model

    folder = tmp_path / "lite0"
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", num_classes=10, pretrained=False, image_size=64,
                         label_names=list(EUROSAT_CLASSES)).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the outputs are not near-uniform
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    timm.models.save_for_hf(model, folder, model_config={"label_names": list(EUROSAT_CLASSES)},
                            safe_serialization=True)
    torch_p = Predictor.load(str(folder))
    onnx_p = Predictor.load(str(folder), backend="onnx")
    batch = _batch(9, 64, seed=2)
    want = torch_p.predict_tensor(batch)
    assert torch.allclose(onnx_p.predict_tensor(batch), want, atol=1e-4, rtol=0)
    assert torch.allclose(onnx_p.predict_tensor(batch[:1]), want[:1], atol=1e-4, rtol=0)


def test_cli_predict_backend_onnx_matches_torch(model_copy, tmp_path):
    image = tmp_path / "patch.png"
    Image.fromarray(_batch(1, 32, seed=5)[0].permute(1, 2, 0).numpy()).save(image)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    out = {}
    for backend in ("torch", "onnx"):
        proc = subprocess.run([sys.executable, "-m", "landcover", "predict", str(image), "--model", str(model_copy),
                               "--backend", backend, "--top-k", "10", "--json"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        out[backend] = json.loads(proc.stdout)[0]["probabilities"]
    assert list(out["onnx"]) == list(out["torch"])
    assert list(out["onnx"].values()) == pytest.approx(list(out["torch"].values()), abs=1e-4)


def test_load_predictor_falls_back_to_torch_when_the_export_cannot_be_written(model_copy, capsys):
    shutil.rmtree(model_copy / CACHE_SUBDIR, ignore_errors=True)  # exported by earlier tests of the session
    (model_copy / CACHE_SUBDIR).write_text("a file where the cache folder should be")  # export fails: OSError
    predictor = load_predictor(str(model_copy), backend="onnx")
    assert predictor.backend == "torch" and predictor.onnx is None
    assert "onnx backend unavailable" in capsys.readouterr().err
    batch = _batch(2, 32)
    assert torch.allclose(predictor.predict_tensor(batch), Predictor.load(str(model_copy)).predict_tensor(batch))
    with pytest.raises(FileNotFoundError):  # a missing model is an error, not a reason to switch backends
        load_predictor(str(model_copy / "missing"))


def test_export_onnx_ships_a_weightless_float_graph_and_an_int8_graph_with_checksums(shipped):
    manifest = read_manifest(shipped)
    graphs = manifest["graphs"]
    assert set(graphs) == {"float", "int8"} and manifest["preprocessing"]["input_size"] == 32
    weights = (shipped / "model.safetensors").stat().st_size
    assert (shipped / SHIPPED_DIR / graphs["float"]["file"]).stat().st_size < weights / 4  # weights not repeated
    test = graphs["int8"]["test"]
    cost = 100 * (test["float_accuracy"] - test["int8_accuracy"])
    assert test["n"] > 0 and test["cost_points"] == pytest.approx(cost, abs=1e-3)
    train = json.loads((shipped / "metrics.json").read_text())["split_sizes"]["train"]
    calibration = graphs["int8"]["calibration"]
    assert calibration["patches"] == min(40, train) and calibration["split"] == "train"  # capped at the split's size
    # Every candidate was scored on validation; the shipped one is the first with the lowest cost.
    costs = [c["validation_cost_points"] for c in calibration["candidates"]]
    assert len(costs) == 4 and calibration["chosen_on"] == "validation"
    chosen = costs.index(min(costs))
    assert {k: calibration[k] for k in ("method", "ends_float")} == \
        {k: calibration["candidates"][chosen][k] for k in ("method", "ends_float")}


def test_shipped_graphs_run_with_batch_norms_fused(shipped):
    """The weight-less float graph is filled and optimised at load, and the int8 graph was quantised from the
    optimised graph: no BatchNormalization or CastLike node is left for ONNX Runtime to trip over."""
    import onnx

    from landcover.inference.onnx_backend import fill_weights

    float_graph = read_manifest(shipped)["graphs"]["float"]
    raw = onnx.load(str(shipped / SHIPPED_DIR / float_graph["file"]))
    assert "BatchNormalization" in {n.op_type for n in raw.graph.node}  # as exported: weights as in safetensors
    filled = onnx.load_from_string(fill_weights(shipped / SHIPPED_DIR / float_graph["file"],
                                                shipped / "model.safetensors", float_graph["weights"]))
    int8 = onnx.load(str(shipped / SHIPPED_DIR / read_manifest(shipped)["graphs"]["int8"]["file"]))
    for graph in (filled, int8):
        assert not {"BatchNormalization", "CastLike"} & {n.op_type for n in graph.graph.node}


def test_auto_uses_the_shipped_graphs_with_torch_probabilities_and_no_export(shipped):
    torch_p = Predictor.load(str(shipped), backend="torch")
    auto = load_predictor(str(shipped))
    assert auto.backend == "onnx" and auto.onnx.source == "shipped"
    assert not (shipped / CACHE_SUBDIR).exists()  # nothing exported
    for n, size in ((1, 32), (6, 64), (3, 20)):  # the graph resizes any input size itself
        batch = _batch(n, size, seed=n)
        assert torch.allclose(auto.predict_tensor(batch), torch_p.predict_tensor(batch), atol=1e-4, rtol=0)
        assert torch.allclose(auto.predict_tensor(batch, tta="d4"), torch_p.predict_tensor(batch, tta="d4"),
                              atol=1e-4, rtol=0)
    scenes = load_predictor(str(shipped), task="scenes")
    cost = read_manifest(shipped)["graphs"]["int8"]["test"]["cost_points"]
    assert scenes.backend == ("int8" if cost <= 0.3 else "onnx")
    int8 = load_predictor(str(shipped), backend="int8")
    batch = _batch(16, 64, seed=3)
    probs = int8.predict_tensor(batch)
    assert torch.allclose(probs.sum(1), torch.ones(16), atol=1e-5)
    assert (probs - torch_p.predict_tensor(batch)).abs().mean() < 0.05


def test_changed_weights_invalidate_the_shipped_graphs(shipped, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    folder = Path(shutil.copytree(shipped, tmp_path / "changed"))
    state = load_file(str(folder / "model.safetensors"))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name] + 0.5
    save_file(state, str(folder / "model.safetensors"))
    assert load_predictor(str(folder)).backend == "torch"  # auto: no valid shipped graph, no export
    assert load_predictor(str(folder), task="scenes").backend == "torch"
    with pytest.raises(ValueError, match="checksum differs.*export-onnx"):
        load_predictor(str(folder), backend="int8")
    onnx_p = load_predictor(str(folder), backend="onnx")  # exports the changed weights instead
    assert onnx_p.onnx.source == "cache"
    batch = _batch(4, 32)
    want = Predictor.load(str(folder), backend="torch").predict_tensor(batch)
    assert torch.allclose(onnx_p.predict_tensor(batch), want, atol=1e-4, rtol=0)


def test_predictor_leaves_torch_threads_alone_and_auto_without_onnx_files_is_torch(model_copy):
    before = torch.get_num_threads()
    predictor = load_predictor(str(model_copy), threads=1)
    assert torch.get_num_threads() == before and predictor.backend == "torch"
    assert not (model_copy / CACHE_SUBDIR).exists()
    onnx_p = load_predictor(str(model_copy), backend="onnx", threads=1)
    assert onnx_p.onnx.threads == 1 and torch.get_num_threads() == before
    assert onnx_p.resolve_tta("none") is None and onnx_p.resolve_tta("D4") == "d4"
