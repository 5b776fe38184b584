"""EuroSAT loading: the project's only ``datasets`` user.

Every source (a Hub dataset id, a local imagefolder ``<Class>/<Class>_<N>.jpg``, a folder of parquet
files) goes through ``datasets.load_dataset``. Images are decoded **once** into a uint8 tensor
(EuroSAT RGB is ~330 MB decoded); augmentation then runs on batches of that tensor
(:mod:`landcover.data.transforms`), so no epoch ever touches PIL.
"""

from __future__ import annotations

import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from landcover.readers.imageio import UploadError, decode_rgb8
from landcover.core.labels import EUROSAT_CLASSES
from landcover.data.transforms import resize_uint8

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "valid", "val"), "test": ("test",)}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset reference that is neither a readable local folder nor a Hub dataset."""


class ClassMismatchError(ValueError):
    """The dataset's class names are not the ten EuroSAT classes."""


@dataclass
class Patches:
    """Decoded patches of one split: uint8 images ``(N, 3, H, W)``, int64 labels, and their ids."""

    images: torch.Tensor
    labels: torch.Tensor
    files: list[str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: Sequence[int]) -> "Patches":
        idx = torch.as_tensor(list(index), dtype=torch.long)
        return Patches(self.images[idx], self.labels[idx], [self.files[i] for i in idx.tolist()])


@dataclass
class EuroSAT:
    """A loaded dataset: the three splits, the class names (index order) and how the split was made."""

    splits: dict[str, Patches]
    class_names: list[str]
    source: str
    split_origin: str
    skipped: list[str] = field(default_factory=list)

    def split_files(self) -> dict[str, list[str]]:
        return {name: patches.files for name, patches in self.splits.items()}


class TensorPatches(torch.utils.data.Dataset):
    """Map-style dataset over decoded patches that fetches whole batches (``__getitems__``).

    DataLoader calls ``__getitems__`` with a batch of indices, so a batch is two tensor gathers, not
    ``batch_size`` Python calls.
    """

    def __init__(self, patches: Patches):
        self.images = patches.images.contiguous()  # strided (e.g. HWC-backed) images would make every gather slow
        self.labels = patches.labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]

    def __getitems__(self, indices: list[int]):
        idx = torch.as_tensor(indices, dtype=torch.long)
        # index_select copies whole images (memcpy); ``images[idx]`` goes element by element, ~15x slower.
        return self.images.index_select(0, idx), self.labels.index_select(0, idx)


def collate_batch(batch):
    """Identity collate for :class:`TensorPatches` (the batch is already stacked)."""
    return batch


# ---------------------------------------------------------------- loading


def _load_raw(ref: str, flag: str = "--dataset"):
    """``datasets.load_dataset`` for a Hub id, an imagefolder or a parquet folder (``flag``: the command-line
    flag that passes ``ref``, named in the errors)."""
    import datasets

    path = Path(ref).expanduser()
    if path.is_dir():
        if any(path.rglob("*.parquet")):
            return datasets.load_dataset("parquet", data_dir=str(path)), str(path.resolve())
        return datasets.load_dataset("imagefolder", data_dir=str(path)), str(path.resolve())
    looks_local = ref.startswith((".", "/", "~")) or ref.count("/") > 1 or (path.suffix and not path.exists())
    if looks_local:
        raise DatasetNotFoundError(
            f"Dataset folder {ref!r} not found. Expected a folder of <Class>/<Class>_<N>.jpg images (unzip the "
            f"official EuroSAT.zip and pass its 2750/ folder) or of *.parquet files, or a Hub dataset id such as "
            f"'timm/eurosat-rgb'.")
    try:
        return datasets.load_dataset(ref), ref
    except (FileNotFoundError, ConnectionError, OSError) as err:
        raise DatasetNotFoundError(
            f"Could not load Hub dataset {ref!r} ({type(err).__name__}: {err}). Check the id and your network, "
            f"or pass a local folder with {flag} (e.g. an unzipped EuroSAT.zip).") from err


def _class_names(split) -> list[str]:
    feature = split.features.get("label")
    if feature is None or not hasattr(feature, "names"):
        raise ValueError(f"Expected a 'label' column of class names (ClassLabel); got columns "
                         f"{list(split.features)}. Rename the label column to 'label'.")
    return list(feature.names)


def _resolve_classes(names: list[str], allow_custom: bool) -> tuple[list[str], np.ndarray]:
    """Class names in index order, and a map from the dataset's label ids to those indices."""
    if set(names) == set(EUROSAT_CLASSES):
        return list(EUROSAT_CLASSES), np.array([EUROSAT_CLASSES.index(n) for n in names])
    if allow_custom:
        return list(names), np.arange(len(names))
    missing = sorted(set(EUROSAT_CLASSES) - set(names))
    extra = sorted(set(names) - set(EUROSAT_CLASSES))
    raise ClassMismatchError(
        f"Expected the 10 EuroSAT classes {list(EUROSAT_CLASSES)}; the dataset has {len(names)} classes: "
        f"missing {missing}, unexpected {extra}. Fix the folder names, or pass --allow-custom-classes to train "
        f"on the dataset's own classes.")


def _decode_one(item: dict, size: Optional[int]) -> Optional[torch.Tensor]:
    """One ``datasets`` image item -> uint8 ``(3, H, W)`` by :func:`landcover.readers.imageio.decode_rgb8` (the rules
    every entry point uses); ``None`` when it is not a decodable image."""
    data = item.get("bytes")
    if data is None:
        data = Path(item["path"]).read_bytes()
    try:
        img = torch.from_numpy(decode_rgb8(data)).permute(2, 0, 1)
    except UploadError:
        return None
    return img if size is None else resize_uint8(img, size)[0]


def _file_id(item: dict, root: Optional[str], fallback: str) -> str:
    path = item.get("path")
    if path and root:
        try:
            return Path(path).resolve().relative_to(root).as_posix()
        except ValueError:
            pass
    return Path(path).name if path else fallback


@dataclass
class RawSplit:
    """A split's undecoded image items (``datasets`` dicts with ``bytes``/``path``), labels and file ids."""

    name: str
    items: list[dict]
    labels: np.ndarray
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: Sequence[int], name: Optional[str] = None) -> "RawSplit":
        return RawSplit(name or self.name, [self.items[i] for i in index], self.labels[list(index)],
                        [self.ids[i] for i in index])


def index_split(split, name: str, label_map: np.ndarray, root: Optional[str]) -> RawSplit:
    """A ``datasets`` split's items, labels (in our class order) and file ids, without decoding any image."""
    import datasets

    raw = split.cast_column("image", datasets.Image(decode=False))
    items = list(raw["image"])
    labels = label_map[np.asarray(raw["label"], dtype=np.int64)]
    return RawSplit(name, items, labels, [_file_id(item, root, f"{name}/{i}") for i, item in enumerate(items)])


def decode_raw(raw: RawSplit, size: Optional[int] = None, threads: int = 4) -> tuple[Patches, list[str]]:
    """Decode a :class:`RawSplit` into :class:`Patches` (with a progress bar). Undecodable images are skipped
    and returned."""
    from tqdm.auto import tqdm

    items, ids = raw.items, raw.ids
    first = _decode_one(items[0], None) if items else None
    if size is None and first is not None and first.shape[-1] != first.shape[-2]:
        size = max(first.shape[-2:])  # non-square data: store square
    with ThreadPoolExecutor(threads) as pool:
        decoded = list(tqdm(pool.map(lambda it: _decode_one(it, size), items), total=len(items),
                            desc=f"decoding {raw.name}", leave=False, disable=len(items) < 1000))
    if size is None and decoded:  # mixed sizes: store everything at the first image's size
        shapes = {tuple(d.shape[-2:]) for d in decoded if d is not None}
        if len(shapes) > 1:
            target = first.shape[-1]
            decoded = [None if d is None else resize_uint8(d, target)[0] for d in decoded]
    keep = [i for i, d in enumerate(decoded) if d is not None]
    skipped = [ids[i] for i, d in enumerate(decoded) if d is None]
    if skipped:
        warnings.warn(f"Skipped {len(skipped)} undecodable image(s) in split {raw.name!r}, e.g. {skipped[:3]}.")
    images = torch.stack([decoded[i] for i in keep]) if keep else torch.empty(0, 3, 64, 64, dtype=torch.uint8)
    return Patches(images, torch.as_tensor(raw.labels[keep]), [ids[i] for i in keep]), skipped


def decode_split(split, name: str, label_map: np.ndarray, root: Optional[str], size: Optional[int] = None,
                 threads: int = 4) -> tuple[Patches, list[str]]:
    """Decode a ``datasets`` split into a :class:`Patches`. Undecodable images are skipped and returned."""
    return decode_raw(index_split(split, name, label_map, root), size, threads)


# ---------------------------------------------------------------- splitting


def stratified_split(labels: np.ndarray, files: Sequence[str], fractions: dict[str, float],
                     seed: int) -> dict[str, list[int]]:
    """Per-class shuffled split (ordered by file id first, so it only depends on the files and the seed)."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {name: [] for name in fractions}
    names = list(fractions)
    for cls in np.unique(labels):
        idx = sorted(np.flatnonzero(labels == cls).tolist(), key=lambda i: files[i])
        idx = [idx[i] for i in rng.permutation(len(idx))]
        counts = [int(round(len(idx) * fractions[n])) for n in names[1:]]
        start = 0
        for name, count in zip(names[1:], counts):
            out[name] += idx[start:start + count]
            start += count
        out[names[0]] += idx[start:]
    return {name: sorted(ix) for name, ix in out.items()}


def stratified_subset(labels: torch.Tensor, n: int, seed: int) -> list[int]:
    """Exactly ``n`` indices with the class proportions of ``labels`` (a fixed-seed, reproducible choice).

    Per-class quotas by largest remainder, so rounding never makes the subset one image short or long.
    """
    labels_np = labels.numpy()
    classes, counts = np.unique(labels_np, return_counts=True)
    exact = counts * n / len(labels_np)
    quota = np.floor(exact).astype(np.int64)
    quota[np.argsort(quota - exact, kind="stable")[: n - int(quota.sum())]] += 1
    rng = np.random.default_rng(seed)
    picked: list[int] = []
    for cls, q in zip(classes, quota):
        idx = np.flatnonzero(labels_np == cls)
        picked += idx[rng.permutation(len(idx))[:q]].tolist()
    return sorted(picked)


def _concat(parts: list[Patches]) -> Patches:
    return Patches(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]),
                   [f for p in parts for f in p.files])


def _find_split_name(raw, name: str) -> Optional[str]:
    """The dataset's own name for split ``name`` (``val`` for validation, ...), or None."""
    return next((a for a in _SPLIT_ALIASES[name] if a in raw), None)


@dataclass(frozen=True)
class SplitSpec:
    """How a dataset without its own validation or test split is split: stratified shares and their seed."""

    seed: int = 42
    val_fraction: float = 0.1
    test_fraction: float = 0.2


def load_eurosat(ref: str, split: SplitSpec = SplitSpec(), *, allow_custom_classes: bool = False,
                 max_train_samples: Optional[int] = None, recorded_splits: Optional[dict[str, list[str]]] = None,
                 splits: Sequence[str] = SPLITS, flag: str = "--dataset") -> EuroSAT:
    """Load and decode a EuroSAT-style dataset into train/validation/test :class:`Patches`.

    Args:
        ref: Hub dataset id (``timm/eurosat-rgb``), or a local imagefolder / parquet folder.
        split: Seed and shares of the stratified split, used when the dataset lacks a validation or test split.
        allow_custom_classes: Accept classes other than the ten EuroSAT ones.
        max_train_samples: Keep a stratified subset of this many training patches.
        recorded_splits: File lists per split (``splits.json`` of a model folder); when given, these
            decide the split of a local folder instead of the seed.
        splits: The splits to return; only their images are decoded where the split is known without
            decoding (the dataset's own splits, recorded files). A generated split decodes its source first, as
            in training, so undecodable files never change it.
        flag: The command-line flag that passed ``ref`` (named in errors).

    Raises:
        DatasetNotFoundError: ``ref`` is neither a folder nor a loadable Hub dataset.
        ClassMismatchError: the classes are not the EuroSAT ten (and custom classes are not allowed).
    """
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"Unknown split(s) {unknown}; expected some of {list(SPLITS)}.")
    raw, source = _load_raw(ref, flag)
    root = source if Path(source).is_dir() else None
    class_names, label_map = _resolve_classes(_class_names(next(iter(raw.values()))), allow_custom_classes)
    indexed = {name: index_split(split, name, label_map, root) for name, split in raw.items()}
    own = {name: _find_split_name(raw, name) for name in SPLITS}
    skipped: list[str] = []

    def decode(part: RawSplit) -> Patches:
        patches, bad = decode_raw(part)
        skipped.extend(bad)
        return patches

    if recorded_splits:
        out, origin = _recorded(indexed, recorded_splits, splits, source, decode), "recorded split files (splits.json)"
    elif all(own.values()):
        out, origin = {name: decode(indexed[own[name]]) for name in splits}, "dataset's own splits"
    else:
        decoded = {name: decode(part) for name, part in indexed.items()
                   if not own["train"] or name == own["train"] or name in (own[s] for s in splits)}
        out, origin = _make_splits(decoded, raw, {n: own[n] is not None for n in SPLITS}, split)
        out = {name: out[name] for name in splits}
    if max_train_samples and "train" in out and max_train_samples < len(out["train"]):
        out["train"] = out["train"].subset(stratified_subset(out["train"].labels, max_train_samples, split.seed))
    return EuroSAT(out, class_names, source, origin, skipped)


def _recorded(indexed: dict[str, RawSplit], recorded: dict[str, list[str]], splits: Sequence[str], source: str,
              decode) -> dict[str, Patches]:
    """The recorded file lists of ``splits``, decoding only those files."""
    everything = RawSplit("all", [it for p in indexed.values() for it in p.items],
                          np.concatenate([p.labels for p in indexed.values()]), [f for p in indexed.values() for f in p.ids])
    position = {f: i for i, f in enumerate(everything.ids)}
    missing = [f for name in splits for f in recorded.get(name, []) if f not in position]
    if missing:
        raise ValueError(f"{len(missing)} file(s) of the recorded split are not in {source}, e.g. {missing[:3]}. "
                         f"Point --data at the folder the model was trained on.")
    return {name: decode(everything.take([position[f] for f in recorded.get(name, [])], name)) for name in splits}


def _make_splits(decoded, raw, own, split: SplitSpec):
    missing = [n for n in SPLITS if not own[n]]
    # Carve the missing splits out of the train split (or out of everything if there is no train split).
    base = decoded[_find_split_name(raw, "train")] if own["train"] else _concat(list(decoded.values()))
    fractions = {"train": 1.0}
    seed, share = split.seed, {"validation": split.val_fraction, "test": split.test_fraction}
    for n in missing:
        if n != "train":
            fractions[n] = share[n]
    fractions["train"] = 1.0 - sum(v for k, v in fractions.items() if k != "train")
    index = stratified_split(base.labels.numpy(), base.files, fractions, seed)
    splits = {n: base.subset(index[n]) for n in fractions}
    for n in SPLITS:
        if own[n] and n != "train" and _find_split_name(raw, n) in decoded:
            splits[n] = decoded[_find_split_name(raw, n)]
    pct = "/".join(f"{round(100 * fractions.get(n, 0))}" for n in SPLITS)
    return splits, f"stratified {pct} split of {'train' if own['train'] else 'all files'} (seed {seed})"


def load_folder_patches(ref: str, class_names: Sequence[str], flag: str = "--data") -> Patches:
    """All images of a dataset (``--split all``), labelled in ``class_names`` order."""
    raw, source = _load_raw(ref, flag)
    root = source if Path(source).is_dir() else None
    names = _class_names(next(iter(raw.values())))
    unknown = sorted(set(names) - set(class_names))
    if unknown:
        raise ClassMismatchError(f"The data has classes {unknown} that the model does not know "
                                 f"(model classes: {list(class_names)}).")
    label_map = np.array([list(class_names).index(n) for n in names])
    return _concat([decode_split(split, name, label_map, root)[0] for name, split in raw.items()])
