"""Prepared GPU check: wide_resnet50_2 @ 224 px, bf16, channels_last training and inference images/s on one GPU.

Runs ``bench/train_throughput.py`` (the project's real training loop, generated data) in subprocesses:
eager, then optionally ``torch.compile`` and the notebook-style baseline, each with a hard time limit,
and prints a small table with the estimated time per epoch of 16,200 training images (EuroSAT's
default 75 % split), then times inference (forward only, same batch, bf16) in-process for 10 s. The whole
check stays under 5 minutes. Goal: >= 4,000 img/s on one H200.

    python bench/gpu_check.py                       # eager only (~1 min)
    python bench/gpu_check.py --compile --baseline  # + torch.compile and the notebook loop (< 5 min)

On a machine without CUDA it exits with status 2 and says so.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EPOCH_IMAGES = 16_200
GOAL = 4_000
BUDGET_S = 290


def run_case(label: str, extra: list[str], args, timeout: float) -> dict:
    cmd = [sys.executable, str(HERE / "train_throughput.py"), "--model", args.model, "--image-size",
           str(args.image_size), "--batch-size", str(args.batch_size), "--json", *extra]
    print(f"[{label}] {' '.join(cmd[1:])}  (limit {timeout:.0f}s)", flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"label": label, "error": f"timed out after {timeout:.0f}s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"label": label, "error": f"exit {proc.returncode}: " + " | ".join(tail)}
    out = json.loads(lines[-1])
    out.update(label=label, wall_s=time.perf_counter() - start)
    return out


def inference_rate(model_name: str, image_size: int, batch_size: int, seconds: float = 10.0) -> dict:
    """Inference images/s of the untrained timm model on CUDA: bf16 autocast, channels_last, inference_mode."""
    import timm
    import torch

    model = timm.create_model(model_name, pretrained=False, num_classes=10).cuda().eval()
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch_size, 3, image_size, image_size, device="cuda").to(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(5):  # warm-up: cuDNN algorithm choice
            model(x)
        torch.cuda.synchronize()
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model(x)
            n += batch_size
        torch.cuda.synchronize()
    return {"label": "inference bf16 channels_last", "img_per_s": n / (time.perf_counter() - start)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="wide_resnet50_2")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--compile", action="store_true", help="Also measure torch.compile (adds 1-2 min).")
    parser.add_argument("--baseline", action="store_true", help="Also measure the notebook-style loop.")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False). Run it on a machine with an "
              "NVIDIA GPU; on the CPU use bench/train_throughput.py instead.", file=sys.stderr)
        return 2
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    start = time.perf_counter()
    cases = [("eager bf16 channels_last", ["--steps", str(args.steps), "--warmup", "5", "--skip-notebook"], 120)]
    if args.compile:
        cases.append(("compiled bf16 channels_last",
                      ["--steps", str(args.steps), "--warmup", "5", "--compile", "--skip-notebook"], 150))
    if args.baseline:
        cases.append(("notebook-style fp32 (baseline)", ["--steps", "10", "--warmup", "2", "--workers", "8",
                                                          "--data-batches", "30"], 90))
    results = []
    for label, extra, limit in cases:
        left = BUDGET_S - (time.perf_counter() - start)
        if left < 30:
            results.append({"label": label, "error": "skipped: the 5-minute budget is spent"})
            continue
        results.append(run_case(label, extra, args, min(limit, left)))
    print(f"\n{args.model} @ {args.image_size}px, batch {args.batch_size}")
    print(f"{'case':34s} {'img/s':>9s} {'epoch of 16,200':>16s}")
    for r in results:
        if "error" in r:
            print(f"{r['label']:34s} {r['error']}")
            continue
        key = "notebook" if "notebook" in r and "baseline" in r["label"] else "project"
        ips = r[key]["img_per_s"]
        print(f"{r['label']:34s} {ips:9.0f} {EPOCH_IMAGES / ips:14.1f} s"
              f"{'   (goal >= %d img/s: %s)' % (GOAL, 'met' if ips >= GOAL else 'NOT met') if key == 'project' else ''}")
    if BUDGET_S - (time.perf_counter() - start) > 20:
        r = inference_rate(args.model, args.image_size, args.batch_size)
        print(f"{r['label']:34s} {r['img_per_s']:9.0f} img/s (forward only, batch {args.batch_size})")
    print(f"total {time.perf_counter() - start:.0f}s")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
