"""ONNX Runtime backend for :class:`landcover.predict.Predictor` (``--backend onnx``).

The torch model is exported once with ``torch.onnx.export`` (the ``torch.export``-based exporter, a
dynamic batch axis) and cached, keyed by a hash of the weights and config, so a changed model is
re-exported and an unchanged one loads in milliseconds. The cache lives next to the model folder
(``<folder>/.onnx-cache/``) when that folder is ours to write; for the embedded default model, a Hub
download (never written into the read-only HF cache snapshot) or a read-only folder it lives in
``$LANDCOVER_ONNX_CACHE`` or ``~/.cache/landcover/onnx``.

The graph takes the *normalised* float batch, so :func:`landcover.transforms.preprocess` stays the one
inference preprocessing for both backends.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

logger = logging.getLogger(__name__)

# Bump when the exported graph changes (inputs, outputs, opset), so stale cache files are not reused.
EXPORT_VERSION = 1
INPUT_NAME, OUTPUT_NAME = "pixels", "logits"
CACHE_SUBDIR = ".onnx-cache"


def default_threads() -> int:
    """Cores this process may run on (cgroup/affinity aware), the sensible intra-op thread count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def user_cache_dir() -> Path:
    """``$LANDCOVER_ONNX_CACHE``, else ``$XDG_CACHE_HOME/landcover/onnx``, else ``~/.cache/landcover/onnx``."""
    if os.environ.get("LANDCOVER_ONNX_CACHE"):
        return Path(os.environ["LANDCOVER_ONNX_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "landcover" / "onnx"


def _in_hf_cache(folder: Path) -> bool:
    # A Hub snapshot is .../models--org--name/snapshots/<sha>/: files there are the cache's, never ours.
    parts = folder.resolve().parts
    return any(p.startswith("models--") for p in parts) and "snapshots" in parts


def weights_key(folder: Path, input_size: int) -> str:
    """Hash of what the exported graph depends on: weights, config, input size and export version."""
    h = hashlib.sha256(f"landcover-onnx-v{EXPORT_VERSION}-{input_size}".encode())
    for name in ("config.json", "model.safetensors"):
        path = folder / name
        if path.is_file():
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    h.update(chunk)
    return h.hexdigest()[:20]


def cache_path(folder: Path, input_size: int, packaged: bool = False) -> Path:
    """Where the ``.onnx`` of a model folder is cached (see the module docstring)."""
    folder = Path(folder)
    name = f"model-{weights_key(folder, input_size)}.onnx"
    local = folder / CACHE_SUBDIR
    if not packaged and not _in_hf_cache(folder) and _writable(local if local.is_dir() else folder):
        return local / name
    return user_cache_dir() / name


def _writable(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def export_onnx(model: torch.nn.Module, path: Path, input_size: int) -> Path:
    """Export ``model`` (eval, float32, any memory format) to ``path`` with a dynamic batch axis.

    Written to a temporary file first and renamed, so a concurrent reader never sees half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    example = torch.zeros(2, 3, input_size, input_size)
    batch = torch.export.Dim("batch", min=1, max=65536)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".onnx.tmp", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not the user's business
            torch.onnx.export(model, (example,), tmp, dynamo=True, external_data=False, verbose=False,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes=({0: batch},), optimize=True)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache file is readable like any other
        os.replace(tmp, path)
    except Exception as err:
        Path(tmp).unlink(missing_ok=True)
        raise RuntimeError(f"ONNX export of {type(model).__name__} failed ({type(err).__name__}: {err}). "
                           f"Use --backend torch for this model.") from err
    return path


def session_options(threads: Optional[int] = None):
    """CPU session options for small-batch latency on a few cores."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads or default_threads()
    so.inter_op_num_threads = 1  # one graph at a time; parallelism is inside the ops
    so.log_severity_level = 3
    # No busy-waiting between runs: torch ops (preprocessing, softmax) run on the same cores right after.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


class OnnxModel:
    """An ONNX Runtime session that maps a normalised float ``(N, 3, S, S)`` batch to logits."""

    def __init__(self, path: Path, threads: Optional[int] = None):
        import onnxruntime as ort

        self.path = Path(path)
        self.threads = threads or default_threads()
        self.session = ort.InferenceSession(str(self.path), session_options(self.threads),
                                            providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run([OUTPUT_NAME], {INPUT_NAME: array})[0])


def load_onnx(model: torch.nn.Module, folder: Path, input_size: int, threads: Optional[int] = None,
              packaged: bool = False) -> OnnxModel:
    """The cached ONNX session of a model folder, exporting it on first use."""
    path = cache_path(folder, input_size, packaged=packaged)
    if not path.is_file():
        logger.info("Exporting %s to ONNX at %s (once per weights file)", folder, path)
        export_onnx(model, path, input_size)
    try:
        return OnnxModel(path, threads)
    except Exception as err:  # a corrupt cache file (e.g. disk full at write time): export again
        logger.warning("Cached ONNX file %s is unusable (%s); exporting again", path, err)
        export_onnx(model, path, input_size)
        return OnnxModel(path, threads)
