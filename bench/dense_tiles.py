"""Dense tiles on a real scene: overlapping tiles read off one shared feature map vs every tile on its own.

A timm classifier is ``features -> global average pool -> linear``. Run the network once over a window of the
scene (resized like the tiles) and average-pool every ``tile``-sized square of its features: each pooled vector
is the logit vector a tile would get if its pixels' features did not depend on what lies around the tile. At
stride 16 that costs about a sixteenth of running each 64 px tile alone (the candidate "reuse one tile's features
across overlapping strides"). Whether the independence holds is what this measures, on real pixels:

* ``tiles``: every tile through the model alone (the project's map path);
* ``dense W``: windows of ``W`` scene px, tiles read off the shared features. ``--windows 64`` is one tile per
  window, the same computation as ``tiles`` (a check of the geometry: max difference ~1e-5; slow, one call a tile).

Prints, per variant: seconds, mean top-1 probability, agreement of the top-1 class with ``tiles``.

    python bench/dense_tiles.py --model MODEL_FOLDER --scene ../shared/real-scenes/brandenburg-2017-02-16-l1c/IMG_DATA

The model's input must be a whole multiple of the features' reduction per tile (128 px for 64 px tiles).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F

PATCH = 64


class DenseHead(torch.nn.Module):
    """uint8 ``(1, 3, H, W)`` -> logits ``(1, C, h, w)``, cell ``(y, x)`` = the tile at ``(y, x) x cell`` px."""

    def __init__(self, model, scale: float, pool: int, mean, std):
        super().__init__()
        self.m, self.scale, self.pool = model, scale, pool
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255.0)

    def forward(self, pixels):
        x = F.interpolate(pixels.float(), scale_factor=self.scale, mode="bilinear", antialias=True,
                          align_corners=False)
        pooled = F.avg_pool2d(self.m.forward_features((x - self.mean) / self.std), self.pool, stride=1)
        head = self.m.get_classifier()
        return F.conv2d(pooled, head.weight[:, :, None, None], head.bias)


def dense_logits(head, pixels: np.ndarray, stride: int, cell: int, window_px: int) -> np.ndarray:
    rows, cols = (pixels.shape[1] - PATCH) // stride + 1, (pixels.shape[2] - PATCH) // stride + 1
    per = max(1, (window_px - PATCH) // stride + 1)  # tiles per window side: every tile inside one window
    out = np.empty((rows, cols, head.m.num_classes), np.float32)
    for i0 in range(0, rows, per):
        for j0 in range(0, cols, per):
            i1, j1 = min(rows, i0 + per), min(cols, j0 + per)
            win = pixels[:, i0 * stride:(i1 - 1) * stride + PATCH, j0 * stride:(j1 - 1) * stride + PATCH]
            with torch.inference_mode():
                cells = head(torch.from_numpy(np.ascontiguousarray(win))[None])[0].numpy()
            step = stride // cell
            out[i0:i1, j0:j1] = cells[:, ::step, ::step][:, :i1 - i0, :j1 - j0].transpose(1, 2, 0)
    return out


def main(argv=None) -> int:
    from landcover.inference.predictor import load_predictor
    from landcover.readers.raster import open_scene

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="Model folder (default: the embedded model).")
    p.add_argument("--scene", required=True)
    p.add_argument("--stride", type=int, default=16)
    p.add_argument("--size", type=int, default=576, help="Side of the scene block, px (from --at).")
    p.add_argument("--at", type=int, nargs=2, default=(64, 400), help="Top-left row and column of the block.")
    p.add_argument("--windows", type=int, nargs="+", default=[128, 256, 576])
    args = p.parse_args(argv)
    predictor = load_predictor(args.model, backend="torch", tta=False)
    model = predictor.model
    scale = predictor.input_size / PATCH
    cell = model.feature_info[-1]["reduction"] / scale
    if cell != int(cell) or PATCH % cell or args.stride % cell:
        raise SystemExit(f"A feature cell of this model is {cell:g} scene px; it must divide {PATCH} and the stride.")
    cell = int(cell)
    with open_scene(args.scene) as scene:
        rgb, _, _ = scene.read_block(args.at[0], args.at[1], args.size, args.size)
    view = np.lib.stride_tricks.sliding_window_view(rgb, (PATCH, PATCH), axis=(1, 2))[:, ::args.stride, ::args.stride]
    rows, cols = view.shape[1:3]
    print(f"{predictor.info['architecture']} @ {predictor.input_size} px, block {args.size} px at {tuple(args.at)}, "
          f"{rows * cols} tiles at stride {args.stride}; load average {os.getloadavg()[0]:.2f}")
    t = time.perf_counter()
    tiles = predictor.predict_tensor(torch.from_numpy(np.ascontiguousarray(
        view.transpose(1, 2, 0, 3, 4).reshape(-1, 3, PATCH, PATCH)))).numpy().reshape(rows, cols, -1)
    base = time.perf_counter() - t
    print(f"tiles      {base:6.2f} s  mean top-1 probability {tiles.max(-1).mean():.3f}")
    head = DenseHead(model, scale, PATCH // cell, predictor.mean, predictor.std).eval()
    temperature = predictor.temperature(None)
    for window in args.windows:
        t = time.perf_counter()
        logits = dense_logits(head, rgb, args.stride, cell, window)
        seconds = time.perf_counter() - t
        probs = torch.softmax(torch.from_numpy(logits) / temperature, -1).numpy()
        agree = (probs.argmax(-1) == tiles.argmax(-1)).mean()
        print(f"dense {window:4d} {seconds:6.2f} s ({base / seconds:5.1f}x)  mean top-1 probability "
              f"{probs.max(-1).mean():.3f}  top-1 agrees with tiles {agree:.3f}  max |diff| "
              f"{np.abs(probs - tiles).max():.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
