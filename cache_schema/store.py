"""Where a cache lives: local directories, zips read in place, and fsspec URLs; listing and hashing files."""

from __future__ import annotations

import hashlib

import fsspec
import zarr


def is_zip(path: str) -> bool:
    return path.endswith(".zip") or path.startswith("zip://")


def filesystem(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    if is_zip(path):
        target = path.split("::", 1)[-1] if path.startswith("zip://") else path
        return fsspec.filesystem("zip", fo=target), ""
    return fsspec.core.url_to_fs(path)


def zarr_store(path: str, read_only: bool):
    if is_zip(path):
        target = path.split("::", 1)[-1] if path.startswith("zip://") else path
        return zarr.storage.ZipStore(target, mode="r")
    if "://" not in path or path.startswith("file://"):
        return zarr.storage.LocalStore(path.removeprefix("file://"), read_only=read_only)
    return zarr.storage.FsspecStore.from_url(path, read_only=read_only)


def list_files(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    """Relative paths of every file under ``root``."""
    prefix = root.rstrip("/") + "/" if root else ""
    return sorted(p[len(prefix) :] if p.startswith(prefix) else p for p in fs.find(root or "/", withdirs=False))


def sha256(fs: fsspec.AbstractFileSystem, path: str) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
