"""The app over real HTTP: REST ``/classify``, health JSON, the Gradio ``/predict`` API, ``app.py`` itself."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from app_server import running_app
from datagen import class_patch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def predictor(tiny_model_dir):
    from landcover.inference.predictor import Predictor
    return Predictor.load(str(tiny_model_dir))


@pytest.fixture(scope="module")
def app_url(predictor):
    from landcover.app.blocks import build_app
    with running_app(build_app(predictor)) as url:
        yield url


def _patch_png(tmp_path: Path, class_index: int, seed: int = 3) -> Path:
    path = tmp_path / f"patch-{class_index}-{seed}.png"
    Image.fromarray(class_patch(class_index, np.random.default_rng(seed))).save(path)
    return path


def test_health_json_at_root_for_api_clients_and_ui_for_browsers(app_url, predictor):
    for path in ("/", "/health"):
        r = httpx.get(app_url + path, headers={"Accept": "application/json"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "ok"
        assert body["labels"] == predictor.labels
        assert body["architecture"] == "test_resnet"
    page = httpx.get(app_url + "/", headers={"Accept": "text/html,application/xhtml+xml"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "gradio" in page.text.lower()


def test_an_idle_keep_alive_connection_outlives_the_client_pool_expiry(app_url):
    """A pooled connection idle for longer than uvicorn's default keep-alive (5 s, the same as httpx's pool
    expiry) is still open: the server never closes a connection a client may be reusing at that instant."""
    import http.client
    import time

    from landcover.app.blocks import KEEP_ALIVE_S

    assert KEEP_ALIVE_S > httpx.Limits().keepalive_expiry
    host, port = app_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", "/health", headers={"Accept": "application/json"})
    first = conn.getresponse()
    first.read()
    local = conn.sock.getsockname()
    time.sleep(6)  # the idle time under test (not synchronisation): one second past uvicorn's default
    conn.request("GET", "/health", headers={"Accept": "application/json"})  # RemoteDisconnected if closed
    second = conn.getresponse()
    assert (first.status, second.status) == (200, 200) and second.read()
    assert conn.sock.getsockname() == local  # the same TCP connection, not a reconnect
    conn.close()


def test_classify_rest_contract(app_url, predictor, tmp_path):
    path = _patch_png(tmp_path, 1)
    with path.open("rb") as f:
        r = httpx.post(app_url + "/classify", files={"file": ("patch.png", f, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"Type", "label", "confidence", "probabilities"}
    assert body["Type"] == body["label"] == max(body["probabilities"], key=body["probabilities"].get)
    assert sorted(body["probabilities"]) == sorted(predictor.labels)
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert body["confidence"] == pytest.approx(body["probabilities"][body["label"]])
    with Image.open(path) as im:
        local = predictor.predict([im.convert("RGB")])[0]
    for label, p in local.items():  # the server gives what the library gives
        assert body["probabilities"][label] == pytest.approx(p, abs=1e-5)


def test_classify_rejects_missing_field_and_non_multipart(app_url):
    r = httpx.post(app_url + "/classify", files={"image": ("a.png", b"x", "image/png")})
    assert r.status_code == 400 and "'file'" in r.json()["error"]
    r = httpx.post(app_url + "/classify", json={"file": "patch.jpg"})
    assert r.status_code == 400 and "error" in r.json()


def test_gradio_client_predict_matches_rest(app_url, predictor, tmp_path):
    from gradio_client import Client, handle_file

    from landcover.app.blocks import TOP_K

    path = _patch_png(tmp_path, 8)
    client = Client(app_url + "/", verbose=False, httpx_kwargs={"timeout": 300},
                    download_files=str(tmp_path / "dl"))
    assert "/predict" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    result = client.predict(handle_file(str(path)), api_name="/predict")
    confidences = {c["label"]: c["confidence"] for c in result["confidences"]}
    assert result["label"] in predictor.labels
    assert len(confidences) == TOP_K
    assert result["label"] == max(confidences, key=confidences.get)
    assert 0 < sum(confidences.values()) <= 1.0 + 1e-6
    with path.open("rb") as f:
        rest = httpx.post(app_url + "/classify", files={"file": ("p.png", f, "image/png")}).json()
    for label, p in confidences.items():
        assert rest["probabilities"][label] == pytest.approx(p, abs=1e-5)


def test_gradio_client_batch_table_and_csv(app_url, predictor, tmp_path):
    from gradio_client import Client, handle_file

    good = [_patch_png(tmp_path, c) for c in (0, 9)]
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    client = Client(app_url + "/", verbose=False, httpx_kwargs={"timeout": 300},
                    download_files=str(tmp_path / "dl"))
    table, csv_path = client.predict([handle_file(str(p)) for p in [*good, bad]], api_name="/predict_batch")
    rows = table["data"]
    assert [r[0] for r in rows] == [p.name for p in [*good, bad]]
    assert all(r[1] in predictor.labels and 0 < r[2] <= 1 for r in rows[:2])
    assert rows[2][1] == "error" and "not a readable image" in rows[2][3]
    with open(csv_path, newline="") as f:
        parsed = list(csv.reader(f))
    assert parsed[0] == ["file", "label", "confidence", "runners_up"]
    assert [r[1] for r in parsed[1:]] == [r[1] for r in rows]


def test_examples_order_model_folder_then_dir_then_none(predictor, tiny_model_dir, tmp_path):
    import shutil

    from landcover.inference.predictor import Predictor
    from landcover.app.blocks import build_demo, find_examples

    found, origin = find_examples(predictor, tmp_path)
    assert found and all(p.parent == Path(tiny_model_dir) / "examples" for p in found)
    assert "model folder" in origin
    # A copy of the model folder without examples/: falls back to --examples (EuroSAT layout, one per class).
    bare = tmp_path / "bare-model"
    shutil.copytree(tiny_model_dir, bare, ignore=shutil.ignore_patterns("examples", "checkpoints"))
    bare_predictor = Predictor.load(str(bare))
    eurosat = tmp_path / "eurosat"
    for c, name in enumerate(["Forest", "River"]):
        (eurosat / name).mkdir(parents=True)
        for i in (2, 1):
            Image.fromarray(class_patch(c, np.random.default_rng(i))).save(eurosat / name / f"{name}_{i}.jpg")
    found, origin = find_examples(bare_predictor, eurosat)
    assert [p.relative_to(eurosat).as_posix() for p in found] == ["Forest/Forest_1.jpg", "River/River_1.jpg"]
    assert find_examples(bare_predictor, None) == ([], "")
    config = build_demo(bare_predictor).get_config_file()
    texts = [c.get("props", {}).get("value") or "" for c in config["components"]]
    assert any("No example patches are available" in str(t) for t in texts)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        find_examples(bare_predictor, tmp_path / "missing")


def test_model_panel_shows_name_data_figures_and_no_server_paths(predictor, tiny_model_dir, eurosat_folder):
    import json

    from landcover.models.hub import hub_url
    from landcover.app.blocks import build_demo, model_markdown

    text = model_markdown(predictor)
    metrics = json.loads((Path(predictor.loaded.folder) / "metrics.json").read_text())
    assert "`test_resnet`" in text and f"{100 * metrics['test']['accuracy']:.2f} %" in text
    header = text.splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")] == ["Property", "Value"]  # no empty header row
    assert f"`{Path(tiny_model_dir).name}`" in text  # the folder's name, not where it lives on the server
    assert Path(metrics["dataset"]).name in text
    config = build_demo(predictor).get_config_file()
    shown = json.dumps([c.get("props", {}).get("value") for c in config["components"]
                        if c.get("type") in ("markdown", "html", "dataframe")])
    for private in {str(Path(tiny_model_dir)), str(Path(tiny_model_dir).parent), str(eurosat_folder)}:
        assert private not in shown, private
    labels = [c.get("props", {}).get("label") for c in config["components"] if c.get("type") == "image"]
    assert "Confusion matrix (test split)" in labels and "Training curves" in labels
    assert hub_url("org/name@v1") == "https://huggingface.co/org/name/tree/v1"
    assert hub_url(str(predictor.loaded.folder)) is None and hub_url(None) is None


def test_every_gradio_api_output_and_input_is_named(app_url):
    from gradio_client import Client

    api = Client(app_url + "/", verbose=False).view_api(print_info=False, return_format="dict")
    endpoints = api["named_endpoints"]
    assert {"/predict", "/predict_batch", "/map_scene", "/compare_scenes"} <= set(endpoints)
    for name, endpoint in endpoints.items():
        for item in endpoint["returns"] + endpoint["parameters"]:
            label = item.get("label") or ""
            assert label and not label.startswith("value_"), (name, item)


def test_openapi_shows_the_classify_request_body(app_url):
    schema = httpx.get(app_url + "/api/openapi.json").json()
    body = schema["paths"]["/classify"]["post"]["requestBody"]
    (media,) = body["content"]
    assert media == "multipart/form-data"
    ref = body["content"][media]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert schema["components"]["schemas"][ref]["required"] == ["file"]
    assert httpx.get(app_url + "/api/docs").status_code == 200


def test_raw_gradio_api_calls_keep_no_state_per_call(predictor, tmp_path):
    """Each raw ``/gradio_api/call`` is a new Gradio session; the app bounds the sessions it keeps."""
    import asyncio
    import sys

    from landcover.app.blocks import STATE_SESSIONS, build_app
    from landcover.app.gradio_compat import ANALYTICS_EVENTS, ANALYTICS_EVERY

    sys.path.insert(0, str(ROOT / "bench"))
    import load_app

    app = build_app(predictor)
    holder, queue = app.state.demo.state_holder, app.state.demo._queue
    images = load_app.make_images()
    calls = STATE_SESSIONS + 16
    summaries = []  # Gradio's monitoring summary: a pandas DataFrame of every kept event record, each time
    get_df = queue._get_df
    queue._get_df = lambda records: summaries.append(len(records)) or get_df(records)

    async def run(url):
        async with httpx.AsyncClient(timeout=120) as client:
            for i in range(calls):
                await load_app.call_gradio(client, url, images[i % len(images)], f"p-{i}.png")

    with running_app(app) as url:
        asyncio.run(run(url))
    assert calls > len(holder.session_data) and len(holder.session_data) <= STATE_SESSIONS
    # ... and builds the config copies of the call's input and output only (all 52: 9-12 ms of CPU in Gradio's own)
    assert {state.config_values.built() for state in holder.session_data.values()} == {2}
    # ... and recomputes the queue's analytics summary every ANALYTICS_EVERY events, not after each (Gradio's default)
    assert len(summaries) <= calls // ANALYTICS_EVERY and len(queue.event_analytics) <= ANALYTICS_EVENTS


def test_lazy_session_state_reads_like_gradios_own(predictor):
    """Once read, the deferred config copies equal Gradio's eager ones, before and after a component update."""
    import gradio as gr
    from gradio.state_holder import SessionState

    from landcover.app.blocks import build_demo
    from landcover.app.gradio_compat import _lean_state_holder_classes

    lazy_class, _ = _lean_state_holder_classes()
    demo = build_demo(predictor)
    eager, lazy = SessionState(demo), lazy_class(demo)
    assert set(vars(eager)) == set(vars(lazy))  # a Gradio upgrade that adds session state fails here
    assert lazy.config_values.built() == 0
    assert lazy.config_values == eager.config_values
    assert list(lazy.components) == list(eager.components) and len(list(lazy.components)) == len(demo.blocks)
    label_id = next(k for k, b in demo.blocks.items() if isinstance(b, gr.Label))
    eager, unread = SessionState(demo), lazy_class(demo)
    for state in (eager, unread):  # an update written before the first read is kept too
        state[label_id] = gr.Label(label="changed")
    assert unread.config_values == eager.config_values


def test_concurrent_rest_and_gradio_requests_share_one_batcher(predictor, tmp_path):
    """Mixed sizes merged into one batch give what the library gives image by image."""
    import threading

    from landcover.inference.batching import PatchClassifier

    classifier = PatchClassifier(predictor, max_batch=6)
    classifier.batcher.max_wait_s = 60.0  # the first leader waits until all six are queued: one batch
    paths = [_patch_png(tmp_path, c, seed=c) for c in range(4)]
    big = tmp_path / "big.png"
    Image.fromarray(class_patch(2, np.random.default_rng(9), size=96)).save(big)
    sources = [*paths, big, big.read_bytes()]
    results = [None] * len(sources)

    def one(i):
        results[i] = classifier.classify(sources[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(sources))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert classifier.batcher.requests == 6 and classifier.batcher.passes == 2  # one call per image size
    for source, got in zip([*paths, big, big], results):
        with Image.open(source) as im:
            expected = predictor.predict([im.convert("RGB")])[0]
        assert list(got) == list(expected)
        for label, p in expected.items():
            assert got[label] == pytest.approx(p, abs=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_app_py_serves_ui_and_rest(tiny_model_dir, tmp_path):
    """The real ``python app.py`` process, model given through ``LANDCOVER_MODEL``."""
    port = _free_port()
    env = {**os.environ, "LANDCOVER_MODEL": str(tiny_model_dir), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log = []
        for line in proc.stdout:  # blocks until uvicorn reports it is listening (or the process dies)
            log.append(line)
            if "Uvicorn running on" in line:
                break
        assert proc.poll() is None, "".join(log)
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/").json()["model"] == str(tiny_model_dir)
        path = _patch_png(tmp_path, 5)
        r = httpx.post(url + "/classify", files={"file": ("patch.png", path.read_bytes(), "image/png")})
        assert r.status_code == 200 and sum(r.json()["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_app_py_fails_clearly_without_a_model(tmp_path):
    env = {**os.environ, "LANDCOVER_MODEL": str(tmp_path / "no-such-model")}
    r = subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0
    assert "cannot load the model" in r.stderr and "no-such-model" in r.stderr


def test_readme_space_front_matter():
    import gradio
    from huggingface_hub import SpaceCard

    card = SpaceCard.load(ROOT / "README.md")
    data = card.data
    assert data.sdk == "gradio"
    assert data.sdk_version == gradio.__version__
    assert data.app_file == "app.py" and (ROOT / data.app_file).is_file()
    assert data.license and data.short_description and len(data.short_description) <= 60
    assert data.datasets
    # The Space serves the embedded model, which is on no Hub repo: naming one would mislead.
    assert not data.get("models")


def test_temp_file_sweep_survives_uploads_arriving_while_it_runs_and_keeps_examples(tmp_path, monkeypatch):
    """The sweep deletes old temp files, forgets missing ones and keeps example files; an upload arriving while it
    deletes (another thread adding to the set) does not stop it. The patch is needed while the pinned Gradio's own
    sweep, which iterates over the live set, still dies there: when an upgrade fixes that, this test says so and
    the patch can go."""
    import os
    from types import SimpleNamespace

    from gradio.route_utils import delete_files_created_by_app

    from landcover.app.gradio_compat import sweep_temp_files

    def make_blocks():
        files = [tmp_path / f"upload{i}.png" for i in range(4)]
        for f in files:
            f.write_bytes(b"x")
        example = tmp_path / "example.jpg"
        example.write_bytes(b"x")
        uploads = {str(f) for f in files[:3]}
        blocks = SimpleNamespace(blocks={1: SimpleNamespace(keep_in_cache={str(example)})},
                                 temp_file_sets=[uploads, {str(files[3]), str(example)}])
        return blocks, files, example, uploads

    real_remove, arrived = os.remove, []

    def remove_while_uploading(path):  # each deletion races with one new upload into the upload set
        real_remove(path)
        late = tmp_path / f"late{len(arrived)}.png"
        late.write_bytes(b"x")
        arrived.append(late)
        uploads.add(str(late))

    blocks, files, example, uploads = make_blocks()
    monkeypatch.setattr(os, "remove", remove_while_uploading)
    with pytest.raises(RuntimeError, match="changed size during iteration"):  # what stopped Gradio's sweep
        delete_files_created_by_app(blocks, age=None)

    blocks, files, example, uploads = make_blocks()
    arrived.clear()
    assert sweep_temp_files(blocks, age=3600) == 0  # nothing is old enough
    assert sweep_temp_files(blocks, age=-1) == 4  # no RuntimeError although 4 uploads arrived meanwhile
    assert not any(f.exists() for f in files) and example.exists()
    assert uploads == {str(f) for f in arrived} and all(f.exists() for f in arrived)  # left for the next sweep
    assert blocks.temp_file_sets[1] == {str(example)}


def test_gradio_patches_step_aside_on_another_gradio_release(predictor, monkeypatch, caplog):
    """On a Gradio release other than the pinned one, every patch warns and Gradio's own behaviour stays."""
    import gradio

    from landcover.app import gradio_compat
    from landcover.app.blocks import build_app, build_demo

    assert gradio.__version__ == gradio_compat.GRADIO_VERSION  # requirements.txt pins the release
    monkeypatch.setattr(gradio, "__version__", "6.99.0")
    with caplog.at_level("WARNING", logger="landcover.app.gradio_compat"):
        demo = build_demo(predictor)
        app = build_app(predictor, demo)
    assert demo._queue.ANALYTICS_MAX_EVENTS != gradio_compat.ANALYTICS_EVENTS  # Gradio's default
    assert demo.delete_cache is not None  # Gradio's own sweep
    lazy_class, _ = gradio_compat._lean_state_holder_classes()
    assert not isinstance(app.state.demo.state_holder["s"], lazy_class)
    assert sum("is not applied" in r.getMessage() for r in caplog.records) == 3
    with running_app(app) as url:  # and it serves
        assert httpx.get(url + "/health").status_code == 200
