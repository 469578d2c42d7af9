"""Moving caches between places: copy (push, pull, unpack) and pack into one zip.

A copy is driven by the source's checksum list (ATTR_CHECKSUMS), so it works from and to any store, never
follows a name outside the cache, and resumes: a destination file that already has its listed checksum is
skipped, any other is copied again. Each copied file is hashed on the way (a corrupted source is refused) and
read back at the destination. The group's zarr.json, which says the cache is complete, is written last, so an
interrupted copy never opens as a cache.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import zipfile

from tqdm import tqdm

from cache_schema.reader import Cache, open_cache, read_attrs
from cache_schema.spec import ATTR_DIGEST, GROUP_META_FILE, CacheError
from cache_schema.store import (
    can_list,
    check_files,
    filesystem,
    is_local,
    is_zip,
    join,
    list_files,
    listed_files,
    put_atomic,
    sha256,
    storage_errors,
)

_BLOCK = 8 << 20
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed entry times: packing the same cache twice gives the same bytes


@storage_errors
def copy_cache(src: str | os.PathLike, dst: str | os.PathLike, *, progress: bool = True) -> dict:
    """Copy the complete cache ``src`` to ``dst`` (directory or URL), resuming a partial copy; return a report."""
    src, dst = os.fspath(src), os.fspath(dst)
    if is_zip(dst):
        raise CacheError(f"{dst}: copies go to a directory or URL; use kdpipe cache pack for a zip")
    cache = open_cache(src)
    listed = listed_files(cache.meta, cache.path)
    meta_bytes = cache.fs.cat_file(join(cache.root, GROUP_META_FILE))
    fs, root = filesystem(dst)
    _check_destination(cache, listed, fs, root, dst)
    copied, skipped, nbytes = [], [], 0
    for rel in tqdm(sorted(listed), desc=f"copy to {dst}", unit="file", disable=not progress):
        target = join(root, rel)
        if fs.exists(target) and sha256(fs, target) == listed[rel]:
            skipped.append(rel)
            continue
        nbytes += _copy_file(cache, rel, listed[rel], fs, target)
        if sha256(fs, target) != listed[rel]:
            raise CacheError(f"{dst}/{rel}: checksum mismatch after the copy (the destination altered it)")
        copied.append(rel)
    target = join(root, GROUP_META_FILE)
    if not (fs.exists(target) and fs.cat_file(target) == meta_bytes):
        put_atomic(fs, target, meta_bytes)  # last: from now on the destination opens as a complete cache
        copied.append(GROUP_META_FILE)
    if open_cache(dst).meta[ATTR_DIGEST] != cache.meta[ATTR_DIGEST]:
        raise CacheError(f"{dst}: the copy's attributes differ from {src}'s (was the source rewritten meanwhile?)")
    return {"source": src, "destination": dst, "copied": copied, "skipped": skipped, "bytes": nbytes}


def _check_destination(cache: Cache, listed: dict, fs, root: str, dst: str) -> None:
    """A destination is empty, a partial copy of this cache, or this cache: never someone else's files."""
    if fs.exists(join(root, GROUP_META_FILE)):
        theirs = read_attrs(dst, fs, root).get(ATTR_DIGEST)
        if theirs != cache.meta[ATTR_DIGEST]:
            raise CacheError(
                f"{dst}: holds another cache (attrs digest {str(theirs)[:16]} there, "
                f"{cache.meta[ATTR_DIGEST][:16]} in {cache.path}); choose another destination"
            )
    if not can_list(fs):
        raise CacheError(f"{dst}: this store is read-only here; copy to a directory, s3:// or gs://")
    for rel in list_files(fs, root):
        if rel != GROUP_META_FILE and rel not in listed:
            raise CacheError(f"{dst}: holds {rel}, which is no file of {cache.path}; choose another destination")


def _copy_file(cache: Cache, rel: str, digest: str, fs, target: str) -> int:
    """Stream one file, hashing it on the way; a source that does not match its checksum is not kept."""
    if is_local(fs):
        fs.makedirs(posixpath.dirname(target), exist_ok=True)
    h, n = hashlib.sha256(), 0
    with cache.fs.open(join(cache.root, rel), "rb") as fin, fs.open(target, "wb") as fout:
        for block in iter(lambda: fin.read(_BLOCK), b""):
            h.update(block)
            fout.write(block)
            n += len(block)
    if h.hexdigest() != digest:
        fs.rm_file(target)
        raise CacheError(f"{cache.path}/{rel}: checksum mismatch in the source (corrupted or modified)")
    return n


@storage_errors
def pack_cache(src: str | os.PathLike, out: str | os.PathLike, *, progress: bool = True) -> dict:
    """Write the complete cache ``src`` as one zip of stored (not recompressed) entries that opens in place."""
    src, out = os.fspath(src), os.fspath(out)
    if not out.endswith(".zip") or "://" in out:
        raise CacheError(f"{out}: the packed cache is a local file ending in .zip (push or copy it afterwards)")
    cache = open_cache(src)
    listed = listed_files(cache.meta, cache.path)
    if os.path.lexists(out):
        _check_packed_destination(cache, out)
    partial = out + ".partial"
    try:
        nbytes = _write_zip(cache, listed, partial, progress)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise
    os.replace(partial, out)
    packed = open_cache(out)
    check_files(packed.fs, packed.root, out, listed)
    return {"source": src, "zip": out, "files": len(listed) + 1, "bytes": nbytes}


def _check_packed_destination(cache: Cache, out: str) -> None:
    """An existing ``out`` is replaced only when it is a zip of this very cache (as push, pull and unpack
    resume into their own copy and refuse another's)."""
    try:
        fs, root = filesystem(out)
        theirs = read_attrs(out, fs, root).get(ATTR_DIGEST)
    except (CacheError, OSError, zipfile.BadZipFile):
        theirs = None
    if theirs != cache.meta[ATTR_DIGEST]:
        what = f"another cache (attrs digest {str(theirs)[:16]})" if theirs else "a file that is no packed cache"
        raise CacheError(
            f"{out}: already exists and holds {what}, not {cache.path} (attrs digest {cache.meta[ATTR_DIGEST][:16]}); "
            "choose another name or remove it"
        )


def _write_zip(cache: Cache, listed: dict, out: str, progress: bool) -> int:
    nbytes = 0
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
        for rel in tqdm([*sorted(listed), GROUP_META_FILE], desc="pack", unit="file", disable=not progress):
            info = zipfile.ZipInfo(rel, date_time=_ZIP_TIME)
            info.file_size = cache.fs.size(join(cache.root, rel))  # sizes past 2 GiB get zip64 entries
            h = hashlib.sha256()
            with cache.fs.open(join(cache.root, rel), "rb") as fin, z.open(info, "w") as fout:
                for block in iter(lambda: fin.read(_BLOCK), b""):
                    h.update(block)
                    fout.write(block)
            if rel in listed and h.hexdigest() != listed[rel]:
                raise CacheError(f"{cache.path}/{rel}: checksum mismatch in the source (corrupted or modified)")
            nbytes += info.file_size
    return nbytes
