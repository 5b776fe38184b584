"""Cold start: seconds from ``python app.py`` on a fresh cache to the first prediction over HTTP.

    python bench/cold_start.py                       # this checkout
    python bench/cold_start.py --checkout OTHER_DIR  # another checkout (e.g. ``git archive`` of an older commit)

Each run starts the app in a subprocess with empty cache folders (``XDG_CACHE_HOME``,
``LANDCOVER_ONNX_CACHE``; the Hub offline), then POSTs one 64 px patch to ``/classify`` until a
prediction comes back, and reports the time from the start of the process to that first answer, and
the backend the app reported. The app is stopped after each run.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def patch_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def one_run(checkout: Path, python: str, timeout: float) -> dict:
    import httpx

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="landcover-cold-") as tmp:
        env = {**os.environ, "XDG_CACHE_HOME": f"{tmp}/cache", "LANDCOVER_ONNX_CACHE": f"{tmp}/onnx",
               "HF_HOME": f"{tmp}/hf", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
               "MPLCONFIGDIR": f"{tmp}/mpl"}
        start = time.perf_counter()
        proc = subprocess.Popen([python, "app.py", "--port", str(port)], cwd=checkout, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        body = patch_png()
        try:
            while time.perf_counter() - start < timeout:
                if proc.poll() is not None:
                    raise SystemExit(f"app.py exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
                try:
                    r = httpx.post(f"http://127.0.0.1:{port}/classify", files={"file": ("p.png", body, "image/png")},
                                   timeout=30)
                except httpx.TransportError:
                    time.sleep(0.05)  # not listening yet
                    continue
                if r.status_code == 200:
                    first = time.perf_counter() - start
                    health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
                    backend = health.json().get("backend") if health.status_code == 200 else None
                    return {"first_prediction_s": round(first, 2), "backend": backend}
                time.sleep(0.05)
            raise SystemExit(f"no prediction within {timeout:.0f} s")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkout", default=str(ROOT), help="Project checkout whose app.py to start.")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    results = [one_run(Path(args.checkout), args.python, args.timeout) for _ in range(args.runs)]
    for r in results:
        print(f"first prediction {r['first_prediction_s']:.2f} s after start (backend {r['backend']})", flush=True)
    print(f"median {float(np.median([r['first_prediction_s'] for r in results])):.2f} s over {len(results)} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
