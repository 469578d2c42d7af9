"""Caches that live elsewhere: S3 (a real S3-protocol server on loopback), memory://, read-only HTTP, zips;
push, pull, pack and unpack with their checksums and resumption."""

import functools
import http.server
import io
import os
import re
import socket
import threading
import zipfile
from dataclasses import replace
from pathlib import Path

import fsspec
import numpy as np
import pytest
from click.testing import CliRunner

import cache_schema as cs
from pipeline.cli import main
from pipeline.devtools.synthetic_cache import cache_identity, peaked_rows
from tests.helpers import small_teacher_cache_config, write_known_rows_cache

BUCKET = "kdpipe-test"


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on a free loopback port; s3fs finds it through AWS_ENDPOINT_URL, as a user's would."""
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        fsspec.filesystem("s3", skip_instance_cache=True).mkdir(BUCKET)
        yield fsspec.filesystem("s3", skip_instance_cache=True)
        server.stop()


@pytest.fixture
def local_cache(tmp_path) -> Path:
    write_known_rows_cache(tmp_path / "c", lengths=(3, 1, 5, 2, 4, 6, 2), store_ids=True)
    return tmp_path / "c"


def rows_of(path) -> tuple[list, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    cache = cs.open_cache(path)
    probs, tail, ids, topk = cache.read_rows(0, cache.total_rows)
    return cache.examples.to_pylist(), probs, tail, ids, topk


def assert_same_cache(a, b) -> None:
    for x, y in zip(rows_of(a), rows_of(b), strict=True):
        if isinstance(x, list):
            assert x == y
        else:
            np.testing.assert_array_equal(x, y)


def invoke(*args: str):
    result = CliRunner().invoke(main, list(args))
    return result


# ---------------------------------------------------------------------------------------------- writing to URLs


def test_writer_resumes_on_s3_where_the_part_marker_is_the_last_object(s3, tmp_path):
    """A crash after the rows but before the marker: the resumed writer redoes those batches."""
    url = f"s3://{BUCKET}/resume"
    rng = np.random.default_rng(0)
    rec = {"task": "t", "template_id": 0, "prompt": "p", "answer": "a", "n_rows": 3}
    batches = [peaked_rows(rng, 3, 8) for _ in range(3)]
    ids = np.arange(3, dtype=np.int32)

    def run(path, upto, start=0):
        writer = cs.CacheWriter(path, cache_identity(), max_rows=20, store_ids=False, chunk_rows=4, shard_rows=8)
        for b in range(start or writer.next_batch, upto):
            writer.commit(b, b + 1, [{**rec, "key": cs.example_key("t", 0, "p", "a")}], *batches[b], ids)
        return writer

    run(url, 2)
    crashed = cs.CacheWriter(url, cache_identity(), max_rows=20, store_ids=False, chunk_rows=4, shard_rows=8)
    crashed._arrays[cs.TAIL][6:9] = np.float32(7.0)  # batch 2's rows written, its marker never
    resumed = run(url, 3)
    assert len(resumed.parts) == 3
    resumed.finalize(cs.counts_attrs(resumed.examples, resumed.rows, {}, {}, {}))
    local = run(tmp_path / "local", 3)
    local.finalize(cs.counts_attrs(local.examples, local.rows, {}, {}, {}))
    assert_same_cache(url, tmp_path / "local")
    assert not s3.exists(f"{BUCKET}/resume/{cs.PARTS_DIR}")
    assert cs.verify_cache(url)["rows"] == 9


def test_teacher_cache_writes_straight_to_s3(s3, demo_models, tmp_path):
    from stages import teacher_cache

    cfg = small_teacher_cache_config(demo_models["teacher"], tasks={"demo_qa": 10, "demo_yesno": 6})
    url = f"s3://{BUCKET}/stage"
    teacher_cache.run(replace(cfg, out=str(url)))
    teacher_cache.run(replace(cfg, out=str(tmp_path / "local")))
    assert_same_cache(url, tmp_path / "local")
    assert teacher_cache.run(replace(cfg, out=str(url))).already_complete
    info = invoke("cache", "info", url)
    assert info.exit_code == 0 and "examples     16" in info.output, info.output


def test_memory_url_round_trip(local_cache):
    written = write_known_rows_cache("memory://kdpipe/c", lengths=(3, 1, 5, 2, 4, 6, 2), store_ids=True)
    assert cs.open_cache("memory://kdpipe/c").keys == written["keys"]
    assert_same_cache("memory://kdpipe/c", local_cache)
    assert cs.verify_cache("memory://kdpipe/c")["files"] == cs.verify_cache(local_cache)["files"]


# ---------------------------------------------------------------------------------------------- read-only HTTP


class _StaticHandler(http.server.SimpleHTTPRequestHandler):
    """A static file server as nginx or a bucket's web endpoint is one: byte ranges, no folder listings."""

    def list_directory(self, path):
        self.send_error(404, "no listings")

    def send_head(self):
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        path = self.translate_path(self.path)
        if match is None or not os.path.isfile(path):
            return super().send_head()
        data = Path(path).read_bytes()
        first, last = match.groups()
        start = len(data) - int(last) if not first else int(first)
        stop = len(data) if not last or not first else int(last) + 1
        body = data[max(start, 0) : stop]
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {max(start, 0)}-{max(start, 0) + len(body) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_url(local_cache):
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_StaticHandler, directory=str(local_cache.parent))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/{local_cache.name}"
    server.shutdown()
    server.server_close()


def test_http_cache_opens_reads_and_verifies_from_its_checksum_list(http_url, local_cache, tmp_path):
    with pytest.raises(OSError):
        fsspec.filesystem("http").ls(http_url)  # the server cannot list: verify must not need to
    assert_same_cache(http_url, local_cache)
    result = invoke("cache", "verify", http_url)
    assert result.exit_code == 0 and "only the files the cache lists were checked" in result.output, result.output
    pulled = invoke("cache", "pull", http_url, str(tmp_path / "pulled"))
    assert pulled.exit_code == 0, pulled.output
    assert cs.verify_cache(tmp_path / "pulled")["rows"] == 23
    shard = sorted((local_cache / cs.TAIL).rglob("c/*"))[-1]
    shard.write_bytes(shard.read_bytes()[:-3])
    result = invoke("cache", "verify", http_url)
    assert result.exit_code == 1 and f"{http_url}/{shard.relative_to(local_cache).as_posix()}: checksum mismatch" in (
        result.output
    )


# ---------------------------------------------------------------------------------------------- pack and unpack


def test_pack_writes_a_stored_zip_that_opens_in_place_and_unpacks(local_cache, tmp_path):
    packed = invoke("cache", "pack", str(local_cache), str(tmp_path / "c.zip"))
    assert packed.exit_code == 0, packed.output
    with zipfile.ZipFile(tmp_path / "c.zip") as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}
        names = sorted(z.namelist())
    assert names == sorted([*cs.open_cache(local_cache).meta[cs.ATTR_CHECKSUMS], cs.GROUP_META_FILE])
    assert_same_cache(str(tmp_path / "c.zip"), local_cache)
    assert cs.verify_cache(str(tmp_path / "c.zip"))["rows"] == 23
    first = (tmp_path / "c.zip").read_bytes()
    assert invoke("cache", "pack", str(local_cache), str(tmp_path / "c.zip")).exit_code == 0
    assert (tmp_path / "c.zip").read_bytes() == first  # the same cache packs to the same bytes
    unpacked = invoke("cache", "unpack", str(tmp_path / "c.zip"), str(tmp_path / "out"))
    assert unpacked.exit_code == 0, unpacked.output
    assert cs.verify_cache(tmp_path / "out")["files"] == len(names) - 1
    assert_same_cache(tmp_path / "out", local_cache)
    shard = sorted((local_cache / cs.TAIL).rglob("c/*"))[0]
    shard.write_bytes(shard.read_bytes()[:-1])
    failed = invoke("cache", "pack", str(local_cache), str(tmp_path / "c.zip"))
    assert failed.exit_code == 1 and "checksum mismatch in the source" in failed.output, failed.output
    assert (tmp_path / "c.zip").read_bytes() == first and not (tmp_path / "c.zip.partial").exists()


@pytest.mark.parametrize("entry", ["../escaped.txt", "/tmp/kdpipe-absolute.txt", "probs/../../escaped.txt"])
def test_hostile_zip_entries_are_refused(local_cache, tmp_path, entry):
    hostile = tmp_path / "hostile.zip"
    with zipfile.ZipFile(hostile, "w") as z:
        for file in sorted(local_cache.rglob("*")):
            if file.is_file():
                z.write(file, file.relative_to(local_cache).as_posix())
        z.writestr(entry, b"owned")
    (tmp_path / "dest").mkdir()
    result = invoke("cache", "unpack", str(hostile), str(tmp_path / "dest" / "out"))
    assert result.exit_code == 1 and f"refusing the entry {entry!r}" in result.output, result.output
    assert not list((tmp_path / "dest").rglob("*")) and not (tmp_path / "escaped.txt").exists()
    assert not Path("/tmp/kdpipe-absolute.txt").exists()
    with pytest.raises(cs.CacheError, match="refusing the entry"):
        cs.open_cache(str(hostile))


# ---------------------------------------------------------------------------------------------- push and pull


def _mtimes(path: Path) -> dict[str, int]:
    return {p.relative_to(path).as_posix(): p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}


def test_push_and_pull_resume_by_copying_only_what_is_missing_or_wrong(s3, local_cache, tmp_path):
    url = f"s3://{BUCKET}/pushed"
    pushed = cs.copy_cache(local_cache, url, progress=False)
    listed = sorted(cs.open_cache(local_cache).meta[cs.ATTR_CHECKSUMS])
    assert pushed["copied"] == [*listed, cs.GROUP_META_FILE] and not pushed["skipped"]
    gone, bad = f"{cs.PROBS}/c/1/0", f"{cs.TAIL}/c/0"
    assert {gone, bad} <= set(listed)
    s3.rm_file(f"{BUCKET}/pushed/{gone}")
    s3.pipe_file(f"{BUCKET}/pushed/{bad}", b"not the shard")
    assert cs.copy_cache(local_cache, url, progress=False)["copied"] == sorted([gone, bad])
    assert cs.verify_cache(url)["files"] == len(listed)

    result = invoke("cache", "pull", url, str(tmp_path / "pulled"))
    assert result.exit_code == 0 and f"copied {len(listed) + 1} of {len(listed) + 1} files" in result.output, (
        result.output
    )
    before = _mtimes(tmp_path / "pulled")
    (tmp_path / "pulled" / gone).unlink()
    again = invoke("cache", "pull", url, str(tmp_path / "pulled"))
    assert again.exit_code == 0 and "copied 1 of" in again.output, again.output
    after = _mtimes(tmp_path / "pulled")
    assert {rel for rel in after if after[rel] != before[rel]} == {gone}
    assert_same_cache(tmp_path / "pulled", local_cache)


def test_an_interrupted_copy_is_not_a_cache_until_resumed(local_cache, tmp_path):
    listed = sorted(cs.open_cache(local_cache).meta[cs.ATTR_CHECKSUMS])
    for rel in listed[: len(listed) // 2]:  # what a killed copy leaves: some files, no group zarr.json
        (tmp_path / "dst" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "dst" / rel).write_bytes((local_cache / rel).read_bytes())
    with pytest.raises(cs.CacheError, match="no zarr.json; a copy writes it last: rerun the same push or pull"):
        cs.open_cache(tmp_path / "dst")
    report = cs.copy_cache(local_cache, tmp_path / "dst", progress=False)
    assert report["skipped"] == listed[: len(listed) // 2]
    assert_same_cache(tmp_path / "dst", local_cache)


def test_copy_refuses_a_corrupt_source_and_someone_elses_destination(local_cache, tmp_path):
    write_known_rows_cache(tmp_path / "other", seed=1)
    result = invoke("cache", "push", str(local_cache), str(tmp_path / "other"))
    assert result.exit_code == 1 and "holds another cache (attrs digest" in result.output, result.output
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    result = invoke("cache", "push", str(local_cache), str(tmp_path / "mine"))
    assert result.exit_code == 1 and "holds notes.txt, which is no file of" in result.output, result.output
    shard = sorted(p for p in (local_cache / cs.PROBS).rglob("c/*/*") if p.is_file())[0]
    shard.write_bytes(b"\0" + shard.read_bytes()[1:])
    rel = shard.relative_to(local_cache).as_posix()
    result = invoke("cache", "push", str(local_cache), str(tmp_path / "new"))
    assert result.exit_code == 1 and f"{local_cache}/{rel}: checksum mismatch in the source" in result.output
    assert not (tmp_path / "new" / rel).exists()


def test_storage_failures_are_one_line_errors(s3, local_cache):
    result = invoke("cache", "push", str(local_cache), "s3://kdpipe-no-such-bucket/c")
    last = result.output.strip().splitlines()[-1]  # after the progress bar, which CliRunner mixes in
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert last == (
        f"Error: {local_cache} -> s3://kdpipe-no-such-bucket/c: FileNotFoundError: The specified bucket does not exist"
    )


def test_one_side_writes_packs_and_pushes_the_other_pulls_verifies_and_trains(s3, demo_models, tmp_path):
    """The whole team story: a real teacher cache goes through a zip and the loopback S3 server into training."""

    from pipeline.config import DistillConfig, TeacherCacheConfig
    from stages import distill, teacher_cache

    written = tmp_path / "writer" / "cache"
    teacher_cache.run(
        TeacherCacheConfig(
            teacher=str(demo_models["teacher"]),
            tasks={"demo_qa": 8, "demo_yesno": 8},
            top_k=16,
            batch_size=8,
            device="cpu",
            chunk_rows=32,
            shard_rows=64,
            out=str(written),
        )
    )
    assert invoke("cache", "pack", str(written), str(tmp_path / "writer" / "cache.zip")).exit_code == 0
    url = f"s3://{BUCKET}/team/demo"
    assert invoke("cache", "push", str(tmp_path / "writer" / "cache.zip"), url).exit_code == 0
    pulled = tmp_path / "reader" / "cache"
    assert invoke("cache", "pull", url, str(pulled)).exit_code == 0
    verified = invoke("cache", "verify", str(pulled))
    assert verified.exit_code == 0 and verified.output.startswith("ok:"), verified.output
    assert_same_cache(pulled, written)
    cfg = DistillConfig(student=str(demo_models["student"]), steps=3, batch_size=4, lanes=2, device="cpu", lr=1e-3)
    finals = []
    for source, out in ((str(pulled), "from-pulled"), (url, "from-s3")):
        result = distill.run(replace(cfg, checkpoint_every=0, cache=str(source), out=str(tmp_path / "reader" / out)))
        assert result.steps == 3 and (tmp_path / "reader" / out / "model.safetensors").exists()
        finals.append({k: result.final[k] for k in ("loss", "ce", "uld")})
    assert finals[0] == finals[1]  # the same rows whichever copy the student reads


# ---------------------------------------------------------------------------------------------- hostile, remote


def test_a_missing_bucket_is_named_as_one(s3):
    result = CliRunner().invoke(main, ["cache", "info", "s3://kdpipe-no-such-bucket/cache"])
    assert result.exit_code == 1 and "no such bucket 'kdpipe-no-such-bucket'" in result.output, result.output


def test_a_bomb_read_from_s3_is_one_line_for_verify_and_distill(s3, demo_models, tmp_path):
    from tests import hostile

    cache = hostile.write_valid_cache(tmp_path / "cache")
    rel = hostile.make_zstd_bomb(cache)
    url = f"s3://{BUCKET}/bomb"
    cs.copy_cache(cache, url, progress=False)  # the forged checksums hold: the copy goes through
    verified = CliRunner().invoke(main, ["cache", "verify", url])
    assert verified.exit_code == 1 and f"{url}/{rel}" in verified.output and "inflates beyond" in verified.output
    args = ["--student", str(demo_models["student"]), "--steps", "1", "--batch-size", "2", "--lanes", "1"]
    distilled = CliRunner().invoke(main, ["distill", "--cache", url, "--out", str(tmp_path / "out"), *args])
    error = [line for line in distilled.output.splitlines() if line.startswith("Error:")]
    assert distilled.exit_code == 1 and "Traceback" not in distilled.output, distilled.output
    assert len(error) == 1 and f"{url}/{rel}" in error[0] and "inflates beyond" in error[0], distilled.output
