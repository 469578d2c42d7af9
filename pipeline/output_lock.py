"""One writer per output: an advisory lock file beside ``--out`` naming the process that holds it.

``<out>.lock`` holds ``{"host", "pid", "started", "command"}``. It is created exclusively (``O_EXCL`` on a disk;
on an object store, which has no exclusive create, written and read back), so a second teacher-cache or distill
on the same ``--out`` stops at once with one line naming the holder. A lock left by a run that crashed is
detected and taken over when its holder ran on this host and that process is gone; a lock from another host is
reported with its holder, since only a person can tell whether that run still lives.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator

import fsspec

from pipeline.config import ConfigError

SUFFIX = ".lock"


class OutputLocked(ConfigError):
    """Another process is writing the same output."""


def lock_path(out: str) -> str:
    return out.rstrip("/") + SUFFIX


@contextlib.contextmanager
def hold(out: str, flag: str = "--out") -> Iterator[str]:
    """Hold the lock of ``out`` (a path or URL) for the body of the ``with``; yields the lock file's path."""
    path = lock_path(str(out))
    fs, name = fsspec.core.url_to_fs(path)
    mine = _holder()
    _acquire(fs, name, mine, path, flag)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError, ValueError):
            if _read(fs, name) == mine:
                fs.rm_file(name)


def _holder() -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": _start_time(os.getpid()),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300],
    }


def _acquire(fs, name: str, mine: dict, path: str, flag: str) -> None:
    for _ in range(2):  # the second try follows the removal of a stale lock
        if _create(fs, name, mine):
            return
        theirs = _read(fs, name)
        if theirs is None:  # vanished meanwhile, or unreadable junk left by a crash mid-write
            with contextlib.suppress(OSError):
                fs.rm_file(name)
            continue
        if not _stale(theirs):
            raise OutputLocked(
                f"{flag}: {path.removesuffix(SUFFIX)} is being written by pid {theirs.get('pid')} on "
                f"{theirs.get('host')} since {theirs.get('since')} ({theirs.get('command')}); wait for it, or "
                f"delete {path} if that process is gone"
            )
        with contextlib.suppress(OSError):
            fs.rm_file(name)
    raise OutputLocked(f"{flag}: cannot take the lock {path}: another process keeps taking it")


def _create(fs, name: str, mine: dict) -> bool:
    data = json.dumps(mine).encode()
    if "file" in ((fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol):
        os.makedirs(os.path.dirname(name) or ".", exist_ok=True)
        try:
            fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    if fs.exists(name):
        return False
    fs.pipe_file(name, data)
    return _read(fs, name) == mine  # a racing writer's PUT won: theirs is the lock


def _read(fs, name: str) -> dict | None:
    try:
        with fs.open(name, "rb") as f:
            value = json.loads(f.read(64 << 10))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _stale(holder: dict) -> bool:
    """A lock whose holder ran on this host and is gone (or its pid now belongs to another process)."""
    if holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return holder.get("started") is not None and _start_time(pid) != holder.get("started")


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), which tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
