"""Training throughput (images/s) on the current device: the project's loop vs a notebook-style loop.

Both train the same architecture, at the same size and batch, on the same files, in one process:

* ``project``  landcover.training.trainer as ``train.py`` runs it: images decoded once into a uint8 tensor,
  ``TensorPatches`` batches (one gather each), batched ``landcover.data.transforms.augment`` on the device,
  ``channels_last``, bf16 autocast where the device supports it (accelerate mixed precision), fused
  AdamW on CUDA, optional ``torch.compile``, and no host-device sync per step -- the timed steps are
  ``landcover.training.trainer.train_one_epoch`` itself, with the model/optimizer built by ``build_model`` /
  ``make_optimizer``;
* ``notebook`` what the notebook we start from did: ``PIL.Image.open`` per item + torchvision transforms
  per item + ``DataLoader`` default collate, fp32, ``loss.item()`` every step.

Each is also timed as a *data path only* (batches produced, no model), which is where the difference
is made. Warm-up steps (cuDNN autotuning, compilation) are not timed.

    nice -n 19 python bench/train_throughput.py --data ../shared/eurosat-rgb      # CPU: resnet18 @ 64 px
    python bench/train_throughput.py --model wide_resnet50_2 --image-size 224 --batch-size 256 --steps 50
    python bench/train_throughput.py --json ...   # one JSON line at the end (used by bench/gpu_check.py)

Without ``--data`` the images are generated (random 64 x 64 JPEGs in a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would interleave with the figures

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from landcover.core.labels import EUROSAT_CLASSES  # noqa: E402

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---------------------------------------------------------------- data


def list_files(data: str | None, n: int, tmp: Path) -> tuple[list[Path], list[int]]:
    """``n`` image files, classes interleaved (repeated when the folder has fewer), and their labels."""
    if data is None:
        rng = np.random.default_rng(0)
        root = tmp / "generated"
        for c, name in enumerate(EUROSAT_CLASSES):
            (root / name).mkdir(parents=True)
            for i in range(max(1, min(n, 2000) // len(EUROSAT_CLASSES))):
                Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / name / f"{name}_{i}.jpg")
        data = str(root)
    root = Path(data)
    per_class = [sorted((root / name).glob("*.jpg")) + sorted((root / name).glob("*.png")) for name in EUROSAT_CLASSES]
    if not all(per_class):
        raise SystemExit(f"{root} does not look like EuroSAT (<Class>/<Class>_<N>.jpg for all 10 classes).")
    files, labels, i = [], [], 0
    while len(files) < n:
        c = i % len(per_class)
        files.append(per_class[c][(i // len(per_class)) % len(per_class[c])])
        labels.append(c)
        i += 1
    return files, labels


def decode_once(files: list[Path]) -> torch.Tensor:
    """Decoded uint8 ``(N, 3, H, W)``, contiguous like ``landcover.data.eurosat.decode_split``'s (an HWC view would
    make every batch gather take torch's slow strided path)."""
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


class NotebookDataset(torch.utils.data.Dataset):
    """One PIL decode + torchvision transform chain per item, every epoch."""

    def __init__(self, files, labels, size: int):
        from torchvision import transforms

        self.files, self.labels = files, labels
        self.tf = transforms.Compose([
            transforms.RandomResizedCrop(size, scale=(0.8, 1.0), antialias=True),
            transforms.RandomHorizontalFlip(), transforms.RandomVerticalFlip(),
            transforms.RandomApply([transforms.RandomRotation((90, 90))], p=0.5),
            transforms.ColorJitter(0.1, 0.1, 0.1),
            transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with Image.open(self.files[i]) as im:
            return self.tf(im.convert("RGB")), self.labels[i]


# ---------------------------------------------------------------- the two loops


def project_run(args, files, labels) -> dict:
    """Images/s of ``landcover.training.trainer.train_one_epoch`` (and of its data path alone)."""
    from landcover.core.config import TrainConfig
    from landcover.data.eurosat import Patches, TensorPatches, collate_batch
    from landcover.training.trainer import (Fit, _prep, build_model, make_accelerator, make_optimizer,
                                            make_scheduler, train_one_epoch, view_spec)
    from landcover.data.transforms import InputSpec, augment, make_generator

    if args.precision != "no":
        os.environ["ACCELERATE_MIXED_PRECISION"] = args.precision  # what `accelerate launch --mixed_precision` sets
    cfg = TrainConfig(dataset="bench", model=args.model, pretrained=False, image_size=args.image_size,
                      batch_size=args.batch_size, epochs=1, log_every=10 ** 9, compile=args.compile,
                      channels_last=True, output_dir=tempfile.mkdtemp(prefix="bench-train-"))
    t = time.perf_counter()
    images = decode_once(files)
    decode_s = time.perf_counter() - t
    accelerator = make_accelerator(cfg)
    model = build_model(cfg, list(EUROSAT_CLASSES)).to(memory_format=torch.channels_last)
    prep = _prep(cfg, model)
    if cfg.compile:
        model = torch.compile(model)
    optimizer = make_optimizer(model, cfg)
    patches = Patches(images, torch.as_tensor(labels), [str(f) for f in files])
    loader = torch.utils.data.DataLoader(TensorPatches(patches), batch_size=cfg.batch_size, shuffle=True,
                                         drop_last=True, collate_fn=collate_batch,
                                         pin_memory=torch.cuda.is_available())
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    scheduler = make_scheduler(optimizer, 0, 10 ** 6)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def run(steps: int, epoch: int) -> float:
        cfg.max_steps = steps
        fit = Fit(accelerator, model, optimizer, scheduler, criterion, cfg, prep, torch.channels_last)
        summary, _ = train_one_epoch(fit, loader, epoch, 0)
        return summary["img_per_s"]

    run(args.warmup, 0)
    img_s = run(args.steps, 1)
    # Data path alone: gather + transfer + augment, synchronised once at the end.
    gen = make_generator(0)
    spec = InputSpec(prep["size"], prep["mean"], prep["std"], torch.channels_last)
    data_s = time_data_path(loader, args.data_batches, lambda x: augment(x, spec, gen, view_spec(cfg)))
    return {"img_per_s": img_s, "data_img_per_s": data_s, "decode_once_s": decode_s,
            "device": str(accelerator.device), "precision": accelerator.mixed_precision, "compile": cfg.compile}


def notebook_run(args, files, labels, device: torch.device) -> dict:
    """Images/s of the notebook's loop: fp32, PIL per item, .item() per step."""
    import timm

    loader = torch.utils.data.DataLoader(NotebookDataset(files, labels, args.image_size), batch_size=args.batch_size,
                                         shuffle=True, drop_last=True, num_workers=args.workers,
                                         persistent_workers=args.workers > 0)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False, num_classes=len(EUROSAT_CLASSES)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    criterion = torch.nn.CrossEntropyLoss()

    def run(steps: int) -> float:
        seen, losses, start = 0, [], time.perf_counter()
        while seen < steps * args.batch_size:
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                loss = criterion(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())  # the notebook's per-step sync
                seen += x.shape[0]
                if seen >= steps * args.batch_size:
                    break
        return seen / (time.perf_counter() - start)

    run(args.warmup)
    img_s = run(args.steps)
    data_s = time_data_path(loader, args.data_batches, lambda x: x.to(device))
    return {"img_per_s": img_s, "data_img_per_s": data_s, "workers": args.workers}


def time_data_path(loader, batches: int, make_input) -> float:
    """Images/s of ``make_input(batch)`` over ``batches`` batches (cycling the loader), one sync at the end.

    One untimed batch first: it starts the loader (and its workers' prefetch) and fills lazy caches.
    """
    def forever():
        while True:
            yield from loader

    stream = forever()
    out = make_input(next(stream)[0])
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        x, _ = next(stream)
        out = make_input(x)
        n += x.shape[0]
    _sync(out)
    return n / (time.perf_counter() - start)


def _sync(t: torch.Tensor) -> None:
    if t.is_cuda:
        torch.cuda.synchronize(t.device)
    else:
        float(t.float().sum())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Training images/s: project loop vs notebook-style loop.")
    parser.add_argument("--model", default="resnet18", help="timm architecture (untrained: speed only).")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="Timed optimiser steps per loop.")
    parser.add_argument("--data-batches", type=int, default=300,
                        help="Batches timed for the data path alone (each loop's loader, cycled).")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps first (autotuning, compile).")
    parser.add_argument("--data", default=None, help="EuroSAT imagefolder (default: generated images).")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "no"],
                        help="Project loop mixed precision; auto = bf16 on a CUDA device that supports it.")
    parser.add_argument("--compile", action="store_true", help="torch.compile the project model.")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="DataLoader workers of the notebook loop (the project needs none).")
    parser.add_argument("--skip-notebook", action="store_true")
    parser.add_argument("--json", action="store_true", help="Also print one JSON line with all figures.")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    # What training does on a CPU (landcover.training.trainer.train), set once for both loops: same process, same allocator.
    from landcover.data.transforms import retain_freed_host_memory

    allocator = "glibc malloc keeps freed memory" if not cuda and retain_freed_host_memory() else "default allocator"
    if args.precision == "auto":
        args.precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} logical cores)"
    load = os.getloadavg()[0]
    print(f"device {name}; torch {torch.__version__}, {torch.get_num_threads()} threads; {args.model} @ "
          f"{args.image_size}px, batch {args.batch_size}, {args.steps} timed steps; {allocator}; load average {load:.2f}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        n_files = args.batch_size * (max(args.steps, args.warmup) + 1)
        files, labels = list_files(args.data, n_files, Path(tmp))
        project = project_run(args, files, labels)
        print(f"project  : {project['img_per_s']:9.1f} img/s  (data path alone {project['data_img_per_s']:9.1f} "
              f"img/s; decode-once {project['decode_once_s']:.1f}s for {len(files)} files; precision "
              f"{project['precision']}, channels_last, compile {project['compile']})", flush=True)
        result = {"model": args.model, "image_size": args.image_size, "batch_size": args.batch_size,
                  "steps": args.steps, "device": name, "project": project, "load_average": load}
        if not args.skip_notebook:
            notebook = notebook_run(args, files, labels, device)
            print(f"notebook : {notebook['img_per_s']:9.1f} img/s  (data path alone {notebook['data_img_per_s']:9.1f} "
                  f"img/s; fp32, {args.workers} DataLoader workers, .item() per step)")
            print(f"ratio    : {project['img_per_s'] / notebook['img_per_s']:.1f}x training, "
                  f"{project['data_img_per_s'] / notebook['data_img_per_s']:.1f}x data path")
            result["notebook"] = notebook
    print(f"load average after {os.getloadavg()[0]:.2f} (shared CPU: figures are depressed by other processes)")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
