"""Generated EuroSAT-like data for tests (torchgeo ``tests/data/*/data.py`` style).

Each class gets its own base colour and stripe texture plus noise, so a tiny model can learn it in a
few epochs. Run ``python tests/datagen.py OUT`` to write an imagefolder by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from landcover.core.labels import EUROSAT_CLASSES


def class_patch(class_index: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """One ``size x size`` RGB uint8 patch of class ``class_index`` (0..9)."""
    hue = np.array([(37 * class_index) % 256, (91 * class_index + 60) % 256, (151 * class_index + 120) % 256],
                   dtype=np.float64)
    yy, xx = np.mgrid[0:size, 0:size]
    angle = np.pi * class_index / 10
    period = 4 + 2 * (class_index % 5)
    phase = rng.uniform(0, 2 * np.pi)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period + phase)
    img = hue[None, None, :] * 0.7 + 50 * stripes[..., None] + rng.normal(0, 12, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_imagefolder(root: str | Path, per_class: int = 24, seed: int = 0, size: int = 64,
                      classes: Sequence[str] = EUROSAT_CLASSES, fmt: str = "jpg") -> Path:
    """``root/<Class>/<Class>_<N>.<fmt>``, the official EuroSAT layout."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(1, per_class + 1):
            Image.fromarray(class_patch(c, rng, size)).save(root / name / f"{name}_{i}.{fmt}", quality=95)
    return root


def write_parquet(root: str | Path, per_class: dict[str, int] | None = None, seed: int = 1, size: int = 64) -> Path:
    """``root/{train,validation,test}-00000-of-00001.parquet`` with ``image``/``label`` columns (Hub layout)."""
    import datasets

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    per_class = per_class or {"train": 16, "validation": 4, "test": 6}
    rng = np.random.default_rng(seed)
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=list(EUROSAT_CLASSES))})
    for split, n in per_class.items():
        images, labels = [], []
        for c in range(len(EUROSAT_CLASSES)):
            for _ in range(n):
                images.append(Image.fromarray(class_patch(c, rng, size)))
                labels.append(c)
        ds = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
        ds.to_parquet(str(root / f"{split}-00000-of-00001.parquet"))
    return root


if __name__ == "__main__":
    print(write_imagefolder(sys.argv[1] if len(sys.argv) > 1 else "generated-eurosat"))
