"""Reading an untrusted cache with every size known before the read: files, zip members, chunks, rows.

A cache comes from a teammate or a bucket, so each reader checks, before it reads anything of that size:

- files: on a local disk only regular files are read, and a link must resolve inside the cache (a FIFO would
  hang the reader, ``/dev/zero`` never ends, a link may point anywhere); every file has a size bound from the
  schema (:func:`file_bound`) and no read goes past it;
- zip members: the size each declares is bounded, and so is its compression ratio (a 3 MB deflate stream
  can claim gigabytes: :data:`MAX_ZIP_RATIO`);
- chunks: the compressors decode into a buffer of the size the array's chunk shape declares, so a chunk that
  would inflate beyond it is refused before anything of that size is allocated (:class:`BoundedBlosc`, ...);
- data files: every shard file the arrays need is present before a row is read (a missing shard would
  otherwise read as zeros), and :func:`check_rows` refuses non-finite or non-normalised rows as they decode.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import zlib
from collections.abc import Iterator

import fsspec
import numcodecs
import numpy as np
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec
from zarr.core.buffer.cpu import as_numpy_array_wrapper
from zarr.registry import register_codec

from cache_schema.spec import (
    EXAMPLES_FILE,
    GROUP_META_FILE,
    MAX_CHUNK_BYTES,
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_METADATA_ITEMS,
    PROBS,
    TAIL,
    CacheError,
    decode_tolerance,
)

MAX_ZIP_RATIO = 100  # a zip member may inflate at most this many times its stored size ...
ZIP_RATIO_FLOOR = 1 << 20  # ... unless it is this small anyway
# examples.parquet, stored and inflated: at most MAX_EXAMPLE_BYTES per example (a long XSum article is ~30 KB)
# plus EXAMPLES_SLACK for the footer and page headers; what a hostile table of N examples may cost, no more.
MAX_EXAMPLE_BYTES = 1 << 18
EXAMPLES_SLACK = 1 << 20
EXAMPLES_TEXT_FLOOR = 64 << 20  # decoded text any examples.parquet may have, however small the file


class ChunkTooLarge(CacheError):
    """A compressed chunk that would decode to more bytes than its declared chunk shape holds."""


# ---------------------------------------------------------------------------------------------- files


def file_bound(rel: str, examples: int, shard_bytes: dict[str, int]) -> int:
    """The largest size the file ``rel`` of a cache of ``examples`` examples may have, from the schema alone."""
    if rel == GROUP_META_FILE or rel.endswith("/" + GROUP_META_FILE):
        return MAX_METADATA_BYTES
    if rel == EXAMPLES_FILE:
        return EXAMPLES_SLACK + examples * MAX_EXAMPLE_BYTES
    return shard_bytes.get(rel.split("/")[0], 0)


def examples_text_bound(examples: int, file_bytes: int) -> int:
    """The most bytes the text columns of an examples.parquet of ``file_bytes`` for ``examples`` examples may decode
    to: the per-example bound, and at most MAX_ZIP_RATIO times the file (text compresses 3-10 times; a dictionary
    entry that every row repeats is what inflates further), with EXAMPLES_TEXT_FLOOR for small files."""
    return min(EXAMPLES_SLACK + examples * MAX_EXAMPLE_BYTES, max(EXAMPLES_TEXT_FLOOR, MAX_ZIP_RATIO * file_bytes))


def shard_bound(chunk_bytes: int, chunks_per_shard: int) -> int:
    """Bytes of a shard file of ``chunks_per_shard`` chunks of ``chunk_bytes``: the worst compressor output
    (blosc, zstd and gzip all stay well within 1/8 above the input, plus a header) and the shard index."""
    return chunks_per_shard * (chunk_bytes + chunk_bytes // 8 + 1024) + chunks_per_shard * 16 + 1024


def check_local_file(path: str, root: str, where: str) -> None:
    """``path`` (under the cache's ``root`` on a local disk) is a regular file, or a link to one in the cache."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise CacheError(f"{where}: file missing") from None
    if stat.S_ISLNK(st.st_mode):
        target, top = os.path.realpath(path), os.path.realpath(root)
        if os.path.commonpath([target, top]) != top:
            raise CacheError(f"{where}: a link to {target}, outside the cache; refusing to follow it")
        st = os.stat(target)
    if not stat.S_ISREG(st.st_mode):
        raise CacheError(f"{where}: not a regular file ({_kind(st.st_mode)}); refusing to read it")


def check_local_tree(root: str, where: str) -> None:
    """Every entry under a local cache ``root``: regular files and folders, links only to places inside it."""
    top = os.path.realpath(root)
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            full = os.path.join(folder, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                target = os.path.realpath(full)
                if os.path.commonpath([target, top]) != top:
                    raise CacheError(f"{where}/{rel}: a link to {target}, outside the cache; refusing to follow it")
                st = os.stat(target)
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                raise CacheError(f"{where}/{rel}: not a regular file ({_kind(st.st_mode)}); refusing to read it")


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return name
    return "not a plain file"


def read_bounded(fs: fsspec.AbstractFileSystem, name: str, limit: int, where: str, root: str | None = None) -> bytes:
    """The whole file ``name``, refused when it is not a regular file or larger than ``limit`` bytes."""
    if _is_local(fs) and root is not None:
        check_local_file(name, root or ".", where)
    size = fs.size(name)
    if size is None or size > limit:
        raise CacheError(f"{where}: {size} bytes, more than the {limit} this file may have")
    with fs.open(name, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise CacheError(f"{where}: longer than the {limit} bytes this file may have")
    return data


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string, escapes included
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def parse_json(data: bytes, where: str) -> object:
    """``data`` parsed as JSON once it is known to stay within MAX_METADATA_ITEMS values and MAX_METADATA_DEPTH
    levels: counted on the bytes, before the parser builds an object (the size bound alone bounds bytes, and 63 MB
    of ``[{},{},...]`` parse into 21 million dicts)."""
    items = (
        data.count(b",") + data.count(b"[") + data.count(b"{")
    )  # every value but a container's first follows a comma
    if items > MAX_METADATA_ITEMS:
        raise CacheError(f"{where}: holds up to {items} JSON values, more than the {MAX_METADATA_ITEMS} allowed")
    brackets = np.frombuffer(_JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS), dtype=np.uint8)
    steps = np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1).astype(np.int32)
    depth = int(np.cumsum(steps).max(initial=0))
    if depth > MAX_METADATA_DEPTH:
        raise CacheError(f"{where}: JSON nested {depth} levels deep, more than the {MAX_METADATA_DEPTH} allowed")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise CacheError(f"{where}: not valid JSON: {e}") from None


def check_zip_members(infos, where: str) -> None:
    """Each member of a zip: declared size within the ratio limit of its stored size (no zip bombs)."""
    for info in infos:
        if info.compress_type == 0 and info.file_size != info.compress_size:
            raise CacheError(f"{where}: entry {info.filename!r} is stored but declares {info.file_size} bytes")
        if info.file_size > max(ZIP_RATIO_FLOOR, info.compress_size * MAX_ZIP_RATIO):
            raise CacheError(
                f"{where}: entry {info.filename!r} inflates {info.compress_size} bytes to {info.file_size}, more "
                f"than {MAX_ZIP_RATIO} times; refusing it"
            )


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    return "file" in protocols


# ---------------------------------------------------------------------------------------------- data files


def shard_files(name: str, meta: dict, where: str) -> Iterator[str]:
    """Relative paths of every shard file of the array ``name`` whose zarr.json is ``meta`` (already checked)."""
    encoding = meta.get("chunk_key_encoding")
    if encoding != {"name": "default", "configuration": {"separator": "/"}}:
        raise CacheError(f"{where}: chunk key encoding {encoding!r}, the schema writes the default with '/'")
    shape, outer = meta["shape"], meta["chunk_grid"]["configuration"]["chunk_shape"]
    grid = [math.ceil(s / c) for s, c in zip(shape, outer, strict=True)]
    for index in np.ndindex(*grid) if all(grid) else ():
        yield f"{name}/c/" + "/".join(map(str, index))


def check_data_files(
    fs: fsspec.AbstractFileSystem, root: str, where: str, needed: dict[str, int], listable: bool
) -> None:
    """Every needed file (relative path -> size bound) present, of a size within its bound."""
    if not needed:
        return
    prefix = root.rstrip("/") + "/" if root else ""
    if listable:
        found = fs.find(root or "/", withdirs=False, detail=True)
        sizes = {name.removeprefix(prefix).lstrip("/"): info.get("size") for name, info in found.items()}
    else:
        sizes = {}
    for rel in sorted(needed):
        if listable and rel not in sizes:
            raise CacheError(f"{where}/{rel}: file missing (the arrays need it)")
        size = sizes[rel] if listable else _size_or_missing(fs, f"{prefix}{rel}", f"{where}/{rel}")
        if size is None or size > needed[rel]:
            raise CacheError(f"{where}/{rel}: {size} bytes, more than the {needed[rel]} a shard of it may have")


def _size_or_missing(fs, name: str, where: str) -> int | None:
    try:
        return fs.size(name)
    except FileNotFoundError:
        raise CacheError(f"{where}: file missing (the arrays need it)") from None


# ---------------------------------------------------------------------------------------------- rows


def check_rows(path: str, start: int, stop: int, probs: np.ndarray, tail: np.ndarray, k: int) -> None:
    """Decoded rows of the cache at ``path`` as the writer guarantees them: finite, non-negative, top-k + tail
    summing to 1 (a missing or zeroed chunk reads as zeros, which fails the sum)."""
    if not len(tail):
        return
    tolerance = decode_tolerance(k)
    if not np.isfinite(tail).all():
        raise CacheError(f"{path}/{TAIL}: rows [{start}, {stop}) hold a non-finite tail (NaN or inf)")
    if (tail < -tolerance).any() or (tail > 1 + tolerance).any():
        raise CacheError(f"{path}/{TAIL}: rows [{start}, {stop}) have a tail outside [0, 1]")
    if (probs[:, -1] < 0).any():
        raise CacheError(f"{path}/{PROBS}: rows [{start}, {stop}) decode to negative probabilities")
    error = np.abs(probs.sum(axis=1, dtype=np.float64) + tail - 1.0)  # [n]
    if (error > tolerance).any():
        worst = float(error.max())
        raise CacheError(
            f"{path}/{PROBS}: rows [{start}, {stop}) sum to 1 only within {worst:.2e} (> {tolerance:.2e}); "
            "a zeroed or damaged chunk"
        )


# ---------------------------------------------------------------------------------------------- codecs


def _expected_bytes(chunk_spec) -> int:
    return math.prod(chunk_spec.shape) * chunk_spec.dtype.to_native_dtype().itemsize


def _decode_into(codec: numcodecs.abc.Codec, data: np.ndarray, expected: int) -> np.ndarray:
    """Decode into a buffer of exactly ``expected`` bytes; the codec refuses a stream that declares more."""
    if expected > MAX_CHUNK_BYTES + (1 << 20):
        raise ChunkTooLarge(f"a chunk of {expected} bytes is larger than {MAX_CHUNK_BYTES}")
    out = np.empty(expected, dtype=np.uint8)
    try:
        codec.decode(data, out=out)
    except (ValueError, RuntimeError) as e:
        reason = str(e).replace("b'", "").replace("'", "")
        raise ChunkTooLarge(
            f"a {type(codec).__name__.lower()} chunk inflates beyond the {expected} bytes of its declared chunk "
            f"shape ({reason}); refused before decoding"
        ) from None
    return out


class BoundedBlosc(BloscCodec):
    """Blosc that decodes into the declared chunk size (blosc's header states the size; more is refused)."""

    def _decode_sync(self, chunk_bytes, chunk_spec):
        expected = _expected_bytes(chunk_spec)
        return as_numpy_array_wrapper(
            lambda data: _decode_into(self._blosc_codec, data, expected), chunk_bytes, chunk_spec.prototype
        )


class BoundedZstd(ZstdCodec):
    """Zstd that decodes into the declared chunk size (a frame that needs more is refused)."""

    def _decode_sync(self, chunk_bytes, chunk_spec):
        expected = _expected_bytes(chunk_spec)
        return as_numpy_array_wrapper(
            lambda data: _decode_into(self._zstd_codec, data, expected), chunk_bytes, chunk_spec.prototype
        )


class BoundedGzip(GzipCodec):
    """Gzip inflated at most one byte past the declared chunk size (a longer stream is refused)."""

    def _decode_sync(self, chunk_bytes, chunk_spec):
        expected = _expected_bytes(chunk_spec)
        return as_numpy_array_wrapper(lambda data: _gunzip(data, expected), chunk_bytes, chunk_spec.prototype)


def _gunzip(data: np.ndarray, expected: int) -> np.ndarray:
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, as numcodecs' GZip accepts
    try:
        out = inflater.decompress(memoryview(data).cast("B"), expected + 1)
    except zlib.error as e:
        raise ChunkTooLarge(f"gzip chunk is not a valid stream: {e}") from None
    if len(out) > expected or inflater.unconsumed_tail or inflater.unused_data:
        raise ChunkTooLarge(f"a gzip chunk inflates beyond the {expected} bytes of its declared chunk shape")
    if len(out) != expected:
        raise ChunkTooLarge(f"a gzip chunk inflates to {len(out)} bytes, not the {expected} of its chunk shape")
    return np.frombuffer(out, dtype=np.uint8)


_BOUNDED = {"blosc": BoundedBlosc, "zstd": BoundedZstd, "gzip": BoundedGzip}


def install_codecs() -> None:
    """Make zarr decode blosc, zstd and gzip chunks with the bounded classes above (encoding is unchanged)."""
    import zarr

    settings = {}
    for name, cls in _BOUNDED.items():
        register_codec(name, cls)
        settings[f"codecs.{name}"] = f"{cls.__module__}.{cls.__qualname__}"
    zarr.config.set(settings)
