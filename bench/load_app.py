"""Load test of the web app: N concurrent clients for T seconds, mixed REST and Gradio API calls.

    python bench/load_app.py --model runs/tiny            # launches `python app.py` on a free port
    python bench/load_app.py --url http://127.0.0.1:7860  # a running app (add --pid for its RSS)

Half of the requests are ``POST /classify`` (multipart ``file``), half go through the Gradio API of
``api_name="predict"`` exactly as a client library does: ``POST /gradio_api/upload``, then
``POST /gradio_api/call/predict`` and the event stream ``GET /gradio_api/call/predict/<id>``; a
Gradio request's latency covers all three, and each is reported on its own. Loopback only. Each client
stops starting requests at the deadline and every request has a timeout, so the run always ends. Reports
requests/s, p50/p95/p99 latency per endpoint, the error count (exit code 1 if any), the server's RSS
before/after, and the cores the server and the load generator kept busy (they share the machine).

Soak mode (``--soak``, e.g. ``--duration 660 --warmup 60``): the server's RSS, open file descriptors,
thread count and Gradio temp-folder size (the launched app gets its own ``GRADIO_TEMP_DIR``) are sampled
every 5 s; after the warm-up the RSS slope must stay under ``--max-rss-growth`` MiB per 10 minutes and
fds, threads and the temp folder must stop growing (the last third of the run at most a little above the
middle third), else the exit code is 2. ``--raw-ort`` first measures, in the same run, how many images per
second a bare ONNX Runtime session on the app's model serves with the model's own test-time
augmentation (no HTTP, numpy views), and reports the app's req/s as a share of it.
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
import tempfile
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
GRADIO_STAGES = ("upload", "call", "stream")


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"classify": [], "gradio": []})
    # The three requests of one Gradio call, each timed: where its latency goes.
    stages: dict[str, list[float]] = field(default_factory=lambda: {stage: [] for stage in GRADIO_STAGES})
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


def launch_app(model: Optional[str], port: int, log: Path, temp_dir: Path,
               backend: Optional[str] = None) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port)]
    if model:
        cmd += ["--model", model]
    if backend:
        cmd += ["--backend", backend]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
           "GRADIO_TEMP_DIR": str(temp_dir)}
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


async def call_gradio(client: httpx.AsyncClient, url: str, image: bytes, name: str,
                      stages: Optional[dict[str, list[float]]] = None) -> None:
    t0 = time.perf_counter()
    up = await client.post(f"{url}{GRADIO}/upload", files=[("files", (name, image, "application/octet-stream"))])
    if up.status_code != 200:
        raise RuntimeError(f"upload HTTP {up.status_code}: {up.text[:200]}")
    payload = {"path": up.json()[0], "orig_name": name, "meta": {"_type": "gradio.FileData"}}
    t1 = time.perf_counter()
    join = await client.post(f"{url}{GRADIO}/call/predict", json={"data": [payload]})
    if join.status_code != 200:
        raise RuntimeError(f"call/predict HTTP {join.status_code}: {join.text[:200]}")
    event_id = join.json()["event_id"]
    t2 = time.perf_counter()
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
                if stages is not None:
                    for stage, seconds in zip(GRADIO_STAGES, (t1 - t0, t2 - t1, time.perf_counter() - t2)):
                        stages[stage].append(seconds)
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
            if use_gradio:
                await call_gradio(client, url, image, name, stats.stages)
            else:
                await call_classify(client, url, image, name)
            stats.latencies[endpoint].append(time.perf_counter() - start)
        except Exception as err:  # counted and reported; the client keeps going
            stats.errors.append(f"{endpoint}: {type(err).__name__}: {err}"[:300])
        k += 1


def folder_usage(folder: Optional[Path]) -> tuple[int, int]:
    """(bytes, files) under ``folder``: the Gradio temp folder's size."""
    total = count = 0
    if folder is None or not folder.is_dir():
        return 0, 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
                count += 1
            except FileNotFoundError:  # deleted by the app's cache cleaner meanwhile
                pass
    return total, count


def sample(proc: psutil.Process, temp_dir: Optional[Path], t: float) -> dict:
    size, files = folder_usage(temp_dir)
    return {"t": round(t, 1), "rss": proc.memory_info().rss, "fds": proc.num_fds(), "threads": proc.num_threads(),
            "temp_bytes": size, "temp_files": files}


async def sample_server(proc: Optional[psutil.Process], samples: list[dict], stop: asyncio.Event, t0: float,
                        temp_dir: Optional[Path], every: float) -> None:
    while proc is not None and not stop.is_set():
        samples.append(await asyncio.to_thread(sample, proc, temp_dir, time.monotonic() - t0))
        try:
            await asyncio.wait_for(stop.wait(), timeout=every)
        except asyncio.TimeoutError:
            pass


def growth_checks(samples: list[dict], warmup: float, max_rss_growth_mib: float) -> dict:
    """Whether each resource keeps growing after ``warmup`` seconds (the soak's pass/fail)."""
    after = [s for s in samples if s["t"] >= warmup]
    if len(after) < 6:
        return {"error": f"only {len(after)} samples after the warm-up; run longer"}
    t = np.array([s["t"] for s in after])
    rss = np.array([s["rss"] for s in after]) / 2**20
    slope = float(np.polyfit(t, rss, 1)[0]) * 600  # MiB per 10 minutes
    # The same fit over the second half alone tells a leak (it keeps the slope) from buffers still growing to
    # their working size early in the run (it flattens). Reported only: the verdict is on the whole window.
    half = len(after) // 2
    second_half = float(np.polyfit(t[half:], rss[half:], 1)[0]) * 600
    third = len(after) // 3
    middle, last = after[third:2 * third], after[2 * third:]
    result = {"rss_slope_mib_per_10min": round(slope, 1), "rss_limit_mib_per_10min": max_rss_growth_mib,
              "rss_ok": slope <= max_rss_growth_mib,
              "rss_slope_second_half_mib_per_10min": round(second_half, 1)}
    slack = {"fds": 8, "threads": 4, "temp_bytes": 1 << 20, "temp_files": 200}
    for key, extra in slack.items():
        mid, end = max(s[key] for s in middle), max(s[key] for s in last)
        ok = end <= mid * 1.2 + extra  # bounded: the last third not above the middle third
        result[key] = {"middle_third_max": mid, "last_third_max": end, "ok": ok}
    result["ok"] = result["rss_ok"] and all(result[k]["ok"] for k in slack)
    return result


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    a = np.asarray(values) * 1000
    return {"n": len(values), "p50_ms": round(float(np.percentile(a, 50)), 1),
            "p95_ms": round(float(np.percentile(a, 95)), 1), "p99_ms": round(float(np.percentile(a, 99)), 1),
            "max_ms": round(float(a.max()), 1)}


async def bench(url: str, server: Optional[psutil.Process], clients: int, duration: float,
                gradio_share: float, request_timeout: float, warmup: float = 0.0,
                temp_dir: Optional[Path] = None, every: float = 1.0) -> dict:
    """Load for ``warmup`` + ``duration`` seconds; latencies and req/s count the ``duration`` part only."""
    images = make_images()
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=request_timeout, limits=limits) as client:
        warm = Stats()
        await client_loop(0, client, url, images, time.monotonic() + 2.0, warm, 0.5)  # first calls, not counted
        if warm.errors:
            raise RuntimeError(f"warm-up failed: {warm.errors[0]}")
        samples, stop = [], asyncio.Event()
        t0 = time.monotonic()
        sampler = asyncio.create_task(sample_server(server, samples, stop, t0, temp_dir, every))
        if warmup > 0:  # full load, not counted: allocator, caches and the temp folder reach their level
            warm = Stats()
            await asyncio.wait_for(asyncio.gather(*[client_loop(i, client, url, images, t0 + warmup, warm,
                                                                gradio_share) for i in range(clients)]),
                                   timeout=warmup + request_timeout + 10)
        stats = Stats()
        t1 = time.monotonic()
        cpu0 = cpu_seconds(server)
        deadline = t1 + duration
        tasks = [client_loop(i, client, url, images, deadline, stats, gradio_share) for i in range(clients)]
        # Hard stop: requests in flight at the deadline get at most request_timeout more.
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=duration + request_timeout + 10)
        elapsed = time.monotonic() - t1
        cpu1 = cpu_seconds(server)
        stop.set()
        await sampler
        if server is not None:
            samples.append(sample(server, temp_dir, time.monotonic() - t0))
    done = sum(len(v) for v in stats.latencies.values())
    mib = (lambda b: None if b is None else round(b / 2**20, 1))
    at_warmup = next((s for s in samples if s["t"] >= warmup), samples[0] if samples else None)
    first, last = (samples[0], samples[-1]) if samples else (None, None)
    return {
        "url": url, "clients": clients, "warmup_s": warmup, "duration_s": round(elapsed, 1),
        "gradio_share": gradio_share, "requests": done, "errors": len(stats.errors) + len(warm.errors),
        "error_examples": (warm.errors + stats.errors)[:5], "requests_per_s": round(done / elapsed, 1),
        "latency": {"all": percentiles(stats.latencies["classify"] + stats.latencies["gradio"]),
                    "classify": percentiles(stats.latencies["classify"]),
                    "gradio_predict": percentiles(stats.latencies["gradio"])},
        "server_rss_mib": {"before": mib(first and first["rss"]), "after_warmup": mib(at_warmup and at_warmup["rss"]),
                           "after": mib(last and last["rss"]), "max": mib(max((s["rss"] for s in samples), default=None)),
                           "every_60s": [mib(s["rss"]) for s in samples if s["t"] % 60 < every]},
        "server": {"start": first and {k: v for k, v in first.items() if k != "rss"},
                   "after_warmup": at_warmup and {k: v for k, v in at_warmup.items() if k != "rss"},
                   "end": last and {k: v for k, v in last.items() if k != "rss"}},
        "gradio_stages": {stage: percentiles(v) for stage, v in stats.stages.items()},
        "cpu": cpu_report(cpu0, cpu1, elapsed, done),
        "samples": samples,
    }


def cpu_seconds(server: Optional[psutil.Process]) -> dict:
    """CPU seconds used so far by the server and by this load generator (user + system)."""
    me = psutil.Process().cpu_times()
    out = {"client": me.user + me.system}
    if server is not None:
        t = server.cpu_times()
        out["server"] = t.user + t.system
    return out


def cpu_report(before: dict, after: dict, elapsed: float, requests: int) -> dict:
    """Cores busy in the server and in the load generator over the measured window, and server CPU per request.

    The load generator shares the machine's cores with the app: what it burns bounds what the app can serve."""
    cores = psutil.cpu_count()
    out = {"cores": cores}
    for who in after:
        busy = (after[who] - before[who]) / elapsed
        out[f"{who}_cores_busy"] = round(busy, 2)
        if who == "server" and requests:
            out["server_cpu_ms_per_request"] = round(1000 * (after[who] - before[who]) / requests, 2)
    return out


def raw_ort_throughput(model: Optional[str], backend: Optional[str], batches: tuple[int, ...] = (1, 8, 32), seconds: float = 15.0) -> dict:
    """Images/s of a bare ONNX Runtime session on the app's model with its own TTA (numpy views, no HTTP)."""
    sys.path.insert(0, str(ROOT))

    from landcover.core.config import TTA_MODES
    from landcover.inference.predictor import load_predictor

    predictor = load_predictor(model, backend or "onnx")
    if predictor.onnx is None:
        raise RuntimeError(f"the app's model runs on {predictor.backend}, not ONNX Runtime: no raw ORT baseline")
    session = predictor.onnx.session  # the same graph and session options as the app's, run bare
    name = session.get_inputs()[0].name
    mode = predictor.tta
    n_views = len(TTA_MODES[mode].symmetries) if mode else 1
    patches = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in make_images()])
    patches = patches.transpose(0, 3, 1, 2)  # (N, 3, 64, 64) uint8, as uploads arrive

    def views(x: np.ndarray) -> np.ndarray:  # the 8 D4 symmetries (or the mode's subset), view-major
        d4 = [x, x[..., ::-1], x[..., ::-1, :], x[..., ::-1, ::-1], x.swapaxes(-1, -2),
              x.swapaxes(-1, -2)[..., ::-1], x.swapaxes(-1, -2)[..., ::-1, :], x.swapaxes(-1, -2)[..., ::-1, ::-1]]
        picked = [d4[g] for g in TTA_MODES[mode].symmetries] if mode else [x]
        return np.ascontiguousarray(np.concatenate(picked))

    result = {"tta": mode, "views_per_image": n_views, "threads": predictor.onnx.threads, "images_per_s": {}}
    for batch in batches:
        x = patches[np.arange(batch) % len(patches)]
        session.run(None, {name: views(x)})  # first call allocates
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            logits = session.run(None, {name: views(x)})[0].reshape(n_views, batch, -1)
            e = np.exp(logits - logits.max(-1, keepdims=True))
            (e / e.sum(-1, keepdims=True)).mean(0).argmax(-1)
            done += batch
        result["images_per_s"][batch] = round(done / (time.perf_counter() - start), 1)
    result["best_images_per_s"] = max(result["images_per_s"].values())
    del session, predictor
    return result


def stop_app(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)  # uvicorn shuts down gracefully on SIGINT
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def print_report(r: dict) -> None:
    print(f"{r['clients']} clients, {r['duration_s']} s after {r['warmup_s']} s warm-up, {r['url']} "
          f"({round(100 * r['gradio_share'])}% Gradio API)")
    print(f"requests {r['requests']}  ({r['requests_per_s']} req/s)   errors {r['errors']}")
    for name, p in r["latency"].items():
        if p["n"]:
            print(f"  {name:15s} n {p['n']:6d}  p50 {p['p50_ms']:8.1f} ms  p95 {p['p95_ms']:8.1f} ms  "
                  f"p99 {p['p99_ms']:8.1f} ms  max {p['max_ms']:8.1f} ms")
    st = r.get("gradio_stages") or {}
    if st.get("upload", {}).get("n"):
        print("  Gradio stages   " + "   ".join(f"{k} p50 {v['p50_ms']:.1f} / p95 {v['p95_ms']:.1f} ms"
                                                for k, v in st.items()))
    c = r.get("cpu") or {}
    if "client_cores_busy" in c:
        print(f"CPU ({c['cores']} cores): load generator {c['client_cores_busy']} cores busy"
              + (f", server {c['server_cores_busy']} cores busy, {c['server_cpu_ms_per_request']} ms of server CPU "
                 f"per request" if "server_cores_busy" in c else ""))
    m = r["server_rss_mib"]
    if m["before"] is not None:
        print(f"server RSS start {m['before']} MiB, after warm-up {m['after_warmup']} MiB, end {m['after']} MiB, "
              f"max {m['max']} MiB; every 60 s: {m['every_60s']}")
        for when in ("start", "after_warmup", "end"):
            s = r["server"][when]
            print(f"  {when:12s} t {s['t']:6.1f} s  fds {s['fds']}  threads {s['threads']}  temp folder "
                  f"{s['temp_bytes'] / 2**20:.2f} MiB in {s['temp_files']} files")
    if "raw_ort" in r:
        raw = r["raw_ort"]
        print(f"raw ONNX Runtime, TTA {raw['tta']} ({raw['views_per_image']} views), {raw['threads']} threads: "
              f"{raw['images_per_s']} images/s by batch size; app / best raw = {r['requests_per_s']} / "
              f"{raw['best_images_per_s']} = {r['share_of_raw_ort']:.0%}")
    if "growth" in r:
        g = r["growth"]
        if "error" in g:
            print(f"soak: {g['error']}")
        else:
            print(f"soak: RSS slope {g['rss_slope_mib_per_10min']} MiB / 10 min (limit {g['rss_limit_mib_per_10min']})"
                  f" {'ok' if g['rss_ok'] else 'GROWING'} (second half alone "
                  f"{g['rss_slope_second_half_mib_per_10min']}); " + "; ".join(
                      f"{k} {g[k]['middle_third_max']} -> {g[k]['last_third_max']} {'ok' if g[k]['ok'] else 'GROWING'}"
                      for k in ("fds", "threads", "temp_bytes", "temp_files")))
    for e in r["error_examples"]:
        print(f"  error: {e}")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="Model folder or Hub id for the launched app (default: embedded).")
    p.add_argument("--backend", default=None, help="--backend of the launched app (default: the app's).")
    p.add_argument("--url", default=None, help="Benchmark a running app instead (loopback only).")
    p.add_argument("--pid", type=int, default=None, help="PID of the running app, for its RSS (with --url).")
    p.add_argument("--clients", type=int, default=32, help="Concurrent clients.")
    p.add_argument("--duration", type=float, default=30.0, help="Seconds of measured load (after --warmup).")
    p.add_argument("--warmup", type=float, default=0.0, help="Seconds of full load before measuring.")
    p.add_argument("--gradio-share", type=float, default=0.5, help="Fraction of requests via the Gradio API.")
    p.add_argument("--request-timeout", type=float, default=60.0, help="Seconds before a request counts as failed.")
    p.add_argument("--startup-timeout", type=float, default=300.0, help="Seconds to wait for a launched app.")
    p.add_argument("--soak", action="store_true",
                   help="Sample RSS, fds, threads and the temp folder every 5 s; exit 2 if any keeps growing.")
    p.add_argument("--max-rss-growth", type=float, default=30.0,
                   help="Soak: largest RSS slope after the warm-up, MiB per 10 minutes.")
    p.add_argument("--raw-ort", action="store_true",
                   help="First measure a bare ONNX Runtime session with the model's TTA (no HTTP), for the ratio.")
    p.add_argument("--json", default=None, help="Also write the report (with every sample) to this JSON file.")
    args = p.parse_args(argv)
    if not 0.0 <= args.gradio_share <= 1.0:
        p.error("--gradio-share must be between 0 and 1")

    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the launched app is always stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    raw = raw_ort_throughput(args.model, args.backend) if args.raw_ort else None
    proc, temp_dir = None, None
    if args.url:
        host = urlparse(args.url).hostname
        if host not in LOOPBACK:
            p.error(f"--url must point at this machine ({sorted(LOOPBACK)}); got host {host!r}")
        url, server = args.url.rstrip("/"), psutil.Process(args.pid) if args.pid else None
    else:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        scratch = Path(tempfile.mkdtemp(prefix=f"load_app-{port}-"))
        log, temp_dir = scratch / "app.log", scratch / "gradio"
        proc = launch_app(args.model, port, log, temp_dir, args.backend)
        server = psutil.Process(proc.pid)
        print(f"launched app.py (pid {proc.pid}) on {url}, log {log}", file=sys.stderr)
    try:
        asyncio.run(wait_healthy(url, proc, args.startup_timeout))
        report = asyncio.run(bench(url, server, args.clients, args.duration, args.gradio_share,
                                   args.request_timeout, args.warmup, temp_dir, 5.0 if args.soak else 1.0))
    finally:
        if proc is not None:
            stop_app(proc)
    report["command"] = "python bench/load_app.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if raw:
        report["raw_ort"] = raw
        report["share_of_raw_ort"] = report["requests_per_s"] / raw["best_images_per_s"]
    if args.soak:
        report["growth"] = growth_checks(report["samples"], args.warmup, args.max_rss_growth)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if report["errors"]:
        return 1
    return 2 if args.soak and not report["growth"].get("ok") else 0


if __name__ == "__main__":
    sys.exit(main())
