"""The REST routes, apart from the Gradio Blocks: ``POST /classify``, health at ``GET /`` and ``GET /health``,
OpenAPI docs at ``/api/docs``.

``POST /classify`` takes one image as the multipart field ``file`` (FastAPI ``UploadFile``, so the OpenAPI
schema shows the request body) and answers ``{"Type", "label", "confidence", "probabilities"}``, or a
4xx JSON ``{"error": ...}`` that says what was expected. The body is capped while it streams in
(:class:`BodyLimit`): an over-size upload is refused with 413 without being read to the end. The image
goes through the same checks as every upload (:func:`landcover.readers.imageio.decode_rgb8`) and into the same
batcher as the Gradio API (:class:`landcover.inference.batching.PatchClassifier`).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable

from fastapi import FastAPI, File, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from landcover.readers.imageio import UploadError

if TYPE_CHECKING:
    from landcover.inference.batching import PatchClassifier
    from landcover.inference.predictor import Predictor

logger = logging.getLogger(__name__)

MULTIPART_SLACK = 64 * 1024  # boundary and part headers on top of the file itself
FIELD_HINT = "expected multipart/form-data with a 'file' field, e.g. curl -F file=@patch.jpg URL/classify"


def health(predictor: "Predictor") -> dict:
    """``GET /`` and ``GET /health``: what is served and that it is up."""
    info = predictor.info
    return {"status": "ok", "model": info.get("source"), "architecture": info.get("architecture"),
            "labels": list(predictor.labels), "input_size": predictor.input_size,
            "test_accuracy": info.get("test_accuracy")}


def error(status: int, message: str) -> JSONResponse:
    """The REST error body: ``{"error": message}``."""
    return JSONResponse({"error": message}, status_code=status)


class BodyLimit:
    """ASGI wrapper: request bodies of ``paths`` over ``limit`` bytes get 413 as soon as they cross it.

    A declared ``Content-Length`` over the limit is refused before anything is read; a body that streams
    past it is cut off (the route sees a disconnect) and its answer replaced by the 413.
    """

    def __init__(self, app, paths: set[str], limit: int, message: str):
        self.app, self.paths, self.limit, self.message = app, paths, limit, message

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await error(413, self.message)(scope, receive, send)
            return
        seen, over = 0, False

        async def capped_receive():
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if not over:  # once cut off, the route's own answer is dropped for the 413 below
                await send(message)

        try:
            await self.app(scope, capped_receive, guarded_send)
        except Exception:
            if not over:
                raise
        if over:
            await error(413, self.message)(scope, receive, send)


class HealthAtRoot:
    """ASGI wrapper: ``GET /`` from an API client (no ``text/html`` in Accept) gets the health JSON,
    a browser gets the Gradio page mounted at ``/``."""

    def __init__(self, app, payload: Callable[[], dict]):
        self.app, self.payload = app, payload

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/" and scope["method"] in ("GET", "HEAD"):
            accept = dict(scope.get("headers") or []).get(b"accept", b"").decode("latin-1")
            if "text/html" not in accept:
                await JSONResponse(self.payload())(scope, receive, send)
                return
        await self.app(scope, receive, send)


def rest_api(predictor: "Predictor", classifier: "PatchClassifier", *, max_waiting: int,
             concurrency: int) -> FastAPI:
    """The FastAPI app with the REST routes (mount Gradio on it; wrap it in :func:`wrap_asgi`).

    Args:
        predictor: the loaded model (health and model info).
        classifier: decodes and classifies uploads, batched with the Gradio API's requests.
        max_waiting: ``/classify`` requests in flight beyond this get 503 instead of piling up.
        concurrency: ``/classify`` requests decoded and submitted to the batcher at once.
    """
    import anyio

    api = FastAPI(title="EuroSAT land-cover classifier", docs_url="/api/docs", redoc_url=None,
                  openapi_url="/api/openapi.json")
    limiter = anyio.CapacityLimiter(concurrency)
    in_flight = 0  # touched on the event loop only

    @api.exception_handler(RequestValidationError)
    async def _bad_request(request, exc):  # FastAPI's 422 for a missing field -> the contract's 400
        if request.url.path == "/classify":
            missing = any(e.get("type") == "missing" for e in exc.errors())
            what = "Missing multipart field 'file'" if missing else "Could not read the form"
            return error(400, f"{what}; {FIELD_HINT}.")
        return JSONResponse({"detail": exc.errors()}, status_code=422)

    @api.post("/classify", summary="Classify one image",
              responses={400: {"description": "not a usable image, or no 'file' field"},
                         413: {"description": "upload over the size or pixel limit"},
                         415: {"description": "not an image format the app reads"},
                         503: {"description": "too many requests waiting"}})
    async def classify(file: UploadFile = File(..., description="The image: PNG, JPEG, TIFF (also 16-bit and "
                                                                 "Sentinel-2 GeoTIFF), GIF, WebP or BMP.")):
        """One image as multipart field ``file`` -> ``{"Type", "label", "confidence", "probabilities"}``."""
        nonlocal in_flight
        start = time.perf_counter()
        if in_flight >= max_waiting:
            return error(503, "Server busy: too many requests waiting; retry shortly.")
        in_flight += 1
        try:
            data = await file.read()
            probs = await anyio.to_thread.run_sync(classifier.classify, data, limiter=limiter)
        except UploadError as err:
            return error(err.status, str(err))
        except Exception as err:  # keep serving; never leak a traceback to the client
            logger.exception("classify failed")
            return error(500, f"Internal error while classifying ({type(err).__name__}).")
        finally:
            in_flight -= 1
            await file.close()
        label, confidence = next(iter(probs.items()))
        # Server-Timing: time spent in this handler (read, decode, inference), for latency benchmarks.
        return JSONResponse({"Type": label, "label": label, "confidence": confidence, "probabilities": probs},
                            headers={"Server-Timing": f"classify;dur={(time.perf_counter() - start) * 1e3:.2f}"})

    @api.get("/health", summary="Health and model info")
    def _health() -> dict:
        return health(predictor)

    return api


def wrap_asgi(api: FastAPI, predictor: "Predictor", max_file_size: int):
    """The served ASGI app: health JSON at ``/`` for API clients and the body cap of ``/classify``."""
    too_big = (f"Upload over the {max_file_size // 2**20} MiB limit; send a smaller image "
               f"(the model only needs ~64x64 px).")
    app = HealthAtRoot(BodyLimit(api, {"/classify"}, max_file_size + MULTIPART_SLACK, too_big),
                       lambda: health(predictor))
    app.state = api.state  # type: ignore[attr-defined]
    return app
