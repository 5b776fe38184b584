"""Command lines: ``train.py`` and ``python -m landcover {evaluate,predict,push,map,change}``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional

from .config import TTA_MODES, TrainConfig, add_dataclass_arguments, tta_choices_help


def train_main(argv: Optional[list[str]] = None) -> int:
    """Entry point of ``train.py``: train, write the model folder, optionally push it."""
    parser = argparse.ArgumentParser(description="Fine-tune a timm model on EuroSAT with accelerate.")
    add_dataclass_arguments(parser, TrainConfig)
    cfg = TrainConfig(**vars(parser.parse_args(argv)))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .hub import PushError, push_folder
    from .model_folder import save_model_folder
    from .training import CheckpointError, NonFiniteLossError, train

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
    from .evaluate import evaluate_model

    result = evaluate_model(args.model, args.data, split=args.split, batch_size=args.batch_size,
                            backend=args.backend, tta=args.tta)
    if args.record:
        from .hub import resolve_model_dir
        from .model_folder import record_test_evaluation

        if args.split != "test":
            raise ValueError(f"--record stores a test-split evaluation; got --split {args.split}.")
        record_test_evaluation(resolve_model_dir(args.model), result)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"model {result['model']}  data {result['data']}  split {result['split']}  n {result['n']}")
        print(f"accuracy {result['accuracy']:.4f}  macro F1 {result['macro_f1']:.4f}")
        for name, m in result["per_class"].items():
            print(f"  {name:22s} P {m['precision']:.3f}  R {m['recall']:.3f}  F1 {m['f1']:.3f}  n {m['support']}")
    return 0


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".webp", ".bmp")
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
    from .imageio import UploadError, open_image_file
    from .predict import Predictor

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
    from .hub import PushError, push_folder

    try:
        print(push_folder(args.folder, args.repo_id, private=args.private, revision=args.revision))
    except PushError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    return 0


def _add_backend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="torch", choices=["torch", "onnx"],
                        help="Inference engine: torch, or onnx (ONNX Runtime; exported once and cached, "
                             "faster on the CPU).")


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

    from .scene import register_scene_commands  # map, change

    register_scene_commands(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
