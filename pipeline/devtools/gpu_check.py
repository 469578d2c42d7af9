"""``kdpipe gpu-check``: one command that runs the GPU paths on the embedded default and prints one JSON summary.

On any CUDA machine, offline, in a few minutes:

1. teacher-cache of the embedded teacher in NF4 (bitsandbytes 4-bit, bf16 compute) and, for comparison,
   unquantized in bf16: teacher rows/s, and how far the NF4 rows are from the bf16 ones (mean L1 between the
   sorted top-k rows, agreement of the top-1 token). bitsandbytes quantizes each weight in blocks of 64
   values of the flattened matrix, so the tiny teacher's 96-wide layers are quantized like a large model's;
   its output head is left in bf16 by transformers, as for FLAN-T5-XXL;
2. a short bf16 distill of the embedded student from the NF4 cache: tokens/s, peak GPU memory, and the
   fraction of step time spent waiting for data;
3. ``pipeline.devtools.benchmarks.uld``: the top-k ULD against a full vocabulary sort (forward + backward);
4. ``pipeline.devtools.benchmarks.step``: the ULD share of a GPT-2-medium training step (CE alone vs CE + top-k ULD);
5. ``pipeline.devtools.benchmarks.data_path``: decode and delivery rates of a synthetic cache;
6. ``pipeline.devtools.benchmarks.offline_online``: kdpipe's training step from the cache against an online step
   that runs the teacher on the same batches (same student and loss), and the break-even epochs x students.

The benchmarks ship in the package (``benchmarks/bench_*.py`` are their command-line wrappers), so an installed
kdpipe runs this too. Without a CUDA device the command stops at once with a one-line error.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import DEMO_MIXTURE, DistillConfig, GpuCheckConfig, TeacherCacheConfig

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"


class GpuCheckError(RuntimeError):
    """gpu-check cannot run here; the message says why."""


def run(cfg: GpuCheckConfig) -> dict:
    """Measure on the first CUDA device; returns the summary (also written to ``out/summary.json``)."""
    import torch  # here, not at the top: importing this module stays light

    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise GpuCheckError(
            f"gpu-check needs a CUDA device and this machine has none (torch {torch.__version__}, {build})"
        )
    return measure(cfg, torch.device("cuda"), quantize="nf4", precision="bf16")


def measure(cfg: GpuCheckConfig, device: torch.device, *, quantize: str, precision: str) -> dict:
    """All figures on ``device``; ``run`` uses CUDA, NF4 and bf16 (tests use the CPU, none and fp32)."""
    import torch

    from pipeline.devtools.benchmarks import data_path, offline_online, step, uld

    benches = {"bench_uld": uld, "bench_step": step, "bench_data_path": data_path}
    out = Path(cfg.out)
    for name in ("cache-quantized", "cache-reference", "student", "data"):
        shutil.rmtree(out / name, ignore_errors=True)  # fresh figures: nothing resumed from an earlier check
    out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    teacher = _teacher(cfg, out, device, quantize)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    distill = _distill(cfg, out, device, precision, benches["bench_data_path"])
    if device.type == "cuda":
        distill["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    uld = _uld(cfg, device, precision, benches["bench_uld"], benches["bench_step"])
    data = _data_path(cfg, out, benches["bench_data_path"])
    online = _offline_online(cfg, device, offline_online)
    summary = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "teacher_rows_s": teacher["rows_s"],
        "distill_tokens_s": distill["tokens_s"],
        "peak_gpu_memory_gib": distill.get("peak_gpu_memory_gib"),
        "uld_share_of_step": uld["share_of_step"],
        "data_wait_fraction": distill["data_wait"],
        "online_over_offline_step": online["ratio"],
        "details": {
            "teacher_cache": teacher,
            "distill": distill,
            "uld": uld,
            "data_path": data,
            "offline_online": online,
            "versions": _versions(),
            "seconds": round(time.monotonic() - began, 1),
        },
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return summary


def _demo_tasks(examples: int) -> dict[str, int]:
    per_task = max(1, examples // len(DEMO_MIXTURE))
    return dict.fromkeys(DEMO_MIXTURE, per_task)


def _teacher(cfg: GpuCheckConfig, out: Path, device: torch.device, quantize: str) -> dict:
    """Teacher-cache rows/s in ``quantize`` and unquantized, and how close the two caches' rows are."""
    from stages import teacher_cache

    base = TeacherCacheConfig(
        teacher=cfg.teacher,
        tasks=_demo_tasks(cfg.examples),
        quantize=quantize,
        device=device.type,
        store_ids=True,  # top-1 agreement between the two caches
        max_prompt_tokens=256,
        max_answer_tokens=48,
        chunk_rows=1024,
        shard_rows=4096,
    )
    quantized = teacher_cache.run(dataclasses.replace(base, out=str(out / "cache-quantized")))
    reference = teacher_cache.run(dataclasses.replace(base, quantize="none", out=str(out / "cache-reference")))
    l1, top1 = _compare_caches(out / "cache-quantized", out / "cache-reference")
    return {
        "quantization": quantize,
        "rows": quantized.rows,
        "rows_s": round(quantized.rows / quantized.seconds, 1),
        "unquantized_rows_s": round(reference.rows / reference.seconds, 1),
        "l1_vs_unquantized": round(l1, 5),
        "top1_agreement_vs_unquantized": round(top1, 4),
    }


def _compare_caches(a: Path, b: Path) -> tuple[float, float]:
    """Mean L1 distance between the sorted top-k rows of two caches of the same examples, and top-1 agreement."""
    import cache_schema
    from pipeline.teacher.compare import row_distance

    first, second = cache_schema.open_cache(a), cache_schema.open_cache(b)
    if first.total_rows != second.total_rows:
        raise GpuCheckError(f"gpu-check: {a} has {first.total_rows} rows and {b} {second.total_rows}")
    probs_a, _, _, ids_a = first.read_rows(0, first.total_rows)  # [R, k]
    probs_b, _, _, ids_b = second.read_rows(0, second.total_rows)  # [R, k]
    top1, l1 = row_distance(probs_a, ids_a, probs_b, ids_b)
    return l1, top1


def _distill(cfg: GpuCheckConfig, out: Path, device: torch.device, precision: str, bench_data_path) -> dict:
    from pipeline.student import training
    from stages import distill

    config = DistillConfig(
        student=cfg.student,
        steps=cfg.distill_steps,
        batch_size=16,
        lr=2e-3,
        device=device.type,
        precision=precision,
        max_prompt_tokens=256,
        max_answer_tokens=64,
        checkpoint_every=0,
        cache=str(out / "cache-quantized"),
        out=str(out / "student"),
    )
    result = distill.run(config)
    rows = training.read_metrics(out / "student" / distill.METRICS_FILE)
    steady = rows[1:] or rows  # the first step also loads the reader's first groups and warms up kernels
    wait = bench_data_path.data_wait(out / "student" / distill.METRICS_FILE)
    return {
        "precision": precision,
        "steps": result.steps,
        "tokens_s": round(statistics.median(r["tokens_s"] for r in steady), 1),
        "step_ms": round(1000 * statistics.median(r["step_s"] for r in steady), 2),
        "data_wait": round(wait["time_weighted"], 4),
        "final_loss": result.final.get("loss"),
    }


def _uld(cfg: GpuCheckConfig, device: torch.device, precision: str, bench_uld, bench_step) -> dict:
    """The top-k ULD against a full sort, and its share of a training step (CE vs CE + top-k ULD)."""
    dtype = "bfloat16" if precision == "bf16" else "float32"
    args = bench_uld.build_parser().parse_args(
        ["--device", str(device), "--dtype", dtype, "--vocab", str(cfg.bench_vocab)]
    )
    loss = bench_uld.measure(args)
    top_k, full_sort = (statistics.median(ms) for ms in loss["times"].values())
    config, batch, seq, answer = bench_step.shapes(cfg.bench_medium)
    config.vocab_size = cfg.bench_vocab
    steps = bench_step.measure(device, config, batch, seq, answer, k=64, steps=5, rounds=cfg.bench_rounds)
    return {
        "topk_uld_ms": round(top_k, 3),
        "full_sort_uld_ms": round(full_sort, 3),
        "speedup": round(full_sort / top_k, 2),
        "step_ms_ce": round(steps["ce"], 2),
        "step_ms_ce_topk_uld": round(steps["topk"], 2),
        "share_of_step": round(max(steps["topk"] - steps["ce"], 0.0) / steps["topk"], 4),
        "step_shapes": f"GPT-2 {config.n_layer}x{config.n_embd}, vocab {config.vocab_size}, {batch}x{seq} tokens",
    }


def _data_path(cfg: GpuCheckConfig, out: Path, bench) -> dict:
    from transformers import AutoTokenizer

    import cache_schema

    path = out / "data" / "cache"
    rows, _ = bench.write_synthetic(path, cfg.data_rows, 64)
    cache = cache_schema.open_cache(path)
    decode = bench.bench_decode(cache)
    delivered = bench.bench_delivery(cache, AutoTokenizer.from_pretrained(cfg.student), 16, 8)
    shutil.rmtree(out / "data", ignore_errors=True)
    return {
        "rows": rows,
        "decode_rows_s": round(decode, 1),
        "delivered_rows_s": round(delivered["rows_s"], 1),
        "delivered_examples_s": round(delivered["examples_s"], 1),
    }


def _offline_online(cfg: GpuCheckConfig, device: torch.device, bench) -> dict:
    """ms/step offline and online on the same batches, their ratio and the break-even epochs x students."""
    args = bench.build_parser().parse_args(
        ["--teacher", cfg.teacher, "--student", cfg.student, "--examples", str(cfg.online_examples)]
        + ["--steps", str(cfg.online_steps), "--device", device.type]
    )
    result = bench.measure(args)
    keep = ("offline_ms", "online_ms", "ratio", "cache_seconds", "steps_per_epoch", "break_even_epochs_x_students")
    return {k: round(result[k], 4) if isinstance(result[k], float) else result[k] for k in keep}


def _versions() -> dict:
    import torch

    versions = {"torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import bitsandbytes

        versions["bitsandbytes"] = bitsandbytes.__version__
    except ImportError:
        versions["bitsandbytes"] = None
    return versions
