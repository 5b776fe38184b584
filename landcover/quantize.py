"""Write the ONNX graphs a model folder ships (``python -m landcover export-onnx FOLDER [--data DIR]``).

* ``onnx/model.graph.onnx``: the float graph (preprocessing inside, see :mod:`landcover.onnx_backend`)
  without its weights, which are read from ``model.safetensors`` at load: the app and ``map`` start
  without an export, and the folder grows by ~0.1 MB.
* ``onnx/model.int8.onnx`` (with ``--data``): static int8 quantisation with ONNX Runtime (QDQ format,
  per-channel int8 weights, uint8 activations), calibrated on patches of the model's validation split;
  its accuracy on the test split (single pass) is measured against the float graph and recorded, and
  ``--backend auto`` uses it for scene maps only when it loses at most
  :data:`landcover.defaults.INT8_MAX_ACCURACY_COST` points.
* ``onnx/onnx.json``: checksums of ``model.safetensors`` and of each graph, the preprocessing, and the
  int8 measurement.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional

import numpy as np

from . import onnx_backend as ob
from .defaults import INT8_MAX_ACCURACY_COST

logger = logging.getLogger(__name__)

CALIBRATION_PATCHES = 512
CALIBRATION_BATCH = 64
# Quantised op types: the convolutions and the classifier (the compute) and the residual adds, so that
# ONNX Runtime runs int8 from the stem to the pooling without float round trips between blocks.
QUANTIZED_OPS = ("Conv", "Gemm", "Add", "Clip")


def calibration_sample(images, n: int, seed: int = 0) -> np.ndarray:
    """``n`` uint8 ``(3, H, W)`` patches drawn without replacement (fixed seed) from ``images``."""
    rng = np.random.default_rng(seed)
    index = np.sort(rng.choice(len(images), size=min(n, len(images)), replace=False))
    return np.ascontiguousarray(np.asarray(images[index]))


def quantize_int8(float_graph: Path, out: Path, calibration: np.ndarray, ops=QUANTIZED_OPS) -> Path:
    """Static QDQ int8 quantisation of ``float_graph`` (uint8 pixel input) calibrated on ``calibration``."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.start = 0

        def get_next(self):
            if self.start >= len(calibration):
                return None
            batch = calibration[self.start:self.start + CALIBRATION_BATCH]
            self.start += CALIBRATION_BATCH
            return {ob.INPUT_NAME: batch}

    with tempfile.TemporaryDirectory(prefix="landcover-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        # Shape inference + ONNX Runtime's basic optimisations (batch norms folded into the convolutions).
        quant_pre_process(str(float_graph), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=list(ops))
    return out


def accuracy(session: "ob.OnnxModel", images, labels: np.ndarray, batch_size: int = 256) -> tuple[float, np.ndarray]:
    """Single-pass accuracy of a session on uint8 ``images`` and its predicted class per image."""
    pred = np.concatenate([session(np.asarray(images[s:s + batch_size])).argmax(1)
                           for s in range(0, len(images), batch_size)])
    return float((pred == labels).mean()), pred


def export_folder(folder: str | Path, data: Optional[str] = None, calibration: int = CALIBRATION_PATCHES,
                  threads: Optional[int] = None, log: Callable[[str], None] = print) -> dict:
    """(Re)write ``<folder>/onnx/``: the float graph, and with ``data`` the int8 graph and its accuracy cost.

    Args:
        folder: A local model folder (written by ``train.py``).
        data: The dataset the model was trained on (local folder or Hub id): validation patches calibrate
            the int8 graph, the test split measures it (the model's recorded ``splits.json`` when present).
        calibration: Validation patches used for calibration.
        threads: ONNX Runtime threads for the accuracy measurement.
        log: Where progress lines go.

    Returns:
        The manifest written (``onnx/onnx.json``).
    """
    from .hub import load_model
    from .model import data_config

    folder = Path(folder)
    if not (folder / ob.WEIGHTS).is_file():
        raise FileNotFoundError(f"{folder} has no {ob.WEIGHTS}; expected a model folder written by train.py.")
    loaded = load_model(str(folder))
    dc = data_config(loaded.model)
    size, mean, std = int(dc["input_size"][-1]), dc["mean"], dc["std"]
    out_dir = folder / ob.SHIPPED_DIR
    out_dir.mkdir(exist_ok=True)
    graphs = {}
    with tempfile.TemporaryDirectory(prefix="landcover-export-") as tmp:
        t = time.perf_counter()
        full = ob.export_onnx(loaded.model, Path(tmp) / "full.onnx", size, mean, std, optimize=False)
        mapping = ob.write_float_graph(full, folder / ob.WEIGHTS, out_dir / ob.FLOAT_GRAPH)
        graphs["float"] = {"file": ob.FLOAT_GRAPH, "weights": mapping}
        log(f"float graph: {out_dir / ob.FLOAT_GRAPH} ({(out_dir / ob.FLOAT_GRAPH).stat().st_size / 1e3:.0f} kB, "
            f"{len(mapping)} tensors read from {ob.WEIGHTS}; export {time.perf_counter() - t:.1f} s)")
        old_int8 = out_dir / ob.INT8_GRAPH
        if data is None:
            old_int8.unlink(missing_ok=True)  # an int8 graph of other weights must not survive
            log("no --data: int8 graph not written (calibration needs the validation split)")
        else:
            graphs["int8"] = _int8(loaded, full, old_int8, data, calibration, threads, log)
    manifest_path = ob.write_manifest(folder, graphs, size, mean, std)
    log(f"manifest: {manifest_path}")
    return ob.read_manifest(folder)


def _int8(loaded, full: Path, out: Path, data: str, calibration: int, threads: Optional[int], log) -> dict:
    from .evaluate import load_split

    source = SimpleNamespace(labels=loaded.label_names, loaded=loaded)  # what load_split reads of a predictor
    t = time.perf_counter()
    val = load_split(source, data, "validation")
    sample = calibration_sample(val.images, calibration)
    quantize_int8(full, out, sample)
    log(f"int8 graph: {out} ({out.stat().st_size / 1e6:.1f} MB; calibrated on {len(sample)} validation patches, "
        f"{time.perf_counter() - t:.1f} s)")
    test = load_split(source, data, "test")
    labels = np.asarray(test.labels)
    f_acc, f_pred = accuracy(ob.OnnxModel(full, threads), test.images, labels)
    q_acc, q_pred = accuracy(ob.OnnxModel(out, threads, "int8"), test.images, labels)
    cost = round(100.0 * (f_acc - q_acc), 3)
    verdict = "within" if cost <= INT8_MAX_ACCURACY_COST else "over"
    log(f"test split ({len(labels)} patches, single pass): float {100 * f_acc:.2f} %, int8 {100 * q_acc:.2f} %, "
        f"cost {cost:+.2f} points ({verdict} the {INT8_MAX_ACCURACY_COST} budget); predictions agree on "
        f"{100 * float((f_pred == q_pred).mean()):.2f} %")
    return {"file": ob.INT8_GRAPH,
            "calibration": {"split": "validation", "patches": int(len(sample)), "method": "MinMax", "seed": 0,
                            "format": "QDQ, per-channel int8 weights, uint8 activations",
                            "ops": list(QUANTIZED_OPS)},
            "test": {"n": int(len(labels)), "float_accuracy": round(f_acc, 6), "int8_accuracy": round(q_acc, 6),
                     "cost_points": cost, "agreement": round(float((f_pred == q_pred).mean()), 6),
                     "data": Path(data).name if Path(data).expanduser().is_dir() else data}}
