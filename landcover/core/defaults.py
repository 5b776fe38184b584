"""Inference defaults, stated once for every entry point (``predict``, ``evaluate``, ``map``, ``change``, the app).

Torch-free, so the command lines can show these defaults without importing torch.

Backends:

* ``torch``: eager PyTorch (any device).
* ``onnx``: ONNX Runtime, float32, same probabilities as torch (1e-4); the graph shipped in the model folder
  (``onnx/``, checked against ``model.safetensors``) or, without one, exported once and cached.
* ``int8``: the statically quantised ONNX graph shipped in the model folder (``python -m landcover export-onnx
  FOLDER --data DIR`` writes it and measures its accuracy cost).
* ``auto`` (the default): what the model folder ships and has verified: ``onnx`` when it ships a float graph,
  for scene maps ``int8`` when it ships one whose measured test-accuracy cost is at most
  :data:`INT8_MAX_ACCURACY_COST` points; otherwise ``torch``. ``auto`` never exports on the fly: a cold start
  costs no export, and a folder without ONNX files behaves as with ``torch``.

Whatever the backend, an ONNX graph that fails to load falls back to torch with a warning
(:func:`landcover.inference.predictor.load_predictor`, the one loader every entry point uses).
"""

from __future__ import annotations

import os
from typing import Optional, Union

BACKENDS = ("auto", "torch", "onnx", "int8")
DEFAULT_BACKEND = "auto"
# Tasks ``auto`` resolves for: single patches (exact probabilities) and scene maps (throughput).
TASKS = ("patches", "scenes")
INT8_MAX_ACCURACY_COST = 0.3  # accuracy points (test split, single pass) an int8 graph may lose to be chosen

# Test-time augmentation: None = the model's own setting (config.json), False = one pass, True = the model's
# mode or d4, or a mode name of landcover.core.config.TTA_MODES.
TTA = Union[bool, str, None]
PATCH_TTA: TTA = None  # predict, evaluate, the app: as the model was validated
SCENE_TTA: TTA = False  # map, change: one pass per tile (overlapping strides already average views)


def default_threads() -> int:
    """Cores this process may run on (cgroup/affinity aware): the intra-op thread count of ONNX Runtime."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def check_backend(backend: str) -> str:
    """``backend`` if it is one of :data:`BACKENDS`, else a ValueError naming them."""
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}.")
    return backend


def parse_tta(value: TTA) -> TTA:
    """Normalise a ``--tta`` value: None, a bool, or a mode name (``"none"``/``"off"`` mean False)."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("none", "off", "false", "0"):
        return False
    return text


def threads_or_default(threads: Optional[int]) -> int:
    """``threads`` if given (>= 1), else :func:`default_threads`."""
    if threads is None:
        return default_threads()
    if threads < 1:
        raise ValueError(f"threads must be at least 1; got {threads}.")
    return int(threads)
