"""No model is scored on what it was trained on: the record beside a student, and eval leaving those records out."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import cache_schema as cs
from pipeline import trained_on
from pipeline.cli import main
from pipeline.config import DistillConfig, EvalConfig
from pipeline.tasks import get_task, render
from stages import distill, teacher_cache
from stages import eval as eval_stage
from tests.helpers import one_line_error, small_teacher_cache_config

TASKS = {"demo_yesno": 12, "demo_qa": 12}
LIMIT = 10


@pytest.fixture(scope="module")
def trained_on_validation(demo_models, tmp_path_factory) -> tuple[Path, Path]:
    """A cache of the first 12 VALIDATION records of two tasks (as configs/real-teacher.yaml caches validation
    files), and a student distilled from it for two steps."""
    root = tmp_path_factory.mktemp("trained-on")
    cache = small_teacher_cache_config(demo_models["teacher"], tasks=TASKS, split="validation", out=str(root / "c"))
    teacher_cache.run(cache)
    cfg = DistillConfig(
        student=str(demo_models["student"]),
        cache=cache.out,
        out=str(root / "student"),
        steps=2,
        batch_size=4,
        device="cpu",
        lanes=2,
        checkpoint_every=0,
    )
    distill.run(cfg)
    return Path(cache.out), Path(cfg.out)


def _cached_prompts(cache: Path) -> set[tuple[str, str]]:
    table = cs.open_cache(cache).examples
    return set(zip(table.column("task").to_pylist(), table.column("prompt").to_pylist(), strict=True))


def test_a_student_records_every_example_of_its_cache(trained_on_validation):
    cache, student = trained_on_validation
    record = trained_on.read(student)
    assert record is not None and str(cache) in record.source and record.field_caps == {}
    assert record.digests == {trained_on.digest(t, p) for t, p in _cached_prompts(cache)}
    # a record matches whichever template training drew: every validation record of the cache is seen under one
    for name, n in TASKS.items():
        task = get_task(name)
        records = task.load("validation", None, 40, 0).records
        assert [record.seen(task, r) for r in records[:n]] == [True] * n
        cached = {p for t, p in _cached_prompts(cache) if t == name}
        for r in records[n:]:  # the others only where the record's prompt under some template was cached
            assert record.seen(task, r) == any(render(task, r, t)[0] in cached for t in range(len(task.templates)))


def test_eval_leaves_out_what_a_student_trained_on_and_counts_it(trained_on_validation, demo_models, tmp_path):
    cache, student = trained_on_validation
    cfg = EvalConfig(
        models=(str(demo_models["teacher"]), str(student)),
        tasks=tuple(TASKS),
        limit=LIMIT,
        max_new_tokens=4,
        device="cpu",
        out=str(tmp_path / "eval"),
    )
    result = eval_stage.run(cfg)
    cached = _cached_prompts(cache)
    for name in TASKS:
        entry = result.results["tasks"][name]
        assert entry["n"] == LIMIT and entry["trained_on"]["left_out"] >= TASKS[name]
        assert any(str(cache) in s for s in entry["trained_on"]["checked_against"])
        for model in result.results["models"].values():  # the teacher is scored on the same clean examples
            path = result.out / model["results"][name]["predictions"]
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            assert len(rows) == LIMIT and not any((name, row["prompt"]) in cached for row in rows)
            # the records after the cached ones, in split order
            assert rows[0]["id"] == f"validation-{TASKS[name]}"
    left_out = result.results["tasks"]["demo_yesno"]["trained_on"]["left_out"]
    assert f"| demo_yesno | validation | {LIMIT} | {left_out} left out |" in result.table
    assert "Trained on: evaluation records" in result.table

    kept = eval_stage.run(EvalConfig(**{**cfg.__dict__, "include_trained": True, "out": str(tmp_path / "all")}))
    for name in TASKS:
        entry = kept.results["tasks"][name]
        assert entry["trained_on"]["included"] == LIMIT  # the first 10 records are all cached ones
        rows = (kept.out / kept.results["models"]["student"]["results"][name]["predictions"]).read_text()
        assert json.loads(rows.splitlines()[0])["id"] == "validation-0"
    assert f"{LIMIT} included" in kept.table


def test_exclude_cache_names_what_a_model_without_a_record_trained_on(trained_on_validation, demo_models, tmp_path):
    cache, _ = trained_on_validation
    cfg = EvalConfig(
        models=(str(demo_models["teacher"]),),
        tasks=("demo_yesno",),
        limit=LIMIT,
        device="cpu",
        exclude_cache=(str(cache),),
        out=str(tmp_path / "eval"),
    )
    entry = eval_stage.run(cfg).results["tasks"]["demo_yesno"]
    assert entry["trained_on"]["left_out"] >= TASKS["demo_yesno"] and entry["n"] == LIMIT
    # without it the teacher, which has no record, is scored from the first record on
    plain = eval_stage.run(EvalConfig(**{**cfg.__dict__, "exclude_cache": (), "out": str(tmp_path / "plain")}))
    assert plain.results["tasks"]["demo_yesno"]["trained_on"] == {"checked_against": []}
    assert "| demo_yesno | validation | 10 | not checked |" in plain.table


def test_a_damaged_record_is_one_line(trained_on_validation, demo_models, tmp_path):
    _, student = trained_on_validation
    broken = tmp_path / "student"
    broken.mkdir()
    for path in student.iterdir():
        if path.is_file():
            (broken / path.name).write_bytes(path.read_bytes())
    pq.write_table(pa.table({"prompt": ["x"]}), broken / trained_on.FILE)
    result = CliRunner().invoke(
        main, ["eval", "--model", str(broken), "--tasks", "demo_yesno", "--limit", "2", "--out", str(tmp_path / "e")]
    )
    one_line_error(result, "not a kdpipe training record")
    (broken / trained_on.FILE).write_bytes(b"PAR1 not a parquet file")
    result = CliRunner().invoke(
        main, ["eval", "--model", str(broken), "--tasks", "demo_yesno", "--limit", "2", "--out", str(tmp_path / "e")]
    )
    one_line_error(result, "not a readable kdpipe training record")


def test_round_trip_keeps_digests_and_caps(tmp_path):
    record = trained_on.from_examples([("boolq", "Is it?"), ("squad", "Where?")], {"passage": 300}, "somewhere")
    trained_on.write(tmp_path, record)
    assert trained_on.read(tmp_path) == record
    assert trained_on.read(tmp_path / "missing") is None
