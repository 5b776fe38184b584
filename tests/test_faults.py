"""The trainer under faults: kill -9 and resume, corrupt checkpoints, NaN loss, bad datasets.

Every run is a real ``train.py`` subprocess on generated data with the tiny ``test_resnet`` at 32 px.
Runs use one torch thread: bit-identical results need the same thread count in both runs, and one
thread is also the fastest choice on a shared 2-core CI runner.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from datagen import write_imagefolder

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3
# 110 training images / batch 2 = 55 steps per epoch: epoch 2 lasts long enough to be killed inside it.
TRAIN_FLAGS = ["--model", "test_resnet", "--no-pretrained", "--image-size", "32", "--epochs", str(EPOCHS),
               "--batch-size", "2", "--log-every", "1", "--no-examples", "--seed", "7"]
CORRUPT = ["Forest/Forest_999.jpg", "River/River_998.jpg"]  # not decodable: skipped with a warning
RUN_TIMEOUT = 900  # seconds; a bound for a stuck run, not a synchronisation


def env(**extra: str) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1", **extra}


def train_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), "--dataset", str(data), "--output-dir", str(out),
            *TRAIN_FLAGS, *extra]


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=kw.pop("env", None) or env(), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, cwd=ROOT, **kw)


def assert_clean_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit code 2, the message on stderr, no traceback."""
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    start = r.stderr.find("error: ")
    error = r.stderr[start:] if start >= 0 else ""  # the message, possibly several lines (state-dict errors)
    for needle in needles:
        assert needle in error, (needle, error or r.stderr[-3000:])


@pytest.fixture(scope="module")
def dirty_data(tmp_path_factory) -> Path:
    """Generated imagefolder (10 classes x 16 patches) plus a non-image file and two undecodable JPEGs."""
    data = write_imagefolder(tmp_path_factory.mktemp("dirty") / "eurosat", per_class=16, size=32)
    (data / CORRUPT[0]).write_bytes(b"this is not a JPEG")
    jpeg = (data / "River" / "River_1.jpg").read_bytes()
    (data / CORRUPT[1]).write_bytes(jpeg[: len(jpeg) // 3])  # truncated
    (data / "Pasture" / "notes.txt").write_text("field notes, not an image")
    return data


@pytest.fixture(scope="module")
def reference_run(dirty_data, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """An uninterrupted run: the model a killed-and-resumed run must reproduce bit for bit."""
    out = tmp_path_factory.mktemp("reference") / "run"
    r = run(train_cmd(dirty_data, out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


# ---------------------------------------------------------------- kill -9 and resume


class OutputWatcher:
    """Reads a child's stdout and stderr as they stream (tqdm writes ``\\r``, not lines)."""

    def __init__(self, proc: subprocess.Popen):
        self.text = {"stdout": bytearray(), "stderr": bytearray()}
        self.changed = threading.Event()
        self.threads = [threading.Thread(target=self._pump, args=(getattr(proc, name), buf), daemon=True)
                        for name, buf in self.text.items()]
        for t in self.threads:
            t.start()

    def _pump(self, pipe, buf: bytearray) -> None:
        for chunk in iter(lambda: pipe.read1(65536), b""):
            buf.extend(chunk)
            self.changed.set()
        self.changed.set()

    def wait_for(self, condition, timeout: float) -> bool:
        """Re-check ``condition`` whenever the child writes something (and at least every 0.1 s)."""
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        try:
            while not deadline.is_set():
                if condition():
                    return True
                self.changed.wait(0.1)
                self.changed.clear()
            return False
        finally:
            timer.cancel()


EPOCH2_BAR = re.compile(rb"epoch 2/%d:[^\r\n]*?\|\s*(\d+)/(\d+)" % EPOCHS)


def inside_epoch_2(stderr: bytes) -> bool:
    """The epoch-2 progress bar shows at least one finished batch and not the last one."""
    return any(1 <= int(m[1]) < int(m[2]) for m in EPOCH2_BAR.finditer(stderr[-20000:]))


def test_kill_9_mid_epoch_then_resume_equals_uninterrupted_run(dirty_data, reference_run, tmp_path):
    from safetensors.torch import load_file

    from landcover.training.trainer import latest_checkpoint

    out = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(dirty_data, out), env=env(), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    watcher = OutputWatcher(proc)
    first = out / "checkpoints" / "epoch_0001"
    try:
        reached = watcher.wait_for(lambda: first.is_dir() and inside_epoch_2(bytes(watcher.text["stderr"])),
                                   timeout=RUN_TIMEOUT)
        assert reached, f"never saw epoch 2 running: {bytes(watcher.text['stderr'])[-2000:]!r}"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert b"epoch 2/3 loss" not in watcher.text["stdout"]  # epoch 2 never finished
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_0001"]

    # A kill inside save_state leaves a half-written epoch_N.tmp: it must never be picked.
    half = out / "checkpoints" / "epoch_0002.tmp"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\x00" * 100)
    (half / "trainer_state.json").write_text('{"epoch": 2, "step"')
    assert latest_checkpoint(out) == first

    r = run(train_cmd(dirty_data, out, "--resume"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"Resumed from {first}" in r.stderr
    assert "epoch 1/3 loss" not in r.stdout and "epoch 2/3 loss" in r.stdout and "epoch 3/3 loss" in r.stdout
    assert not list((out / "checkpoints").glob("*.tmp")), "the leftover .tmp was not cleaned up"

    ref_out, _ = reference_run
    ref, got = load_file(str(ref_out / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert ref.keys() == got.keys()
    different = [k for k in ref if not (ref[k].dtype == got[k].dtype and ref[k].shape == got[k].shape
                                        and bool((ref[k] == got[k]).all()))]
    assert not different, f"resumed model differs from the uninterrupted one in {different[:5]}"
    ref_m, got_m = (json.loads((d / "metrics.json").read_text()) for d in (ref_out, out))
    assert got_m["test"]["accuracy"] == ref_m["test"]["accuracy"]
    assert "--resume" not in got_m["command"]  # the recipe, not how its sessions were scheduled
    assert got_m["test"]["confusion_matrix"] == ref_m["test"]["confusion_matrix"]
    deterministic = ("epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr")
    assert [{k: e[k] for k in deterministic} for e in got_m["history"]] == \
           [{k: e[k] for k in deterministic} for e in ref_m["history"]]


# ---------------------------------------------------------------- broken checkpoints


@pytest.fixture
def checkpointed(reference_run, tmp_path) -> tuple[Path, Path]:
    """An output dir holding a copy of the reference run's epoch-2 checkpoint (to be damaged)."""
    ref_out, _ = reference_run
    out = tmp_path / "out"
    ckpt = out / "checkpoints" / "epoch_0002"
    shutil.copytree(ref_out / "checkpoints" / "epoch_0002", ckpt)
    return out, ckpt


def test_resume_truncated_weights_names_folder(dirty_data, checkpointed):
    out, ckpt = checkpointed
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    r = run(train_cmd(dirty_data, out, "--resume"))
    assert_clean_error(r, f"Checkpoint {ckpt} could not be loaded", "corrupt or from another model")


def test_resume_garbage_trainer_state_names_folder(dirty_data, checkpointed):
    out, ckpt = checkpointed
    (ckpt / "trainer_state.json").write_text("\x00garbage{")
    r = run(train_cmd(dirty_data, out, "--resume"))
    assert_clean_error(r, f"Checkpoint {ckpt} is unreadable", "trainer_state.json")


def test_resume_with_another_config_names_the_mismatch(dirty_data, checkpointed):
    out, ckpt = checkpointed
    r = run(train_cmd(dirty_data, out, "--resume", "--image-size", "48", "--model", "resnet18"))
    assert_clean_error(r, f"Checkpoint {ckpt} was made with another configuration",
                       "model: checkpoint 'test_resnet' vs now 'resnet18'", "image_size: checkpoint 32 vs now 48")


def test_resume_weights_of_another_architecture(dirty_data, checkpointed):
    import timm
    from safetensors.torch import save_file

    out, ckpt = checkpointed
    other = timm.create_model("resnet18", num_classes=10)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(ckpt / "model.safetensors"))
    r = run(train_cmd(dirty_data, out, "--resume"))
    assert_clean_error(r, f"Checkpoint {ckpt} could not be loaded", "corrupt or from another model")


def test_resume_ignores_half_written_checkpoint(dirty_data, tmp_path):
    half = tmp_path / "out" / "checkpoints" / "epoch_0001.tmp"
    half.mkdir(parents=True)
    (half / "trainer_state.json").write_text('{"epoch": 1}')
    r = run(train_cmd(dirty_data, tmp_path / "out", "--resume"))
    assert_clean_error(r, "--resume: no complete checkpoint in", "Start without --resume")


# ---------------------------------------------------------------- NaN loss


def test_nan_loss_stops_with_epoch_and_batch_and_keeps_last_checkpoint(dirty_data, tmp_path):
    """A learning rate of 1e28 is survivable while only the head trains (epoch 1, frozen backbone); once the
    backbone unfreezes in epoch 2 the activations overflow float32 and the loss becomes inf/NaN."""
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "nan"
    r = run(train_cmd(dirty_data, out, "--epochs", "2", "--freeze-epochs", "1", "--lr", "1e28",
                      "--weight-decay", "0", "--label-smoothing", "0"))
    first = out / "checkpoints" / "epoch_0001"
    assert_clean_error(r, "Training loss became NaN/inf in epoch 2 at batch", "optimiser step",
                       f"The last good checkpoint is {first}")
    assert re.search(r"in epoch 2 at batch \d+ \(optimiser step <= \d+\)", r.stderr)
    assert "epoch 1/2 loss" in r.stdout
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_0001"]
    assert json.loads((first / "trainer_state.json").read_text())["epoch"] == 1
    weights = load_file(str(first / "model.safetensors"))
    assert weights and all(bool(torch.isfinite(t).all()) for t in weights.values() if t.is_floating_point())
    assert not (out / "model.safetensors").exists()  # no model folder is written from a diverged run


# ---------------------------------------------------------------- bad dataset input


def test_missing_dataset_folder(tmp_path):
    missing = tmp_path / "no-such-folder"
    r = run(train_cmd(missing, tmp_path / "out"))
    assert_clean_error(r, f"Dataset folder {str(missing)!r} not found", "<Class>/<Class>_<N>.jpg")


def test_wrong_class_names_lists_missing_and_unexpected(tmp_path):
    from landcover.core.labels import EUROSAT_CLASSES

    classes = [("Forrest" if c == "Forest" else c) for c in EUROSAT_CLASSES] + ["Desert"]
    data = write_imagefolder(tmp_path / "wrong", per_class=2, size=32, classes=classes)
    r = run(train_cmd(data, tmp_path / "out"))
    assert_clean_error(r, "missing ['Forest']", "unexpected ['Desert', 'Forrest']", "--allow-custom-classes")


def test_undecodable_images_are_skipped_counted_and_recorded(reference_run):
    """Decision: an undecodable file is skipped with a warning and listed in metrics.json; a non-image
    extension (``notes.txt``) is not part of an imagefolder at all, so it is neither loaded nor reported."""
    out, r = reference_run
    assert "Skipped 2 undecodable image(s) in split 'train'" in r.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics["skipped_files"]) == CORRUPT
    assert sum(metrics["split_sizes"].values()) == 160  # the 160 good patches, all used
    files = [f for split in json.loads((out / "splits.json").read_text())["files"].values() for f in split]
    assert not any(f.endswith(".txt") or f in CORRUPT for f in files)
