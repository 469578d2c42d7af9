import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

import cache_schema as cs
from pipeline.devtools.synthetic_cache import cache_identity, forge_attrs, peaked_rows
from tests.helpers import as_older_version, edit_array_meta, write_known_rows_cache


def test_source_ids_are_stored_null_where_a_record_has_none_and_older_caches_read_without(tmp_path):
    writer = cs.CacheWriter(tmp_path / "c", cache_identity(4), max_rows=3, store_ids=False, chunk_rows=4, shard_rows=8)
    records = [
        {"key": cs.example_key("t", 0, p, "x"), "task": "t", "template_id": 0, "prompt": p, "answer": "x", "n_rows": 1}
        for p in ("p1", "p2", "p3")
    ]
    records = [{**records[0], "source_id": "qid-1"}, records[1], {**records[2], "source_id": None}]
    probs, tail = peaked_rows(np.random.default_rng(0), 3, 4)
    writer.commit(0, 1, records, probs, tail, np.zeros(3, np.int32))
    writer.finalize(cs.counts_attrs(3, 3, {}, {}, {}))
    cache = cs.open_cache(tmp_path / "c")
    assert cache.meta[cs.ATTR_VERSION] == cs.SCHEMA_VERSION == "1.3"
    assert cache.source_ids == ["qid-1", None, None] and cache.examples.schema.equals(cs.EXAMPLE_COLUMNS)
    assert cs.verify_cache(tmp_path / "c")["examples"] == 3
    as_older_version(tmp_path / "c", "1.2")  # as kdpipe wrote caches before v1.3
    old = cs.open_cache(tmp_path / "c")
    assert old.source_ids == [None, None, None] and old.examples.schema.equals(cs.EXAMPLE_COLUMNS_V1)
    forge_attrs(tmp_path / "c", **{cs.ATTR_VERSION: "1.3"})  # a v1.3 cache must have the column
    columns = r"examples.parquet: 7 columns, the v1.3 schema has 8 \(no 'source_id'\)$"
    with pytest.raises(cs.CacheError, match=columns):
        cs.open_cache(tmp_path / "c")


def test_encoding_round_trip_is_within_the_documented_tolerance():
    rng = np.random.default_rng(1)
    probs, _ = peaked_rows(rng, 500, 64)
    decoded = cs.decode_probs(cs.encode_probs(probs))
    assert decoded.dtype == np.float32 and decoded.shape == probs.shape
    assert (np.diff(decoded, axis=1) <= 0).all()
    assert np.abs(decoded - probs).sum(1).max() <= cs.decode_tolerance(64)
    assert np.abs(decoded - probs).max() <= 0.5 / cs.PROB_SCALE + 1e-7


def test_encoding_refuses_unsorted_rows():
    with pytest.raises(cs.CacheError, match="sorted descending"):
        cs.encode_probs(np.array([[0.1, 0.5, 0.2]], dtype=np.float32))


def test_written_cache_reads_back(tmp_path):
    written = write_known_rows_cache(tmp_path / "c", store_ids=True)
    cache = cs.open_cache(tmp_path / "c")
    assert len(cache) == 4 and cache.total_rows == 11 and cache.top_k == 8
    assert cache.keys == written["keys"]
    start = 0
    for i, n in enumerate((3, 1, 5, 2)):
        ex = cache[i]
        assert ex.probs.shape == (n, 8) and ex.probs.dtype == np.float32
        assert np.abs(ex.probs - written["probs"][start : start + n]).sum(1).max() <= cs.decode_tolerance(8)
        np.testing.assert_array_equal(ex.tail, written["tail"][start : start + n])
        np.testing.assert_array_equal(ex.token_ids, written["ids"][start : start + n])
        np.testing.assert_array_equal(ex.topk_ids, written["topk"][start : start + n])
        start += n
    assert cache[-1].key == written["keys"][3]
    with pytest.raises(IndexError):
        cache[4]
    assert not (tmp_path / "c" / cs.PARTS_DIR).exists()
    report = cs.verify_cache(tmp_path / "c")
    assert report["examples"] == 4 and report["rows"] == 11


def test_cache_opens_from_a_zip_in_place(tmp_path):
    write_known_rows_cache(tmp_path / "c")
    zpath = tmp_path / "c.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_STORED) as z:
        for file in sorted((tmp_path / "c").rglob("*")):
            if file.is_file():
                z.write(file, file.relative_to(tmp_path / "c").as_posix())
    cache = cs.open_cache(str(zpath))
    np.testing.assert_array_equal(cache[2].probs, cs.open_cache(tmp_path / "c")[2].probs)
    assert cs.verify_cache(str(zpath))["rows"] == 11


def test_incomplete_cache_is_refused_and_summarised(tmp_path):
    writer = cs.CacheWriter(tmp_path / "c", cache_identity(), max_rows=20, store_ids=False, chunk_rows=4, shard_rows=8)
    probs, tail = peaked_rows(np.random.default_rng(0), 3, 8)
    writer.commit(
        0,
        1,
        [{"key": "a", "task": "t", "template_id": 0, "prompt": "p", "answer": "a", "n_rows": 3}],
        probs,
        tail,
        np.zeros(3, np.int32),
    )
    with pytest.raises(cs.CacheError, match="incomplete"):
        cs.open_cache(tmp_path / "c")
    text = cs.summary(tmp_path / "c")
    assert "complete     False" in text and "1 examples in 1 parts" in text


def test_resume_continues_after_the_last_committed_part(tmp_path):
    path = tmp_path / "c"
    writer = cs.CacheWriter(path, cache_identity(), max_rows=20, store_ids=False, chunk_rows=4, shard_rows=8)
    probs, tail = peaked_rows(np.random.default_rng(0), 3, 8)
    rec = {"key": "a", "task": "t", "template_id": 0, "prompt": "p", "answer": "a", "n_rows": 3}
    writer.commit(0, 2, [rec], probs, tail, np.zeros(3, np.int32))
    (path / cs.PARTS_DIR / "000000002-000000003.parquet.tmp").write_bytes(b"half-written")
    again = cs.CacheWriter(path, cache_identity(), max_rows=20, store_ids=False, chunk_rows=4, shard_rows=8)
    assert (again.next_batch, again.rows, again.examples) == (2, 3, 1)
    with pytest.raises(cs.CacheError, match="batch 5 while batch 2"):
        again.commit(5, 6, [rec], probs, tail, np.zeros(3, np.int32))


def test_resume_with_a_different_identity_names_both_values(tmp_path):
    cs.CacheWriter(tmp_path / "c", cache_identity(8), max_rows=20, store_ids=False, chunk_rows=4, shard_rows=8)
    with pytest.raises(cs.CacheError, match=r"different top_k: 8 there, 16 asked"):
        cs.CacheWriter(tmp_path / "c", cache_identity(16), max_rows=20, store_ids=False, chunk_rows=4, shard_rows=8)


def test_writer_refuses_a_folder_that_is_not_a_cache_and_a_complete_cache(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(cs.CacheError, match="not a kdpipe cache"):
        cs.CacheWriter(tmp_path / "other", cache_identity(), max_rows=5, store_ids=False)
    write_known_rows_cache(tmp_path / "c")
    with pytest.raises(cs.CacheComplete):
        cs.CacheWriter(tmp_path / "c", cache_identity(), max_rows=5, store_ids=False)


def _edit_attrs(path: Path, **changes) -> None:
    group = zarr.open_group(zarr.storage.LocalStore(path), mode="r+")
    attrs = group.attrs.asdict()
    attrs.update(changes)
    group.attrs.put(attrs)


def test_other_schema_version_is_refused_with_both_versions(tmp_path):
    write_known_rows_cache(tmp_path / "c")
    _edit_attrs(tmp_path / "c", **{cs.ATTR_VERSION: 2})
    with pytest.raises(cs.CacheError, match=r"schema version 2, this kdpipe reads 1"):
        cs.open_cache(tmp_path / "c")


def test_tampered_attribute_is_detected(tmp_path):
    write_known_rows_cache(tmp_path / "c")
    _edit_attrs(tmp_path / "c", **{cs.ATTR_TEMPERATURE: 2.0})
    with pytest.raises(cs.CacheError, match="attributes were modified"):
        cs.open_cache(tmp_path / "c")


def test_verify_names_a_flipped_byte_and_a_missing_shard(tmp_path):
    write_known_rows_cache(tmp_path / "c")
    shard = sorted(p for p in (tmp_path / "c" / cs.PROBS).rglob("*") if p.is_file() and p.name != "zarr.json")[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    rel = shard.relative_to(tmp_path / "c").as_posix()
    with pytest.raises(cs.CacheError, match=f"{rel}: checksum mismatch"):
        cs.verify_cache(tmp_path / "c")
    shard.unlink()
    with pytest.raises(cs.CacheError, match=f"{rel}: file missing"):
        cs.verify_cache(tmp_path / "c")


def test_examples_table_that_disagrees_with_the_arrays_is_refused(tmp_path):
    write_known_rows_cache(tmp_path / "c")
    table = pq.read_table(tmp_path / "c" / cs.EXAMPLES_FILE)
    n_rows = table.column("n_rows").to_pylist()
    n_rows[0] += 1
    table = table.set_column(table.schema.get_field_index("n_rows"), "n_rows", pa.array(n_rows, pa.int32()))
    pq.write_table(table, tmp_path / "c" / cs.EXAMPLES_FILE)
    with pytest.raises(cs.CacheError, match="do not tile"):
        cs.open_cache(tmp_path / "c")


def test_truncated_examples_file_is_refused(tmp_path):
    write_known_rows_cache(tmp_path / "c")
    path = tmp_path / "c" / cs.EXAMPLES_FILE
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(cs.CacheError, match="examples.parquet: unreadable"):
        cs.open_cache(tmp_path / "c")


def test_hostile_top_k_is_refused_before_reading(tmp_path):
    write_known_rows_cache(tmp_path / "c")
    group = zarr.open_group(zarr.storage.LocalStore(tmp_path / "c"), mode="r+")
    attrs = group.attrs.asdict()
    attrs[cs.ATTR_TOP_K] = 10**9
    attrs[cs.ATTR_DIGEST] = cs.fingerprint({k: v for k, v in attrs.items() if k != cs.ATTR_DIGEST})
    group.attrs.put(attrs)
    with pytest.raises(cs.CacheError, match="top_k 1000000000"):
        cs.open_cache(tmp_path / "c")


def test_not_a_cache(tmp_path):
    with pytest.raises(cs.CacheError, match="not a kdpipe cache"):
        cs.open_cache(tmp_path)


def test_no_pickle_and_plain_dtypes_on_disk(tmp_path):
    write_known_rows_cache(tmp_path / "c", store_ids=True, token_layout=True)
    for name, dtype in cs.ARRAY_DTYPES.items():
        meta = json.loads((tmp_path / "c" / name / "zarr.json").read_text())
        assert meta["data_type"] == dtype.name
    for file in (tmp_path / "c").rglob("*"):
        if file.is_file():
            assert b"\x80\x04\x95" not in file.read_bytes()[:3]  # no pickle protocol-4 header
    assert os.path.getsize(tmp_path / "c" / cs.EXAMPLES_FILE) > 0


# ---------------------------------------------------------------------------------------------- verify via the CLI


def _first_file(path: Path, array: str) -> Path:
    return sorted(p for p in (path / array).rglob("*") if p.is_file() and p.name != "zarr.json")[0]


def _flip_byte(path: Path) -> str:
    shard = _first_file(path, cs.PROBS)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    return shard.relative_to(path).as_posix()


def _truncate_chunk(path: Path) -> str:
    shard = _first_file(path, cs.TAIL)
    shard.write_bytes(shard.read_bytes()[:-7])
    return shard.relative_to(path).as_posix()


def _remove_shard(path: Path) -> str:
    shard = _first_file(path, cs.TOKEN_IDS)
    shard.unlink()
    return shard.relative_to(path).as_posix()


def _tamper_attr(path: Path) -> str:
    _edit_attrs(path, **{cs.ATTR_MIXTURE_FP: "0" * 64})
    return cs.GROUP_META_FILE


def _disagreeing_examples(path: Path) -> str:
    table = pq.read_table(path / cs.EXAMPLES_FILE)
    starts = table.column("row_start").to_pylist()
    starts[1] += 1
    table = table.set_column(table.schema.get_field_index("row_start"), "row_start", pa.array(starts, pa.int64()))
    pq.write_table(table, path / cs.EXAMPLES_FILE)
    return cs.EXAMPLES_FILE


@pytest.mark.parametrize("damage", [_flip_byte, _truncate_chunk, _remove_shard, _tamper_attr, _disagreeing_examples])
def test_cli_verify_names_the_damaged_file_in_one_line(tmp_path, damage):
    from click.testing import CliRunner

    from pipeline.cli import main

    write_known_rows_cache(tmp_path / "c", lengths=(3, 1, 5, 2, 4, 6))
    assert CliRunner().invoke(main, ["cache", "verify", str(tmp_path / "c")]).exit_code == 0
    rel = damage(tmp_path / "c")
    result = CliRunner().invoke(main, ["cache", "verify", str(tmp_path / "c")])
    assert result.exit_code == 1, result.output
    assert f"{tmp_path / 'c'}/{rel}" in result.output and result.output.strip().count("\n") == 0, result.output


def test_verify_compares_the_per_task_counts_with_the_examples_table(tmp_path):
    write_known_rows_cache(tmp_path / "c")
    forge_attrs(
        tmp_path / "c",
        **{cs.ATTR_COUNTS: {**cs.open_cache(tmp_path / "c").meta[cs.ATTR_COUNTS], "per_task": {"a": {"examples": 4}}}},
    )
    with pytest.raises(cs.CacheError, match=r"examples.parquet: per-task counts .* differ from the attributes'"):
        cs.verify_cache(tmp_path / "c")


# ---------------------------------------------------------------------------------------------- hostile caches


def _huge_rows(path: Path) -> None:
    rows = 10**12
    counts = cs.open_cache(path).meta[cs.ATTR_COUNTS]
    for name in (cs.PROBS, cs.TAIL, cs.TOKEN_IDS):
        edit_array_meta(path, name, lambda m: m.update(shape=[rows, *m["shape"][1:]]))
    forge_attrs(path, **{cs.ATTR_COUNTS: {**counts, "rows": rows}})


def _giant_chunk(path: Path) -> None:
    def edit(meta):
        meta["chunk_grid"]["configuration"]["chunk_shape"] = [1 << 30, 8]
        meta["codecs"][0]["configuration"]["chunk_shape"] = [1 << 30, 8]

    edit_array_meta(path, cs.PROBS, edit)


def _giant_shard_index(path: Path) -> None:
    def edit(meta):
        meta["chunk_grid"]["configuration"]["chunk_shape"] = [1 << 40]
        meta["codecs"][0]["configuration"]["chunk_shape"] = [1]

    edit_array_meta(path, cs.TAIL, edit)


def _foreign_codec(path: Path) -> None:
    edit_array_meta(path, cs.TOKEN_IDS, lambda m: m["codecs"][0]["configuration"]["codecs"].append({"name": "pickle"}))


def _object_dtype(path: Path) -> None:
    edit_array_meta(path, cs.TAIL, lambda m: m.update(data_type="string"))


def _more_examples_than_attrs(path: Path) -> None:
    n = 200_000
    columns = {"key": ["k"] * n, "task": ["t"] * n, "template_id": [0] * n, "prompt": ["p"] * n}
    columns |= {"answer": ["a"] * n, "n_rows": [1] * n, "row_start": list(range(n)), "source_id": [None] * n}
    pq.write_table(pa.table(columns, schema=cs.EXAMPLE_COLUMNS), path / cs.EXAMPLES_FILE)


def _huge_example_count(path: Path) -> None:
    counts = cs.open_cache(path).meta[cs.ATTR_COUNTS]
    forge_attrs(path, **{cs.ATTR_COUNTS: {**counts, "examples": 10**12}})


@pytest.mark.parametrize(
    "hostile, message",
    [
        (_huge_rows, r"10{12} rows for 4 examples is not an integer in \[4, 4 x 65536\]"),
        (_giant_chunk, r"probs/zarr.json: chunk shape \[1073741824, 8\] exceeds 268435456 bytes"),
        (_giant_shard_index, r"tail/zarr.json: shard shape \[1099511627776\] holds more than 65536 chunks"),
        (_foreign_codec, r"token_ids/zarr.json: codec 'pickle' is not one of"),
        (_object_dtype, r"tail/zarr.json: dtype 'string', schema says 'float32'"),
        (_more_examples_than_attrs, r"examples.parquet: claims 200000 examples, the attributes say 4"),
        (_huge_example_count, r"1000000000000 examples is not an integer in \[0, 268435456\]"),
    ],
)
def test_hostile_sizes_and_codecs_are_refused_before_any_data_is_read(tmp_path, monkeypatch, hostile, message):
    write_known_rows_cache(tmp_path / "c")
    hostile(tmp_path / "c")

    def no_reading(*args, **kwargs):
        raise AssertionError("data was read before the metadata was checked")

    monkeypatch.setattr(cs.reader.zarr, "open_array", no_reading)
    monkeypatch.setattr(cs.reader, "_read_examples", no_reading)
    with pytest.raises(cs.CacheError, match=message):
        cs.open_cache(tmp_path / "c")


# ---------------------------------------------------------------------------------------------- provenance


def test_provenance_names_where_the_cache_comes_from(tmp_path):
    write_known_rows_cache(tmp_path / "c")
    forge_attrs(
        tmp_path / "c",
        **{cs.ATTR_TEACHER: {"id": "google/flan-t5-xxl", "revision": "abc123", "quantization": "nf4"}},
    )
    cache = cs.open_cache(tmp_path / "c")
    p = cs.provenance(cache)
    assert (p["teacher"], p["revision"], p["quantization"]) == ("google/flan-t5-xxl", "abc123", "nf4")
    assert (p["top_k"], p["temperature"], p["schema_version"]) == (8, 1.0, cs.SCHEMA_VERSION)
    assert p["mixture_fingerprint"] == cs.fingerprint({"tasks": {"a": 3}})
    assert p["tool_version"] and p["created_at"] and p["created_on"]
    json.dumps(p)  # recordable as is beside a student
    text = cs.describe(cache)
    for value in ("google/flan-t5-xxl", "revision abc123", "nf4", "top-k        8", p["mixture_fingerprint"][:16]):
        assert value in text
    assert f"(kdpipe {p['tool_version']})" in text and f"created      {p['created_at']} on" in text


def test_check_provenance_refuses_another_mixture_unless_accepted(tmp_path, caplog):
    write_known_rows_cache(tmp_path / "c")
    cache = cs.open_cache(tmp_path / "c")
    have, want = cache.meta[cs.ATTR_MIXTURE_FP], cs.fingerprint({"tasks": {"b": 3}})
    cs.check_provenance(cache, have)
    cs.check_provenance(cache, None)
    with pytest.raises(cs.CacheError, match=f"mixture fingerprint {have} differs .* {want}; pass --accept-cache"):
        cs.check_provenance(cache, want)
    cs.check_provenance(cache, want, accept=True)
    assert "using it anyway (--accept-cache)" in caplog.text and want in caplog.text
    cache.meta = {**cache.meta, cs.ATTR_VERSION: 2}
    with pytest.raises(cs.CacheError, match="schema version 2, this kdpipe reads 1"):
        cs.check_provenance(cache, have, accept=True)


def test_check_provenance_refuses_a_lone_worker_part(tmp_path):
    write_known_rows_cache(tmp_path / "c")
    forge_attrs(tmp_path / "c", **cs.worker_attrs(1, 2, 4))
    cache = cs.open_cache(tmp_path / "c")
    with pytest.raises(cs.CacheError, match="part of worker 1 of 2 only"):
        cs.check_provenance(cache, None)
    cs.check_provenance(cache, None, accept=True)
