"""EuroSAT land-cover web app (Gradio UI + REST API); also the entry point of the Hugging Face Space.

    python app.py [--model REF] [--examples DIR] [--host HOST] [--port PORT]

``REF`` is a model folder or a Hub id ``org/name[@revision]`` (env ``LANDCOVER_MODEL``); without one the
embedded default model is used. Importing this module builds ``demo`` (and the ASGI ``app``) from the
environment only, as Spaces and ``gradio app.py`` expect; command-line flags apply under ``__main__``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from landcover.core.defaults import BACKENDS, DEFAULT_BACKEND
from landcover.inference.predictor import load_predictor
from landcover.app.blocks import build_app, build_demo, serve


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="EuroSAT land-cover classifier: web UI and REST API.")
    parser.add_argument("--model", default=os.environ.get("LANDCOVER_MODEL") or None,
                        help="Model folder or Hub id org/name[@revision] (env LANDCOVER_MODEL; default: the "
                             "embedded model).")
    parser.add_argument("--examples", default=os.environ.get("LANDCOVER_EXAMPLES") or None,
                        help="Folder of example images, or a EuroSAT folder (one per class), used when the "
                             "model folder has no examples/ (env LANDCOVER_EXAMPLES).")
    # Spaces set GRADIO_SERVER_NAME=0.0.0.0 and GRADIO_SERVER_PORT=7860.
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="Interface to listen on (0.0.0.0 for all; env GRADIO_SERVER_NAME).")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                        help="Port (env GRADIO_SERVER_PORT).")
    parser.add_argument("--backend", default=os.environ.get("LANDCOVER_BACKEND", DEFAULT_BACKEND), choices=BACKENDS,
                        help="Inference engine (env LANDCOVER_BACKEND; default auto: the ONNX graph the model "
                             "folder ships, else torch; see landcover/core/defaults.py). Falls back to torch if ONNX fails.")
    return parser.parse_args(argv)


ARGS = parse_args(None if __name__ == "__main__" else [])
try:
    predictor = load_predictor(ARGS.model, backend=ARGS.backend)  # ONNX problems fall back to torch
except (FileNotFoundError, ValueError) as err:
    sys.exit(f"error: cannot load the model: {err}")
demo = build_demo(predictor, ARGS.examples)
app = build_app(predictor, demo)

if __name__ == "__main__":
    serve(app, host=ARGS.host, port=ARGS.port)
