"""Temperature scaling: fitted on validation, stored in config.json, applied by every Predictor path."""

import json
import math
import shutil
import subprocess
import sys

import pytest
import torch

from landcover.core.calibration import (calibration_summary, expected_calibration_error, fit_temperature, nll,
                                   probabilities, wilson_interval)
from landcover.training.trainer import mode_logits, select_tta_and_temperatures

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _calibrated_logits(n: int = 6000, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose softmax is the true label distribution (labels are drawn from it): calibrated at T = 1."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=gen) * 2.5
    labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=gen).squeeze(1)
    return logits, labels


@pytest.mark.parametrize("scale", [3.0, 1 / 3])
def test_fit_temperature_undoes_over_and_under_confidence(scale):
    logits, labels = _calibrated_logits()
    distorted = logits * scale  # scale 3: over-confident; 1/3: under-confident
    temperature = fit_temperature(distorted, labels)
    assert temperature == pytest.approx(scale, rel=0.1)
    before, after = probabilities(distorted), probabilities(distorted, temperature)
    assert expected_calibration_error(after, labels) < 0.02 < expected_calibration_error(before, labels)
    assert nll(after, labels) < nll(before, labels)


def test_temperature_per_tta_mode_and_mode_choice_on_views():
    logits, labels = _calibrated_logits(n=3000)
    gen = torch.Generator().manual_seed(1)
    views = (logits + torch.randn(8, *logits.shape, generator=gen) * 0.5) / 0.4  # 8 noisy, over-confident views
    selection = select_tta_and_temperatures(views, labels)
    assert set(selection["temperature"]) == {"none", "hflip", "flips", "d4"}
    for mode, t in selection["temperature"].items():
        scaled = probabilities(mode_logits(views, mode), t)
        raw = probabilities(mode_logits(views, mode))
        assert nll(scaled, labels) < nll(raw, labels), mode
    # Averaging views removes independent noise, so the 8-view mode wins on validation accuracy here.
    assert selection["chosen"] == "d4"
    assert selection["validation_accuracy"]["d4"] >= selection["validation_accuracy"]["none"]


def test_wilson_interval_known_values():
    low, high = wilson_interval(50, 100)
    assert (round(low, 4), round(high, 4)) == (0.4038, 0.5962)
    low, high = wilson_interval(100, 100)
    assert high == 1.0 and 0.96 < low < 0.97
    summary = calibration_summary(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 1]), 1.0)
    assert summary["accuracy"] == 1.0 and summary["n"] == 2 and summary["accuracy_ci95"][1] == 1.0


def test_ece_of_a_perfectly_calibrated_bin_is_zero():
    probs = torch.tensor([[0.75, 0.25]] * 4)
    labels = torch.tensor([0, 0, 0, 1])  # 75 % right at 75 % confidence
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-6)


def test_train_fits_a_temperature_that_the_predictor_applies(eurosat_folder, tmp_path):
    """A deliberately under-confident model (label smoothing 0.6) gets T < 1 and sharper, calibrated probabilities."""
    out = tmp_path / "underconfident"
    cmd = [sys.executable, str(ROOT / "train.py"), "--dataset", str(eurosat_folder), "--model", "test_resnet",
           "--no-pretrained", "--image-size", "32", "--epochs", "4", "--batch-size", "8", "--lr", "5e-3",
           "--label-smoothing", "0.6", "--no-examples", "--output-dir", str(out)]
    subprocess.run(cmd, check=True, cwd=tmp_path, capture_output=True, text=True)
    config = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    temperatures = config["temperature"]
    assert set(temperatures) == {"none", "hflip", "flips", "d4"}
    assert temperatures["none"] < 1.0  # sharpen an under-confident model
    test = metrics["test"]
    assert test["ece"] < test["ece_before"] and test["nll"] < test["nll_before"]
    assert test["accuracy_ci95"][0] <= test["accuracy"] <= test["accuracy_ci95"][1]
    assert metrics["tta_selection"]["chosen"] in temperatures

    from landcover.data.eurosat import load_eurosat
    from landcover.inference.predictor import Predictor

    images = load_eurosat(str(eurosat_folder)).splits["test"].images[:16]
    calibrated = Predictor.load(str(out), tta=False).predict_tensor(images)
    raw_folder = tmp_path / "raw"
    shutil.copytree(out, raw_folder, ignore=shutil.ignore_patterns("checkpoints"))
    del config["temperature"]
    (raw_folder / "config.json").write_text(json.dumps(config))
    raw = Predictor.load(str(raw_folder), tta=False).predict_tensor(images)
    expected = torch.softmax(torch.log(raw) / temperatures["none"], dim=1)  # log-softmax differs by a constant
    assert torch.allclose(calibrated, expected, atol=1e-4)
    assert calibrated.max(1).values.mean() > raw.max(1).values.mean()
    assert math.isclose(float(calibrated.sum(1).mean()), 1.0, rel_tol=1e-5)
