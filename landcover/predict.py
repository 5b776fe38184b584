"""``Predictor``: load a model once, classify PIL images or uint8 batches. No Gradio here.

CPU fast path: eval mode + ``inference_mode``, one forward pass at a time (a pass already uses every
core), an optional ONNX Runtime backend (``backend="onnx"``, several times faster than eager torch at
batch 1 on small models) and an optional micro-batcher (``batching=True``) that merges concurrent
:meth:`Predictor.predict` calls from several threads (web requests) into one forward pass.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import torch
from PIL import Image

from .calibration import SINGLE_PASS
from .config import TTA_MODES
from .hub import DEFAULT_MODEL_DIR, LoadedModel, load_model
from .imageio import decode_rgb8, open_image_file
from .model import data_config
from .transforms import preprocess, resize_uint8, tta_views

BACKENDS = ("torch", "onnx")


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """Any PIL image -> uint8 RGB ``(3, H, W)`` by :func:`landcover.imageio.decode_rgb8` (the project's one
    decode path: EXIF orientation, 16-bit scaling, transparency onto black)."""
    return torch.from_numpy(decode_rgb8(image)).permute(2, 0, 1)


class MicroBatcher:
    """Merges concurrent requests into one call of ``run`` (leader/follower, no background thread).

    The first caller that finds no pass running becomes the leader: it waits up to ``max_wait_s`` for
    more requests (until ``max_batch`` images are queued), runs them as one batch and hands the results
    out; requests that arrive meanwhile queue up and the next leader takes them all at once. With
    ``max_wait_s=0`` a lone request runs at once (no added latency) and merging is purely opportunistic.
    """

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], max_batch: int = 64,
                 max_wait_s: float = 0.002):
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError(f"Expected max_batch >= 1 and max_wait_s >= 0; got {max_batch} and {max_wait_s}.")
        self._run = run
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self._cond = threading.Condition()
        self._pending: list[_Request] = []
        self._busy = False
        self.passes = 0  # forward passes run so far
        self.requests = 0  # requests served so far

    def submit(self, images: torch.Tensor) -> torch.Tensor:
        """Run ``images`` (a batch of one request) merged with whatever else is queued; returns its rows."""
        req = _Request(images)
        with self._cond:
            self._pending.append(req)
            self._cond.notify_all()  # a collecting leader counts the new images
            while not req.done:
                if self._busy:
                    self._cond.wait()
                    continue
                self._busy = True
                try:
                    self._lead()
                finally:
                    self._busy = False
                    self._cond.notify_all()  # results are out; the next leader may start
        if req.error is not None:
            raise req.error
        return req.result

    def _queued(self) -> int:
        return sum(r.n for r in self._pending)

    def _lead(self) -> None:
        # Called with the condition held; releases it while waiting and while the pass runs.
        deadline = time.monotonic() + self.max_wait_s
        while self._queued() < self.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._cond.wait(remaining)
        batch, total = [], 0
        while self._pending and (not batch or total + self._pending[0].n <= self.max_batch):
            batch.append(self._pending.pop(0))
            total += batch[-1].n
        self._cond.release()
        try:
            self._serve(batch)
        finally:
            self._cond.acquire()
        self.passes += 1
        self.requests += len(batch)

    def _serve(self, batch: list["_Request"]) -> None:
        try:
            merged = batch[0].images if len(batch) == 1 else torch.cat([r.images for r in batch])
            out = self._run(merged)
        except BaseException as err:  # every waiting caller gets the error, not a hang
            for r in batch:
                r.error, r.done = err, True
            return
        start = 0
        for r in batch:
            r.result, r.done = out[start:start + r.n], True
            start += r.n


class _Request:
    __slots__ = ("images", "n", "result", "error", "done")

    def __init__(self, images: torch.Tensor):
        self.images, self.n = images, int(images.shape[0])
        self.result: Optional[torch.Tensor] = None
        self.error: Optional[BaseException] = None
        self.done = False


class Predictor:
    """A loaded classifier. Create it once per process with :meth:`load`, then call :meth:`predict`.

    Example:
        >>> p = Predictor.load()            # the embedded default model
        >>> p.predict([Image.open("patch.jpg")])[0]
        {'Forest': 0.98, ...}
    """

    def __init__(self, loaded: LoadedModel, device: str = "cpu", threads: Optional[int] = None,
                 backend: str = "torch", channels_last: Optional[bool] = None, batching: bool = False,
                 max_batch: int = 64, max_wait_ms: float = 2.0, tta: Optional[bool] = None):
        if backend not in BACKENDS:
            raise ValueError(f"Unknown backend {backend!r}; expected one of {BACKENDS}.")
        self.loaded = loaded
        self.device = torch.device(device)
        if backend == "onnx" and self.device.type != "cpu":
            raise ValueError(f"The onnx backend runs on the CPU; got device {device!r}. Use --backend torch.")
        if threads:
            torch.set_num_threads(threads)
        self.backend = backend
        # Test-time augmentation travels with the model (config.json), like its preprocessing.
        self.model_tta: Optional[str] = loaded.config.get("test_time_augmentation") or None
        self.tta: Optional[str] = self.resolve_tta(tta)
        self.model = loaded.model.eval()
        self.labels: list[str] = loaded.label_names
        dc = data_config(self.model)
        self.input_size = int(dc["input_size"][-1])
        self.mean, self.std = dc["mean"], dc["std"]
        self._lock = threading.Lock()  # one forward pass at a time; a pass already uses every core
        self.onnx = None
        if backend == "onnx":
            from .onnx_backend import load_onnx
            self.onnx = load_onnx(self.model, loaded.folder, self.input_size, threads=threads or
                                  torch.get_num_threads(), packaged=_is_packaged(loaded.folder))
        # channels_last pays off for convolutions on GPUs; on the CPU it was measured neutral to slower
        # for efficientnet_lite0 at batch 1 (bench/infer_latency.py), so it is opt-in there.
        self.channels_last = (self.device.type == "cuda") if channels_last is None else channels_last
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = self.model.to(self.device, memory_format=self.memory_format)
        self.batcher = MicroBatcher(self._probs, max_batch, max_wait_ms / 1000.0) if batching else None

    @classmethod
    def load(cls, ref: Optional[str] = None, device: str = "cpu", threads: Optional[int] = None,
             backend: str = "torch", **options) -> "Predictor":
        """Load ``ref`` (None = embedded default, a folder, or a Hub id ``org/name[@rev]``).

        Args:
            ref: Model reference (see :func:`landcover.hub.resolve_model_dir`).
            device: ``cpu``, ``cuda``, ``cuda:1``, ``mps`` (torch backend).
            threads: Intra-op threads (torch and ONNX Runtime); default: torch's (the physical cores).
            backend: ``torch`` or ``onnx`` (exported once and cached, see :mod:`landcover.onnx_backend`).
            **options: ``channels_last``, ``batching``, ``max_batch``, ``max_wait_ms``, ``tta`` (D4
                test-time augmentation; default: what the model's config.json says).
        """
        return cls(load_model(ref), device=device, threads=threads, backend=backend, **options)

    def resolve_tta(self, tta: "bool | str | None") -> Optional[str]:
        """Test-time augmentation mode for ``tta``: None = the model's own (config.json), False = none,
        True = the model's mode or ``d4``, or a mode name from ``landcover.config.TTA_MODES``."""
        if tta is None:
            mode = self.model_tta
        elif tta is True:
            mode = self.model_tta or "d4"
        elif tta is False:
            mode = None
        else:
            mode = str(tta)
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

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.onnx is not None:
            return self.onnx(x)
        return self.model(x).float()

    def predict_tensor(self, images: torch.Tensor, batch_size: int = 256, tta: "bool | str | None" = None
                       ) -> torch.Tensor:
        """Class probabilities ``(N, C)`` for uint8 ``(N, 3, H, W)`` images of any size (e.g. scene tiles).

        ``tta`` overrides the predictor's test-time augmentation for this call (None: ``self.tta``;
        otherwise as in :meth:`resolve_tta`).
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"Expected a uint8 batch (N, 3, H, W); got shape {tuple(images.shape)}.")
        mode = self.tta if tta is None else self.resolve_tta(tta)
        temperature = self.temperature(mode)
        out = []
        with self._lock, torch.inference_mode():
            for start in range(0, images.shape[0], batch_size):
                x = preprocess(images[start:start + batch_size].to(self.device), self.input_size, self.mean,
                               self.std, self.memory_format)
                if mode:  # mean probability over the flips/rotations of each patch
                    n = x.shape[0]
                    views = self._forward(tta_views(x, mode))
                    probs = torch.softmax(views / temperature, dim=1).view(len(TTA_MODES[mode].symmetries), n,
                                                                           -1).mean(0)
                else:
                    probs = torch.softmax(self._forward(x) / temperature, dim=1)
                out.append(probs.cpu())
        return torch.cat(out) if out else torch.empty(0, len(self.labels))

    def _probs(self, images: torch.Tensor) -> torch.Tensor:
        return self.predict_tensor(images)

    def predict(self, images: Sequence[Image.Image], top_k: Optional[int] = None) -> list[dict[str, float]]:
        """Probabilities per label for each image, highest first (``top_k`` keeps the best k).

        Thread-safe. With ``batching=True``, calls from several threads are merged into one forward pass.
        """
        if not images:
            return []
        batch = self._stack([pil_to_tensor(im) for im in images])
        probs = self.batcher.submit(batch) if self.batcher is not None else self.predict_tensor(batch)
        k = len(self.labels) if top_k is None else max(1, min(top_k, len(self.labels)))
        values, index = probs.topk(k, dim=1)
        labels = self.labels
        return [{labels[i]: v for v, i in zip(vs, ix)} for vs, ix in zip(values.tolist(), index.tolist())]

    def _stack(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        size = self.input_size
        # Same-size images (e.g. 64 px patches for a 96 px model) go to preprocess unresized, exactly as in
        # evaluation; only mixed sizes are brought to the input size first.
        if len({tuple(t.shape[-2:]) for t in tensors}) == 1:
            # One patch (the web request case): a view, no copy; preprocess makes it contiguous anyway.
            return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)
        # Different sizes: resize each to the model input first (same antialiased resize as preprocess).
        return torch.cat([resize_uint8(t, size) for t in tensors])

    def predict_files(self, paths: Iterable[str | Path], top_k: Optional[int] = None) -> list[dict[str, float]]:
        return self.predict([open_image_file(p) for p in paths], top_k=top_k)


def load_predictor(ref: Optional[str] = None, backend: str = "onnx", **options) -> Predictor:
    """:meth:`Predictor.load`, falling back to the torch backend if the ONNX export or session fails.

    The fast path must not take a tool down: an architecture the exporter cannot handle still serves,
    with a warning on stderr. Errors about the model itself (missing, unreadable) are raised as usual.
    """
    try:
        return Predictor.load(ref, backend=backend, **options)
    except (FileNotFoundError, ValueError):
        raise
    except Exception as err:
        if backend == "torch":
            raise
        print(f"warning: {backend} backend unavailable ({type(err).__name__}: {err}); using torch", file=sys.stderr)
        return Predictor.load(ref, backend="torch", **options)


def _is_packaged(folder: Path) -> bool:
    # The embedded model ships inside the package: never write caches into it.
    try:
        return Path(folder).resolve() == DEFAULT_MODEL_DIR.resolve()
    except OSError:
        return False
