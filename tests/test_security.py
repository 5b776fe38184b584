"""Untrusted files and secrets: pickles are never loaded, no remote code, the HF token never leaks.

Pickle tests use a crafted file whose unpickling would create a marker file; every loader must refuse
the file *and* leave the marker absent. Push tests run real ``train.py`` / ``python -m landcover push``
subprocesses against an unreachable or a loopback fake Hub: no request leaves the machine.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datagen import class_patch, write_imagefolder
from http_files import base_url, running_server

ROOT = Path(__file__).resolve().parents[1]
FAKE_TOKEN = "hf_fakeTOKEN1234567890abcdef"
UNREACHABLE = "http://127.0.0.1:9"  # loopback "discard" port: connection refused, nothing leaves the machine
REPO = "someone/eurosat-test"
TIMEOUT = 900  # seconds; a bound for a stuck run, not a synchronisation


class _RunsCode:
    """Pickles to a call of ``exec``: loading it unsafely writes ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def write_malicious_pickle(path: Path, marker: Path) -> Path:
    torch.save({"conv1.weight": _RunsCode(marker), "fc.bias": torch.zeros(10)}, path)
    return path


def env(**extra: str) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    return {**base, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1", **extra}


def run(args: list[str], **env_extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env(**env_extra), capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=ROOT)


def assert_refused(r: subprocess.CompletedProcess, marker: Path, *needles: str) -> None:
    assert not marker.exists(), "the pickle was executed"
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    for needle in needles:
        assert needle in r.stderr, (needle, r.stderr[-3000:])


def tree_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_imagefolder(tmp_path_factory.mktemp("sec-data") / "eurosat", per_class=8, size=32)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "patch.png"
    Image.fromarray(class_patch(1, np.random.default_rng(0), 32)).save(path)
    return path


@pytest.fixture(scope="module")
def safe_folder(tmp_path_factory) -> Path:
    """A minimal model folder (timm config.json + model.safetensors) of an untrained test_resnet."""
    import timm

    from landcover.core.labels import EUROSAT_CLASSES
    from landcover.models.factory import create_model

    folder = tmp_path_factory.mktemp("safe-model")
    model = create_model("test_resnet", num_classes=10, image_size=32, label_names=EUROSAT_CLASSES)
    timm.models.save_for_hf(model, folder, model_config={"label_names": list(EUROSAT_CLASSES)},
                            safe_serialization=True)
    return folder


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "PWNED"


@pytest.fixture(params=["pytorch_model.bin", "model.pth"])
def pickle_folder(request, safe_folder, marker, tmp_path) -> Path:
    """A model folder whose only weights are a malicious pickle."""
    folder = tmp_path / "pickled-model"
    folder.mkdir()
    shutil.copy(safe_folder / "config.json", folder / "config.json")
    write_malicious_pickle(folder / request.param, marker)
    return folder


def test_crafted_pickle_really_runs_code_when_loaded_unsafely(tmp_path, marker):
    """Control: the payload works, so a missing marker below means 'not loaded', not 'harmless file'."""
    path = write_malicious_pickle(tmp_path / "x.bin", marker)
    torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"


# ---------------------------------------------------------------- pickles are refused


def test_predictor_refuses_pickle_only_folder(pickle_folder, marker):
    from landcover.models.hub import UnsafeWeightsError
    from landcover.inference.predictor import Predictor

    with pytest.raises(UnsafeWeightsError, match="only pickled weights .*refused.*model.safetensors"):
        Predictor.load(str(pickle_folder))
    assert not marker.exists()


def test_safetensors_win_over_a_pickle_next_to_them(safe_folder, marker, tmp_path):
    from landcover.inference.predictor import Predictor

    folder = tmp_path / "both"
    shutil.copytree(safe_folder, folder)
    write_malicious_pickle(folder / "pytorch_model.bin", marker)
    predictor = Predictor.load(str(folder))
    assert len(predictor.labels) == 10
    assert not marker.exists()


def test_cli_predict_refuses_pickle(pickle_folder, marker, image):
    r = run(["-m", "landcover", "predict", str(image), "--model", str(pickle_folder)])
    assert_refused(r, marker, f"error: {pickle_folder} has only pickled weights", "model.safetensors")


def test_cli_evaluate_refuses_pickle(pickle_folder, marker, data):
    r = run(["-m", "landcover", "evaluate", "--model", str(pickle_folder), "--data", str(data)])
    assert_refused(r, marker, f"error: {pickle_folder} has only pickled weights")


def test_hub_model_with_only_a_pickle_is_refused(safe_folder, marker, image, tmp_path):
    """A Hub repo (served from a pre-filled HF cache, offline) that only has ``pytorch_model.bin``."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--evil-org--pickled-model"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    shutil.copy(safe_folder / "config.json", snapshot / "config.json")
    write_malicious_pickle(snapshot / "pytorch_model.bin", marker)
    r = run(["-m", "landcover", "predict", str(image), "--model", "evil-org/pickled-model"],
            HF_HUB_CACHE=str(tmp_path / "hub"))
    assert_refused(r, marker, "has only pickled weights ['pytorch_model.bin']")


def test_hub_downloads_and_uploads_never_include_pickles():
    """Pull and push filter repo files the way huggingface_hub does, with the same patterns."""
    from huggingface_hub.utils import filter_repo_objects

    from landcover.models.hub import MODEL_FILES, PICKLE_SUFFIXES, PUSH_IGNORE

    unsafe = [f"pytorch_model{s}" for s in PICKLE_SUFFIXES] + ["checkpoints/epoch_0001/optimizer.bin",
                                                                "checkpoints/epoch_0001/model.safetensors",
                                                                "examples/x.pth", "examples/y.pkl"]
    wanted = ["config.json", "model.safetensors", "README.md", "examples/Forest.png"]
    kept = list(filter_repo_objects(unsafe + wanted, allow_patterns=MODEL_FILES, ignore_patterns=PUSH_IGNORE))
    assert kept == wanted


def test_init_checkpoint_pickle_is_not_executed(data, marker, tmp_path):
    evil = write_malicious_pickle(tmp_path / "backbone.pth", marker)
    r = run(["train.py", "--dataset", str(data), "--model", "test_resnet", "--no-pretrained", "--image-size", "32",
             "--epochs", "1", "--batch-size", "4", "--init-checkpoint", str(evil), "--output-dir",
             str(tmp_path / "out")])
    assert_refused(r, marker, f"--init-checkpoint {evil} was refused", "Unsupported global", "safetensors")


def test_no_trust_remote_code_anywhere():
    sources = [*(ROOT / "landcover").rglob("*.py"), *ROOT.glob("*.py"), *(ROOT / "bench").rglob("*.py")]
    assert len(sources) > 10
    offenders = [str(p.relative_to(ROOT)) for p in sources if "trust_remote_code" in p.read_text()]
    assert not offenders


# ---------------------------------------------------------------- failed pushes and the token


@pytest.fixture(scope="module")
def pushed_run(data, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """``train.py --push-to-hub`` with a fake token, against an unreachable endpoint."""
    out = tmp_path_factory.mktemp("pushed") / "model"
    r = run(["train.py", "--dataset", str(data), "--model", "test_resnet", "--no-pretrained", "--image-size", "32",
             "--epochs", "1", "--batch-size", "4", "--output-dir", str(out), "--push-to-hub", REPO],
            HF_TOKEN=FAKE_TOKEN, HF_HUB_OFFLINE="0", HF_ENDPOINT=UNREACHABLE)
    return out, r


def test_train_push_without_network_keeps_model_and_prints_retry(pushed_run):
    from landcover.models.hub import retry_command
    from landcover.inference.predictor import Predictor

    out, r = pushed_run
    assert r.returncode == 3, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert f"model folder: {out}" in r.stdout
    assert f"Push of {out} to {REPO} failed" in r.stderr and "The local folder is unchanged" in r.stderr
    assert f"Retry with: {retry_command(out, REPO)}" in r.stderr
    for name in ("config.json", "model.safetensors", "metrics.json", "splits.json", "train_config.json",
                 "README.md", "confusion_matrix.png", "training_curves.png"):
        assert (out / name).is_file(), name
    assert len(Predictor.load(str(out)).predict([Image.new("RGB", (32, 32))])[0]) == 10


def test_token_is_never_printed_logged_or_written(pushed_run):
    out, r = pushed_run
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "optimizer.bin" for p in files)  # checkpoints are searched too
    needle = FAKE_TOKEN.encode()
    assert FAKE_TOKEN not in r.stdout and FAKE_TOKEN not in r.stderr
    leaked = [str(p) for p in files if needle in p.read_bytes()]
    assert not leaked


@pytest.fixture
def model_copy(safe_folder, tmp_path) -> Path:
    """A model folder to push (weights, config, card, metrics, an example)."""
    folder = tmp_path / "model"
    shutil.copytree(safe_folder, folder)
    (folder / "README.md").write_text("# tiny\n")
    (folder / "metrics.json").write_text('{"test": {"accuracy": 0.1}}\n')
    (folder / "examples").mkdir()
    Image.new("RGB", (32, 32)).save(folder / "examples" / "Forest.png")
    return folder


def test_push_offline_leaves_folder_intact(model_copy):
    from landcover.models.hub import retry_command

    before = tree_digest(model_copy)
    r = run(["-m", "landcover", "push", str(model_copy), REPO, "--private"], HF_HUB_OFFLINE="1")
    assert r.returncode == 3, r.stderr[-3000:]
    assert "OfflineModeIsEnabled" in r.stderr and "Traceback" not in r.stderr
    assert f"Retry with: {retry_command(model_copy, REPO, private=True)}" in r.stderr
    assert tree_digest(model_copy) == before


class _RejectingHub(http.server.BaseHTTPRequestHandler):
    """A loopback stand-in for the Hub that answers every request like a bad token does (401)."""

    seen_auth: list[str] = []

    def _reject(self):
        type(self).seen_auth.append(self.headers.get("authorization", ""))
        body = json.dumps({"error": "Invalid credentials in Authorization header"}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Error-Message", "Invalid credentials in Authorization header")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_HEAD = _reject

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def rejecting_hub():
    _RejectingHub.seen_auth = []
    with running_server(_RejectingHub) as server:
        yield base_url(server)


def test_push_with_bad_token_leaves_folder_intact_and_hides_token(model_copy, rejecting_hub):
    from landcover.models.hub import retry_command

    before = tree_digest(model_copy)
    r = run(["-m", "landcover", "push", str(model_copy), REPO, "--revision", "v1"], HF_TOKEN=FAKE_TOKEN,
            HF_HUB_OFFLINE="0", HF_ENDPOINT=rejecting_hub)
    assert f"Bearer {FAKE_TOKEN}" in _RejectingHub.seen_auth  # the token was really sent
    assert r.returncode == 3, r.stderr[-3000:]
    assert "401" in r.stderr and "Traceback" not in r.stderr
    assert f"Retry with: {retry_command(model_copy, REPO, revision='v1')}" in r.stderr
    assert FAKE_TOKEN not in r.stdout + r.stderr
    assert tree_digest(model_copy) == before


def test_checkpoints_hold_no_custom_pickles(pushed_run):
    """accelerate reloads registered custom objects (``custom_checkpoint_N.pkl``) with ``weights_only=False``; the
    run registers none (the learning rate follows from the step in trainer_state.json), so a tampered pickle has
    nothing to be loaded as."""
    out, _ = pushed_run
    checkpoints = sorted((out / "checkpoints").glob("epoch_*"))
    assert checkpoints and (checkpoints[-1] / "trainer_state.json").is_file()
    assert not [p.name for c in checkpoints for p in c.glob("custom_checkpoint_*")]
