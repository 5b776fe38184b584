"""Command lines: ``train.py`` and ``python -m landcover {evaluate,predict,push,export-onnx,map,change,map-region,
score}``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional

from landcover.core.config import TTA_MODES, TrainConfig, add_dataclass_arguments, tta_choices_help
from landcover.core.defaults import BACKENDS, DEFAULT_BACKEND
from landcover.readers.imageio import IMAGE_SUFFIXES


def train_main(argv: Optional[list[str]] = None) -> int:
    """Entry point of ``train.py``: train, write the model folder, optionally push it."""
    parser = argparse.ArgumentParser(description="Fine-tune a timm model on EuroSAT with accelerate.")
    add_dataclass_arguments(parser, TrainConfig)
    cfg = TrainConfig(**vars(parser.parse_args(argv)))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from landcover.models.hub import PushError, push_folder
    from landcover.training.model_folder import save_model_folder
    from landcover.training.trainer import CheckpointError, NonFiniteLossError, train

    try:
        result = train(cfg)
    except (CheckpointError, NonFiniteLossError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result is None:  # not the main process
        return 0
    folder = save_model_folder(result)
    print(f"model folder: {folder}")
    if cfg.push_to_hub:
        try:
            url = push_folder(folder, cfg.push_to_hub, private=cfg.hub_private, revision=cfg.hub_revision)
        except PushError as err:
            print(f"error: {err}", file=sys.stderr)
            return 3
        print(f"pushed: {url}")
    return 0


def _evaluate(args) -> int:
    from landcover.inference.evaluate import evaluate_model

    result = evaluate_model(args.model, args.data, split=args.split, batch_size=args.batch_size,
                            backend=args.backend, tta=args.tta)
    if args.record:
        from landcover.models.hub import resolve_model_dir
        from landcover.training.model_folder import record_test_evaluation

        if args.split != "test":
            raise ValueError(f"--record stores a test-split evaluation; got --split {args.split}.")
        record_test_evaluation(resolve_model_dir(args.model), result)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"model {result['model']}  data {result['data']}  split {result['split']}  n {result['n']}")
        low, high = result["accuracy_ci95"]
        print(f"accuracy {result['accuracy']:.4f} (95% CI {low:.4f}-{high:.4f})  macro F1 {result['macro_f1']:.4f}")
        if result["ece"] is not None:
            print(f"ECE {result['ece']:.4f}  NLL {result['nll']:.4f}  (temperature {result['temperature']:g}, "
                  f"test-time augmentation {result['test_time_augmentation'] or 'none'})")
        for name, m in result["per_class"].items():
            print(f"  {name:22s} P {m['precision']:.3f}  R {m['recall']:.3f}  F1 {m['f1']:.3f}  n {m['support']}")
    return 0


PREDICT_CHUNK = 64  # images decoded and classified at a time (bounded memory for big folders)


def expand_images(arguments: list[str]) -> list[Path]:
    """Files as given; a folder becomes its image files (recursively, sorted). Missing paths are kept (and
    reported when opened) so that the user sees each one."""
    out: list[Path] = []
    for arg in arguments:
        path = Path(arg)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ValueError(f"Folder {arg!r} holds no image files ({', '.join(IMAGE_SUFFIXES)}); expected "
                                 f"image files or folders of them.")
            out += found
        else:
            out.append(path)
    return out


def _predict(args) -> int:
    from landcover.readers.imageio import UploadError, open_image_file
    from landcover.inference.predictor import Predictor

    paths = expand_images(args.images)
    predictor = Predictor.load(args.model, backend=args.backend)
    rows, failed = [], 0
    for start in range(0, len(paths), PREDICT_CHUNK):
        chunk, images, errors = paths[start:start + PREDICT_CHUNK], [], {}
        for path in chunk:
            try:
                images.append(open_image_file(path))
            except UploadError as err:
                errors[path] = str(err)
        results = iter(predictor.predict(images, top_k=args.top_k))
        for path in chunk:
            if path in errors:
                failed += 1
                rows.append({"image": str(path), "error": errors[path]})
                if not args.json:
                    print(f"error: {path}: {errors[path]}", file=sys.stderr)
                continue
            probs = next(results)
            rows.append({"image": str(path), "label": next(iter(probs)), "probabilities": probs})
            if not args.json:
                print(f"{path}: " + ", ".join(f"{k} {v:.3f}" for k, v in probs.items()), flush=True)
    if args.json:
        print(json.dumps(rows))
    if failed:
        print(f"error: {failed} of {len(paths)} file(s) could not be classified (see above).", file=sys.stderr)
        return 1
    return 0


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _push(args) -> int:
    from landcover.models.hub import PushError, push_folder

    try:
        print(push_folder(args.folder, args.repo_id, private=args.private, revision=args.revision))
    except PushError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    return 0


def _export_onnx(args) -> int:
    from landcover.inference.quantize import export_folder

    export_folder(args.folder, args.data, calibration=args.calibration)
    return 0


def _add_backend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default=DEFAULT_BACKEND, choices=BACKENDS,
                        help="Inference engine (default auto: the ONNX graph the model folder ships, else "
                             "torch; onnx exports once and caches; see landcover/core/defaults.py).")


# ---------------------------------------------------------------- map and change (scene commands)


def _bands_arg(text: str) -> tuple[int, ...]:
    try:
        bands = tuple(int(b) for b in text.replace(" ", "").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three 1-based band numbers like 4,3,2, got {text!r}") from None
    if len(bands) != 3:
        raise argparse.ArgumentTypeError(f"expected three band numbers (R,G,B), got {text!r}")
    return bands


def _add_scene_options(p: argparse.ArgumentParser, model_help: str, outputs: bool = True) -> None:
    from landcover.core.labels import PATCH_SIZE_PX
    from landcover.readers.radiometry import KINDS
    from landcover.scenes.evidence import EVIDENCE_MODES

    p.add_argument("--model", default=None, help=model_help)
    p.add_argument("--stride", type=int, default=PATCH_SIZE_PX,
                   help=f"Tile step in px; divides {PATCH_SIZE_PX}. Below {PATCH_SIZE_PX}, overlapping tiles are "
                        f"averaged per stride x stride cell (default {PATCH_SIZE_PX}: one cell per tile).")
    p.add_argument("--batch-size", type=positive_int, default=256, help="Tiles per forward pass (bounds memory).")
    p.add_argument("--bands", type=_bands_arg, default=None,
                   help="Raster bands to use as R,G,B, 1-based (default: B04/B03/B02 or red/green/blue from the "
                        "band descriptions, else the usual Sentinel-2 stack orders).")
    p.add_argument("--scale", default="auto", choices=("auto",) + KINDS,
                   help="How the values are stored (default auto: inferred from dtype, metadata and values; "
                        "the choice is printed): uint8 as is, x10000 / x1000 integer reflectance, float "
                        "reflectance 0..1, display16 (0..65535 display image).")
    p.add_argument("--offset", type=float, default=None,
                   help="Raw value subtracted first (1000 for Sentinel-2 baseline >= 04.00; default inferred).")
    p.add_argument("--clip", type=float, default=None,
                   help="Raw value (after the offset) shown as 255; overrides --scale (EuroSAT: 2750 for "
                        "reflectance x 10000).")
    p.add_argument("--pixel-size", type=float, default=None,
                   help="Ground pixel size in metres (default: from the GeoTIFF, else 10 m assumed). Scenes not "
                        "at ~10 m are resampled to 10 m before tiling.")
    p.add_argument("--no-resample", dest="resample", action="store_false",
                   help="Tile at the native pixel size even when it is not ~10 m (the model expects 10 m).")
    if outputs:
        p.add_argument("--geotiff", default=None, help="Also write the class raster(s) as a GeoTIFF with the scene's "
                                                       "CRS and transform (georeferenced scenes only).")
        p.add_argument("--geojson", default=None, help="Also write class regions as GeoJSON polygons in the scene's "
                                                       "CRS (georeferenced scenes only).")
    p.add_argument("--backend", default=DEFAULT_BACKEND, choices=BACKENDS,
                   help="Inference engine (default auto: the int8 graph the model folder ships when its measured "
                        "accuracy cost is within budget, else its float ONNX graph, else torch; falls back to "
                        "torch if ONNX fails; see landcover/core/defaults.py).")
    p.add_argument("--tta", nargs="?", const=True, default=False, choices=tuple(TTA_MODES), metavar="MODE",
                   help=f"Average flips/rotations of every tile ({tta_choices_help()}; bare --tta: the model's mode "
                        f"or d4). Maps use one pass by default.")
    p.add_argument("--evidence", default="auto", choices=EVIDENCE_MODES,
                   help="auto (default): where the scene has NIR (and SWIR) bands, water is decided per cell by "
                        "the water indices NDWI/MNDWI and leaf-off forest by NDVI and SWIR2 (B12), fused with "
                        "the CNN; rgb: the CNN on RGB alone.")
    p.add_argument("--json", action="store_true", help="Print one JSON object on stdout.")
    p.add_argument("--no-progress", action="store_true", help="No progress bar.")


def _map_options(args):
    from landcover.scenes.mapping import MapOptions

    return MapOptions(stride=args.stride, batch_size=args.batch_size,
                      progress=False if args.no_progress else None, tta=args.tta, evidence=args.evidence,
                      min_confidence=args.min_confidence if args.command in ("map", "map-region") else 0.0,
                      adapt=getattr(args, "adapt", "none"))


def add_scene_commands(sub) -> None:
    """Add ``map`` and ``change`` to the ``python -m landcover`` subparsers."""
    from landcover.scenes.mapping import ADAPT_MODES, DEFAULT_MIN_CONFIDENCE

    model_help = "Model folder or Hub id org/name[@revision] (default: the embedded model)."
    scene_help = ("PNG/JPEG, GeoTIFF (RGB or Sentinel-2 bands), STAC item JSON (path or URL), or a folder of "
                  "per-band files (B02/B03/B04, optional SCL)")
    mp = sub.add_parser("map", help="Land-cover map of a whole scene.",
                        description="Tile a scene into 64 px patches at 10 m, classify them, and write a "
                                    "colour-coded map with legend and per-class areas (clouds masked when the "
                                    "product has an SCL layer).")
    mp.add_argument("scene", help=scene_help + ".")
    mp.add_argument("--out", required=True, help="Class map PNG with legend and areas.")
    mp.add_argument("--overlay", default=None, help="Also write the map blended over the scene (PNG).")
    mp.add_argument("--confidence", default=None, help="Also write per-cell confidence as a greyscale PNG.")
    mp.add_argument("--min-confidence", type=float, default=DEFAULT_MIN_CONFIDENCE,
                    help=f"Cells whose top-1 probability is below this are 'uncertain': hatched grey in the map, "
                         f"null in the JSON grid, counted apart in the areas (default {DEFAULT_MIN_CONFIDENCE:g}, "
                         f"chosen on validation and a real scene; 0 classifies every cell).")
    mp.add_argument("--adapt", default="none", choices=ADAPT_MODES,
                    help="bn: re-estimate the CNN's BatchNorm statistics on this scene's own tiles first, blended "
                         "with the trained ones (AdaBN; more villages and forests found on the development scene, "
                         "more fields mistaken for villages: see docs/scenes.md). Default none.")
    _add_scene_options(mp, model_help)
    mp.set_defaults(func=_map_command)

    ch = sub.add_parser("change", help="Land-cover change between two co-registered scenes.",
                        description="Read both dates the same way, map them on the same grid, and report "
                                    "per-tile class changes and a from->to transition matrix.")
    ch.add_argument("before", help=f"Earlier scene: {scene_help}.")
    ch.add_argument("after", help="Later scene (same grid: size, and for GeoTIFFs CRS and transform).")
    ch.add_argument("--out", required=True, help="Change map PNG (before | after | changes, with legend).")
    ch.add_argument("--min-confidence", type=float, default=0.5,
                    help="A tile counts as changed only where both dates reach this confidence (default 0.5).")
    _add_scene_options(ch, model_help)
    ch.set_defaults(func=_change_command)

    rg = sub.add_parser("map-region", help="Map many scenes in parallel on Ray into one mosaic with areas.",
                        description="Map every scene on a local Ray cluster (--workers) or an existing one "
                                    "(--address), one model load per worker; write per-scene results as they "
                                    "finish (a rerun skips them), then one Cloud-Optimized GeoTIFF mosaic, "
                                    "areas.json (geodesic areas), scenes.geojson, overview.png and run.json.")
    rg.add_argument("inputs", nargs="*", help=f"Scenes ({scene_help}), or @list.txt with one per line.")
    rg.add_argument("--stac-api", default=None, help="Also map the items of a STAC API search (landing page URL).")
    rg.add_argument("--collections", nargs="+", default=["sentinel-2-l2a"], help="With --stac-api.")
    rg.add_argument("--bbox", nargs=4, type=float, default=None, metavar=("W", "S", "E", "N"),
                    help="With --stac-api: degrees.")
    rg.add_argument("--datetime", default=None, help="With --stac-api: e.g. 2024-06-01/2024-06-30.")
    rg.add_argument("--max-cloud", type=float, default=None, help="With --stac-api: eo:cloud_cover below this.")
    rg.add_argument("--max-items", type=positive_int, default=100, help="With --stac-api (default 100).")
    rg.add_argument("--out", required=True, help="Output folder (created; reused by a rerun to resume).")
    rg.add_argument("--workers", type=positive_int, default=2, help="Local Ray workers (default 2).")
    rg.add_argument("--address", default=None, help="Join an existing Ray cluster (e.g. auto, ray://host:10001).")
    rg.add_argument("--crs", default=None, help="CRS of the mosaic, e.g. EPSG:3035 (default: the first scene's).")
    rg.add_argument("--retries", type=int, default=2, help="Re-runs of a scene whose worker died (default 2).")
    rg.add_argument("--threads", type=positive_int, default=None,
                    help="Threads per worker (default: the cores shared out among local workers; 1 on a cluster).")
    rg.add_argument("--min-confidence", type=float, default=DEFAULT_MIN_CONFIDENCE,
                    help=f"Cells below this top-1 probability are uncertain (255 in the mosaic; default "
                         f"{DEFAULT_MIN_CONFIDENCE:g}).")
    _add_scene_options(rg, model_help, outputs=False)
    rg.set_defaults(func=_map_region_command)

    from landcover.scenes.reference import CROSSWALKS, DEFAULT_PURITY

    sc = sub.add_parser("score", help="Score a class GeoTIFF against a land-cover reference.",
                        description="Rasterize a reference (vector polygons or a class raster, any CRS) on the "
                                    "map's grid, collapse both onto Forest / Grass-crop / Urban / Water, and score "
                                    "every cell that is at least --purity one reference class; masked and "
                                    "uncertain cells count as misses.")
    sc.add_argument("map", help="Class GeoTIFF written by `landcover map --geotiff`.")
    sc.add_argument("--reference", required=True,
                    help="Vector file (GeoPackage, GeoJSON, Shapefile) or class raster (GeoTIFF, e.g. ESA WorldCover).")
    sc.add_argument("--crosswalk", default="osm", choices=sorted(CROSSWALKS),
                    help="How reference values map onto the four classes (default osm: OpenStreetMap fclass).")
    sc.add_argument("--field", default="fclass", help="Vector field holding the class (default fclass).")
    sc.add_argument("--purity", type=float, default=DEFAULT_PURITY,
                    help=f"Share of a cell that must be one reference class to be scored (default {DEFAULT_PURITY}).")
    sc.add_argument("--json", action="store_true", help="Print the figures as JSON.")
    sc.set_defaults(func=_score_command)


def _score_command(args) -> int:
    from landcover.scenes.reference import format_score, score_class_geotiff

    score = score_class_geotiff(args.map, args.reference, args.crosswalk, args.field, args.purity)
    print(json.dumps(score.to_json()) if args.json else format_score(score))
    if not score.cells:
        print("warning: no cell was scored: does the reference overlap the map, with classes the crosswalk knows?",
              file=sys.stderr)
    return 0


def _map_region_command(args) -> int:
    from landcover.readers.radiometry import scaling_from_flags
    from landcover.scenes.region import RegionOptions, StacSearch, map_region, search_stac

    inputs = list(args.inputs)
    if args.stac_api:
        search = StacSearch(args.stac_api, tuple(args.collections), tuple(args.bbox) if args.bbox else None,
                            args.datetime, args.max_cloud, args.max_items)
        inputs += search_stac(search, Path(args.out) / "items")
    if not inputs:
        raise ValueError("map-region needs scenes: give files, folders, STAC items or @list.txt, or --stac-api.")

    reading = dict(bands=args.bands, given=scaling_from_flags(args.scale, args.offset, args.clip),
                   pixel_size_m=args.pixel_size, resample=args.resample)
    options = RegionOptions(Path(args.out), _map_options(args), model=args.model, backend=args.backend,
                            workers=args.workers, address=args.address, crs=args.crs, retries=args.retries,
                            threads=args.threads, reading=reading, progress=not args.no_progress)
    run = map_region(inputs, options)
    if args.json:
        print(json.dumps(run))
    else:
        print(f"{run['done']} of {run['scenes']} scenes mapped ({run['skipped']} already done, "
              f"{len(run['failed'])} failed); {run['tiles_per_s'] or '-'} tiles/s; outputs in {args.out}")
        for item in run["failed"]:
            print(f"  failed: {item['scene']}: {item['error']}", file=sys.stderr)
    return 0 if run["done"] else 2


def _open_scene(path: str, args):
    from landcover.readers.radiometry import scaling_from_flags
    from landcover.readers.raster import open_scene

    given = scaling_from_flags(args.scale, args.offset, args.clip)
    return open_scene(path, bands=args.bands, given=given, pixel_size_m=args.pixel_size, resample=args.resample)


def _report_scene(scene, label: str = "") -> None:
    """Radiometry, resampling and warnings on stderr (stdout stays JSON with --json)."""
    info = scene.describe()
    prefix = f"{label}: " if label else ""
    print(f"{prefix}radiometry: {scene.radiometry.describe()}", file=sys.stderr)
    for note in info["notes"]:
        print(f"{prefix}{note}", file=sys.stderr)
    for warning in info["warnings"]:
        print(f"{prefix}WARNING: {warning}", file=sys.stderr)


def _need_georeference(scene, args, name: str) -> None:
    for flag in ("geotiff", "geojson"):
        if getattr(args, flag) and not scene.georeferenced:
            raise ValueError(f"--{flag} needs a georeferenced scene; {name!r} has no CRS/transform. "
                             f"Drop --{flag}, or use --out for a PNG map.")


def _map_command(args) -> int:
    from landcover.scenes import export
    from landcover.scenes import render
    from landcover.scenes.mapping import map_scene
    from landcover.inference.predictor import load_predictor

    with _open_scene(args.scene, args) as scene:
        _need_georeference(scene, args, args.scene)
        _report_scene(scene)
        predictor = load_predictor(args.model, backend=args.backend, task="scenes")
        result = map_scene(predictor, scene, _map_options(args))
        render.render_map_with_legend(result).save(args.out)
        written = {"map": args.out}
        _write_optional(args, written, {
            "overlay": lambda path: render.render_overlay(result, scene).save(path),
            "confidence": lambda path: render.render_confidence(result).save(path),
            "geotiff": lambda path: export.write_class_geotiff(result, path),
            "geojson": lambda path: export.write_geojson(export.class_geojson(result), path)})
    if args.json:
        print(json.dumps({**result.to_json(), "outputs": written}))
        return 0
    rows, cols = result.grid.shape
    print(f"scene {args.scene}: {result.width}x{result.height} px, {rows}x{cols} cells of {result.stride} px")
    print(f"pixel size: {result.pixel_size_source}")
    for name, row in sorted(result.area_table().items(), key=lambda kv: -kv[1]["cells"]):
        print(f"  {name:22s} {row['percent']:6.2f} %  {row['km2']:10.4f} km²")
    for reason, row in result.masked_table().items():
        print(f"  masked: {reason:14s} {row['cells']:6d} cells {row['km2']:10.4f} km²")
    if result.uncertain.any():
        data = result.to_json()
        print(f"  uncertain (top-1 < {result.min_confidence:g}) {data['uncertain_cells']:6d} cells "
              f"{data['uncertain_km2']:10.4f} km²")
    print(f"evidence: {result.evidence_note}")
    if result.adaptation:
        print(f"adapted: {result.adaptation}")
    print("wrote " + ", ".join(f"{k} {v}" for k, v in written.items()))
    return 0


def _write_optional(args, written: dict, writers: dict) -> None:
    """Run ``writers[flag](path)`` for each output flag the user gave, recording it in ``written``."""
    for flag, write in writers.items():
        path = getattr(args, flag)
        if path:
            write(path)
            written[flag] = path


def _change_command(args) -> int:
    from landcover.scenes import export
    from landcover.scenes.change import check_same_grid, detect_change, render_change

    with _open_scene(args.before, args) as before, _open_scene(args.after, args) as after:
        check_same_grid(before, after)  # before loading the model: fail fast
        _need_georeference(before, args, args.before)
        _report_scene(before, "before")
        _report_scene(after, "after")
        from landcover.inference.predictor import load_predictor

        predictor = load_predictor(args.model, backend=args.backend, task="scenes")
        result = detect_change(predictor, before, after, _map_options(args), args.min_confidence)
        render_change(result, after).save(args.out)
    written = {"change": args.out}
    _write_optional(args, written, {
        "geotiff": lambda path: export.write_change_geotiff(result, path),
        "geojson": lambda path: export.write_geojson(export.change_geojson(result), path)})
    data = result.to_json()
    if args.json:
        print(json.dumps({**data, "outputs": written}))
        return 0
    print(f"{data['rows']}x{data['cols']} tiles: {data['changed_tiles']} changed ({data['changed_km2']:.4f} km²), "
          f"{data['unchanged_tiles']} unchanged, {data['uncertain_tiles']} below confidence {args.min_confidence:g}, "
          f"{data['masked_tiles']} masked")
    for t in data["transitions"]:
        print(f"  {t['from']:22s} -> {t['to']:22s} {t['tiles']:6d} tiles  {t['km2']:10.4f} km²")
    print("wrote " + ", ".join(f"{k} {v}" for k, v in written.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m landcover", description="EuroSAT land-cover tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    model_help = "Model folder or Hub id org/name[@revision] (default: the embedded model)."

    ev = sub.add_parser("evaluate", help="Accuracy, per-class metrics and confusion matrix on a dataset.")
    ev.add_argument("--model", default=None, help=model_help)
    ev.add_argument("--data", required=True, help="Local folder (imagefolder/parquet) or Hub dataset id.")
    ev.add_argument("--split", default="test", choices=["train", "validation", "test", "all"],
                    help="Split to evaluate; 'all' uses every image. On a local folder, 'test' uses the split "
                         "recorded with the model (splits.json) when there is one.")
    ev.add_argument("--batch-size", type=positive_int, default=256, help="Images per forward pass.")
    ev.add_argument("--json", action="store_true", help="Print one JSON object.")
    ev.add_argument("--tta", nargs="?", const=True, default=None, choices=tuple(TTA_MODES), metavar="MODE",
                    help=f"Test-time augmentation: mean probability over the views of MODE ({tta_choices_help()}; "
                         f"bare --tta: the model's mode or d4). Default: the model's setting (config.json).")
    ev.add_argument("--no-tta", dest="tta", action="store_const", const=False, help="One pass per image.")
    ev.add_argument("--record", action="store_true",
                    help="Write this test evaluation into the model folder (metrics.json, config.json's "
                         "test_time_augmentation, confusion matrix, model card).")
    _add_backend(ev)
    ev.set_defaults(func=_evaluate)

    pr = sub.add_parser("predict", help="Classify image files.")
    pr.add_argument("images", nargs="+", help="Image files or folders of them: PNG, JPEG, TIFF (also 16-bit "
                    "and Sentinel-2 / EuroSAT-MS multi-band GeoTIFF patches), GIF, WebP, BMP.")
    pr.add_argument("--model", default=None, help=model_help)
    pr.add_argument("--top-k", type=positive_int, default=3, help="How many classes to show per image (>= 1).")
    pr.add_argument("--json", action="store_true", help="Print JSON: one object per file, with 'error' for files "
                    "that could not be classified.")
    _add_backend(pr)
    pr.set_defaults(func=_predict)

    pu = sub.add_parser("push", help="Upload a model folder to the Hugging Face Hub.")
    pu.add_argument("folder", help="Model folder written by train.py.")
    pu.add_argument("repo_id", help="Target repo, e.g. your-name/eurosat-wide-resnet50.")
    pu.add_argument("--private", action="store_true", help="Create the repo as private.")
    pu.add_argument("--revision", default=None, help="Branch to push to (created if missing).")
    pu.set_defaults(func=_push)

    ex = sub.add_parser("export-onnx", help="(Re)write the ONNX graphs a model folder ships.",
                        description="Write FOLDER/onnx/: the float graph (weights read from model.safetensors) "
                                    "and, with --data, the int8 graph calibrated on training patches, its settings chosen "
                                    "on the validation split and its accuracy cost measured on the test split; "
                                    "checksums in onnx/onnx.json.")
    ex.add_argument("folder", help="Local model folder (written by train.py).")
    ex.add_argument("--data", default=None, help="The training data (local folder or Hub id) for the int8 graph.")
    ex.add_argument("--calibration", type=positive_int, default=512, help="Training patches to calibrate on.")
    ex.set_defaults(func=_export_onnx)

    add_scene_commands(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
