"""Joining the parts written by several teacher-cache workers into one cache.

Worker ``i`` of ``n`` computes the global batches ``i, i + n, i + 2n, ...`` of the one batch plan and records
how many examples each holds (ATTR_BATCH_EXAMPLES). Merging visits the global batches in plan order and
copies each one's examples and rows (still encoded) from its part, so the merged cache is the cache a single
worker would have written: the same examples.parquet and the same rows in the same order. Merging writes
through CacheWriter, so it goes to any store and resumes after a kill like teacher-cache does.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
from tqdm import tqdm

from cache_schema.reader import Cache, open_cache
from cache_schema.spec import (
    ATTR_BATCH_EXAMPLES,
    ATTR_COUNTS,
    ATTR_DIGEST,
    ATTR_LAYOUT,
    ATTR_MERGED,
    ATTR_MIXTURE,
    ATTR_VERSION,
    ATTR_WORKER,
    GROUP_META_FILE,
    IDENTITY_ATTRS,
    LABEL_PROBS,
    PROBS,
    SCHEMA_VERSION,
    SPANS,
    TAIL,
    TOKEN_IDS,
    TOPK_IDS,
    WORKER_PART,
    CacheError,
    changed_files,
    counts_attrs,
)
from cache_schema.store import filesystem, join, storage_errors
from cache_schema.writer import CacheComplete, CacheWriter

_PART_NAME = re.compile(WORKER_PART.format(index=r"\d+", count=r"\d+"))


def find_parts(paths: list[str]) -> list[str]:
    """The part caches named by ``paths``: each is a part, or a folder holding ``worker-I-of-N`` parts."""
    found = []
    for path in map(os.fspath, paths):
        fs, root = filesystem(path)
        if fs.exists(join(root, GROUP_META_FILE)):
            found.append(path)
            continue
        names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)) if fs.isdir(root) else []
        parts = [f"{path.rstrip('/')}/{name}" for name in names if _PART_NAME.fullmatch(name)]
        if not parts:
            raise CacheError(f"{path}: neither a cache nor a folder of worker parts ({WORKER_PART})")
        found += parts
    return found


@storage_errors
def merge_parts(paths: list[str], out: str | os.PathLike, *, progress: bool = True) -> dict:
    """Merge the worker parts named by ``paths`` (see :func:`find_parts`) into the cache ``out``."""
    out = os.fspath(out)
    found = find_parts(paths)
    for part in found:
        if _same_place(part, out):
            raise CacheError(
                f"{out}: is one of the parts being merged (the last argument is the cache to write: "
                f"kdpipe cache merge {' '.join(map(os.fspath, paths))} MERGED)"
            )
    parts = _check_parts([open_cache(p) for p in found])
    first = parts[0]
    layout = first.meta[ATTR_LAYOUT]
    if first.meta[ATTR_VERSION] != SCHEMA_VERSION:  # the merged cache would carry the parts' rows under another
        raise CacheError(
            f"{first.path}: a v{first.meta[ATTR_VERSION]} part, and this kdpipe writes v{SCHEMA_VERSION} caches; "
            "merge the parts with the kdpipe that wrote them"
        )
    try:
        writer = CacheWriter(
            out,
            {key: first.meta[key] for key in IDENTITY_ATTRS if key in first.meta},  # ATTR_TEXT: not in old caches
            max_rows=sum(p.total_rows for p in parts),
            store_ids=layout["store_ids"],
            ids_k=first.ids_k or None,
            chunk_rows=layout["chunk_rows"],
            shard_rows=layout["shard_rows"],
            vocab=first.teacher_vocab() if first.has_token_spans else None,
        )
    except CacheComplete:
        return {"path": out, "parts": len(parts), "already_complete": True}
    plan = _plan(parts)
    with tqdm(total=len(plan), initial=writer.next_batch, desc="merge", unit="batch", disable=not progress) as bar:
        start = writer.next_batch
        while start < len(plan):
            stop, rows = start, 0
            while stop < len(plan) and rows < layout["shard_rows"]:  # commit about a shard at a time
                p, e0, e1 = plan[stop]
                rows += int(parts[p].n_rows[e0:e1].sum())
                stop += 1
            _commit(writer, parts, plan, start, stop)
            bar.update(stop - start)
            start = stop
    writer.finalize({**_counts(writer, parts), ATTR_MERGED: {"parts": len(parts), "attrs_digests": _digests(parts)}})
    return {"path": out, "parts": len(parts), "examples": writer.examples, "rows": writer.rows}


def _same_place(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return os.path.realpath(a) == os.path.realpath(b)


def _check_worker(part: Cache) -> None:
    """The part's worker record and batch sizes as a worker writes them, so that the plan they describe is no
    longer than the part's own examples: every batch holds at least one (a forged plan of millions of empty
    batches would be walked one by one)."""
    worker = part.meta.get(ATTR_WORKER)
    if not isinstance(worker, dict):
        raise CacheError(f"{part.path}: not a worker part (no {ATTR_WORKER} attribute); it needs no merge")
    index, count, plan = (worker.get(key) for key in ("index", "count", "plan_batches"))
    if not all(_is_int(v) for v in (index, count, plan)) or not 0 <= index < count or plan < 0:
        raise CacheError(
            f"{part.path}: worker record {_show(worker)} is not an integer index in [0, count) and plan_batches"
        )
    sizes = part.meta.get(ATTR_BATCH_EXAMPLES)
    expected = len(range(index, plan, count))
    if (
        not isinstance(sizes, list)
        or len(sizes) != expected
        or not all(_is_int(n) and n >= 1 for n in sizes)
        or sum(sizes) != len(part)
    ):
        raise CacheError(
            f"{part.path}: {ATTR_BATCH_EXAMPLES} does not describe {expected} batches of at least one example, "
            f"{len(part)} in all"
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_parts(parts: list[Cache]) -> list[Cache]:
    """The parts ordered by worker index: one per worker, all of one cache; else CacheError naming the part."""
    for part in parts:
        _check_worker(part)
    first = parts[0]
    shared = (*IDENTITY_ATTRS, ATTR_LAYOUT, ATTR_VERSION)
    for part in parts[1:]:
        changed = changed_files(part.meta.get(ATTR_MIXTURE), first.meta.get(ATTR_MIXTURE), ("this part", "first"))
        if changed:
            raise CacheError(
                f"{part.path}: written from another version of a file task than {first.path}: {'; '.join(changed)}; "
                "rerun the workers on the same file"
            )
        for key in shared:
            if part.meta.get(key) != first.meta.get(key):
                raise CacheError(
                    f"{part.path}: its {key} {_show(part.meta.get(key))} differs from "
                    f"{_show(first.meta.get(key))} in {first.path}"
                )
        for key in ("count", "plan_batches"):
            if part.meta[ATTR_WORKER].get(key) != first.meta[ATTR_WORKER].get(key):
                raise CacheError(
                    f"{part.path}: written as one of {_show(part.meta[ATTR_WORKER])}, "
                    f"but {first.path} as one of {_show(first.meta[ATTR_WORKER])}"
                )
    count = first.meta[ATTR_WORKER]["count"]
    by_index: dict[int, Cache] = {}
    for part in parts:
        index = part.meta[ATTR_WORKER]["index"]
        if index in by_index:
            raise CacheError(
                f"{part.path}: worker {index} of {count} is given twice ({by_index[index].path} and {part.path})"
            )
        by_index[index] = part
    for index in range(count):
        if index not in by_index:
            missing = WORKER_PART.format(index=index, count=count)
            raise CacheError(
                f"the part of worker {index} of {count} ({missing}) is missing; parts given: "
                + ", ".join(p.path for p in parts)
            )
    return [by_index[i] for i in range(count)]


def _show(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."


def _plan(parts: list[Cache]) -> list[tuple[int, int, int]]:
    """Global batch b -> (part, first example, end example): batch b is batch b // n of part b % n."""
    count = len(parts)
    offsets = [np.concatenate([[0], np.cumsum(p.meta[ATTR_BATCH_EXAMPLES])]).tolist() for p in parts]
    plan_batches = parts[0].meta[ATTR_WORKER]["plan_batches"]
    return [
        (b % count, offsets[b % count][b // count], offsets[b % count][b // count + 1]) for b in range(plan_batches)
    ]


def _commit(writer: CacheWriter, parts: list[Cache], plan: list, start: int, stop: int) -> None:
    """Commit global batches [start, stop): one read per part, then the rows in plan order."""
    spans: dict[int, tuple[int, int]] = {}
    for p, e0, e1 in plan[start:stop]:
        lo, hi = spans.get(p, (e0, e1))
        spans[p] = (min(lo, e0), max(hi, e1))
    rows = {}
    for p, (e0, e1) in spans.items():
        r0 = int(parts[p].row_start[e0]) if e0 < len(parts[p]) else parts[p].total_rows
        rows[p] = (r0, parts[p].read_stored(r0, r0 + int(parts[p].n_rows[e0:e1].sum())))
    records, pieces = [], {name: [] for name in (PROBS, TAIL, TOKEN_IDS, TOPK_IDS, SPANS, LABEL_PROBS)}
    for p, e0, e1 in plan[start:stop]:
        records += parts[p].examples.slice(e0, e1 - e0).to_pylist()
        base, stored = rows[p]
        a = int(parts[p].row_start[e0]) - base if e0 < e1 else 0
        b = a + int(parts[p].n_rows[e0:e1].sum())
        for name, values in stored.items():
            pieces[name].append(values[a:b])
    cat = {name: np.concatenate(values) for name, values in pieces.items() if values}
    writer.commit_stored(
        start,
        stop,
        records,
        cat[PROBS],
        cat[TAIL],
        cat[TOKEN_IDS],
        cat.get(TOPK_IDS),
        [e1 - e0 for _, e0, e1 in plan[start:stop]],
        spans=cat.get(SPANS),
        label_probs=cat.get(LABEL_PROBS),
    )


def _counts(writer: CacheWriter, parts: list[Cache]) -> dict:
    """Counts of the merged cache; skips and cuts are the whole mixture's in every part, so the first one's."""
    first = parts[0].meta[ATTR_COUNTS]
    return counts_attrs(
        writer.examples,
        writer.rows,
        writer.per_task_counts(),
        first.get("skipped") or {},
        first.get("truncated") or {},
    )


def _digests(parts: list[Cache]) -> list[str]:
    return [p.meta[ATTR_DIGEST] for p in parts]
