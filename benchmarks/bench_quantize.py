"""Teacher-cache rows/s and memory of a teacher unquantized, in int8 and in NF4, and what each costs its rows.

    .venv/bin/python benchmarks/bench_quantize.py [--teacher models/tiny-t5-teacher] [--examples 192]
        [--batch-size 16] [--top-k 64] [--device cpu] [--modes none,int8,nf4]

Each mode runs in a process of its own (so its peak memory is its own): a first teacher-cache run over two batches
(its model loading is the load figure, and it warms kernels and thread pools), then the stage over the demo-mixture
examples, the same for every mode. Reported: rows/s of that stage's teacher loop (forward, softmax, top-k,
writing; model loading excluded), seconds to load the teacher, peak resident memory of the process, the size of
the loaded weights, and, against the unquantized cache, the top-1 agreement and mean L1 of the sorted top-k rows
(``pipeline.teacher.compare.row_distance``, what ``teacher-cache --compare-unquantized`` reports).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def _config(args, quantize: str, out: str):
    from pipeline.config import DEMO_MIXTURE, TeacherCacheConfig

    per_task = -(-args.examples // len(DEMO_MIXTURE))
    return TeacherCacheConfig(
        teacher=args.teacher,
        tasks=dict.fromkeys(DEMO_MIXTURE, per_task),
        limit=args.examples,
        batch_size=args.batch_size,
        top_k=args.top_k,
        quantize=quantize,
        device=args.device,
        max_answer_tokens=64,
        chunk_rows=4096,
        shard_rows=65536,
        out=out,
    )


def _peak_rss_mb() -> float:
    """VmHWM: this process's peak resident memory (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(args) -> None:
    """One mode: the stage, then (after its peak is read) the size of the loaded weights."""
    import torch

    from pipeline.models import load_model, pick_device
    from stages import teacher_cache

    warm = _config(args, args.child, args.out + "-warm-up")  # kernels and thread pools, as in a long run
    start = time.perf_counter()
    first = teacher_cache.run(replace(warm, limit=2 * args.batch_size))
    load_s = time.perf_counter() - start - first.seconds - first.prepare_seconds
    result = teacher_cache.run(_config(args, args.child, args.out))
    peak = _peak_rss_mb()
    model, _, info = load_model(args.teacher, quantize=args.child, device=pick_device(args.device))
    figures = {
        "mode": args.child,
        "rows": result.rows,
        "rows_s": result.rows / result.seconds,
        "load_s": load_s,
        "peak_rss_mb": peak,
        "weights_mb": model.get_memory_footprint() / 2**20,
        "recorded": info["quantization"],
        "threads": torch.get_num_threads(),
    }
    print("RESULT " + json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="models/tiny-t5-teacher")
    parser.add_argument("--examples", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--modes", default="none,int8,nf4")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    import cache_schema
    from pipeline.teacher.compare import row_distance

    modes = args.modes.split(",")
    if "none" not in modes:
        modes.insert(0, "none")  # the reference every other mode is compared with
    results, rows = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in modes:
            out = str(Path(tmp) / mode)
            command = [sys.executable, __file__, *sys.argv[1:], "--child", mode, "--out", out]
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            if done.returncode or not line:
                sys.exit(f"{mode}: {(done.stderr.strip().splitlines() or ['no result'])[-1]}")
            results[mode] = json.loads(line[0].removeprefix("RESULT "))
            cache = cache_schema.open_cache(out)
            probs, _, _, ids = cache.read_rows(0, cache.total_rows)
            rows[mode] = (np.asarray(probs), np.asarray(ids))
    first = results[modes[0]]
    print(
        f"teacher {args.teacher} on {args.device} ({first['threads']} threads), {args.examples} demo examples, "
        f"{first['rows']} rows, batch {args.batch_size}, top-{args.top_k}; load average {os.getloadavg()[0]:.2f}"
    )
    print("| mode | rows/s | load s | peak RSS MB | weights MB | top-1 agreement | mean L1 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode in modes:
        r = results[mode]
        agreement, l1 = row_distance(*rows[mode], *rows["none"])
        print(
            f"| {r['recorded']} | {r['rows_s']:,.0f} | {r['load_s']:.1f} | {r['peak_rss_mb']:,.0f} | "
            f"{r['weights_mb']:,.2f} | {100 * agreement:.1f} % | {l1:.4f} |"
        )


if __name__ == "__main__":
    main()
