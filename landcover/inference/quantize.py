"""Write the ONNX graphs a model folder ships (``python -m landcover export-onnx FOLDER [--data DIR]``).

* ``onnx/model.graph.onnx``: the float graph (preprocessing inside, see :mod:`landcover.inference.onnx_backend`)
  without its weights, which are read from ``model.safetensors`` at load: the app and ``map`` start
  without an export, and the folder grows by ~0.1 MB.
* ``onnx/model.int8.onnx`` (with ``--data``): static int8 quantisation with ONNX Runtime (QDQ format,
  per-channel int8 weights, uint8 activations), calibrated on patches of the model's training split. The
  calibration method and whether the stem convolution and the classifier stay float
  (:data:`INT8_CANDIDATES`) are chosen on the validation split (accuracy cost against the float graph);
  the chosen graph's cost on the test split (single pass) is then measured once and recorded, and
  ``--backend auto`` uses it for scene maps only when it loses at most
  :data:`landcover.core.defaults.INT8_MAX_ACCURACY_COST` points.
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

from landcover.inference import onnx_backend as ob
from landcover.core.defaults import INT8_MAX_ACCURACY_COST

logger = logging.getLogger(__name__)

CALIBRATION_PATCHES = 512
CALIBRATION_BATCH = 64
# Quantised op types: the convolutions and the classifier (the compute) and the residual adds, so that
# ONNX Runtime runs int8 from the stem to the pooling without float round trips between blocks.
QUANTIZED_OPS = ("Conv", "Gemm", "Add", "Clip")
# What is tried, in this order (fastest first); the first with the lowest validation cost is shipped. MinMax keeps
# every activation's full range; Percentile (99.999) clips rare outliers for a finer step; "ends float" leaves the
# stem convolution (which sees the raw colours) and the classifier in float, at a small speed cost.
INT8_CANDIDATES = ({"method": "MinMax", "ends_float": False}, {"method": "Percentile", "ends_float": False},
                   {"method": "MinMax", "ends_float": True}, {"method": "Percentile", "ends_float": True})
PERCENTILE = 99.999


def calibration_sample(images, n: int, seed: int = 0) -> np.ndarray:
    """``n`` uint8 ``(3, H, W)`` patches drawn without replacement (fixed seed) from ``images``."""
    rng = np.random.default_rng(seed)
    index = np.sort(rng.choice(len(images), size=min(n, len(images)), replace=False))
    return np.ascontiguousarray(np.asarray(images[index]))


def _end_nodes(graph: Path) -> list[str]:
    """Names of the first convolution and the last Gemm/MatMul of ``graph`` (nodes are in topological order)."""
    import onnx

    nodes = onnx.load(str(graph), load_external_data=False).graph.node
    convs = [n.name for n in nodes if n.op_type == "Conv"]
    heads = [n.name for n in nodes if n.op_type in ("Gemm", "MatMul")]
    return convs[:1] + heads[-1:]


def prepare_for_quantization(float_graph: Path, out: Path) -> Path:
    """``float_graph`` with batch norms fused into the convolutions (see ``ob.optimized``: the raw export blocks
    ORT's fusions), then shape inference and ONNX Runtime's basic optimisations, written to ``out``. Done once
    for all candidates of :func:`quantize_int8`."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    folded = out.with_name(out.stem + ".folded.onnx")
    onnx.save(ob.optimized(onnx.load(str(float_graph))), str(folded))
    quant_pre_process(str(folded), str(out), skip_symbolic_shape=True)
    folded.unlink()
    return out


def quantize_int8(prepared_graph: Path, out: Path, calibration: np.ndarray, ops=QUANTIZED_OPS,
                  method: str = "MinMax", ends_float: bool = False) -> Path:
    """Static QDQ int8 quantisation of a :func:`prepare_for_quantization` graph (uint8 pixel input).

    Args:
        prepared_graph: The float graph, prepared (with its weights).
        out: Where the int8 graph is written.
        calibration: uint8 ``(N, 3, H, W)`` patches whose activations set the quantisation ranges.
        ops: Op types quantised.
        method: ``MinMax`` or ``Percentile`` (ONNX Runtime's ``CalibrationMethod``).
        ends_float: Keep the first convolution and the classifier in float.
    """
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.start = 0

        def get_next(self):
            if self.start >= len(calibration):
                return None
            batch = calibration[self.start:self.start + CALIBRATION_BATCH]
            self.start += CALIBRATION_BATCH
            return {ob.INPUT_NAME: batch}

    extra = {"CalibPercentile": PERCENTILE} if method == "Percentile" else {}
    quantize_static(str(prepared_graph), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method), op_types_to_quantize=list(ops),
                    nodes_to_exclude=_end_nodes(prepared_graph) if ends_float else [], extra_options=extra)
    quantized = onnx.load(str(out))
    ob.strip_debug_info(quantized)  # shipped in model folders: no stack traces naming the exporting machine
    onnx.save(quantized, str(out))
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
        data: The dataset the model was trained on (local folder or Hub id): training patches calibrate the
            int8 graph, the validation split chooses its settings, the test split measures it once (the model's
            recorded ``splits.json`` when present).
        calibration: Training patches used for calibration.
        threads: ONNX Runtime threads for the accuracy measurement.
        log: Where progress lines go.

    Returns:
        The manifest written (``onnx/onnx.json``).
    """
    from landcover.models.hub import load_model
    from landcover.models.factory import data_config

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
    from landcover.inference.evaluate import load_split

    source = SimpleNamespace(labels=loaded.label_names, loaded=loaded)  # what load_split reads of a predictor
    t = time.perf_counter()
    sample = calibration_sample(load_split(source, data, "train").images, calibration)
    val = load_split(source, data, "validation")
    val_labels = np.asarray(val.labels)
    float_session = ob.OnnxModel(full, threads)  # one session scores validation and test
    f_val, f_val_pred = accuracy(float_session, val.images, val_labels)
    tried, best = [], None
    with tempfile.TemporaryDirectory(prefix="landcover-int8-") as tmp:
        prepared = prepare_for_quantization(full, Path(tmp) / "prepared.onnx")
        for i, cand in enumerate(INT8_CANDIDATES):
            graph = quantize_int8(prepared, Path(tmp) / f"candidate{i}.onnx", sample, **cand)
            q_val, q_pred = accuracy(ob.OnnxModel(graph, threads, "int8"), val.images, val_labels)
            cost = round(100.0 * (f_val - q_val), 3)
            tried.append({**cand, "validation_cost_points": cost,
                          "validation_agreement": round(float((q_pred == f_val_pred).mean()), 6)})
            log(f"int8 candidate {cand}: validation cost {cost:+.2f} points")
            if best is None or cost < tried[best]["validation_cost_points"]:
                best = i
                out.unlink(missing_ok=True)
                graph.replace(out)
    chosen = {k: tried[best][k] for k in ("method", "ends_float")}
    log(f"int8 graph: {out} ({out.stat().st_size / 1e6:.1f} MB; {chosen}, chosen on {len(val_labels)} validation "
        f"patches; calibrated on {len(sample)} training patches; {time.perf_counter() - t:.1f} s)")
    test = load_split(source, data, "test")
    labels = np.asarray(test.labels)
    f_acc, f_pred = accuracy(float_session, test.images, labels)
    q_acc, q_pred = accuracy(ob.OnnxModel(out, threads, "int8"), test.images, labels)
    cost = round(100.0 * (f_acc - q_acc), 3)
    verdict = "within" if cost <= INT8_MAX_ACCURACY_COST else "over"
    log(f"test split ({len(labels)} patches, single pass, measured once): float {100 * f_acc:.2f} %, int8 "
        f"{100 * q_acc:.2f} %, cost {cost:+.2f} points ({verdict} the {INT8_MAX_ACCURACY_COST} budget); predictions "
        f"agree on {100 * float((f_pred == q_pred).mean()):.2f} %")
    return {"file": ob.INT8_GRAPH,
            "calibration": {"split": "train", "patches": int(len(sample)), "seed": 0, **chosen,
                            "format": "QDQ, per-channel int8 weights, uint8 activations",
                            "ops": list(QUANTIZED_OPS), "chosen_on": "validation", "candidates": tried},
            "test": {"n": int(len(labels)), "float_accuracy": round(f_acc, 6), "int8_accuracy": round(q_acc, 6),
                     "cost_points": cost, "agreement": round(float((f_pred == q_pred).mean()), 6),
                     "data": Path(data).name if Path(data).expanduser().is_dir() else data}}
