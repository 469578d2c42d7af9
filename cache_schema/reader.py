"""Opening a cache: every metadata file is checked against the schema before a byte of data is read.

Order of the checks in :func:`open_cache`, each raising CacheError that names the file and both values:
group attributes (schema, version, completeness, digest, k, layout, counts and worker record within the MAX_*
bounds; the JSON's values and depth counted before it is parsed) → the footer of examples.parquet (its columns,
row count and page sizes, not its data) → each array's zarr.json (dtype, shape, chunk and shard sizes, codecs;
the layout's chunk rows those of probs) → every shard file the arrays need, present and within its size bound,
and the vocabulary within MAX_VOCAB_RATIO of its stored bytes → only then the examples table, its text sized
through its dictionary before it is decoded, which must tile the row axis of the arrays. On a local disk the
whole tree is checked first: regular files only, links only inside the cache (``cache_schema.bounded``). Chunks
decode into buffers of their declared size, and every decoded range is checked before a reader sees it: finite,
top-k + tail = 1, and with the token layout ids inside the vocabulary, spans inside their answers, label
probabilities in [0, 1] (the checks ``verify`` makes, so that what distill trains on is what verify passed).

``checksums``: "none" (the default: presence and sizes), "open" (every listed file hashed before
``open_cache`` returns) or "stream" (each shard file hashed the first time a read touches it).
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import zarr

from cache_schema.bounded import (
    check_data_files,
    check_local_tree,
    check_rows,
    examples_text_bound,
    file_bound,
    install_codecs,
    parse_json,
    read_bounded,
    shard_bound,
    shard_files,
)
from cache_schema.spec import (
    ALLOWED_CODECS,
    ARRAY_DTYPES,
    ATTR_CHECKSUMS,
    ATTR_COMPLETE,
    ATTR_COUNTS,
    ATTR_DIGEST,
    ATTR_LAYOUT,
    ATTR_SCHEMA,
    ATTR_TOP_K,
    ATTR_VERSION,
    ATTR_VOCAB,
    ATTR_WORKER,
    EXAMPLES_FILE,
    GROUP_META_FILE,
    LABEL_PROBS,
    MAX_CHUNK_BYTES,
    MAX_CHUNKS_PER_SHARD,
    MAX_EXAMPLES,
    MAX_METADATA_BYTES,
    MAX_ROWS_PER_EXAMPLE,
    MAX_TOP_K,
    MAX_VOCAB,
    MAX_VOCAB_BYTES,
    PROBS,
    READABLE_VERSIONS,
    SCHEMA_NAME,
    SOURCE_ID,
    SPANS,
    TAIL,
    TOKEN_ARRAYS,
    TOKEN_IDS,
    TOPK_IDS,
    VOCAB_BYTES,
    VOCAB_OFFSETS,
    CachedExample,
    CacheError,
    CacheIncomplete,
    attrs_digest,
    byte_exact_spans,
    decode_probs,
    decode_spans,
    decode_vocab,
    example_columns,
    ids_width,
    pad_ids,
)
from cache_schema.store import (
    can_list,
    check_files,
    filesystem,
    is_local,
    join,
    listed_files,
    sha256,
    storage_errors,
    zarr_store,
)

install_codecs()
CHECKSUM_MODES = ("none", "open", "stream")
_FIXED_COLUMN_BYTES = 16  # template_id, n_rows, row_start of one example, beside its text
MAX_VOCAB_RATIO = 32  # decoded vocabulary (bytes and offsets) per stored byte ...
VOCAB_FLOOR = 16 << 20  # ... unless it is this small anyway


class Cache:
    """A validated, complete cache opened for reading. ``cache[i]`` is the i-th example's rows.

    ``fs`` and ``root`` locate its files (``store.join(root, relative path)``), wherever the cache lives.
    """

    def __init__(
        self,
        path: str,
        fs: fsspec.AbstractFileSystem,
        root: str,
        arrays: dict[str, zarr.Array],
        meta: dict,
        examples: pa.Table,
        shard_rows: dict[str, int] | None = None,
        checksums: str = "none",
    ):
        self.path, self.fs, self.root = path, fs, root
        self.meta = meta
        self.examples = examples
        self._arrays = arrays
        self.top_k = int(meta[ATTR_TOP_K])
        self.total_rows = int(meta[ATTR_COUNTS]["rows"])
        self.chunk_rows = int(meta[ATTR_LAYOUT]["chunk_rows"])
        self.has_topk_ids = bool(meta[ATTR_LAYOUT]["store_ids"])
        self.ids_k = ids_width(meta) if self.has_topk_ids else 0  # leading entries of a row whose id is stored
        self.has_token_spans = has_token_spans(meta)  # v1.1 token layout: spans, label probs, teacher vocab
        self.vocab_size = int(meta[ATTR_VOCAB]["size"]) if self.has_token_spans else 0  # checked at open
        self.byte_exact = byte_exact_spans(meta)
        self.keys: list[str] = examples.column("key").to_pylist()
        # each example's id in its source (None: none, and always in a cache older than v1.3)
        self.source_ids: list[str | None] = (
            examples.column(SOURCE_ID).to_pylist() if SOURCE_ID in examples.column_names else [None] * len(self.keys)
        )
        self.tasks: list[str] = examples.column("task").to_pylist()
        self.row_start = examples.column("row_start").to_numpy()
        self.n_rows = examples.column("n_rows").to_numpy()
        self._answer_bytes: np.ndarray | None = None
        self._shard_rows = shard_rows or {}  # rows per shard file, by array (from its zarr.json)
        self._stream_checksums = checksums == "stream"
        self._hashed: set[str] = set()  # shard files already hashed ("stream")

    def __len__(self) -> int:
        return self.examples.num_rows

    @property
    def answer_bytes(self) -> np.ndarray:
        """int64 [N]: UTF-8 bytes of each example's answer, the bound of its spans."""
        if self._answer_bytes is None:
            lengths = pc.binary_length(self.examples.column("answer"))
            self._answer_bytes = lengths.to_numpy(zero_copy_only=False).astype(np.int64)
        return self._answer_bytes

    def __getitem__(self, i: int) -> CachedExample:
        if not -len(self) <= i < len(self):
            raise IndexError(f"example {i} out of range for a cache of {len(self)}")
        i %= len(self)
        start, n = int(self.row_start[i]), int(self.n_rows[i])
        probs, tail, token_ids, topk_ids = self.read_rows(start, start + n)
        spans, label_probs = self.read_token_rows(start, start + n) if self.has_token_spans else (None, None)
        return CachedExample(self.keys[i], probs, tail, token_ids, topk_ids, spans, label_probs)

    def read_rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Decoded rows ``[start, stop)``: probs float32 [n, k], tail float32 [n], token_ids int32 [n], topk_ids
        int32 [n, k] (``UNKNOWN_ID`` past the stored ``ids_k``) or None."""
        stored = self.read_stored(start, stop)
        probs = decode_probs(stored[PROBS])
        check_rows(self.path, start, stop, probs, stored[TAIL], self.top_k)
        ids = stored.get(TOPK_IDS)
        if self.has_token_spans:
            self._check_ids(start, stop, stored[TOKEN_IDS], ids)
        return probs, stored[TAIL], stored[TOKEN_IDS], None if ids is None else pad_ids(ids, self.top_k)

    def read_token_rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Token layout rows ``[start, stop)``: spans int32 [n, 2] byte [start, end), label_probs float32 [n];
        spans inside their answers and in order, label probabilities in [0, 1], as verify checks them."""
        if not self.has_token_spans:
            raise CacheError(f"{self.path}: the cache has no token layout (a v1 cache, or written without it)")
        if not 0 <= start <= stop <= self.total_rows:
            raise CacheError(f"rows [{start}, {stop}) outside the cache's {self.total_rows} rows")
        spans = decode_spans(self._read_array(SPANS, self._arrays[SPANS], start, stop))
        label = self._read_array(LABEL_PROBS, self._arrays[LABEL_PROBS], start, stop).astype(np.float32)
        self._check_token_rows(start, stop, spans, label)
        return spans, label

    # ------------------------------------------------------------------------------ what every reader checks

    def _check_ids(self, start: int, stop: int, token_ids: np.ndarray, stored_ids: np.ndarray | None) -> None:
        """Token ids and stored top-k ids inside the teacher vocabulary (token layout: its size is known)."""
        size = self.vocab_size
        if ((token_ids < 0) | (token_ids >= size)).any():
            raise CacheError(f"{self.path}: rows [{start}, {stop}) hold token ids beyond the {size}-token vocabulary")
        if stored_ids is not None and ((stored_ids < 0) | (stored_ids >= size)).any():
            raise CacheError(f"{self.path}/{TOPK_IDS}: rows [{start}, {stop}) hold ids beyond the {size} tokens")

    def _check_token_rows(self, start: int, stop: int, spans: np.ndarray, label: np.ndarray) -> None:
        """Spans inside each row's answer bytes and in order (from v1.3 none starting before the previous one
        ends), label probabilities finite and in [0, 1]."""
        owner = np.searchsorted(self.row_start, np.arange(start, stop), side="right") - 1  # [n] example of row
        limit = self.answer_bytes[owner]  # [n] answer bytes of each row's example
        if (spans[:, 0] < 0).any() or (spans[:, 1] < spans[:, 0]).any() or (spans[:, 1] > limit).any():
            raise CacheError(f"{self.path}/{SPANS}: rows [{start}, {stop}) have spans outside their answer's bytes")
        same = owner[1:] == owner[:-1]  # consecutive rows of one example
        if (spans[1:, 1][same] < spans[:-1, 1][same]).any():
            raise CacheError(
                f"{self.path}/{SPANS}: rows [{start}, {stop}) have spans that end before the previous one"
            )
        if self.byte_exact and (spans[1:, 0][same] < spans[:-1, 1][same]).any():
            raise CacheError(
                f"{self.path}/{SPANS}: rows [{start}, {stop}) have spans that start before the previous one ends "
                "(from v1.3 each row of a split character has its own bytes)"
            )
        if not np.isfinite(label).all() or (label < 0).any() or (label > 1).any():
            raise CacheError(
                f"{self.path}/{LABEL_PROBS}: rows [{start}, {stop}) have a label probability outside [0, 1] (NaN "
                "or damaged)"
            )

    def check_label_probs(
        self, start: int, stop: int, probs: np.ndarray, token_ids: np.ndarray, topk_ids: np.ndarray, label: np.ndarray
    ) -> float:
        """Each row's label probability equal to its top-k entry of the same id, where the row's own token is
        among its stored top-k; returns the largest difference."""
        hit = (topk_ids == token_ids[:, None]) & (probs > 0)  # [n, k] the row's own token among its top-k
        rows, cols = hit.nonzero()
        first = np.unique(rows, return_index=True)[1]
        error = np.abs(probs[rows[first], cols[first]] - label[rows[first]])
        # label_probs are float16 (relative error ≤ 2^-11), probs fixed point (absolute error ≤ 0.5 / 65535)
        allowed = label[rows[first]] * 2.0**-10 + 1.0 / 65535 + 1e-6
        if (error > allowed).any():
            raise CacheError(
                f"{self.path}/{LABEL_PROBS}: rows [{start}, {stop}) disagree with the top-k probability of the same "
                "token"
            )
        return float(error.max(initial=0.0))

    def teacher_vocab(self) -> list[bytes]:
        """The teacher's tokens as byte strings, by id (token layout only); offsets are checked before use."""
        if not self.has_token_spans:
            raise CacheError(f"{self.path}: the cache has no teacher vocabulary (a v1 cache, or written without it)")
        size, total = self.meta[ATTR_VOCAB]["size"], self.meta[ATTR_VOCAB]["bytes"]
        store = zarr_store(self.fs, self.root, read_only=True)
        try:
            data = zarr.open_array(store, path=VOCAB_BYTES, mode="r", zarr_format=3)[:]
            offsets = zarr.open_array(store, path=VOCAB_OFFSETS, mode="r", zarr_format=3)[:]
        except Exception as e:  # a truncated or corrupt chunk
            raise CacheError(f"{self.path}: the teacher vocabulary is unreadable: {e}") from e
        if offsets[0] != 0 or offsets[-1] != total or (np.diff(offsets) < 0).any() or len(offsets) != size + 1:
            raise CacheError(f"{self.path}/{VOCAB_OFFSETS}: offsets do not cut the {total} vocabulary bytes in order")
        return decode_vocab(data, offsets)

    def read_stored(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows ``[start, stop)`` of every array as stored (probs still encoded), by array name."""
        if not 0 <= start <= stop <= self.total_rows:
            raise CacheError(f"rows [{start}, {stop}) outside the cache's {self.total_rows} rows")
        return {name: self._read_array(name, array, start, stop) for name, array in self._arrays.items()}

    def _read_array(self, name: str, array: zarr.Array, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of one array, shard file by shard file, so a failure names its file."""
        step = self._shard_rows.get(name) or max(stop - start, 1)
        pieces = []
        for lo in range(start - start % step, stop, step):
            a, b = max(lo, start), min(lo + step, stop)
            rel = self._shard_file(name, lo // step)
            if self._stream_checksums and rel not in self._hashed:
                self._check_checksum(rel)
            try:
                pieces.append(array[a:b])
            except CacheError as e:
                raise CacheError(f"{self.path}/{rel}: rows [{a}, {b}) cannot be read: {e}") from None
            except Exception as e:  # zarr and the codecs raise many types for a damaged chunk
                reason = " ".join(str(e).split()) or type(e).__name__
                raise CacheError(f"{self.path}/{rel}: rows [{a}, {b}) do not decode ({reason})") from None
        if not pieces:
            return array[start:stop]
        return np.concatenate(pieces) if len(pieces) != 1 else pieces[0]

    def _shard_file(self, name: str, index: int) -> str:
        return f"{name}/c/{index}" + ("/0" if name in (PROBS, TOPK_IDS, SPANS) else "")

    def _check_checksum(self, rel: str) -> None:
        listed = self.meta.get(ATTR_CHECKSUMS) or {}
        if rel not in listed:
            raise CacheError(f"{self.path}/{rel}: not in the cache's checksum list")
        if sha256(self.fs, join(self.root, rel)) != listed[rel]:
            raise CacheError(f"{self.path}/{rel}: checksum mismatch (corrupted or modified)")
        self._hashed.add(rel)

    def iter_chunks(self) -> Iterator[tuple[int, int]]:
        """Row ranges aligned with the stored chunks: reading one touches one chunk of each array."""
        for start in range(0, self.total_rows, self.chunk_rows):
            yield start, min(start + self.chunk_rows, self.total_rows)


@storage_errors
def open_cache(path: str | os.PathLike, *, checksums: str = "none") -> Cache:
    """Open and validate a complete cache: a local directory, a ``.zip`` of one, or an fsspec URL.

    ``checksums``: "none", "open" or "stream" (module docstring).
    """
    if checksums not in CHECKSUM_MODES:
        raise ValueError(f"checksums={checksums!r} is not one of {CHECKSUM_MODES}")
    path = os.fspath(path)
    fs, root = filesystem(path)
    if is_local(fs) and os.path.isdir(root):
        check_local_tree(root, path)
    meta = read_attrs(path, fs, root)
    _check_meta(path, meta)
    _check_worker(path, meta)
    examples, rows = _check_counts(path, meta)
    examples_bytes = _examples_footer(path, fs, root, examples, meta.get(ATTR_VERSION))
    names = array_names(meta)
    needed, shard_rows = {}, {}
    for name in names:
        width = {PROBS: (meta[ATTR_TOP_K],), TOPK_IDS: (ids_width(meta),), SPANS: (2,)}.get(name, ())
        array_meta, bound = _check_array_meta(path, fs, root, name, (rows, *width))
        shard_rows[name] = array_meta["chunk_grid"]["configuration"]["chunk_shape"][0]
        if name == PROBS:
            _check_layout_rows(path, meta[ATTR_LAYOUT], array_meta)
        needed.update({rel: bound for rel in shard_files(name, array_meta, f"{path}/{name}")})
    vocab_files = _check_vocab_meta(path, fs, root, meta) if has_token_spans(meta) else {}
    needed.update(vocab_files)
    check_data_files(fs, root, path, needed, can_list(fs))
    if vocab_files:
        _check_vocab_stored(path, fs, root, meta, vocab_files)
    store = zarr_store(fs, root, read_only=True)
    try:
        arrays = {name: zarr.open_array(store, path=name, mode="r", zarr_format=3) for name in names}
    except Exception as e:  # zarr raises many types for a broken store; the user needs the path and the cause
        raise CacheError(f"{path}: cannot open the Zarr arrays: {e}") from e
    table = _read_examples(path, examples_bytes, meta.get(ATTR_VERSION))
    _check_tiling(path, table, rows)
    cache = Cache(path, fs, root, arrays, meta, table, shard_rows, checksums)
    if checksums == "open":
        check_files(fs, root, path, listed_files(meta, path))
    return cache


def array_names(meta: dict) -> list[str]:
    """The arrays along the row axis a cache with these attributes holds."""
    ids = [TOPK_IDS] if meta.get(ATTR_LAYOUT, {}).get("store_ids") else []
    return [PROBS, TAIL, TOKEN_IDS, *ids, *(TOKEN_ARRAYS if has_token_spans(meta) else ())]


def has_token_spans(meta: dict) -> bool:
    """Whether a cache has the v1.1 token layout (spans, label probabilities, teacher vocabulary)."""
    layout = meta.get(ATTR_LAYOUT)
    return isinstance(layout, dict) and layout.get("token_spans") is True


def _check_vocab_meta(path: str, fs: fsspec.AbstractFileSystem, root: str, meta: dict) -> dict[str, int]:
    """ATTR_VOCAB within the bounds, and the two vocabulary arrays of the shapes it gives; their data files."""
    vocab = meta.get(ATTR_VOCAB)
    size, total = (vocab.get("size"), vocab.get("bytes")) if isinstance(vocab, dict) else (None, None)
    if not _is_int(size) or not 1 <= size <= MAX_VOCAB or not _is_int(total) or not 0 <= total <= MAX_VOCAB_BYTES:
        raise CacheError(
            f"{path}: teacher vocabulary {_brief(vocab)} is not a size in [1, {MAX_VOCAB}] and a byte count in "
            f"[0, {MAX_VOCAB_BYTES}]"
        )
    needed = {}
    for name, shape in ((VOCAB_BYTES, (total,)), (VOCAB_OFFSETS, (size + 1,))):
        array_meta, bound = _check_array_meta(path, fs, root, name, shape)
        needed.update({rel: bound for rel in shard_files(name, array_meta, f"{path}/{name}")})
    return needed


def _check_vocab_stored(path: str, fs: fsspec.AbstractFileSystem, root: str, meta: dict, files: dict) -> None:
    """The vocabulary the attributes declare is at most MAX_VOCAB_RATIO times the bytes that store it: at the
    schema's limits it decodes to 4 million byte strings (1.5 GB of Python objects) from a few MB of zeros
    and an arithmetic sequence, while a real one compresses about 3.4 times (SmolLM2's 49k tokens: 725 KB in
    217 KB)."""
    vocab = meta[ATTR_VOCAB]
    decoded = vocab["bytes"] + 8 * (vocab["size"] + 1)
    stored = sum(fs.size(join(root, rel)) or 0 for rel in files)
    if decoded > max(VOCAB_FLOOR, MAX_VOCAB_RATIO * stored):
        raise CacheError(
            f"{path}/{VOCAB_BYTES}: a vocabulary of {vocab['size']} tokens and {vocab['bytes']} bytes stored in "
            f"{stored} bytes, more than {MAX_VOCAB_RATIO} times that; refusing to decode it"
        )


def read_json(path: str, fs: fsspec.AbstractFileSystem, name: str, what: str) -> dict:
    """A zarr.json as a dict, refused when it is missing, not a regular file, oversized or not a JSON object."""
    local = is_local(fs)
    if not fs.exists(name) and not (local and os.path.islink(name)):
        raise CacheError(f"{path}: {what} missing")
    data = read_bounded(fs, name, MAX_METADATA_BYTES, f"{path}: {what}", root=os.path.dirname(name) if local else None)
    value = parse_json(data, f"{path}: {what}")
    if not isinstance(value, dict):
        raise CacheError(f"{path}: {what} is not a JSON object")
    return value


def read_attrs(path: str, fs: fsspec.AbstractFileSystem, root: str) -> dict:
    """The group attributes, read as plain JSON (before Zarr parses anything)."""
    name = join(root, GROUP_META_FILE)
    if not fs.exists(name) and not (is_local(fs) and os.path.islink(name)):
        _check_container(path, fs, root)
        partial = can_list(fs) and fs.isdir(root or "/") and bool(fs.ls(root or "/"))
        hint = "; a copy writes it last: rerun the same push or pull to finish one" if partial else ""
        raise CacheError(f"{path}: not a kdpipe cache (no {GROUP_META_FILE}{hint})")
    attrs = read_json(path, fs, name, GROUP_META_FILE).get("attributes", {})
    if not isinstance(attrs, dict):
        raise CacheError(f"{path}/{GROUP_META_FILE}: attributes are not a JSON object")
    return attrs


def _check_container(path: str, fs: fsspec.AbstractFileSystem, root: str) -> None:
    """A missing bucket or folder named as such, rather than as a missing zarr.json."""
    if not can_list(fs) or fs.exists(root or "/"):
        return
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    if not protocols & {"s3", "s3a", "gs", "gcs", "az", "abfs"}:
        raise CacheError(f"{path}: no such folder")
    bucket = root.split("/")[0]
    if not fs.exists(bucket):
        raise CacheError(f"{path}: no such bucket {bucket!r} (or no permission to see it)")
    raise CacheError(f"{path}: no such folder in the bucket {bucket!r}")


def _check_meta(path: str, meta: dict) -> None:
    if meta.get(ATTR_SCHEMA) != SCHEMA_NAME:
        raise CacheError(f"{path}: schema is {_brief(meta.get(ATTR_SCHEMA))}, expected {SCHEMA_NAME!r}")
    if meta.get(ATTR_VERSION) not in READABLE_VERSIONS:
        raise CacheError(
            f"{path}: schema version {_brief(meta.get(ATTR_VERSION))}, this kdpipe reads "
            + " and ".join(map(str, READABLE_VERSIONS))
        )
    if meta.get(ATTR_COMPLETE) is not True:
        raise CacheIncomplete(f"{path}: the cache is incomplete (its writer has not finished; rerun it to resume)")
    if meta.get(ATTR_DIGEST) != attrs_digest(meta):
        raise CacheError(f"{path}/{GROUP_META_FILE}: attributes were modified after the cache was written")
    k = meta.get(ATTR_TOP_K)
    if not _is_int(k) or not 1 <= k <= MAX_TOP_K:
        raise CacheError(f"{path}: top_k {_brief(k)} is not an integer in [1, {MAX_TOP_K}]")
    layout = meta.get(ATTR_LAYOUT)
    if not isinstance(layout, dict) or not all(_is_int(layout.get(n)) and layout[n] > 0 for n in _ROW_LAYOUT):
        raise CacheError(
            f"{path}/{GROUP_META_FILE}: layout {_brief(layout)} lacks positive integer chunk_rows and shard_rows"
        )
    for flag in ("store_ids", "token_spans"):
        if flag in layout and not isinstance(layout[flag], bool):
            raise CacheError(f"{path}/{GROUP_META_FILE}: layout {flag} {_brief(layout[flag])} is not true or false")
    if "ids_k" in layout:
        ids_k = layout["ids_k"]
        if meta.get(ATTR_VERSION) not in ("1.2", "1.3") or not _is_int(ids_k) or not 1 <= ids_k < k:
            raise CacheError(
                f"{path}/{GROUP_META_FILE}: layout ids_k {_brief(ids_k)} is not an integer in [1, {k}) of a "
                "v1.2+ cache"
            )


_ROW_LAYOUT = ("chunk_rows", "shard_rows")


def _check_layout_rows(path: str, layout: dict, array_meta: dict) -> None:
    """layout's chunk_rows and shard_rows are the chunk and shard rows of the probs array: the readers step
    through the rows by them."""
    outer = array_meta["chunk_grid"]["configuration"]["chunk_shape"][0]
    inner = next(
        (c["configuration"]["chunk_shape"][0] for c in array_meta["codecs"] if c["name"] == "sharding_indexed"), outer
    )
    if (layout["chunk_rows"], layout["shard_rows"]) != (inner, outer):
        raise CacheError(
            f"{path}/{GROUP_META_FILE}: layout chunk_rows {layout['chunk_rows']} and shard_rows {layout['shard_rows']}"
            f" differ from the {inner} and {outer} of {PROBS}/{GROUP_META_FILE}"
        )


def _brief(value: object) -> str:
    """A JSON value for an error message, cut short."""
    text = repr(value) if not isinstance(value, dict | list) else json.dumps(value)[:200]
    return text if len(text) <= 120 else text[:117] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_counts(path: str, meta: dict) -> tuple[int, int]:
    """(examples, rows) from the attributes, bounded before anything of that size is read."""
    counts = meta.get(ATTR_COUNTS)
    examples, rows = (counts.get("examples"), counts.get("rows")) if isinstance(counts, dict) else (None, None)
    if not _is_int(examples) or not 0 <= examples <= MAX_EXAMPLES:
        raise CacheError(f"{path}: {_brief(examples)} examples is not an integer in [0, {MAX_EXAMPLES}]")
    if not _is_int(rows) or not examples <= rows <= examples * MAX_ROWS_PER_EXAMPLE:
        raise CacheError(
            f"{path}: {_brief(rows)} rows for {examples} examples is not an integer in "
            f"[{examples}, {examples} x {MAX_ROWS_PER_EXAMPLE}]"
        )
    per_task = counts.get("per_task")
    if per_task is not None and not (isinstance(per_task, dict) and all(map(_is_tally, per_task.values()))):
        raise CacheError(f"{path}: per-task counts {_brief(per_task)} are not counts for each task")
    for label in ("skipped", "truncated"):
        if counts.get(label) is not None and not _is_tally(counts[label]):
            raise CacheError(f"{path}: {label} counts {_brief(counts[label])} are not a mapping of counts")
    return examples, rows


def _is_tally(value: object) -> bool:
    """Counts by name, nested ({"source": {"boolq": 3}}) as the writer records skipped and cut examples."""
    return isinstance(value, dict) and all(_is_int(v) or _is_tally(v) for v in value.values())


def _check_worker(path: str, meta: dict) -> None:
    """A worker's part (ATTR_WORKER present): index in [0, count) and the plan's batch count, all integers."""
    if ATTR_WORKER not in meta:
        return
    worker = meta[ATTR_WORKER]
    fields = [worker.get(n) for n in ("index", "count", "plan_batches")] if isinstance(worker, dict) else [None]
    if not all(_is_int(v) for v in fields) or not 0 <= fields[0] < fields[1] or not 0 <= fields[2] <= MAX_EXAMPLES:
        raise CacheError(
            f"{path}/{GROUP_META_FILE}: worker record {_brief(worker)} is not an integer index in [0, count) and a "
            "number of planned batches"
        )


def _examples_footer(path: str, fs: fsspec.AbstractFileSystem, root: str, examples: int, version: object) -> bytes:
    """The bytes of examples.parquet, once its footer alone (columns, row count, page sizes) passes the checks."""
    name = join(root, EXAMPLES_FILE)
    where = f"{path}/{EXAMPLES_FILE}"
    if not fs.exists(name) and not (is_local(fs) and os.path.islink(name)):
        raise CacheError(f"{where}: file missing")
    bound = file_bound(EXAMPLES_FILE, examples, {})
    data = read_bounded(fs, name, bound, where, root=root if is_local(fs) else None)
    try:
        parquet = pq.ParquetFile(io.BytesIO(data))
    except Exception as e:  # a truncated or corrupt Parquet file
        raise CacheError(f"{where}: unreadable: {e}") from e
    metadata = parquet.metadata
    inflated = sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups))
    allowed = examples_text_bound(examples, len(data)) + _FIXED_COLUMN_BYTES * examples
    if inflated > allowed:
        raise CacheError(f"{where}: its pages inflate to {inflated} bytes, more than the {allowed} allowed")
    expected = example_columns(version)
    if not parquet.schema_arrow.equals(expected):
        raise CacheError(f"{where}: {_schema_difference(parquet.schema_arrow, expected, version)}")
    if parquet.metadata.num_rows != examples:
        raise CacheError(
            f"{path}/{EXAMPLES_FILE}: claims {parquet.metadata.num_rows} examples, the attributes say {examples}"
        )
    return data


def _schema_difference(found: pa.Schema, expected: pa.Schema, version: object) -> str:
    """The first column that differs from the schema's, in one line: the file's names and types are the writer's
    to choose, so they are shown cut short and quoted (a name may hold newlines)."""
    for i, want in enumerate(expected):
        if i >= len(found):
            return f"{len(found)} columns, the v{version} schema has {len(expected)} (no {want.name!r})"
        have = found.field(i)
        if have.name != want.name or not have.type.equals(want.type):
            return (
                f"column {i} is {_brief(have.name)}: {_brief(str(have.type))}, the v{version} schema's is "
                f"{want.name!r}: {want.type}"
            )
    if len(found) > len(expected):
        extra = _brief(found.field(len(expected)).name)
        return f"{len(found)} columns, the v{version} schema has {len(expected)} (an extra {extra})"
    return f"columns differ from the v{version} schema in nullability or field metadata"


def _read_examples(path: str, data: bytes, version: object) -> pa.Table:
    """The examples table of the (footer-checked) examples.parquet bytes ``data``, its text columns read still
    dictionary-encoded: their decoded size, each value's length summed through the dictionary, must be within
    :func:`examples_text_bound` before a value is decoded.

    The footer counts a dictionary page once, while every row that refers to an entry decodes it again: a 5 KB
    file whose one 3 MB entry each of 1,100 examples refers to decodes to 3.3 GB."""
    where = f"{path}/{EXAMPLES_FILE}"
    schema = example_columns(version)
    text = [f.name for f in schema if pa.types.is_string(f.type)]
    try:
        table = pq.ParquetFile(io.BytesIO(data), read_dictionary=text).read(use_threads=False)
    except Exception as e:  # a corrupt page behind a sound footer
        raise CacheError(f"{where}: unreadable: {e}") from e
    decoded = sum(_text_bytes(table.column(name)) for name in text)
    bound = examples_text_bound(table.num_rows, len(data))
    if decoded > bound:
        raise CacheError(
            f"{where}: its text decodes to {decoded} bytes, more than the {bound} a file of {len(data)} bytes for "
            f"{table.num_rows} examples may hold (a dictionary entry repeated: refused before decoding it)"
        )
    columns = [
        pa.chunked_array([_decoded(c) for c in table.column(f.name).chunks], f.type)
        if f.name in text
        else table[f.name]
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _text_bytes(column: pa.ChunkedArray) -> int:
    """Bytes of a text column once decoded, counted without decoding it."""
    total = 0
    for chunk in column.chunks:
        if pa.types.is_dictionary(chunk.type):
            lengths = pc.binary_length(chunk.dictionary)  # [entries]
            total += int(pc.sum(lengths.take(chunk.indices)).as_py() or 0)
        else:
            total += chunk.nbytes
    return total


def _decoded(chunk: pa.Array) -> pa.Array:
    return chunk.dictionary_decode() if pa.types.is_dictionary(chunk.type) else chunk


def _check_array_meta(
    path: str, fs: fsspec.AbstractFileSystem, root: str, name: str, shape: tuple[int, ...]
) -> tuple[dict, int]:
    """An array's zarr.json against the schema: dtype, shape, a bounded chunk and shard, known codecs only.

    Returns the metadata and the largest size one of its shard files may have.
    """
    where = f"{path}/{name}/{GROUP_META_FILE}"
    meta = read_json(path, fs, join(root, f"{name}/{GROUP_META_FILE}"), f"array {name!r}")
    if meta.get("node_type") != "array" or meta.get("zarr_format") != 3:
        raise CacheError(f"{where}: not a Zarr v3 array")
    if meta.get("data_type") != ARRAY_DTYPES[name].name:
        raise CacheError(f"{where}: dtype {_brief(meta.get('data_type'))}, schema says {ARRAY_DTYPES[name].name!r}")
    if meta.get("shape") != list(shape):
        raise CacheError(f"{where}: shape {_brief(meta.get('shape'))}, expected {list(shape)}")
    if meta.get("storage_transformers"):
        raise CacheError(f"{where}: storage transformers {_brief(meta['storage_transformers'])} are not allowed")
    grid = meta.get("chunk_grid")
    config = grid.get("configuration") if isinstance(grid, dict) and grid.get("name") == "regular" else None
    outer = config.get("chunk_shape") if isinstance(config, dict) else None
    _check_shape(where, "chunk shape", outer, len(shape))
    codecs = meta.get("codecs")
    inner = outer
    for codec in _walk_codecs(where, codecs):
        if codec["name"] == "sharding_indexed":
            inner = codec["configuration"].get("chunk_shape")
            _check_shape(where, "inner chunk shape", inner, len(shape))
            if any(o % i for o, i in zip(outer, inner, strict=True)):
                raise CacheError(f"{where}: shard shape {outer} is not a multiple of chunk shape {inner}")
    if math.prod(inner) * ARRAY_DTYPES[name].itemsize > MAX_CHUNK_BYTES:
        raise CacheError(f"{where}: chunk shape {inner} exceeds {MAX_CHUNK_BYTES} bytes")
    chunks_per_shard = math.prod(o // i for o, i in zip(outer, inner, strict=True))
    if chunks_per_shard > MAX_CHUNKS_PER_SHARD:
        raise CacheError(f"{where}: shard shape {outer} holds more than {MAX_CHUNKS_PER_SHARD} chunks of {inner}")
    return meta, shard_bound(math.prod(inner) * ARRAY_DTYPES[name].itemsize, chunks_per_shard)


def _check_shape(where: str, what: str, value: object, ndim: int) -> None:
    if not isinstance(value, list) or len(value) != ndim or not all(_is_int(v) and v > 0 for v in value):
        raise CacheError(f"{where}: {what} {_brief(value)} is not {ndim} positive integers")


def _walk_codecs(where: str, codecs: object) -> Iterator[dict]:
    """Every codec of a codec list, nested ones (a shard's inner and index codecs) included; unknown ones raise."""
    if not isinstance(codecs, list) or not codecs:
        raise CacheError(f"{where}: codecs {_brief(codecs)} is not a list of codecs")
    for codec in codecs:
        name = codec.get("name") if isinstance(codec, dict) else codec
        if not isinstance(name, str) or name not in ALLOWED_CODECS:
            raise CacheError(f"{where}: codec {_brief(name)} is not one of {', '.join(sorted(ALLOWED_CODECS))}")
        config = codec.setdefault("configuration", {})
        if not isinstance(config, dict):
            raise CacheError(f"{where}: codec {name!r} has the configuration {_brief(config)}, not a JSON object")
        yield codec
        for key in ("codecs", "index_codecs"):
            if isinstance(config, dict) and key in config:
                yield from _walk_codecs(where, config[key])


def _check_tiling(path: str, examples: pa.Table, rows: int) -> None:
    n_rows = examples.column("n_rows").to_numpy()
    row_start = examples.column("row_start").to_numpy()
    if len(n_rows) and ((n_rows < 1).any() or (n_rows > MAX_ROWS_PER_EXAMPLE).any()):
        raise CacheError(f"{path}/{EXAMPLES_FILE}: n_rows outside [1, {MAX_ROWS_PER_EXAMPLE}]")
    expected_start = np.concatenate([[0], np.cumsum(n_rows, dtype=np.int64)[:-1]]) if len(n_rows) else n_rows
    if not np.array_equal(row_start, expected_start) or int(n_rows.sum(dtype=np.int64)) != rows:
        raise CacheError(f"{path}/{EXAMPLES_FILE}: row_start/n_rows do not tile the {rows} rows of the arrays")
