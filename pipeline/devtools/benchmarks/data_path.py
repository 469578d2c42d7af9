"""Data-path speed: teacher rows decoded and delivered to the training loop, and the loader's memory.

Writes a synthetic cache of ``--rows`` rows (default 1M, k = 64, realistic peaked distributions, the
default chunk and shard sizes) with ``pipeline.devtools.synthetic_cache`` into a temporary directory, then measures

* raw decode: ``Cache.read_rows`` over every chunk, rows/s;
* delivered: one epoch through ``pipeline.student.cache_stream.BatchStream`` exactly as distill uses it (student
  tokenization, collation, teacher rows padded into [B, Tt, k]), rows/s and examples/s, with the process RSS
  sampled every 10 % of the epoch (it must stay flat: memory does not grow with the rows read);
* the fraction of step time the demo distill run spent waiting for data, from its metrics.jsonl.

    PYTHONPATH=. python benchmarks/bench_data_path.py [--rows 1000000] [--metrics runs/demo/demo-regime1/metrics.jsonl]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from transformers import AutoTokenizer

import cache_schema as cs
from pipeline.devtools import synthetic_cache
from pipeline.student.cache_stream import BatchStream, StudentEncoder
from pipeline.text import TextEncoder, TextSpec

WORDS = [
    "question",
    "answer",
    "passage",
    "premise",
    "summary",
    "the",
    "a",
    "of",
    "in",
    "is",
    "was",
    "which",
    "who",
    "what",
    "when",
    "river",
    "city",
    "music",
    "science",
    "history",
    "game",
    "team",
    "film",
    "book",
    "water",
]
VOCAB = 32000  # the teacher vocabulary the synthetic distributions are drawn over (FLAN-T5: 32k)


def zipf_rows(rng: np.random.Generator, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k sorted rows like a trained LM's: a top token holding most of the mass, a Zipf tail over VOCAB.

    Closed form, not a softmax over VOCAB logits (as ``synthetic_cache.peaked_rows`` draws): a million rows of
    32k logits would not fit in memory."""
    top1 = rng.beta(2.0, 0.6, n)  # mostly confident, sometimes not
    exponent = rng.uniform(1.05, 2.0, n)
    ranks = np.arange(2, k + 1, dtype=np.float64)
    zipf = ranks[None, :] ** -exponent[:, None]  # [n, k-1]
    # share of ranks 2..k in the Zipf mass of ranks 2..VOCAB (closed-form tail approximation)
    tail_mass = (k + 0.5) ** (1 - exponent) / (exponent - 1)
    rest = (1 - top1)[:, None] * zipf / (zipf.sum(1) + tail_mass)[:, None]
    probs = np.concatenate([top1[:, None], rest], axis=1)
    probs = -np.sort(-probs, axis=1).astype(np.float32)
    return probs, (1.0 - probs.sum(1, dtype=np.float64)).clip(0).astype(np.float32)


def write_synthetic(path: Path, rows: int, k: int, seed: int = 0) -> tuple[int, float]:
    """A finished cache of about ``rows`` rows (examples of 4-36 rows); the rows written and the seconds taken."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, 37, rows // 10)  # mean 20 rows per example
    lengths = lengths[: np.searchsorted(np.cumsum(lengths), rows) + 1]

    def text(rng: np.random.Generator, i: int, n: int) -> tuple[str, str, str]:
        return "synthetic", " ".join(rng.choice(WORDS, int(rng.integers(20, 80)))), " ".join(rng.choice(WORDS, n - 1))

    identity = synthetic_cache.cache_identity(
        k, teacher={"id": "synthetic"}, tokenizer_fingerprint="-", mixture={"synthetic": rows}, config={}
    )
    start = time.perf_counter()
    synthetic_cache.write_cache(
        path,
        lengths,
        text,
        seed=rng,
        k=k,
        identity=identity,
        rows=zipf_rows,
        commit_every=2000,
        id_vocab=VOCAB,
        keep_rows=False,  # a million rows held would weigh on the RSS this benchmark reports
    )
    return int(lengths.sum()), time.perf_counter() - start


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def bench_decode(cache: cs.Cache) -> float:
    start = time.perf_counter()
    for lo, hi in cache.iter_chunks():
        cache.read_rows(lo, hi)
    return cache.total_rows / (time.perf_counter() - start)


def bench_delivery(cache: cs.Cache, tokenizer, batch_size: int, shuffle_chunks: int) -> dict:
    encoder = StudentEncoder(TextEncoder(tokenizer, TextSpec("causal", 512, 128, "cut")))
    n_batches = len(cache) // batch_size
    rows = examples = 0
    samples = [(0, round(rss_mib()))]
    start = time.perf_counter()
    with BatchStream(cache, encoder, batch_size=batch_size, seed=0, shuffle_chunks=shuffle_chunks) as stream:
        for i in range(n_batches):
            batch = next(stream)
            rows += int(batch.teacher_lengths.sum())
            examples += len(batch.indices)
            if (i + 1) % max(n_batches // 10, 1) == 0:
                samples.append((rows, round(rss_mib())))
        stats = stream.stats
    seconds = time.perf_counter() - start
    return {
        "rows_s": rows / seconds,
        "examples_s": examples / seconds,
        "seconds": seconds,
        "rows": rows,
        "rss": samples,
        "max_group_rows": stats.max_group_rows,
    }


def data_wait(path: Path) -> dict | None:
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    steady = rows[1:] or rows  # the first step also waits for the reader's first group
    waited = sum(r["data_wait"] * r["step_s"] for r in steady)
    return {
        "steps": len(rows),
        "time_weighted": waited / sum(r["step_s"] for r in steady),
        "median": statistics.median(r["data_wait"] for r in steady),
        "p95": float(np.percentile([r["data_wait"] for r in steady], 95)),
        "first_step": rows[0]["data_wait"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--shuffle-chunks", type=int, default=8)
    parser.add_argument("--tokenizer", default="models/tiny-gpt2-student", help="Student tokenizer (dir or hub id).")
    parser.add_argument("--metrics", type=Path, default=Path("runs/demo/demo-regime1/metrics.jsonl"))
    parser.add_argument("--dir", type=Path, default=None, help="Where to write the cache (default: a temp dir).")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows, seconds = write_synthetic(Path(tmp) / "cache", args.rows, args.k)
        cache = cs.open_cache(Path(tmp) / "cache")
        size = sum(p.stat().st_size for p in (Path(tmp) / "cache").rglob("*") if p.is_file())
        print(
            f"synthetic cache: {len(cache)} examples, {rows} rows, k={args.k}, chunk {cache.chunk_rows} rows, "
            f"{size / 2**20:.1f} MiB ({size / rows:.1f} B/row); written in {seconds:.1f} s"
        )
        print(f"raw decode (read_rows per chunk):  {bench_decode(cache):,.0f} rows/s")
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        result = bench_delivery(cache, tokenizer, args.batch_size, args.shuffle_chunks)
        print(
            f"delivered to the training loop:    {result['rows_s']:,.0f} rows/s, {result['examples_s']:,.0f} "
            f"examples/s (batch {args.batch_size}, one epoch in {result['seconds']:.1f} s)"
        )
        print(
            f"largest group read: {result['max_group_rows']} rows; RSS (MiB) vs rows delivered: "
            + ", ".join(f"{r // 1000}k:{m}" for r, m in result["rss"])
        )
    wait = data_wait(args.metrics)
    if wait is None:
        print(f"{args.metrics}: absent (run `make demo` for the data-wait figure)")
    else:
        print(
            f"data wait in {args.metrics} ({wait['steps']} steps): {100 * wait['time_weighted']:.2f} % of step "
            f"time (median {100 * wait['median']:.2f} %, p95 {100 * wait['p95']:.2f} %; first step "
            f"{100 * wait['first_step']:.1f} %, excluded)"
        )


if __name__ == "__main__":
    main()
