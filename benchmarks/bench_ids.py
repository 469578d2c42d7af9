"""What the top-k ids of a real cache cost, and what keeping fewer of them would save.

    .venv/bin/python benchmarks/bench_ids.py runs/real-teacher/cache

Reads a cache that stores every id (schema v1.1) and prints, per row: the ids' bytes under the cache's codec
and under stronger ones, on chunks of the cache's own chunk size; the order-0 entropy of the ids at each rank
(what an ideal coder of each rank's frequencies would need; with fewer rows than distinct ids it is an
underestimate); and, for the first N entries of each row, the share of the stored top-k mass they hold and the
bytes their ids take (what ``teacher-cache --ids-k N`` keeps).
"""

from __future__ import annotations

import argparse

import numpy as np
from numcodecs import Blosc, Zstd

import cache_schema as cs


def bytes_per_row(ids: np.ndarray, codec, chunk_rows: int) -> float:
    """Compressed bytes per row of ``ids`` [n, j], encoded chunk by chunk."""
    total = sum(
        len(codec.encode(np.ascontiguousarray(ids[s : s + chunk_rows]))) for s in range(0, len(ids), chunk_rows)
    )
    return total / len(ids)


def rank_entropy_bytes(ids: np.ndarray) -> float:
    """Sum over ranks of the order-0 entropy of the ids at that rank, in bytes per row."""
    bits = 0.0
    for column in ids.T:
        _, counts = np.unique(column, return_counts=True)
        p = counts / counts.sum()
        bits += float(-(p * np.log2(p)).sum())
    return bits / 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache")
    args = parser.parse_args()
    cache = cs.open_cache(args.cache)
    if not cache.has_topk_ids or cache.ids_k < cache.top_k:
        raise SystemExit(f"{args.cache}: needs a cache that stores every top-k id (written without --ids-k)")
    probs, _, _, ids = cache.read_rows(0, cache.total_rows)
    chunk = cache.chunk_rows
    print(f"{args.cache}: {cache.total_rows} rows, k = {cache.top_k}, chunks of {chunk} rows")
    codecs = {
        "blosc zstd 5 shuffle (the cache's)": Blosc("zstd", 5, Blosc.SHUFFLE),
        "blosc zstd 9 shuffle": Blosc("zstd", 9, Blosc.SHUFFLE),
        "blosc zstd 5 bitshuffle": Blosc("zstd", 5, Blosc.BITSHUFFLE),
        "zstd 22, as uint16": Zstd(22),
    }
    for name, codec in codecs.items():
        values = ids.astype(np.uint16) if "uint16" in name else ids
        print(f"  all ids, {name:<36} {bytes_per_row(values, codec, chunk):6.1f} B/row")
    print(f"  all ids, ideal coder of each rank's frequencies   {rank_entropy_bytes(ids):6.1f} B/row")
    total = np.maximum(probs.sum(axis=1), 1e-12)  # [n]
    for n in sorted({8, 16, 32, 48, cache.top_k} & set(range(1, cache.top_k + 1))):
        share = float((probs[:, :n].sum(axis=1) / total).mean())
        size = bytes_per_row(ids[:, :n], codecs["blosc zstd 5 shuffle (the cache's)"], chunk)
        print(f"  first {n:>3} entries: {100 * share:5.2f} % of the top-k mass, ids {size:6.1f} B/row")


if __name__ == "__main__":
    main()
