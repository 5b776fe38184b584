"""``Predictor``: load a model once, classify PIL images or uint8 batches. No Gradio here."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from .hub import LoadedModel, load_model
from .model import data_config
from .transforms import preprocess


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """Any PIL image -> uint8 RGB ``(3, H, W)``, the way training saw patches.

    EXIF orientation is applied; palette, grayscale, alpha and 16-bit images are converted to 8-bit RGB
    (16-bit data scaled by its full range; alpha dropped onto black, as the RGB bands of a scene).
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float64)
        scale = 65535.0 if arr.max() > 255 else 255.0
        image = Image.fromarray(np.clip(arr / scale * 255.0, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8))
    rgb = image.convert("RGB")
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)


class Predictor:
    """A loaded classifier. Create it once per process with :meth:`load`, then call :meth:`predict`.

    Example:
        >>> p = Predictor.load()            # the embedded default model
        >>> p.predict([Image.open("patch.jpg")])[0]
        {'Forest': 0.98, ...}
    """

    def __init__(self, loaded: LoadedModel, device: str = "cpu", threads: Optional[int] = None):
        self.loaded = loaded
        self.device = torch.device(device)
        self.model = loaded.model.to(self.device).eval()
        self.labels: list[str] = loaded.label_names
        dc = data_config(self.model)
        self.input_size = int(dc["input_size"][-1])
        self.mean, self.std = dc["mean"], dc["std"]
        self._lock = threading.Lock()  # one forward pass at a time; torch already uses all cores
        if threads:
            torch.set_num_threads(threads)

    @classmethod
    def load(cls, ref: Optional[str] = None, device: str = "cpu", threads: Optional[int] = None) -> "Predictor":
        """Load ``ref`` (None = embedded default, a folder, or a Hub id ``org/name[@rev]``)."""
        return cls(load_model(ref), device=device, threads=threads)

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
        }

    def predict_tensor(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Class probabilities ``(N, C)`` for uint8 ``(N, 3, H, W)`` images of any size."""
        out = []
        with self._lock, torch.inference_mode():
            for start in range(0, images.shape[0], batch_size):
                x = preprocess(images[start:start + batch_size].to(self.device), self.input_size, self.mean, self.std)
                out.append(torch.softmax(self.model(x).float(), dim=1).cpu())
        return torch.cat(out) if out else torch.empty(0, len(self.labels))

    def predict(self, images: Sequence[Image.Image], top_k: Optional[int] = None) -> list[dict[str, float]]:
        """Probabilities per label for each image, highest first (``top_k`` keeps the best k)."""
        if not images:
            return []
        batch = self._stack([pil_to_tensor(im) for im in images])
        probs = self.predict_tensor(batch)
        k = len(self.labels) if top_k is None else max(1, min(top_k, len(self.labels)))
        results = []
        for row in probs:
            values, index = row.topk(k)
            results.append({self.labels[i]: float(v) for v, i in zip(values.tolist(), index.tolist())})
        return results

    def _stack(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        size = self.input_size
        if all(tuple(t.shape[-2:]) == (size, size) for t in tensors):
            return torch.stack(tensors)
        # Different sizes: resize each to the model input first (same antialiased resize as preprocess).
        return torch.cat([_resize_uint8(t, size) for t in tensors])

    def predict_files(self, paths: Iterable[str | Path], top_k: Optional[int] = None) -> list[dict[str, float]]:
        images = []
        for p in paths:
            with Image.open(p) as im:
                im.load()
                images.append(im)
        return self.predict(images, top_k=top_k)


def _resize_uint8(t: torch.Tensor, size: int) -> torch.Tensor:
    x = torch.nn.functional.interpolate(t[None].float(), size=(size, size), mode="bilinear", antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8)
