"""Model references -> local folders -> loaded models, and pushing folders. The only module that talks to the Hub.

A reference is the embedded default model, a local folder or a Hub id ``org/name[@revision]``; Hub ids
resolve through the HF cache (so a model pulled once loads offline). Only safetensors weights are ever
read or uploaded; pickles are refused, and no remote code is run. Writing a folder: :mod:`landcover.training.model_folder`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from landcover.core.labels import EUROSAT_CLASSES
from landcover.models.factory import create_model

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "default_model"
WEIGHTS = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt", ".pkl", ".pickle")
# What a pull downloads and a push uploads (never checkpoints, never pickles).
MODEL_FILES = ["config.json", WEIGHTS, "train_config.json", "metrics.json", "splits.json", "README.md",
               "*.png", "examples/*", "onnx/*"]
# Belt and braces on top of MODEL_FILES: resumable checkpoints, temp dirs and pickles never leave the machine.
PUSH_IGNORE = ["checkpoints/*", "*.tmp/*", ".*", *(f"*{suffix}" for suffix in PICKLE_SUFFIXES)]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


class UnsafeWeightsError(ValueError):
    """A model folder offers only pickled weights, which can run arbitrary code when loaded."""


class PushError(RuntimeError):
    """An upload to the Hub failed; the local folder is untouched."""


# ---------------------------------------------------------------- resolving and loading


def split_revision(ref: str) -> tuple[str, Optional[str]]:
    """``org/name@rev`` -> ``("org/name", "rev")``; no ``@`` -> revision ``None``."""
    repo, _, revision = ref.partition("@")
    return repo, revision or None


def is_hub_id(ref: str) -> bool:
    """Whether ``ref`` has the shape of a Hub id ``org/name[@revision]``."""
    return bool(_HUB_ID.match(ref))


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
    if not is_hub_id(ref):
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
    if Path(ref).expanduser().exists() or not is_hub_id(ref):
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


def read_json(path: Path) -> dict:
    """A JSON file of a model folder, or ``{}`` when the folder has none."""
    return json.loads(path.read_text()) if path.is_file() else {}


def _label_names(folder: Path, config: dict) -> list[str]:
    """The class names of config.json; a plain 10-class timm config without names is taken as EuroSAT."""
    names = config.get("label_names")
    if names:
        return list(names)
    if config.get("num_classes", len(EUROSAT_CLASSES)) == len(EUROSAT_CLASSES):
        return list(EUROSAT_CLASSES)
    raise ValueError(f"{folder / 'config.json'} has {config['num_classes']} classes but no 'label_names'; "
                     f"expected label_names listing each class (train.py writes them).")


def load_model(ref: Optional[str] = None) -> LoadedModel:
    """Load a model folder (local, Hub or default) in eval mode, reading safetensors only."""
    from safetensors.torch import load_file

    folder = resolve_model_dir(ref)
    weights = check_safe_weights(folder)
    config = read_json(folder / "config.json")
    if "architecture" not in config:
        raise ValueError(f"{folder / 'config.json'} has no 'architecture'; expected a timm config.json.")
    label_names = _label_names(folder, config)
    model = create_model(f"local-dir:{folder}", num_classes=len(label_names), label_names=label_names)
    state = load_file(str(weights))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    model.eval()
    return LoadedModel(model, folder, ref or "default", config, read_json(folder / "metrics.json"),
                       read_json(folder / "train_config.json"))


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
