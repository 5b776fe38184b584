"""ONNX Runtime backend of :class:`landcover.inference.predictor.Predictor` (``--backend onnx`` / ``int8`` / ``auto``).

The graph takes **uint8 pixels** ``(N, 3, H, W)`` and does the model's preprocessing itself (antialiased
bilinear resize to the input size, ``/255``, mean/std), so a request costs one ``session.run`` and no
float copy on the Python side; the resize and normalisation are the same operations as
:func:`landcover.data.transforms.preprocess` (probabilities within 1e-4 of the torch backend).

Where the graph comes from, first match wins:

1. **Shipped with the model** in ``<folder>/onnx/`` (written by :func:`write_shipped_graphs`,
   ``python -m landcover export-onnx FOLDER``): ``model.graph.onnx`` is the float graph *without* its
   weights, which are read from ``model.safetensors`` at load (so the float path costs the folder ~0.1 MB),
   and ``model.int8.onnx`` the statically quantised graph (see :mod:`landcover.inference.quantize`). ``onnx.json``
   records the SHA-256 of ``model.safetensors`` and of each graph; a graph whose checksums do not match is
   ignored (the weights changed since the export).
2. **Exported on first use and cached** (float only), keyed by a hash of the weights and config: in
   ``<folder>/.onnx-cache/`` when that folder is ours to write; for the embedded model, a Hub download or a
   read-only folder in ``$LANDCOVER_ONNX_CACHE`` or ``~/.cache/landcover/onnx``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

import numpy as np

from landcover.core.defaults import default_threads

if TYPE_CHECKING:
    from landcover.data.transforms import InputSpec

logger = logging.getLogger(__name__)

# Bump when the exported graph changes (inputs, outputs, opset), so stale files are not reused.
EXPORT_VERSION = 2  # 2: uint8 pixels in, preprocessing inside the graph
INPUT_NAME, OUTPUT_NAME = "pixels", "logits"
CACHE_SUBDIR = ".onnx-cache"
SHIPPED_DIR = "onnx"  # inside a model folder (and its Hub repo)
MANIFEST = "onnx.json"
FLOAT_GRAPH = "model.graph.onnx"  # float graph whose weights come from model.safetensors
INT8_GRAPH = "model.int8.onnx"
WEIGHTS = "model.safetensors"
PRECISIONS = ("float", "int8")

__all__ = ["OnnxModel", "load_onnx", "export_onnx", "write_float_graph", "shipped_status", "session_options",
           "default_threads", "cache_path", "user_cache_dir", "sha256_file", "read_manifest"]


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


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file (read in 4 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_key(folder: Path, input_size: int) -> str:
    """Hash of what an exported graph depends on: weights, config, input size and export version."""
    h = hashlib.sha256(f"landcover-onnx-v{EXPORT_VERSION}-{input_size}".encode())
    for name in ("config.json", WEIGHTS):
        path = folder / name
        if path.is_file():
            h.update(sha256_file(path).encode())
    return h.hexdigest()[:20]


def cache_path(folder: Path, input_size: int, packaged: bool = False) -> Path:
    """Where the exported float ``.onnx`` of a model folder is cached (see the module docstring)."""
    folder = Path(folder)
    name = f"model-{weights_key(folder, input_size)}.onnx"
    local = folder / CACHE_SUBDIR
    if not packaged and not _in_hf_cache(folder) and _writable(local if local.is_dir() else folder):
        return local / name
    return user_cache_dir() / name


def _writable(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


# ---------------------------------------------------------------- export


def pixel_model(model, input_size: int, mean: Sequence[float], std: Sequence[float]):
    """``model`` with the inference preprocessing in front: uint8 ``(N, 3, H, W)`` -> logits."""
    import torch
    import torch.nn.functional as F

    class PixelModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model
            self.register_buffer("mean255", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
            self.register_buffer("inv_std255", 1.0 / (torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
                                                      * 255.0))

        def forward(self, x):
            # As transforms.preprocess: antialiased bilinear resize (identity at the input size), then
            # (x / 255 - mean) / std, written as (x - 255 mean) / (255 std).
            x = F.interpolate(x.float(), size=(input_size, input_size), mode="bilinear", antialias=True,
                              align_corners=False)
            return self.m((x - self.mean255) * self.inv_std255)

    return PixelModel().eval()


def export_onnx(model, path: Path, input_size: int, mean: Sequence[float], std: Sequence[float],
                optimize: bool = True) -> Path:
    """Export ``model`` (eval, float32) with its preprocessing to ``path``: dynamic batch and image size.

    ``optimize=False`` keeps the weights as the state dict has them (batch norms unfolded, names from the
    parameters), which :func:`write_float_graph` needs to read them back from ``model.safetensors``;
    ONNX Runtime folds them at session creation, so both run at the same speed.
    Written to a temporary file first and renamed, so a concurrent reader never sees half a file.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = pixel_model(model.eval().float(), input_size, mean, std)
    example = torch.zeros(2, 3, 64, 64, dtype=torch.uint8)
    dims = ({0: torch.export.Dim("batch", min=1, max=65536), 2: torch.export.Dim("height", min=8, max=8192),
             3: torch.export.Dim("width", min=8, max=8192)},)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".onnx.tmp", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not the user's business
            torch.onnx.export(wrapped, (example,), tmp, dynamo=True, external_data=False, verbose=False,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=dims,
                              optimize=optimize)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache file is readable like any other
        os.replace(tmp, path)
    except Exception as err:
        Path(tmp).unlink(missing_ok=True)
        raise RuntimeError(f"ONNX export of {type(model).__name__} failed ({type(err).__name__}: {err}). "
                           f"Use --backend torch for this model.") from err
    return path


def write_float_graph(full_graph: Path, weights: Path, out: Path) -> dict:
    """Write ``full_graph`` without the initializers that ``weights`` (safetensors) holds bit for bit.

    Returns ``{onnx initializer name: safetensors key}`` for :func:`fill_weights`. Initializers that are
    not in the safetensors (preprocessing constants) stay in the graph.
    """
    import onnx
    from onnx import numpy_helper
    from safetensors.numpy import load_file

    graph = onnx.load(str(full_graph))
    state = load_file(str(weights))
    by_name = {}
    for key in state:
        by_name[key] = key
        by_name[f"m.{key}"] = key  # pixel_model wraps the network as attribute "m"
    kept, mapping = [], {}
    for init in graph.graph.initializer:
        key = by_name.get(init.name)
        value = numpy_helper.to_array(init)
        if key is not None and state[key].shape == value.shape and np.array_equal(
                state[key].astype(np.float32), value):
            mapping[init.name] = key
        else:
            kept.append(init)
    del graph.graph.initializer[:]
    graph.graph.initializer.extend(kept)
    strip_debug_info(graph)
    del graph.graph.value_info[:]
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(graph, str(out))
    return mapping


def strip_debug_info(graph) -> None:
    """Remove the exporter's per-node stack traces (most of a graph's size, and they name this machine's paths)."""
    for node in graph.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""


def fill_weights(graph_path: Path, weights: "Path | Mapping[str, np.ndarray]", mapping: dict) -> bytes:
    """The serialized float graph of :func:`write_float_graph` with its weights read from ``weights`` (the model
    folder's safetensors file, or a state dict of numpy arrays: e.g. statistics adapted to a scene)."""
    import onnx
    from onnx import numpy_helper
    from safetensors.numpy import load_file

    graph = onnx.load(str(graph_path))
    state = weights if isinstance(weights, Mapping) else load_file(str(weights))
    missing = sorted(set(mapping.values()) - set(state))
    if missing:
        raise ValueError(f"{weights} lacks {len(missing)} tensors the ONNX graph needs (e.g. {missing[0]!r}).")
    graph.graph.initializer.extend(numpy_helper.from_array(np.ascontiguousarray(state[key], dtype=np.float32),
                                                           name) for name, key in mapping.items())
    return optimized(graph).SerializeToString()


def optimized(graph):
    """``graph`` (an ``onnx.ModelProto`` as the exporter wrote it, unoptimised) with constants folded and batch
    norms fused into the convolutions by the onnxscript optimizer.

    The unoptimised export wraps every batch norm's parameters in ``CastLike``/``Expand`` nodes, which stops
    ONNX Runtime from fusing conv + batch norm + ReLU6: on the 2-core machine a batch of 64 patches took 1,125 ms
    that way and 157 ms optimised (0.7 s at load; logits within 5e-6). Falls back to the graph as it is, with a
    warning, when onnxscript is missing or fails.
    """
    try:
        import onnxscript

        return onnxscript.optimizer.optimize(graph)
    except Exception as err:  # noqa: BLE001 - any optimizer failure leaves a correct, slower graph
        warnings.warn(f"ONNX graph optimisation failed ({type(err).__name__}: {err}); running it unoptimised "
                      f"(several times slower).")
        return graph


# ---------------------------------------------------------------- shipped graphs


def read_manifest(folder: Path) -> Optional[dict]:
    """``<folder>/onnx/onnx.json``, or None when the folder ships no ONNX graphs."""
    path = Path(folder) / SHIPPED_DIR / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        logger.warning("%s is unreadable (%s); ignoring the shipped ONNX graphs", path, err)
        return None


def shipped_status(folder: Path, precision: str, input_size: int, mean: Sequence[float], std: Sequence[float]
                   ) -> tuple[Optional[dict], str]:
    """``(entry, "")`` when the folder ships a usable ``precision`` graph, else ``(None, why not)``.

    Usable: the manifest's export version, preprocessing and ``model.safetensors`` checksum match, and
    the graph file's checksum matches its entry.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        return None, f"{folder} ships no {SHIPPED_DIR}/{MANIFEST}"
    entry = (manifest.get("graphs") or {}).get(precision)
    if not entry:
        return None, f"{folder / SHIPPED_DIR / MANIFEST} lists no {precision} graph"
    if manifest.get("export_version") != EXPORT_VERSION:
        return None, (f"the shipped graphs are export version {manifest.get('export_version')}, this code reads "
                      f"{EXPORT_VERSION}")
    pre = manifest.get("preprocessing") or {}
    if (pre.get("input_size") != input_size or not np.allclose(pre.get("mean", []), mean)
            or not np.allclose(pre.get("std", []), std)):
        return None, f"the shipped graphs were exported for other preprocessing ({pre})"
    weights = folder / WEIGHTS
    if not weights.is_file() or sha256_file(weights) != manifest.get("weights_sha256"):
        return None, f"{WEIGHTS} changed since the ONNX export (checksum differs)"
    graph = folder / SHIPPED_DIR / entry["file"]
    if not graph.is_file() or sha256_file(graph) != entry.get("sha256"):
        return None, f"{graph.name} is missing or its checksum differs from {MANIFEST}"
    return {**entry, "path": graph}, ""


def write_manifest(folder: Path, graphs: dict, input_size: int, mean, std) -> Path:
    """Record the shipped graphs of ``folder`` (checksums of the weights and of each graph) in onnx.json."""
    folder = Path(folder)
    out = folder / SHIPPED_DIR / MANIFEST
    manifest = {
        "export_version": EXPORT_VERSION,
        "input": {"name": INPUT_NAME, "dtype": "uint8", "layout": "NCHW RGB, any size (resized in the graph)"},
        "output": {"name": OUTPUT_NAME, "meaning": "logits; divide by config.json's temperature, then softmax"},
        "preprocessing": {"input_size": int(input_size), "mean": [float(v) for v in mean],
                          "std": [float(v) for v in std]},
        "weights_sha256": sha256_file(folder / WEIGHTS),
        "graphs": {k: {**v, "sha256": sha256_file(folder / SHIPPED_DIR / v["file"])} for k, v in graphs.items()},
    }
    out.write_text(json.dumps(manifest, indent=1) + "\n")
    return out


# ---------------------------------------------------------------- sessions


def session_options(threads: Optional[int] = None):
    """CPU session options for small batches on a few cores."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads or default_threads()
    so.inter_op_num_threads = 1  # one graph at a time; parallelism is inside the ops
    so.log_severity_level = 3
    # No busy-waiting between runs: other work (decoding, the next request) runs on the same cores.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


class OnnxModel:
    """An ONNX Runtime session: uint8 pixels ``(N, 3, H, W)`` (numpy) -> float32 logits ``(N, C)`` (numpy).

    Attributes:
        path: The graph file (for a shipped float graph, the weight-less graph file).
        precision: ``float`` or ``int8``.
        source: ``shipped`` (from the model folder) or ``cache`` (exported here).
        threads: Intra-op threads.
    """

    def __init__(self, path: Path, threads: Optional[int] = None, precision: str = "float", source: str = "cache",
                 model_bytes: Optional[bytes] = None):
        import onnxruntime as ort

        self.path, self.precision, self.source = Path(path), precision, source
        self.threads = threads or default_threads()
        self.session = ort.InferenceSession(model_bytes if model_bytes is not None else str(self.path),
                                            session_options(self.threads), providers=["CPUExecutionProvider"])
        self._run = self.session.run

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        if pixels.dtype != np.uint8:
            raise ValueError(f"Expected uint8 pixels (N, 3, H, W); got {pixels.dtype}.")
        return self._run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(pixels)})[0]


def load_onnx(model, folder: Path, spec: "InputSpec", threads: Optional[int] = None, packaged: bool = False,
              precision: str = "float", export: bool = True) -> OnnxModel:
    """The ONNX session of a model folder: its shipped graph when valid, else (float only) a cached export.

    Args:
        model: The torch model (exported when nothing shipped or cached fits and ``export`` is set).
        folder: The model folder.
        spec: The model's preprocessing (input size, mean, std; :class:`~landcover.data.transforms.InputSpec`).
        threads: Intra-op threads (default: the cores this process may use).
        packaged: The folder is the embedded model inside the package (never write caches into it).
        precision: ``float`` or ``int8`` (int8 is shipped only: see :mod:`landcover.inference.quantize`).
        export: Export the float graph when no valid one is shipped (False: raise instead).

    Raises:
        ValueError: ``int8`` (or ``export=False``) asked for and the folder ships no valid graph.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown ONNX precision {precision!r}; expected one of {PRECISIONS}.")
    input_size, mean, std = spec.size, spec.mean, spec.std
    folder = Path(folder)
    entry, why = shipped_status(folder, precision, input_size, mean, std)
    if entry is not None:
        if precision == "int8":
            return OnnxModel(entry["path"], threads, "int8", "shipped")
        data = fill_weights(entry["path"], folder / WEIGHTS, entry["weights"])
        return OnnxModel(entry["path"], threads, "float", "shipped", model_bytes=data)
    if precision == "int8" or not export:
        raise ValueError(f"No usable {precision} ONNX graph in {folder}: {why}. Write one with "
                         f"`python -m landcover export-onnx {folder} --data EUROSAT_DIR`, or use --backend onnx.")
    path = cache_path(folder, input_size, packaged=packaged)
    if not path.is_file():
        logger.info("Exporting %s to ONNX at %s (once per weights file)", folder, path)
        export_onnx(model, path, input_size, mean, std)
    try:
        return OnnxModel(path, threads)
    except Exception as err:  # a corrupt cache file (e.g. disk full at write time): export again
        logger.warning("Cached ONNX file %s is unusable (%s); exporting again", path, err)
        export_onnx(model, path, input_size, mean, std)
        return OnnxModel(path, threads)
