"""Hostile caches and files, generated on the fly (no committed blobs), and a bounded way to run kdpipe on them.

Each ``make_*`` function takes a valid cache folder (or a folder to write into) and damages it the way an
attacker or a broken disk would. Those marked *forged* also rewrite the checksum list and the attrs digest to
match, so the damage passes every checksum and only the reader's own bounds can catch it. The bombs are built
without ever holding their inflated size in memory: zstd RLE blocks (4 bytes each inflate to 128 KiB) and a
deflate segment repeated after a full flush (each copy inflates to 1 MiB on its own).
"""

from __future__ import annotations

import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import zarr

import cache_schema as cs
from cache_schema.store import sha256
from pipeline.devtools.synthetic_cache import cache_identity, peaked_rows, write_cache
from tests.conftest import REPO

GiB = 1 << 30
INFLATED = 3 * GiB  # what every bomb inflates to


# ---------------------------------------------------------------------------------------------- a valid cache


def write_valid_cache(
    path: Path,
    examples: int = 1100,
    rows_each: int = 4,
    k: int = 8,
    chunk_rows: int = 4096,
    token_layout: bool = False,
) -> Path:
    """A finished cache of ``examples`` examples whose rows span two shard files (shard = chunk = 4096 rows).

    ``token_layout``: with top-k ids, spans (each row one byte of its answer, the rows past it empty at its end),
    label probabilities (each row's token is its top-1) and TEACHER_VOCAB, as the token-aware losses read them."""

    def text(rng: np.random.Generator, i: int, n: int) -> tuple[str, str, str]:
        return "demo", f"Is {i} even? Answer yes or no.", "yes" if i % 2 == 0 else "no"

    write_cache(
        path,
        [rows_each] * examples,
        text,
        k=k,
        identity=cache_identity(k, teacher={"id": "hostile-test"}, mixture={"tasks": {"demo": examples}}, config={}),
        rows=partial(peaked_rows, vocab=64, peak=4.0),
        store_ids=token_layout,
        token_layout=token_layout,
        chunk_rows=chunk_rows,
        shard_rows=chunk_rows,
    )
    return path


def forge(path: Path) -> None:
    """Rewrite the checksum list (of the files now there) and the attrs digest, as an attacker would."""
    group = zarr.open_group(zarr.storage.LocalStore(path), mode="r+")
    attrs = group.attrs.asdict()
    fs, root = cs.store.filesystem(str(path))
    files = [
        rel
        for rel in cs.store.list_files(fs, root)
        if rel != cs.GROUP_META_FILE and (path / rel).is_file() and not (path / rel).is_symlink()
    ]
    attrs[cs.ATTR_CHECKSUMS] = {rel: sha256(fs, str(path / rel)) for rel in files}
    attrs[cs.ATTR_DIGEST] = cs.attrs_digest(attrs)
    group.attrs.put(attrs)


def shard(path: Path, array: str, index: int = 0) -> Path:
    return path / array / "c" / str(index) / ("0" if array in (cs.PROBS, cs.TOPK_IDS) else "")


# ---------------------------------------------------------------------------------------------- bombs


def zstd_rle_bomb(size: int, declare_size: bool = False) -> bytes:
    """A zstd frame of RLE blocks inflating to ``size`` zero bytes (4 bytes per 128 KiB)."""
    block = 1 << 17
    if declare_size:  # single segment, 8-byte frame content size
        header = b"\x28\xb5\x2f\xfd" + bytes([0b11100000]) + struct.pack("<Q", size)
    else:  # window descriptor 2^17, no content size: the decoder must stream
        header = b"\x28\xb5\x2f\xfd" + bytes([0b00000000, (17 - 10) << 3])
    blocks, left = [], size
    while left:
        n = min(block, left)
        left -= n
        blocks.append(struct.pack("<I", (n << 3) | (1 << 1) | (left == 0))[:3] + b"\x00")
    return header + b"".join(blocks)


def deflate_bomb(size: int, wbits: int) -> bytes:
    """A deflate stream (raw for ``wbits=-15``, gzip for ``31``) inflating to ``size`` zeros, built from one
    1 MiB segment repeated after a full flush; the trailer's CRC is left wrong (a reader must stop before it)."""
    segment_size = 1 << 20
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    head_and_first = compressor.compress(bytes(segment_size)) + compressor.flush(zlib.Z_FULL_FLUSH)
    again = compressor.compress(bytes(segment_size)) + compressor.flush(zlib.Z_FULL_FLUSH)
    end = compressor.flush(zlib.Z_FINISH)
    copies = size // segment_size
    body = head_and_first + again * (copies - 1) + end
    if wbits > 15:  # gzip trailer: CRC32 and size mod 2^32 of what the stream claims to hold
        body = body[:-8] + struct.pack("<II", 0, size & 0xFFFFFFFF)
    return body


def _reencode_unsharded(path: Path, array: str, codec) -> None:
    """Rewrite ``array`` without sharding (one file per chunk) compressed with ``codec``, data unchanged."""
    store = zarr.storage.LocalStore(path)
    old = zarr.open_array(store, path=array, mode="r")
    data, chunks = old[:], old.metadata.chunk_grid.chunk_shape
    shutil.rmtree(path / array)
    new = zarr.create_array(
        store,
        name=array,
        shape=data.shape,
        chunks=chunks,
        dtype=data.dtype,
        compressors=[codec],
        config={"write_empty_chunks": True},
    )
    new[:] = data


def make_zstd_bomb(path: Path, size: int = 2 * GiB) -> str:
    """*Forged*: probs' first chunk a ~64 KB zstd stream inflating to ``size`` (within the shard size bound)."""
    _reencode_unsharded(path, cs.PROBS, zarr.codecs.ZstdCodec(level=3))
    target = shard(path, cs.PROBS)
    target.write_bytes(zstd_rle_bomb(size))
    forge(path)
    return target.relative_to(path).as_posix()


def make_gzip_bomb(path: Path, size: int = INFLATED) -> str:
    """*Forged*: probs' first chunk a ~3 MB gzip stream inflating to 3 GiB (beyond the shard size bound)."""
    _reencode_unsharded(path, cs.PROBS, zarr.codecs.GzipCodec(level=5))
    target = shard(path, cs.PROBS)
    target.write_bytes(deflate_bomb(size, 31))
    forge(path)
    return target.relative_to(path).as_posix()


def make_zip_bomb(cache: Path, out: Path, size: int = INFLATED) -> Path:
    """A zip of ``cache`` whose examples.parquet entry is a ~3 MB deflate stream declaring ``size`` bytes."""
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as z:
        for file in sorted(p for p in cache.rglob("*") if p.is_file()):
            rel = file.relative_to(cache).as_posix()
            if rel != cs.EXAMPLES_FILE:
                z.write(file, rel)
    _append_deflated_entry(out, cs.EXAMPLES_FILE, deflate_bomb(size, -15), size)
    return out


def _append_deflated_entry(zip_path: Path, name: str, data: bytes, size: int) -> None:
    """Add an entry of raw deflate ``data`` declaring ``size`` bytes (zipfile cannot write precompressed data)."""
    with zipfile.ZipFile(zip_path) as z:
        infos = z.infolist()
    blob = zip_path.read_bytes()
    end = blob.rindex(b"PK\x05\x06")
    entries, _, cd_size, cd_offset = struct.unpack("<HHII", blob[end + 8 : end + 20])
    central = blob[cd_offset : cd_offset + cd_size]
    offset = cd_offset
    encoded = name.encode()
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, 0, len(data), size, len(encoded), 0)
    record = struct.pack(
        "<IHHHHHHIIIHHHHHII",
        0x02014B50,
        20,
        20,
        0,
        8,
        0,
        0x21,
        0,
        len(data),
        size,
        len(encoded),
        0,
        0,
        0,
        0,
        0,
        offset,
    )
    new_cd = central + record + encoded
    tail = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(infos) + 1, len(infos) + 1, len(new_cd), 0, 0)
    body = blob[:cd_offset] + local + encoded + data
    tail = tail[:16] + struct.pack("<I", len(body)) + tail[20:]
    zip_path.write_bytes(body + new_cd + tail)
    assert entries == len(infos)


# ---------------------------------------------------------------------------------------------- other damage


def make_missing_shard(path: Path, forged: bool) -> str:
    """The second shard of token_ids deleted (and, *forged*, dropped from the checksums)."""
    target = shard(path, cs.TOKEN_IDS, 1)
    target.unlink()
    if forged:
        forge(path)
    return target.relative_to(path).as_posix()


def make_dev_zero(path: Path, name: str) -> str:
    """``name`` replaced by a link to /dev/zero (never ends)."""
    (path / name).unlink()
    (path / name).symlink_to("/dev/zero")
    return name


def make_fifo(path: Path, name: str) -> str:
    """``name`` replaced by a FIFO nobody writes to (opening it blocks)."""
    (path / name).unlink()
    os.mkfifo(path / name)
    return name


def make_link_outside(path: Path, outside: Path) -> str:
    """A shard replaced by a link to an identical copy outside the cache (checksums still match)."""
    target = shard(path, cs.TAIL)
    outside.write_bytes(target.read_bytes())
    target.unlink()
    target.symlink_to(outside)
    return target.relative_to(path).as_posix()


def make_nan_rows(path: Path) -> None:
    """*Forged*: the tail of a few rows NaN."""
    tail = zarr.open_array(zarr.storage.LocalStore(path), path=cs.TAIL, mode="r+")
    tail[5:9] = np.float32("nan")
    forge(path)


def make_edited_key(path: Path) -> None:
    """*Forged*: one example's prompt edited, its key left as it was."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path / cs.EXAMPLES_FILE)
    prompts = table.column("prompt").to_pylist()
    prompts[3] = prompts[3].replace("even", "odd")
    table = table.set_column(table.schema.get_field_index("prompt"), "prompt", pa.array(prompts, pa.string()))
    pq.write_table(table, path / cs.EXAMPLES_FILE)
    forge(path)


# ---------------------------------------------------------------------------------------------- bounded runs


@dataclass
class Bounded:
    returncode: int
    stdout: str
    stderr: str
    seconds: float  # wall time
    cpu_seconds: float  # user + system time of the child: its own cost, whatever else loads the machine
    peak_rss: int  # bytes: the child's own high-water mark (VmHWM), as it wrote it at exit


# Run in the child: the CLI, then its own VmHWM into the file named by the first argument. wait4's ru_maxrss
# would not do: Linux records the parent's high-water mark in the child's at exec, so a child of a 2.5 GiB
# pytest reads 2.5 GiB whatever it used itself.
_MEASURED = """
import atexit, sys
def _hwm(path=sys.argv.pop(1)):
    kib = next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:'))
    open(path, 'w').write(kib)
atexit.register(_hwm)
sys.argv[0] = 'kdpipe'
from pipeline.cli import main
main()
"""


def run_bounded(*args: str, timeout: float = 60.0, env: dict | None = None) -> Bounded:
    """The kdpipe CLI with ARGS in a child whose own peak RSS (VmHWM), CPU time and wall time are measured.

    The child's data segment is capped at 6 GiB so that a regression fails the test instead of the machine.
    """

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (6 * GiB, 6 * GiB))

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryDirectory() as tmp:
        hwm = Path(tmp) / "hwm"
        began = time.monotonic()
        child = subprocess.Popen(
            [sys.executable, "-c", _MEASURED, str(hwm), *args],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
            preexec_fn=cap,
        )
        timer = threading.Timer(timeout, child.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(child.pid, 0)
        finally:
            timer.cancel()
        seconds = time.monotonic() - began
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        out.seek(0)
        err.seek(0)
        return Bounded(
            child.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            seconds,
            usage.ru_utime + usage.ru_stime,
            int(hwm.read_text()) * 1024 if hwm.exists() else 0,  # none when killed: the exit status fails it
        )


# ---------------------------------------------------------------------------------------------- round two


def make_yaml_bomb(path: Path, levels: int = 9, width: int = 10) -> Path:
    """A config of a few hundred bytes whose aliases expand to ``width ** levels`` items where a mapping is
    expected (``teacher_cache.fields``): any code that walks or prints the value expands it."""
    lines = [f"  - &l0 [{', '.join(['x'] * width)}]"]
    lines += [f"  - &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    path.write_text("teacher_cache:\n  fields:\n" + "\n".join(lines) + "\n")
    return path


def _rewrite_json(file: Path, edit) -> None:
    import json

    file.write_text(edit(json.loads(file.read_text())))


def make_json_amplification(path: Path, array: str | None = None, size: int = 63 << 20) -> str:
    """A zarr.json (the group's, or ``array``'s) holding an attribute ``[{},{},...]`` of ``size`` bytes: within the
    metadata size limit, each 3 bytes a Python dict once parsed. Written as text, never built as objects."""
    import json

    file = path / (f"{array}/" if array else "") / cs.GROUP_META_FILE
    meta = json.loads(file.read_text())
    meta.setdefault("attributes", {})["padding"] = "@PADDING@"
    text = json.dumps(meta)
    items = max(size // 3, 1)
    file.write_text(text.replace('"@PADDING@"', "[" + "{}," * (items - 1) + "{}]"))
    return file.relative_to(path).as_posix()


def make_deep_json(path: Path, depth: int = 100_000) -> None:
    """The group's attributes hold ``depth`` nested lists (a parser that recurses runs out of stack)."""
    file = path / cs.GROUP_META_FILE
    text = file.read_text()
    cut = text.rindex("}")
    file.write_text(text[:cut] + ', "deep": ' + "[" * depth + "]" * depth + text[cut:])


def make_dictionary_bomb(path: Path, value_bytes: int = 3 << 20) -> str:
    """*Forged*: examples.parquet rewritten (a few KB) with every prompt one dictionary entry of ``value_bytes``:
    the dictionary page is counted once in the footer's sizes, decoded it is repeated for each example."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = path / cs.EXAMPLES_FILE
    table = pq.read_table(file)
    indices = pa.array(np.zeros(table.num_rows, dtype=np.int32))
    bomb = pa.DictionaryArray.from_arrays(indices, pa.array(["A" * value_bytes]))
    table = table.set_column(table.schema.get_field_index("prompt"), "prompt", bomb)
    pq.write_table(
        table, file, store_schema=False, compression="zstd", dictionary_pagesize_limit=2 * value_bytes + (1 << 20)
    )
    forge(path)
    return cs.EXAMPLES_FILE


def make_vocab_at_limits(path: Path, size: int = 1 << 22, nbytes: int = 1 << 28) -> None:
    """*Forged*: a token-layout cache's vocabulary rewritten to ``size`` tokens of ``nbytes`` bytes in all (the
    schema's limits), zeros and an arithmetic sequence of offsets that compress to a few hundred KB."""
    store = zarr.storage.LocalStore(path)
    for name, values in (
        (cs.VOCAB_BYTES, None),
        (cs.VOCAB_OFFSETS, np.arange(size + 1, dtype=np.int64) * (nbytes // size)),
    ):
        shape = (nbytes,) if values is None else values.shape
        shutil.rmtree(path / name)
        array = zarr.create_array(
            store, name=name, shape=shape, chunks=(1 << 20,), dtype=cs.ARRAY_DTYPES[name], fill_value=0,
            config={"write_empty_chunks": True},
        )  # fmt: skip
        for lo in range(0, shape[0], 1 << 24):  # in slices: never the whole array in memory at once
            hi = min(lo + (1 << 24), shape[0])
            array[lo:hi] = np.zeros(hi - lo, np.uint8) if values is None else values[lo:hi]
    group = zarr.open_group(store, mode="r+")
    attrs = group.attrs.asdict()
    attrs[cs.ATTR_VOCAB] = {"size": size, "bytes": nbytes}
    group.attrs.put(attrs)
    forge(path)


def make_merge_plan(path: Path, plan_batches: int = 1_500_000) -> None:
    """*Forged*: a cache made worker 0 of 1 of a plan of ``plan_batches`` batches, all but the first empty (a
    list of zeros a few MB long), which a merge would visit one by one."""
    group = zarr.open_group(zarr.storage.LocalStore(path), mode="r+")
    attrs = group.attrs.asdict()
    examples = attrs[cs.ATTR_COUNTS]["examples"]
    attrs.update(cs.worker_attrs(0, 1, plan_batches))
    attrs[cs.ATTR_BATCH_EXAMPLES] = [examples] + [0] * (plan_batches - 1)
    group.attrs.put(attrs)
    forge(path)


def make_token_damage(path: Path, kind: str) -> str:
    """*Forged*: rows 5-8 of a token-layout cache damaged as verify refuses them, the array's name returned:
    ``label-1000`` and ``label-nan`` (label probabilities), ``span-past-answer`` (byte spans ending 50 bytes into a
    3-byte answer), ``id-outside-vocab`` (token ids of a million)."""
    name, value = {
        "label-1000": (cs.LABEL_PROBS, 1000.0),
        "label-nan": (cs.LABEL_PROBS, np.nan),
        "span-past-answer": (cs.SPANS, [0, 50]),  # stored as (start, length)
        "id-outside-vocab": (cs.TOKEN_IDS, 1_000_000),
    }[kind]
    array = zarr.open_array(zarr.storage.LocalStore(path), path=name, mode="r+")
    array[5:9] = np.broadcast_to(np.asarray(value, dtype=array.dtype), (4, *array.shape[1:]))
    forge(path)
    return name


def make_array_meta(path: Path, array: str, edit) -> str:
    """*Forged*: ``array``'s zarr.json rewritten by ``edit(meta)``; its checksum made to match."""
    import json

    file = path / array / cs.GROUP_META_FILE
    meta = json.loads(file.read_text())
    edit(meta)
    file.write_text(json.dumps(meta))
    forge(path)
    return file.relative_to(path).as_posix()


def make_bad_schema(path: Path) -> str:
    """*Forged*: examples.parquet with its prompt column renamed to a long name holding newlines and a fake
    error line, which an error message that prints column names would pass on to the terminal."""
    import pyarrow.parquet as pq

    file = path / cs.EXAMPLES_FILE
    table = pq.read_table(file)
    names = ["prompt\nError: everything is fine\n" * 40 if n == "prompt" else n for n in table.column_names]
    pq.write_table(table.rename_columns(names), file)
    forge(path)
    return cs.EXAMPLES_FILE


def make_damaged_zip(cache: Path, out: Path, damage: str) -> Path:
    """The cache packed into ``out``, then ``truncated`` (cut at 60 %) or with one ``flipped`` bit in the stored
    bytes of its examples.parquet entry (its CRC-32 no longer matches)."""
    cs.pack_cache(cache, out, progress=False)
    data = bytearray(out.read_bytes())
    if damage == "truncated":
        out.write_bytes(bytes(data[: len(data) * 6 // 10]))
        return out
    with zipfile.ZipFile(out) as z:
        info = z.getinfo(cs.EXAMPLES_FILE)
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len + info.compress_size // 2] ^= 0x10
    out.write_bytes(bytes(data))
    return out
