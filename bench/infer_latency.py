"""CPU inference latency: the project's Predictor (onnx, int8, torch) vs the plain ONNX Runtime path.

For each model, one 64 x 64 patch and one batch of 64 patches (PIL images in, probabilities out):

* ``project onnx``   ``load_predictor(folder, backend="onnx", tta=False).predict(images)``: the float graph
  the folder ships (uint8 pixels in, preprocessing inside the graph), else exported once and cached;
* ``project int8``   the same with the shipped int8 graph (only where the folder ships one);
* ``today``          the previous onnx path: torch preprocessing + the network graph
  (``onnx_reference.TodayEngine``), the reference the probabilities are compared with (max |diff|);
* ``plain onnxruntime`` the fastest plain path a user would write on the same network graph: PIL
  ``img.resize((S, S))`` (bilinear), numpy ``/255``, mean/std, ``session.run``, numpy softmax: the floor
  the project's overhead is measured against (``onnx_reference.PlainOnnx``);
* ``project torch``  ``backend="torch"`` (eager, inference_mode);
* ``flask-style``    a per-request reload: build the model and load the weights from disk, torchvision
  transforms per image, forward, softmax (batch of 64 = one request with 64 images, so one reload).

Calls are interleaved round-robin (each round times every variant once), so load changes on a shared
machine hit all variants alike; medians and p95 are reported with their ratio to the plain path.

    python bench/infer_latency.py --models default --skip-flask      # the embedded model
    python bench/infer_latency.py                                    # + wide_resnet50_2 and flask-style

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

from landcover.models.hub import DEFAULT_MODEL_DIR  # noqa: E402
from landcover.core.labels import EUROSAT_CLASSES  # noqa: E402


def make_folder(name: str, root: Path) -> tuple[Path, str]:
    """A model folder for ``name`` (``default`` or a timm architecture) and a description of it."""
    if name == "default":
        if (DEFAULT_MODEL_DIR / "config.json").is_file():
            return DEFAULT_MODEL_DIR, "embedded default model"
        name, note = "efficientnet_lite0", "stand-in for the default model (untrained efficientnet_lite0, 64 px)"
    else:
        note = f"untrained {name}, 64 px"
    import timm

    from landcover.models.factory import create_model

    folder = root / name
    model = create_model(name, num_classes=10, pretrained=False, image_size=64, label_names=list(EUROSAT_CLASSES))
    timm.models.save_for_hf(model.eval(), folder, model_config={"label_names": list(EUROSAT_CLASSES)},
                            safe_serialization=True)
    return folder, note


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
    raw = med.get(PLAIN)
    rows = []
    for name, v in times.items():
        p95 = sorted(v)[max(0, int(round(0.95 * len(v))) - 1)]
        rows.append((model, case, name, len(v), med[name], p95, med[name] / raw if raw else float("nan")))
    return rows


PLAIN = "plain onnxruntime"


def bench_model(name: str, root: Path, args) -> list[tuple]:
    from onnx_reference import PlainOnnx, TodayEngine

    from landcover.inference.predictor import Predictor, load_predictor

    folder, note = make_folder(name, root)
    t = time.perf_counter()
    onnx_p = load_predictor(str(folder), backend="onnx", threads=args.threads, tta=False)
    load_onnx = time.perf_counter() - t
    # One pass per patch for the like-for-like rows.
    torch_p = load_predictor(str(folder), backend="torch", tta=False)
    try:
        int8_p = load_predictor(str(folder), backend="int8", threads=args.threads, tta=False)
    except ValueError:  # the folder ships no int8 graph
        int8_p = None
    threads = onnx_p.onnx.threads
    today = Predictor(torch_p.loaded, TodayEngine(torch_p.loaded, onnx_p.input_size, onnx_p.mean, onnx_p.std,
                                                  threads), tta=False)
    plain = PlainOnnx(today.engine.path, threads, onnx_p.mean, onnx_p.std, onnx_p.input_size,
                      onnx_p.temperature(None))
    flask = FlaskStyle(folder)
    arch = torch_p.info["architecture"]
    print(f"\n{arch}: {note}; onnx load {load_onnx:.2f} s ({onnx_p.onnx.source} graph {onnx_p.onnx.path.name}); "
          f"torch threads {torch.get_num_threads()}, ORT threads {threads}", flush=True)
    rng = np.random.default_rng(0)
    patches = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(args.batch)]
    if args.data:  # real patches instead of noise
        files = sorted(Path(args.data).glob("*/*.jpg"))
        patches = [Image.open(files[i]).convert("RGB") for i in rng.choice(len(files), args.batch, replace=False)]
    # Same answer as today's path (probabilities within 1e-3), the plain path as well.
    ref = np.array([[d[k] for k in today.labels] for d in today.predict(patches)])
    for label, probs in (("project onnx", onnx_p.predict(patches)), ("project torch", torch_p.predict(patches))):
        diff = np.abs(np.array([[d[k] for k in today.labels] for d in probs]) - ref).max()
        print(f"{label} vs today: max |probability difference| {diff:.2e} over {len(patches)} patches", flush=True)
    print(f"{PLAIN} vs today: max |probability difference| {np.abs(plain(patches) - ref).max():.2e}", flush=True)
    rows = []
    for case, images, repeats in (("1 patch", patches[:1], args.repeats),
                                  (f"batch {args.batch}", patches, max(5, args.repeats // 10))):
        variants = {"project onnx": lambda im=images: onnx_p.predict(im),
                    PLAIN: lambda im=images: plain(im),
                    "today": lambda im=images: today.predict(im),
                    "project torch": lambda im=images: torch_p.predict(im)}
        if int8_p is not None:
            variants["project int8"] = lambda im=images: int8_p.predict(im)
        slow = {}
        if not args.skip_flask:
            variants["flask-style"] = lambda im=images: flask(im)
            slow["flask-style"] = max(1, repeats // args.flask_repeats)
        rows += summarise(arch, case, measure(variants, repeats, slow))
        print_rows(rows[-len(variants):])
    return rows


def print_rows(rows: list[tuple]) -> None:
    for model, case, name, n, med, p95, ratio in rows:
        print(f"{model:20s} {case:9s} {name:18s} n={n:4d}  median {med:9.3f} ms  p95 {p95:9.3f} ms  "
              f"{ratio:7.2f}x plain", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="default,wide_resnet50_2",
                        help="Comma-separated: 'default' and/or timm architectures.")
    parser.add_argument("--repeats", type=int, default=100, help="Rounds for one patch (batch: a tenth).")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None,
                        help="Threads for ONNX Runtime and torch (default: the cores this process may use).")
    parser.add_argument("--data", default=None, help="EuroSAT folder: time real patches instead of noise.")
    parser.add_argument("--flask-repeats", type=int, default=5, help="Timed calls of the reloading predictor.")
    parser.add_argument("--skip-flask", action="store_true")
    args = parser.parse_args(argv)
    from landcover.core.defaults import default_threads

    args.threads = args.threads or default_threads()
    torch.set_num_threads(args.threads)  # the benchmark owns its process
    load_before = os.getloadavg()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
          f"torch {torch.__version__}; load average before {load_before[0]:.2f}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="landcover-bench-") as tmp:
        for name in args.models.split(","):
            rows += bench_model(name.strip(), Path(tmp), args)
    print("\nsummary (median ms; ratio to the plain ONNX Runtime path on the same model)")
    print_rows(rows)
    for model in dict.fromkeys(r[0] for r in rows):
        for case in dict.fromkeys(r[1] for r in rows if r[0] == model):
            med = {r[2]: r[4] for r in rows if r[0] == model and r[1] == case}
            print(f"{model} {case}: project onnx / plain = {med['project onnx'] / med[PLAIN]:.2f}x (target <= 1.2), "
                  f"today / plain = {med['today'] / med[PLAIN]:.2f}x, "
                  f"project torch / project onnx = {med['project torch'] / med['project onnx']:.2f}x")
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} "
          f"(figures are depressed when other processes share the CPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
