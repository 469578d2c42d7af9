"""Several teacher-cache workers, each writing a part, and ``cache merge`` joining the parts into one cache."""

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import cache_schema as cs
from pipeline.cli import main
from pipeline.config import ConfigError, TeacherCacheConfig
from stages import teacher_cache
from tests.helpers import as_older_version, small_teacher_cache_config


@pytest.fixture(scope="module")
def runs(demo_models, tmp_path_factory) -> dict[str, Path]:
    """One worker, and the same config as two workers: worker 0 by flags, worker 1 by torchrun's environment.
    The ids of the first 5 of the 16 entries only (as v1.2 introduced): the narrower id array merges like the rest."""
    base = tmp_path_factory.mktemp("merge")
    # 7 batches: 4 + 3
    cfg = small_teacher_cache_config(demo_models["teacher"], batch_size=7, chunk_rows=16, shard_rows=32, ids_k=5)
    teacher_cache.run(replace(cfg, out=str(base / "single")))
    result = teacher_cache.run(replace(cfg, worker=0, num_workers=2, out=str(base / "parts")))
    assert result.workers == 2 and result.path == str(base / "parts" / "worker-0-of-2")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RANK", "1")
        mp.setenv("WORLD_SIZE", "2")
        teacher_cache.run(replace(cfg, out=str(base / "parts")))
    return {"single": base / "single", "parts": base / "parts", "base": base}


def _rows(path) -> dict:
    cache = cs.open_cache(path)
    probs, tail, ids, topk_ids = cache.read_rows(0, cache.total_rows)
    return {
        "examples": cache.examples.to_pylist(),
        "probs": probs,
        "tail": tail,
        "ids": ids,
        "topk_ids": topk_ids,
        "meta": cache.meta,
    }


def test_workers_write_disjoint_parts_of_the_one_plan(runs):
    parts = [cs.open_cache(runs["parts"] / f"worker-{i}-of-2") for i in (0, 1)]
    assert [p.meta[cs.ATTR_WORKER] for p in parts] == [
        {"index": 0, "count": 2, "plan_batches": 7},
        {"index": 1, "count": 2, "plan_batches": 7},
    ]
    assert [len(p.meta[cs.ATTR_BATCH_EXAMPLES]) for p in parts] == [4, 3]
    assert not set(parts[0].keys) & set(parts[1].keys)
    assert sorted(parts[0].keys + parts[1].keys) == sorted(cs.open_cache(runs["single"]).keys)
    assert parts[0].meta[cs.ATTR_CONFIG] == cs.open_cache(runs["single"]).meta[cs.ATTR_CONFIG]


def test_merged_parts_equal_the_one_worker_cache(runs):
    out = runs["base"] / "merged"
    result = CliRunner().invoke(main, ["cache", "merge", str(runs["parts"]), str(out)])
    assert result.exit_code == 0 and "2 parts, 48 examples" in result.output, result.output
    merged, single = _rows(out), _rows(runs["single"])
    assert merged["examples"] == single["examples"]  # same examples in the same order, same row offsets
    for key in ("probs", "tail", "ids", "topk_ids"):
        np.testing.assert_array_equal(merged[key], single[key])
    assert merged["meta"][cs.ATTR_VERSION] == cs.SCHEMA_VERSION and (merged["topk_ids"][:, 5:] == cs.UNKNOWN_ID).all()
    assert merged["meta"][cs.ATTR_CHECKSUMS] == single["meta"][cs.ATTR_CHECKSUMS]  # byte-identical files
    assert merged["meta"][cs.ATTR_COUNTS] == single["meta"][cs.ATTR_COUNTS]
    assert merged["meta"][cs.ATTR_MERGED]["parts"] == 2 and cs.ATTR_WORKER not in merged["meta"]
    assert cs.verify_cache(out)["examples"] == 48
    assert "merged       from 2 worker parts" in cs.summary(out)
    again = CliRunner().invoke(main, ["cache", "merge", str(runs["parts"]), str(out)])
    assert again.exit_code == 0 and "already complete" in again.output


def test_merge_writes_to_a_url(runs):
    parts = [str(runs["parts"] / "worker-1-of-2"), str(runs["parts"] / "worker-0-of-2")]  # any order
    cs.merge_parts(parts, "memory://kdpipe/merged", progress=False)
    assert _rows("memory://kdpipe/merged")["examples"] == _rows(runs["single"])["examples"]


def _forged_copy(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    group = zarr.open_group(zarr.storage.LocalStore(dst), mode="r+")
    attrs = {**group.attrs.asdict(), **changes}
    attrs[cs.ATTR_DIGEST] = cs.attrs_digest(attrs)
    group.attrs.put(attrs)
    return dst


def _older_copy(src: Path, dst: Path) -> Path:
    """A copy of a part as a v1.2 writer would have left it (no source_id column; its spans then mean v1.2's)."""
    shutil.copytree(src, dst)
    as_older_version(dst, "1.2")
    return dst


def test_merge_refuses_a_missing_a_duplicated_and_a_foreign_part(runs, tmp_path):
    part0, part1 = runs["parts"] / "worker-0-of-2", runs["parts"] / "worker-1-of-2"
    cases = [
        ([part0], "the part of worker 1 of 2 (worker-1-of-2) is missing"),
        ([part0, part1, shutil.copytree(part0, tmp_path / "again")], f"worker 0 of 2 is given twice ({part0} and"),
        ([part0, _forged_copy(part1, tmp_path / "hot", **{cs.ATTR_TEMPERATURE: 2.0})], "its temperature 2.0 differs"),
        ([part0, runs["single"]], f"{runs['single']}: not a worker part"),
        ([tmp_path], "neither a cache nor a folder of worker parts"),
        ([part0, _older_copy(part1, tmp_path / "v1.2")], 'its schema_version "1.2" differs'),
        (
            [_older_copy(p, tmp_path / f"old{i}") for i, p in enumerate((part0, part1))],
            "a v1.2 part, and this kdpipe writes v1.3 caches",  # its spans would change meaning
        ),
    ]
    for paths, message in cases:
        result = CliRunner().invoke(main, ["cache", "merge", *map(str, paths), str(tmp_path / "out")])
        assert result.exit_code == 1 and message in result.output, (message, result.output)
        assert not (tmp_path / "out").exists()


def test_worker_flags_are_checked(demo_models, monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="--worker and --num-workers go together"):
        TeacherCacheConfig(worker=1)
    with pytest.raises(ConfigError, match=r"--worker: 2 is not in \[0, --num-workers 2\)"):
        TeacherCacheConfig(worker=2, num_workers=2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ConfigError, match="RANK='5' WORLD_SIZE='2': not a worker slot"):
        teacher_cache.run(
            small_teacher_cache_config(demo_models["teacher"], tasks={"demo_qa": 4}, out=str(tmp_path / "c"))
        )


def test_cli_help_names_the_worker_flags():
    text = CliRunner().invoke(main, ["teacher-cache", "--help"]).output
    assert "--num-workers" in text and "--worker" in text and "WORLD_SIZE" in text


def test_torchrun_writes_one_part_per_rank_and_rank0_merges(runs, demo_models):
    """A real ``torchrun --nproc_per_node 2`` teacher-cache: the merged cache is the one-process cache."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    out = runs["base"] / "launched"
    cfg = small_teacher_cache_config(demo_models["teacher"], batch_size=7, chunk_rows=16, shard_rows=32, ids_k=5)
    tasks = ",".join(f"{k}={v}" for k, v in cfg.tasks.items())
    command = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "pipeline.cli", "teacher-cache", "--out", str(out), "--teacher", cfg.teacher, "--tasks", tasks]
    for flag in ("batch_size", "top_k", "ids_k", "max_answer_tokens", "device", "chunk_rows", "shard_rows"):
        command += ["--" + flag.replace("_", "-"), str(getattr(cfg, flag))]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"merged cache (all 2 parts): {cs.merged_path(str(out))}" in proc.stdout
    merged, single = _rows(cs.merged_path(str(out))), _rows(runs["single"])
    assert merged["examples"] == single["examples"]
    for key in ("probs", "tail", "ids", "topk_ids"):
        np.testing.assert_array_equal(merged[key], single[key])
    assert merged["meta"][cs.ATTR_VERSION] == cs.SCHEMA_VERSION and (merged["topk_ids"][:, 5:] == cs.UNKNOWN_ID).all()
    assert cs.verify_cache(cs.merged_path(str(out)))["examples"] == 48
