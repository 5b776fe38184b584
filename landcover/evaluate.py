"""Evaluate a model folder on a dataset split (``python -m landcover evaluate``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from .data import load_eurosat, load_folder_patches
from .labels import EUROSAT_CLASSES
from .metrics import confusion_matrix, report
from .predict import Predictor


def _recorded_splits(folder: Path, data: str) -> Optional[dict]:
    """The model's own split file lists, when ``data`` is the local folder it was trained on."""
    path = folder / "splits.json"
    if not path.is_file() or not Path(data).expanduser().is_dir():
        return None
    return json.loads(path.read_text()).get("files")


def evaluate_model(model: Optional[str], data: str, split: str = "test", batch_size: int = 256,
                   backend: str = "torch", tta: "bool | str | None" = None) -> dict:
    """Accuracy, per-class metrics and confusion matrix of ``model`` on ``split`` of ``data``.

    ``tta``: None = the model's own test-time augmentation, False = none, True or a mode name
    (``hflip``, ``flips``, ``d4``; see ``landcover.config.TTA_MODES``).
    """
    predictor = Predictor.load(model, backend=backend, tta=tta)
    labels = predictor.labels
    if split == "all":
        patches = load_folder_patches(data, labels)
    else:
        t = predictor.loaded.train_config
        recorded = _recorded_splits(predictor.loaded.folder, data)
        ds = load_eurosat(data, seed=t.get("seed", 42), val_fraction=t.get("val_fraction", 0.1),
                          test_fraction=t.get("test_fraction", 0.2),
                          allow_custom_classes=labels != list(EUROSAT_CLASSES), recorded_splits=recorded)
        if ds.class_names != labels:
            raise ValueError(f"The data's classes {ds.class_names} differ from the model's {labels}.")
        patches = ds.splits[split]
    probs = predictor.predict_tensor(patches.images, batch_size=batch_size)
    cm = confusion_matrix(probs.argmax(1), patches.labels, len(labels))
    result = report(cm, labels)
    return {"model": str(predictor.loaded.folder) if model is None else model, "data": data, "split": split,
            "test_time_augmentation": predictor.tta, **result}

