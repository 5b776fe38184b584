"""Writing a trained model folder: weights, ``config.json``, metrics, splits, plots, examples, card.

The folder is timm's Hub format (``config.json`` + ``model.safetensors``, loadable with plain
``timm.create_model('local-dir:<folder>', pretrained=True)``) plus the run's ``train_config.json``,
``metrics.json``, ``splits.json``, plots, ``examples/`` and a model card (:mod:`landcover.models.card`).
:func:`record_test_evaluation` makes a later ``evaluate --record`` the folder's reported test result.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch

from landcover.models.card import portable, public_command, public_data, write_model_card
from landcover.models.hub import WEIGHTS, read_json
from landcover.core.labels import EUROSAT_CLASSES, EUROSAT_DESCRIPTIONS
from landcover.models.factory import count_parameters, data_config

if TYPE_CHECKING:
    from landcover.training.trainer import TrainResult

# What ``evaluate --record`` copies from an evaluation into metrics.json's "test".
RECORDED_KEYS = ("accuracy", "macro_f1", "n", "per_class", "confusion_matrix", "accuracy_ci95", "ece", "nll",
                 "temperature")


def _model_config(result: "TrainResult") -> dict:
    """config.json's extra keys: labels, and the inference settings chosen on validation (so every Predictor of
    the folder uses them)."""
    label_names = result.data.class_names
    config: dict = {"label_names": label_names}
    if label_names == list(EUROSAT_CLASSES):
        config["label_descriptions"] = EUROSAT_DESCRIPTIONS
    if result.metrics.get("test_time_augmentation"):
        config["test_time_augmentation"] = result.metrics["test_time_augmentation"]
    if "tta_selection" in result.metrics:
        config["temperature"] = result.metrics["tta_selection"]["temperature"]
    return config


def save_model_folder(result: "TrainResult", command: Optional[str] = None) -> Path:
    """Write the whole model folder for a finished run into ``result.config.output_dir``.

    Args:
        result: What :func:`landcover.training.trainer.train` returned.
        command: The command line recorded in metrics.json and the card (default: this process's).

    Returns:
        The folder.
    """
    import timm
    from safetensors.torch import save_file

    from landcover.training import plots
    from landcover.core.config import to_json

    cfg = result.config
    folder = Path(cfg.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    # safetensors stores contiguous tensors only (channels_last weights are not)
    model = result.model.eval().to(memory_format=torch.contiguous_format)
    timm.models.save_for_hf(model, folder, model_config=_model_config(result), safe_serialization=True,
                            data_config=data_config(model))
    if cfg.save_fp16:
        state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(folder / WEIGHTS))
    # Records name no path or prefix of this machine (folders are shared and pushed): a local dataset folder is
    # EUROSAT_DIR, the output folder its name.
    to_json(replace(cfg, init_checkpoint=cfg.init_checkpoint and portable(cfg.init_checkpoint),
                    dataset=public_data(cfg.dataset), output_dir=Path(cfg.output_dir).name),
            folder / "train_config.json")
    metrics = _run_metrics(result, folder, command)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (folder / "splits.json").write_text(json.dumps(
        {"source": public_data(cfg.dataset), "origin": result.data.split_origin, "seed": cfg.seed,
         "files": result.data.split_files()}, indent=1) + "\n")
    label_names = result.data.class_names
    plots.confusion_matrix_png(metrics["test"]["confusion_matrix"], label_names, folder / "confusion_matrix.png")
    plots.training_curves_png(result.history, folder / "training_curves.png")
    if cfg.examples:
        write_examples(result.examples, folder / "examples", result.data.source)
    write_model_card(folder, cfg, metrics, label_names)
    return folder


def _run_metrics(result: "TrainResult", folder: Path, command: Optional[str]) -> dict:
    cfg = result.config
    metrics = dict(result.metrics)
    metrics.update(
        parameters=count_parameters(result.model),
        weights_bytes=(folder / WEIGHTS).stat().st_size,
        training_time_s=round(result.wall_time_s, 1),
        hardware=result.hardware,
        seed=cfg.seed,
        command=public_command(command or _command_line(), cfg.dataset),
        dataset=public_data(cfg.dataset),
    )
    metrics["stages"] = _previous_stages(cfg.init_checkpoint) + [
        {"command": metrics["command"], "training_time_s": metrics["training_time_s"], "epochs": cfg.epochs,
         "image_size": cfg.image_size, "hardware": result.hardware}]
    metrics["total_training_time_s"] = round(sum(st["training_time_s"] for st in metrics["stages"]), 1)
    return metrics


def _previous_stages(init_checkpoint: Optional[str]) -> list[dict]:
    """Training stages of the model folder this run was initialised from (its metrics.json)."""
    if not init_checkpoint:
        return []
    path = Path(init_checkpoint)
    return list(read_json((path if path.is_dir() else path.parent) / "metrics.json").get("stages", []))


def record_test_evaluation(folder: str | Path, result: dict) -> None:
    """Make a test evaluation (:func:`landcover.inference.evaluate.evaluate_model` output) the folder's reported one.

    With test-time augmentation, config.json gets ``test_time_augmentation: <mode>`` (so every Predictor
    of this folder uses it) and the evaluation without it is kept as ``test_without_tta``.
    """
    from landcover.training import plots
    from landcover.core.config import TrainConfig, from_json

    folder = Path(folder)
    metrics = read_json(folder / "metrics.json")
    config = read_json(folder / "config.json")
    tta = result.get("test_time_augmentation")
    if tta and "test_without_tta" not in metrics:
        metrics["test_without_tta"] = metrics["test"]
    metrics["test"] = {k: result[k] for k in RECORDED_KEYS if k in result}
    metrics["test_time_augmentation"] = tta
    if tta:
        config["test_time_augmentation"] = tta
    else:
        config.pop("test_time_augmentation", None)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    labels = config.get("label_names") or list(metrics["test"]["per_class"])
    plots.confusion_matrix_png(metrics["test"]["confusion_matrix"], labels, folder / "confusion_matrix.png")
    write_model_card(folder, from_json(TrainConfig, folder / "train_config.json"), metrics, labels)


def write_examples(examples: dict[str, tuple[str, torch.Tensor]], folder: Path, source: Optional[str] = None) -> None:
    """``examples/<Class>.jpg``: the original file's bytes when the data is a local folder (no re-encoding),
    else the decoded patch as a JPEG (quality 95). Stale examples of an earlier run are removed."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*"):
        if old.is_file():
            old.unlink()
    root = Path(source).expanduser() if source else None
    for name, (file_id, image) in examples.items():
        original = root / file_id if root is not None and root.is_dir() else None
        if original is not None and original.is_file() and original.suffix.lower() in (".jpg", ".jpeg"):
            shutil.copyfile(original, folder / f"{name}.jpg")
        else:
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{name}.jpg", quality=95)


def _command_line() -> str:
    # --resume continues the same run bit-exactly across sessions: how it was scheduled, not part of the recipe.
    return " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]] if a != "--resume")
