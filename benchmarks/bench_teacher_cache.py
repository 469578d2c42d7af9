"""Answer rows per second of the whole teacher-cache stage next to the bare teacher forward on the same batches.

    .venv/bin/python benchmarks/bench_teacher_cache.py [--teacher models/tiny-t5-teacher] [--examples 960]
        [--batch-size 32] [--device auto] [--quantize none|nf4]

The stage figure covers everything after the model is loaded: mixture, tokenization, length bucketing, the
forward, softmax and top-k on the device, the copy to the host, encoding and writing (background thread),
finalize with checksums. The bare figure is the teacher forward over the same padded batches, with
softmax and top-k on the device, synchronised (the issue's reference figures include them). Target: stage ≥ 90 %
of bare.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from pipeline.config import TeacherCacheConfig
from pipeline.models import load_model, pick_device
from pipeline.tasks import build_mixture
from pipeline.teacher import rows as teacher_rows
from stages import teacher_cache
from stages.teacher_cache import _plan_batches, _teacher_text, _tokenize


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def bare_forward(cfg: TeacherCacheConfig, device: torch.device, repeats: int) -> tuple[float, int]:
    """Seconds per pass and rows of the teacher forward alone over the stage's own batch plan."""
    model, tok, _ = load_model(cfg.teacher, quantize=cfg.quantize, device=device)
    mixture = build_mixture(cfg.tasks, split=cfg.split, data_dir=None, seed=cfg.seed)
    prepared, _, _ = _tokenize(mixture.examples[: cfg.limit], _teacher_text(cfg, model, tok), cfg)
    plan = _plan_batches(prepared, cfg.batch_size, cfg.seed)
    batches = []
    for batch in plan:
        items = [prepared[i] for i in batch]
        batches.append(
            (
                teacher_rows.pad([it.prompt_ids for it in items], tok.pad_token_id).to(device),
                teacher_rows.mask([it.prompt_ids for it in items]).to(device),
                teacher_rows.pad([it.answer_ids for it in items], -100).to(device),
            )
        )
    rows = sum(int((labels != -100).sum()) for *_, labels in batches)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for input_ids, mask, labels in batches:
            logits = model(input_ids=input_ids, attention_mask=mask, labels=labels).logits
            torch.softmax(logits[labels != -100].float() / cfg.temperature, -1).topk(cfg.top_k, -1)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best, rows


def stage(cfg: TeacherCacheConfig, repeats: int) -> tuple[float, int]:
    """Seconds of the whole stage after model loading (best of ``repeats`` fresh caches), and its rows."""
    best, rows = float("inf"), 0
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            result = teacher_cache.run(replace(cfg, out=str(Path(tmp) / "cache")))
            best, rows = min(best, result.prepare_seconds + result.seconds), result.rows
    return best, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="models/tiny-t5-teacher")
    parser.add_argument("--examples", type=int, default=960)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--quantize", default="none", choices=("none", "nf4", "int8"))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    per_task = -(-args.examples // 6)
    cfg = TeacherCacheConfig(
        teacher=args.teacher,
        batch_size=args.batch_size,
        top_k=args.top_k,
        device=args.device,
        quantize=args.quantize,
        limit=args.examples,
        tasks={k: per_task for k in TeacherCacheConfig().tasks},
        max_answer_tokens=64,
    )
    cfg = replace(cfg, chunk_rows=4096, shard_rows=65536)
    device = pick_device(args.device)
    bare_s, bare_rows = bare_forward(cfg, device, args.repeats)
    stage_s, stage_rows = stage(cfg, args.repeats)
    assert bare_rows == stage_rows, (bare_rows, stage_rows)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"device: {name}; teacher {args.teacher} ({args.quantize}); {args.examples} examples, {stage_rows} rows, "
        f"batch {args.batch_size}, k {args.top_k}"
    )
    print(f"bare forward: {bare_rows / bare_s:,.0f} rows/s")
    print(f"whole stage:  {stage_rows / stage_s:,.0f} rows/s  ({100 * bare_s / stage_s:.0f} % of bare; target ≥ 90 %)")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
