"""Training configuration (saved as ``train_config.json``) and the test-time augmentation modes.

``train.py``'s parser is generated from :class:`TrainConfig` (:func:`add_dataclass_arguments`), so every
field is a flag with help text and every flag lands in the saved config (nothing is parsed and then
dropped). The inference commands (``python -m landcover ...``) have hand-written parsers in
:mod:`landcover.cli`: their flags are not saved anywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

DEFAULT_DATASET = "timm/eurosat-rgb"
# racm_in1k: timm's own ImageNet recipe (RandAugment, cosine), Apache-2.0 like this project, trained and
# evaluated at 224 px with random-resized crops, so its features tolerate the up-scaled 64 px patches.
# (tv2_in1k is BSD-3 and was trained at 176 px; its accuracy is within 0.1 point.)
DEFAULT_MODEL = "wide_resnet50_2.racm_in1k"


class TTAMode(typing.NamedTuple):
    symmetries: tuple[int, ...]  # which of the 8 symmetries of the square (codes of transforms.ViewParams)
    description: str  # in words, for the model card


# Test-time augmentation modes, here (torch-free) so the CLIs can offer them without importing torch. Each
# is a subgroup of D4, so the averaged prediction is itself invariant to those symmetries. Codes as in
# training: bit 0 transposes, bit 1 flips vertically, bit 2 horizontally (so 6 is the 180-degree turn).
TTA_MODES: dict[str, TTAMode] = {
    "hflip": TTAMode((0, 4), "the patch and its mirror image"),
    "flips": TTAMode((0, 2, 4, 6), "the patch, its two mirror images and its 180-degree turn"),
    "d4": TTAMode(tuple(range(8)), "the 8 flips/rotations"),
}


def tta_choices_help() -> str:
    """``hflip: 2 views, flips: 4, d4: 8`` (for --tta help texts)."""
    return ", ".join(f"{name}: {len(mode.symmetries)}{' views' if i == 0 else ''}"
                     for i, (name, mode) in enumerate(TTA_MODES.items()))


def _flag(default: Any, help: str, **extra: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    """Everything that determines a training run (saved as ``train_config.json``)."""

    dataset: str = _flag(DEFAULT_DATASET, "Hub dataset id, or a local folder: <Class>/<Class>_<N>.jpg "
                         "(imagefolder, e.g. an unzipped EuroSAT.zip) or *.parquet files.")
    model: str = _flag(DEFAULT_MODEL, "Any timm architecture, optionally with a pretrained tag (name.tag).")
    pretrained: bool = _flag(True, "Start from the architecture's pretrained weights (downloaded from the Hub).")
    init_checkpoint: Optional[str] = _flag(None, "Initialise from a local state-dict file instead of the Hub "
                                           "(.safetensors, or .pth/.pt read with weights_only=True); keys "
                                           "of another naming are mapped by order and shape.")
    image_size: int = _flag(64, "Model input size in pixels (EuroSAT patches are 64 x 64).")
    epochs: int = _flag(10, "Number of training epochs.")
    batch_size: int = _flag(64, "Per-device training batch size.")
    eval_batch_size: int = _flag(256, "Per-device evaluation batch size.")
    lr: float = _flag(1e-3, "Peak learning rate (AdamW), scaled by nothing: set it for your global batch.")
    weight_decay: float = _flag(0.05, "AdamW weight decay (not applied to norms and biases).")
    warmup_epochs: float = _flag(1.0, "Linear warm-up length in epochs, then cosine decay to zero.")
    label_smoothing: float = _flag(0.1, "Label smoothing of the cross-entropy loss.")
    drop_rate: float = _flag(0.2, "Dropout before the classifier (timm drop_rate).")
    freeze_epochs: int = _flag(0, "Train only the classifier for this many epochs, then unfreeze all.")
    grad_accum: int = _flag(1, "Gradient accumulation steps.")
    crop_scale: float = _flag(0.8, "Smallest area fraction of the random crop (1.0 disables cropping).")
    jitter: float = _flag(0.1, "Strength of brightness/contrast/saturation jitter (0 disables it).")
    radiometric: float = _flag(0.5, "Share of training images given a random radiometric change (gamma, haze, "
                               "gain/offset per band, hue; see transforms.RADIOMETRY_RANGES), for robustness to "
                               "other stretches, L2A products and hazy scenes (0 disables it).")
    band_gain: float = _flag(0.15, "With --radiometric: largest per-band gain change, uniform in 1 +- this "
                             "(on top of the global gain), e.g. 0.25 against colour casts of 0.8-1.2 per band.")
    jpeg: float = _flag(0.25, "Share of training images re-encoded as JPEG at a random quality (60-95) before "
                        "cropping, for robustness to JPEG quick-looks and screenshots (0 disables it).")
    teacher: Optional[str] = _flag(None, "Consistency distillation: a model folder (or local-dir:/hf-hub: "
                                   "reference) whose predictions on each training view *without* the "
                                   "radiometric and JPEG change are soft targets for the student's prediction "
                                   "on the changed view. It may take another input size: it sees the same "
                                   "crop at its own size.")
    distill_weight: float = _flag(0.7, "With --teacher: loss = (1 - w) x cross-entropy + w x T^2 x KL(teacher || "
                                  "student) at temperature T.")
    distill_temperature: float = _flag(2.0, "With --teacher: the softmax temperature T of both distributions.")
    ema_decay: float = _flag(0.0, "Also keep an exponential moving average of the weights (timm ModelEmaV3) with "
                             "this decay, e.g. 0.998; each epoch the better of EMA and raw weights on validation "
                             "competes for best epoch (0 disables it).")
    select_tta: bool = _flag(True, "After training, choose the test-time augmentation (none, hflip, flips, d4) on "
                             "validation and fit one temperature per mode there (calibrated probabilities).")
    seed: int = _flag(42, "Seed for the split, initialisation, shuffling and augmentation.")
    val_fraction: float = _flag(0.1, "Validation fraction when the dataset has no validation split.")
    test_fraction: float = _flag(0.2, "Test fraction when the dataset has no test split.")
    allow_custom_classes: bool = _flag(False, "Accept class names other than the ten EuroSAT classes.")
    max_train_samples: Optional[int] = _flag(None, "Use a stratified subset of this many training images.")
    num_workers: int = _flag(0, "DataLoader workers. Images are decoded once into memory, so 0 is fastest.")
    output_dir: str = _flag("runs/eurosat", "Folder for checkpoints and the final model folder.")
    resume: bool = _flag(False, "Continue from the latest complete checkpoint in --output-dir.")
    channels_last: bool = _flag(True, "Use channels_last memory format (faster convolutions).")
    compile: bool = _flag(False, "torch.compile the model.")
    save_fp16: bool = _flag(False, "Store the final weights in float16 (half the size).")
    report_to: Optional[str] = _flag(None, "Experiment tracker for accelerate (tensorboard, trackio, wandb, all).")
    log_every: int = _flag(50, "Check the loss and update the progress bar every N optimiser steps.")
    keep_checkpoints: int = _flag(2, "How many epoch checkpoints to keep.")
    examples: bool = _flag(True, "Write one correctly classified test patch per class to examples/.")
    push_to_hub: Optional[str] = _flag(None, "Upload the model folder to this Hub repo id after evaluation.")
    hub_private: bool = _flag(False, "Create the Hub repository as private.")
    hub_revision: Optional[str] = _flag(None, "Branch of the Hub repository to push to.")
    max_steps: Optional[int] = _flag(None, "Stop after this many optimiser steps in total (smoke tests).")


def to_json(config: Any, path: str | Path) -> None:
    """Write a config dataclass to ``path`` as indented JSON."""
    Path(path).write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")


def from_json(cls: type, path: str | Path) -> Any:
    """Read a config dataclass back; unknown keys raise so that stale files are noticed."""
    data = json.loads(Path(path).read_text())
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{path}: unknown {cls.__name__} fields {unknown}; expected a subset of {sorted(names)}.")
    return cls(**data)


def _base_type(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one kebab-case flag per dataclass field (booleans get ``--x/--no-x``)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        tp = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            parser.add_argument(flag, type=tp, default=default, help=help_text)
