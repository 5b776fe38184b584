"""Real-scene harness: map real Sentinel-2 scenes and score the maps against independent references.

For each scene (``--scene PATH --reference FILE``, repeatable in pairs) and each model x setting, the scene is
mapped exactly as ``landcover map`` maps it, the reference is rasterized on the scene's 10 m grid, both sides
are collapsed onto Forest / Grass-crop / Urban / Water, and every cell at least ``--purity`` one reference class
is scored (``landcover.scenes.reference``). Cells the map leaves out (masked, uncertain) count as misses.

    python bench/real_scenes.py \\
        --scene ../shared/real-scenes/brandenburg-2017-02-16-l1c/IMG_DATA \\
        --reference ../shared/real-scenes/brandenburg-2017-02-16-l1c/osm_landuse_water_1-50ha.gpkg \\
        --stride 16 --settings rgb bands

Settings (what a user gets with the matching ``landcover map`` flags):

* ``rgb``: the CNN on the RGB bands only (``--evidence rgb``);
* ``bands``: every band the scene has (``--evidence auto``, the default): NIR / SWIR / SCL evidence fused with
  the CNN's probabilities;
* ``adapted``: ``bands`` with the CNN adapted to the scene first (``--adapt bn``: AdaBN).

Prints, per scene, one block per model x setting: agreement, balanced accuracy (mean per-class recall), per-class
recall, coverage and the confusion matrix; then each further model against the first, per setting: the differences
in agreement and balanced accuracy with 95 % intervals from a bootstrap over blocks of cells (one tile's footprint;
``landcover.scenes.reference.paired_difference``) and the cells right in one map only. ``--json FILE`` writes all
of it. Not a test: it reads real data.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
import sys
import textwrap
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landcover.scenes.reference import (CROSSWALKS, DEFAULT_PURITY, GridSpec, format_score,  # noqa: E402
                                        paired_difference, rasterize_reference, score_map)

SETTINGS = ("rgb", "bands", "adapted")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scene", action="append", required=True, help="Scene as `landcover map` reads it (repeat).")
    p.add_argument("--reference", action="append", required=True,
                   help="Reference for the scene of the same position: vector file or class raster (repeat).")
    p.add_argument("--crosswalk", default="osm", choices=sorted(CROSSWALKS),
                   help="How reference values map onto the four classes (default osm).")
    p.add_argument("--field", default="fclass", help="Vector field holding the class (default fclass).")
    p.add_argument("--models", nargs="+", default=["default"],
                   help="Model folders or Hub ids; `default` = the embedded model.")
    p.add_argument("--settings", nargs="+", default=["rgb", "bands"], choices=SETTINGS)
    p.add_argument("--stride", type=int, default=16)
    p.add_argument("--purity", type=float, default=DEFAULT_PURITY)
    p.add_argument("--min-confidence", type=float, default=None,
                   help="Override the maps' uncertainty threshold (default: the map's own default).")
    p.add_argument("--backend", default="auto")
    p.add_argument("--json", default=None, help="Write every figure to this JSON file.")
    args = p.parse_args(argv)
    if len(args.scene) != len(args.reference):
        p.error(f"Give one --reference per --scene; got {len(args.scene)} scenes and {len(args.reference)}.")
    return args


def run_one(predictor, scene_path: str, truth_raster, setting: str, args) -> tuple[dict, object, object, tuple]:
    from landcover.readers.raster import open_scene
    from landcover.scenes.mapping import MapOptions, map_scene

    options = MapOptions(stride=args.stride, evidence="rgb" if setting == "rgb" else "auto", progress=False,
                         adapt="bn" if setting == "adapted" else "none")
    if args.min_confidence is not None:
        options = replace(options, min_confidence=args.min_confidence)
    start = time.perf_counter()
    with open_scene(scene_path) as scene:
        if truth_raster is None:
            grid = GridSpec.of_scene(scene)
            truth_raster = rasterize_reference(args.reference[args.scene.index(scene_path)], grid,
                                               CROSSWALKS[args.crosswalk], args.field)
        result = map_scene(predictor, scene, options)
    seconds = time.perf_counter() - start
    mapped, truth, score = score_map(result, truth_raster, args.purity)
    figures = {**score.to_json(), "evidence": result.evidence_note, "seconds": round(seconds, 1)}
    return figures, truth_raster, score, (mapped, truth)


def print_block(name: str, figures: dict, score) -> None:
    print(f"  {name}  ({figures['seconds']} s; evidence: {figures['evidence']})")
    print(textwrap.indent(format_score(score), "    "))


def print_differences(args, cells: dict, results: dict) -> None:
    """Each model against the first, setting by setting: paired differences with block-bootstrap intervals."""
    first = args.models[0]
    for ref in args.models[1:]:
        for setting in args.settings:
            (a, truth), (b, _) = cells[first, setting], cells[ref, setting]
            diff = paired_difference(a, b, truth, block=max(1, 64 // args.stride))
            print(f"  {setting}: {diff.describe(first, ref)}")
            results[f"{ref}/{setting} - {first}/{setting}"] = {
                "agreement": diff.agreement, "balanced": diff.balanced, "only_first": diff.only_a,
                "only_this": diff.only_b}


def main(argv=None) -> int:
    from landcover.inference.predictor import load_predictor

    args = parse_args(argv)
    results: dict = {}
    for scene_path in args.scene:
        print(f"scene {scene_path}")
        truth_raster, cells = None, {}
        for ref in args.models:
            predictor = load_predictor(None if ref == "default" else ref, backend=args.backend, task="scenes")
            for setting in args.settings:
                figures, truth_raster, score, cells[ref, setting] = run_one(predictor, scene_path, truth_raster,
                                                                            setting, args)
                if figures["cells"] == 0:
                    print("  no reference cell is scored: does the reference overlap the scene?")
                print_block(f"{ref} / {setting}", figures, score)
                results.setdefault(scene_path, {})[f"{ref}/{setting}"] = figures
        print_differences(args, cells, results.setdefault(scene_path, {}))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
