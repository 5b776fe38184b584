"""Scene-mapping throughput: patches/s for a 2048 x 2048 px scene (1,024 tiles of 64 px at stride 64).

Usage::

    python bench/scene_throughput.py [--model M] [--data EUROSAT_DIR] [--batch-sizes 64,256,1024] [--threads 2]

The scene is random texture (throughput does not depend on content), or with ``--data`` a mosaic of
real EuroSAT patches drawn with a fixed seed; it is written to a temporary folder, never to the repo.
Timed end to end as the ``map`` command runs it (read, tile, batch, classify, average), model loading
excluded; the model-only rate (``predict_tensor`` on pre-cut tiles) is shown next to it. On a shared
machine wall-clock rates understate the code, so the rate implied by the process's CPU time
(``patches x threads / cpu_seconds``) is reported too. Goal: >= 1,000 patches/s on 2 CPU cores with the
default model.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landcover import mapping, raster  # noqa: E402
from landcover.labels import PATCH_SIZE_PX  # noqa: E402


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="Model folder or Hub id (default: the embedded model).")
    parser.add_argument("--data", default=None, help="Real EuroSAT folder: build the scene from real patches.")
    parser.add_argument("--size", type=int, default=2048, help="Scene side in px (default 2048).")
    parser.add_argument("--stride", type=int, default=PATCH_SIZE_PX)
    parser.add_argument("--batch-sizes", default="64,256,1024", help="Comma-separated batch sizes to try.")
    parser.add_argument("--backend", default="torch", choices=("torch", "onnx"), help="Inference backend.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    parser.add_argument("--repeat", type=int, default=2, help="Timed runs per batch size (best is reported).")
    parser.add_argument("--tta", nargs="?", const=True, default=False, choices=("hflip", "flips", "d4"),
                        help="Test-time augmentation per tile, as `map --tta` (default: one pass, as `map`).")
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    args = parser.parse_args(argv)

    import torch

    from landcover.predict import Predictor

    if args.threads:
        torch.set_num_threads(args.threads)
    predictor = Predictor.load(args.model, backend=args.backend)
    threads = min(torch.get_num_threads(), os.cpu_count() or 1)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        path = build_scene(args.size, args.data, Path(tmp))
        with raster.open_scene(path) as scene:
            rows, cols = mapping.tile_grid(scene.height, scene.width, stride=args.stride)
            tiles = torch.from_numpy(np.concatenate([b.tiles.reshape(-1, *b.tiles.shape[2:])
                                                     for b in mapping.iter_blocks(scene, args.stride)]))
            predictor.predict_tensor(tiles[:64], batch_size=64, tta=args.tta)  # warm-up (allocations, kernels)
            for bs in [int(b) for b in args.batch_sizes.split(",")]:
                best_map = best_model = best_cpu = float("inf")
                for _ in range(args.repeat):
                    t0, c0 = time.perf_counter(), time.process_time()
                    mapping.map_scene(predictor, scene, args.stride, batch_size=bs, progress=False, tta=args.tta)
                    best_map = min(best_map, time.perf_counter() - t0)
                    best_cpu = min(best_cpu, time.process_time() - c0)
                    t0 = time.perf_counter()
                    predictor.predict_tensor(tiles, batch_size=bs, tta=args.tta)
                    best_model = min(best_model, time.perf_counter() - t0)
                results.append({"batch_size": bs, "map_patches_per_s": round(rows * cols / best_map, 1),
                                "model_patches_per_s": round(rows * cols / best_model, 1),
                                "map_seconds": round(best_map, 3), "map_cpu_seconds": round(best_cpu, 3),
                                # What the threads would reach with the cores to themselves (shared machines):
                                "map_patches_per_s_if_idle": round(rows * cols * threads / best_cpu, 1)})
    report = {"scene_px": args.size, "stride": args.stride, "patches": rows * cols,
              "model": predictor.info.get("architecture"), "backend": args.backend,
              "tta": predictor.resolve_tta(args.tta),
              "input_size": predictor.input_size,
              "source": "real EuroSAT mosaic" if args.data else "random texture",
              "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
              "load_average": [round(x, 2) for x in os.getloadavg()], "results": results}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['patches']} patches ({args.size}x{args.size} px, stride {args.stride}), model "
              f"{report['model']} @ {report['input_size']} px ({args.backend}, tta {report['tta']}), "
              f"{report['torch_threads']} torch threads, load average {report['load_average']}")
        for r in results:
            print(f"  batch {r['batch_size']:5d}: map {r['map_patches_per_s']:8.1f} patches/s "
                  f"({r['map_seconds']:.2f} s; {r['map_patches_per_s_if_idle']:.1f}/s from CPU time)   "
                  f"model only {r['model_patches_per_s']:8.1f} patches/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
