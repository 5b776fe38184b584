"""Load test of the web app: N concurrent clients for T seconds, mixed REST and Gradio API calls.

    python bench/load_app.py --model runs/tiny            # launches `python app.py` on a free port
    python bench/load_app.py --url http://127.0.0.1:7860  # a running app (add --pid for its RSS)

Half of the requests are ``POST /classify`` (multipart ``file``), half go through the Gradio API of
``api_name="predict"`` exactly as a client library does: ``POST /gradio_api/upload``, then
``POST /gradio_api/call/predict`` and the event stream ``GET /gradio_api/call/predict/<id>``; a
Gradio request's latency covers all three. Loopback only. Each client stops starting requests at
the deadline and every request has a timeout, so the run always ends. Reports requests/s, p50/p95/p99
latency per endpoint, the error count (exit code 1 if any) and the server's RSS before/after.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import httpx
import numpy as np
import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
GRADIO = "/gradio_api"


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"classify": [], "gradio": []})
    errors: list[str] = field(default_factory=list)


def make_images(n: int = 8, size: int = 64) -> list[bytes]:
    """Small PNG/JPEG patches (smooth random colour fields, like land cover at 10 m)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        base = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((size, size), Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="PNG" if i % 2 else "JPEG")
        out.append(buf.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_app(model: Optional[str], port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port)]
    if model:
        cmd += ["--model", model]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


async def wait_healthy(url: str, proc: Optional[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the app exited with code {proc.returncode} before serving")
            try:
                if (await client.get(f"{url}/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.5)  # polling a starting server, bounded by the deadline
    raise TimeoutError(f"{url}/health did not answer within {timeout:.0f} s")


async def call_classify(client: httpx.AsyncClient, url: str, image: bytes, name: str) -> None:
    r = await client.post(f"{url}/classify", files={"file": (name, image, "application/octet-stream")})
    if r.status_code != 200:
        raise RuntimeError(f"/classify HTTP {r.status_code}: {r.text[:200]}")
    body = r.json()
    if "label" not in body or "probabilities" not in body:
        raise RuntimeError(f"/classify answered without a label: {body}")


async def call_gradio(client: httpx.AsyncClient, url: str, image: bytes, name: str) -> None:
    up = await client.post(f"{url}{GRADIO}/upload", files=[("files", (name, image, "application/octet-stream"))])
    if up.status_code != 200:
        raise RuntimeError(f"upload HTTP {up.status_code}: {up.text[:200]}")
    payload = {"path": up.json()[0], "orig_name": name, "meta": {"_type": "gradio.FileData"}}
    join = await client.post(f"{url}{GRADIO}/call/predict", json={"data": [payload]})
    if join.status_code != 200:
        raise RuntimeError(f"call/predict HTTP {join.status_code}: {join.text[:200]}")
    event_id = join.json()["event_id"]
    event = None
    async with client.stream("GET", f"{url}{GRADIO}/call/predict/{event_id}") as stream:
        async for line in stream.aiter_lines():
            if line.startswith("event: "):
                event = line[len("event: "):]
            elif line.startswith("data: ") and event in ("complete", "error"):
                data = json.loads(line[len("data: "):])
                if event == "error":
                    raise RuntimeError(f"Gradio error event: {data}")
                label = data[0] if data else None
                if not (isinstance(label, dict) and label.get("label")):
                    raise RuntimeError(f"Gradio answered without a label: {data}")
                return
    raise RuntimeError(f"the event stream ended without a result (last event {event})")


async def client_loop(i: int, client: httpx.AsyncClient, url: str, images: list[bytes], deadline: float,
                      stats: Stats, gradio_share: float) -> None:
    k = 0
    while time.monotonic() < deadline:
        n = k * 1_000_003 + i  # deterministic mix: request n goes to Gradio when floor(n * share) steps up
        use_gradio = int((n + 1) * gradio_share) > int(n * gradio_share)
        endpoint = "gradio" if use_gradio else "classify"
        image = images[(i + k) % len(images)]
        name = f"patch-{i}-{k}.{'png' if (i + k) % len(images) % 2 else 'jpg'}"
        start = time.perf_counter()
        try:
            await (call_gradio if use_gradio else call_classify)(client, url, image, name)
            stats.latencies[endpoint].append(time.perf_counter() - start)
        except Exception as err:  # counted and reported; the client keeps going
            stats.errors.append(f"{endpoint}: {type(err).__name__}: {err}"[:300])
        k += 1


async def sample_rss(proc: Optional[psutil.Process], samples: list[tuple[float, int]], stop: asyncio.Event,
                     t0: float) -> None:
    while proc is not None and not stop.is_set():
        samples.append((time.monotonic() - t0, proc.memory_info().rss))
        try:
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        except asyncio.TimeoutError:
            pass


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    a = np.asarray(values) * 1000
    return {"n": len(values), "p50_ms": round(float(np.percentile(a, 50)), 1),
            "p95_ms": round(float(np.percentile(a, 95)), 1), "p99_ms": round(float(np.percentile(a, 99)), 1),
            "max_ms": round(float(a.max()), 1)}


async def bench(url: str, server: Optional[psutil.Process], clients: int, duration: float,
                gradio_share: float, request_timeout: float) -> dict:
    images = make_images()
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=request_timeout, limits=limits) as client:
        warm = Stats()
        await client_loop(0, client, url, images, time.monotonic() + 2.0, warm, 0.5)  # warm-up, not counted
        if warm.errors:
            raise RuntimeError(f"warm-up failed: {warm.errors[0]}")
        rss_before = server.memory_info().rss if server else None
        stats, samples, stop = Stats(), [], asyncio.Event()
        t0 = time.monotonic()
        sampler = asyncio.create_task(sample_rss(server, samples, stop, t0))
        deadline = t0 + duration
        tasks = [client_loop(i, client, url, images, deadline, stats, gradio_share) for i in range(clients)]
        # Hard stop: requests in flight at the deadline get at most request_timeout more.
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=duration + request_timeout + 10)
        elapsed = time.monotonic() - t0
        stop.set()
        await sampler
        rss_after = server.memory_info().rss if server else None
    done = sum(len(v) for v in stats.latencies.values())
    mib = (lambda b: None if b is None else round(b / 2**20, 1))
    return {
        "url": url, "clients": clients, "duration_s": round(elapsed, 1), "gradio_share": gradio_share,
        "requests": done, "errors": len(stats.errors), "error_examples": stats.errors[:5],
        "requests_per_s": round(done / elapsed, 1),
        "latency": {"all": percentiles(stats.latencies["classify"] + stats.latencies["gradio"]),
                    "classify": percentiles(stats.latencies["classify"]),
                    "gradio_predict": percentiles(stats.latencies["gradio"])},
        "server_rss_mib": {"before": mib(rss_before), "after": mib(rss_after),
                           "max": mib(max((s[1] for s in samples), default=None)),
                           "every_5s": [mib(s[1]) for s in samples[::5]]},
    }


def stop_app(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)  # uvicorn shuts down gracefully on SIGINT
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def print_report(r: dict) -> None:
    print(f"{r['clients']} clients, {r['duration_s']} s, {r['url']} ({round(100 * r['gradio_share'])}% Gradio API)")
    print(f"requests {r['requests']}  ({r['requests_per_s']} req/s)   errors {r['errors']}")
    for name, p in r["latency"].items():
        if p["n"]:
            print(f"  {name:15s} n {p['n']:6d}  p50 {p['p50_ms']:8.1f} ms  p95 {p['p95_ms']:8.1f} ms  "
                  f"p99 {p['p99_ms']:8.1f} ms  max {p['max_ms']:8.1f} ms")
    m = r["server_rss_mib"]
    if m["before"] is not None:
        print(f"server RSS before {m['before']} MiB, after {m['after']} MiB, max {m['max']} MiB; "
              f"every 5 s: {m['every_5s']}")
    for e in r["error_examples"]:
        print(f"  error: {e}")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="Model folder or Hub id for the launched app (default: embedded).")
    p.add_argument("--url", default=None, help="Benchmark a running app instead (loopback only).")
    p.add_argument("--pid", type=int, default=None, help="PID of the running app, for its RSS (with --url).")
    p.add_argument("--clients", type=int, default=32, help="Concurrent clients.")
    p.add_argument("--duration", type=float, default=30.0, help="Seconds of load.")
    p.add_argument("--gradio-share", type=float, default=0.5, help="Fraction of requests via the Gradio API.")
    p.add_argument("--request-timeout", type=float, default=60.0, help="Seconds before a request counts as failed.")
    p.add_argument("--startup-timeout", type=float, default=300.0, help="Seconds to wait for a launched app.")
    p.add_argument("--json", default=None, help="Also write the report to this JSON file.")
    args = p.parse_args(argv)
    if not 0.0 <= args.gradio_share <= 1.0:
        p.error("--gradio-share must be between 0 and 1")

    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the launched app is always stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    proc = None
    if args.url:
        host = urlparse(args.url).hostname
        if host not in LOOPBACK:
            p.error(f"--url must point at this machine ({sorted(LOOPBACK)}); got host {host!r}")
        url, server = args.url.rstrip("/"), psutil.Process(args.pid) if args.pid else None
    else:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = Path(os.environ.get("TMPDIR", "/tmp")) / f"load_app-{port}.log"
        proc = launch_app(args.model, port, log)
        server = psutil.Process(proc.pid)
        print(f"launched app.py (pid {proc.pid}) on {url}, log {log}", file=sys.stderr)
    try:
        asyncio.run(wait_healthy(url, proc, args.startup_timeout))
        report = asyncio.run(bench(url, server, args.clients, args.duration, args.gradio_share,
                                   args.request_timeout))
    finally:
        if proc is not None:
            stop_app(proc)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
