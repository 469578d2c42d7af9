"""Reading a cache: open and validate it, read rows, verify it, describe it."""

from __future__ import annotations

import io
import json
import os
import posixpath
from collections.abc import Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from cache_schema import (
    ARRAY_DTYPES,
    ATTR_ANSWERS,
    ATTR_CHECKSUMS,
    ATTR_COMPLETE,
    ATTR_COUNTS,
    ATTR_CREATED,
    ATTR_DIGEST,
    ATTR_LAYOUT,
    ATTR_MIXTURE,
    ATTR_MIXTURE_FP,
    ATTR_SCHEMA,
    ATTR_TEACHER,
    ATTR_TEMPERATURE,
    ATTR_TOOL_VERSION,
    ATTR_TOP_K,
    ATTR_VERSION,
    EXAMPLE_COLUMNS,
    EXAMPLES_FILE,
    GROUP_META_FILE,
    MAX_CHUNK_BYTES,
    MAX_ROWS_PER_EXAMPLE,
    MAX_TOP_K,
    PARTS_DIR,
    PROBS,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    TAIL,
    TOKEN_IDS,
    TOPK_IDS,
    CachedExample,
    CacheError,
    attrs_digest,
    decode_probs,
    decode_tolerance,
)
from cache_schema.store import filesystem, is_zip, list_files, sha256, zarr_store


class Cache:
    """A validated, complete cache opened for reading. ``cache[i]`` is the i-th example's rows."""

    def __init__(self, path: str, group: zarr.Group, meta: dict, examples: pa.Table):
        self.path = path
        self.meta = meta
        self.examples = examples
        self._group = group
        self.top_k = int(meta[ATTR_TOP_K])
        self.total_rows = int(meta[ATTR_COUNTS]["rows"])
        self.chunk_rows = int(meta[ATTR_LAYOUT]["chunk_rows"])
        self.has_topk_ids = bool(meta[ATTR_LAYOUT]["store_ids"])
        self.keys: list[str] = examples.column("key").to_pylist()
        self.tasks: list[str] = examples.column("task").to_pylist()
        self.row_start = examples.column("row_start").to_numpy()
        self.n_rows = examples.column("n_rows").to_numpy()

    def __len__(self) -> int:
        return self.examples.num_rows

    def __getitem__(self, i: int) -> CachedExample:
        if not -len(self) <= i < len(self):
            raise IndexError(f"example {i} out of range for a cache of {len(self)}")
        i %= len(self)
        start, n = int(self.row_start[i]), int(self.n_rows[i])
        probs, tail, token_ids, topk_ids = self.read_rows(start, start + n)
        return CachedExample(self.keys[i], probs, tail, token_ids, topk_ids)

    def read_rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Decoded rows ``[start, stop)``: probs float32 [n, k], tail float32 [n], token_ids int32 [n], topk_ids."""
        if not 0 <= start <= stop <= self.total_rows:
            raise CacheError(f"rows [{start}, {stop}) outside the cache's {self.total_rows} rows")
        probs = decode_probs(self._group[PROBS][start:stop])
        topk_ids = self._group[TOPK_IDS][start:stop] if self.has_topk_ids else None
        return probs, self._group[TAIL][start:stop], self._group[TOKEN_IDS][start:stop], topk_ids

    def iter_chunks(self) -> Iterator[tuple[int, int]]:
        """Row ranges aligned with the stored chunks: reading one touches one chunk of each array."""
        for start in range(0, self.total_rows, self.chunk_rows):
            yield start, min(start + self.chunk_rows, self.total_rows)


def open_cache(path: str | os.PathLike, *, require_complete: bool = True) -> Cache:
    """Open and validate a cache: a local directory, a ``.zip`` of one, or an fsspec URL."""
    path = os.fspath(path)
    fs, root = filesystem(path)
    if not fs.exists(posixpath.join(root, GROUP_META_FILE) if root else GROUP_META_FILE):
        raise CacheError(f"{path}: not a kdpipe cache (no {GROUP_META_FILE})")
    try:
        group = zarr.open_group(zarr_store(path, read_only=True), mode="r")
    except Exception as e:  # zarr raises many types for a broken store; the user needs the path and the cause
        raise CacheError(f"{path}: cannot open the Zarr group: {e}") from e
    meta = dict(group.attrs.asdict())
    _check_meta(path, meta, require_complete)
    examples = _read_examples(path, fs, root)
    _check_arrays(path, group, meta, examples)
    return Cache(path, group, meta, examples)


def _check_meta(path: str, meta: dict, require_complete: bool) -> None:
    if meta.get(ATTR_SCHEMA) != SCHEMA_NAME:
        raise CacheError(f"{path}: schema is {meta.get(ATTR_SCHEMA)!r}, expected {SCHEMA_NAME!r}")
    if meta.get(ATTR_VERSION) != SCHEMA_VERSION:
        raise CacheError(f"{path}: schema version {meta.get(ATTR_VERSION)!r}, this kdpipe reads {SCHEMA_VERSION}")
    if require_complete and meta.get(ATTR_COMPLETE) is not True:
        raise CacheError(f"{path}: the cache is incomplete (its writer has not finished; rerun it to resume)")
    if meta.get(ATTR_COMPLETE) is True and meta.get(ATTR_DIGEST) != attrs_digest(meta):
        raise CacheError(f"{path}/{GROUP_META_FILE}: attributes were modified after the cache was written")
    k = meta.get(ATTR_TOP_K)
    if not isinstance(k, int) or not 1 <= k <= MAX_TOP_K:
        raise CacheError(f"{path}: top_k {k!r} is not an integer in [1, {MAX_TOP_K}]")


def _read_examples(path: str, fs: fsspec.AbstractFileSystem, root: str) -> pa.Table:
    name = posixpath.join(root, EXAMPLES_FILE) if root else EXAMPLES_FILE
    if not fs.exists(name):
        raise CacheError(f"{path}: {EXAMPLES_FILE} is missing")
    try:
        table = pq.read_table(io.BytesIO(fs.cat_file(name)))
    except Exception as e:  # a truncated or corrupt Parquet file
        raise CacheError(f"{path}/{EXAMPLES_FILE}: unreadable: {e}") from e
    if not table.schema.equals(EXAMPLE_COLUMNS):
        raise CacheError(f"{path}/{EXAMPLES_FILE}: columns {table.schema} differ from the schema {EXAMPLE_COLUMNS}")
    return table


def _check_arrays(path: str, group: zarr.Group, meta: dict, examples: pa.Table) -> None:
    k, rows = meta[ATTR_TOP_K], meta.get(ATTR_COUNTS, {}).get("rows")
    names = [PROBS, TAIL, TOKEN_IDS] + ([TOPK_IDS] if meta.get(ATTR_LAYOUT, {}).get("store_ids") else [])
    for name in names:
        if name not in group:
            raise CacheError(f"{path}/{name}: array missing")
        array = group[name]
        expected_shape = (rows, k) if name in (PROBS, TOPK_IDS) else (rows,)
        if array.dtype != ARRAY_DTYPES[name]:
            raise CacheError(f"{path}/{name}: dtype {array.dtype}, schema says {ARRAY_DTYPES[name]}")
        if tuple(array.shape) != expected_shape:
            raise CacheError(f"{path}/{name}: shape {tuple(array.shape)}, expected {expected_shape}")
        if int(np.prod(array.chunks)) * array.dtype.itemsize > MAX_CHUNK_BYTES:
            raise CacheError(f"{path}/{name}: chunk shape {array.chunks} exceeds {MAX_CHUNK_BYTES} bytes")
    n_rows = examples.column("n_rows").to_numpy()
    row_start = examples.column("row_start").to_numpy()
    if len(n_rows) != meta[ATTR_COUNTS]["examples"]:
        raise CacheError(
            f"{path}/{EXAMPLES_FILE}: {len(n_rows)} examples, attributes say {meta[ATTR_COUNTS]['examples']}"
        )
    if len(n_rows) and ((n_rows < 1).any() or (n_rows > MAX_ROWS_PER_EXAMPLE).any()):
        raise CacheError(f"{path}/{EXAMPLES_FILE}: n_rows outside [1, {MAX_ROWS_PER_EXAMPLE}]")
    expected_start = np.concatenate([[0], np.cumsum(n_rows, dtype=np.int64)[:-1]]) if len(n_rows) else n_rows
    if not np.array_equal(row_start, expected_start) or int(n_rows.sum()) != rows:
        raise CacheError(f"{path}/{EXAMPLES_FILE}: row_start/n_rows do not tile the {rows} rows of the arrays")


# ---------------------------------------------------------------------------------------------- verify


def verify_cache(path: str | os.PathLike) -> dict:
    """Re-check checksums and contents; return a summary, or raise CacheError naming the first problem."""
    cache = open_cache(path)
    fs, root = filesystem(cache.path)
    listed = cache.meta.get(ATTR_CHECKSUMS) or {}
    present = {p for p in list_files(fs, root) if p != GROUP_META_FILE}
    for rel in sorted(set(listed) - present):
        raise CacheError(f"{cache.path}/{rel}: file missing")
    for rel in sorted(present - set(listed)):
        raise CacheError(f"{cache.path}/{rel}: file not listed in the cache's checksums")
    for rel, digest in sorted(listed.items()):
        if sha256(fs, posixpath.join(root, rel) if root else rel) != digest:
            raise CacheError(f"{cache.path}/{rel}: checksum mismatch (corrupted or modified)")
    tolerance = decode_tolerance(cache.top_k)
    worst = 0.0
    for start, stop in cache.iter_chunks():
        try:
            probs, tail, _, _ = cache.read_rows(start, stop)
        except CacheError:
            raise
        except Exception as e:  # a truncated shard the checksums did not cover
            raise CacheError(f"{cache.path}: rows [{start}, {stop}) unreadable: {e}") from e
        if (np.diff(probs, axis=1) > 0).any():
            raise CacheError(f"{cache.path}/{PROBS}: rows [{start}, {stop}) not sorted descending")
        if (tail < -tolerance).any() or (tail > 1 + tolerance).any():
            raise CacheError(f"{cache.path}/{TAIL}: rows [{start}, {stop}) have a tail outside [0, 1]")
        error = np.abs(probs.sum(axis=1, dtype=np.float64) + tail - 1.0)
        worst = max(worst, float(error.max(initial=0.0)))
        if worst > tolerance:
            raise CacheError(
                f"{cache.path}/{PROBS}: rows [{start}, {stop}) sum to 1 only within {worst:.2e} (> {tolerance:.2e})"
            )
    return {
        "path": cache.path,
        "examples": len(cache),
        "rows": cache.total_rows,
        "files": len(listed),
        "max_sum_error": worst,
    }


def summary(path: str | os.PathLike) -> str:
    """A human summary for ``kdpipe cache info``: a complete cache in full, an incomplete one's progress."""
    path = os.fspath(path)
    try:
        return describe(open_cache(path))
    except CacheError as e:
        if "incomplete" not in str(e) or "://" in path or is_zip(path):
            raise
    meta = dict(zarr.open_group(zarr.storage.LocalStore(path, read_only=True), mode="r").attrs.asdict())
    parts = (
        [n for n in os.listdir(os.path.join(path, PARTS_DIR)) if n.endswith(".parquet")]
        if os.path.isdir(os.path.join(path, PARTS_DIR))
        else []
    )
    examples = sum(pq.read_metadata(os.path.join(path, PARTS_DIR, n)).num_rows for n in parts)
    return "\n".join(
        [
            f"cache        {path}",
            f"schema       {meta.get(ATTR_SCHEMA)} v{meta.get(ATTR_VERSION)}",
            "complete     False (rerun the same teacher-cache command to resume)",
            f"teacher      {meta.get(ATTR_TEACHER, {}).get('id')}",
            f"top-k        {meta.get(ATTR_TOP_K)}   temperature {meta.get(ATTR_TEMPERATURE)}   "
            f"answers {meta.get(ATTR_ANSWERS)}",
            f"committed    {examples} examples in {len(parts)} parts",
        ]
    )


def describe(cache: Cache) -> str:
    """A human summary of a complete cache."""
    m = cache.meta
    counts, teacher = m[ATTR_COUNTS], m[ATTR_TEACHER]
    fs, root = filesystem(cache.path)
    size = sum(fs.size(posixpath.join(root, p) if root else p) for p in (m.get(ATTR_CHECKSUMS) or {}))
    stored = sum(
        fs.size(posixpath.join(root, p) if root else p)
        for p in (m.get(ATTR_CHECKSUMS) or {})
        if p.split("/")[0] in (PROBS, TAIL)
    )
    lines = [
        f"cache        {cache.path}",
        f"schema       {m[ATTR_SCHEMA]} v{m[ATTR_VERSION]} (kdpipe {m[ATTR_TOOL_VERSION]})",
        f"complete     {m[ATTR_COMPLETE]}",
        f"created      {m[ATTR_CREATED]['at']} on {m[ATTR_CREATED]['on']}",
        f"teacher      {teacher['id']} (revision {teacher.get('revision')}, {teacher.get('quantization')}, "
        f"{teacher.get('compute_dtype')})",
        f"top-k        {m[ATTR_TOP_K]}   temperature {m[ATTR_TEMPERATURE]}   answers {m[ATTR_ANSWERS]}",
        f"mixture      {m[ATTR_MIXTURE_FP][:16]}  split {m[ATTR_MIXTURE].get('split')}  "
        f"seed {m[ATTR_MIXTURE].get('seed')}",
        f"examples     {counts['examples']}   rows {counts['rows']}",
        f"size         {size} bytes; probs + tail {stored / max(counts['rows'], 1):.1f} bytes/row",
        "per task     "
        + "  ".join(f"{t}: {c['examples']} ex / {c['rows']} rows" for t, c in counts["per_task"].items()),
    ]
    for label in ("skipped", "truncated"):
        nonzero = _nonzero(counts.get(label) or {})
        if nonzero:
            lines.append(f"{label:<13}{json.dumps(nonzero)}")
    return "\n".join(lines)


def _nonzero(counts: dict) -> dict:
    """Nested counts with the zeros and empty groups left out."""
    out = {}
    for key, value in counts.items():
        value = _nonzero(value) if isinstance(value, dict) else value
        if value:
            out[key] = value
    return out
