"""Evaluate a model folder on a dataset split (``python -m landcover evaluate``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from landcover.core.calibration import expected_calibration_error, nll, wilson_interval
from landcover.data.eurosat import Patches, SplitSpec, load_eurosat, load_folder_patches
from landcover.core.defaults import DEFAULT_BACKEND
from landcover.core.labels import EUROSAT_CLASSES
from landcover.core.metrics import confusion_matrix, report
from landcover.inference.predictor import Predictor


def _recorded_splits(folder: Path, data: str) -> Optional[dict]:
    """The model's own split file lists, when ``data`` is the local folder it was trained on."""
    path = folder / "splits.json"
    if not path.is_file() or not Path(data).expanduser().is_dir():
        return None
    return json.loads(path.read_text()).get("files")


def load_split(predictor: Predictor, data: str, split: str) -> Patches:
    """The patches of ``split`` (``all``: every image) of ``data``, decoding only that split where it is known
    without decoding (the dataset's own splits, or the model's recorded ``splits.json``)."""
    labels = predictor.labels
    if split == "all":
        return load_folder_patches(data, labels, flag="--data")
    t = predictor.loaded.train_config
    split_spec = SplitSpec(t.get("seed", 42), t.get("val_fraction", 0.1), t.get("test_fraction", 0.2))
    ds = load_eurosat(data, split_spec, allow_custom_classes=labels != list(EUROSAT_CLASSES),
                      recorded_splits=_recorded_splits(predictor.loaded.folder, data), splits=(split,), flag="--data")
    if ds.class_names != labels:
        raise ValueError(f"The data's classes {ds.class_names} differ from the model's {labels}.")
    return ds.splits[split]


def predict_with_progress(predictor: Predictor, images: torch.Tensor, batch_size: int, desc: str) -> torch.Tensor:
    """:meth:`Predictor.predict_tensor` in chunks of ``batch_size`` images, with a progress bar (stderr)."""
    out = []
    with tqdm(total=len(images), desc=desc, unit="img", disable=len(images) <= batch_size) as bar:
        for start in range(0, len(images), batch_size):
            out.append(predictor.predict_tensor(images[start:start + batch_size], batch_size=batch_size))
            bar.update(len(out[-1]))
    return torch.cat(out) if out else torch.empty(0, len(predictor.labels))


def evaluate_model(model: Optional[str], data: str, split: str = "test", batch_size: int = 256,
                   backend: str = DEFAULT_BACKEND, tta: "bool | str | None" = None) -> dict:
    """Accuracy (with its 95 % Wilson interval), per-class metrics, confusion matrix, ECE and NLL of ``model``
    on ``split`` of ``data``.

    Probabilities are the Predictor's: with the model's temperature (config.json) for the inference mode used.

    Args:
        model: Model folder or Hub id (None: the embedded model).
        data: Local folder or Hub dataset id.
        split: ``train``, ``validation``, ``test`` or ``all``.
        batch_size: Images per forward pass.
        backend: ``auto``, ``torch``, ``onnx`` or ``int8`` (see :mod:`landcover.core.defaults`).
        tta: None = the model's own test-time augmentation, False = none, True or a mode name
            (``hflip``, ``flips``, ``d4``; see ``landcover.core.config.TTA_MODES``).
    """
    predictor = Predictor.load(model, backend=backend, tta=tta)
    patches = load_split(predictor, data, split)
    probs = predict_with_progress(predictor, patches.images, batch_size, f"evaluating {split}")
    labels = predictor.labels
    cm = confusion_matrix(probs.argmax(1), patches.labels, len(labels))
    result = report(cm, labels)
    correct = int(cm.diagonal().sum())
    return {"model": str(predictor.loaded.folder) if model is None else model, "data": data, "split": split,
            "test_time_augmentation": predictor.tta, "temperature": predictor.temperature(predictor.tta), **result,
            "accuracy_ci95": list(wilson_interval(correct, len(patches))),
            "ece": expected_calibration_error(probs, patches.labels) if len(patches) else None,
            "nll": nll(probs, patches.labels) if len(patches) else None}
