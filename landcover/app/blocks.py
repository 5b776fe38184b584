"""The Gradio UI: tabs *Classify* (upload -> top-k label; Gradio API endpoint ``/predict``), *Batch*
(several files -> table + CSV), *Model* (what the model is, its data and figures) and the scene tabs of
:mod:`landcover.app.scene_tabs`; :func:`build_app` serves it with the REST routes of :mod:`landcover.app.rest`.

Serving settings, each stated once here (measured in ``docs/reliability.md``):

* Single-patch requests, from the Gradio API and from ``POST /classify``, go through one
  :class:`landcover.inference.batching.PatchClassifier`: concurrent requests are merged into one forward pass.
  ``/predict`` runs under its own concurrency id (:data:`PATCH_ID`) with :data:`MAX_BATCH` jobs at once, so
  that many requests can be waiting in the batcher together.
* Everything else that runs the model for long (the Batch tab, the scene tabs) shares :data:`INFERENCE_ID`
  with :data:`HEAVY_CONCURRENCY` jobs at once: one forward pass already uses every core, and each such job
  holds a decoded scene in memory.
* Gradio keeps a ``SessionState`` (a copy of every component's config) per session, and every raw API call
  (``POST /gradio_api/call/predict`` without a session) is a new session; with Gradio's default capacity of
  10,000 sessions that was ~60 KB per request of memory growth. This app keeps no per-session state, so
  :data:`STATE_SESSIONS` bounds it.
* Everything that reaches into Gradio's internals (lazy session state, bounded queue analytics, the temp-file
  sweep, finding the mounted app) lives in :mod:`landcover.app.gradio_compat`, pinned to one Gradio release.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import re
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from landcover.app.gradio_compat import (UPLOAD_TTL_S, bound_queue_analytics,
                                         mounted_gradio_app, replace_temp_file_sweep, use_lazy_session_state)
from landcover.inference.batching import PatchClassifier
from landcover.readers.imageio import (IMAGE_SUFFIXES, MAX_PIXELS, MAX_UPLOAD_BYTES, UploadError, limit_pil_pixels,
                                       open_image_file)
from landcover.core.labels import GROUND_SAMPLING_M, PATCH_SIZE_PX

if TYPE_CHECKING:
    import gradio as gr

    from landcover.inference.predictor import Predictor

logger = logging.getLogger(__name__)

INFERENCE_ID = "inference"  # Gradio concurrency id of every long model job (Batch tab, scene tabs)
HEAVY_CONCURRENCY = 2  # long jobs at once: one pass uses every core; two overlap one's decoding with the other's pass
PATCH_ID = "patch"  # concurrency id of the single-patch /predict endpoint
MAX_BATCH = 32  # single-patch requests merged into one forward pass at most (= jobs at once on PATCH_ID)
QUEUE_MAX = 64  # waiting Gradio jobs beyond this are refused ("queue full"); /classify answers 503 likewise
STATE_SESSIONS = 64  # Gradio sessions whose (unused) state is kept; the default 10,000 grew without bound
TOP_K = 5
MAX_BATCH_FILES = 64


# ---------------------------------------------------------------- model facts


def find_examples(predictor: "Predictor", examples_dir: Optional[str | Path] = None,
                  limit: int = 20) -> tuple[list[Path], str]:
    """Example images and where they came from, in order: model folder ``examples/``, ``examples_dir``.

    ``examples_dir`` may be a EuroSAT-style folder (``<Class>/<files>``: the first image of each class
    folder is used) or a flat folder of images. The origin is a short description, never a server path.
    """
    found = _images_in(Path(predictor.loaded.folder) / "examples")
    if found:
        return found[:limit], "the model folder"
    if examples_dir:
        root = Path(examples_dir).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"--examples {root} is not a folder; expected a folder of images or of "
                                    f"class folders (EuroSAT layout).")
        per_class = [imgs[0] for sub in sorted(p for p in root.iterdir() if p.is_dir())
                     if (imgs := _images_in(sub))]
        found = per_class or _images_in(root)
        if found:
            return found[:limit], f"the folder {root.name}/"
    return [], ""


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _public_name(value: Optional[str]) -> Optional[str]:
    """A Hub id as is; a local path as its last component only (visitors never see server folders)."""
    from landcover.models.hub import is_hub_id

    if not value:
        return None
    text = str(value)
    if is_hub_id(text) and not Path(text).expanduser().exists() and not text.startswith((".", "/", "~")):
        return text
    return Path(text).name or None


def model_markdown(predictor: "Predictor") -> str:
    """The *Model* panel: model name or Hub id, architecture, data, test figures, inference settings."""
    from landcover.models.hub import hub_url

    info, metrics = predictor.info, predictor.loaded.metrics
    url = hub_url(info.get("source"))
    if url:
        model = f"[{info['source']}]({url})"
    elif info.get("source") in (None, "", "default"):
        model = "the embedded default model"
    else:
        model = f"`{_public_name(info.get('source'))}`"
    test = metrics.get("test") or {}
    rows = [("Model", model), ("Architecture", f"`{info.get('architecture')}`"),
            ("Training data", _public_name(info.get("dataset")) or "not recorded")]
    if metrics.get("split"):
        rows.append(("Split", str(metrics["split"])))
    if test.get("accuracy") is not None:
        rows.append(("Test accuracy", f"**{100 * test['accuracy']:.2f} %** on {test.get('n')} held-out images"
                     + (f" (macro F1 {test['macro_f1']:.4f})" if test.get("macro_f1") is not None else "")))
        single = (metrics.get("test_without_tta") or {}).get("accuracy")
        if single is not None:
            rows.append(("Without test-time augmentation", f"{100 * single:.2f} %"))
    else:
        rows.append(("Test accuracy", "not recorded"))
    rows += [("Input", f"{info.get('input_size')} x {info.get('input_size')} px RGB"),
             ("Test-time augmentation", f"`{info.get('test_time_augmentation')}`"
              if info.get("test_time_augmentation") else "none (one pass)"),
             ("Classes", ", ".join(info.get("labels") or []))]
    if url:
        rows.append(("Model card", f"[{url}]({url})"))
    return "| Property | Value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _model_card_body(predictor: "Predictor") -> str:
    card = Path(predictor.loaded.folder) / "README.md"
    if not card.is_file():
        return "No model card in the model folder."
    text = card.read_text(encoding="utf-8")
    if text.startswith("---"):  # drop the YAML front matter: it is metadata for the Hub
        end = text.find("\n---", 3)
        text = text[end + 4:] if end != -1 else text
    # Relative image links of the card cannot resolve inside the app (the figures are shown above it).
    text = "\n".join(line for line in text.splitlines() if not line.startswith("!["))
    # A card written locally may name folders of the training machine: show their last component only.
    return _LOCAL_PATH.sub(lambda m: f"`{Path(m.group(1)).name}`", text)


_LOCAL_PATH = re.compile(r"`((?:/|~/|\.\./|\./)[^`\s]*)`")


FIGURES = (("confusion_matrix.png", "Confusion matrix (test split)"), ("training_curves.png", "Training curves"))


# ---------------------------------------------------------------- Gradio event functions


def _upload_path(payload: Any) -> Optional[str]:
    """The server-side temp path of a Gradio file payload (``preprocess=False`` hands us the raw dict)."""
    if payload is None:
        return None
    if isinstance(payload, dict):
        return payload.get("path")
    return str(payload)


def _gradio_classify(classifier: PatchClassifier) -> Callable:
    import gradio as gr

    def predict(image: Any) -> Optional[dict[str, float]]:
        """Classify one EuroSAT-like RGB patch; returns the top classes and their probabilities."""
        path = _upload_path(image)
        if path is None:
            return None  # the image was cleared
        try:
            return classifier.classify(path, top_k=TOP_K)
        except UploadError as err:
            raise gr.Error(str(err), print_exception=False) from None

    return predict


def _gradio_batch(classifier: PatchClassifier, csv_dir: Path) -> Callable:
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
                probs = classifier.classify(path, top_k=3)
            except UploadError as err:
                rows.append([name, "error", None, str(err)])
                continue
            (label, conf), *rest = probs.items()
            rows.append([name, label, round(conf, 4), ", ".join(f"{k} {v:.3f}" for k, v in rest)])
        return rows, _write_csv(rows, csv_dir)

    return batch


def _write_csv(rows: list[list[Any]], folder: Path) -> str:
    cutoff = time.time() - UPLOAD_TTL_S  # downloads live as long as uploads
    for old in folder.glob("batch-*.csv"):
        if old.stat().st_mtime < cutoff:
            old.unlink(missing_ok=True)
    path = folder / f"batch-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label", "confidence", "runners_up"])
        writer.writerows(rows)
    return str(path)


# ---------------------------------------------------------------- tabs


def _classify_tab(predictor: "Predictor", classifier: PatchClassifier, examples_dir) -> None:
    import gradio as gr

    size = predictor.input_size
    gr.Markdown(
        f"The model expects **~{PATCH_SIZE_PX}x{PATCH_SIZE_PX} px patches of Sentinel-2 RGB at "
        f"{GROUND_SAMPLING_M:.0f} m/px** (EuroSAT, {PATCH_SIZE_PX * GROUND_SAMPLING_M:.0f} m across). Other "
        f"sizes are resized to {size}x{size} px, so a large photo is squeezed into one patch: crop it to one "
        f"land-cover type first. PNG, JPEG, TIFF (also 16-bit and Sentinel-2 GeoTIFF patches), GIF, WebP and "
        f"BMP up to {classifier.max_bytes // 2**20} MiB.")
    with gr.Row():
        with gr.Column():
            # format="png": examples and pasted images are stored losslessly (the default is WebP).
            image = gr.Image(type="filepath", format="png", label="Patch", sources=["upload", "clipboard"],
                             height=320, elem_id="patch-input")
            run = gr.Button("Classify", variant="primary", elem_id="classify-button")
        label = gr.Label(num_top_classes=TOP_K, label="Land cover", elem_id="label-output")
    # preprocess=False: the handler reads Gradio's temp file itself (no PIL round trip in Gradio).
    gr.on([image.change, run.click], _gradio_classify(classifier), inputs=image, outputs=label,
          api_name="predict", preprocess=False, concurrency_id=PATCH_ID, concurrency_limit=MAX_BATCH)
    examples, origin = find_examples(predictor, examples_dir)
    decoded = []
    for path in examples:
        try:  # passed decoded, so files outside the working/temp dir (e.g. the HF cache) work too
            decoded.append((open_image_file(path, max_pixels=classifier.max_pixels), path.stem))
        except UploadError as err:
            logger.warning("Skipping example %s: %s", path.name, err)
    if decoded:
        # Thumbnails with their class names (gr.Examples with labels shows text buttons only); a click puts the
        # patch in the input, which classifies it.
        gallery = gr.Gallery([(im, name) for im, name in decoded], label=f"Examples from {origin}: click one",
                             columns=min(len(decoded), 5), height="auto", allow_preview=False, object_fit="contain",
                             interactive=False, elem_id="examples")
        gallery.select(_example_picker([im for im, _ in decoded]), inputs=None, outputs=image,
                       api_visibility="private", queue=False)
    else:
        gr.Markdown("*No example patches are available: this model folder has no `examples/`, and no "
                    "`--examples DIR` was given.*")


def _example_picker(images: list) -> Callable:
    """The gallery's select handler: the example patch that was clicked."""
    import gradio as gr

    def pick(evt):
        return images[evt.index]

    pick.__annotations__ = {"evt": gr.SelectData}  # resolved here: Gradio injects the event by this annotation
    return pick


# Patches are 64 px: shown enlarged, pixels stay crisp squares instead of a blur (input and example thumbnails).
APP_CSS = """
#patch-input img, #examples img { image-rendering: pixelated; }
#patch-input img { width: 100%; height: 100%; object-fit: contain; }
"""


def _batch_tab(classifier: PatchClassifier, csv_dir: Path) -> None:
    import gradio as gr

    gr.Markdown(f"Classify up to {MAX_BATCH_FILES} images at once; download the table as CSV.")
    files = gr.File(file_count="multiple", file_types=["image"], label="Images", elem_id="batch-input")
    run = gr.Button("Classify all", variant="primary")
    table = gr.Dataframe(headers=["file", "label", "confidence", "runners_up"], type="array",
                         label="Results", interactive=False)
    download = gr.File(label="CSV", interactive=False)
    run.click(_gradio_batch(classifier, csv_dir), inputs=files, outputs=[table, download],
              api_name="predict_batch", preprocess=False, concurrency_id=INFERENCE_ID)


def _model_tab(predictor: "Predictor") -> None:
    import gradio as gr

    gr.Markdown(model_markdown(predictor), elem_id="model-panel")
    figures = [(Path(predictor.loaded.folder) / name, caption) for name, caption in FIGURES]
    figures = [(path, caption) for path, caption in figures if path.is_file()]
    if figures:
        with gr.Row():
            for path, caption in figures:  # decoded here: the model folder is not served as files
                gr.Image(open_image_file(path), label=caption, interactive=False,
                         format="png")
    with gr.Accordion("Model card", open=False):
        gr.Markdown(_model_card_body(predictor))


def build_demo(predictor: "Predictor", examples_dir: Optional[str | Path] = None, *,
               max_pixels: int = MAX_PIXELS, max_file_size: int = MAX_UPLOAD_BYTES,
               classifier: Optional[PatchClassifier] = None) -> "gr.Blocks":
    """The Gradio UI around a loaded predictor.

    Args:
        predictor: a :class:`landcover.inference.predictor.Predictor`.
        examples_dir: fallback examples when the model folder has none (EuroSAT layout or flat folder).
        max_pixels: uploads with more pixels are refused before decoding.
        max_file_size: uploads with more bytes are refused.
        classifier: the batcher shared with the REST routes (built here when ``None``).

    Returns:
        The ``gr.Blocks``; ``.patch_classifier`` is its batcher. Serve it with :func:`build_app`.
    """
    import gradio as gr

    from landcover.app.scene_tabs import add_scene_tabs

    limit_pil_pixels(max_pixels)  # also guards Gradio's own PIL opens (previews, examples)
    classifier = classifier or PatchClassifier(predictor, MAX_BATCH, max_pixels, max_file_size)
    csv_dir = Path(tempfile.mkdtemp(prefix="landcover-batch-"))
    with gr.Blocks(title="EuroSAT land-cover classifier", delete_cache=(60, UPLOAD_TTL_S)) as demo:
        gr.Markdown("# EuroSAT land-cover classifier\nSentinel-2 RGB patch -> one of ten land-cover classes.")
        with gr.Tab("Classify"):
            _classify_tab(predictor, classifier, examples_dir)
        with gr.Tab("Batch"):
            _batch_tab(classifier, csv_dir)
        with gr.Tab("Model"):
            _model_tab(predictor)
        add_scene_tabs(predictor, concurrency_id=INFERENCE_ID)
    demo.queue(default_concurrency_limit=HEAVY_CONCURRENCY, max_size=QUEUE_MAX)
    bound_queue_analytics(demo)
    demo.state_session_capacity = STATE_SESSIONS
    demo.patch_classifier = classifier
    return demo


def build_app(predictor: "Predictor", demo: Optional["gr.Blocks"] = None, *,
              examples_dir: Optional[str | Path] = None, max_file_size: int = MAX_UPLOAD_BYTES,
              max_pixels: int = MAX_PIXELS):
    """One ASGI app: the REST routes of :mod:`landcover.app.rest` plus the Gradio UI mounted at ``/``.

    ``ssr_mode=False`` keeps every route on this server: with SSR (the default on Spaces) a Node front
    server would answer and hide the REST routes.

    Args:
        predictor: the loaded model.
        demo: a ``gr.Blocks`` from :func:`build_demo` (built here when ``None``).
        examples_dir: passed to :func:`build_demo` when it builds the demo.
        max_file_size: upload limit in bytes, for Gradio uploads and ``POST /classify`` (413 above it).
        max_pixels: decompression-bomb limit (width x height).

    Returns:
        An ASGI application (serve it with uvicorn, see :func:`serve`); ``.state.demo`` is the Blocks.
    """
    import gradio as gr

    from landcover.app.rest import rest_api, wrap_asgi

    demo = demo or build_demo(predictor, examples_dir, max_pixels=max_pixels, max_file_size=max_file_size)
    api = rest_api(predictor, demo.patch_classifier, max_waiting=MAX_BATCH + QUEUE_MAX, concurrency=MAX_BATCH)
    rest_lifespan = api.router.lifespan_context
    sweeper = replace_temp_file_sweep(demo)  # None where Gradio's own sweep stays

    @contextlib.asynccontextmanager
    async def lifespan(app):  # mount_gradio_app wraps this one, so it runs around Gradio's own lifespan
        async with rest_lifespan(app) as state, (sweeper() if sweeper else contextlib.nullcontext()):
            yield state

    api.router.lifespan_context = lifespan
    api = gr.mount_gradio_app(api, demo, path="/", max_file_size=max_file_size, ssr_mode=False,
                              footer_links=["api", "gradio"], show_error=True, css=APP_CSS)
    use_lazy_session_state(mounted_gradio_app(api))
    api.state.demo = demo
    return wrap_asgi(api, predictor, max_file_size)


# Idle keep-alive connections are kept this long. uvicorn's default (5 s) equals httpx's and requests' pool expiry,
# so a client could reuse a connection the server was closing that instant and get a ReadError (the soak saw 2);
# the server's timeout must exceed every client's and proxy's (60 s is a common proxy idle timeout).
KEEP_ALIVE_S = 75


def server_config(app, host: str = "127.0.0.1", port: int = 7860, log_level: str = "info"):
    """The ``uvicorn.Config`` the app is served with (:func:`serve`, and the tests' live server)."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_keep_alive=KEEP_ALIVE_S,
                          timeout_graceful_shutdown=5)


def serve(app, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Run the app with uvicorn (blocking)."""
    import uvicorn

    uvicorn.Server(server_config(app, host, port)).run()


__all__ = ["build_demo", "build_app", "serve", "server_config", "KEEP_ALIVE_S", "find_examples", "model_markdown", "INFERENCE_ID",
           "HEAVY_CONCURRENCY", "MAX_BATCH", "TOP_K"]
