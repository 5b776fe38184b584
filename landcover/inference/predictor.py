"""``Predictor``: load a model once, classify PIL images or uint8 batches. No Gradio here.

Three separate parts: the engine (:class:`TorchEngine`: eager torch on any device; :class:`OnnxEngine`:
ONNX Runtime float or int8 on the CPU, see :mod:`landcover.inference.onnx_backend`), the test-time augmentation
policy (:meth:`Predictor.resolve_tta`) and the decoding of inputs (:mod:`landcover.readers.imageio`). Which
engine an entry point gets is decided once, in :func:`load_predictor` with the defaults of
:mod:`landcover.core.defaults`.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
from PIL import Image

from landcover.core.calibration import SINGLE_PASS
from landcover.core.config import TTA_MODES
from landcover.core.defaults import (BACKENDS, DEFAULT_BACKEND, INT8_MAX_ACCURACY_COST, PATCH_TTA, TASKS, TTA,  # noqa: F401
                       check_backend, parse_tta)
from landcover.models.hub import DEFAULT_MODEL_DIR, LoadedModel, load_model
from landcover.readers.imageio import decode_rgb8, open_image_file
from landcover.models.factory import data_config
from landcover.data.transforms import InputSpec, preprocess, resize_uint8, tta_views


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """Any PIL image -> uint8 RGB ``(3, H, W)`` by :func:`landcover.readers.imageio.decode_rgb8` (the project's one
    decode path: EXIF orientation, 16-bit scaling, transparency onto black)."""
    return torch.from_numpy(decode_rgb8(image)).permute(2, 0, 1)


class TorchEngine:
    """Eager PyTorch inference: :func:`landcover.data.transforms.preprocess` then the model, on any device.

    Threads are torch's process-wide setting (``torch.set_num_threads``), the application's choice: a
    Predictor never changes it.
    """

    name = "torch"

    def __init__(self, model: torch.nn.Module, input_size: int, mean, std, device: str = "cpu",
                 channels_last: Optional[bool] = None):
        self.device = torch.device(device)
        self.input_size, self.mean, self.std = input_size, mean, std
        # channels_last pays off for convolutions on GPUs; on the CPU it was measured neutral to slower
        # for efficientnet_lite0 at batch 1 (bench/infer_latency.py), so it is opt-in there.
        self.channels_last = (self.device.type == "cuda") if channels_last is None else channels_last
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = model.eval().to(self.device, memory_format=self.memory_format)

    def logits(self, images: torch.Tensor, mode: Optional[str]) -> torch.Tensor:
        """Logits of uint8 ``(N, 3, H, W)`` images; with ``mode``, of its views, view-major."""
        x = preprocess(images.to(self.device), self.input_size, self.mean, self.std, self.memory_format)
        if mode:
            x = tta_views(x, mode)
        return self.model(x).float().cpu()


class OnnxEngine:
    """ONNX Runtime inference on the CPU: uint8 pixels straight into the graph (preprocessing inside it)."""

    device = torch.device("cpu")
    channels_last = False
    memory_format = torch.contiguous_format

    def __init__(self, session, input_size: int):
        self.session, self.input_size = session, input_size
        self.name = "int8" if session.precision == "int8" else "onnx"

    def logits(self, images: torch.Tensor, mode: Optional[str]) -> torch.Tensor:
        if mode:
            if images.shape[-1] != images.shape[-2]:  # the views need a square: bring it to the input size
                images = torch.cat([resize_uint8(im, self.input_size) for im in images])
            images = tta_views(images, mode)
        return torch.from_numpy(self.session(images.numpy()))


class Predictor:
    """A loaded classifier: a model folder, an inference engine and a test-time augmentation policy.

    Create it once per process with :func:`load_predictor` (or :meth:`load`, the same), then call
    :meth:`predict` (PIL images) or :meth:`predict_tensor` (uint8 batches). Thread-safe: one forward pass
    at a time (a pass already uses every core).

    Example:
        >>> p = Predictor.load()            # the embedded default model
        >>> p.predict([Image.open("patch.jpg")])[0]
        {'Forest': 0.98, ...}
    """

    def __init__(self, loaded: LoadedModel, engine: "TorchEngine | OnnxEngine", tta: TTA = PATCH_TTA):
        self.loaded, self.engine = loaded, engine
        self.model = loaded.model
        self.labels: list[str] = loaded.label_names
        self.input_size = engine.input_size
        dc = data_config(self.model)
        self.mean, self.std = dc["mean"], dc["std"]
        # Test-time augmentation travels with the model (config.json), like its preprocessing.
        self.model_tta: Optional[str] = loaded.config.get("test_time_augmentation") or None
        self.tta: Optional[str] = self.resolve_tta(tta)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, ref: Optional[str] = None, backend: str = DEFAULT_BACKEND, **options) -> "Predictor":
        """:func:`load_predictor` (the one loader; see there for the arguments)."""
        return load_predictor(ref, backend, **options)

    @property
    def backend(self) -> str:
        """``torch``, ``onnx`` or ``int8``: the engine actually in use."""
        return self.engine.name

    @property
    def onnx(self):
        """The :class:`landcover.inference.onnx_backend.OnnxModel` in use, or None on the torch backend."""
        return getattr(self.engine, "session", None)

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def channels_last(self) -> bool:
        return self.engine.channels_last

    @property
    def memory_format(self) -> torch.memory_format:
        return self.engine.memory_format

    def resolve_tta(self, tta: TTA) -> Optional[str]:
        """Test-time augmentation mode for ``tta``: None = the model's own (config.json), False (or
        ``"none"``) = none, True = the model's mode or ``d4``, or a mode name of ``landcover.core.config.TTA_MODES``."""
        value = parse_tta(tta)
        if value is None:
            mode = self.model_tta
        elif value is True:
            mode = self.model_tta or "d4"
        elif value is False:
            mode = None
        else:
            mode = value
        if mode is not None and mode not in TTA_MODES:
            raise ValueError(f"Unknown test-time augmentation {mode!r} (from {'config.json' if tta is None else 'tta'}"
                             f"); expected one of {sorted(TTA_MODES)}, or none.")
        return mode

    def temperature(self, mode: Optional[str]) -> float:
        """The calibration temperature of inference ``mode`` (None: single pass) from config.json (1.0 if none).

        ``temperature`` is one number, or one per mode (``{"none": T, "d4": T, ...}``) as ``train.py`` fits them.
        """
        value = self.loaded.config.get("temperature", 1.0)
        if isinstance(value, dict):
            value = value.get(mode or SINGLE_PASS, value.get(SINGLE_PASS, 1.0))
        value = float(value)
        if not value > 0:
            raise ValueError(f"{self.loaded.folder}/config.json: temperature must be positive; got {value}.")
        return value

    @property
    def info(self) -> dict:
        """What the UI's model panel shows."""
        m, t = self.loaded.metrics, self.loaded.train_config
        return {
            "source": self.loaded.ref,
            "folder": str(self.loaded.folder),
            "architecture": self.loaded.config.get("architecture"),
            "dataset": m.get("dataset") or t.get("dataset"),
            "test_accuracy": (m.get("test") or {}).get("accuracy"),
            "test_images": (m.get("test") or {}).get("n"),
            "input_size": self.input_size,
            "labels": self.labels,
            "backend": self.backend,
            "test_time_augmentation": self.tta,
        }

    def predict_tensor(self, images: torch.Tensor, batch_size: int = 256, tta: TTA = None) -> torch.Tensor:
        """Class probabilities ``(N, C)`` for uint8 ``(N, 3, H, W)`` images of any size (e.g. scene tiles).

        ``tta`` overrides the predictor's test-time augmentation for this call (None: ``self.tta``;
        otherwise as in :meth:`resolve_tta`). Every engine applies the model's calibration temperature
        (config.json) of the mode used.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"Expected a uint8 batch (N, 3, H, W); got shape {tuple(images.shape)}.")
        if images.dtype != torch.uint8:
            raise ValueError(f"Expected uint8 pixels (0..255); got {images.dtype}. Convert with "
                             f"landcover.readers.imageio.decode_rgb8.")
        mode = self.tta if tta is None else self.resolve_tta(tta)
        temperature = self.temperature(mode)
        out = []
        with self._lock, torch.inference_mode():
            for start in range(0, images.shape[0], batch_size):
                chunk = images[start:start + batch_size]
                logits = self.engine.logits(chunk, mode)
                probs = torch.softmax(logits / temperature if temperature != 1.0 else logits, dim=1)
                if mode:  # mean probability over the flips/rotations of each patch
                    probs = probs.view(len(TTA_MODES[mode].symmetries), chunk.shape[0], -1).mean(0)
                out.append(probs)
        return torch.cat(out) if out else torch.empty(0, len(self.labels))

    def predict(self, images: Sequence[Image.Image], top_k: Optional[int] = None) -> list[dict[str, float]]:
        """Probabilities per label for each image, highest first (``top_k`` keeps the best k)."""
        if not images:
            return []
        probs = self.predict_tensor(self._stack([pil_to_tensor(im) for im in images]))
        k = len(self.labels) if top_k is None else max(1, min(top_k, len(self.labels)))
        values, index = probs.topk(k, dim=1)
        labels = self.labels
        return [{labels[i]: v for v, i in zip(vs, ix)} for vs, ix in zip(values.tolist(), index.tolist())]

    def _stack(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        # Same-size images (e.g. 64 px patches for a 96 px model) go to the engine unresized, exactly as in
        # evaluation; only mixed sizes are brought to the input size first.
        if len({tuple(t.shape[-2:]) for t in tensors}) == 1:
            return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)
        # Different sizes: resize each to the model input first (same antialiased resize as preprocess).
        return torch.cat([resize_uint8(t, self.input_size) for t in tensors])

    def predict_files(self, paths: Iterable[str | Path], top_k: Optional[int] = None) -> list[dict[str, float]]:
        return self.predict([open_image_file(p) for p in paths], top_k=top_k)


def resolve_backend(loaded: LoadedModel, backend: str, task: str = "patches", device: str = "cpu",
                    input_size: Optional[int] = None) -> str:
    """The engine ``backend`` means for this model folder and task (see :mod:`landcover.core.defaults`)."""
    check_backend(backend)
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; expected one of {TASKS}.")
    if backend != "auto":
        return backend
    if torch.device(device).type != "cpu":
        return "torch"
    from landcover.inference.onnx_backend import shipped_status

    dc = data_config(loaded.model)
    size = input_size or int(dc["input_size"][-1])
    if task == "scenes":
        entry, _ = shipped_status(loaded.folder, "int8", size, dc["mean"], dc["std"])
        cost = ((entry or {}).get("test") or {}).get("cost_points")
        if cost is not None and cost <= INT8_MAX_ACCURACY_COST:
            return "int8"
    entry, _ = shipped_status(loaded.folder, "float", size, dc["mean"], dc["std"])
    return "onnx" if entry is not None else "torch"


def load_predictor(ref: Optional[str] = None, backend: str = DEFAULT_BACKEND, *, task: str = "patches",
                   tta: TTA = None, device: str = "cpu", threads: Optional[int] = None,
                   channels_last: Optional[bool] = None) -> Predictor:
    """Load ``ref`` (None = embedded default, a folder, or a Hub id ``org/name[@rev]``) for inference.

    The one loader of every entry point. An ONNX graph that cannot be exported or loaded falls back to
    the torch backend with a warning on stderr: the fast path must not take a tool down. Errors about
    the model itself (missing, unreadable) and about the arguments are raised as ValueError /
    FileNotFoundError.

    Args:
        ref: Model reference (see :func:`landcover.models.hub.resolve_model_dir`).
        backend: ``auto`` (default), ``torch``, ``onnx`` or ``int8`` (see :mod:`landcover.core.defaults`).
        task: ``patches`` or ``scenes``: what ``auto`` optimises for (scenes may use the int8 graph).
        tta: Test-time augmentation (None: the model's config.json; False: one pass; True or a mode name).
        device: ``cpu``, ``cuda``, ``cuda:1``, ``mps`` (torch backend; ONNX runs on the CPU).
        threads: ONNX Runtime intra-op threads (default: the cores this process may use). The torch
            backend uses torch's process-wide setting.
        channels_last: torch backend memory format (default: on CUDA only).
    """
    loaded = load_model(ref)
    chosen = resolve_backend(loaded, backend, task, device)
    dc = data_config(loaded.model)
    size = int(dc["input_size"][-1])
    if chosen == "torch":
        return Predictor(loaded, TorchEngine(loaded.model, size, dc["mean"], dc["std"], device, channels_last), tta)
    if torch.device(device).type != "cpu":
        raise ValueError(f"The {chosen} backend runs on the CPU; got device {device!r}. Use --backend torch.")
    from landcover.inference.onnx_backend import load_onnx

    try:
        session = load_onnx(loaded.model, loaded.folder, InputSpec(size, dc["mean"], dc["std"]), threads=threads,
                            packaged=_is_packaged(loaded.folder), precision="int8" if chosen == "int8" else "float")
    except ValueError:
        raise
    except Exception as err:
        print(f"warning: {chosen} backend unavailable ({type(err).__name__}: {err}); using torch", file=sys.stderr)
        return Predictor(loaded, TorchEngine(loaded.model, size, dc["mean"], dc["std"], device, channels_last), tta)
    return Predictor(loaded, OnnxEngine(session, size), tta)


def _is_packaged(folder: Path) -> bool:
    # The embedded model ships inside the package: never write caches into it.
    try:
        return Path(folder).resolve() == DEFAULT_MODEL_DIR.resolve()
    except OSError:
        return False
