"""Training data path throughput: this project's loader vs a notebook-style PIL-per-item Dataset.

Both run in one process on the same files, batch size and thread count, and deliver the same thing: a
normalised, augmented float batch ``(B, 3, S, S)`` ready for the model.

* project: decode once (``landcover.data.eurosat.decode_split``, through ``datasets``) into a uint8 tensor, then per
  epoch ``TensorPatches`` + ``__getitems__`` (one gather per batch) + batched ``landcover.data.transforms.augment``;
* naive: ``PIL.Image.open`` per item + torchvision transforms per item + default collate, every epoch.

Usage: ``nice -n 19 python bench/data_throughput.py [--data ../shared/eurosat-rgb] [--n-images 4000]``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def pick_files(root: Path, n: int, seed: int) -> tuple[list[str], list[int], list[str]]:
    """``n`` image paths spread evenly over the class folders, shuffled reproducibly."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise SystemExit(f"error: {root} has no class folders; expected <Class>/<Class>_<N>.jpg (EuroSAT layout).")
    rng = random.Random(seed)
    paths, labels = [], []
    for c, name in enumerate(classes):
        files = sorted(str(p) for p in (root / name).iterdir() if p.is_file())
        take = rng.sample(files, min(len(files), -(-n // len(classes))))
        paths += take
        labels += [c] * len(take)
    order = rng.sample(range(len(paths)), min(n, len(paths)))
    return [paths[i] for i in order], [labels[i] for i in order], classes


class NaiveDataset(torch.utils.data.Dataset):
    """What a typical notebook does: open and transform each image with PIL/torchvision, every epoch."""

    def __init__(self, paths: list[str], labels: list[int], size: int):
        from torchvision import transforms as T

        self.paths, self.labels = paths, labels
        self.transform = T.Compose([
            T.RandomHorizontalFlip(), T.RandomVerticalFlip(), T.RandomChoice([T.RandomRotation((a, a)) for a in
                                                                              (0, 90, 180, 270)]),
            T.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(1.0, 1.0), antialias=True),
            T.ColorJitter(0.1, 0.1, 0.1), T.ToTensor(), T.Normalize(MEAN, STD)])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as im:
            return self.transform(im.convert("RGB")), self.labels[i]


def time_epoch(batches) -> tuple[int, float]:
    start, seen = time.perf_counter(), 0
    for x, _ in batches:
        seen += x.shape[0]
    return seen, time.perf_counter() - start


def project_loader(paths: list[str], labels: list[int], classes: list[str], args) -> dict:
    import datasets

    from landcover.data.eurosat import TensorPatches, collate_batch, decode_split
    from landcover.data.transforms import InputSpec, augment, make_generator

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    split = datasets.Dataset.from_dict({"image": paths, "label": labels}, features=features)
    start = time.perf_counter()
    patches, skipped = decode_split(split, "bench", np.arange(len(classes)), None)
    decode_s = time.perf_counter() - start
    assert not skipped, skipped
    loader = torch.utils.data.DataLoader(TensorPatches(patches), batch_size=args.batch_size, shuffle=True,
                                         collate_fn=collate_batch)
    gen = make_generator(0)

    def batches():
        for images, y in loader:
            yield augment(images, InputSpec(args.image_size, MEAN, STD), gen), y

    epochs = [time_epoch(batches()) for _ in range(args.epochs)]
    return {"decode_s": decode_s, "epochs": epochs}


def naive_loader(paths: list[str], labels: list[int], args) -> dict:
    loader = torch.utils.data.DataLoader(NaiveDataset(paths, labels, args.image_size), batch_size=args.batch_size,
                                         shuffle=True, num_workers=args.naive_workers)
    return {"epochs": [time_epoch(loader) for _ in range(args.epochs)]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "eurosat-rgb"),
                        help="EuroSAT imagefolder (<Class>/<Class>_<N>.jpg).")
    parser.add_argument("--batch-size", type=int, default=64, help="Images per batch.")
    parser.add_argument("--n-images", type=int, default=4000, help="Images per epoch (spread over the classes).")
    parser.add_argument("--image-size", type=int, default=64, help="Model input size.")
    parser.add_argument("--epochs", type=int, default=2, help="Epochs timed per loader.")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (same for both).")
    parser.add_argument("--default-allocator", action="store_true",
                        help="Leave glibc's malloc thresholds alone (training raises them on a CPU).")
    parser.add_argument("--naive-workers", type=int, default=0, help="DataLoader workers of the naive loader.")
    args = parser.parse_args(argv)
    root = Path(args.data).expanduser()
    if not root.is_dir():
        print(f"error: --data {root} is not a folder; expected the EuroSAT imagefolder.", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    # What training does on a CPU (landcover.training.trainer.train), set once for both loaders: same process, same allocator.
    from landcover.data.transforms import retain_freed_host_memory

    allocator = "default allocator"
    if not args.default_allocator and retain_freed_host_memory():
        allocator = "glibc malloc keeps freed memory (as in training)"
    paths, labels, classes = pick_files(root, args.n_images, seed=0)
    print(f"{len(paths)} images from {root}, batch {args.batch_size}, {args.image_size} px, "
          f"{args.threads} thread(s), {args.epochs} epochs each; {allocator}")

    naive = naive_loader(paths, labels, args)
    project = project_loader(paths, labels, classes, args)

    def rate(epochs):  # steady state: the best epoch (least disturbed by other load on the machine)
        return max(n / s for n, s in epochs)

    naive_rate, project_rate = rate(naive["epochs"]), rate(project["epochs"])
    first_epoch_s = project["decode_s"] + project["epochs"][0][1]
    print(f"naive   (PIL + torchvision per item): {naive_rate:10.0f} images/s per epoch "
          f"({', '.join(f'{s:.2f} s' for _, s in naive['epochs'])})")
    print(f"project (tensor gather + batched augment): {project_rate:10.0f} images/s per epoch "
          f"({', '.join(f'{s:.2f} s' for _, s in project['epochs'])})")
    print(f"project one-time decode: {project['decode_s']:.2f} s ({len(paths) / project['decode_s']:.0f} images/s); "
          f"first epoch incl. decode: {len(paths) / first_epoch_s:.0f} images/s")
    print(f"ratio project/naive per epoch: {project_rate / naive_rate:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
