"""Request latency of ``POST /classify``: p50/p95 over N sequential requests of one 64x64 patch.

    python bench/app_latency.py --model MODEL_DIR [--requests 200] [--image patch.png]

Launches the real app (``landcover.app.blocks.build_app`` under uvicorn) on a free loopback port in this process,
sends one warm-up request, then N requests one after another with httpx. *End-to-end* is the client's
wall time per request (connection reused); *server-side* is the handler's own time, read from the
``Server-Timing`` header (read body, decode, inference). Loopback only; stops by itself.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="Model folder or Hub id (default: embedded model).")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--image", default=None, help="Image to send (default: a generated 64x64 PNG).")
    args = parser.parse_args(argv)

    import httpx
    import numpy as np
    from PIL import Image

    from app_server import running_app
    from datagen import class_patch
    from landcover.inference.predictor import Predictor
    from landcover.app.blocks import build_app

    if args.image:
        data = Path(args.image).read_bytes()
    else:
        buf = io.BytesIO()
        Image.fromarray(class_patch(1, np.random.default_rng(0))).save(buf, format="PNG")
        data = buf.getvalue()
    predictor = Predictor.load(args.model)
    with running_app(build_app(predictor)) as url, httpx.Client(base_url=url, timeout=60) as client:
        files = {"file": ("patch.png", data, "image/png")}
        client.post("/classify", files=files).raise_for_status()  # warm-up
        e2e, server = [], []
        for _ in range(args.requests):
            start = time.perf_counter()
            r = client.post("/classify", files=files)
            e2e.append((time.perf_counter() - start) * 1e3)
            r.raise_for_status()
            server.append(float(r.headers["server-timing"].split("dur=")[1]))
    result = {"model": predictor.info["source"], "architecture": predictor.info["architecture"],
              "requests": args.requests, "image_bytes": len(data),
              "end_to_end_ms": {"p50": round(statistics.median(e2e), 2), "p95": round(_percentile(e2e, 95), 2)},
              "server_side_ms": {"p50": round(statistics.median(server), 2),
                                 "p95": round(_percentile(server, 95), 2)}}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
