"""Teacher-logit cache, schema v1: the single source of truth for the on-disk format.

A cache is a directory (or a zip of one, or an fsspec URL) that is at once a Zarr v3 group and the home
of a Parquet table::

    cache/
      zarr.json            group metadata; its attributes are the cache's metadata (ATTR_* below)
      examples.parquet     one row per example, in cache order (EXAMPLE_COLUMNS)
      probs/               uint16  [rows, k]  chunks (chunk_rows, k)  shards (shard_rows, k)  blosc zstd shuffle
      tail/                float32 [rows]     chunks (chunk_rows,)    shards (shard_rows,)
      token_ids/           int32   [rows]     chunks (chunk_rows,)    shards (shard_rows,)
      topk_ids/            int32   [rows, k]  optional (--store-ids): the teacher vocabulary id of each prob
      _parts/              only while being written: one Parquet file per committed range of batches

Rows: every answer token of every example, flattened; example ``i`` owns rows
``[row_start[i], row_start[i] + n_rows[i])``. Row ``j`` of an example is the teacher's distribution
softmax(logits / T) at answer position ``j`` (teacher-forced on the answer, or on its own greedy answer),
of which the cache keeps the top-k probabilities sorted descending and ``tail`` = 1 − Σ top-k.

Probability encoding (``probs``): fixed point with scale ``PROB_SCALE`` (q = round(p · 65535)), stored as
the first value of the row followed by the successive drops q[j−1] − q[j] (all ≥ 0 because rows are sorted
descending), which compress far better than the values. Decode with plain numpy::

    q = d[:, :1] - np.concatenate([np.zeros_like(d[:, :1]), np.cumsum(d[:, 1:], axis=1)], axis=1)
    p = q.astype(np.float32) / 65535

The decoded row is within ``k / (2 · 65535)`` L1 of the float32 values (≤ 4.9e-4 at k = 64).

A cache is untrusted data: nothing in it is executed or unpickled, dtypes and shapes are checked against
this schema before anything is read, and a mismatch raises :class:`CacheError` naming both values.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from zarr.codecs import BloscCodec, BloscShuffle

SCHEMA_NAME = "kdpipe-teacher-cache"
SCHEMA_VERSION = 1
PROB_SCALE = 65535
EXAMPLES_FILE = "examples.parquet"
GROUP_META_FILE = "zarr.json"  # holds the attributes, so it is covered by ATTR_DIGEST, not by a checksum
PARTS_DIR = "_parts"

# Arrays along the flat row axis.
PROBS = "probs"
TAIL = "tail"
TOKEN_IDS = "token_ids"
TOPK_IDS = "topk_ids"
ARRAY_DTYPES = {
    PROBS: np.dtype("uint16"),
    TAIL: np.dtype("float32"),
    TOKEN_IDS: np.dtype("int32"),
    TOPK_IDS: np.dtype("int32"),
}

# examples.parquet columns and their Arrow types.
EXAMPLE_COLUMNS = pa.schema(
    [
        ("key", pa.string()),  # stable content hash of (task, template_id, prompt, answer)
        ("task", pa.string()),
        ("template_id", pa.int32()),
        ("prompt", pa.string()),
        ("answer", pa.string()),  # the answer whose rows are cached (gold, or the teacher's own)
        ("n_rows", pa.int32()),  # teacher answer rows cached for this example
        ("row_start", pa.int64()),  # first row of this example along the row axis
    ]
)

# Group attributes.
ATTR_SCHEMA = "schema"  # SCHEMA_NAME
ATTR_VERSION = "schema_version"  # SCHEMA_VERSION of the writer
ATTR_TOOL_VERSION = "tool_version"  # kdpipe version that wrote the cache
ATTR_CREATED = "created"  # {"at": ISO time, "on": host and platform}
ATTR_TEACHER = "teacher"  # {"id", "revision", "quantization", "compute_dtype", "architecture"}
ATTR_TOKENIZER_FP = "teacher_tokenizer_fingerprint"  # sha256 of the teacher vocabulary and special tokens
ATTR_TOP_K = "top_k"  # k: probabilities kept per row
ATTR_TEMPERATURE = "temperature"  # T in softmax(logits / T)
ATTR_ANSWERS = "answers"  # "gold" (dataset answers) or "teacher" (the teacher's greedy answers)
ATTR_EOS = "eos"  # {"included": true, "token_id": id}: each example's last row predicts the teacher's EOS
ATTR_MIXTURE = "mixture"  # the mixture spec: tasks and counts, split, seed, caps, templates digest
ATTR_MIXTURE_FP = "mixture_fingerprint"  # sha256 of ATTR_MIXTURE
ATTR_COUNTS = "counts"  # {"examples", "rows", "per_task": {task: {"examples", "rows"}}, "skipped", "truncated"}
ATTR_CONFIG = "config"  # the teacher-cache config that produced the cache
ATTR_LAYOUT = "layout"  # {"chunk_rows", "shard_rows", "store_ids"}
ATTR_CHECKSUMS = "checksums"  # {relative file path: sha256}, every file but GROUP_META_FILE; set at finalize
ATTR_COMPLETE = "complete"  # true only after a finished run; readers refuse a cache without it
ATTR_DIGEST = "attrs_digest"  # sha256 of all the other attributes; catches an edited attribute

# Bounds checked before allocating anything a cache asks for.
MAX_TOP_K = 4096
MAX_ROWS_PER_EXAMPLE = 1 << 16
MAX_CHUNK_BYTES = 256 << 20
DEFAULT_CHUNK_ROWS = 4096
DEFAULT_SHARD_ROWS = 65536


class CacheError(Exception):
    """A cache that cannot be used as asked: wrong version, mismatch, truncation, corruption."""


@dataclass(frozen=True)
class CachedExample:
    key: str
    probs: np.ndarray  # float32 [n_rows, k], sorted descending
    tail: np.ndarray  # float32 [n_rows]
    token_ids: np.ndarray  # int32 [n_rows]
    topk_ids: np.ndarray | None = None  # int32 [n_rows, k] when the cache stores them


# ---------------------------------------------------------------------------------------------- encoding


def encode_probs(probs: np.ndarray) -> np.ndarray:
    """float [n, k] sorted descending -> uint16 [n, k]: first fixed-point value, then successive drops."""
    q = np.rint(np.clip(probs, 0.0, 1.0) * PROB_SCALE).astype(np.int32)  # [n, k]
    drops = q[:, :-1] - q[:, 1:]  # [n, k-1]
    if (drops < 0).any():
        raise CacheError("top-k probabilities must be sorted descending in every row")
    return np.concatenate([q[:, :1], drops], axis=1).astype(np.uint16)


def decode_probs(stored: np.ndarray) -> np.ndarray:
    """uint16 [n, k] as written by :func:`encode_probs` -> float32 [n, k] probabilities, sorted descending."""
    d = stored.astype(np.int64)
    q = d[:, :1] - np.concatenate([np.zeros_like(d[:, :1]), np.cumsum(d[:, 1:], axis=1)], axis=1)  # [n, k]
    return q.astype(np.float32) / PROB_SCALE


def decode_tolerance(k: int) -> float:
    """Largest L1 error of one decoded row (rounding each of k values by at most half a step), plus slack."""
    return k * 0.5 / PROB_SCALE + 1e-5


def fingerprint(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj``."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------- stores


def _is_zip(path: str) -> bool:
    return path.endswith(".zip") or path.startswith("zip://")


def _filesystem(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    if _is_zip(path):
        target = path.split("::", 1)[-1] if path.startswith("zip://") else path
        return fsspec.filesystem("zip", fo=target), ""
    return fsspec.core.url_to_fs(path)


def _zarr_store(path: str, read_only: bool):
    if _is_zip(path):
        target = path.split("::", 1)[-1] if path.startswith("zip://") else path
        return zarr.storage.ZipStore(target, mode="r")
    if "://" not in path or path.startswith("file://"):
        return zarr.storage.LocalStore(path.removeprefix("file://"), read_only=read_only)
    return zarr.storage.FsspecStore.from_url(path, read_only=read_only)


def _list_files(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    """Relative paths of every file under ``root``."""
    prefix = root.rstrip("/") + "/" if root else ""
    return sorted(p[len(prefix) :] if p.startswith(prefix) else p for p in fs.find(root or "/", withdirs=False))


def _sha256(fs: fsspec.AbstractFileSystem, path: str) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _attrs_digest(attrs: dict) -> str:
    return fingerprint({k: v for k, v in attrs.items() if k != ATTR_DIGEST})


# ---------------------------------------------------------------------------------------------- reading


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
    fs, root = _filesystem(path)
    if not fs.exists(posixpath.join(root, GROUP_META_FILE) if root else GROUP_META_FILE):
        raise CacheError(f"{path}: not a kdpipe cache (no {GROUP_META_FILE})")
    try:
        group = zarr.open_group(_zarr_store(path, read_only=True), mode="r")
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
    if meta.get(ATTR_COMPLETE) is True and meta.get(ATTR_DIGEST) != _attrs_digest(meta):
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
    fs, root = _filesystem(cache.path)
    listed = cache.meta.get(ATTR_CHECKSUMS) or {}
    present = {p for p in _list_files(fs, root) if p != GROUP_META_FILE}
    for rel in sorted(set(listed) - present):
        raise CacheError(f"{cache.path}/{rel}: file missing")
    for rel in sorted(present - set(listed)):
        raise CacheError(f"{cache.path}/{rel}: file not listed in the cache's checksums")
    for rel, digest in sorted(listed.items()):
        if _sha256(fs, posixpath.join(root, rel) if root else rel) != digest:
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
        if "incomplete" not in str(e) or "://" in path or _is_zip(path):
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
    fs, root = _filesystem(cache.path)
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


# ---------------------------------------------------------------------------------------------- writing


class CacheWriter:
    """Create a cache, or resume an incomplete one, and commit whole batches of rows atomically.

    ``identity`` holds the attributes that define the cache (teacher, k, T, mixture, ...): resuming with a
    different identity raises with both values. Committed work is marked by one Parquet file per range of
    batches in ``_parts/``, written (atomically renamed) only after its rows are in the arrays; rows written
    without a part file are overwritten on resume. ``finalize`` joins the parts into examples.parquet,
    trims the arrays, records checksums and sets ``complete``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        identity: dict,
        *,
        max_rows: int,
        store_ids: bool,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        shard_rows: int = DEFAULT_SHARD_ROWS,
    ):
        self.path = os.fspath(path)
        if "://" in self.path or self.path.endswith(".zip"):
            raise CacheError(f"{self.path}: teacher-cache writes to a local directory")
        self.identity = identity
        self.k = int(identity[ATTR_TOP_K])
        self.store_ids = store_ids
        self._group = self._open_or_create(max_rows, chunk_rows, shard_rows)
        os.makedirs(os.path.join(self.path, PARTS_DIR), exist_ok=True)
        self.parts = self._read_parts()
        self.next_batch = self.parts[-1][1] if self.parts else 0
        self.rows = sum(int(t.column("n_rows").to_numpy().sum()) for *_, t in self.parts)
        self.examples = sum(t.num_rows for *_, t in self.parts)

    def _open_or_create(self, max_rows: int, chunk_rows: int, shard_rows: int) -> zarr.Group:
        store = zarr.storage.LocalStore(self.path)
        if os.path.exists(os.path.join(self.path, GROUP_META_FILE)):
            group = zarr.open_group(store, mode="r+")
            meta = dict(group.attrs.asdict())
            if meta.get(ATTR_SCHEMA) != SCHEMA_NAME or meta.get(ATTR_VERSION) != SCHEMA_VERSION:
                raise CacheError(
                    f"{self.path}: holds {meta.get(ATTR_SCHEMA)!r} v{meta.get(ATTR_VERSION)!r}, "
                    f"not a {SCHEMA_NAME} v{SCHEMA_VERSION} cache; choose another --out"
                )
            for key, value in self.identity.items():
                if meta.get(key) != value:
                    raise CacheError(
                        f"{self.path}: an existing cache with a different {key}: "
                        f"{meta.get(key)!r} there, {value!r} asked; choose another --out"
                    )
            if meta.get(ATTR_COMPLETE):
                raise CacheComplete(self.path)
            return group
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise CacheError(f"{self.path}: exists and is not a directory; choose another --out")
        os.makedirs(self.path, exist_ok=True)
        if any(n != PARTS_DIR for n in os.listdir(self.path)):
            raise CacheError(f"{self.path}: exists and is not a kdpipe cache; choose another --out")
        layout = {"chunk_rows": chunk_rows, "shard_rows": shard_rows, "store_ids": self.store_ids}
        group = zarr.open_group(
            store,
            mode="w",
            attributes={
                ATTR_SCHEMA: SCHEMA_NAME,
                ATTR_VERSION: SCHEMA_VERSION,
                ATTR_COMPLETE: False,
                ATTR_LAYOUT: layout,
                **self.identity,
            },
        )
        compressor = BloscCodec(cname="zstd", clevel=9, shuffle=BloscShuffle.shuffle)
        shape = max(max_rows, 1)
        for name in (PROBS, TAIL, TOKEN_IDS) + ((TOPK_IDS,) if self.store_ids else ()):
            width = (self.k,) if name in (PROBS, TOPK_IDS) else ()
            group.create_array(
                name,
                shape=(shape, *width),
                chunks=(chunk_rows, *width),
                shards=(shard_rows, *width),
                dtype=ARRAY_DTYPES[name],
                compressors=[compressor],
            )
        return group

    def _read_parts(self) -> list[tuple[int, int, pa.Table]]:
        parts = []
        for name in sorted(os.listdir(os.path.join(self.path, PARTS_DIR))):
            if not name.endswith(".parquet"):
                continue  # a temp file from an interrupted commit
            b0, b1 = (int(x) for x in name.removesuffix(".parquet").split("-"))
            parts.append((b0, b1, pq.read_table(os.path.join(self.path, PARTS_DIR, name))))
        for (_, end, _), (start, _, _) in zip(parts, parts[1:], strict=False):
            if start != end:
                raise CacheError(f"{self.path}/{PARTS_DIR}: parts are not contiguous (batch {end} then {start})")
        return parts

    def commit(
        self,
        batch_start: int,
        batch_end: int,
        records: list[dict],
        probs: np.ndarray,
        tail: np.ndarray,
        token_ids: np.ndarray,
        topk_ids: np.ndarray | None = None,
    ) -> None:
        """Write the rows of batches ``[batch_start, batch_end)`` and mark them done.

        ``records``: dicts with key, task, template_id, prompt, answer, n_rows, in row order.
        """
        if batch_start != self.next_batch:
            raise CacheError(f"commit of batch {batch_start} while batch {self.next_batch} is next")
        n = len(tail)
        start = self.rows
        capacity = self._group[TAIL].shape[0]
        if start + n > capacity:
            raise CacheError(f"{self.path}: {start + n} rows exceed the planned {capacity}")
        self._group[PROBS][start : start + n] = encode_probs(probs)
        self._group[TAIL][start : start + n] = tail.astype(np.float32)
        self._group[TOKEN_IDS][start : start + n] = token_ids.astype(np.int32)
        if self.store_ids:
            self._group[TOPK_IDS][start : start + n] = topk_ids.astype(np.int32)
        n_rows = np.array([r["n_rows"] for r in records], dtype=np.int64)
        columns = {name: [r[name] for r in records] for name in EXAMPLE_COLUMNS.names if name != "row_start"}
        columns["row_start"] = (start + np.concatenate([[0], np.cumsum(n_rows)[:-1]])).tolist() if records else []
        table = pa.table(columns, schema=EXAMPLE_COLUMNS)
        name = os.path.join(self.path, PARTS_DIR, f"{batch_start:09d}-{batch_end:09d}.parquet")
        pq.write_table(table, name + ".tmp")
        os.replace(name + ".tmp", name)  # the completion marker: these batches are done
        self.parts.append((batch_start, batch_end, table))
        self.next_batch, self.rows, self.examples = batch_end, start + n, self.examples + len(records)

    def finalize(self, extra: dict) -> dict:
        """Join the parts, trim the arrays, write checksums and mark the cache complete; return the attrs."""
        table = pa.concat_tables([t for *_, t in self.parts]) if self.parts else EXAMPLE_COLUMNS.empty_table()
        tmp = os.path.join(self.path, EXAMPLES_FILE + ".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, os.path.join(self.path, EXAMPLES_FILE))
        for name in (PROBS, TAIL, TOKEN_IDS) + ((TOPK_IDS,) if self.store_ids else ()):
            array = self._group[name]
            array.resize((self.rows, *array.shape[1:]))
        fs = fsspec.filesystem("file")
        root = os.path.abspath(self.path)
        files = [p for p in _list_files(fs, root) if p != GROUP_META_FILE and not p.startswith(PARTS_DIR + "/")]
        attrs = dict(self._group.attrs.asdict())
        attrs.update(extra)
        attrs.update(
            {
                ATTR_TOOL_VERSION: _tool_version(),
                ATTR_CREATED: {
                    "at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "on": f"{platform.node()} ({platform.platform()})",
                },
                ATTR_CHECKSUMS: {p: _sha256(fs, os.path.join(root, p)) for p in files},
                ATTR_COMPLETE: True,
            }
        )
        attrs[ATTR_DIGEST] = _attrs_digest(attrs)
        self._group.attrs.put(attrs)
        _remove_parts(self.path)
        return attrs


class CacheComplete(CacheError):
    """Raised by CacheWriter when the cache at ``path`` is already complete: nothing left to write."""

    def __init__(self, path: str):
        super().__init__(f"{path}: the cache is already complete")
        self.path = path


def _remove_parts(path: str) -> None:
    parts = os.path.join(path, PARTS_DIR)
    if os.path.isdir(parts):
        for name in os.listdir(parts):
            os.remove(os.path.join(parts, name))
        os.rmdir(parts)


def _tool_version() -> str:
    from pipeline import __version__

    return __version__


def counts_attrs(examples: int, rows: int, per_task: dict, skipped: dict, truncated: dict) -> dict:
    """The ATTR_COUNTS value, built here so its keys are named in one place."""
    return {
        ATTR_COUNTS: {
            "examples": examples,
            "rows": rows,
            "per_task": per_task,
            "skipped": skipped,
            "truncated": truncated,
        }
    }


def identity_attrs(
    *,
    teacher: dict,
    tokenizer_fingerprint: str,
    top_k: int,
    temperature: float,
    answers: str,
    eos_token_id: int,
    mixture: dict,
    config: dict,
) -> dict:
    """The attributes that define a cache: a resumed run must match them exactly."""
    return {
        ATTR_TEACHER: teacher,
        ATTR_TOKENIZER_FP: tokenizer_fingerprint,
        ATTR_TOP_K: top_k,
        ATTR_TEMPERATURE: temperature,
        ATTR_ANSWERS: answers,
        ATTR_EOS: {"included": True, "token_id": eos_token_id},
        ATTR_MIXTURE: mixture,
        ATTR_MIXTURE_FP: fingerprint(mixture),
        ATTR_CONFIG: config,
    }
