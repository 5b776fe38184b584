"""The web app: a Gradio 6 UI plus the REST contract of the Flask app it replaces, on one FastAPI server.

* ``build_demo(predictor)`` -> ``gr.Blocks``: tabs *Classify* (upload -> top-k label; Gradio API endpoint
  ``/predict``), *Batch* (several files -> table + CSV) and *Model* (architecture, dataset, test accuracy,
  model card), then the scene tabs of :mod:`landcover.ui_scene` when that module is present.
* ``build_app(predictor, demo)`` -> ``FastAPI``: ``POST /classify`` (multipart field ``file``),
  ``GET /health`` and ``GET /`` as health JSON for API clients (browsers asking for HTML get the UI),
  with Gradio mounted at ``/``. ``ssr_mode=False`` keeps every route on this server: with SSR (the default
  on Spaces) a Node front server would answer and hide the custom routes.

Uploads are opened with :func:`landcover.imageio.open_upload` (decompression bombs refused before
decoding); files stay in Gradio's temp dir (cleaned by ``delete_cache``) or in memory for ``/classify``;
the uploaded file name is never used as a path.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from starlette.requests import Request  # module level: FastAPI resolves the route's string annotation here

from .imageio import MAX_PIXELS, MAX_UPLOAD_BYTES, SAFE_FORMATS, UploadError, limit_pil_pixels, open_upload
from .labels import GROUND_SAMPLING_M, PATCH_SIZE_PX

if TYPE_CHECKING:
    import gradio as gr
    from fastapi import FastAPI

    from .predict import Predictor

logger = logging.getLogger(__name__)

# CPU inference: one forward pass at a time already uses every core (Predictor holds a lock), so two
# concurrent jobs are enough to overlap one upload's decoding with the other's forward pass; more would
# only queue on the lock while holding memory.
CONCURRENCY = 2
QUEUE_MAX = 64  # waiting Gradio jobs beyond this are refused ("queue full") instead of piling up
TOP_K = 5
MAX_BATCH_FILES = 64
EXAMPLE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp"}
_MULTIPART_SLACK = 64 * 1024  # boundary and part headers on top of the file itself


# ---------------------------------------------------------------- shared helpers


def classify_image(predictor: "Predictor", source: Any, top_k: Optional[int] = None,
                   max_pixels: int = MAX_PIXELS) -> dict[str, float]:
    """Probabilities (highest first) for one untrusted upload (bytes or a server-side temp path).

    Raises:
        UploadError: the upload is not a usable image (see :func:`open_upload`).
    """
    image = open_upload(source, max_pixels=max_pixels)
    return predictor.predict([image], top_k=top_k)[0]


def find_examples(predictor: "Predictor", examples_dir: Optional[str | Path] = None,
                  limit: int = 20) -> tuple[list[Path], str]:
    """Example images and where they came from, in order: model folder ``examples/``, ``examples_dir``.

    ``examples_dir`` may be a EuroSAT-style folder (``<Class>/<files>``: the first image of each class
    folder is used) or a flat folder of images.
    """
    folder = Path(predictor.loaded.folder) / "examples"
    found = _images_in(folder)
    if found:
        return found[:limit], f"the model folder ({folder.name}/)"
    if examples_dir:
        root = Path(examples_dir).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"--examples {root} is not a folder; expected a folder of images or of "
                                    f"class folders (EuroSAT layout).")
        per_class = [imgs[0] for sub in sorted(p for p in root.iterdir() if p.is_dir())
                     if (imgs := _images_in(sub))]
        found = per_class or _images_in(root)
        if found:
            return found[:limit], f"{root}"
    return [], ""


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXAMPLE_SUFFIXES)


def model_markdown(predictor: "Predictor") -> str:
    """The *Model* panel: architecture, dataset, test accuracy, link to the model card."""
    from .hub import hub_url

    info = predictor.info
    acc = info.get("test_accuracy")
    acc_text = f"**{acc:.4f}** on {info.get('test_images')} held-out images" if acc is not None else "not recorded"
    url = hub_url(info.get("source"))
    card = (f"[{url}]({url})" if url else
            f"`README.md` in the model folder `{info.get('folder')}` (shown below)")
    rows = [("Model", f"`{info.get('source')}`"), ("Architecture", f"`{info.get('architecture')}`"),
            ("Dataset", f"`{info.get('dataset')}`"), ("Test accuracy", acc_text),
            ("Input", f"{info.get('input_size')} x {info.get('input_size')} px RGB"),
            ("Classes", ", ".join(info.get("labels") or [])), ("Model card", card)]
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _model_card_body(predictor: "Predictor") -> str:
    card = Path(predictor.loaded.folder) / "README.md"
    if not card.is_file():
        return "No model card in the model folder."
    text = card.read_text(encoding="utf-8")
    if text.startswith("---"):  # drop the YAML front matter: it is metadata for the Hub
        end = text.find("\n---", 3)
        text = text[end + 4:] if end != -1 else text
    # Relative image links of the card cannot resolve inside the app.
    return "\n".join(line for line in text.splitlines() if not line.startswith("!["))


def health(predictor: "Predictor") -> dict:
    """``GET /`` and ``GET /health``: what is served and that it is up."""
    info = predictor.info
    return {"status": "ok", "model": info.get("source"), "architecture": info.get("architecture"),
            "labels": list(predictor.labels), "input_size": predictor.input_size,
            "test_accuracy": info.get("test_accuracy")}


# ---------------------------------------------------------------- Gradio UI


def _upload_path(payload: Any) -> Optional[str]:
    """The server-side temp path of a Gradio file payload (``preprocess=False`` hands us the raw dict)."""
    if payload is None:
        return None
    if isinstance(payload, dict):
        return payload.get("path")
    return str(payload)


def _gradio_classify(predictor: "Predictor", max_pixels: int) -> Callable:
    import gradio as gr

    def predict(image: Any) -> Optional[dict[str, float]]:
        """Classify one EuroSAT-like RGB patch; returns the top classes and their probabilities."""
        path = _upload_path(image)
        if path is None:
            return None  # the image was cleared
        try:
            return classify_image(predictor, path, top_k=TOP_K, max_pixels=max_pixels)
        except UploadError as err:
            raise gr.Error(str(err), print_exception=False) from None

    return predict


def _gradio_batch(predictor: "Predictor", max_pixels: int, csv_dir: Path) -> Callable:
    import gradio as gr

    def batch(files: Optional[list[Any]]) -> tuple[list[list[Any]], Optional[str]]:
        """Classify several images; bad files get an error row instead of failing the whole batch."""
        paths = [p for p in (_upload_path(f) for f in files or []) if p]
        if not paths:
            raise gr.Error("Upload one or more images first.", print_exception=False)
        if len(paths) > MAX_BATCH_FILES:
            raise gr.Error(f"{len(paths)} files: at most {MAX_BATCH_FILES} per batch.", print_exception=False)
        rows = []
        for path in paths:
            name = Path(path).name  # display only: Gradio's temp copy keeps the uploaded base name
            try:
                probs = classify_image(predictor, path, top_k=3, max_pixels=max_pixels)
            except UploadError as err:
                rows.append([name, "error", None, str(err)])
                continue
            (label, conf), *rest = probs.items()
            rows.append([name, label, round(conf, 4), ", ".join(f"{k} {v:.3f}" for k, v in rest)])
        return rows, _write_csv(rows, csv_dir)

    return batch


def _write_csv(rows: list[list[Any]], folder: Path) -> str:
    cutoff = time.time() - 3600  # keep an hour of downloads, like Gradio's own cache
    for old in folder.glob("batch-*.csv"):
        if old.stat().st_mtime < cutoff:
            old.unlink(missing_ok=True)
    path = folder / f"batch-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label", "confidence", "runners_up"])
        writer.writerows(rows)
    return str(path)


def _classify_tab(predictor: "Predictor", examples_dir, max_pixels: int) -> None:
    import gradio as gr

    from .imageio import open_upload as _open

    size = predictor.input_size
    gr.Markdown(
        f"The model expects **~{PATCH_SIZE_PX}x{PATCH_SIZE_PX} px patches of Sentinel-2 RGB at "
        f"{GROUND_SAMPLING_M:.0f} m/px** (EuroSAT, {PATCH_SIZE_PX * GROUND_SAMPLING_M:.0f} m across). Other "
        f"sizes are resized to {size}x{size} px, so a large photo is squeezed into one patch: crop it to one "
        f"land-cover type first. PNG, JPEG, TIFF, GIF, WebP and BMP up to {MAX_UPLOAD_BYTES // 2**20} MiB.")
    with gr.Row():
        with gr.Column():
            # format="png": examples and pasted images are stored losslessly (the default is WebP).
            image = gr.Image(type="filepath", format="png", label="Patch", sources=["upload", "clipboard"],
                             height=320, elem_id="patch-input")
            run = gr.Button("Classify", variant="primary", elem_id="classify-button")
        label = gr.Label(num_top_classes=TOP_K, label="Land cover", elem_id="label-output")
    gr.on([image.change, run.click], _gradio_classify(predictor, max_pixels), inputs=image, outputs=label,
          api_name="predict", preprocess=False, concurrency_id="inference")
    examples, origin = find_examples(predictor, examples_dir)
    decoded = []
    for path in examples:
        try:  # passed decoded, so files outside the working/temp dir (e.g. the HF cache) work too
            decoded.append((_open(path), path.stem))
        except UploadError as err:
            logger.warning("Skipping example %s: %s", path, err)
    if decoded:
        gr.Examples([[im] for im, _ in decoded], inputs=image, example_labels=[name for _, name in decoded],
                    label=f"Examples from {origin}")
    else:
        gr.Markdown("*No example patches are available: this model folder has no `examples/`, and no "
                    "`--examples DIR` was given.*")


def _batch_tab(predictor: "Predictor", max_pixels: int, csv_dir: Path) -> None:
    import gradio as gr

    gr.Markdown(f"Classify up to {MAX_BATCH_FILES} images at once; download the table as CSV.")
    files = gr.File(file_count="multiple", file_types=["image"], label="Images", elem_id="batch-input")
    run = gr.Button("Classify all", variant="primary")
    table = gr.Dataframe(headers=["file", "label", "confidence", "runners_up"], type="array",
                         label="Results", interactive=False)
    download = gr.File(label="CSV", interactive=False)
    run.click(_gradio_batch(predictor, max_pixels, csv_dir), inputs=files, outputs=[table, download],
              api_name="predict_batch", preprocess=False, concurrency_id="inference")


def build_demo(predictor: "Predictor", examples_dir: Optional[str | Path] = None, *,
               max_pixels: int = MAX_PIXELS, concurrency: int = CONCURRENCY) -> "gr.Blocks":
    """The Gradio UI around a loaded predictor.

    Args:
        predictor: a :class:`landcover.predict.Predictor`.
        examples_dir: fallback examples when the model folder has none (EuroSAT layout or flat folder).
        max_pixels: uploads with more pixels are refused before decoding.
        concurrency: inference jobs run at once (queue ``default_concurrency_limit``).

    Returns:
        The ``gr.Blocks``; serve it with :func:`build_app` (REST routes) or ``demo.launch()`` (UI only).
    """
    import gradio as gr

    limit_pil_pixels(max_pixels)  # also guards Gradio's own PIL opens (previews, examples)
    csv_dir = Path(tempfile.mkdtemp(prefix="landcover-batch-"))
    with gr.Blocks(title="EuroSAT land-cover classifier", delete_cache=(1800, 3600)) as demo:
        gr.Markdown("# EuroSAT land-cover classifier\nSentinel-2 RGB patch -> one of ten land-cover classes.")
        with gr.Tab("Classify"):
            _classify_tab(predictor, examples_dir, max_pixels)
        with gr.Tab("Batch"):
            _batch_tab(predictor, max_pixels, csv_dir)
        with gr.Tab("Model"):
            gr.Markdown(model_markdown(predictor), elem_id="model-panel")
            with gr.Accordion("Model card", open=False):
                gr.Markdown(_model_card_body(predictor))
        # The scene-map tabs live in their own module (developed separately); import errors inside it
        # must surface, so only its absence is tolerated.
        if importlib.util.find_spec(f"{__package__}.ui_scene") is not None:
            from .ui_scene import add_scene_tabs
            add_scene_tabs(predictor)
    demo.queue(default_concurrency_limit=concurrency, max_size=QUEUE_MAX)
    return demo


# ---------------------------------------------------------------- FastAPI app with the REST contract


def _error(status: int, message: str):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


class _HealthAtRoot:
    """ASGI wrapper: ``GET /`` from an API client (no ``text/html`` in Accept) gets the health JSON,
    a browser gets the Gradio page mounted at ``/``."""

    def __init__(self, app, payload: Callable[[], dict]):
        self.app, self.payload = app, payload

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/" and scope["method"] in ("GET", "HEAD"):
            accept = dict(scope.get("headers") or []).get(b"accept", b"").decode("latin-1")
            if "text/html" not in accept:
                from fastapi.responses import JSONResponse
                await JSONResponse(self.payload())(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _read_capped(request, limit: int) -> Optional[bytes]:
    """The request body, or ``None`` as soon as it exceeds ``limit`` bytes (nothing more is read)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _classify_route(predictor: "Predictor", max_file_size: int, max_pixels: int, concurrency: int):
    import anyio
    from starlette.datastructures import UploadFile
    from starlette.responses import JSONResponse

    limiter = anyio.CapacityLimiter(concurrency)
    waiting = {"n": 0}
    lock = threading.Lock()

    async def classify(request: Request):
        """``POST /classify`` with multipart field ``file`` -> ``{"Type", "label", "confidence", "probabilities"}``."""
        start = time.perf_counter()
        too_big = (f"Upload over the {max_file_size // 2**20} MiB limit; send a smaller image "
                   f"(the model only needs ~64x64 px).")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_file_size + _MULTIPART_SLACK:
            return _error(413, too_big)
        body = await _read_capped(request, max_file_size + _MULTIPART_SLACK)
        if body is None:
            return _error(413, too_big)

        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
        except Exception as err:  # malformed multipart, wrong content type details
            return _error(400, f"Could not parse the form ({err}); expected multipart/form-data with a "
                               f"'file' field, e.g. curl -F file=@patch.jpg URL/classify.")
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            return _error(400, "Missing multipart field 'file'; expected e.g. curl -F file=@patch.jpg URL/classify.")
        data = await upload.read()
        await form.close()
        with lock:
            if waiting["n"] >= QUEUE_MAX:
                return _error(503, "Server busy: too many requests waiting; retry shortly.")
            waiting["n"] += 1
        try:
            probs = await anyio.to_thread.run_sync(
                lambda: classify_image(predictor, data, max_pixels=max_pixels), limiter=limiter)
        except UploadError as err:
            return _error(err.status, str(err))
        except Exception as err:  # keep serving; never leak a traceback to the client
            logger.exception("classify failed")
            return _error(500, f"Internal error while classifying ({type(err).__name__}).")
        finally:
            with lock:
                waiting["n"] -= 1
        label, confidence = next(iter(probs.items()))
        # Server-Timing: time spent in this handler (read, decode, inference), for latency benchmarks.
        return JSONResponse({"Type": label, "label": label, "confidence": confidence, "probabilities": probs},
                            headers={"Server-Timing": f"classify;dur={(time.perf_counter() - start) * 1e3:.2f}"})

    return classify


def build_app(predictor: "Predictor", demo: Optional["gr.Blocks"] = None, *,
              examples_dir: Optional[str | Path] = None, max_file_size: int = MAX_UPLOAD_BYTES,
              max_pixels: int = MAX_PIXELS, concurrency: int = CONCURRENCY):
    """One ASGI app: the REST routes plus the Gradio UI mounted at ``/``.

    Args:
        predictor: the loaded model.
        demo: a ``gr.Blocks`` from :func:`build_demo` (built here when ``None``).
        examples_dir: passed to :func:`build_demo` when it builds the demo.
        max_file_size: upload limit in bytes, for Gradio uploads and ``POST /classify`` (413 above it).
        max_pixels: decompression-bomb limit (width x height).
        concurrency: inference jobs at once, for Gradio's queue and for ``/classify`` separately.

    Returns:
        An ASGI application (serve it with uvicorn, see :func:`serve`); ``.state.demo`` is the Blocks.
    """
    import gradio as gr
    from fastapi import FastAPI

    demo = demo or build_demo(predictor, examples_dir, max_pixels=max_pixels, concurrency=concurrency)
    api = FastAPI(title="EuroSAT land-cover classifier", docs_url="/api/docs", redoc_url=None,
                  openapi_url="/api/openapi.json")
    api.post("/classify", summary="Classify one image (multipart field 'file')")(
        _classify_route(predictor, max_file_size, max_pixels, concurrency))
    api.get("/health", summary="Health and model info")(lambda: health(predictor))
    api = gr.mount_gradio_app(api, demo, path="/", max_file_size=max_file_size, ssr_mode=False,
                              footer_links=["api", "gradio"], show_error=True)
    api.state.demo = demo
    app = _HealthAtRoot(api, lambda: health(predictor))
    app.state = api.state  # type: ignore[attr-defined]
    return app


def serve(app, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Run the app with uvicorn (blocking)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)


__all__ = ["build_demo", "build_app", "serve", "classify_image", "find_examples", "health", "SAFE_FORMATS"]
