"""Domain-shift benchmark: accuracy on the EuroSAT test split under radiometric transforms.

Usage::

    python bench/radiometry.py --data ../shared/eurosat-rgb [--models MODEL_A MODEL_B] [--mosaic 32] [--json]

For each model folder (default: the embedded model), the test (or ``--split validation``) files of its
``splits.json`` are classified once per transform, one pass per patch (as ``map`` does), and the accuracy is printed per
transform, models side by side. Two families of transforms:

* **Storage** (how a scene's values are written): the patches are tiled into ``--mosaic`` x ``--mosaic``
  mosaics in memory (never written anywhere), converted to reflectance (EuroSAT's stretch: 255 =
  0.275) and stored as uint16 x 10000, x 10000 + 1000 (Sentinel-2 baseline >= 04.00), x 1000 or float;
  each mosaic then goes through the real inference of :func:`landcover.readers.radiometry.to_eurosat_rgb8`
  (no flags) before it is cut back into patches. A JPEG quick-look (per-channel 2-98 percentile
  stretch of the mosaic, JPEG quality 85) goes the same way.
* **Colour** (what the scene looks like): gamma 0.8 and 1.25, haze (``0.7 x + 0.3 x`` bright bluish
  path radiance), per-channel gains (R, G, B) x (1.2, 1.0, 0.8) and (0.8, 1.0, 1.2), and an L2A-like
  atmospheric correction (reflectance -0.01 / -0.015 / -0.03 on R, G, B), applied to the patches.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landcover.core.labels import EUROSAT_CLASSES  # noqa: E402
from landcover.readers.radiometry import EUROSAT_WHITE, to_eurosat_rgb8  # noqa: E402

HAZE_COLOUR = np.array([0.80, 0.83, 0.90]) * 255


def load_test_split(model_dir: Path, data: Path, limit: int | None, split: str = "test"
                    ) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``(N, 64, 64, 3)`` patches of the model's ``split`` (its splits.json) and their class indices."""
    splits = json.loads((model_dir / "splits.json").read_text())
    files = splits["files"][split]
    if limit:
        files = files[:limit]
    patches = np.stack([np.asarray(Image.open(data / f).convert("RGB")) for f in files])
    labels = np.array([EUROSAT_CLASSES.index(Path(f).parts[0]) for f in files])
    return patches, labels


def mosaics(patches: np.ndarray, side: int):
    """Yield ``(n, mosaic (side*64, side*64, 3))``: chunks of ``side*side`` patches, the last one padded.

    The last mosaic is padded with patches from the start of the split (wrapping around), not copies of one
    patch: a scene-wide statistic such as the quick-look's percentile stretch then sees a realistic mix.
    """
    p = patches.shape[1]
    for start in range(0, len(patches), side * side):
        chunk = patches[start:start + side * side]
        n = len(chunk)
        if n < side * side:
            chunk = np.concatenate([chunk, np.resize(patches, (side * side - n, *patches.shape[1:]))])
        grid = chunk.reshape(side, side, p, p, 3).transpose(0, 2, 1, 3, 4).reshape(side * p, side * p, 3)
        yield n, grid


def unmosaic(mosaic: np.ndarray, n: int, p: int = 64) -> np.ndarray:
    side = mosaic.shape[0] // p
    return mosaic.reshape(side, p, side, p, 3).transpose(0, 2, 1, 3, 4).reshape(side * side, p, p, 3)[:n]


def _reflectance(rgb8: np.ndarray) -> np.ndarray:
    return rgb8.astype(np.float64) * EUROSAT_WHITE / 255


def _quicklook(mosaic: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(mosaic.reshape(-1, 3), [2, 98], axis=0)
    stretched = np.clip((mosaic - lo) * 255.0 / np.maximum(hi - lo, 1), 0, 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(stretched).save(buffer, format="JPEG", quality=85)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


STORAGE = {
    "identity (uint8)": lambda m: m,
    "x10000 uint16": lambda m: np.rint(_reflectance(m) * 1e4).astype(np.uint16),
    "x10000 + 1000 uint16 (L2A offset)": lambda m: np.rint(_reflectance(m) * 1e4 + 1000).astype(np.uint16),
    "x1000 uint16": lambda m: np.rint(_reflectance(m) * 1e3).astype(np.uint16),
    "float reflectance": lambda m: _reflectance(m).astype(np.float32),
    "JPEG quick-look (2-98 % stretch)": _quicklook,
}


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


COLOUR = {
    "gamma 0.8": lambda p: _u8(255 * (p / 255.0) ** 0.8),
    "gamma 1.25": lambda p: _u8(255 * (p / 255.0) ** 1.25),
    "haze 0.3": lambda p: _u8(0.7 * p + 0.3 * HAZE_COLOUR),
    "gain R,G,B x 1.2,1.0,0.8": lambda p: _u8(p * np.array([1.2, 1.0, 0.8])),
    "gain R,G,B x 0.8,1.0,1.2": lambda p: _u8(p * np.array([0.8, 1.0, 1.2])),
    "L2A-like correction (-0.01/-0.015/-0.03)": lambda p: _u8(p - np.array([0.01, 0.015, 0.03]) * 255 / EUROSAT_WHITE),
}


def storage_patches(patches: np.ndarray, transform, side: int) -> tuple[np.ndarray, list[str]]:
    """Patches after storing each mosaic with ``transform`` and decoding it by inference (no flags)."""
    out, kinds = [], set()
    for n, mosaic in mosaics(patches, side):
        stored = transform(mosaic)
        rgb, info = to_eurosat_rgb8(stored.transpose(2, 0, 1))
        kinds.add(f"{info.scaling.kind}" + (f"-{info.scaling.offset:g}" if info.scaling.offset else ""))
        out.append(unmosaic(rgb.transpose(1, 2, 0), n))
    return np.concatenate(out), sorted(kinds)


def accuracy(predictor, patches: np.ndarray, labels: np.ndarray, batch_size: int) -> float:
    import torch

    probs = predictor.predict_tensor(torch.from_numpy(np.ascontiguousarray(patches.transpose(0, 3, 1, 2))),
                                     batch_size=batch_size, tta=False)
    return float((probs.numpy().argmax(1) == labels).mean())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=[None], help="Model folders (default: the embedded model).")
    parser.add_argument("--names", nargs="+", default=None, help="Column names for the models.")
    parser.add_argument("--data", required=True, help="EuroSAT RGB folder (<Class>/<Class>_<N>.jpg).")
    parser.add_argument("--mosaic", type=int, default=32, help="Patches per mosaic side for storage transforms.")
    parser.add_argument("--limit", type=int, default=None, help="Only the first N files (quick runs).")
    parser.add_argument("--backend", default="onnx", choices=("torch", "onnx"))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    parser.add_argument("--split", default="test", choices=("test", "validation"),
                        help="Which split of the models' splits.json (choose recipes and models on validation).")
    args = parser.parse_args(argv)

    from landcover.models.hub import resolve_model_dir
    from landcover.inference.predictor import load_predictor

    names = args.names or [str(m or "embedded") for m in args.models]
    table: dict[str, dict[str, float]] = {}
    decoded: dict[str, list[str]] = {}
    sizes = {}
    t0 = time.perf_counter()
    for name, model in zip(names, args.models):
        model_dir = Path(resolve_model_dir(model))
        patches, labels = load_test_split(model_dir, Path(args.data), args.limit, args.split)
        sizes[name] = len(labels)
        predictor = load_predictor(str(model_dir), backend=args.backend)
        for label, transform in STORAGE.items():
            stored, kinds = storage_patches(patches, transform, args.mosaic)
            decoded[label] = kinds
            table.setdefault(label, {})[name] = accuracy(predictor, stored, labels, args.batch_size)
        for label, transform in COLOUR.items():
            table.setdefault(label, {})[name] = accuracy(predictor, transform(patches.astype(np.float64)), labels,
                                                         args.batch_size)
    report = {"models": names, "split": args.split, "patches": sizes, "mosaic": args.mosaic, "accuracy": table,
              "mean_accuracy": {n: float(np.mean([row[n] for row in table.values()])) for n in names},
              "decoded_as": decoded, "seconds": round(time.perf_counter() - t0, 1)}
    if args.json:
        print(json.dumps(report))
        return 0
    clean = table["identity (uint8)"]
    header = "| transform | " + " | ".join(f"{n} acc | {n} vs clean" for n in names) + " | decoded as |"
    print(header)
    print("|" + "---|" * (2 + 2 * len(names)))
    for label, row in table.items():
        cells = " | ".join(f"{100 * row[n]:.2f} % | {100 * (row[n] - clean[n]):+.2f}" for n in names)
        print(f"| {label} | {cells} | {', '.join(decoded.get(label, ['(patches)']))} |")
    means = {n: float(np.mean([row[n] for row in table.values()])) for n in names}
    print("| mean over all conditions | " + " | ".join(f"{100 * means[n]:.2f} % | {100 * (means[n] - clean[n]):+.2f}"
                                                    for n in names) + " | |")
    print(f"{args.split} patches: {sizes}; {report['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
