"""Your own data as a task: file specs and names, the formats and columns, bad input, bounded reads, provenance,
and round trips (teacher-cache, distill, eval) on real text from ../shared/data converted to each format."""

import csv
import hashlib
import json
import logging
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import cache_schema as cs
from pipeline.config import ConfigError, DistillConfig, EvalConfig, TeacherCacheConfig, load
from pipeline.tasks import TaskError, build_mixture, get_task, mixture_spec, readers, render, resolve_task
from pipeline.tasks import files as ft
from pipeline.tasks.catalog import YES_NO
from stages import distill, teacher_cache
from stages import eval as eval_stage
from tests.conftest import run_kdpipe
from tests.helpers import small_teacher_cache_config

N = 6  # examples per task in the round trips
BUILTIN = {"boolq": N, "squad": N, "samsum": N}
FORMATS = (".jsonl", ".json", ".csv", ".parquet")
MINE = {"boolq": "my_boolq", "squad": "my_squad", "samsum": "my_samsum"}  # built-in task -> file stem


# ---- converting the shared samples ---------------------------------------------------------------------------


def _rows(task: str, prompt: str, answer: str, record) -> dict:
    """One file row holding a built-in example: BoolQ as options, SQuAD as prompt/answers, SAMSum as a chat."""
    if task == "boolq":
        return {"prompt": prompt, "options": list(YES_NO), "label": record.label, "id": record.source_id}
    if task == "squad":  # every reference; the first is the example's answer, which trains
        assert record.targets[0] == answer
        return {
            "prompt": prompt,
            "answer": list(record.targets),
            "id": record.source_id,
        }
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return {"messages": messages, "id": record.source_id}


def write_rows(path: Path, rows: list[dict]) -> Path:
    """``rows`` in the format of ``path``'s suffix; CSV cells hold lists as JSON and SQuAD's first answer only."""
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    elif suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        cells = [
            {
                k: v[0] if k == "answer" and isinstance(v, list) else json.dumps(v) if isinstance(v, list) else v
                for k, v in r.items()
            }
            for r in rows
        ]
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(cells[0]))
            writer.writeheader()
            writer.writerows(cells)
    return path


def _records_by_id(shared: Path, task: str, n: int | None = None) -> dict:
    return {r.source_id: r for r in get_task(task).load("validation", shared, n, 0).records}


def mixture_files(shared: Path, folder: Path, suffix: str) -> dict[str, Path]:
    """The built-in mixture BUILTIN (validation split, seed 0) as three files of ``suffix``, one per task."""
    mixture = build_mixture(BUILTIN, split="validation", data_dir=shared, seed=0)
    out = {}
    for task in BUILTIN:
        records = _records_by_id(shared, task, N)
        rows = [_rows(task, e.prompt, e.answer, records[e.source_id]) for e in mixture.examples if e.task == task]
        out[task] = write_rows(folder / f"{MINE[task]}{suffix}", rows)
    return out


def eval_files(shared: Path, folder: Path, suffix: str) -> dict[str, Path]:
    """The first N validation records of each built-in task, as eval renders them (template 0), as files."""
    out = {}
    for task in BUILTIN:
        records = get_task(task).load("validation", shared, N, 0).records
        rows = [_rows(task, *render(get_task(task), r, 0), r) for r in records]
        out[task] = write_rows(folder / f"{MINE[task]}{suffix}", rows)
    return out


# ---- specs, names and the field map --------------------------------------------------------------------------


def test_a_file_spec_is_named_by_its_stem_and_a_hub_spec_by_its_dataset():
    assert ft.is_file_spec("data/support.jsonl") and ft.is_file_spec("x.PARQUET") and ft.is_file_spec("hf:a/b")
    assert not ft.is_file_spec("boolq") and not ft.is_file_spec("notes.txt")
    assert ft.task_name("data/support.jsonl") == "support" and ft.task_name("boolq") == "boolq"
    assert ft.task_name("hf:org/faq") == "faq" and ft.task_name("hf:org/glue:mrpc@test") == "glue_mrpc"
    assert ft.parse_hub("hf:org/glue:mrpc@test") == ft.HubSpec("org/glue", "mrpc", "test")
    assert ft.parse_hub("hf:org/faq") == ft.HubSpec("org/faq", None, None)
    with pytest.raises(TaskError, match="hf:ORG/NAME"):
        ft.parse_hub("hf:org/faq@")


def test_names_must_be_unique_and_not_a_built_in_tasks():
    with pytest.raises(ConfigError, match="rename the file"):
        TeacherCacheConfig(tasks={"data/boolq.jsonl": 5})
    with pytest.raises(ConfigError, match="both named 'faq'"):
        TeacherCacheConfig(tasks={"a/faq.jsonl": 5, "b/faq.csv": 5})
    with pytest.raises(ConfigError, match="--tasks"):
        EvalConfig(models=("m",), tasks=("a/faq.jsonl", "hf:org/faq"))


def test_the_field_map_names_roles_of_file_tasks():
    cfg = TeacherCacheConfig(tasks={"a/faq.jsonl": 5, "squad": 5}, fields={"prompt": "q", "faq.answer": "r"})
    assert ft.fields_for("faq", cfg.fields) == {"prompt": "q", "answer": "r"}
    assert ft.fields_for("other", cfg.fields) == {"prompt": "q"}
    for fields, match in [
        ({"question": "q"}, "'question' is not one of the roles"),
        ({"other.prompt": "q"}, "'other' is not a file task of this run"),
        ({"prompt": ""}, "give the column's name"),
    ]:
        with pytest.raises(ConfigError, match="--fields: .*" + match):
            TeacherCacheConfig(tasks={"a/faq.jsonl": 5}, fields=fields)
    with pytest.raises(ConfigError, match="there is none"):
        TeacherCacheConfig(tasks={"squad": 5}, fields={"prompt": "q"})


def test_task_splits_name_tasks_that_have_splits():
    assert TeacherCacheConfig(tasks={"xsum": 5}, task_splits={"xsum": "test"}).task_splits == {"xsum": "test"}
    assert TeacherCacheConfig(tasks={"hf:org/faq": 5}, task_splits={"faq": "test"}).task_splits == {"faq": "test"}
    with pytest.raises(ConfigError, match="a file, read whole"):
        TeacherCacheConfig(tasks={"a/faq.jsonl": 5}, task_splits={"faq": "test"})
    with pytest.raises(ConfigError, match="names its split already"):
        TeacherCacheConfig(tasks={"hf:org/faq@train": 5}, task_splits={"faq": "test"})
    with pytest.raises(ConfigError, match="not one of the --tasks"):
        TeacherCacheConfig(tasks={"squad": 5}, task_splits={"xsum": "test"})


def test_task_splits_let_teacher_cache_read_a_test_only_release(shared_data):
    with pytest.raises(TaskError, match="named for split 'train'"):
        build_mixture({"xsum": 3}, split="train", data_dir=shared_data, seed=0)
    mixture = build_mixture({"xsum": 3}, split="train", data_dir=shared_data, seed=0, task_splits={"xsum": "test"})
    assert len(mixture.examples) == 3 and all(e.source_id for e in mixture.examples)
    spec = mixture_spec({"xsum": 3}, split="train", seed=0, limit=None, caps=None, source="files")
    with_splits = mixture_spec(
        {"xsum": 3}, split="train", seed=0, limit=None, caps=None, source="files", task_splits={"xsum": "test"}
    )
    assert with_splits == {**spec, "task_splits": {"xsum": "test"}}


def test_a_yaml_config_takes_files_and_a_field_map_per_file(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "teacher_cache:\n  tasks: {data/faq.jsonl: 20, boolq: 5}\n  fields:\n    prompt: question\n"
        "    faq: {answer: reply, id: qid}\neval:\n  tasks: [data/faq.jsonl]\n  metric: [rouge_l]\n"
        "  fields: {faq: {prompt: q}}\n"
    )
    cfg = load(TeacherCacheConfig, config, "teacher_cache")
    assert cfg.tasks == {"data/faq.jsonl": 20, "boolq": 5}
    assert cfg.fields == {"prompt": "question", "faq.answer": "reply", "faq.id": "qid"}
    ev = load(EvalConfig, config, "eval", {"models": ("m",)})
    assert ev.tasks == ("data/faq.jsonl",) and ev.metric == ("rouge_l",) and ev.fields == {"faq.prompt": "q"}
    with pytest.raises(ConfigError, match="--metric: 'coverage'"):
        EvalConfig(models=("m",), tasks=("data/faq.jsonl",), metric=("coverage",))


# ---- the formats, on real text -------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", FORMATS)
def test_every_format_gives_the_built_in_texts_and_ids(shared_data, tmp_path, suffix):
    """Files made from the built-in mixture give a mixture of the same prompts, answers and source ids."""
    made = mixture_files(shared_data, tmp_path, suffix)
    builtin = build_mixture(BUILTIN, split="validation", data_dir=shared_data, seed=0)
    mine = build_mixture({str(p): N for p in made.values()}, split="train", data_dir=None, seed=0)
    assert mine.skipped == {name: {} for name in MINE.values()}
    expected = {(MINE[e.task], e.source_id): (e.prompt, e.answer) for e in builtin.examples}
    got = {(e.task, e.source_id): (e.prompt, e.answer) for e in mine.examples}
    assert got == expected and len(got) == 3 * N
    squad = resolve_task(str(made["squad"])).load("train", None, None, 0).records
    references = _records_by_id(shared_data, "squad", N)
    for r in squad:  # every SQuAD reference, except in CSV where a cell holds one answer
        assert r.targets == (
            references[r.source_id].targets if suffix != ".csv" else references[r.source_id].targets[:1]
        )
    boolq = resolve_task(str(made["boolq"]))
    assert boolq.kind == "options" and boolq.load("train", None, None, 0).records[0].options == YES_NO


def test_a_field_map_reads_other_column_names(shared_data, tmp_path):
    made = mixture_files(shared_data, tmp_path, ".jsonl")
    rows = [json.loads(line) for line in made["squad"].read_text().splitlines()]
    renamed = write_rows(
        tmp_path / "faq.csv", [{"question": r["prompt"], "reply": r["answer"][0], "qid": r["id"]} for r in rows]
    )
    fields = {"faq.prompt": "question", "faq.answer": "reply", "faq.id": "qid"}
    mine = build_mixture({str(renamed): N, str(made["squad"]): N}, split="train", data_dir=None, seed=0, fields=fields)
    pairs = {
        t: sorted((e.source_id, e.prompt, e.answer) for e in mine.examples if e.task == t) for t in ("faq", "my_squad")
    }
    assert pairs["faq"] == pairs["my_squad"] and len(pairs["faq"]) == N


def test_a_chat_ends_on_its_answer_and_a_history_is_rendered_as_role_lines(tmp_path):
    chats = [
        [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And of Spain?"},
            {"role": "assistant", "content": "Madrid."},
        ],
        [{"role": "user", "content": "Tell me a joke"}],  # no answer: a prompt for the teacher
    ]
    path = write_rows(tmp_path / "chat.parquet", [{"messages": m} for m in chats])
    records = resolve_task(str(path)).load("train", None, None, 0).records
    assert [(r.fields["prompt"], r.targets) for r in records] == [
        ("Hi there", ("Hello!",)),
        ("system: Be brief.\nuser: Capital of France?\nassistant: Paris.\nuser: And of Spain?", ("Madrid.",)),
        ("Tell me a joke", ()),
    ]
    with pytest.raises(TaskError, match=r"chat.parquet: 1 of its 3 rows read have no answer; .*--answers teacher"):
        build_mixture({str(path): 3}, split="train", data_dir=None, seed=0)
    assert (
        len(build_mixture({str(path): 3}, split="train", data_dir=None, seed=0, require_answers=False).examples) == 3
    )


# ---- bad input -----------------------------------------------------------------------------------------------


def _bad_rows_file(path: Path) -> dict[int, str]:
    """A JSONL file with good rows and one bad row of each kind; returns line -> the reason it is counted under."""
    good = json.dumps({"prompt": "What is two plus two?", "answer": "four"})
    lines = [
        good.encode(),
        json.dumps({"answer": "no prompt"}).encode(),
        json.dumps({"prompt": 42, "answer": "x"}).encode(),
        b'{"prompt": "caf\xe9 latte", "answer": "x"}',  # Latin-1, not UTF-8
        json.dumps({"prompt": "long " * (ft.MAX_TEXT_BYTES // 5 + 1), "answer": "x"}).encode(),
        json.dumps({"prompt": "Is ice cold?", "answer": 7}).encode(),
        b"{not json",
        good.encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return {
        2: "missing prompt",
        3: "prompt not text",
        4: "prompt not utf-8",
        5: f"prompt over {ft.MAX_TEXT_BYTES} bytes",
        6: "answer not text",
        7: "bad json line",
    }


def test_bad_rows_are_counted_skipped_and_named_by_file_line_and_field(tmp_path, caplog):
    path = tmp_path / "bad.jsonl"
    reasons = _bad_rows_file(path)
    with caplog.at_level(logging.WARNING, logger="pipeline.tasks.files"):
        loaded = resolve_task(str(path)).load("train", None, None, 0)
    assert len(loaded.records) == 2 and dict(loaded.skipped) == {r: 1 for r in reasons.values()}
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:5] == [f"{path}: line {n}: {reason}; row skipped" for n, reason in list(reasons.items())[:5]]
    assert len(lines) == 6 and "1 more malformed rows" in lines[5]


def test_options_rows_need_a_list_of_texts_and_a_label_in_range(tmp_path):
    rows = [
        {"prompt": "Sky blue?", "options": ["no", "yes"], "label": 1},
        {"prompt": "Grass red?", "options": "no", "label": 0},
        {"prompt": "Fire hot?", "options": ["no", "yes"], "label": 2},
        {"prompt": "Snow warm?", "options": ["no", "yes"], "label": True},
        {"prompt": "Sun a star?", "options": ["no", "yes"]},  # no label: a prompt for the teacher
    ]
    loaded = resolve_task(str(write_rows(tmp_path / "yn.jsonl", rows))).load("train", None, None, 0)
    assert dict(loaded.skipped) == {
        "options not a list of texts": 1,
        "label out of range": 1,
        "label not an integer": 1,
    }
    assert [(r.targets, r.label) for r in loaded.records] == [(("yes",), 1), ((), None)]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.jsonl", None, "missing.jsonl: no such file"),
        ("empty.jsonl", b"\n\n", "empty.jsonl: empty file (no rows)"),
        ("empty.csv", b"", "empty.csv: empty file (no header line)"),
        ("header.csv", b"prompt,answer\n", "header.csv: empty file (no rows)"),
        ("empty.json", b"[]", "empty.json: empty file (no rows)"),
        (
            "cols.jsonl",
            b'{"question": "q", "reply": "r"}\n',
            "no prompt column ('prompt', or chat 'messages'); its columns: question, reply",
        ),
        (
            "all_bad.jsonl",
            b'{"prompt": 1}\n{"prompt": ""}\n',
            "all_bad.jsonl: every one of its 2 rows is malformed (first: line 1: prompt not text); "
            "{'prompt not text': 1, 'empty prompt': 1}",
        ),
        ("broken.json", b"[{", "broken.json: not valid JSON"),
        ("dict.json", b'{"prompt": "a"}', "expected a JSON list of objects"),
        ("twice.csv", b"prompt,prompt\na,b\n", "its header names a column twice"),
        ("bad.parquet", b"PAR1 not really", "bad.parquet: not a readable parquet file"),
    ],
)
def test_a_file_that_cannot_be_used_is_an_error_naming_it(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TaskError, match=None) as info:
        build_mixture({str(path): 3}, split="train", data_dir=None, seed=0)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_an_unknown_mapped_column_is_an_error_naming_it(tmp_path):
    path = write_rows(tmp_path / "faq.jsonl", [{"prompt": "p", "answer": "a"}])
    with pytest.raises(
        TaskError, match=r"faq.jsonl: no column 'question' \(field map prompt=question\); its columns: prompt, answer"
    ):
        resolve_task(str(path), {"prompt": "question"})
    with pytest.raises(TaskError, match="map messages, or prompt and answer"):
        resolve_task(str(path), {"messages": "prompt", "answer": "answer"})


def test_reads_are_bounded_a_huge_line_is_skipped_unread(tmp_path):
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"prompt": "first", "answer": "a"}\n{"prompt": "')
        f.seek(200 << 20)  # a 200 MB line (sparse: the test writes almost nothing)
        f.write(b'", "answer": "b"}\n{"prompt": "last", "answer": "c"}\n')
    tracemalloc.start()
    loaded = resolve_task(str(path)).load("train", None, None, 0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [r.fields["prompt"] for r in loaded.records] == ["first", "last"]
    assert dict(loaded.skipped) == {f"line over {readers.MAX_ROW_BYTES} bytes": 1}
    assert peak < 8 * readers.MAX_ROW_BYTES, peak  # a few 1 MiB buffers, never the 200 MiB line
    big_json = tmp_path / "big.json"
    with open(big_json, "wb") as f:
        f.truncate(readers.MAX_JSON_BYTES + 1)
    with pytest.raises(TaskError, match="write it as JSONL"):
        resolve_task(str(big_json))
    long_csv = tmp_path / "long.csv"
    long_csv.write_bytes(b'prompt,answer\n"' + b"x" * (readers.MAX_ROW_BYTES + 1) + b'",a\n')
    with pytest.raises(TaskError, match=f"long.csv: a row running to line 2 is over {readers.MAX_ROW_BYTES} bytes"):
        resolve_task(str(long_csv)).load("train", None, None, 0)


# ---- provenance ----------------------------------------------------------------------------------------------


def _spec(tasks: dict, **kw) -> dict:
    return mixture_spec(tasks, split="train", seed=0, limit=None, caps=None, source="hub", **kw)


def test_the_mixture_spec_records_each_files_sha256_rows_and_columns(tmp_path):
    path = tmp_path / "faq.jsonl"
    path.write_text('{"q": "a?", "r": "b", "id": 7}\n\n{"q": "c?"}\n{"q": 1}\n', encoding="utf-8")
    spec = _spec({str(path): 5, "squad": 3}, fields={"prompt": "q", "answer": "r"})
    assert spec["files"] == {
        str(path): {
            "name": "faq",
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "rows": 3,  # the blank line is no row; the malformed one is
            "fields": {"prompt": "q", "answer": "r", "id": "id"},
        }
    }
    before = cs.fingerprint(spec)
    path.write_text(path.read_text() + '{"q": "d?"}\n', encoding="utf-8")
    assert cs.fingerprint(_spec({str(path): 5, "squad": 3}, fields={"prompt": "q", "answer": "r"})) != before
    builtin = _spec({"squad": 3})  # a mixture of built-in tasks has the spec it always had
    assert set(builtin) == {"tasks", "split", "seed", "limit", "field_caps", "source", "templates_sha256"}


@pytest.fixture
def local_hub(tmp_path, monkeypatch) -> Path:
    """A dataset folder that ``datasets.load_dataset`` reads as it reads a Hub repo of data files (offline)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    folder = tmp_path / "faq_data"
    folder.mkdir()
    for split, n in (("train", 5), ("validation", 3)):
        rows = [{"prompt": f"{split} question {i}?", "answer": f"answer {i}", "id": f"{split}-{i}"} for i in range(n)]
        write_rows(folder / f"{split}.jsonl", rows)
    return folder


def test_a_hub_dataset_reads_the_split_the_stage_asks_unless_it_names_one(local_hub):
    spec = f"hf:{local_hub}"
    train = resolve_task(spec).load("train", None, None, 0)
    assert len(train.records) == 5 and train.source == spec and train.records[0].source_id == "train-0"
    assert resolve_task(spec).name == "faq_data"
    assert len(resolve_task(spec, split="validation").load("validation", None, None, 0).records) == 3
    assert len(resolve_task(f"{spec}@validation").load("train", None, None, 0).records) == 3
    mixture = build_mixture({spec: 3}, split="train", data_dir=None, seed=0, task_splits={"faq_data": "validation"})
    assert {e.source_id for e in mixture.examples} == {"validation-0", "validation-1", "validation-2"}
    files = _spec({spec: 3}, task_splits={"faq_data": "validation"})["files"][spec]
    assert files["split"] == "validation" and files["rows"] == 3 and len(files["sha256"]) == 64
    with pytest.raises(TaskError, match=r"cannot load split 'test' of .*faq_data"):
        resolve_task(spec, split="test")


def test_eval_metrics_of_a_file_task_follow_its_references(tmp_path):
    short = resolve_task(str(write_rows(tmp_path / "s.jsonl", [{"prompt": "p", "answer": "Denver Broncos"}])))
    records = short.load("train", None, None, 0).records
    assert ft.eval_metrics(short, records) == ("rouge_l", "squad")  # median 2 words: exact match and F1 too
    long = [replace(r, targets=("a summary of six words here",)) for r in records]
    assert ft.eval_metrics(short, long) == ("rouge_l",)
    assert ft.eval_metrics(short, records, ("bleu",)) == ("bleu",)


# ---- round trips with the tiny models ------------------------------------------------------------------------


def _cache_cfg(teacher: Path, out: Path, tasks: dict, **kw) -> TeacherCacheConfig:
    return small_teacher_cache_config(teacher, tasks=tasks, out=str(out), **{"max_answer_tokens": 64, **kw})


@pytest.fixture(scope="module")
def builtin_cache(demo_models, tmp_path_factory) -> Path:
    """The built-in path: BoolQ, SQuAD and SAMSum from their release files."""
    if not (Path(__file__).resolve().parents[2] / "shared" / "data").is_dir():
        pytest.skip("../shared/data is absent")
    out = tmp_path_factory.mktemp("builtin") / "cache"
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    teacher_cache.run(_cache_cfg(demo_models["teacher"], out, BUILTIN, split="validation", data_dir=str(shared)))
    return out


def _by_id(cache: cs.Cache) -> dict:
    return {(t, s): i for i, (t, s) in enumerate(zip(cache.tasks, cache.source_ids, strict=True))}


@pytest.mark.slow
@pytest.mark.parametrize("suffix", FORMATS)
def test_round_trip_cache_distill_and_eval_from_each_format(demo_models, shared_data, builtin_cache, tmp_path, suffix):
    made = mixture_files(shared_data, tmp_path, suffix)
    cache_dir = tmp_path / "cache"
    teacher_cache.run(_cache_cfg(demo_models["teacher"], cache_dir, {str(p): N for p in made.values()}))
    mine, theirs = cs.open_cache(cache_dir), cs.open_cache(builtin_cache)
    assert len(mine) == len(theirs) > 0
    theirs_at = _by_id(theirs)
    for i, (task, source_id) in enumerate(zip(mine.tasks, mine.source_ids, strict=True)):
        builtin = {v: k for k, v in MINE.items()}[task]
        j = theirs_at[(builtin, source_id)]
        assert mine.examples["prompt"][i] == theirs.examples["prompt"][j]
        assert mine.examples["answer"][i] == theirs.examples["answer"][j]
        a, b = mine[i], theirs[j]
        np.testing.assert_array_equal(a.token_ids, b.token_ids)  # the teacher's ids of the same text
        np.testing.assert_array_equal(a.spans, b.spans)
        np.testing.assert_allclose(a.probs, b.probs, atol=2 / cs.PROB_SCALE)  # other batch neighbours only
    assert "file task    my_squad: " in cs.summary(
        cache_dir
    ) and f"source ids   {len(mine)} of {len(mine)}" in cs.summary(cache_dir)
    student = tmp_path / "student"
    distill.run(
        DistillConfig(
            cache=str(cache_dir),
            out=str(student),
            student=str(demo_models["student"]),
            steps=2,
            batch_size=4,
            lanes=4,
            device="cpu",
            checkpoint_every=0,
        )
    )
    scored = EvalConfig(
        models=(str(student),),
        tasks=tuple(str(p) for p in made.values()),
        limit=N,
        max_new_tokens=8,
        device="cpu",
        out=str(tmp_path / "eval"),
    )
    # the student trained on every record of these files: eval leaves them all out, and says so
    with pytest.raises(TaskError, match="left out as trained on"):
        eval_stage.run(scored)
    result = eval_stage.run(replace(scored, include_trained=True))  # the format round trip, not a score
    values = {t: set(r["values"]) for t, r in result.results["models"]["student"]["results"].items()}
    assert values == {
        "my_boolq": {"acc", "acc_norm", "acc_eos"},
        "my_squad": {"rouge_l", "exact_match", "f1", "no_eos"},
        "my_samsum": {"rouge_l", "no_eos"},
    }
    rows = [
        json.loads(line) for line in (tmp_path / "eval/predictions/student/my_squad.jsonl").read_text().splitlines()
    ]
    in_file = [r.source_id for r in resolve_task(str(made["squad"])).load("validation", None, None, 0).records]
    assert [r["id"] for r in rows] == in_file and set(in_file) == set(_records_by_id(shared_data, "squad", N))
    entry = result.results["tasks"]["my_squad"]
    assert entry["file"]["sha256"] == hashlib.sha256(made["squad"].read_bytes()).hexdigest()


def test_eval_on_files_equals_eval_of_the_built_in_tasks(demo_models, shared_data, tmp_path):
    made = eval_files(shared_data, tmp_path, ".jsonl")
    common = {"models": (str(demo_models["student"]),), "limit": N, "max_new_tokens": 8, "device": "cpu"}
    theirs = eval_stage.run(
        EvalConfig(**common, tasks=tuple(BUILTIN), data_dir=str(shared_data), out=str(tmp_path / "a"))
    )
    mine = eval_stage.run(EvalConfig(**common, tasks=tuple(str(p) for p in made.values()), out=str(tmp_path / "b")))
    for task, name in MINE.items():
        a = theirs.results["models"]["tiny-gpt2-student"]["results"][task]["values"]
        b = mine.results["models"]["tiny-gpt2-student"]["results"][name]["values"]
        assert {k: b[k] for k in a} == a, task
        keep = ("prediction", "references", "id", "prompt", "scores")
        rows_a = [
            json.loads(x)
            for x in (tmp_path / f"a/predictions/tiny-gpt2-student/{task}.jsonl").read_text().splitlines()
        ]
        rows_b = [
            json.loads(x)
            for x in (tmp_path / f"b/predictions/tiny-gpt2-student/{name}.jsonl").read_text().splitlines()
        ]
        assert [{k: r[k] for k in keep if k != "scores"} for r in rows_a] == [
            {k: r[k] for k in keep if k != "scores"} for r in rows_b
        ]


def test_prompts_alone_are_answered_by_the_teacher_then_distilled_and_evaluated(demo_models, tmp_path):
    prompts = [{"prompt": f"Write a short note about the number {i}.", "id": f"p{i}"} for i in range(8)]
    path = write_rows(tmp_path / "transfer.jsonl", prompts)
    with pytest.raises(TaskError, match=r"transfer.jsonl: 8 of its 8 rows read have no answer"):
        teacher_cache.run(_cache_cfg(demo_models["teacher"], tmp_path / "gold", {str(path): 8}))
    cfg = _cache_cfg(
        demo_models["teacher"],
        tmp_path / "cache",
        {str(path): 8},
        answers="teacher",
        answer_overflow="cut",
        max_answer_tokens=12,
    )
    teacher_cache.run(cfg)
    cache = cs.open_cache(tmp_path / "cache")
    assert sorted(cache.source_ids) == [f"p{i}" for i in range(8)] and all(cache.examples["answer"].to_pylist())
    info = cs.summary(tmp_path / "cache")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert f"file task    transfer: {path}  sha256 {sha}  8 rows  fields prompt=prompt,id=id" in info
    assert "source ids   8 of 8 examples" in info
    distill.run(
        DistillConfig(
            cache=str(tmp_path / "cache"),
            out=str(tmp_path / "s"),
            student=str(demo_models["student"]),
            steps=2,
            batch_size=4,
            lanes=4,
            device="cpu",
            checkpoint_every=0,
        )
    )
    labelled = write_rows(tmp_path / "notes.jsonl", [{**p, "answer": f"note {i}"} for i, p in enumerate(prompts)])
    result = eval_stage.run(
        EvalConfig(
            models=(str(tmp_path / "s"),),
            tasks=(str(labelled),),
            metric=("bleu", "rouge_l"),
            max_new_tokens=4,
            device="cpu",
            out=str(tmp_path / "e"),
        )
    )
    notes = result.results["models"]["s"]["results"]["notes"]
    assert notes["n"] == 8 and set(notes["values"]) == {"bleu", "rouge_l", "no_eos"}  # --metric, not the default
    with pytest.raises(TaskError, match="transfer.jsonl: 8 of its 8 rows read have no answer to score against"):
        eval_stage.run(
            EvalConfig(models=(str(tmp_path / "s"),), tasks=(str(path),), device="cpu", out=str(tmp_path / "e2"))
        )


def test_an_interrupted_cache_of_a_file_task_resumes_and_refuses_a_changed_file(demo_models, tmp_path, monkeypatch):
    rows = [{"prompt": f"Is {i} an even number?", "answer": "yes" if i % 2 == 0 else "no", "id": i} for i in range(24)]
    path = write_rows(tmp_path / "even.jsonl", rows)
    cfg = _cache_cfg(
        demo_models["teacher"], tmp_path / "whole", {str(path): 24}, batch_size=4, shard_rows=64, chunk_rows=16
    )
    teacher_cache.run(cfg)
    read = ft.FileSource._record

    def interrupted_while_reading(self, row):
        if row.get("id") == 10:
            raise KeyboardInterrupt
        return read(self, row)

    monkeypatch.setattr(ft.FileSource, "_record", interrupted_while_reading)
    with pytest.raises(KeyboardInterrupt):
        teacher_cache.run(replace(cfg, out=str(tmp_path / "killed")))
    monkeypatch.setattr(ft.FileSource, "_record", read)
    assert not (tmp_path / "killed" / cs.GROUP_META_FILE).exists()  # nothing was written: a rerun starts afresh
    calls = {"n": 0}
    real = teacher_cache.batch_rows

    def dies_after_three_batches(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(teacher_cache, "batch_rows", dies_after_three_batches)
    killed = replace(cfg, out=str(tmp_path / "killed"))
    with pytest.raises(KeyboardInterrupt):
        teacher_cache.run(killed)
    monkeypatch.setattr(teacher_cache, "batch_rows", real)
    assert list((tmp_path / "killed" / cs.PARTS_DIR).glob("*.parquet"))  # some batches were committed
    original = path.read_bytes()
    path.write_bytes(original.replace(b"even number", b"odd number", 1))
    with pytest.raises(
        cs.CacheError, match=rf"a file task changed since the cache was started: {path} \(cached: sha256"
    ):
        teacher_cache.run(killed)
    path.write_bytes(original)
    assert teacher_cache.run(killed).resumed_from_batch == 3
    a, b = cs.open_cache(tmp_path / "whole"), cs.open_cache(tmp_path / "killed")
    assert a.examples.equals(b.examples) and a.source_ids == b.source_ids == [str(i) for i in a.source_ids]
    np.testing.assert_array_equal(a.read_rows(0, a.total_rows)[0], b.read_rows(0, b.total_rows)[0])


def test_merge_refuses_parts_written_from_different_versions_of_a_file(demo_models, tmp_path):
    path = write_rows(tmp_path / "faq.jsonl", [{"prompt": f"Question {i}?", "answer": f"a{i}"} for i in range(8)])
    cfg = _cache_cfg(demo_models["teacher"], tmp_path / "parts", {str(path): 8}, batch_size=4, worker=0, num_workers=2)
    teacher_cache.run(replace(cfg, worker=0))
    path.write_text(path.read_text().replace("Question 7", "Query 7"))
    teacher_cache.run(replace(cfg, worker=1))
    with pytest.raises(
        cs.CacheError, match=rf"worker-1-of-2: written from another version of a file task than .*: {path}"
    ):
        cs.merge_parts([str(tmp_path / "parts")], tmp_path / "merged")


# ---- the command line: one line per bad input ----------------------------------------------------------------


def _teacher_cache(teacher: Path, out: Path, *args: str):
    flags = ["--teacher", str(teacher), "--top-k", "8", "--device", "cpu", "--batch-size", "8"]
    return run_kdpipe("teacher-cache", "--out", str(out), *flags, *args)


def _one_error_line(proc, match: str) -> None:
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and match in lines[0], proc.stderr


@pytest.mark.parametrize(
    "write, args, match",
    [
        (None, (), "no_such.jsonl: no such file"),
        (
            b'{"prompt": "p", "answer": "a"}\n',
            ("--fields", "prompt=question"),
            "no column 'question' (field map prompt=question)",
        ),
        (b"", (), "data.jsonl: empty file (no rows)"),
        (
            b'{"prompt": 3}\n{"answer": "a"}\n',
            (),
            "data.jsonl: every one of its 2 rows is malformed (first: line 1: prompt not text); "
            "{'prompt not text': 1, 'missing prompt': 1}",
        ),
        (b'{"prompt": "p"}\n{"prompt": "q", "answer": "a"}\n', (), "data.jsonl: 1 of its 2 rows read have no answer"),
    ],
)
def test_cli_bad_file_input_is_one_line(demo_models, tmp_path, write, args, match):
    path = tmp_path / ("data.jsonl" if write is not None else "no_such.jsonl")
    if write is not None:
        path.write_bytes(write)
    _one_error_line(_teacher_cache(demo_models["teacher"], tmp_path / "c", "--tasks", f"{path}=4", *args), match)


def test_cli_name_clash_and_offline_hub_are_one_line(demo_models, tmp_path):
    _one_error_line(
        _teacher_cache(demo_models["teacher"], tmp_path / "c", "--tasks", "my/boolq.jsonl=4"),
        "'boolq' (the file stem) is a built-in task's",
    )
    _one_error_line(
        _teacher_cache(demo_models["teacher"], tmp_path / "c", "--tasks", "hf:nobody/nothing=4"),
        "hf:nobody/nothing: cannot load split 'train' of nobody/nothing (Couldn't reach 'nobody/nothing' on the Hub",
    )


def test_cli_bad_rows_are_one_line_each_and_counted_in_the_cache_and_results(demo_models, tmp_path):
    path = tmp_path / "bad.jsonl"
    reasons = _bad_rows_file(path)
    proc = _teacher_cache(demo_models["teacher"], tmp_path / "c", "--tasks", f"{path}=10")
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if str(path) in line]
    expected = [f"{path}: line {n}: {reason}; row skipped" for n, reason in list(reasons.items())[: ft.WARNED_ROWS]]
    assert [line.split("pipeline.tasks.files: ", 1)[1] for line in warned[: ft.WARNED_ROWS]] == expected
    counts = {reason: 1 for reason in reasons.values()}
    assert f"skipped: {json.dumps({'source': {'bad': counts}})}" in proc.stdout
    assert cs.open_cache(tmp_path / "c").meta[cs.ATTR_COUNTS]["skipped"]["source"]["bad"] == counts
    ev = run_kdpipe(
        "eval",
        "--model",
        str(demo_models["student"]),
        "--tasks",
        str(path),
        "--max-new-tokens",
        "2",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "e"),
    )
    assert ev.returncode == 0, ev.stderr
    table = (tmp_path / "e" / "results.md").read_text()
    assert "| bad | validation | 2 | not checked | " + ", ".join(f"{r}: 1" for r in reasons.values()) in table
