"""What a model was trained on, example by example, so that eval never scores it on those examples.

A record beside a model's weights, ``kdpipe_trained_on.parquet``: one row per training example, a digest of its task
and its prompt as the mixture rendered it, and in the file's metadata the field caps the mixture rendered
with and where the examples came from. ``kdpipe distill`` writes one beside every student (every example of the
cache it trained from); a cache can serve as a record too (``from_cache``: ``kdpipe eval --exclude-cache``).

A record matches an evaluation record when rendering it under ANY template of its task, with the record's field
caps, gives a prompt the model was trained on: the training mixture drew one template per example, eval uses the
first, and the same source record must be left out whichever template training drew. The digest is blake2b-128
of the task name and the prompt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.tasks import Record, Task, render

FILE = "kdpipe_trained_on.parquet"
SCHEMA = pa.schema([("prompt_digest", pa.binary(16))])
MAX_FILE_BYTES = 1 << 30  # a record is read from a shared model folder: refuse anything absurd before parsing
_META = b"kdpipe"  # parquet key-value metadata: {"field_caps": {...}, "source": "..."}


class TrainedOnError(ValueError):
    """A record that cannot be read; the message names the file."""


def digest(task: str, prompt: str) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for part in (task, prompt):
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.digest()


@dataclass(frozen=True)
class TrainedOn:
    source: str  # what the examples came from: a cache path and its attributes digest
    field_caps: dict[str, int]  # how their prompts were rendered
    digests: frozenset[bytes]  # digest(task, prompt) of every example

    def seen(self, task: Task, record: Record) -> bool:
        """Whether ``record`` of ``task`` is among the examples, under any of the task's templates."""
        return any(
            digest(task.name, render(task, record, t, self.field_caps)[0]) in self.digests
            for t in range(len(task.templates))
        )


def from_examples(examples: Iterable[tuple[str, str]], field_caps: dict[str, int], source: str) -> TrainedOn:
    """A record of (task, prompt) pairs rendered with ``field_caps``."""
    return TrainedOn(source, dict(field_caps), frozenset(digest(task, prompt) for task, prompt in examples))


def from_cache(cache) -> TrainedOn:
    """The examples of an opened cache (``cache_schema.open_cache``), with the field caps of its mixture."""
    import cache_schema

    mixture = cache.meta.get(cache_schema.ATTR_MIXTURE) or {}
    tasks, prompts = cache.examples.column("task").to_pylist(), cache.examples.column("prompt").to_pylist()
    trained = from_examples(zip(tasks, prompts, strict=True), mixture.get("field_caps") or {}, "")
    # named by what it holds, not by its attributes (they carry a creation time): the same examples, the same name
    held = hashlib.blake2b(b"".join(sorted(trained.digests)), digest_size=8).hexdigest()
    return dataclasses.replace(trained, source=f"cache {cache.path} ({len(trained.digests)} examples, digest {held})")


def write(folder: str | Path, trained: TrainedOn) -> Path:
    """Write ``trained`` as ``folder/kdpipe_trained_on.parquet`` (atomically: a temporary file, then a rename)."""
    path = Path(folder) / FILE
    rows = sorted(trained.digests)
    table = pa.table({"prompt_digest": pa.array(rows, pa.binary(16))})
    meta = json.dumps({"field_caps": trained.field_caps, "source": trained.source}).encode()
    table = table.replace_schema_metadata({_META: meta})
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def read(folder: str | Path) -> TrainedOn | None:
    """The record beside a model (None when its folder has none); a damaged record is a ``TrainedOnError``."""
    path = Path(folder) / FILE
    if not path.is_file():
        return None
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise TrainedOnError(f"{path}: {path.stat().st_size} bytes is more than a training record may hold")
        parquet = pq.ParquetFile(path)
        if not parquet.schema_arrow.equals(SCHEMA, check_metadata=False):
            raise TrainedOnError(f"{path}: not a kdpipe training record (columns {parquet.schema_arrow.names})")
        meta = json.loads((parquet.schema_arrow.metadata or {}).get(_META, b"{}"))
        digests = parquet.read(columns=["prompt_digest"]).column("prompt_digest").to_pylist()
    except (OSError, ValueError, pa.ArrowException) as e:
        if isinstance(e, TrainedOnError):
            raise
        raise TrainedOnError(f"{path}: not a readable kdpipe training record ({str(e).splitlines()[0]})") from None
    caps = meta.get("field_caps") if isinstance(meta, dict) else None
    if not isinstance(caps, dict) or not all(isinstance(v, int) for v in caps.values()):
        raise TrainedOnError(f"{path}: its metadata has no field caps (a mapping of field -> words)")
    return TrainedOn(str(meta.get("source", path)), {str(k): v for k, v in caps.items()}, frozenset(digests))
