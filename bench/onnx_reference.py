"""Reference paths the benchmarks compare the project against (not used by the package).

* :func:`network_graph`: the network alone exported to ONNX (normalised float input, dynamic batch), as
  the project exported it before the preprocessing moved into the graph; cached in the user ONNX cache.
* :class:`TodayEngine`: the map/app path before that change: torch preprocessing (resize, normalise)
  then that graph in ONNX Runtime. Plugs into :class:`landcover.inference.predictor.Predictor` for a side-by-side run.
* :class:`PlainOnnx`: the fastest plain path a user would write: PIL ``img.resize((S, S))`` (bilinear),
  numpy ``/255``, mean/std, ``session.run``, numpy softmax.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from landcover.inference.onnx_backend import session_options, user_cache_dir, weights_key
from landcover.data.transforms import preprocess, tta_views


def network_graph(loaded, input_size: int) -> Path:
    """The network of ``loaded`` (a LoadedModel) as ONNX: float ``(N, 3, S, S)`` normalised input -> logits."""
    path = user_cache_dir() / f"network-{weights_key(loaded.folder, input_size)}.onnx"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx.tmp", dir=path.parent)
    os.close(fd)
    example = torch.zeros(2, 3, input_size, input_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(loaded.model.eval(), (example,), tmp, dynamo=True, external_data=False, verbose=False,
                          input_names=["pixels"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},), optimize=True)
    os.replace(tmp, path)
    return path


class TodayEngine:
    """torch preprocessing + the network graph in ONNX Runtime (the previous ``--backend onnx``)."""

    name = "today"
    device = torch.device("cpu")
    channels_last = False
    memory_format = torch.contiguous_format

    def __init__(self, loaded, input_size: int, mean, std, threads: int):
        import onnxruntime as ort

        self.input_size, self.mean, self.std = input_size, mean, std
        self.path = network_graph(loaded, input_size)
        self.session = ort.InferenceSession(str(self.path), session_options(threads),
                                            providers=["CPUExecutionProvider"])

    def logits(self, images: torch.Tensor, mode) -> torch.Tensor:
        x = preprocess(images, self.input_size, self.mean, self.std)
        if mode:
            x = tta_views(x, mode)
        return torch.from_numpy(self.session.run(["logits"], {"pixels": np.ascontiguousarray(x.numpy())})[0])


class PlainOnnx:
    """The plain path: PIL bilinear resize, numpy normalisation, ``session.run``, numpy softmax."""

    def __init__(self, path: Path, threads: int, mean, std, input_size: int, temperature: float = 1.0):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.mean = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
        self.size, self.temperature = input_size, temperature

    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        s = self.size
        x = np.stack([np.asarray(im.resize((s, s), Image.BILINEAR)) for im in images]).transpose(0, 3, 1, 2)
        x = (x / np.float32(255.0) - self.mean) / self.std
        logits = self.session.run(None, {self.input: x.astype(np.float32)})[0] / self.temperature
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
