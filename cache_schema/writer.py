"""Writing a cache: create or resume, commit whole batches with completion markers, finalize.

The same code writes a local directory and an fsspec URL (``s3://``, ``gs://``, ``memory://``). It relies on
one property both have: a file written with ``store.put_atomic`` (a rename on a disk, a single PUT on an object
store) is seen whole or not at all. The order of writes makes every crash resumable:

1. create: the arrays first, then the group attributes, whose ATTR_SCHEMA marks a cache as created;
2. commit: the rows of some batches into the arrays, then that range's marker in ``_parts/``: rows without a
   marker are overwritten on resume (object stores have no rename, so the marker is the last object written);
3. finalize: examples.parquet, trimmed arrays, checksums, then the attributes with ATTR_COMPLETE, then the
   markers are removed (a rerun removes any a crash left behind).
"""

from __future__ import annotations

import io
import json
import os
import platform
import re
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from zarr.codecs import BloscCodec, BloscShuffle

from cache_schema.reader import read_json
from cache_schema.spec import (
    ARRAY_DTYPES,
    ATTR_BATCH_EXAMPLES,
    ATTR_CHECKSUMS,
    ATTR_COMPLETE,
    ATTR_CREATED,
    ATTR_DIGEST,
    ATTR_LAYOUT,
    ATTR_MIXTURE,
    ATTR_SCHEMA,
    ATTR_TOOL_VERSION,
    ATTR_TOP_K,
    ATTR_VERSION,
    ATTR_VOCAB,
    ATTR_WORKER,
    DEFAULT_CHUNK_ROWS,
    DEFAULT_SHARD_ROWS,
    EXAMPLE_COLUMNS,
    EXAMPLES_FILE,
    GROUP_META_FILE,
    LABEL_PROBS,
    PARTS_DIR,
    PROBS,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    SOURCE_ID,
    SPANS,
    TAIL,
    TOKEN_ARRAYS,
    TOKEN_IDS,
    TOPK_IDS,
    VOCAB_BYTES,
    VOCAB_OFFSETS,
    CacheError,
    attrs_digest,
    changed_files,
    encode_probs,
    encode_spans,
    encode_vocab,
    mask_zero_ids,
)
from cache_schema.store import can_list, filesystem, is_zip, join, list_files, put_atomic, sha256, zarr_store

_MARKER = re.compile(r"(\d+)-(\d+)\.parquet")
_BATCH_EXAMPLES_KEY = b"batch_examples"  # in a marker's Parquet metadata: examples in each batch of its range
_WRITE_ALL = {"write_empty_chunks": True}  # every shard file exists, even all zeros: readers require them all
_PARTIAL = ".partial"  # zarr's LocalStore writes through <name>.<uuid>.partial; a kill can leave one behind


class CacheWriter:
    """Create a cache, or resume an incomplete one, and commit whole batches of rows atomically.

    ``identity`` holds the attributes that define the cache (IDENTITY_ATTRS, plus ATTR_WORKER for a worker's
    part): resuming with a different identity raises with both values. ``finalize`` joins the committed
    parts into examples.parquet, trims the arrays, records checksums and sets ``complete``.

    ``vocab``: the teacher's tokens as byte strings, by id. Given, the cache has the v1.1 token layout: the
    vocabulary is stored once and every commit brings each row's byte span and label probability.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        identity: dict,
        *,
        max_rows: int,
        store_ids: bool,
        ids_k: int | None = None,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        shard_rows: int = DEFAULT_SHARD_ROWS,
        vocab: list[bytes] | None = None,
    ):
        self.path = os.fspath(path)
        if is_zip(self.path):
            raise CacheError(f"{self.path}: a cache is written to a directory or URL (then: kdpipe cache pack)")
        self.fs, self.root = filesystem(self.path)
        if not can_list(self.fs):
            raise CacheError(f"{self.path}: this store is read-only here; write to a directory, s3:// or gs://")
        self.identity = identity
        self.k = int(identity[ATTR_TOP_K])
        self.store_ids = store_ids
        self.ids_k = self.k if ids_k is None else int(ids_k)  # leading entries of a row whose id is kept
        if not 1 <= self.ids_k <= self.k:
            raise CacheError(f"ids_k {self.ids_k} is not in [1, {self.k}] (the top-k)")
        # layout.ids_k as written: only where ids are kept for fewer than k entries (a v1.2 feature)
        self.layout_ids_k = self.ids_k if store_ids and self.ids_k < self.k else None
        self.version = SCHEMA_VERSION
        self.vocab = vocab
        self.token_spans = vocab is not None
        self._store = zarr_store(self.fs, self.root, read_only=False)
        self._arrays = self._open_or_create(max_rows, chunk_rows, shard_rows)
        self._batch_examples: dict[int, list[int] | None] = {}  # per committed range, by its first batch
        self.parts = self._read_parts()
        self.next_batch = self.parts[-1][1] if self.parts else 0
        self.rows = sum(int(t.column("n_rows").to_numpy().sum()) for *_, t in self.parts)
        self.examples = sum(t.num_rows for *_, t in self.parts)

    def _names(self) -> tuple[str, ...]:
        return (
            (PROBS, TAIL, TOKEN_IDS)
            + ((TOPK_IDS,) if self.store_ids else ())
            + (TOKEN_ARRAYS if self.token_spans else ())
        )

    def _open_or_create(self, max_rows: int, chunk_rows: int, shard_rows: int) -> dict[str, zarr.Array]:
        meta_file = join(self.root, GROUP_META_FILE)
        meta = read_json(self.path, self.fs, meta_file, GROUP_META_FILE) if self.fs.exists(meta_file) else {}
        meta = meta.get("attributes") or {}
        if ATTR_SCHEMA in meta:
            self._check_existing(meta)
            names = self._names()
            return {n: zarr.open_array(self._store, path=n, mode="r+").with_config(_WRITE_ALL) for n in names}
        if self.fs.exists(self.root) and not self.fs.isdir(self.root):
            raise CacheError(f"{self.path}: exists and is not a directory; choose another --out")
        ours = {PARTS_DIR, GROUP_META_FILE, *ARRAY_DTYPES}  # what a creation cut short leaves behind
        if any(rel.split("/")[0] not in ours for rel in list_files(self.fs, self.root)):
            raise CacheError(f"{self.path}: exists and is not a kdpipe cache; choose another --out")
        # zstd level 5: 37.0 B/row at ~390k rows/s written, against 34.6 B/row at ~37k rows/s for level 9 (k = 64,
        # benchmarks/bench_cache_size.py rows); level 9 cost the CPU more than the teacher-side work it hides behind.
        compressor = BloscCodec(cname="zstd", clevel=5, shuffle=BloscShuffle.shuffle)
        arrays = {}
        for name in self._names():
            width = {PROBS: (self.k,), TOPK_IDS: (self.ids_k,), SPANS: (2,)}.get(name, ())
            arrays[name] = zarr.create_array(
                self._store,
                name=name,
                shape=(max(max_rows, 1), *width),
                chunks=(chunk_rows, *width),
                shards=(shard_rows, *width),
                dtype=ARRAY_DTYPES[name],
                compressors=[compressor],
                config=_WRITE_ALL,
                overwrite=True,
            )
        layout = {"chunk_rows": chunk_rows, "shard_rows": shard_rows, "store_ids": self.store_ids}
        if self.layout_ids_k is not None:
            layout["ids_k"] = self.layout_ids_k
        attrs = {ATTR_SCHEMA: SCHEMA_NAME, ATTR_VERSION: self.version, ATTR_COMPLETE: False, ATTR_LAYOUT: layout}
        if self.token_spans:
            layout["token_spans"] = True
            attrs[ATTR_VOCAB] = self._create_vocab(compressor)
        zarr.open_group(self._store, mode="a").attrs.put({**attrs, **self.identity})  # last: the cache exists
        return arrays

    def _create_vocab(self, compressor: BloscCodec) -> dict:
        """The teacher vocabulary arrays, written once at creation; returns the ATTR_VOCAB value."""
        data, offsets = encode_vocab(self.vocab)
        for name, values in ((VOCAB_BYTES, data), (VOCAB_OFFSETS, offsets)):
            array = zarr.create_array(
                self._store,
                name=name,
                shape=values.shape,
                chunks=(max(1, min(len(values), 1 << 20)),),
                dtype=ARRAY_DTYPES[name],
                compressors=[compressor],
                overwrite=True,
            )
            if len(values):
                array[:] = values
        return {"size": len(self.vocab), "bytes": int(len(data))}

    def _check_existing(self, meta: dict) -> None:
        if meta.get(ATTR_SCHEMA) != SCHEMA_NAME:
            raise CacheError(
                f"{self.path}: holds {meta.get(ATTR_SCHEMA)!r}, not a {SCHEMA_NAME} cache; choose another --out"
            )
        changed = changed_files(meta.get(ATTR_MIXTURE), self.identity.get(ATTR_MIXTURE), ("cached", "now"))
        if changed:
            raise CacheError(
                f"{self.path}: a file task changed since the cache was started: {'; '.join(changed)}; restore the "
                "file, or choose another --out"
            )
        for key, value in self.identity.items():
            if meta.get(key) != value:
                raise CacheError(
                    f"{self.path}: an existing cache with a different {key}: "
                    f"{meta.get(key)!r} there, {value!r} asked; choose another --out"
                )
        layout = meta.get(ATTR_LAYOUT) or {}
        if bool(layout.get("store_ids")) != self.store_ids or layout.get("ids_k") != self.layout_ids_k:
            raise CacheError(
                f"{self.path}: an existing cache that stores other top-k ids (store_ids {layout.get('store_ids')!r}, "
                f"ids_k {layout.get('ids_k', meta.get(ATTR_TOP_K))!r}); choose another --out"
            )
        if bool(layout.get("token_spans")) != self.token_spans:
            raise CacheError(
                f"{self.path}: an existing cache {'with' if not self.token_spans else 'without'} the token layout "
                "(spans, label probabilities, vocabulary); choose another --out"
            )
        if meta.get(ATTR_VERSION) != self.version:  # e.g. v1.2 spans of split characters, which v1.3 writes apart
            raise CacheError(
                f"{self.path}: holds a v{meta.get(ATTR_VERSION)!r} cache, not v{self.version}; choose another --out"
            )
        if meta.get(ATTR_COMPLETE):
            self._remove_parts()  # markers a crash after the last step left behind
            raise CacheComplete(self.path)

    def _read_parts(self) -> list[tuple[int, int, pa.Table]]:
        parts = []
        for rel in list_files(self.fs, join(self.root, PARTS_DIR)):
            match = _MARKER.fullmatch(rel)
            if match is None:
                continue  # a temp file from an interrupted commit
            table = pq.read_table(io.BytesIO(self.fs.cat_file(join(self.root, f"{PARTS_DIR}/{rel}"))))
            sizes = (table.schema.metadata or {}).get(_BATCH_EXAMPLES_KEY)
            table = table.replace_schema_metadata(None)
            parts.append((int(match[1]), int(match[2]), table))
            self._batch_examples[int(match[1])] = json.loads(sizes) if sizes else None
        parts.sort(key=lambda p: p[0])
        for (_, end, *_), (start, *_) in zip(parts, parts[1:], strict=False):
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
        *,
        batch_examples: list[int] | None = None,
        spans: np.ndarray | None = None,
        label_probs: np.ndarray | None = None,
    ) -> None:
        """Write the rows of batches ``[batch_start, batch_end)`` and mark them done.

        ``records``: dicts with key, task, template_id, prompt, answer, n_rows (source_id optional), in row order.
        ``batch_examples``: how many of the records each batch holds (recorded in a worker's part for merging).
        ``spans`` int [R, 2] byte [start, end) and ``label_probs`` float [R]: required with the token layout.
        Non-finite rows (NaN or inf, e.g. a teacher overflowing in fp16) are refused: nothing is written.
        """
        finite = np.isfinite(probs).all(axis=1) & np.isfinite(tail)  # [n]
        if not finite.all():
            raise CacheError(
                f"{self.path}: the teacher produced {int((~finite).sum())} non-finite rows (NaN or inf) in batches "
                f"[{batch_start}, {batch_end}); nothing of them was written"
            )
        stored = encode_probs(probs)
        if topk_ids is not None:
            topk_ids = mask_zero_ids(stored, topk_ids)
        self.commit_stored(
            batch_start,
            batch_end,
            records,
            stored,
            tail,
            token_ids,
            topk_ids,
            batch_examples,
            spans=None if spans is None else encode_spans(spans),
            label_probs=None if label_probs is None else np.asarray(label_probs, dtype=np.float16),
        )

    def commit_stored(
        self,
        batch_start: int,
        batch_end: int,
        records: list[dict],
        stored_probs: np.ndarray,
        tail: np.ndarray,
        token_ids: np.ndarray,
        topk_ids: np.ndarray | None,
        batch_examples: list[int] | None,
        *,
        spans: np.ndarray | None = None,
        label_probs: np.ndarray | None = None,
    ) -> None:
        """:meth:`commit` with the probabilities, ids and spans already encoded (as another cache stores them)."""
        if batch_start != self.next_batch:
            raise CacheError(f"commit of batch {batch_start} while batch {self.next_batch} is next")
        if batch_examples is not None and (
            len(batch_examples) != batch_end - batch_start or sum(batch_examples) != len(records)
        ):
            raise CacheError(f"batch sizes {batch_examples} do not cover batches [{batch_start}, {batch_end})")
        n = len(tail)
        if self.token_spans and (spans is None or label_probs is None or len(spans) != n or len(label_probs) != n):
            raise CacheError(
                f"{self.path}: a cache with the token layout needs a span and a label probability per row"
            )
        if self.store_ids and (topk_ids is None or len(topk_ids) != n):
            raise CacheError(f"{self.path}: a cache storing ids (--store-ids) needs the top-k ids of every row")
        start = self.rows
        capacity = self._arrays[TAIL].shape[0]
        if start + n > capacity:
            raise CacheError(f"{self.path}: {start + n} rows exceed the planned {capacity}")
        self._arrays[PROBS][start : start + n] = stored_probs
        self._arrays[TAIL][start : start + n] = tail.astype(np.float32)
        self._arrays[TOKEN_IDS][start : start + n] = token_ids.astype(np.int32)
        if self.store_ids:
            self._arrays[TOPK_IDS][start : start + n] = topk_ids[:, : self.ids_k].astype(np.int32)
        if self.token_spans:
            self._arrays[SPANS][start : start + n] = spans.astype(np.int32)
            self._arrays[LABEL_PROBS][start : start + n] = label_probs.astype(np.float16)
        n_rows = np.array([r["n_rows"] for r in records], dtype=np.int64)
        columns = {
            name: [r.get(name) if name == SOURCE_ID else r[name] for r in records]  # source_id: optional, null
            for name in EXAMPLE_COLUMNS.names
            if name != "row_start"
        }
        columns["row_start"] = (start + np.concatenate([[0], np.cumsum(n_rows)[:-1]])).tolist() if records else []
        table = pa.table(columns, schema=EXAMPLE_COLUMNS)
        marked = table
        if batch_examples is not None:
            marked = table.replace_schema_metadata({_BATCH_EXAMPLES_KEY: json.dumps(batch_examples)})
        name = join(self.root, f"{PARTS_DIR}/{batch_start:09d}-{batch_end:09d}.parquet")
        put_atomic(self.fs, name, _parquet_bytes(marked))  # the completion marker: these batches are done
        self.parts.append((batch_start, batch_end, table))
        self._batch_examples[batch_start] = batch_examples
        self.next_batch, self.rows, self.examples = batch_end, start + n, self.examples + len(records)

    @property
    def batch_examples(self) -> list[int]:
        """Examples in each committed batch, in order (for commits that gave them)."""
        sizes = [self._batch_examples[start] for start, _, _ in self.parts]
        if any(s is None for s in sizes):
            raise CacheError(f"{self.path}: some commits did not record their batch sizes")
        return [n for s in sizes for n in s]

    def per_task_counts(self) -> dict:
        """{task: {"examples", "rows"}} of the committed examples, tasks sorted (the ATTR_COUNTS per_task)."""
        counts: dict[str, dict[str, int]] = {}
        for *_, table in self.parts:
            for task, n in zip(table.column("task").to_pylist(), table.column("n_rows").to_pylist(), strict=True):
                c = counts.setdefault(task, {"examples": 0, "rows": 0})
                c["examples"] += 1
                c["rows"] += n
        return dict(sorted(counts.items()))

    def examples_with_rows(self, n_rows: int) -> int:
        """Committed examples of exactly ``n_rows`` rows (teacher answers that reached the row limit)."""
        return sum(n == n_rows for *_, table in self.parts for n in table.column("n_rows").to_pylist())

    def finalize(self, extra: dict) -> dict:
        """Join the parts, trim the arrays, write checksums and mark the cache complete; return the attrs."""
        tables = [t for _, _, t in self.parts]
        table = pa.concat_tables(tables).combine_chunks() if tables else EXAMPLE_COLUMNS.empty_table()
        put_atomic(self.fs, join(self.root, EXAMPLES_FILE), _parquet_bytes(table))
        for array in self._arrays.values():
            array.resize((self.rows, *array.shape[1:]))
        files = []
        for rel in list_files(self.fs, self.root):
            if rel.endswith(_PARTIAL):
                self.fs.rm_file(join(self.root, rel))
            elif rel != GROUP_META_FILE and not rel.startswith(PARTS_DIR + "/"):
                files.append(rel)
        group = zarr.open_group(self._store, mode="r+")
        attrs = dict(group.attrs.asdict())
        attrs.update(extra)
        if ATTR_WORKER in self.identity:
            attrs[ATTR_BATCH_EXAMPLES] = self.batch_examples
        attrs.update(
            {
                ATTR_TOOL_VERSION: _tool_version(),
                ATTR_CREATED: {
                    "at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "on": f"{platform.node()} ({platform.platform()})",
                },
                ATTR_CHECKSUMS: {rel: sha256(self.fs, join(self.root, rel)) for rel in files},
                ATTR_COMPLETE: True,
            }
        )
        attrs[ATTR_DIGEST] = attrs_digest(attrs)
        group.attrs.put(attrs)
        self._remove_parts()
        return attrs

    def _remove_parts(self) -> None:
        parts = join(self.root, PARTS_DIR)
        if self.fs.exists(parts):
            self.fs.rm(parts, recursive=True)


class CacheComplete(CacheError):
    """Raised by CacheWriter when the cache at ``path`` is already complete: nothing left to write."""

    def __init__(self, path: str):
        super().__init__(f"{path}: the cache is already complete")
        self.path = path


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _tool_version() -> str:
    from pipeline import __version__

    return __version__
