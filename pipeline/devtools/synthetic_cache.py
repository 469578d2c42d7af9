"""Synthetic teacher caches for the tests and the benchmarks: one writer, the rows it draws, a forger of attrs.

Every synthetic cache goes through ``cache_schema.CacheWriter``, the writer the teacher-cache stage uses, so a
test or a benchmark reads a cache as the product writes it. Callers differ in what they need (how many rows per
example, the example text, top-k ids or not, the token layout, chunk sizes, finished or not); they say so with
``write_cache``'s arguments rather than each keeping its own copy of the loop.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import zarr

import cache_schema as cs

# The synthetic teacher's tokens: id 0 special (no bytes), the rest short ASCII, so every id a writer draws is in it.
TEACHER_VOCAB = [b"", *(f"t{i}".encode() for i in range(1, 500))]

Rows = Callable[[np.random.Generator, int, int], tuple[np.ndarray, np.ndarray]]  # (rng, rows, k) -> probs, tail
Text = Callable[[np.random.Generator, int, int], tuple[str, str, str]]  # (rng, example, rows) -> task, prompt, answer


def peaked_rows(
    rng: np.random.Generator, n: int, k: int, vocab: int = 512, peak: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` sorted top-``k`` rows of random peaked softmaxes over ``vocab``, and their tails (float32).

    Logits are N(0, 4), the first one raised by ``peak`` (drawn from U(2, 10) per row where None).
    """
    logits = rng.standard_normal((n, vocab)) * 2.0  # [n, vocab]
    logits[:, 0] += rng.uniform(2, 10, n) if peak is None else peak
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    top = -np.sort(-p, axis=1)[:, :k].astype(np.float32)  # [n, k]
    return top, (1.0 - top.sum(1, dtype=np.float64)).astype(np.float32)


def cache_identity(k: int = 8, **fields) -> dict:
    """Identity attrs of a synthetic cache with top-``k`` rows; ``fields`` replace the defaults of
    ``cache_schema.identity_attrs``' arguments (teacher, tokenizer_fingerprint, mixture, config...)."""
    defaults = {
        "teacher": {"id": "t"},
        "tokenizer_fingerprint": "f",
        "temperature": 1.0,
        "answers": "gold",
        "eos_token_id": 1,
        "mixture": {"tasks": {"a": 3}},
        "config": {"x": 1},
    }
    return cs.identity_attrs(top_k=k, **{**defaults, **fields})


def write_cache(
    path: str | os.PathLike,
    lengths: Sequence[int],
    text: Text,
    *,
    seed: int | np.random.Generator = 0,
    k: int = 8,
    identity: dict | None = None,
    rows: Rows = peaked_rows,
    commit_every: int | None = None,
    id_vocab: int | None = len(TEACHER_VOCAB),
    store_ids: bool = False,
    ids_k: int | None = None,
    token_layout: bool = False,
    chunk_rows: int = cs.DEFAULT_CHUNK_ROWS,
    shard_rows: int = cs.DEFAULT_SHARD_ROWS,
    finalize: bool = True,
    keep_rows: bool = True,
) -> dict[str, np.ndarray | list[str]]:
    """Write a cache of one example per entry of ``lengths`` (its row count); return the rows written.

    Examples are committed ``commit_every`` at a time (all at once where None), each commit one batch. Per
    commit, from ``seed`` (a generator is used as it stands, so a caller may draw ``lengths`` from it first):
    the rows (``rows(rng, rows, k)``), each example's ``text(rng, index, n_rows)`` in turn, the token ids (from
    [0, ``id_vocab``), zeros where None) and, where the cache stores them or has the token layout, top-k ids
    from [1, ``id_vocab``). With ``token_layout`` (TEACHER_VOCAB as the vocabulary) each row's token is its
    top-1, its label probability the top-1 probability, and row j of an example spans byte j of its answer
    (rows past the answer's end empty at it). The finished cache records per-task counts as the stage does.

    Returns the rows as drawn (before the cache's encoding): ``probs``, ``tail``, ``ids``, ``topk`` (where
    drawn), ``spans`` and ``label`` (token layout), and the examples' ``keys``; nothing but the keys where
    ``keep_rows`` is False (a benchmark's millions of rows).
    """
    if id_vocab is None and (store_ids or token_layout):
        raise ValueError("top-k ids (store_ids, token_layout) are drawn from [1, id_vocab): id_vocab is None")
    rng = np.random.default_rng(seed)
    lengths = [int(n) for n in lengths]
    writer = cs.CacheWriter(
        path,
        cache_identity(k) if identity is None else identity,
        max_rows=sum(lengths),
        store_ids=store_ids,
        ids_k=ids_k,
        chunk_rows=chunk_rows,
        shard_rows=shard_rows,
        vocab=TEACHER_VOCAB if token_layout else None,
    )
    step = commit_every or max(len(lengths), 1)
    written: dict[str, list] = {}
    keys = []
    for batch, first in enumerate(range(0, len(lengths), step)):
        group = lengths[first : first + step]
        probs, tail = rows(rng, sum(group), k)
        records = []
        for i, n in enumerate(group, start=first):
            task, prompt, answer = text(rng, i, n)
            records.append(
                {
                    "key": cs.example_key(task, 0, prompt, answer),  # as verify recomputes it
                    "task": task,
                    "template_id": 0,
                    "prompt": prompt,
                    "answer": answer,
                    "n_rows": n,
                }
            )
        n_rows = len(tail)
        ids = np.zeros(n_rows, np.int32) if id_vocab is None else rng.integers(0, id_vocab, n_rows).astype(np.int32)
        drawn = {"probs": probs, "tail": tail, "ids": ids}
        if store_ids or token_layout:
            drawn["topk"] = rng.integers(1, id_vocab, (n_rows, k)).astype(np.int32)
        token_rows = {}
        if token_layout:  # each row's token among its top-k (the first), as the token-aware losses look it up
            drawn["ids"] = drawn["topk"][:, 0].copy()
            token_rows = {"spans": _byte_spans(records), "label_probs": probs[:, 0].copy()}
            drawn |= {"spans": token_rows["spans"], "label": token_rows["label_probs"]}
        topk = drawn["topk"] if store_ids else None
        writer.commit(batch, batch + 1, records, probs, tail, drawn["ids"], topk, **token_rows)
        keys += [r["key"] for r in records]
        if keep_rows:
            for name, array in drawn.items():
                written.setdefault(name, []).append(array)
    if finalize:
        writer.finalize(cs.counts_attrs(writer.examples, writer.rows, writer.per_task_counts(), {}, {}))
    return {**{name: np.concatenate(arrays) for name, arrays in written.items()}, "keys": keys}


def _byte_spans(records: list[dict]) -> np.ndarray:
    """[rows, 2] byte [start, end) of each row: row j of an example covers byte j of its answer, then nothing."""
    spans = []
    for r in records:
        ends = np.minimum(np.arange(1, r["n_rows"] + 1), len(r["answer"].encode()))
        spans.append(np.stack([np.concatenate([[0], ends[:-1]]), ends], axis=1))
    return np.concatenate(spans)


def forge_attrs(path: str | os.PathLike, **changes) -> None:
    """Edit group attributes as a forger would (a key set to None is removed), the attrs digest made to match.

    The checksums stay as they are: they cover the files, which this leaves untouched."""
    group = zarr.open_group(zarr.storage.LocalStore(path), mode="r+")
    attrs = {key: value for key, value in {**group.attrs.asdict(), **changes}.items() if value is not None}
    attrs[cs.ATTR_DIGEST] = cs.attrs_digest(attrs)
    group.attrs.put(attrs)
