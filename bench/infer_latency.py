"""CPU inference latency: the project's Predictor (torch, onnx) vs raw ONNX Runtime vs a Flask-app-style predictor.

For each model, one 64 x 64 patch and one batch of 64 patches (PIL images in, probabilities out):

* ``project torch``  ``Predictor.load(folder).predict(images)`` (eval, inference_mode, one pass at a time);
* ``project onnx``   the same with ``backend="onnx"`` (exported once by torch.onnx, cached);
* ``raw onnxruntime`` a bare ``InferenceSession`` on the same ``.onnx`` file, numpy preprocessing, numpy
  softmax: the floor the project's overhead is measured against;
* ``flask-style``    what the Flask app we start from did per request: build the model and load the
  weights from disk, torchvision transforms per image, forward, softmax (batch of 64 = one request with
  64 images, so one reload).

Calls are interleaved round-robin (each round times every variant once), so load changes on a shared
machine hit all variants alike; medians and p95 are reported with their ratio to raw ONNX Runtime.

    nice -n 19 python bench/infer_latency.py                       # default model + wide_resnet50_2
    nice -n 19 python bench/infer_latency.py --models default --repeats 200 --threads 1

``default`` is the embedded model (landcover/default_model); while it is missing, an untrained
efficientnet_lite0 at 64 px stands in (same graph, same cost). wide_resnet50_2 is untrained too
(``pretrained=False``): latency does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from landcover.hub import DEFAULT_MODEL_DIR  # noqa: E402
from landcover.labels import EUROSAT_CLASSES  # noqa: E402


def make_folder(name: str, root: Path) -> tuple[Path, str]:
    """A model folder for ``name`` (``default`` or a timm architecture) and a description of it."""
    if name == "default":
        if (DEFAULT_MODEL_DIR / "config.json").is_file():
            return DEFAULT_MODEL_DIR, "embedded default model"
        name, note = "efficientnet_lite0", "stand-in for the default model (untrained efficientnet_lite0, 64 px)"
    else:
        note = f"untrained {name}, 64 px"
    import timm

    from landcover.model import create_model

    folder = root / name
    model = create_model(name, num_classes=10, pretrained=False, image_size=64, label_names=list(EUROSAT_CLASSES))
    timm.models.save_for_hf(model.eval(), folder, model_config={"label_names": list(EUROSAT_CLASSES)},
                            safe_serialization=True)
    return folder, note


class RawOnnx:
    """The minimum: numpy preprocessing + ``session.run`` + numpy softmax."""

    def __init__(self, path: Path, threads: int, mean, std, input_size: int):
        from landcover.onnx_backend import session_options
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.mean = np.asarray(mean, np.float32).reshape(1, 3, 1, 1) * 255.0
        self.scale = 1.0 / (np.asarray(std, np.float32).reshape(1, 3, 1, 1) * 255.0)
        self.input_size = input_size  # a model input larger than the patch: one fixed bilinear matrix per axis

    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        x = np.stack([np.asarray(im.convert("RGB")) for im in images]).transpose(0, 3, 1, 2).astype(np.float32)
        if x.shape[-1] != self.input_size:
            resize = bilinear_matrix(x.shape[-1], self.input_size)
            x = resize @ x @ resize.T
        logits = self.session.run(None, {self.input: (x - self.mean) * self.scale})[0]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``(out, in)`` weights of torch's antialiased bilinear resize (triangle filter widened when shrinking)."""
    scale = in_size / out_size
    centre = (np.arange(out_size) + 0.5) * scale - 0.5
    support = max(scale, 1.0)
    w = np.clip(1 - np.abs(np.arange(in_size)[None, :] - centre[:, None]) / support, 0, None)
    return (w / w.sum(1, keepdims=True)).astype(np.float32)


class FlaskStyle:
    """Reloads the model from disk on every call, as the Flask app we start from did."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __call__(self, images: list[Image.Image]) -> list[dict]:
        import timm
        from safetensors.torch import load_file
        from torchvision import transforms

        model = timm.create_model(f"local-dir:{self.folder}", pretrained=False)
        model.load_state_dict({k: v.float() for k, v in load_file(str(self.folder / "model.safetensors")).items()})
        model.eval()
        cfg = model.pretrained_cfg
        tf = transforms.Compose([transforms.Resize(cfg["input_size"][-1]), transforms.ToTensor(),
                                 transforms.Normalize(cfg["mean"], cfg["std"])])
        with torch.no_grad():
            probs = torch.softmax(model(torch.stack([tf(im.convert("RGB")) for im in images])), dim=1)
        names = cfg.get("label_names") or list(EUROSAT_CLASSES)
        return [{names[i]: float(p[i]) for i in range(len(names))} for p in probs]


def measure(variants: dict, repeats: int, slow_every: dict, warmup: int = 3) -> dict[str, list[float]]:
    """Round-robin timings in ms; a variant in ``slow_every`` runs only every n-th round."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in variants}
    for r in range(repeats):
        for name, fn in variants.items():
            if r % slow_every.get(name, 1):
                continue
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) * 1e3)
    return times


def summarise(model: str, case: str, times: dict[str, list[float]]) -> list[tuple]:
    med = {k: statistics.median(v) for k, v in times.items()}
    raw = med.get("raw onnxruntime")
    rows = []
    for name, v in times.items():
        p95 = sorted(v)[max(0, int(round(0.95 * len(v))) - 1)]
        rows.append((model, case, name, len(v), med[name], p95, med[name] / raw if raw else float("nan")))
    return rows


def bench_model(name: str, root: Path, args) -> list[tuple]:
    from landcover.predict import Predictor

    folder, note = make_folder(name, root)
    t = time.perf_counter()
    # One pass per patch for the like-for-like rows; the model's own TTA (if any) gets a row of its own.
    torch_p = Predictor.load(str(folder), threads=args.threads, tta=False)
    load_torch = time.perf_counter() - t
    t = time.perf_counter()
    onnx_p = Predictor.load(str(folder), backend="onnx", threads=args.threads, tta=False)
    load_onnx = time.perf_counter() - t
    tta_mode = onnx_p.model_tta
    tta_p = Predictor.load(str(folder), backend="onnx", threads=args.threads) if tta_mode else None
    threads = onnx_p.onnx.threads
    raw = RawOnnx(onnx_p.onnx.path, threads, onnx_p.mean, onnx_p.std, onnx_p.input_size)
    flask = FlaskStyle(folder)
    arch = torch_p.info["architecture"]
    print(f"\n{arch}: {note}; load torch {load_torch:.1f}s, onnx {load_onnx:.1f}s (export on first use, "
          f"cached at {onnx_p.onnx.path}); torch threads {torch.get_num_threads()}, ORT threads {threads}",
          flush=True)
    rng = np.random.default_rng(0)
    patches = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(args.batch)]
    # Same answer from every variant (sanity check, not a test).
    ref = torch_p.predict_tensor(torch.from_numpy(np.stack([np.asarray(p) for p in patches[:4]])).permute(0, 3, 1, 2))
    assert np.allclose(raw(patches[:4]), ref.numpy(), atol=1e-4), "raw ORT disagrees with torch"
    rows = []
    for case, images, repeats in (("1 patch", patches[:1], args.repeats),
                                  (f"batch {args.batch}", patches, max(5, args.repeats // 10))):
        variants = {"project torch": lambda im=images: torch_p.predict(im),
                    "project onnx": lambda im=images: onnx_p.predict(im),
                    "raw onnxruntime": lambda im=images: raw(im)}
        if tta_p is not None:
            variants[f"onnx + tta {tta_mode}"] = lambda im=images: tta_p.predict(im)
        slow = {}
        if not args.skip_flask:
            variants["flask-style"] = lambda im=images: flask(im)
            slow["flask-style"] = max(1, repeats // args.flask_repeats)
        rows += summarise(arch, case, measure(variants, repeats, slow))
        print_rows(rows[-len(variants):])
    return rows


def print_rows(rows: list[tuple]) -> None:
    for model, case, name, n, med, p95, ratio in rows:
        print(f"{model:20s} {case:9s} {name:18s} n={n:4d}  median {med:9.2f} ms  p95 {p95:9.2f} ms  "
              f"{ratio:7.2f}x raw ORT", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="default,wide_resnet50_2",
                        help="Comma-separated: 'default' and/or timm architectures.")
    parser.add_argument("--repeats", type=int, default=100, help="Rounds for one patch (batch: a tenth).")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="Intra-op threads (default: torch's).")
    parser.add_argument("--flask-repeats", type=int, default=5, help="Timed calls of the reloading predictor.")
    parser.add_argument("--skip-flask", action="store_true")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
          f"torch {torch.__version__}; load average before {load_before[0]:.2f}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="landcover-bench-") as tmp:
        for name in args.models.split(","):
            rows += bench_model(name.strip(), Path(tmp), args)
    print("\nsummary (median ms; ratio to raw ONNX Runtime on the same model)")
    print_rows(rows)
    for model in dict.fromkeys(r[0] for r in rows):
        for case in dict.fromkeys(r[1] for r in rows if r[0] == model):
            med = {r[2]: r[4] for r in rows if r[0] == model and r[1] == case}
            if "flask-style" in med:
                print(f"{model} {case}: flask-style / project onnx = {med['flask-style'] / med['project onnx']:.1f}x, "
                      f"project torch / project onnx = {med['project torch'] / med['project onnx']:.2f}x")
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} "
          f"(figures are depressed when other processes share the CPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
