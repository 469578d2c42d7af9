"""Where a cache lives: a local directory, a zip read in place, or an fsspec URL.

Every location is a ``(filesystem, root)`` pair and a cache's files are named by paths relative to the root,
so the same code reads a folder, ``c.zip``, ``s3://bucket/c``, ``gs://bucket/c`` (with gcsfs installed),
``memory://c`` or ``https://host/c``. Credentials and endpoints come from the usual environment of each
filesystem (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ... for s3fs); nothing here stores them. A cache's
files are what its checksum list names (``listed_files``), checked against what the store holds by ``check_files``
for the reader, ``verify`` and the copies alike.
"""

from __future__ import annotations

import functools
import hashlib
import os
import posixpath
import re

import fsspec
import zarr

from cache_schema.bounded import check_zip_members
from cache_schema.spec import ATTR_CHECKSUMS, GROUP_META_FILE, CacheError

# Plain web servers need not list folders: caches there are checked against their checksum list alone.
_UNLISTABLE = {"http", "https"}
# Packages whose exceptions mean "the storage failed" (not all subclass OSError, e.g. botocore's).
# zipfile's BadZipFile: a truncated or damaged .zip, whose own reader cannot say more.
_STORAGE_PACKAGES = {"aiobotocore", "aiohttp", "botocore", "fsspec", "gcsfs", "google", "s3fs", "zipfile"}
_SHA256 = re.compile(r"[0-9a-f]{64}")


def is_zip(path: str) -> bool:
    return path.endswith(".zip") or path.startswith("zip://")


def filesystem(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem holding ``path`` and the cache's root in it; a zip's entry names are checked first."""
    if is_zip(path):
        target = path.split("::", 1)[-1] if path.startswith("zip://") else path
        fs = fsspec.filesystem("zip", fo=target)
        for name in fs.zip.namelist():
            safe_relpath(name, target)
        check_zip_members(fs.zip.infolist(), target)
        return fs, ""
    fs, root = fsspec.core.url_to_fs(path)
    fs.invalidate_cache()  # fsspec reuses filesystem objects: forget listings another writer may have changed
    return fs, root


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in _protocols(fs)


def can_list(fs: fsspec.AbstractFileSystem) -> bool:
    return not _UNLISTABLE & _protocols(fs)


def _protocols(fs: fsspec.AbstractFileSystem) -> set[str]:
    return {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)


def join(root: str, rel: str) -> str:
    return posixpath.join(root, rel) if root else rel


def zarr_store(fs: fsspec.AbstractFileSystem, root: str, read_only: bool) -> zarr.abc.store.Store:
    if is_local(fs):
        return zarr.storage.LocalStore(root, read_only=read_only)
    return zarr.storage.FsspecStore.from_mapper(fs.get_mapper(root), read_only=read_only)


def list_files(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    """Relative paths of every file under ``root`` (stores that cannot list are not asked)."""
    prefix = root.rstrip("/") + "/" if root else ""
    found = fs.find(root or "/", withdirs=False) if fs.exists(root or "/") else []
    return sorted(p[len(prefix) :] if p.startswith(prefix) else p.lstrip("/") for p in found)


def sha256(fs: fsspec.AbstractFileSystem, path: str) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def put_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` so that a reader sees the whole file or none of it."""
    if is_local(fs):
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        fs.pipe_file(path + ".tmp", data)
        os.replace(path + ".tmp", path)
    else:  # one PUT: an object store shows the whole object or no object (it has no rename)
        fs.pipe_file(path, data)


def safe_relpath(name: str, where: str) -> str:
    """``name`` as a path inside a cache; an absolute path, ``..``, a drive or a backslash raises CacheError."""
    parts = name.removesuffix("/").split("/")
    if not name or name.startswith("/") or "\\" in name or ":" in name or any(p in ("", ".", "..") for p in parts):
        raise CacheError(f"{where}: refusing the entry {name!r} (absolute, '..' or not a plain relative path)")
    return name


def listed_files(meta: dict, where: str) -> dict[str, str]:
    """The checksum list {relative path: sha256} in the attributes ``meta`` of the cache at ``where``, each path
    checked to stay inside the cache."""
    listed = meta.get(ATTR_CHECKSUMS)
    if not isinstance(listed, dict):
        raise CacheError(f"{where}/{GROUP_META_FILE}: no checksum list")
    for rel, digest in listed.items():
        safe_relpath(rel, f"{where}/{GROUP_META_FILE}")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise CacheError(f"{where}/{GROUP_META_FILE}: checksum of {rel} is not a sha256: {digest!r}")
    return listed


def check_files(fs: fsspec.AbstractFileSystem, root: str, where: str, listed: dict[str, str]) -> None:
    """Every listed file present with its checksum, and (where the store can list) no file beyond them."""
    for rel in sorted(listed):
        if not fs.exists(join(root, rel)):
            raise CacheError(f"{where}/{rel}: file missing")
    if can_list(fs):  # plain HTTP cannot list: there the checksum list alone says what a cache holds
        for rel in list_files(fs, root):
            if rel != GROUP_META_FILE and rel not in listed:
                raise CacheError(f"{where}/{rel}: file not listed in the cache's checksums")
    for rel, digest in sorted(listed.items()):
        if sha256(fs, join(root, rel)) != digest:
            raise CacheError(f"{where}/{rel}: checksum mismatch (corrupted or modified)")


def storage_errors(fn):
    """Report a storage failure (no such bucket, refused connection, no permission) as a one-line CacheError."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CacheError:
            raise
        except Exception as e:
            if not isinstance(e, OSError) and type(e).__module__.split(".")[0] not in _STORAGE_PACKAGES:
                raise
            where = " -> ".join(os.fspath(a) for a in args if isinstance(a, str | os.PathLike)) or fn.__name__
            message = " ".join(str(e).split()) or type(e).__name__
            raise CacheError(f"{where}: {type(e).__name__}: {message}") from e

    return wrapper
