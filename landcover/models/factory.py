"""The project's only timm model factory, plus freezing and local-checkpoint initialisation."""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path
from typing import Optional, Sequence

import torch

logger = logging.getLogger(__name__)


def create_model(name: str, *, num_classes: int, pretrained: bool = False, drop_rate: float = 0.0,
                 image_size: Optional[int] = None, label_names: Optional[Sequence[str]] = None,
                 init_checkpoint: Optional[str] = None) -> torch.nn.Module:
    """Build a timm classifier and make its ``pretrained_cfg`` describe *our* preprocessing.

    Args:
        name: timm architecture, optionally ``name.tag`` (e.g. ``wide_resnet50_2.racm_in1k``), or a
            ``local-dir:``/``hf-hub:`` reference (then the saved config decides the architecture).
        num_classes: Size of the (new) linear head.
        pretrained: Load the tag's ImageNet weights (from the Hub / HF cache).
        drop_rate: Dropout before the classifier.
        image_size: Input size recorded in ``pretrained_cfg`` (square).
        label_names: Class names recorded in ``pretrained_cfg['label_names']``.
        init_checkpoint: Local state-dict to initialise the backbone from (see :func:`load_mapped_checkpoint`).
    """
    import timm

    try:
        model = timm.create_model(name, pretrained=pretrained and not init_checkpoint, num_classes=num_classes,
                                  drop_rate=drop_rate)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ValueError(f"Unknown timm model {name!r}. Expected an architecture from timm.list_models(), "
                             f"e.g. 'wide_resnet50_2.racm_in1k' or 'resnet18'.") from err
        raise
    if init_checkpoint:
        load_mapped_checkpoint(model, init_checkpoint)
    cfg = dict(model.pretrained_cfg)
    if not pretrained or init_checkpoint:
        # These describe the tag's Hub weights, which were not loaded.
        for key in ("tag", "origin_url", "paper_ids", "hf_hub_id", "url"):
            cfg.pop(key, None)
    if image_size:
        cfg.pop("pool_size", None)
        cfg.update(input_size=(3, image_size, image_size), crop_pct=1.0, crop_mode="center",
                   interpolation="bilinear")
        cfg.pop("test_input_size", None)
        cfg.pop("test_crop_pct", None)
    if label_names is not None:
        cfg["label_names"] = list(label_names)
    cfg["num_classes"] = num_classes
    model.pretrained_cfg = cfg
    return model


def data_config(model: torch.nn.Module) -> dict:
    """Preprocessing that travels with the model (input size, mean, std, crop, interpolation), as timm
    resolves it from ``model.pretrained_cfg`` (:func:`create_model` states it once)."""
    from timm.data import resolve_model_data_config

    return resolve_model_data_config(model)


def _backbone_modules(model: torch.nn.Module) -> list[str]:
    """Names of the modules that hold every parameter outside the classifier (siblings along its path)."""
    head = model.get_classifier()
    path = next(name for name, module in model.named_modules() if module is head).split(".")
    names, parent, prefix = [], model, ""
    for part in path:
        names += [prefix + name for name, child in parent.named_children() if name != part
                  and any(True for _ in child.parameters())]
        parent, prefix = getattr(parent, part), prefix + part + "."
    return names


def set_backbone_frozen(model: torch.nn.Module, frozen: bool) -> None:
    """Freeze (or unfreeze) every parameter except the classifier's (``timm.utils.freeze``/``unfreeze``).

    BatchNorm statistics are kept fixed by :func:`train_mode` (eval mode), not by timm's
    ``include_bn_running_stats``: that swaps BatchNorm modules for ``FrozenBatchNorm2d``, which would leave
    the optimizer holding stale parameters after unfreezing and change the checkpoint's keys.
    """
    from timm.utils import freeze, unfreeze

    modules = _backbone_modules(model)
    (freeze if frozen else unfreeze)(model, modules, include_bn_running_stats=False)
    head = {id(p) for p in model.get_classifier().parameters()}
    owned = {id(p) for name in modules for p in model.get_submodule(name).parameters()}
    for p in model.parameters():  # parameters held by no submodule (a ViT's cls_token, pos_embed)
        if id(p) not in head and id(p) not in owned:
            p.requires_grad_(not frozen)


def train_mode(model: torch.nn.Module, frozen_backbone: bool = False) -> None:
    """``model.train()``; with ``frozen_backbone``, everything but the classifier stays in eval mode (fixed
    BatchNorm statistics, no dropout), so a frozen backbone really does not change."""
    model.train()
    if frozen_backbone:
        for name in _backbone_modules(model):
            model.get_submodule(name).eval()


def _read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.is_dir():  # a model folder written by train.py (continued training, e.g. at a larger size)
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"Initial checkpoint {path} not found. Expected a .safetensors or .pth state dict, "
                                f"or a model folder containing model.safetensors.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    # weights_only: a pickle can run code; only tensors and plain containers are accepted.
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only met a non-tensor object: refused, never executed
        found = re.search(r"Unsupported global: [^\n.]*", str(err))
        raise ValueError(
            f"--init-checkpoint {path} was refused: it is a pickle holding more than tensors "
            f"({found.group(0) if found else type(err).__name__}), which could run code when loaded, so it was not "
            f"executed. Expected a .safetensors file or a plain state dict; convert a file you trust with "
            f"safetensors.torch.save_file.") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


def load_mapped_checkpoint(model: torch.nn.Module, path: str | Path) -> list[str]:
    """Initialise ``model`` from a state dict whose keys may use another naming.

    Hand-written rather than timm's ``remap_state_dict``, which zips the two state dicts as they are: it
    cannot skip ``num_batches_tracked`` counters one side lacks nor leave a classifier of another size
    fresh, and it fails with ``assert`` instead of an error that names the fix.

    Keys are matched by name when they all exist in the model; otherwise by **order and shape**
    (e.g. ``efficientnet-lite0-57934424.pth`` from PyPI, with ``_conv_stem``/``_blocks.N`` names, into
    timm's ``efficientnet_lite0``). BatchNorm ``num_batches_tracked`` counters are ignored. A
    classifier of another size is left freshly initialised. Returns the model keys that were not loaded.

    Raises:
        ValueError: the tensors do not line up (different architecture).
    """
    source = {k: v for k, v in _read_state_dict(path).items() if not k.endswith("num_batches_tracked")}
    target = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    head = {f"{n}" for n, _ in model.get_classifier().named_parameters(prefix=_classifier_prefix(model))}
    if set(source) <= set(target):
        pairs = [(k, k) for k in source]
    else:
        if len(source) != len(target):
            raise ValueError(f"{path}: {len(source)} tensors, but {type(model).__name__} has {len(target)}; "
                             f"expected a checkpoint of the same architecture.")
        pairs = list(zip(source, target))
    mapped, skipped = {}, []
    for src_key, dst_key in pairs:
        if source[src_key].shape == target[dst_key].shape:
            mapped[dst_key] = source[src_key]
        elif dst_key in head:
            skipped.append(dst_key)
        else:
            raise ValueError(f"{path}: tensor {src_key!r} has shape {tuple(source[src_key].shape)} but model key "
                             f"{dst_key!r} expects {tuple(target[dst_key].shape)}; expected the same architecture.")
    missing = [k for k in target if k not in mapped]
    model.load_state_dict(mapped, strict=False)
    logger.info("Initialised %d tensors from %s; left %s at their initial values", len(mapped), path, missing)
    return missing


def _classifier_prefix(model: torch.nn.Module) -> str:
    head = model.get_classifier()
    for name, module in model.named_modules():
        if module is head:
            return name
    return ""


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
