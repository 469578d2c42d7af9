"""Writing a cache: create or resume, commit whole batches with completion markers, finalize."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from zarr.codecs import BloscCodec, BloscShuffle

from cache_schema import (
    ARRAY_DTYPES,
    ATTR_CHECKSUMS,
    ATTR_COMPLETE,
    ATTR_CREATED,
    ATTR_DIGEST,
    ATTR_LAYOUT,
    ATTR_SCHEMA,
    ATTR_TOOL_VERSION,
    ATTR_TOP_K,
    ATTR_VERSION,
    DEFAULT_CHUNK_ROWS,
    DEFAULT_SHARD_ROWS,
    EXAMPLE_COLUMNS,
    EXAMPLES_FILE,
    GROUP_META_FILE,
    PARTS_DIR,
    PROBS,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    TAIL,
    TOKEN_IDS,
    TOPK_IDS,
    CacheError,
    attrs_digest,
    encode_probs,
)
from cache_schema.store import list_files, sha256


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
        files = [p for p in list_files(fs, root) if p != GROUP_META_FILE and not p.startswith(PARTS_DIR + "/")]
        attrs = dict(self._group.attrs.asdict())
        attrs.update(extra)
        attrs.update(
            {
                ATTR_TOOL_VERSION: _tool_version(),
                ATTR_CREATED: {
                    "at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "on": f"{platform.node()} ({platform.platform()})",
                },
                ATTR_CHECKSUMS: {p: sha256(fs, os.path.join(root, p)) for p in files},
                ATTR_COMPLETE: True,
            }
        )
        attrs[ATTR_DIGEST] = attrs_digest(attrs)
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
