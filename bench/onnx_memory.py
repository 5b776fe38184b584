"""Where a serving process's memory goes: RSS of the app's ONNX engine fed batches of varying size.

The app merges concurrent requests into passes of 1..32 images, each run with the model's test-time augmentation
(d4: 8 views), so ONNX Runtime sees input shapes that change from pass to pass. This drives the same engine
(``load_predictor(backend="onnx")``) with batch sizes drawn uniformly from 1..``--max-batch`` for ``--seconds``
and samples the process RSS, once with the project's session options (``default``) and once per ``--variant``:

* ``no-arena``: ``SessionOptions.enable_cpu_mem_arena = False`` (every tensor from the system allocator);
* ``no-pattern``: ``enable_mem_pattern = False`` (no memory plan cached per input shape);
* ``same-size``: the sessions share one CPU arena registered with ``arena_extend_strategy`` kSameAsRequested
  (``ort.create_and_register_allocator`` and ``session.use_env_allocators``; the default doubles each extension);
* ``warmup``: the project's options, with one pass of ``--max-batch`` images before the clock starts (what a
  serving process can do at start-up, so that the largest batch shape is planned before the first request);
* ``same-size-warmup``: both.

Each variant runs in its own subprocess (a fresh heap) and prints images/s and the RSS every ``--every`` seconds,
so the growth and the throughput are compared side by side in one run. Not a test.

    python bench/onnx_memory.py --seconds 120
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = {"default": {}, "no-arena": {"enable_cpu_mem_arena": False}, "no-pattern": {"enable_mem_pattern": False},
            "same-size": {}, "warmup": {}, "same-size-warmup": {}}
SAME_AS_REQUESTED = 1  # OrtArenaCfg arena_extend_strategy: 0 kNextPowerOfTwo (the default), 1 kSameAsRequested


def register_same_size_arena() -> None:
    """One process-wide CPU arena that grows by what is requested (ONNX Runtime's supported env allocator)."""
    import onnxruntime as ort

    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, ort.OrtArenaCfg({"arena_extend_strategy": SAME_AS_REQUESTED}))


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(variant: str, seconds: float, every: float, max_batch: int) -> dict:
    import numpy as np
    import torch

    from landcover.inference import onnx_backend
    from landcover.inference.predictor import load_predictor

    options = onnx_backend.session_options

    def patched(threads=None):
        so = options(threads)
        for name, value in VARIANTS[variant].items():
            setattr(so, name, value)
        if variant.startswith("same-size"):
            so.add_session_config_entry("session.use_env_allocators", "1")
        return so

    if variant.startswith("same-size"):
        register_same_size_arena()
    onnx_backend.session_options = patched  # this benchmark's own process only
    predictor = load_predictor(None, backend="onnx")
    rng = np.random.default_rng(0)
    pool = torch.from_numpy(rng.integers(0, 256, (max_batch, 3, 64, 64), dtype=np.uint8))
    if variant.endswith("warmup"):
        predictor.predict_tensor(pool)
    samples, images, start, next_sample = [(0.0, rss_mib())], 0, time.perf_counter(), every
    while (now := time.perf_counter() - start) < seconds:
        n = int(rng.integers(1, max_batch + 1))
        predictor.predict_tensor(pool[:n])
        images += n
        if now >= next_sample:
            samples.append((round(now, 1), round(rss_mib(), 1)))
            next_sample += every
    return {"variant": variant, "tta": predictor.tta, "images_per_s": images / (time.perf_counter() - start),
            "rss": samples}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--every", type=float, default=15.0)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--variant", nargs="+", default=["no-pattern"], choices=sorted(VARIANTS))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.seconds, args.every, args.max_batch)))
        return 0
    for variant in ["default", *args.variant]:
        r = subprocess.run([sys.executable, __file__, "--child", variant, "--seconds", str(args.seconds), "--every",
                            str(args.every), "--max-batch", str(args.max_batch)], capture_output=True, text=True,
                           check=True)
        out = json.loads(r.stdout.strip().splitlines()[-1])
        rss = out["rss"]
        print(f"{variant:10s} TTA {out['tta']}: {out['images_per_s']:.1f} images/s; RSS MiB "
              + ", ".join(f"{v:.0f}@{t:.0f}s" for t, v in rss))
    return 0


if __name__ == "__main__":
    sys.exit(main())
