"""Bounded readers of the user's own files: one (where, row) per row, never a whole line or file in memory.

JSONL is read line by line, a line over :data:`MAX_ROW_BYTES` read past in blocks and yielded as a
``Malformed`` row; CSV likewise, except that a row over the bound ends the read (a CSV reader cannot find the next
row after an unfinished one); a ``.json`` list is parsed whole, so its size is capped at :data:`MAX_JSON_BYTES`;
parquet is read in batches of its needed columns. Text is decoded with ``errors="surrogateescape"``, so a byte
that is not UTF-8 reaches the row as a lone surrogate and the field holding it can be named
(:mod:`pipeline.tasks.files` checks every field it uses). Provenance helpers (sha256, row count) live here too.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from pipeline.tasks import TaskError
from pipeline.tasks.formats import Malformed, Row

# A JSONL line or CSV row over this is not read into memory (JSONL: the row is skipped; CSV: the file is refused).
MAX_ROW_BYTES = 1 << 20
MAX_JSON_BYTES = 64 << 20  # a .json file is parsed whole: past this, convert it to JSONL (read line by line)
BATCH_ROWS = 1024  # parquet and Hub rows converted to Python at a time
_BUFFER = 1 << 20  # read buffer: a line read past (over MAX_ROW_BYTES) goes by in few reads

csv.field_size_limit(max(csv.field_size_limit(), MAX_ROW_BYTES))  # one field may fill a whole row


def read_rows(path: Path, columns: list[str] | None = None) -> Iterator[tuple[str, Row | Malformed]]:
    """(where, row) per row of a local file: ``where`` is ``"line N"`` (JSONL) or ``"row N"`` (the others)."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_rows(path)
    if suffix == ".json":
        return _json_rows(path)
    if suffix == ".csv":
        return _csv_rows(path)
    return _parquet_rows(path, columns)


def scan_columns(path: Path) -> tuple[list[str], int | None]:
    """The columns of a local file and, where this pass counts them, its rows (malformed ones included).

    A CSV header or a parquet schema names the columns; a JSON file has no header, so its columns are every key
    that any of its objects has (a row may leave out an answer that later rows give), found in one bounded pass.
    """
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        parquet = parquet_file(path)
        if parquet.metadata.num_rows == 0:
            raise TaskError(f"{path}: empty file (no rows)")
        return parquet.schema_arrow.names, parquet.metadata.num_rows
    if suffix == ".csv":
        with open(path, "rb") as f:
            header = next(csv.reader(_csv_lines(path, f, Counter())), None)
        if not header:
            raise TaskError(f"{path}: empty file (no header line)")
        return header, None
    keys: dict[str, None] = {}
    rows, first_bad = 0, None
    for where, row in read_rows(path):
        rows += 1
        if isinstance(row, Malformed):
            first_bad = first_bad or f"{where}: {row.reason}"
            continue
        keys.update(dict.fromkeys(map(str, row)))
    if not keys:
        raise TaskError(
            f"{path}: every one of its {rows} rows is malformed (first: {first_bad})"
            if rows
            else f"{path}: empty file (no rows)"
        )
    return list(keys), rows


def _bounded_lines(f: BinaryIO) -> Iterator[bytes | None]:
    """Each line of ``f`` with its ending, or None for a line over MAX_ROW_BYTES (read past, never held whole)."""
    while raw := f.readline(MAX_ROW_BYTES + 1):
        if len(raw) > MAX_ROW_BYTES and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):
                raw = f.readline(MAX_ROW_BYTES)
            yield None
            continue
        yield raw


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Row | Malformed]]:
    with open(path, "rb", buffering=_BUFFER) as f:
        for number, raw in enumerate(_bounded_lines(f), 1):
            where = f"line {number}"
            if raw is None:
                yield where, Malformed(f"line over {MAX_ROW_BYTES} bytes")
                continue
            line = raw.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw
            if not line.strip():
                continue
            try:
                row = json.loads(line.decode("utf-8", errors="surrogateescape"))
            except (ValueError, RecursionError):
                yield where, Malformed("bad json line")
                continue
            yield where, row if isinstance(row, dict) else Malformed("not an object")


def _json_rows(path: Path) -> Iterator[tuple[str, Row | Malformed]]:
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise TaskError(
            f"{path}: {size} bytes, more than the {MAX_JSON_BYTES} a .json file may have (it is parsed whole); "
            "write it as JSONL, one object a line"
        )
    text = path.read_bytes().removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="surrogateescape")
    if not text.strip():
        return
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise TaskError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise TaskError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    for number, row in enumerate(data, 1):
        yield f"row {number}", row if isinstance(row, dict) else Malformed("not an object")


def _csv_lines(path: Path, f: BinaryIO, fed: Counter) -> Iterator[str]:
    """Decoded lines for ``csv.reader``; ``fed["bytes"]`` counts what the row being read has taken so far."""
    for number, raw in enumerate(_bounded_lines(f), 1):
        if raw is None or fed["bytes"] + len(raw) > MAX_ROW_BYTES:
            raise TaskError(f"{path}: a row running to line {number} is over {MAX_ROW_BYTES} bytes")
        fed["bytes"] += len(raw)
        if number == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        yield raw.decode("utf-8", errors="surrogateescape")


def _csv_rows(path: Path) -> Iterator[tuple[str, Row | Malformed]]:
    fed: Counter = Counter()
    with open(path, "rb", buffering=_BUFFER) as f:
        reader = csv.reader(_csv_lines(path, f, fed))
        try:
            header = next(reader, None)
            if header is None:
                return
            if len(set(header)) != len(header):
                raise TaskError(f"{path}: its header names a column twice: {', '.join(header)}")
            fed["bytes"] = 0
            for number, cells in enumerate(reader, 1):
                fed["bytes"] = 0  # the next row's lines start here
                if not cells:
                    continue
                where = f"row {number}"
                if len(cells) != len(header):
                    yield where, Malformed("bad column count")
                    continue
                yield where, dict(zip(header, cells, strict=True))
        except csv.Error as e:
            raise TaskError(f"{path}: line {reader.line_num}: {e}") from None


def parquet_file(path: Path):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a file that is not parquet
        raise TaskError(f"{path}: not a readable parquet file ({' '.join(str(e).split())})") from None


def _parquet_rows(path: Path, columns: list[str] | None) -> Iterator[tuple[str, Row | Malformed]]:
    parquet = parquet_file(path)
    number = 0
    try:
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns):
            for row in batch.to_pylist():
                number += 1
                yield f"row {number}", row
    except UnicodeDecodeError:
        raise TaskError(f"{path}: row group after row {number} holds text that is not UTF-8") from None


def load_hub(spec: str, name: str, config: str | None, split: str):
    """``datasets.load_dataset(name, config, split=split)``, the real Hub call; a failure: one line naming ``spec``."""
    import datasets  # only the Hub path needs it, and it is slow to import

    try:
        return datasets.load_dataset(name, config, split=split)
    except (ConnectionError, FileNotFoundError, ValueError) as e:  # offline, no such dataset, no such split
        reason = " ".join(str(e).split())
        raise TaskError(f"{spec}: cannot load split {split!r} of {name} ({reason})") from None


def hub_rows(dataset, columns: list[str]) -> Iterator[tuple[str, Row | Malformed]]:
    number = 0
    for batch in dataset.select_columns(columns).iter(batch_size=BATCH_ROWS):
        for i in range(len(batch[columns[0]])):
            number += 1
            yield f"row {number}", {c: batch[c][i] for c in columns}


# ---- provenance ----------------------------------------------------------------------------------------------


def sha256_files(paths: list[Path]) -> str | None:
    """sha256 of the files' bytes in order, read in blocks (None for no file)."""
    if not paths:
        return None
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def count_rows(path: Path) -> int:
    """Rows of a local file as its reader sees them, malformed ones included (blank JSONL lines are not rows)."""
    if path.suffix.lower() == ".parquet":
        return parquet_file(path).metadata.num_rows
    return sum(1 for _ in read_rows(path))
