"""Region mapping throughput: `landcover map-region` on Ray (1 and N workers) against sequential `landcover map`.

The same scenes are mapped three ways in one run, with the same model, backend and options:

* ``sequential``: one process, the model loaded once, ``map_scene`` per scene (what a loop of ``landcover map``
  does without its per-call model load);
* ``ray xK``: ``map_region`` with K local workers, end to end (Ray start-up, actor model loads, mapping, per-scene
  writes; the mosaic is timed apart).

It prints tiles/s of each, the ratios to sequential, and the Ray overhead per scene ((Ray x1 time - sequential time)
/ scenes). Scenes are generated (4-band reflectance GeoTIFFs of EuroSAT-like texture) unless ``--scenes`` names real
ones. Not a test: run it on an idle machine (check ``uptime``).

    python bench/region_throughput.py --scenes 8 --size 1024 --stride 32 --workers 1 2
    python bench/region_throughput.py --scenes 1 --size 4096 --stride 32 --workers 1 2   # one scene, in row parts
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_scenes(folder: Path, n: int, size: int) -> list[str]:
    import rasterio
    from affine import Affine

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        base = rng.uniform(300, 2500, (4, size // 16, size // 16))
        bands = np.kron(base, np.ones((16, 16))) + rng.normal(0, 60, (4, size, size))
        path = folder / f"scene{i}.tif"
        with rasterio.open(path, "w", driver="GTiff", height=size, width=size, count=4, dtype="uint16",
                           crs="EPSG:32633", transform=Affine(10, 0, 400000 + i * size * 10, 0, -10, 5800000)) as dst:
            dst.write(np.clip(bands, 1, 10000).astype(np.uint16))
            for b, name in enumerate(("B02", "B03", "B04", "B08"), start=1):
                dst.set_band_description(b, name)
        paths.append(str(path))
    return paths


def main(argv=None) -> int:
    from landcover.inference.predictor import load_predictor
    from landcover.readers.raster import open_scene
    from landcover.scenes.mapping import MapOptions, map_scene, tile_grid
    from landcover.scenes.region import RegionOptions, _run_on_ray, build_outputs, expand_inputs, scene_id

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", nargs="+", default=["8"], help="A count of generated scenes, or scene paths.")
    p.add_argument("--size", type=int, default=1024, help="Generated scene side in px.")
    p.add_argument("--stride", type=int, default=32)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--model", default=None)
    p.add_argument("--backend", default="auto")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-region-"))
    try:
        refs = make_scenes(work, int(args.scenes[0]), args.size) if args.scenes[0].isdigit() else \
            expand_inputs(args.scenes)
        options = MapOptions(stride=args.stride, progress=False)
        predictor = load_predictor(args.model, backend=args.backend, task="scenes")
        start, tiles = time.perf_counter(), 0
        for ref in refs:
            with open_scene(ref) as scene:
                result = map_scene(predictor, scene, options)
            tiles += int(np.prod(tile_grid(result.height, result.width, result.patch_size, result.stride)))
        sequential = time.perf_counter() - start
        print(f"{len(refs)} scenes, {tiles} tiles, stride {args.stride}, backend {args.backend}")
        print(f"  sequential (model loaded once)  {sequential:8.2f} s  {tiles / sequential:8.1f} tiles/s  1.00x")
        ray_times = {}
        for workers in args.workers:
            out = work / f"ray{workers}"
            region = RegionOptions(out, options, model=args.model, backend=args.backend, workers=workers,
                                   progress=False)
            (out / "scenes").mkdir(parents=True)
            start = time.perf_counter()
            failed, parts = _run_on_ray(refs, out / "scenes", region)
            ray_times[workers] = time.perf_counter() - start
            mosaic_start = time.perf_counter()
            import json

            summaries = {r: json.loads((out / "scenes" / scene_id(r) / "summary.json").read_text()) for r in refs
                         if r not in failed}
            build_outputs(refs, summaries, failed, region)
            mosaic = time.perf_counter() - mosaic_start
            print(f"  ray x{workers:<2d} (end to end)          {ray_times[workers]:8.2f} s  "
                  f"{tiles / ray_times[workers]:8.1f} tiles/s  {sequential / ray_times[workers]:.2f}x"
                  f"   (mosaic and areas after it: {mosaic:.2f} s; failed {len(failed)}; large scenes in {parts} "
                  f"row parts)")
        if 1 in ray_times:
            print(f"  Ray overhead per scene (x1 vs sequential): {(ray_times[1] - sequential) / len(refs):.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
