"""Scene-mapping throughput, end to end, today's path next to the shipped float and int8 ONNX graphs.

Usage::

    python bench/scene_throughput.py [--model M] [--data EUROSAT_DIR] [--size 2048] [--variants today,onnx,int8]

Each timed run does what ``python -m landcover map scene.png`` does between loading the model and drawing
the map: open and decode the PNG, cut the tiles, classify them (preprocessing included), assemble the
per-cell grid. Model loading is timed on its own. Variants, each a :class:`landcover.inference.predictor.Predictor`:

* ``today``: the map path before this benchmark's work: torch preprocessing + the network in ONNX Runtime
  float32 (:class:`onnx_reference.TodayEngine`);
* ``onnx``: the shipped float graph (uint8 pixels in, preprocessing inside the graph);
* ``int8``: the shipped static int8 graph (what ``map`` uses by default when its accuracy cost is within
  budget; see ``landcover/core/defaults.py``);
* ``torch``: eager torch;
* ``BACKEND@FOLDER`` (e.g. ``int8@runs/student``): that backend on another model folder, side by side with
  ``--model``'s variants in the same run (its test accuracy on ``--model``'s test split).

The scene is a mosaic of real EuroSAT patches with ``--data`` (fixed seed), else random texture; it is
written to a temporary folder. With ``--data``, the accuracy of each variant on the model's test split
(single pass) is measured too, and the int8 cost against the float graph printed. Runs are interleaved
(round-robin) so that load changes hit every variant alike; the best of ``--repeat`` is reported, with
the rate implied by CPU time (``tiles x threads / cpu seconds``) next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from landcover.readers import raster  # noqa: E402
from landcover.scenes import mapping  # noqa: E402
from landcover.core.labels import PATCH_SIZE_PX  # noqa: E402


def build_scene(size: int, data: str | None, folder: Path, seed: int = 0) -> Path:
    """Write a ``size x size`` PNG scene (random texture, or real patches from ``data``) into ``folder``."""
    rng = np.random.default_rng(seed)
    n = size // PATCH_SIZE_PX
    if data:
        files = sorted(Path(data).glob("*/*.jpg"))
        if not files:
            raise SystemExit(f"--data {data}: expected <Class>/<Class>_<N>.jpg files, found none")
        chosen = [files[i] for i in rng.choice(len(files), n * n, replace=len(files) < n * n)]
        patches = [np.asarray(Image.open(f).convert("RGB")) for f in chosen]
        mosaic = np.concatenate([np.concatenate(patches[r * n:(r + 1) * n], axis=1) for r in range(n)])
    else:
        mosaic = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    path = folder / "scene.png"
    Image.fromarray(mosaic).save(path)
    return path


def load_variant(name: str, model, threads: int):
    """(predictor, load seconds) for a variant name (see the module docstring)."""
    from landcover.models.factory import data_config
    from landcover.inference.predictor import Predictor, load_predictor

    t = time.perf_counter()
    name, _, other = name.partition("@")
    model = other or model
    if name == "today":
        from onnx_reference import TodayEngine

        base = load_predictor(model, backend="torch", tta=False)
        dc = data_config(base.model)
        engine = TodayEngine(base.loaded, base.input_size, dc["mean"], dc["std"], threads)
        predictor = Predictor(base.loaded, engine, tta=False)
    else:
        predictor = load_predictor(model, backend=name, task="scenes", tta=False, threads=threads)
        if predictor.backend != name:
            raise SystemExit(f"variant {name}: got the {predictor.backend} backend instead")
    return predictor, time.perf_counter() - t


def map_once(predictor, path: Path, stride: int, batch_size: int) -> tuple[float, float, int]:
    """(wall s, cpu s, tiles): open + decode + tile + classify + grid, as the map command."""
    t0, c0 = time.perf_counter(), time.process_time()
    with raster.open_scene(path) as scene:
        result = mapping.map_scene(predictor, scene, stride=stride, batch_size=batch_size, progress=False, tta=False)
    return time.perf_counter() - t0, time.process_time() - c0, int(result.classified.size)


def test_accuracy(predictors: dict, data: str) -> dict:
    """Single-pass accuracy of each variant on the model's test split (its splits.json when recorded)."""
    import torch

    from landcover.inference.evaluate import load_split

    first = next(iter(predictors.values()))
    test = load_split(first, data, "test")
    out = {}
    for name, p in predictors.items():
        probs = p.predict_tensor(test.images, batch_size=256, tta=False)
        out[name] = float((probs.argmax(1) == torch.as_tensor(test.labels)).float().mean())
    return {"n": len(test), "accuracy": out}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="Model folder or Hub id (default: the embedded model).")
    parser.add_argument("--data", default=None, help="Real EuroSAT folder: real-patch scene + test accuracy.")
    parser.add_argument("--size", type=int, default=2048, help="Scene side in px (default 2048: 1,024 tiles).")
    parser.add_argument("--stride", type=int, default=PATCH_SIZE_PX)
    parser.add_argument("--batch-size", type=int, default=256, help="Tiles per forward pass (map's default).")
    parser.add_argument("--variants", default="today,onnx,int8",
                        help="Comma-separated: today, onnx, int8, torch, BACKEND@FOLDER.")
    parser.add_argument("--threads", type=int, default=None, help="Threads (default: the cores we may use).")
    parser.add_argument("--repeat", type=int, default=5, help="Timed runs per variant (best is reported).")
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    args = parser.parse_args(argv)

    import torch

    from landcover.core.defaults import default_threads

    threads = args.threads or default_threads()
    torch.set_num_threads(threads)  # the benchmark owns its process: torch preprocessing gets the same cores
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    predictors, load_s = {}, {}
    for name in names:
        predictors[name], load_s[name] = load_variant(name, args.model, threads)
    runs = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        path = build_scene(args.size, args.data, Path(tmp))
        for name in names:  # warm-up: allocations, kernels, page cache
            map_once(predictors[name], path, args.stride, args.batch_size)
        for _ in range(args.repeat):
            for name in names:
                runs[name].append(map_once(predictors[name], path, args.stride, args.batch_size))
    tiles = runs[names[0]][0][2]
    rows = []
    for name in names:
        wall = min(r[0] for r in runs[name])
        cpu = min(r[1] for r in runs[name])
        rows.append({"variant": name, "backend": predictors[name].backend, "load_s": round(load_s[name], 3),
                     "map_s": round(wall, 4), "tiles_per_s": round(tiles / wall, 1),
                     "median_tiles_per_s": round(tiles / float(np.median([r[0] for r in runs[name]])), 1),
                     "tiles_per_s_from_cpu_time": round(tiles * threads / cpu, 1)})
    report = {"scene_px": args.size, "stride": args.stride, "tiles": tiles, "batch_size": args.batch_size,
              "source": "real EuroSAT mosaic" if args.data else "random texture", "threads": threads,
              "cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()], "results": rows}
    if args.data:
        report["test"] = test_accuracy(predictors, args.data)
        acc = report["test"]["accuracy"]
        if "int8" in acc and "onnx" in acc:
            report["test"]["int8_cost_points"] = round(100 * (acc["onnx"] - acc["int8"]), 3)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{tiles} tiles ({args.size}x{args.size} px, stride {args.stride}, {report['source']}), batch "
          f"{args.batch_size}, {threads} threads, load average {report['load_average']}")
    base = rows[0]["tiles_per_s"]
    for r in rows:
        print(f"  {r['variant']:6s} ({r['backend']:5s}) map end to end {r['tiles_per_s']:8.1f} tiles/s "
              f"(best of {args.repeat}: {r['map_s']:.3f} s; median {r['median_tiles_per_s']:.1f}/s; "
              f"{r['tiles_per_s_from_cpu_time']:.1f}/s from CPU time)  {r['tiles_per_s'] / base:5.2f}x "
              f"{rows[0]['variant']}   model load {r['load_s']:.2f} s")
    if args.data:
        t = report["test"]
        print(f"test split ({t['n']} patches, single pass): " +
              ", ".join(f"{k} {100 * v:.2f} %" for k, v in t["accuracy"].items()))
        if "int8_cost_points" in t:
            print(f"int8 accuracy cost vs float: {t['int8_cost_points']:+.2f} points (budget 0.3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
