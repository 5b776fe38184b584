"""The model card (``README.md``) of a model folder: Hub metadata plus a Markdown body.

The body is ``templates/model_card.md`` (``string.Template`` fields such as ``$test_accuracy``); this
module only computes the fields, so the wording can change without touching code.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from string import Template
from typing import Optional

from .config import TTA_MODES
from .hub import is_hub_id
from .labels import EUROSAT_CLASSES

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


def card_data(folder: Path, cfg, metrics: dict, label_names: list[str]):
    """``huggingface_hub.ModelCardData`` (the YAML front matter) with a model-index eval result."""
    from huggingface_hub import EvalResult, ModelCardData

    dataset_id = _hub_dataset_id(cfg.dataset, label_names)
    return ModelCardData(
        library_name="timm",
        license="apache-2.0",
        pipeline_tag="image-classification",
        tags=["image-classification", "timm", "remote-sensing", "sentinel-2", "eurosat", "land-cover"],
        datasets=[dataset_id] if dataset_id else None,
        base_model=_base_model(cfg),
        metrics=["accuracy", "f1"],
        model_name=folder.name,
        eval_results=[EvalResult(task_type="image-classification", dataset_type=dataset_id or "imagefolder",
                                 dataset_name="EuroSAT RGB", dataset_split="test", metric_type="accuracy",
                                 metric_value=round(metrics["test"]["accuracy"], 6),
                                 task_name="Land-cover classification")],
    )


def _inference_text(metrics: dict) -> str:
    mode = metrics.get("test_time_augmentation")
    if not mode:
        return "one forward pass per patch"
    plain = metrics.get("test_without_tta", {}).get("accuracy")
    views = TTA_MODES[mode].description if mode in TTA_MODES else mode
    without = f"; {plain:.4f} test accuracy without it" if plain is not None else ""
    return f"test-time augmentation `{mode}`: mean probability over {views} (set in config.json{without})"


def _stages(metrics: dict) -> list[dict]:
    return metrics.get("stages") or [{"command": metrics["command"], "training_time_s": metrics["training_time_s"]}]


def card_fields(folder: Path, cfg, metrics: dict, label_names: list[str]) -> dict[str, str]:
    """The template's fields (everything but ``yaml``), formatted."""
    test = metrics["test"]
    stages = _stages(metrics)
    minutes = sum(st["training_time_s"] for st in stages) / 60
    return {
        "name": folder.name,
        "architecture": cfg.model,
        "classes": ", ".join(label_names),
        "test_accuracy": f"{test['accuracy']:.4f}",
        "test_n": str(test["n"]),
        "test_macro_f1": f"{test['macro_f1']:.4f}",
        "best_epoch": str(metrics["best_epoch"]),
        "validation_accuracy": f"{metrics['validation']['accuracy']:.4f}",
        "dataset": str(metrics["dataset"]),
        "split": str(metrics["split"]),
        "split_sizes": str(metrics["split_sizes"]),
        "parameters": f"{metrics['parameters']:,}",
        "weights": f"{metrics['weights_bytes'] / 1e6:.2f} MB ({'float16' if cfg.save_fp16 else 'float32'} "
                   f"safetensors)",
        "image_size": str(cfg.image_size),
        "inference": _inference_text(metrics),
        "training_time": f"{minutes:.1f} min in {len(stages)} stage(s) on {metrics['hardware']}",
        "seed": str(cfg.seed),
        "per_class_rows": "\n".join(
            f"| {name} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |"
            for name, m in test["per_class"].items()),
        "stages": "\n\n".join(f"Stage {i + 1} ({st['training_time_s'] / 60:.1f} min):\n\n```bash\n{st['command']}\n```"
                              for i, st in enumerate(stages)),
    }


def build_model_card(folder: Path, cfg, metrics: dict, label_names: list[str]):
    """The ``huggingface_hub.ModelCard`` of a model folder.

    Args:
        folder: The model folder (its name titles the card).
        cfg: The run's :class:`landcover.config.TrainConfig`.
        metrics: The folder's ``metrics.json`` content.
        label_names: Class names in index order.
    """
    from huggingface_hub import ModelCard

    data = card_data(folder, cfg, metrics, label_names)
    return ModelCard(_template().substitute(yaml=data.to_yaml(), **card_fields(folder, cfg, metrics, label_names)))


def write_model_card(folder: Path, cfg, metrics: dict, label_names: list[str]) -> None:
    """Write ``folder/README.md``."""
    build_model_card(folder, cfg, metrics, label_names).save(folder / "README.md")
