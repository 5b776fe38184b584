"""Fine-tuning loop: the project's only ``accelerate`` user.

Runs unchanged on a CPU, one GPU, several GPUs or nodes (``accelerate launch`` / ``torchrun``), with
``--mixed_precision bf16|fp16|no``. The data path is decode-once uint8 tensors -> batched augmentation on
the training device (:mod:`landcover.data.transforms`); the hot loop has no per-sample Python and no
host-device sync per step (the loss is checked every ``log_every`` steps).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from landcover.core.calibration import SINGLE_PASS, calibration_summary, fit_temperature, probabilities
from landcover.core.config import TTA_MODES, TrainConfig
from landcover.data.eurosat import EuroSAT, Patches, SplitSpec, TensorPatches, collate_batch, load_eurosat
from landcover.core.metrics import confusion_matrix, report
from landcover.models.factory import create_model, data_config, set_backbone_frozen, train_mode
from landcover.data.transforms import (InputSpec, ViewSpec, augment, augment_with_clean_view, jpeg_recompress,
                                      make_generator, preprocess, retain_freed_host_memory, tta_views)

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.json"
BEST_WEIGHTS = "best_model.safetensors"
EMA_WEIGHTS = "ema_model.safetensors"


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class CheckpointError(RuntimeError):
    """A checkpoint folder is unreadable or belongs to another run configuration."""


@dataclass
class TrainResult:
    """What a finished run hands to the model-folder writer (main process only)."""

    model: torch.nn.Module
    config: TrainConfig
    data: EuroSAT
    metrics: dict
    history: list[dict]
    examples: dict[str, tuple[str, torch.Tensor]] = field(default_factory=dict)
    wall_time_s: float = 0.0
    hardware: str = ""


# ---------------------------------------------------------------- set-up


def build_model(cfg: TrainConfig, class_names: list[str]) -> torch.nn.Module:
    """The model a run starts from (seeded, so tests can rebuild the exact initial weights)."""
    torch.manual_seed(cfg.seed)
    return create_model(cfg.model, num_classes=len(class_names), pretrained=cfg.pretrained,
                        drop_rate=cfg.drop_rate, image_size=cfg.image_size, label_names=class_names,
                        init_checkpoint=cfg.init_checkpoint)


def load_teacher(cfg: TrainConfig, class_names: list[str], device, memory_format):
    """The frozen teacher of ``--teacher`` in eval mode on ``device`` (None without one), checked against the run."""
    if not cfg.teacher:
        return None
    if not 0.0 <= cfg.distill_weight <= 1.0 or cfg.distill_temperature <= 0:
        raise ValueError(f"Expected --distill-weight in [0, 1] and --distill-temperature > 0; got "
                         f"{cfg.distill_weight} and {cfg.distill_temperature}.")
    ref = cfg.teacher if ":" in cfg.teacher.split("/")[0] else f"local-dir:{cfg.teacher}"
    teacher = create_model(ref, num_classes=len(class_names), pretrained=True)
    names = teacher.pretrained_cfg.get("label_names")
    if names is not None and list(names) != list(class_names):
        raise ValueError(f"The teacher {cfg.teacher} predicts {list(names)}; this run's classes are "
                         f"{class_names}. Use a teacher trained on the same classes.")
    # The teacher may take another input size than the student (a 128 px teacher for a 64 px student): it sees
    # the same crop resized to its own size (landcover.data.transforms.augment_with_clean_view).
    teacher.requires_grad_(False)
    return teacher.to(device, memory_format=memory_format).eval()


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
                      ) -> torch.Tensor:
    """Hinton et al.'s ``T^2 KL(softmax(t / T) || softmax(s / T))``, averaged over the batch."""
    log_student = torch.nn.functional.log_softmax(student_logits / temperature, dim=1)
    log_teacher = torch.nn.functional.log_softmax(teacher_logits / temperature, dim=1)
    return torch.nn.functional.kl_div(log_student, log_teacher, reduction="batchmean",
                                      log_target=True) * temperature ** 2


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """timm's AdamW: no weight decay on norms, biases and the model's ``no_weight_decay()``; fused kernels on CUDA."""
    from timm.optim import create_optimizer_v2

    fused = {"fused": True} if next(model.parameters()).is_cuda else {}
    return create_optimizer_v2(model, "adamw", lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)


def make_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """timm's cosine schedule per optimiser step: linear warm-up from ``lr / warmup_steps``, then cosine to zero.

    Call ``step_update(step)`` after each optimiser step. It is not registered for accelerate checkpointing:
    the rate is a function of the step number alone, which ``trainer_state.json`` restores on ``--resume``.
    """
    from timm.scheduler import CosineLRScheduler

    base = optimizer.param_groups[0]["lr"]
    return CosineLRScheduler(optimizer, t_initial=max(1, total_steps - warmup_steps), lr_min=0.0,
                             warmup_t=warmup_steps, warmup_lr_init=base / max(1, warmup_steps), warmup_prefix=True,
                             t_in_epochs=False)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def make_accelerator(cfg: TrainConfig):
    """The run's ``Accelerator``; accelerate picks the device (CUDA, MPS, XPU, NPU, TPU, ... or the CPU).

    ``cpu=True`` only where torch sees no accelerator at all: accelerate runs several CPU processes (gloo, under
    ``torchrun``) only when told ``cpu``, and picks every other device itself.
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs

    # Frozen epochs leave backbone parameters without gradients; DDP must be told to expect that.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=cfg.freeze_epochs > 0)
    return Accelerator(
        gradient_accumulation_steps=cfg.grad_accum,
        log_with=cfg.report_to,
        project_dir=cfg.output_dir,
        cpu=not torch.accelerator.is_available(),
        # non_blocking: with pinned batches the host-to-device copy no longer waits for the GPU each step.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed,
                                                  non_blocking=torch.cuda.is_available()),
        kwargs_handlers=[ddp],
    )


def make_loaders(data: EuroSAT, cfg: TrainConfig):
    loader = torch.utils.data.DataLoader
    common = dict(collate_fn=collate_batch, num_workers=cfg.num_workers, pin_memory=torch.cuda.is_available())
    train = loader(TensorPatches(data.splits["train"]), batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                   **common)
    evals = {name: loader(TensorPatches(data.splits[name]), batch_size=cfg.eval_batch_size, shuffle=False,
                          **common) for name in ("validation", "test")}
    return train, evals


# ---------------------------------------------------------------- checkpoints


def _checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("epoch_*") if p.is_dir() and not p.name.endswith(".tmp"))


def latest_checkpoint(output_dir: str | Path) -> Optional[Path]:
    """Newest complete checkpoint (half-written ones live in ``*.tmp`` and are never picked)."""
    dirs = _checkpoint_dirs(output_dir)
    return dirs[-1] if dirs else None


_RESUME_MUST_MATCH = ("dataset", "model", "image_size", "batch_size", "grad_accum", "seed", "epochs",
                      "val_fraction", "test_fraction", "max_train_samples", "freeze_epochs", "lr", "ema_decay",
                      "radiometric", "band_gain", "jpeg", "teacher", "distill_weight", "distill_temperature")


def read_trainer_state(checkpoint: Path, cfg: TrainConfig) -> dict:
    """The loop state of a checkpoint, after checking it belongs to this configuration."""
    path = checkpoint / TRAINER_STATE
    try:
        state = json.loads(path.read_text())
        saved = state["config"]
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"Checkpoint {checkpoint} is unreadable ({type(err).__name__}: {err}); expected "
                              f"{TRAINER_STATE} written by a finished epoch. Delete the folder to resume from "
                              f"the one before it, or start without --resume.") from err
    # A key the checkpoint's version did not have yet was that version's behaviour: the field's default.
    saved = {**{f.name: f.default for f in fields(TrainConfig)}, **saved}
    mismatch = {k: (saved.get(k), getattr(cfg, k)) for k in _RESUME_MUST_MATCH if saved.get(k) != getattr(cfg, k)}
    if mismatch:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in mismatch.items())
        raise CheckpointError(f"Checkpoint {checkpoint} was made with another configuration ({detail}). Resume "
                              f"with the original flags, or use a new --output-dir.")
    return state


def save_checkpoint(accelerator, cfg: TrainConfig, state: dict, best_state: Optional[dict], ema=None) -> None:
    """``save_state`` into ``epoch_N.tmp``, then an atomic rename: a kill never leaves a half checkpoint."""
    from safetensors.torch import save_file

    root = Path(cfg.output_dir) / CHECKPOINTS
    final = root / f"epoch_{state['epoch']:04d}"
    tmp = root / f"{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        if best_state is not None:
            save_file(best_state, str(tmp / BEST_WEIGHTS))
        if ema is not None:
            save_file(_cpu_state(ema.module), str(tmp / EMA_WEIGHTS))
        (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in _checkpoint_dirs(cfg.output_dir)[:-max(1, cfg.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


# ---------------------------------------------------------------- loops


def evaluate_loader(accelerator, model, loader, prep: dict, num_classes: int, desc: str,
                    memory_format=torch.contiguous_format) -> tuple[torch.Tensor, float, torch.Tensor]:
    """Confusion matrix, mean loss and predictions over a prepared loader.

    ``gather_for_metrics`` per batch drops the samples DDP duplicated to even out the shards, so the
    counts equal the split size exactly on any number of processes.
    """
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long, device=accelerator.device)
    loss_sum = torch.zeros((), device=accelerator.device)
    preds_all = []
    with torch.inference_mode():
        for images, labels in tqdm(loader, desc=desc, leave=False, disable=not accelerator.is_local_main_process):
            x = preprocess(images, prep["size"], prep["mean"], prep["std"], memory_format)
            logits = model(x).float()
            loss = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
            preds, labels, loss = accelerator.gather_for_metrics((logits.argmax(1), labels, loss))
            cm += confusion_matrix(preds, labels, num_classes)
            loss_sum += loss.sum()
            preds_all.append(preds)
    n = int(cm.sum())
    return cm, float(loss_sum) / max(1, n), torch.cat(preds_all).cpu() if preds_all else torch.empty(0)


def _prep(cfg: TrainConfig, model) -> dict:
    dc = data_config(model)
    return {"size": cfg.image_size, "mean": dc["mean"], "std": dc["std"]}


def view_spec(cfg: TrainConfig) -> ViewSpec:
    """The training views ``cfg`` asks for."""
    return ViewSpec(cfg.crop_scale, cfg.jitter, cfg.radiometric, {"band_gain": cfg.band_gain})


@dataclass
class Fit:
    """What every epoch of a run works with, built once by :func:`train`."""

    accelerator: Any
    model: torch.nn.Module  # as prepared by accelerate (DDP-wrapped or compiled where so)
    optimizer: torch.optim.Optimizer
    scheduler: Any  # timm scheduler, stepped per optimiser step
    criterion: torch.nn.Module
    cfg: TrainConfig
    prep: dict  # input size, mean, std (see _prep)
    memory_format: torch.memory_format
    ema: Any = None  # timm ModelEmaV3, or None
    teacher: Optional[torch.nn.Module] = None  # see load_teacher


def train_one_epoch(fit: Fit, loader, epoch: int, step: int) -> tuple[dict, int]:
    """One epoch; returns its summary and the new global optimiser step."""
    accelerator, model, optimizer, cfg = fit.accelerator, fit.model, fit.optimizer, fit.cfg
    model.train()
    # On the bare model: under DDP, ``model`` is the wrapper (whose BatchNorm stats would otherwise update while
    # the backbone is frozen).
    train_mode(accelerator.unwrap_model(model, keep_torch_compile=False), frozen_backbone=epoch < cfg.freeze_epochs)
    # Per-epoch seeds (not a running RNG) make a resumed run replay exactly the same epochs.
    torch.manual_seed(cfg.seed * 1000 + epoch * 10 + accelerator.process_index)
    gen = make_generator(cfg.seed * 7919 + epoch * 104729 + accelerator.process_index)  # host-side parameters
    loader.set_epoch(epoch)
    loss_sum = torch.zeros((), device=accelerator.device)
    correct = torch.zeros((), device=accelerator.device, dtype=torch.long)
    seen = 0
    first_bad = torch.full((), -1, device=accelerator.device, dtype=torch.long)
    start = time.perf_counter()
    bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
               disable=not accelerator.is_local_main_process)
    for batch_index, (images, labels) in enumerate(loader):
        with accelerator.accumulate(model):
            logits, loss = _training_loss(fit, images, labels, gen)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if accelerator.sync_gradients:
            step += 1
            fit.scheduler.step_update(step)
            if fit.ema is not None:
                fit.ema.update(accelerator.unwrap_model(model, keep_torch_compile=False), step=step)
        detached = loss.detach()
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(detached),
                                torch.full_like(first_bad, batch_index), first_bad)
        loss_sum += detached * labels.shape[0]
        correct += (logits.detach().argmax(1) == labels).sum()
        seen += labels.shape[0]
        bar.update(1)
        if (batch_index + 1) % cfg.log_every == 0 or batch_index + 1 == len(loader):
            _check_finite(first_bad, epoch, step, cfg)  # one sync every log_every steps
            bar.set_postfix(loss=f"{float(loss_sum) / max(1, seen):.4f}", lr=f"{current_lr(optimizer):.2e}")
        if cfg.max_steps is not None and step >= cfg.max_steps:
            break
    bar.close()
    _check_finite(first_bad, epoch, step, cfg)
    seconds = time.perf_counter() - start
    totals = accelerator.reduce(torch.stack([loss_sum, correct.float(), torch.tensor(float(seen),
                                                                                   device=loss_sum.device)]))
    total_seen = max(1.0, float(totals[2]))
    return {"train_loss": float(totals[0]) / total_seen, "train_acc": float(totals[1]) / total_seen,
            "lr": current_lr(optimizer), "img_per_s": total_seen / max(seconds, 1e-9),
            "train_seconds": seconds}, step


def _training_loss(fit: Fit, images, labels, gen) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment one uint8 batch, run the model; the logits and the loss (with the teacher's term if there is one)."""
    model, teacher, criterion, cfg, prep = fit.model, fit.teacher, fit.criterion, fit.cfg, fit.prep
    clean = images
    if cfg.jpeg > 0:
        images = jpeg_recompress(images, cfg.jpeg, gen)
    spec = InputSpec(prep["size"], prep["mean"], prep["std"], fit.memory_format)
    if teacher is None:
        x = augment(images, spec, gen, view_spec(cfg))
        logits = model(x)
        return logits, criterion(logits.float(), labels)
    teacher_cfg = data_config(teacher)
    x, x_clean = augment_with_clean_view(images, clean, spec, gen, view_spec(cfg),
                                         InputSpec(int(teacher_cfg["input_size"][-1]), teacher_cfg["mean"],
                                                   teacher_cfg["std"]))
    with torch.inference_mode():
        target = teacher(x_clean).float()
    logits = model(x)
    w = cfg.distill_weight
    loss = (1 - w) * criterion(logits.float(), labels) + \
        w * distillation_loss(logits.float(), target.clone(), cfg.distill_temperature)
    return logits, loss


def _check_finite(first_bad: torch.Tensor, epoch: int, step: int, cfg: TrainConfig) -> None:
    bad = int(first_bad)
    if bad >= 0:
        last = latest_checkpoint(cfg.output_dir)
        raise NonFiniteLossError(
            f"Training loss became NaN/inf in epoch {epoch + 1} at batch {bad} (optimiser step <= {step}). "
            f"The last good checkpoint is {last or 'none (no epoch finished)'}. Lower --lr, check the data, or "
            f"use --mixed_precision bf16 instead of fp16; then --resume.")


# ---------------------------------------------------------------- the run


def train(cfg: TrainConfig) -> Optional[TrainResult]:
    """Fine-tune, checkpoint every epoch, keep the best epoch by validation accuracy, test it.

    Returns the :class:`TrainResult` on the main process and ``None`` on the others.
    """
    run_start = time.perf_counter()
    accelerator = make_accelerator(cfg)
    if accelerator.device.type == "cpu":
        retain_freed_host_memory()  # the batch temporaries would be page-faulted in again every step
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    with accelerator.main_process_first():  # the first process builds the datasets cache
        data = load_eurosat(cfg.dataset, SplitSpec(cfg.seed, cfg.val_fraction, cfg.test_fraction),
                            allow_custom_classes=cfg.allow_custom_classes, max_train_samples=cfg.max_train_samples)
    if len(data.splits["train"]) < cfg.batch_size * accelerator.num_processes:
        raise ValueError(f"The training split has {len(data.splits['train'])} images, fewer than one global batch "
                         f"({cfg.batch_size} x {accelerator.num_processes} processes). Lower --batch-size.")
    model = build_model(cfg, data.class_names)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    prep = _prep(cfg, model)
    if cfg.compile:
        model = torch.compile(model)
    teacher = load_teacher(cfg, data.class_names, accelerator.device, memory_format)
    optimizer = make_optimizer(model, cfg)
    train_loader, eval_loaders = make_loaders(data, cfg)
    model, optimizer, train_loader, val_loader, test_loader = accelerator.prepare(
        model, optimizer, train_loader, eval_loaders["validation"], eval_loaders["test"])
    steps_per_epoch = math.ceil(len(train_loader) / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = make_scheduler(optimizer, int(cfg.warmup_epochs * steps_per_epoch), total_steps)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)  # takes raw logits
    if cfg.report_to:
        accelerator.init_trackers("landcover", config={k: v for k, v in asdict(cfg).items() if v is not None})

    start_epoch, step, history, best = 0, 0, [], {"val_acc": -1.0, "epoch": -1}
    best_state: Optional[dict] = None
    if cfg.resume:
        resumed, best_state = _resume(accelerator, cfg)
        start_epoch, step, history, best = resumed["epoch"], resumed["step"], resumed["history"], resumed["best"]
        # The wall time of the earlier sessions of this run counts: the model card reports the whole run's time.
        # (Checkpoints written before it was recorded: the sum of their epochs' training time.)
        run_start -= resumed.get("wall_time_s", sum(h.get("train_seconds", 0.0) for h in history))
        scheduler.step_update(step)
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    ema = make_ema(unwrapped, cfg)
    if cfg.resume and ema is not None:
        _resume_ema(ema, cfg)
    _log_start(accelerator, cfg, data, unwrapped)

    fit = Fit(accelerator, model, optimizer, scheduler, criterion, cfg, prep, memory_format, ema, teacher)
    for epoch in range(start_epoch, cfg.epochs):
        set_backbone_frozen(unwrapped, epoch < cfg.freeze_epochs)
        summary, step = train_one_epoch(fit, train_loader, epoch, step)
        cm, val_loss, _ = evaluate_loader(accelerator, model, val_loader, prep, len(data.class_names),
                                          "validation", memory_format)
        val = report(cm, data.class_names)
        entry = {"epoch": epoch + 1, **summary, "val_loss": val_loss, "val_acc": val["accuracy"],
                 "frozen_backbone": epoch < cfg.freeze_epochs, "step": step}
        candidates = [("raw", val["accuracy"], unwrapped)]
        if ema is not None:
            cm_ema, entry["val_loss_ema"], _ = evaluate_loader(accelerator, ema.module, val_loader, prep,
                                                               len(data.class_names), "validation (EMA)",
                                                               memory_format)
            entry["val_acc_ema"] = report(cm_ema, data.class_names)["accuracy"]
            candidates.append(("ema", entry["val_acc_ema"], ema.module))
        history.append(entry)
        for weights, accuracy, module in candidates:  # raw first: EMA must beat it strictly
            if accuracy > best["val_acc"]:
                best = {"val_acc": accuracy, "epoch": epoch + 1, "weights": weights}
                best_state = _cpu_state(module)
        state = {"epoch": epoch + 1, "step": step, "history": history, "best": best, "config": asdict(cfg),
                 "wall_time_s": round(time.perf_counter() - run_start, 1)}
        save_checkpoint(accelerator, cfg, state, best_state, ema)
        _log_epoch(accelerator, entry, cfg)
        if cfg.report_to:
            accelerator.log({k: v for k, v in entry.items() if isinstance(v, (int, float))}, step=epoch + 1)
        if cfg.max_steps is not None and step >= cfg.max_steps:
            break
    if best_state is not None:
        unwrapped.load_state_dict(best_state)
    set_backbone_frozen(unwrapped, False)
    result = _final_evaluation(fit, unwrapped, {"test": test_loader, "validation": val_loader}, data, history, best)
    if cfg.report_to:
        accelerator.end_training()
    if result is not None:
        result.wall_time_s = time.perf_counter() - run_start
        result.hardware = describe_hardware(accelerator)
    accelerator.wait_for_everyone()
    return result


def _cpu_state(module: torch.nn.Module) -> dict:
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def make_ema(model: torch.nn.Module, cfg: TrainConfig):
    """timm's ``ModelEmaV3`` of ``model`` (with warm-up: early steps follow the weights closely), or None."""
    if cfg.ema_decay <= 0:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True)


def _resume_ema(ema, cfg: TrainConfig) -> None:
    from safetensors.torch import load_file

    checkpoint = latest_checkpoint(cfg.output_dir)
    path = checkpoint / EMA_WEIGHTS if checkpoint is not None else None
    if path is None or not path.is_file():
        raise CheckpointError(f"--resume with --ema-decay {cfg.ema_decay}: {path} is missing. Resume with the "
                              f"original flags, or use a new --output-dir.")
    ema.module.load_state_dict(load_file(str(path)))


def _resume(accelerator, cfg: TrainConfig):
    from safetensors.torch import load_file

    checkpoint = latest_checkpoint(cfg.output_dir)
    if checkpoint is None:
        raise CheckpointError(f"--resume: no complete checkpoint in {Path(cfg.output_dir) / CHECKPOINTS}. "
                              f"Start without --resume.")
    state = read_trainer_state(checkpoint, cfg)
    try:
        accelerator.load_state(str(checkpoint))
    except Exception as err:  # accelerate/torch raise many types for bad files
        raise CheckpointError(f"Checkpoint {checkpoint} could not be loaded ({type(err).__name__}: {err}). It is "
                              f"corrupt or from another model; delete it to resume from an earlier one.") from err
    best_path = checkpoint / BEST_WEIGHTS
    best_state = load_file(str(best_path)) if best_path.is_file() else None
    if accelerator.is_main_process:
        logger.info("Resumed from %s (epoch %d, step %d)", checkpoint, state["epoch"], state["step"])
    return state, best_state


def collect_view_logits(accelerator, model, loader, prep: dict, memory_format, desc: str, views: bool = True
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of every patch under the 8 symmetries of the square, ``(8, N, C)`` (``(1, N, C)`` with
    ``views=False``), and the labels, gathered exactly over processes.

    View ``g`` is symmetry code ``g`` (0 = the patch itself), so each TTA mode's logits are a row selection.
    """
    model.eval()
    all_logits, all_labels = [], []
    with torch.inference_mode():
        for images, labels in tqdm(loader, desc=desc, leave=False, disable=not accelerator.is_local_main_process):
            x = preprocess(images, prep["size"], prep["mean"], prep["std"], memory_format)
            n = x.shape[0]
            inputs = tta_views(x, "d4").contiguous(memory_format=memory_format) if views else x
            logits = model(inputs).float().view(-1, n, model_num_classes(model)).transpose(0, 1)  # (n, V, C)
            logits, labels = accelerator.gather_for_metrics((logits.contiguous(), labels))
            all_logits.append(logits.cpu())
            all_labels.append(labels.cpu())
    return torch.cat(all_logits).transpose(0, 1), torch.cat(all_labels)


def model_num_classes(model) -> int:
    return int(getattr(model, "num_classes", 0) or getattr(getattr(model, "module", None), "num_classes"))


def mode_logits(view_logits: torch.Tensor, mode: str) -> torch.Tensor:
    """The rows of ``(8, N, C)`` view logits that test-time augmentation ``mode`` averages."""
    return view_logits[:1] if mode == SINGLE_PASS else view_logits[list(TTA_MODES[mode].symmetries)]


def select_tta_and_temperatures(val_logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """One temperature per inference mode (NLL on validation), and the mode with the best validation accuracy.

    Ties go to the mode with fewer views (cheaper at the same accuracy).
    """
    modes = [SINGLE_PASS] + ([m for m in TTA_MODES] if val_logits.shape[0] == 8 else [])
    temperatures, accuracy = {}, {}
    for mode in modes:
        logits = mode_logits(val_logits, mode)
        temperatures[mode] = round(fit_temperature(logits, labels), 6)
        accuracy[mode] = float((probabilities(logits, temperatures[mode]).argmax(1) == labels).float().mean())
    chosen = max(modes, key=lambda m: (accuracy[m], -len(mode_logits(val_logits, m))))
    return {"temperature": temperatures, "validation_accuracy": accuracy, "chosen": chosen}


def _final_evaluation(fit: Fit, unwrapped, loaders: dict, data, history, best) -> Optional[TrainResult]:
    """Validation: pick TTA and fit temperatures. Then the test split, once, with that choice."""
    accelerator, model, cfg, prep, memory_format = fit.accelerator, fit.model, fit.cfg, fit.prep, fit.memory_format
    test_loader, val_loader = loaders["test"], loaders["validation"]
    n_classes = len(data.class_names)
    val_logits, val_labels = collect_view_logits(accelerator, model, val_loader, prep, memory_format,
                                                 "validation views", views=cfg.select_tta)
    test_logits, test_labels = collect_view_logits(accelerator, model, test_loader, prep, memory_format,
                                                   "test views", views=cfg.select_tta)
    if not accelerator.is_main_process:
        return None
    selection = select_tta_and_temperatures(val_logits, val_labels)
    mode, temps = selection["chosen"], selection["temperature"]

    def scored(logits, labels, m) -> tuple[dict, torch.Tensor]:
        probs = probabilities(mode_logits(logits, m), temps[m])
        result = report(confusion_matrix(probs.argmax(1), labels, n_classes), data.class_names)
        return {**result, **calibration_summary(mode_logits(logits, m), labels, temps[m])}, probs

    test, test_probs = scored(test_logits, test_labels, mode)
    single, _ = scored(test_logits, test_labels, SINGLE_PASS)
    test["loss"] = float(torch.nn.functional.cross_entropy(test_logits[0], test_labels))
    metrics = {
        "test": test,
        "validation": {**scored(val_logits, val_labels, mode)[0], "test_time_augmentation": _mode_name(mode)},
        "best_epoch": best["epoch"],
        "best_weights": best.get("weights", "raw"),
        "test_time_augmentation": _mode_name(mode),
        "tta_selection": selection,
        "history": history,
        "dataset": data.source,
        "split": data.split_origin,
        "split_sizes": {k: len(v) for k, v in data.splits.items()},
        "skipped_files": data.skipped,
    }
    if mode != SINGLE_PASS:
        metrics["test_without_tta"] = single
    examples = pick_examples(data.splits["test"], test_probs, data.class_names)
    accelerator.print(f"validation picked {mode} (accuracy {selection['validation_accuracy']}, temperatures {temps}); "
                      f"test accuracy {test['accuracy']:.4f} (95% CI {test['accuracy_ci95'][0]:.4f}-"
                      f"{test['accuracy_ci95'][1]:.4f}), single pass {single['accuracy']:.4f}, ECE "
                      f"{test['ece_before']:.4f} -> {test['ece']:.4f} on {test['n']} images (best epoch "
                      f"{best['epoch']}, {best.get('weights', 'raw')} weights)")
    return TrainResult(unwrapped, cfg, data, metrics, history, examples)


def _mode_name(mode: str) -> Optional[str]:
    return None if mode == SINGLE_PASS else mode


def pick_examples(patches: Patches, probs: torch.Tensor, class_names: list[str]
                  ) -> dict[str, tuple[str, torch.Tensor]]:
    """Per class, the correctly classified test patch the model is surest of (the first in file order among equals):
    ``{class: (file id, image)}``. A visitor clicking an example sees a confident right answer."""
    out = {}
    if len(probs) != len(patches):
        return out
    preds, confidence = probs.argmax(1), probs.max(1).values
    for c, name in enumerate(class_names):
        hits = torch.nonzero((patches.labels == c) & (preds == c)).flatten()
        if len(hits):
            best = int(hits[torch.argmax(confidence[hits])])  # argmax returns the first of equal maxima
            out[name] = (patches.files[best], patches.images[best])
    return out


def describe_hardware(accelerator) -> str:
    if accelerator.device.type == "cuda":
        name = torch.cuda.get_device_name(accelerator.device)
    else:
        name = f"CPU ({os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads)"
    return f"{accelerator.num_processes} x {name}, mixed precision {accelerator.mixed_precision}"


def _log_start(accelerator, cfg, data, model) -> None:
    if accelerator.is_main_process:
        sizes = {k: len(v) for k, v in data.splits.items()}
        accelerator.print(f"data {data.source}: {sizes} ({data.split_origin}); model {cfg.model} "
                          f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params) on "
                          f"{describe_hardware(accelerator)}")


def _log_epoch(accelerator, e: dict, cfg: TrainConfig) -> None:
    accelerator.print(f"epoch {e['epoch']}/{cfg.epochs} loss {e['train_loss']:.4f} acc {e['train_acc']:.4f} "
                      f"val_loss {e['val_loss']:.4f} val_acc {e['val_acc']:.4f} lr {e['lr']:.2e} "
                      f"{e['img_per_s']:.0f} img/s{' (backbone frozen)' if e['frozen_backbone'] else ''}")
