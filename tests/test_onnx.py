"""ONNX Runtime backend: same probabilities as torch (1e-4), cached export, cache placement, CLI flag."""

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

from landcover.labels import EUROSAT_CLASSES
from landcover.onnx_backend import CACHE_SUBDIR, cache_path, user_cache_dir
from landcover.predict import Predictor, load_predictor

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

    from landcover.model import create_model

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
    predictor = load_predictor(str(model_copy))
    assert predictor.backend == "torch" and predictor.onnx is None
    assert "onnx backend unavailable" in capsys.readouterr().err
    batch = _batch(2, 32)
    assert torch.allclose(predictor.predict_tensor(batch), Predictor.load(str(model_copy)).predict_tensor(batch))
    with pytest.raises(FileNotFoundError):  # a missing model is an error, not a reason to switch backends
        load_predictor(str(model_copy / "missing"))
