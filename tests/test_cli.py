"""Command lines as a user runs them: real subprocesses of ``train.py`` and ``python -m landcover``."""

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datagen import class_patch, write_imagefolder
from landcover.core.config import TrainConfig
from landcover.inference.predictor import Predictor

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    """Run a command of this project with the test environment (offline Hub, one thread).

    The timeout only catches hangs: these take seconds on an idle machine, minutes on a crowded shared one.
    """
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=dict(os.environ), capture_output=True, text=True,
                          timeout=timeout)


def test_evaluate_json_uses_the_recorded_test_split(tiny_model_dir, eurosat_folder):
    proc = run("-m", "landcover", "evaluate", "--model", str(tiny_model_dir), "--data", str(eurosat_folder),
               "--split", "test", "--json", "--batch-size", "16")
    assert proc.returncode == 0, proc.stderr
    assert "evaluating test" in proc.stderr  # a progress bar over the 50 images, 16 at a time
    result = json.loads(proc.stdout)
    assert {"model", "accuracy", "n", "per_class"} <= set(result)
    assert result["model"] == str(tiny_model_dir)
    recorded = json.loads((tiny_model_dir / "splits.json").read_text())["files"]
    assert result["n"] == len(recorded["test"]) == 50
    assert sum(m["support"] for m in result["per_class"].values()) == 50
    # Same images, same preprocessing as the evaluation at the end of training: the same accuracy.
    trained = json.loads((tiny_model_dir / "metrics.json").read_text())["test"]
    assert result["accuracy"] == trained["accuracy"]
    assert result["confusion_matrix"] == trained["confusion_matrix"]
    # Calibration as train.py scored it: the Predictor applies the temperature fitted on validation.
    assert result["temperature"] == trained["temperature"]
    for key in ("ece", "nll"):
        assert abs(result[key] - trained[key]) < 1e-5, (key, result[key], trained[key])
    assert result["accuracy_ci95"] == pytest.approx(trained["accuracy_ci95"])
    assert result["accuracy_ci95"][0] <= result["accuracy"] <= result["accuracy_ci95"][1] + 1e-12


def test_offline_hub_dataset_error_names_the_evaluate_flag(tiny_model_dir):
    proc = run("-m", "landcover", "evaluate", "--model", str(tiny_model_dir), "--data", "timm/eurosat-rgb")
    _assert_clean_error(proc, "Could not load Hub dataset 'timm/eurosat-rgb'", "pass a local folder with --data ")
    assert "--dataset" not in proc.stderr


def test_evaluate_split_all_counts_every_image(tiny_model_dir, eurosat_folder):
    proc = run("-m", "landcover", "evaluate", "--model", str(tiny_model_dir), "--data", str(eurosat_folder),
               "--split", "all", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["n"] == len(list(eurosat_folder.rglob("*.jpg"))) == 240
    assert 0.0 <= result["accuracy"] <= 1.0


def test_predict_json_top_k(tiny_model_dir, tmp_path):
    paths = []
    for c in (2, 7):
        path = tmp_path / f"patch_{c}.png"
        Image.fromarray(class_patch(c, np.random.default_rng(100 + c))).save(path)
        paths.append(str(path))
    proc = run("-m", "landcover", "predict", "--model", str(tiny_model_dir), *paths, "--top-k", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["image"] for r in rows] == paths
    expected = Predictor.load(str(tiny_model_dir)).predict_files(paths, top_k=3)
    for row, probs in zip(rows, expected):
        values = list(row["probabilities"].values())
        assert len(values) == 3 and values == sorted(values, reverse=True) and 0 < sum(values) <= 1 + 1e-6
        assert row["label"] == next(iter(row["probabilities"]))
        assert row["probabilities"] == probs  # the CLI reports exactly what the Predictor computes


def test_train_help_lists_every_flag_with_its_help():
    proc = run("train.py", "--help")
    assert proc.returncode == 0, proc.stderr
    flat = re.sub(r"\s+", "", proc.stdout)  # argparse wraps (and hyphen-breaks) long help lines
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        assert re.search(rf"{re.escape(flag)}\b", proc.stdout), f"{flag} missing from train.py --help"
        if f.type in (bool, "bool"):
            assert f"--no-{flag[2:]}" in proc.stdout
        assert f.metadata.get("help"), f"{f.name} has no help text"
        assert re.sub(r"\s+", "", f.metadata["help"]) in flat, f"help of {flag} not shown"


def test_train_config_json_records_every_flag(tiny_model_dir):
    saved = json.loads((tiny_model_dir / "train_config.json").read_text())
    assert set(saved) == {f.name for f in dataclasses.fields(TrainConfig)}


def _assert_clean_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def test_missing_dataset_folder_is_a_clear_error(tmp_path, tiny_model_dir):
    missing = str(tmp_path / "no-such-folder")
    _assert_clean_error(run("train.py", "--dataset", missing, "--model", "test_resnet", "--no-pretrained",
                            "--output-dir", str(tmp_path / "out")),
                        "error:", f"Dataset folder {missing!r} not found")
    _assert_clean_error(run("-m", "landcover", "evaluate", "--model", str(tiny_model_dir), "--data", missing),
                        "error:", "not found")


def test_class_mismatch_is_a_clear_error(tmp_path):
    folder = write_imagefolder(tmp_path / "nine", per_class=2, classes=["AnnualCrop", "Forest", "Glacier"])
    _assert_clean_error(run("train.py", "--dataset", str(folder), "--model", "test_resnet", "--no-pretrained",
                            "--output-dir", str(tmp_path / "out")),
                        "unexpected ['Glacier']", "'SeaLake'", "--allow-custom-classes")


def test_missing_model_and_image_are_clear_errors(tmp_path, tiny_model_dir):
    _assert_clean_error(run("-m", "landcover", "predict", "--model", str(tmp_path / "nope"), "x.png"),
                        "error:", "neither a local folder nor a Hub id")
    _assert_clean_error(run("-m", "landcover", "predict", "--model", str(tiny_model_dir), str(tmp_path / "x.png")),
                        "error:", "x.png")


def test_evaluate_tta_mode_record_and_no_tta(tiny_model_dir, eurosat_folder, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    common = ("-m", "landcover", "evaluate", "--model", str(folder), "--data", str(eurosat_folder), "--json")
    proc = run(*common, "--tta", "flips", "--record")
    assert proc.returncode == 0, proc.stderr
    recorded = json.loads(proc.stdout)
    assert recorded["test_time_augmentation"] == "flips"
    config = json.loads((folder / "config.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    assert config["test_time_augmentation"] == metrics["test_time_augmentation"] == "flips"
    assert metrics["test"]["accuracy"] == recorded["accuracy"]
    assert "test-time augmentation `flips`" in (folder / "README.md").read_text()
    # From now on the folder's own setting applies; --no-tta gives the single-pass figure kept aside.
    again = json.loads(run(*common).stdout)
    assert again["test_time_augmentation"] == "flips" and again["accuracy"] == recorded["accuracy"]
    plain = json.loads(run(*common, "--no-tta").stdout)
    assert plain["test_time_augmentation"] is None
    assert plain["accuracy"] == metrics["test_without_tta"]["accuracy"]
    bad = run(*common, "--tta", "rot45")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_predict_reports_bad_files_without_hiding_the_good_ones(tiny_model_dir, tmp_path):
    folder = tmp_path / "patches"
    folder.mkdir()
    good = []
    for c in (1, 4):
        good.append(folder / f"patch_{c}.png")
        Image.fromarray(class_patch(c, np.random.default_rng(c))).save(good[-1])
    from test_imageio import _geotiff, _sentinel2_patch

    good.append(folder / "sentinel2_13_bands.tif")  # EuroSAT-MS style: 13 uint16 bands, no descriptions
    good[-1].write_bytes(_geotiff(_sentinel2_patch(13)))
    (folder / "readme.txt").write_text("not an image, and not listed: wrong suffix")
    bad = tmp_path / "notes.jpg"
    bad.write_text("a text file named like a JPEG")
    common = ("-m", "landcover", "predict", "--model", str(tiny_model_dir))
    proc = run(*common, str(bad), str(folder), "--json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["image"] for r in rows] == [str(bad), *map(str, good)]  # the folder became its three images
    assert "not a readable image" in rows[0]["error"] and "label" not in rows[0]
    expected = Predictor.load(str(tiny_model_dir)).predict_files(good, top_k=3)
    assert [r["probabilities"] for r in rows[1:]] == expected
    assert "1 of 4 file(s) could not be classified" in proc.stderr

    text = run(*common, str(good[0]), str(bad))
    assert text.returncode == 1
    assert text.stdout.startswith(f"{good[0]}: ") and f"error: {bad}: " in text.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    _assert_clean_error(run(*common, str(empty)), "holds no image files")


def test_predict_top_k_must_be_positive(tiny_model_dir, tmp_path):
    path = tmp_path / "p.png"
    Image.fromarray(class_patch(0, np.random.default_rng(0))).save(path)
    proc = run("-m", "landcover", "predict", "--model", str(tiny_model_dir), str(path), "--top-k", "0")
    assert proc.returncode == 2 and "--top-k: expected a whole number >= 1, got 0" in proc.stderr


def test_pyproject_matches_requirements_and_ships_the_model():
    """``pip install .`` gets its dependencies from requirements.txt (one list), every subpackage, the embedded
    model, the card template, and a ``landcover`` command that is ``python -m landcover``."""
    import importlib
    import tomllib

    from setuptools import find_packages

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "dependencies" in project["project"]["dynamic"] and "dependencies" not in project["project"]
    assert project["tool"]["setuptools"]["dynamic"]["dependencies"] == {"file": ["requirements.txt"]}
    found = set(find_packages(str(ROOT), **project["tool"]["setuptools"]["packages"]["find"]))
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "landcover").rglob("__init__.py")}
    assert found == on_disk and {"landcover.scenes", "landcover.app", "landcover.core"} <= found
    module, _, function = project["project"]["scripts"]["landcover"].partition(":")
    from landcover.cli import main
    assert getattr(importlib.import_module(module), function) is main
    patterns = project["tool"]["setuptools"]["package-data"]["landcover"]
    shipped = {p.relative_to(ROOT / "landcover").as_posix() for pattern in patterns
               for p in (ROOT / "landcover").glob(pattern) if p.is_file()}
    assert {"default_model/model.safetensors", "default_model/config.json", "models/templates/model_card.md"} <= shipped
    assert project["project"]["license"] == "Apache-2.0" and "Apache License" in (ROOT / "LICENSE").read_text()
