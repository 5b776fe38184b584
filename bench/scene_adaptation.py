"""Scene-level adaptation of the CNN, measured on a real scene: is any of it worth using?

Maps one scene (as ``landcover map`` does, every band fused) with the model as it is and with each adaptation,
scores every map against the reference like ``bench/real_scenes.py`` and prints each adaptation against the
unadapted map with paired block-bootstrap intervals:

* ``adabn-A``: AdaBN (Li et al. 2016) as ``landcover map --adapt bn`` runs it
  (:func:`landcover.scenes.adaptation.adapt_to_scene`), with the blend ``A`` of the scene's statistics;
* ``dos``: dark-object subtraction, each of R, G, B shifted so that the scene's 1st percentile lands on
  EuroSAT's (haze removal in the 8-bit stretch the model reads);
* ``stretch``: a linear map of the scene's 1st and 99th percentiles of R, G, B onto EuroSAT's.

EuroSAT's percentiles come from ``--data`` (the model's training split, ``--sample`` images). The colour
adaptations wrap this benchmark's own scene object (its block reader); the product has no such option. With
``--data`` the adapted models are also scored on the model's EuroSAT validation split, adapted to a mosaic of
those same images (what adaptation costs on EuroSAT-like input). Not a test: it reads real data.

    python bench/scene_adaptation.py --scene S/IMG_DATA --reference S/osm_landuse_water_1-50ha.gpkg \\
        --data EUROSAT_DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landcover.inference.predictor import load_predictor  # noqa: E402
from landcover.readers.imageio import open_image_file  # noqa: E402
from landcover.readers.raster import open_scene  # noqa: E402
from landcover.scenes.adaptation import adapt_to_scene  # noqa: E402
from landcover.scenes.mapping import MapOptions, map_scene  # noqa: E402
from landcover.scenes.reference import (CROSSWALKS, GridSpec, format_score, paired_difference,  # noqa: E402
                                        rasterize_reference, score_map)

PERCENTILES = (1, 99)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scene", required=True)
    p.add_argument("--reference", required=True)
    p.add_argument("--crosswalk", default="osm", choices=sorted(CROSSWALKS))
    p.add_argument("--data", required=True, help="EuroSAT RGB folder (the model's splits.json names its files).")
    p.add_argument("--model", default=None, help="Model folder (default: the embedded model).")
    p.add_argument("--stride", type=int, default=16)
    p.add_argument("--blends", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.5, 1.0])
    p.add_argument("--sample", type=int, default=2000, help="EuroSAT training images for the percentiles.")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def eurosat_percentiles(predictor, data: str, sample: int) -> np.ndarray:
    """``(2, 3)``: EuroSAT's 1st / 99th percentile of R, G, B over ``sample`` images of the model's training split."""
    splits = json.loads((Path(predictor.loaded.folder) / "splits.json").read_text())["files"]["train"]
    rng = np.random.default_rng(0)
    files = rng.choice(splits, size=min(sample, len(splits)), replace=False)
    pixels = np.concatenate([np.asarray(open_image_file(Path(data) / f)).reshape(-1, 3) for f in files])
    return np.percentile(pixels, PERCENTILES, axis=0)


def scene_percentiles(scene) -> np.ndarray:
    """``(2, 3)``: the scene's 1st / 99th percentile of R, G, B in the 8-bit stretch, over its valid pixels."""
    rgb, code = scene.read(0, 0, scene.height, scene.width)
    return np.percentile(rgb[:, code == 0], PERCENTILES, axis=1)


def colour_lut(scene_p: np.ndarray, target_p: np.ndarray, stretch: bool) -> np.ndarray:
    """uint8 ``(3, 256)`` per-band lookup: a shift of the 1st percentile (``stretch`` False) or a linear map of
    the 1st and 99th percentiles onto the target's."""
    x = np.arange(256, dtype=np.float64)
    luts = []
    for b in range(3):
        if stretch:
            gain = (target_p[1, b] - target_p[0, b]) / max(scene_p[1, b] - scene_p[0, b], 1e-6)
            y = target_p[0, b] + (x - scene_p[0, b]) * gain
        else:
            y = x - (scene_p[0, b] - target_p[0, b])
        luts.append(np.clip(np.round(y), 0, 255).astype(np.uint8))
    return np.stack(luts)


def with_colours(scene, lut: np.ndarray):
    """The same scene object, its RGB read through ``lut`` (the evidence bands unchanged)."""
    read_block = scene.read_block

    def adapted(row, col, height, width):
        rgb, code, reflectance = read_block(row, col, height, width)
        return np.stack([lut[b][rgb[b]] for b in range(3)]), code, reflectance

    scene.read_block = adapted
    return scene


def eurosat_cost(predictor, data: str, blends) -> dict[str, float]:
    """Single-pass accuracy on the model's validation split, as it is and adapted to a mosaic of those images."""
    import tempfile

    import rasterio
    import torch

    files = json.loads((Path(predictor.loaded.folder) / "splits.json").read_text())["files"]["validation"]
    images = np.stack([np.asarray(open_image_file(Path(data) / f)) for f in files])  # (N, 64, 64, 3)
    truth = np.array([predictor.labels.index(f.split("/")[0]) for f in files])
    per_row = int(np.ceil(np.sqrt(len(images))))
    rows = int(np.ceil(len(images) / per_row))
    mosaic = np.zeros((rows * 64, per_row * 64, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, per_row)
        mosaic[r * 64:(r + 1) * 64, c * 64:(c + 1) * 64] = image
    batch = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())

    def accuracy(p) -> float:
        return float((p.predict_tensor(batch, tta=False).argmax(1).numpy() == truth).mean())

    out = {"none": accuracy(predictor)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "validation_mosaic.tif"
        with rasterio.open(path, "w", driver="GTiff", height=mosaic.shape[0], width=mosaic.shape[1], count=3,
                           dtype="uint8") as dst:
            dst.write(mosaic.transpose(2, 0, 1))
        for blend in blends:
            with open_scene(path) as scene:
                out[f"adabn-{blend:g}"] = accuracy(adapt_to_scene(predictor, scene, blend))
    return out


def map_and_score(predictor, scene, stride: int, truth_raster):
    return score_map(map_scene(predictor, scene, MapOptions(stride=stride, progress=False)), truth_raster)


def main(argv=None) -> int:
    args = parse_args(argv)
    base = load_predictor(args.model, task="scenes", tta=False)
    with open_scene(args.scene) as scene:
        grid = GridSpec.of_scene(scene)
        truth_raster = rasterize_reference(args.reference, grid, CROSSWALKS[args.crosswalk])
        scene_p = scene_percentiles(scene)
    target_p = eurosat_percentiles(base, args.data, args.sample)
    print(f"1st / 99th percentile R, G, B: scene {scene_p.round(0).tolist()}, EuroSAT {target_p.round(0).tolist()}")
    runs = {}
    with open_scene(args.scene) as scene:
        runs["none"] = map_and_score(base, scene, args.stride, truth_raster)
    for blend in args.blends:
        with open_scene(args.scene) as scene:
            runs[f"adabn-{blend:g}"] = map_and_score(adapt_to_scene(base, scene, blend), scene, args.stride,
                                                     truth_raster)
    for name, stretch in (("dos", False), ("stretch", True)):
        with open_scene(args.scene) as scene:
            runs[name] = map_and_score(base, with_colours(scene, colour_lut(scene_p, target_p, stretch)), args.stride,
                                       truth_raster)
    figures = {}
    (ref_mapped, truth, _) = runs["none"]
    for name, (mapped, _, score) in runs.items():
        print(f"{name}\n  " + format_score(score).replace("\n", "\n  "))
        figures[name] = score.to_json()
        if name != "none":
            diff = paired_difference(ref_mapped, mapped, truth, block=max(1, 64 // args.stride))
            print("  " + diff.describe("none", name))
            figures[name]["vs_none"] = {"agreement": diff.agreement, "balanced": diff.balanced}
    cost = eurosat_cost(base, args.data, args.blends)
    print("EuroSAT validation, single pass, adapted to a mosaic of its own images: "
          + ", ".join(f"{k} {v:.4f}" for k, v in cost.items()))
    figures["eurosat_validation"] = cost
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
