"""Model folders: write, read, pull and push. The project's only ``huggingface_hub`` user.

A model folder is timm's Hub format (``config.json`` + ``model.safetensors``, loadable with plain
``timm.create_model('hf-hub:<repo>' | 'local-dir:<folder>', pretrained=True)``) plus the run's
``train_config.json``, ``metrics.json``, ``splits.json``, plots, ``examples/`` and a model card.
Only safetensors weights are ever read; pickles are refused, and no remote code is run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch

from .config import TTA_MODES
from .labels import EUROSAT_CLASSES, EUROSAT_DESCRIPTIONS
from .model import count_parameters, create_model, data_config

if TYPE_CHECKING:
    from .training import TrainResult

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
WEIGHTS = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt", ".pkl", ".pickle")
# What a pull downloads and a push uploads (never checkpoints, never pickles).
MODEL_FILES = ["config.json", WEIGHTS, "train_config.json", "metrics.json", "splits.json", "README.md",
               "*.png", "examples/*"]
# Belt and braces on top of MODEL_FILES: resumable checkpoints, temp dirs and pickles never leave the machine.
PUSH_IGNORE = ["checkpoints/*", "*.tmp/*", ".*", *(f"*{suffix}" for suffix in PICKLE_SUFFIXES)]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


class UnsafeWeightsError(ValueError):
    """A model folder offers only pickled weights, which can run arbitrary code when loaded."""


class PushError(RuntimeError):
    """An upload to the Hub failed; the local folder is untouched."""


# ---------------------------------------------------------------- resolving and loading


def split_revision(ref: str) -> tuple[str, Optional[str]]:
    repo, _, revision = ref.partition("@")
    return repo, revision or None


def resolve_model_dir(ref: Optional[str] = None) -> Path:
    """A local folder for a model reference, downloading through the HF cache when needed.

    Args:
        ref: ``None`` (the embedded default model), a local folder (optionally ``local-dir:...``), or a
            Hub id ``org/name[@revision]`` (optionally ``hf-hub:...``). Hub ids resolve through the HF
            cache, so a model pulled once loads with ``HF_HUB_OFFLINE=1``.
    """
    if ref is None or ref == "":
        if not (DEFAULT_MODEL_DIR / "config.json").is_file():
            raise FileNotFoundError(f"The embedded default model is missing from {DEFAULT_MODEL_DIR}. Reinstall "
                                    f"the project, or pass --model with a model folder or Hub id.")
        return DEFAULT_MODEL_DIR
    if ref.startswith("local-dir:"):
        ref = ref[len("local-dir:"):]
    local = Path(ref).expanduser()
    if local.is_dir():
        return local.resolve()
    if ref.startswith("hf-hub:"):
        ref = ref[len("hf-hub:"):]
    if not _HUB_ID.match(ref):
        raise FileNotFoundError(f"Model {ref!r} is neither a local folder nor a Hub id. Expected a folder "
                                f"containing config.json and {WEIGHTS}, or 'org/name[@revision]'.")
    return _download(ref)


def _download(ref: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo_id, revision = split_revision(ref)
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=MODEL_FILES,
                                      ignore_patterns=PUSH_IGNORE))
    except LocalEntryNotFoundError as err:
        raise FileNotFoundError(f"Model {ref!r} is not in the local HF cache and the Hub is unreachable "
                                f"(offline: {os.environ.get('HF_HUB_OFFLINE', '0')}). Run once with network "
                                f"access to cache it, or pass a local folder.") from err
    except HfHubHTTPError as err:
        raise FileNotFoundError(f"Could not download model {ref!r} from the Hub: {err}") from err


def hub_url(ref: Optional[str]) -> Optional[str]:
    """The Hub page of a model reference, or ``None`` for the default model and local folders."""
    if not ref or ref == "default":
        return None
    ref = ref[len("hf-hub:"):] if ref.startswith("hf-hub:") else ref
    if Path(ref).expanduser().exists() or not _HUB_ID.match(ref):
        return None
    repo_id, revision = split_revision(ref)
    return f"https://huggingface.co/{repo_id}" + (f"/tree/{revision}" if revision else "")


def check_safe_weights(folder: Path) -> Path:
    """The safetensors file of a folder; refuses folders that only offer pickles."""
    weights = folder / WEIGHTS
    if weights.is_file():
        return weights
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UnsafeWeightsError(
            f"{folder} has only pickled weights {pickles}; pickles can run arbitrary code when loaded, so they "
            f"are refused. Expected {WEIGHTS}. Convert a trusted file with safetensors.torch.save_file.")
    raise FileNotFoundError(f"{folder} has no {WEIGHTS}; expected a model folder written by train.py.")


@dataclass
class LoadedModel:
    """A model and everything its folder says about it."""

    model: torch.nn.Module
    folder: Path
    ref: str
    config: dict
    metrics: dict
    train_config: dict

    @property
    def label_names(self) -> list[str]:
        return list(self.model.pretrained_cfg["label_names"])


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def load_model(ref: Optional[str] = None) -> LoadedModel:
    """Load a model folder (local, Hub or default) in eval mode, reading safetensors only."""
    from safetensors.torch import load_file

    folder = resolve_model_dir(ref)
    weights = check_safe_weights(folder)
    config = _read_json(folder / "config.json")
    if "architecture" not in config:
        raise ValueError(f"{folder / 'config.json'} has no 'architecture'; expected a timm config.json.")
    label_names = config.get("label_names") or list(EUROSAT_CLASSES)[:config.get("num_classes", 10)]
    model = create_model(f"local-dir:{folder}", num_classes=config.get("num_classes", len(label_names)),
                         label_names=label_names)
    state = load_file(str(weights))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    model.eval()
    return LoadedModel(model, folder, ref or "default", config, _read_json(folder / "metrics.json"),
                       _read_json(folder / "train_config.json"))


# ---------------------------------------------------------------- writing


def save_model_folder(result: "TrainResult", command: Optional[str] = None) -> Path:
    """Write the whole model folder for a finished run into ``result.config.output_dir``."""
    from safetensors.torch import save_file
    import timm

    from . import plots
    from .config import to_json

    cfg = result.config
    folder = Path(cfg.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    # safetensors stores contiguous tensors only (channels_last weights are not)
    model = result.model.eval().to(memory_format=torch.contiguous_format)
    dc = data_config(model)
    label_names = result.data.class_names
    model_config = {"label_names": label_names}
    if label_names == list(EUROSAT_CLASSES):
        model_config["label_descriptions"] = EUROSAT_DESCRIPTIONS
    # Inference settings chosen on validation travel with the weights: every Predictor of the folder uses them.
    if result.metrics.get("test_time_augmentation"):
        model_config["test_time_augmentation"] = result.metrics["test_time_augmentation"]
    if "tta_selection" in result.metrics:
        model_config["temperature"] = result.metrics["tta_selection"]["temperature"]
    timm.models.save_for_hf(model, folder, model_config=model_config, safe_serialization=True,
                            data_config={"input_size": dc["input_size"], "mean": dc["mean"], "std": dc["std"],
                                         "crop_pct": 1.0, "interpolation": "bilinear"})
    if cfg.save_fp16:
        state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(folder / WEIGHTS))
    to_json(cfg, folder / "train_config.json")
    metrics = dict(result.metrics)
    metrics.update(
        parameters=count_parameters(model),
        weights_bytes=(folder / WEIGHTS).stat().st_size,
        training_time_s=round(result.wall_time_s, 1),
        hardware=result.hardware,
        seed=cfg.seed,
        command=command or _command_line(),
    )
    metrics["stages"] = _previous_stages(cfg.init_checkpoint) + [
        {"command": metrics["command"], "training_time_s": metrics["training_time_s"], "epochs": cfg.epochs,
         "image_size": cfg.image_size, "hardware": result.hardware}]
    metrics["total_training_time_s"] = round(sum(st["training_time_s"] for st in metrics["stages"]), 1)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (folder / "splits.json").write_text(json.dumps(
        {"source": result.data.source, "origin": result.data.split_origin, "seed": cfg.seed,
         "files": result.data.split_files()}, indent=1) + "\n")
    plots.confusion_matrix_png(metrics["test"]["confusion_matrix"], label_names, folder / "confusion_matrix.png")
    plots.training_curves_png(result.history, folder / "training_curves.png")
    if cfg.examples:
        write_examples(result.examples, folder / "examples", result.data.source)
    write_model_card(folder, cfg, metrics, label_names)
    return folder


def _previous_stages(init_checkpoint: Optional[str]) -> list[dict]:
    """Training stages of the model folder this run was initialised from (their metrics.json)."""
    if not init_checkpoint:
        return []
    path = Path(init_checkpoint)
    metrics = _read_json((path if path.is_dir() else path.parent) / "metrics.json")
    if "stages" in metrics:
        return list(metrics["stages"])
    if "command" in metrics:  # a folder written before stages were recorded
        return [{"command": metrics["command"], "training_time_s": metrics.get("training_time_s", 0.0),
                 "epochs": len(metrics.get("history", [])), "image_size": None,
                 "hardware": metrics.get("hardware", "")}]
    return []


def record_test_evaluation(folder: str | Path, result: dict) -> None:
    """Make a test evaluation (``evaluate_model`` output) the folder's reported one.

    With test-time augmentation, config.json gets ``test_time_augmentation: <mode>`` (so every Predictor
    of this folder uses it) and the evaluation without it is kept as ``test_without_tta``.
    """
    from . import plots
    from .config import TrainConfig, from_json

    folder = Path(folder)
    metrics = _read_json(folder / "metrics.json")
    config = _read_json(folder / "config.json")
    tta = result.get("test_time_augmentation")
    keys = ("accuracy", "macro_f1", "n", "per_class", "confusion_matrix")
    if tta and "test_without_tta" not in metrics:
        metrics["test_without_tta"] = metrics["test"]
    metrics["test"] = {k: result[k] for k in keys}
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
    return " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])


def _hub_dataset_id(cfg_dataset: str, label_names: list[str]) -> str:
    if not Path(cfg_dataset).expanduser().exists() and _HUB_ID.match(cfg_dataset):
        return cfg_dataset
    return "timm/eurosat-rgb" if label_names == list(EUROSAT_CLASSES) else ""


def _base_model(cfg) -> Optional[str]:
    if not cfg.pretrained or cfg.init_checkpoint:
        return None
    import timm
    try:
        return timm.models.get_pretrained_cfg(cfg.model).hf_hub_id or None
    except Exception:
        return None


def build_model_card(folder: Path, cfg, metrics: dict, label_names: list[str]):
    """The ``huggingface_hub.ModelCard`` of a model folder, with model-index eval results."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    test = metrics["test"]
    dataset_id = _hub_dataset_id(cfg.dataset, label_names)
    data = ModelCardData(
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
                                 metric_value=round(test["accuracy"], 6), task_name="Land-cover classification")],
    )
    rows = "\n".join(f"| {name} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |"
                     for name, m in test["per_class"].items())
    size_mb = metrics["weights_bytes"] / 1e6
    mode = metrics.get("test_time_augmentation")
    if mode:
        plain = metrics.get("test_without_tta", {}).get("accuracy")
        views = TTA_MODES[mode].description if mode in TTA_MODES else mode
        tta_text = (f"test-time augmentation `{mode}`: mean probability over {views} "
                    f"(set in config.json" + (f"; {plain:.4f} test accuracy without it)" if plain is not None else ")"))
    else:
        tta_text = "one forward pass per patch"
    stages = metrics.get("stages") or [{"command": metrics["command"], "training_time_s": metrics["training_time_s"]}]
    stages_md = "\n\n".join(
        f"Stage {i + 1} ({st['training_time_s'] / 60:.1f} min):\n\n```bash\n{st['command']}\n```"
        for i, st in enumerate(stages))
    content = f"""---
{data.to_yaml()}
---

# {folder.name}: EuroSAT land-cover classifier

A `timm` **{cfg.model}** fine-tuned on EuroSAT RGB (Sentinel-2, 64 x 64 px patches at 10 m) to the ten
land-cover classes {', '.join(label_names)}.

| | |
|---|---|
| test accuracy | **{test['accuracy']:.4f}** on {test['n']} held-out images |
| macro F1 | {test['macro_f1']:.4f} |
| validation accuracy (best epoch {metrics['best_epoch']}) | {metrics['validation']['accuracy']:.4f} |
| dataset | `{metrics['dataset']}`, {metrics['split']} |
| split sizes | {metrics['split_sizes']} |
| parameters | {metrics['parameters']:,} |
| weights | {size_mb:.2f} MB ({'float16' if cfg.save_fp16 else 'float32'} safetensors) |
| input | {cfg.image_size} x {cfg.image_size} RGB, whole patch (crop_pct 1.0), mean/std in config.json |
| inference | {tta_text} |
| training time | {sum(st['training_time_s'] for st in stages) / 60:.1f} min in {len(stages)} stage(s) on {metrics['hardware']} |
| seed | {cfg.seed} |

The test split was never used for training or model selection (the best epoch was chosen on validation).

## Use

```python
import timm, torch
model = timm.create_model("hf-hub:<this repo>", pretrained=True).eval()
labels = model.pretrained_cfg["label_names"]
```

or with this project: `from landcover.predict import Predictor; Predictor.load("<this repo>").predict([image])`.

## Per-class test metrics

| class | precision | recall | F1 | support |
|---|---|---|---|---|
{rows}

![confusion matrix](confusion_matrix.png)

![training curves](training_curves.png)

## Training command

{stages_md}

Full configuration: `train_config.json`; per-epoch history and confusion matrices: `metrics.json`;
exact file lists of each split: `splits.json`.

EuroSAT: Helber et al., "EuroSAT: A Novel Dataset and Deep Learning Benchmark for Land Use and Land Cover
Classification", IEEE JSTARS 2019 (MIT licence).
"""
    return ModelCard(content)


def write_model_card(folder: Path, cfg, metrics: dict, label_names: list[str]) -> None:
    build_model_card(folder, cfg, metrics, label_names).save(folder / "README.md")


# ---------------------------------------------------------------- pushing


def retry_command(folder: str | Path, repo_id: str, private: bool = False, revision: Optional[str] = None) -> str:
    parts = ["python", "-m", "landcover", "push", str(folder), repo_id]
    if private:
        parts.append("--private")
    if revision:
        parts += ["--revision", revision]
    return " ".join(shlex.quote(p) for p in parts)


def push_folder(folder: str | Path, repo_id: str, *, private: bool = False, revision: Optional[str] = None,
                token: Optional[str] = None, commit_message: str = "Upload EuroSAT land-cover model") -> str:
    """Upload a model folder (weights as safetensors only, never checkpoints) and return the commit URL.

    The token comes from ``token``, ``HF_TOKEN`` or ``hf auth login``; it is never printed or logged.

    Raises:
        PushError: on any failure, with the command to retry; the local folder is not modified.
    """
    from huggingface_hub import HfApi

    folder = Path(folder).resolve()  # absolute, so the retry command works from any directory
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a model folder (no config.json); expected the output "
                                f"folder of train.py.")
    check_safe_weights(folder)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        # Pattern lists are copied: upload_folder appends its defaults to them in place.
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", revision=revision,
                                 allow_patterns=list(MODEL_FILES), ignore_patterns=list(PUSH_IGNORE),
                                 commit_message=commit_message)
    except Exception as err:  # network, auth, permission: all end the same way for the user
        raise PushError(f"Push of {folder} to {repo_id} failed ({type(err).__name__}: {_redact(str(err), token)}). "
                        f"The local folder is unchanged. Retry with: "
                        f"{retry_command(folder, repo_id, private, revision)}") from None
    return str(getattr(info, "commit_url", info))


def _redact(text: str, token: Optional[str]) -> str:
    for secret in filter(None, [token, os.environ.get("HF_TOKEN")]):
        text = text.replace(secret, "***")
    return re.sub(r"hf_[A-Za-z0-9]{8,}", "hf_***", text)
