"""Offline against online distillation: a training step from the cache against one that runs the teacher.

On the same examples, in the same batches, with the same student, optimizer and loss (CE + 1.5 · ULD on the
teacher's top-k rows):

* offline, kdpipe's step: the next batch from ``BatchStream`` over the cache (the data path: reading and decoding
  rows, student tokenization and collation on the reader thread; the wait is timed), then the student forward,
  the loss, backward and AdamW;
* online, the step llm-recipes, TRL's GKD/GOLD and torchtune's KD recipe take: the teacher forward over the batch
  (``pipeline.teacher.rows.teacher_rows``: softmax over the full vocabulary and top-k on the device, exactly the
  rows the cache holds), then the same student step. Its tokens (teacher's and student's) are ready before its
  clock starts and the teacher keeps the stage's economies (left padding, ``logits_to_keep``), so the online figure
  is a lower bound of what those trainers pay.

The two steps are taken in turns, each side training its own copy of the same student, so a change of load on a
shared machine hits both alike.

Over E epochs and S students the online trainer pays its teacher E·S times; offline pays the cache once (the
stage's seconds for these examples after a two-batch warm-up run, model loading excluded on both sides) plus its
cheaper steps:

    offline = C + E·S·n·t_off,   online = E·S·n·t_on,   break-even E·S = C / (n · (t_on − t_off))

with n the steps of one epoch. The cache has paid for itself from that E·S on.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

import cache_schema
from pipeline.config import DEMO_MIXTURE, TeacherCacheConfig
from pipeline.losses.ce import causal_lm_ce
from pipeline.losses.uld import uld_loss
from pipeline.models import context_limit, load_model, pick_device
from pipeline.student.cache_stream import Batch, BatchStream, StudentEncoder
from pipeline.student.training import load_student
from pipeline.teacher.batches import teacher_text
from pipeline.teacher.rows import teacher_rows
from pipeline.text import TextEncoder, TextSpec

ULD_WEIGHT = 1.5  # the official recipe's λ


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="models/tiny-t5-teacher")
    parser.add_argument("--student", default="models/tiny-gpt2-student")
    parser.add_argument("--examples", type=int, default=192, help="Demo-mixture examples cached and trained on.")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12, help="Timed steps of each side (after 2 warm-up steps).")
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--cache-repeats", type=int, default=2, help="Cache runs; the fastest is the one-time cost.")
    return parser


def measure(args: argparse.Namespace) -> dict:
    """Both sides' ms/step (medians), the cache's one-time seconds and the break-even E·S."""
    device = pick_device(args.device)
    per_task = -(-args.examples // len(DEMO_MIXTURE))
    cfg = TeacherCacheConfig(
        teacher=args.teacher,
        tasks=dict.fromkeys(DEMO_MIXTURE, per_task),
        limit=args.examples,
        batch_size=args.batch_size,
        top_k=args.top_k,
        device=device.type,
        max_answer_tokens=64,
        store_ids=False,
        chunk_rows=1024,
        shard_rows=4096,
    )
    from stages import teacher_cache

    with tempfile.TemporaryDirectory() as tmp:
        # a first run over two batches warms kernels and thread pools, as a long cache run has them warm
        teacher_cache.run(replace(cfg, limit=2 * args.batch_size, out=str(Path(tmp) / "warm-up")))
        runs = [teacher_cache.run(replace(cfg, out=str(Path(tmp) / f"cache-{r}"))) for r in range(args.cache_repeats)]
        cached = min(runs, key=lambda run: run.seconds + run.prepare_seconds)  # the least disturbed run
        cache = cache_schema.open_cache(cached.path)
        student, tokenizer = load_student(args.student, None)
        student.to(device)
        encoder = StudentEncoder(
            TextEncoder(
                tokenizer, TextSpec("causal", 512, cfg.max_answer_tokens, "skip"), context_limit(student.config)
            )
        )
        teacher, teacher_tokenizer, info = load_model(args.teacher, device=device, role="teacher")
        text = teacher_text(cfg, teacher, teacher_tokenizer)
        offline_ms, online_ms = _interleaved(student, teacher, text, cache, encoder, cfg, args.steps + 2, device)
    steps_per_epoch = -(-len(cache) // args.batch_size)
    one_time = cached.seconds + cached.prepare_seconds
    saved = steps_per_epoch * (online_ms - offline_ms) / 1000  # seconds saved per epoch and student
    return {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "teacher": f"{args.teacher} ({info['architecture']})",
        "student": args.student,
        "examples": len(cache),
        "rows": cache.total_rows,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "offline_ms": offline_ms,
        "online_ms": online_ms,
        "ratio": online_ms / offline_ms,
        "cache_seconds": one_time,
        "cache_repeats": args.cache_repeats,
        "steps_per_epoch": steps_per_epoch,
        "break_even_epochs_x_students": one_time / saved if saved > 0 else float("inf"),
        "load_average": os.getloadavg()[0],
    }


def _step(student, optimizer, batch: Batch, autocast) -> None:
    with autocast:
        logits = student(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    loss = causal_lm_ce(logits, batch.labels) + ULD_WEIGHT * uld_loss(
        logits, batch.labels, batch.teacher_probs, batch.teacher_lengths
    )
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _interleaved(student, teacher, text: TextEncoder, cache, encoder, cfg, steps: int, device: torch.device):
    """Median ms of the offline and of the online step, taken in turns on the same batches (two warm-up steps left
    out), so a change of load on the machine hits both alike. Each side trains its own copy of the student."""
    online_student = copy.deepcopy(student)
    sides = [(s, torch.optim.AdamW(s.parameters(), lr=1e-4)) for s in (student, online_student)]
    for s, _ in sides:
        s.train()
    offline_ms, online_ms = [], []
    with BatchStream(cache, encoder, batch_size=cfg.batch_size, seed=0, shuffle_chunks=8) as stream:
        for _ in range(steps):
            _sync(device)
            start = time.perf_counter()  # offline: the wait for the stream's next batch, then the step
            host = next(stream)
            _step(*sides[0], host.to(device), _autocast(device))
            _sync(device)
            offline_ms.append(1000 * (time.perf_counter() - start))
            prompts, answers = teacher_tokens(text, cache, host)  # before the online clock starts
            batch = host.to(device)
            _sync(device)
            start = time.perf_counter()  # online: the teacher's rows of the same batch, then the same step
            probs, lengths = online_teacher_probs(teacher, text, prompts, answers, cfg, device)
            _step(*sides[1], replace(batch, teacher_probs=probs, teacher_lengths=lengths), _autocast(device))
            _sync(device)
            online_ms.append(1000 * (time.perf_counter() - start))
    return statistics.median(offline_ms[2:]), statistics.median(online_ms[2:])


def teacher_tokens(text: TextEncoder, cache, batch: Batch) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, answer ids) of a batch's examples under the teacher's text contract."""
    pairs = [
        text.encode(cache.examples["prompt"][i].as_py(), cache.examples["answer"][i].as_py()) for i in batch.indices
    ]
    return [p.prompt_ids for p in pairs], [p.answer_ids for p in pairs]


def online_teacher_probs(teacher, text: TextEncoder, prompts, answers, cfg, device: torch.device):
    """The teacher's top-k rows of a batch as a [B, Tt, k] tensor on ``device`` and their lengths [B]: what an online
    trainer computes in every step, and what the cache holds for the same examples."""
    rows = teacher_rows(
        teacher,
        text.pad,
        text.eos,
        prompts,
        answers,
        top_k=cfg.top_k,
        temperature=cfg.temperature,
        max_answer_tokens=cfg.max_answer_tokens,
        store_ids=False,
        device=device,
    )
    lengths = [len(a) for a in answers]
    probs = torch.zeros(len(answers), max(lengths), cfg.top_k, device=device)  # [B, Tt, k]
    for b, part in enumerate(torch.from_numpy(rows.probs).to(device).split(lengths)):
        probs[b, : len(part)] = part
    return probs, torch.tensor(lengths, device=device)


def report(result: dict) -> str:
    r = result
    return "\n".join(
        [
            f"device {r['device']}; teacher {r['teacher']}; student {r['student']}; {r['examples']} examples, "
            f"{r['rows']} teacher rows, batch {r['batch_size']}, median of {r['steps']} steps; "
            f"load average {r['load_average']:.2f}",
            f"offline step (cache, data path included): {r['offline_ms']:9.1f} ms/step",
            f"online step (teacher forward + same step): {r['online_ms']:9.1f} ms/step  "
            f"({r['ratio']:.2f}x the offline step)",
            f"cache, once: {r['cache_seconds']:.1f} s for {r['examples']} examples (fastest of {r['cache_repeats']}) "
            f"({r['steps_per_epoch']} steps an epoch)",
            f"break-even: E·S = {r['break_even_epochs_x_students']:.2f} (epochs x students; from there on the cache "
            "has paid for itself)",
        ]
    )


def main() -> None:
    print(report(measure(build_parser().parse_args())))


if __name__ == "__main__":
    main()
