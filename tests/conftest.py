"""Shared fixtures. Hub libraries are forced offline before anything imports them."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# One intra-op thread (inherited by subprocesses): the tiny test models gain nothing from more, and on a busy
# shared CPU (CI runners, a training run next door) OpenMP spin-waiting made steps ~7x slower with two.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


@pytest.fixture(scope="session")
def eurosat_folder(tmp_path_factory) -> Path:
    """A generated imagefolder: 10 classes x 24 learnable 64 px JPEGs."""
    from datagen import write_imagefolder
    return write_imagefolder(tmp_path_factory.mktemp("data") / "eurosat")


@pytest.fixture(scope="session")
def parquet_folder(tmp_path_factory) -> Path:
    """Generated parquet files with the dataset's own train/validation/test splits (16/4/6 per class)."""
    from datagen import write_parquet
    return write_parquet(tmp_path_factory.mktemp("data") / "parquet")


@pytest.fixture(scope="session")
def tiny_model_dir(eurosat_folder, tmp_path_factory) -> Path:
    """A real model folder trained by the real pipeline (test_resnet, 32 px, 4 epochs).

    4 epochs of batch 8 at lr 5e-3 reached 100% test accuracy for every seed tried (3 epochs of batch 16 at
    3e-3 gave 70-98% depending on the seed), so tests can rely on it classifying the generated data.
    """
    from landcover.core.config import TrainConfig
    from landcover.training.model_folder import save_model_folder
    from landcover.training.trainer import train

    out = tmp_path_factory.mktemp("tiny-model")
    cfg = TrainConfig(dataset=str(eurosat_folder), model="test_resnet", pretrained=False, image_size=32, epochs=4,
                      batch_size=8, lr=5e-3, output_dir=str(out), log_every=5)
    result = train(cfg)
    return save_model_folder(result, command="pytest fixture tiny_model_dir")


@pytest.fixture(scope="session")
def real_eurosat() -> Path:
    """The real EuroSAT folder (``LANDCOVER_EUROSAT_DIR``); tests using it skip when unset."""
    path = os.environ.get("LANDCOVER_EUROSAT_DIR")
    if not path:
        pytest.skip("LANDCOVER_EUROSAT_DIR is not set (real EuroSAT data)")
    if not Path(path).is_dir():
        pytest.fail(f"LANDCOVER_EUROSAT_DIR={path} is not a folder")
    return Path(path)


@pytest.fixture(scope="session")
def shipped(tiny_model_dir, eurosat_folder, tmp_path_factory) -> Path:
    """A copy of the tiny model folder with onnx/ written by `python -m landcover export-onnx FOLDER --data DIR`."""
    import shutil
    import subprocess

    folder = Path(shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("shipped") / "tiny"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "landcover", "export-onnx", str(folder), "--data", str(eurosat_folder),
                           "--calibration", "40"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "int8 graph" in proc.stdout and "cost" in proc.stdout
    return folder
