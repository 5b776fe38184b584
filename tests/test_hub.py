"""Hub push (only the HfApi network methods are intercepted) and pull from a real offline HF cache."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAKE_TOKEN = "hf_FakeTokenForTests0123456789abcdef"


def _tree_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path) -> Path:
    """The tiny model folder (with its checkpoints/) plus files that must never be uploaded."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "pytorch_model.bin").write_bytes(b"pickle that must stay local")
    (folder / "train.log").write_text("log\n")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "x.json").write_text("{}")
    (folder / "checkpoints" / "epoch_0099.tmp").mkdir(parents=True)
    (folder / "checkpoints" / "epoch_0099.tmp" / "model.safetensors").write_bytes(b"partial")
    return folder


class _Recorder:
    """Stands in for the Hub: records what each HfApi network method would have sent."""

    def __init__(self, fail: Exception | None = None):
        self.calls: list[tuple[str, dict]] = []
        self.fail = fail

    def install(self, monkeypatch):
        from huggingface_hub import HfApi

        def make(name):
            def method(api, *args, **kwargs):
                self.calls.append((name, {"args": args, **kwargs, "token": api.token}))
                if name == "upload_folder":
                    if self.fail:
                        raise self.fail
                    return "https://huggingface.co/org/model/commit/0123abc"
                return None
            return method

        for name in ("create_repo", "create_branch", "upload_folder", "create_commit", "preupload_lfs_files"):
            monkeypatch.setattr(HfApi, name, make(name))

    def uploaded_files(self) -> list[str]:
        """Apply upload_folder's own filtering (allow, ignore and its defaults) to the folder it was given."""
        from huggingface_hub.hf_api import DEFAULT_IGNORE_PATTERNS
        from huggingface_hub.utils import filter_repo_objects

        (kwargs,) = [kw for name, kw in self.calls if name == "upload_folder"]
        folder = Path(kwargs["folder_path"])
        files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        ignore = list(kwargs.get("ignore_patterns") or []) + DEFAULT_IGNORE_PATTERNS
        return sorted(filter_repo_objects(files, allow_patterns=kwargs.get("allow_patterns"),
                                          ignore_patterns=ignore))


def test_push_uploads_exactly_the_model_files(model_copy, monkeypatch):
    from landcover.models.hub import push_folder

    before = _tree_digest(model_copy)
    recorder = _Recorder()
    recorder.install(monkeypatch)
    url = push_folder(model_copy, "org/eurosat-tiny", private=True, revision="v1", token=FAKE_TOKEN)
    assert url.endswith("/commit/0123abc")
    names = [name for name, _ in recorder.calls]
    assert names == ["create_repo", "create_branch", "upload_folder"]
    create_repo = recorder.calls[0][1]
    assert create_repo["private"] is True and create_repo["exist_ok"] is True
    upload = recorder.calls[2][1]
    assert upload["repo_id"] == "org/eurosat-tiny" and upload["revision"] == "v1"
    examples = sorted(f"examples/{p.name}" for p in (model_copy / "examples").iterdir())
    assert examples, "the tiny model folder should carry example patches"
    assert recorder.uploaded_files() == sorted(
        ["README.md", "config.json", "confusion_matrix.png", "metrics.json", "model.safetensors", "splits.json",
         "train_config.json", "training_curves.png", *examples])
    assert _tree_digest(model_copy) == before  # nothing local was touched


def test_pushed_model_card_parses_back_with_eval_result(model_copy):
    from huggingface_hub import ModelCard

    card = ModelCard.load(model_copy / "README.md")
    metrics = json.loads((model_copy / "metrics.json").read_text())
    data = card.data
    assert data.library_name == "timm" and data.license == "apache-2.0"
    (result,) = data.eval_results
    assert result.metric_type == "accuracy" and result.dataset_split == "test"
    assert result.metric_value == pytest.approx(metrics["test"]["accuracy"], abs=1e-6)
    model_index = data.to_dict()["model-index"]
    assert model_index[0]["results"][0]["metrics"][0]["value"] == pytest.approx(metrics["test"]["accuracy"],
                                                                               abs=1e-6)
    assert "confusion_matrix.png" in card.text and metrics["command"] in card.text


def test_failed_push_keeps_folder_gives_retry_command_and_hides_token(model_copy, monkeypatch):
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub.errors import HfHubHTTPError

    from landcover.models.hub import PushError, push_folder, retry_command

    before = _tree_digest(model_copy)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    response = httpx2.Response(403, request=httpx2.Request("POST", "https://huggingface.co/api/repos/create"))
    recorder = _Recorder(fail=HfHubHTTPError(f"403 Forbidden: token {FAKE_TOKEN} has no write access",
                                             response=response))
    recorder.install(monkeypatch)
    with pytest.raises(PushError) as info:
        push_folder(model_copy, "org/eurosat-tiny", revision="v1")
    message = str(info.value)
    assert retry_command(model_copy.resolve(), "org/eurosat-tiny", revision="v1") in message
    assert "python -m landcover push" in message and "403 Forbidden" in message
    assert FAKE_TOKEN not in message and "FakeToken" not in message
    assert _tree_digest(model_copy) == before


def test_push_cli_offline_exits_nonzero_with_retry_command(model_copy):
    """The real CLI in a subprocess; the Hub is unreachable (HF_HUB_OFFLINE=1), nothing is intercepted."""
    before = _tree_digest(model_copy)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_TOKEN": FAKE_TOKEN}
    r = subprocess.run([sys.executable, "-m", "landcover", "push", str(model_copy), "org/eurosat-tiny",
                        "--private"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 3, r.stderr
    from landcover.models.hub import retry_command
    assert retry_command(model_copy.resolve(), "org/eurosat-tiny", private=True) in r.stderr
    assert FAKE_TOKEN not in r.stdout + r.stderr
    assert _tree_digest(model_copy) == before


def _populate_cache(cache: Path, repo_id: str, folder: Path, commit: str, refs: dict[str, str]) -> Path:
    """A real HF cache entry: blobs named by sha256, snapshot files symlinked to them, refs/<branch>."""
    from landcover.models.hub import MODEL_FILES
    from huggingface_hub.utils import filter_repo_objects

    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    for rel in filter_repo_objects(files, allow_patterns=MODEL_FILES):
        data = (folder / rel).read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo_dir / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    for ref, sha in refs.items():
        (repo_dir / "refs" / ref).write_text(sha)
    return repo_dir / "snapshots" / commit


_PULL = """
import json, sys
from landcover.inference.predictor import Predictor
from landcover.models.hub import resolve_model_dir
out = {}
for ref in sys.argv[1:]:
    try:
        p = Predictor.load(ref)
        out[ref] = {"folder": str(p.loaded.folder), "labels": p.labels, "arch": p.info["architecture"]}
    except FileNotFoundError as err:
        out[ref] = {"error": str(err)}
print(json.dumps(out))
"""


def test_pull_from_offline_cache_by_hub_id_and_revision(tiny_model_dir, tmp_path):
    """``org/name[@revision]`` loads from a pre-populated cache with HF_HUB_OFFLINE=1 (fresh process, so
    huggingface_hub reads the cache location and offline flag at import)."""
    cache = tmp_path / "hf-cache"
    main_sha, v1_sha = "a" * 40, "b" * 40
    snap_main = _populate_cache(cache, "org/eurosat-tiny", tiny_model_dir, main_sha, {"main": main_sha})
    snap_v1 = _populate_cache(cache, "org/eurosat-tiny", tiny_model_dir, v1_sha, {"v1": v1_sha})
    assert not (snap_main / "checkpoints").exists()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")}
    refs = ["org/eurosat-tiny", "hf-hub:org/eurosat-tiny@v1", f"org/eurosat-tiny@{v1_sha}", "org/not-cached"]
    r = subprocess.run([sys.executable, "-c", _PULL, *refs], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["org/eurosat-tiny"]["folder"] == str(snap_main)
    assert out["org/eurosat-tiny"]["arch"] == "test_resnet"
    assert out["hf-hub:org/eurosat-tiny@v1"]["folder"] == str(snap_v1)
    assert out[f"org/eurosat-tiny@{v1_sha}"]["folder"] == str(snap_v1)
    labels = json.loads((tiny_model_dir / "config.json").read_text())["label_names"]
    assert out["org/eurosat-tiny"]["labels"] == labels
    assert "not in the local HF cache" in out["org/not-cached"]["error"]
