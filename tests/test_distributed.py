"""Two real processes on the CPU (gloo) via ``torchrun``: exact metric counts, rank 0's model, freezing under DDP.

(``accelerate launch --cpu --num_processes 2`` starts a single process, accelerate issue #2741.)
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from landcover.core.config import from_json, TrainConfig
from landcover.training.trainer import build_model

ROOT = Path(__file__).resolve().parents[1]
BATCH, EVAL_BATCH = 8, 8  # test split 50 and validation 20 are not multiples of 2 x 8: padding would show


@pytest.fixture(scope="module")
def ddp_run(eurosat_folder, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("ddp") / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py",
               "--dataset", str(eurosat_folder), "--model", "test_resnet", "--no-pretrained", "--image-size", "32",
               "--epochs", "2", "--freeze-epochs", "1", "--batch-size", str(BATCH), "--eval-batch-size",
               str(EVAL_BATCH), "--lr", "3e-3", "--keep-checkpoints", "2", "--no-examples", "--output-dir", str(out)]
    # A DDP hang (e.g. unused parameters while frozen) must fail the test, not stall CI. About 40 s on an idle
    # 2-core machine; the limit is that of a hang, not of a slow (shared) runner.
    proc = subprocess.Popen(command, cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=1200)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers
        stdout, stderr = proc.communicate()
        pytest.fail(f"torchrun did not finish in 1200 s (hang?):\n{stdout[-2000:]}\n{stderr[-3000:]}")
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return out, subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return {k.removeprefix("module."): v for k, v in load_file(str(path)).items()}


def test_two_processes_evaluate_each_sample_exactly_once(ddp_run):
    out, proc = ddp_run
    assert "on 2 x CPU" in proc.stdout  # really two processes
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split_sizes"] == {"train": 170, "validation": 20, "test": 50}
    assert metrics["test"]["n"] == 50 and metrics["validation"]["n"] == 20
    assert sum(map(sum, metrics["test"]["confusion_matrix"])) == 50
    assert sum(m["support"] for m in metrics["test"]["per_class"].values()) == 50
    # Each epoch sees the whole (drop_last) training split once across both ranks: 2 x 10 batches of 8.
    assert [h["step"] for h in metrics["history"]] == [10, 20]


def test_saved_model_is_rank_zeros_best_checkpoint(ddp_run):
    out, _ = ddp_run
    best_epoch = json.loads((out / "metrics.json").read_text())["best_epoch"]
    final = _weights(out / "model.safetensors")
    checkpoint = _weights(out / "checkpoints" / f"epoch_{best_epoch:04d}" / "model.safetensors")
    assert final.keys() == checkpoint.keys()
    assert all(torch.equal(final[k], checkpoint[k]) for k in final)


def test_frozen_epoch_under_ddp_leaves_the_backbone_untouched(ddp_run):
    out, _ = ddp_run
    cfg = from_json(TrainConfig, out / "train_config.json")
    initial = build_model(cfg, json.loads((out / "config.json").read_text())["label_names"])
    head = initial.get_classifier()
    head_keys = {f"{name}.{k}" for name, m in initial.named_modules() if m is head for k in m.state_dict()}
    start = initial.state_dict()
    after1 = _weights(out / "checkpoints" / "epoch_0001" / "model.safetensors")
    after2 = _weights(out / "checkpoints" / "epoch_0002" / "model.safetensors")
    backbone = [k for k in start if k not in head_keys]
    assert all(torch.equal(after1[k], start[k]) for k in backbone)
    assert all(not torch.equal(after1[k], start[k]) for k in head_keys)
    assert any(not torch.equal(after2[k], start[k]) for k in backbone if k.endswith(".weight"))
