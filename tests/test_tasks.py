"""The real tasks: release-file loaders on the shared samples and self-written fixtures, the split rule, the Hub
mappings (on in-memory datasets, never the Hub), malformed-row counting, templates and the seeded mixture."""

import csv
import json
import shutil
import string
from collections import Counter
from pathlib import Path

import datasets
import pytest

from pipeline.tasks import TaskError, build_mixture, get_task, render, render_options, task_names
from pipeline.tasks.catalog import NLI_OPTIONS, REAL_TASKS, YES_NO, carved_split
from pipeline.tasks.formats import pick_file, splits_named

TRAINING_TASKS = {"boolq", "squad", "samsum", "anli", "paws", "xsum", "commongen", "cosmosqa"}
TRAINING_TASKS |= {"tatoeba_en_es", "code_alpaca"}
METRICS = {"accuracy", "squad", "rouge_l", "coverage", "bleu", "bertscore"}

# (task, split, file under ../shared/data, valid records): counts from the data README, checked by hand.
SHARED = [
    ("boolq", "validation", "boolq/val.jsonl", 400),
    ("squad", "validation", "squad/dev-v1.1.json", 1325),
    ("samsum", "validation", "samsum/val.csv", 300),
    ("anli", "validation", "anli/R1/dev.jsonl", 300),
    ("paws", "validation", "paws/dev.tsv", 400),
    ("xsum", "test", "xsum/test.jsonl", 200),
    ("commongen", "validation", "commongen/commongen.dev.jsonl", 300),
    ("cosmosqa", "validation", "cosmosqa/valid.csv", 300),
]


def load(name: str, split: str, data_dir: Path, limit: int | None = None):
    return get_task(name).load(split, data_dir, limit, 0)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ---- self-written fixtures in the upstream schemas of the tasks without a shared sample ----------------------


def write_tatoeba(folder: Path, n: int = 200) -> list[tuple[str, str]]:
    """ManyThings/Anki ``spa.txt``: English, Spanish, attribution; plus two malformed lines."""
    pairs = [(f"Sentence number {i}.", f"Oración número {i}.") for i in range(n)]
    lines = [
        f"{en}\t{es}\tCC-BY 2.0 (France) Attribution: tatoeba.org #{i} (CK) & #{i + 9} (Shishir)"
        for i, (en, es) in enumerate(pairs)
    ]
    lines[10:10] = ["one\ttwo\tthree\tfour\tfive", "Nothing here.\t\tCC-BY 2.0"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spa.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "_about.txt").write_text("Tab-delimited bilingual sentence pairs from tatoeba.org\n", encoding="utf-8")
    return pairs


def write_code_alpaca(folder: Path, n: int = 60) -> list[dict]:
    rows = [
        {
            "instruction": f"Write a function that returns {i} times its argument.",
            "input": "x = 3" if i % 3 == 0 else "",
            "output": f"def times_{i}(x):\n    return {i} * x",
        }
        for i in range(n)
    ]
    bad = [{"instruction": "Print hello.", "input": ""}, {"instruction": "", "input": "", "output": "pass"}]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "python_code_instructions.json").write_text(json.dumps(rows + bad, indent=1), encoding="utf-8")
    return rows


def write_coqa(folder: Path) -> None:
    """Official CoQA JSON (dev flavour, with additional_answers): one good story, one with an empty text."""
    questions = ["What color was the cat?", "Where did it live?", "With whom?", "Did they get along?", "Why?"]
    answers = ["orange", "in a barn", "a dog", "yes", "they were both lonely"]
    story = {
        "source": "mctest",
        "id": "s1",
        "filename": "mc160.test.41",
        "story": "Once upon a time, in a barn near a farm house, there lived an orange cat.\r\nIt lived with a dog.",
        "questions": [{"input_text": q, "turn_id": i + 1} for i, q in enumerate(questions)],
        "answers": [
            {"span_start": 0, "span_end": 1, "span_text": a, "input_text": a, "turn_id": i + 1}
            for i, a in enumerate(answers)
            if i != 3  # turn 4 has no main answer, only additional ones
        ],
        "additional_answers": {
            "0": [{"input_text": "Orange.", "turn_id": 1}, {"input_text": "yes, they did", "turn_id": 4}],
            "1": [{"input_text": "an orange one", "turn_id": 1}],
        },
    }
    empty = {**story, "id": "s2", "story": "  ", "questions": story["questions"][:2], "answers": story["answers"][:2]}
    empty.pop("additional_answers")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "coqa-dev-v1.0.json").write_text(
        json.dumps({"version": "1.0", "data": [story, empty]}), encoding="utf-8"
    )


# ---- the catalog ---------------------------------------------------------------------------------------------


def test_catalog_names_kinds_templates_and_metrics():
    names = [t.name for t in REAL_TASKS]
    assert sorted(names) == sorted(TRAINING_TASKS | {"anli_r2", "anli_r3", "coqa"})
    assert len(task_names()) == len(set(task_names()))  # demo and real names don't collide
    for task in REAL_TASKS:
        assert get_task(task.name) is task
        assert 3 <= len(task.templates) <= 5, task.name
        assert set(task.metrics) <= METRICS and task.metrics, task.name
        assert task.max_new_tokens > 0
        assert task.load.hub_id and task.load.hub_splits, task.name
        has_options = ["{options}" in t.prompt for t in task.templates]
        assert all(has_options) if task.kind == "options" else not any(has_options), task.name
    kinds = {t.name: t.kind for t in REAL_TASKS}
    assert {n for n, k in kinds.items() if k == "options"} == {
        "boolq",
        "anli",
        "anli_r2",
        "anli_r3",
        "paws",
        "cosmosqa",
    }


def test_unknown_split_is_an_error(tmp_path):
    with pytest.raises(TaskError, match="split"):
        load("boolq", "dev", tmp_path)


# ---- the shared real samples ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "split", "file", "count"), SHARED, ids=[s[0] for s in SHARED])
def test_shared_sample_loads_every_row(shared_data, name, split, file, count):
    loaded = load(name, split, shared_data)
    assert len(loaded.records) == count
    assert loaded.skipped == Counter()
    for record in loaded.records:
        assert record.targets and all(record.targets)
        if record.options:
            assert record.targets == (record.options[record.label],)


@pytest.mark.parametrize(("name", "split", "file", "count"), SHARED, ids=[s[0] for s in SHARED])
def test_any_file_name_of_the_format_loads(shared_data, tmp_path, name, split, file, count):
    source = shared_data / file
    folder = tmp_path / "plain" / get_task(name).load.folder
    folder.mkdir(parents=True)
    shutil.copy(source, folder / f"my_{name}_sample{source.suffix}")  # named for no split: used for any
    assert len(load(name, "train", tmp_path / "plain").records) == count
    folder = tmp_path / "named" / get_task(name).load.folder
    folder.mkdir(parents=True)
    shutil.copy(source, folder / f"copy-{split}-2024{source.suffix}")
    (folder / "NOTES.md").write_text("not data")
    assert len(load(name, split, tmp_path / "named").records) == count


def test_boolq_title_passage_and_label(shared_data):
    raw = jsonl(shared_data / "boolq/val.jsonl")
    records = load("boolq", "validation", shared_data).records
    first = records[0]
    assert first.fields["title"] == "Ethanol fuel"
    assert first.fields["passage"].startswith("All biomass goes through")
    assert first.fields["question"] == raw[0]["question"]
    assert first.options == ("no", "yes") and first.targets == ("no",)  # label "false"
    assert [r.targets[0] for r in records] == [{"true": "yes", "false": "no"}[r["label"]] for r in raw]


def test_squad_one_record_per_question_with_all_answers(shared_data):
    data = json.loads((shared_data / "squad/dev-v1.1.json").read_text(encoding="utf-8"))
    qas = [qa for a in data["data"] for p in a["paragraphs"] for qa in p["qas"]]
    records = load("squad", "validation", shared_data).records
    assert [r.fields["question"] for r in records] == [qa["question"].strip() for qa in qas]
    assert [r.targets for r in records] == [tuple(a["text"].strip() for a in qa["answers"]) for qa in qas]
    assert records[0].targets == ("Denver Broncos",) * 3
    assert records[0].fields["title"] == "Super Bowl 50"


def test_samsum_multiline_dialogues_get_plain_newlines(shared_data):
    assert b"\r\n" in (shared_data / "samsum/val.csv").read_bytes()
    records = load("samsum", "validation", shared_data).records
    assert not any("\r" in r.fields["dialogue"] or "\r" in r.targets[0] for r in records)
    turns = records[0].fields["dialogue"].split("\n")
    assert turns[0] == "A: Hi Tom, are you busy tomorrow’s afternoon?" and turns[1].startswith("B: ")
    assert sum("\n" in r.fields["dialogue"] for r in records) > 250


def test_anli_labels_map_to_options(shared_data):
    raw = jsonl(shared_data / "anli/R1/dev.jsonl")
    records = load("anli", "validation", shared_data).records
    assert [r.label for r in records] == [{"e": 0, "n": 1, "c": 2}[r["label"]] for r in raw]
    assert [r.fields["premise"] for r in records] == [r["context"].strip() for r in raw]
    assert records[0].options == NLI_OPTIONS == ("Yes", "It's impossible to say", "No")
    assert records[0].targets == ("No",)  # label "c"
    assert Counter(r.targets[0] for r in records) == {"No": 118, "It's impossible to say": 99, "Yes": 83}


def test_anli_rounds_read_their_own_folders(shared_data, tmp_path):
    (tmp_path / "anli" / "R2").mkdir(parents=True)
    shutil.copy(shared_data / "anli/R1/dev.jsonl", tmp_path / "anli/R2/dev.jsonl")
    assert len(load("anli_r2", "validation", tmp_path).records) == 300
    with pytest.raises(TaskError, match=str(tmp_path / "anli" / "R1")):
        load("anli", "validation", tmp_path)
    with pytest.raises(TaskError, match="R3"):
        load("anli_r3", "validation", tmp_path)


def test_paws_quotes_kept_verbatim(shared_data):
    lines = (shared_data / "paws/dev.tsv").read_bytes().decode("utf-8").split("\r\n")[1:-1]
    records = load("paws", "validation", shared_data).records
    cells = [line.split("\t") for line in lines]
    assert [(r.fields["sentence1"], r.fields["sentence2"]) for r in records] == [(c[1], c[2]) for c in cells]
    assert [r.targets[0] for r in records] == [YES_NO[int(c[3])] for c in cells]
    quoted = [r for r in records if "``" in r.fields["sentence1"] + r.fields["sentence2"]]
    assert len(quoted) == 55 and all("''" in r.fields["sentence1"] + r.fields["sentence2"] for r in quoted)


def test_xsum_document_and_summary(shared_data):
    raw = jsonl(shared_data / "xsum/test.jsonl")
    records = load("xsum", "test", shared_data).records
    assert [r.fields["document"] for r in records] == [r["document"].strip() for r in raw]
    assert [r.targets for r in records] == [(r["summary"].strip(),) for r in raw]


def test_commongen_concepts_drop_the_pos_suffix(shared_data):
    raw = jsonl(shared_data / "commongen/commongen.dev.jsonl")
    records = load("commongen", "validation", shared_data).records
    assert records[0].concepts == ("field", "look", "stand")
    assert records[0].fields["concepts"] == "field, look, stand"
    assert records[0].targets == tuple(raw[0]["scene"])
    for record, row in zip(records, raw, strict=True):
        assert record.concepts == tuple(c.split("_")[0] for c in row["concept_set"].split("#"))
        assert len(record.targets) == len(row["scene"])


def test_cosmosqa_label_is_zero_based(shared_data):
    with open(shared_data / "cosmosqa/valid.csv", encoding="utf-8", newline="") as f:
        raw = list(csv.DictReader(f))
    records = load("cosmosqa", "validation", shared_data).records
    for record, row in zip(records, raw, strict=True):
        assert record.options == tuple(row[f"answer{i}"].strip() for i in range(4))
        assert record.targets == (row[f"answer{row['label']}"].strip(),)
    assert Counter(r.label for r in records) == {0: 79, 3: 78, 1: 76, 2: 67}


def test_limit_takes_the_first_records_in_source_order(shared_data):
    everything = load("anli", "validation", shared_data).records
    assert load("anli", "validation", shared_data, limit=7).records == everything[:7]
    assert load("squad", "validation", shared_data, limit=0).records == []


# ---- the split rule ------------------------------------------------------------------------------------------


def touch(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text("")
    return folder


def test_split_keywords_are_whole_words():
    assert splits_named("dev-v1.1.json") == {"validation"}
    assert splits_named("commongen.test_noref.jsonl") == {"test"}
    assert splits_named("val.csv") == splits_named("valid.csv") == splits_named("Validation2.csv") == {"validation"}
    assert splits_named("train-00000-of-00002.jsonl") == {"train"}
    assert splits_named("contest.jsonl") == splits_named("devices.jsonl") == splits_named("spa.txt") == set()


def test_split_rule_picks_the_named_file(tmp_path):
    folder = touch(tmp_path / "x", "train.jsonl", "dev.jsonl", "README.txt", "dev.csv")
    assert pick_file(folder, "validation", (".jsonl",)) == (folder / "dev.jsonl", True)
    assert pick_file(folder, "train", (".jsonl",)) == (folder / "train.jsonl", True)
    with pytest.raises(TaskError) as e:
        pick_file(folder, "test", (".jsonl",))
    message = str(e.value)
    assert "\n" not in message and str(folder) in message
    assert all(name in message for name in ("train.jsonl", "dev.jsonl", "README.txt", "dev.csv"))


def test_split_rule_single_unnamed_file_serves_every_split(tmp_path):
    folder = touch(tmp_path / "x", "spa.txt", "README.txt", "_about.txt", ".hidden.txt")
    for split in ("train", "validation", "test"):
        assert pick_file(folder, split, (".txt",)) == (folder / "spa.txt", False)


@pytest.mark.parametrize(
    ("names", "split", "match"),
    [
        (("a.jsonl", "b.jsonl"), "validation", "2 .jsonl files and none named"),
        (("val.jsonl", "dev.jsonl", "train.jsonl"), "validation", "2 files of .jsonl named for split 'validation'"),
        (("train.jsonl", "notes.jsonl"), "validation", "no file of .jsonl named for split 'validation'"),
        (("data.csv",), "train", "no .jsonl files"),
    ],
)
def test_split_rule_errors_when_ambiguous_or_empty(tmp_path, names, split, match):
    folder = touch(tmp_path / "x", *names)
    with pytest.raises(TaskError, match=match) as e:
        pick_file(folder, split, (".jsonl",))
    assert all(n in str(e.value) for n in names)


def test_missing_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(TaskError) as e:
        load("xsum", "test", tmp_path)
    assert str(tmp_path / "xsum") in str(e.value) and "\n" not in str(e.value)


# ---- malformed rows are counted, not fatal -------------------------------------------------------------------


def test_malformed_jsonl_rows_are_counted(tmp_path):
    good = {"question": "is it so", "passage": "T -- Text.", "idx": 0, "label": True}
    rows = [
        json.dumps(good),
        "{not json",
        json.dumps({**good, "question": None}),
        json.dumps({k: v for k, v in good.items() if k != "label"}),
        json.dumps({**good, "label": "maybe"}),
        json.dumps({**good, "passage": "   "}),
        json.dumps({**good, "passage": "Title only -- "}),
        json.dumps([1, 2]),
        "",
        json.dumps({**good, "question": "is it not", "label": "False"}),
    ]
    (tmp_path / "boolq").mkdir()
    (tmp_path / "boolq" / "val.jsonl").write_text("\n".join(rows) + "\n")
    loaded = load("boolq", "validation", tmp_path)
    assert [r.targets for r in loaded.records] == [("yes",), ("no",)]
    assert loaded.skipped == {
        "bad json line": 1,
        "missing question": 1,
        "missing label": 1,
        "bad label": 1,
        "empty passage": 2,
        "not an object": 1,
    }
    assert load("boolq", "validation", tmp_path, limit=1).records == loaded.records[:1]


def test_malformed_csv_and_tsv_rows_are_counted(tmp_path):
    header = "id,context,question,answer0,answer1,answer2,answer3,label"
    rows = [header, 'a,"Ctx,\r\nmore",Q?,w,x,y,z,2', "b,Ctx,Q?,w,x,y,z,4", "c,Ctx,Q?,w,,y,z,1", "d,Ctx,Q?,w,x"]
    (tmp_path / "cosmosqa").mkdir()
    (tmp_path / "cosmosqa" / "valid.csv").write_text("\r\n".join(rows) + "\r\n", newline="")
    loaded = load("cosmosqa", "validation", tmp_path)
    assert [(r.fields["context"], r.targets) for r in loaded.records] == [("Ctx,\nmore", ("y",))]
    assert loaded.skipped == {"bad label": 1, "empty answer1": 1, "bad column count": 1}

    lines = ["id\tsentence1\tsentence2\tlabel", '1\t"Quoted" start\tB .\t1', "2\tA\tB", "3\tA\tB\t2", "4\t \tB\t0"]
    (tmp_path / "paws").mkdir()
    (tmp_path / "paws" / "dev.tsv").write_text("\r\n".join(lines) + "\r\n", newline="")
    loaded = load("paws", "validation", tmp_path)
    assert [(r.fields["sentence1"], r.targets) for r in loaded.records] == [('"Quoted" start', ("yes",))]
    assert loaded.skipped == {"bad column count": 1, "bad label": 1, "empty sentence1": 1}


def test_unreadable_file_is_an_error_naming_it(tmp_path):
    (tmp_path / "squad").mkdir()
    (tmp_path / "squad" / "dev-v1.1.json").write_text('{"data": [')
    with pytest.raises(TaskError, match="dev-v1.1.json"):
        load("squad", "validation", tmp_path)


# ---- the three tasks without a shared sample -----------------------------------------------------------------


def test_tatoeba_manythings_file_is_carved_into_splits(tmp_path):
    pairs = write_tatoeba(tmp_path / "tatoeba_en_es")
    splits = {s: load("tatoeba_en_es", s, tmp_path) for s in ("train", "validation", "test")}
    got = sorted((r.fields["english"], r.targets[0]) for loaded in splits.values() for r in loaded.records)
    assert got == sorted(pairs)  # disjoint, and together the whole file
    assert 150 < len(splits["train"].records) < 200 and splits["validation"].records and splits["test"].records
    for split, loaded in splits.items():
        assert all(carved_split(r) == split for r in loaded.records)
        assert loaded.skipped == {"bad column count": 1, "empty spa": 1}


def test_tatoeba_challenge_and_plain_pair_layouts(tmp_path):
    folder = tmp_path / "tatoeba_en_es"
    folder.mkdir()
    (folder / "test.txt").write_text(
        "eng\tspa\tI'm hungry.\tTengo hambre.\nspa\teng\tAdiós.\tGoodbye.\nfra\tspa\tA\tB\n"
    )
    (folder / "dev.tsv").write_text("Thank you.\tGracias.\n")
    test = load("tatoeba_en_es", "test", tmp_path)
    assert [(r.fields["english"], r.targets) for r in test.records] == [
        ("I'm hungry.", ("Tengo hambre.",)),
        ("Goodbye.", ("Adiós.",)),
    ]
    assert test.skipped == {"not eng-spa": 1}
    validation = load("tatoeba_en_es", "validation", tmp_path).records  # named for its split: not carved
    assert [(r.fields["english"], r.targets) for r in validation] == [("Thank you.", ("Gracias.",))]


def test_code_alpaca_json_list(tmp_path):
    rows = write_code_alpaca(tmp_path / "code_alpaca")
    splits = {s: load("code_alpaca", s, tmp_path) for s in ("train", "validation", "test")}
    records = [r for loaded in splits.values() for r in loaded.records]
    assert len(records) == len(rows) and all(
        loaded.skipped == {"missing output": 1, "empty instruction": 1} for loaded in splits.values()
    )
    by_output = {r.targets[0]: r for r in records}
    assert by_output["def times_3(x):\n    return 3 * x"].fields["request"] == (
        "Write a function that returns 3 times its argument.\n\nInput:\nx = 3"
    )
    assert by_output["def times_1(x):\n    return 1 * x"].fields["request"] == (
        "Write a function that returns 1 times its argument."
    )


def test_coqa_one_record_per_question_with_capped_history(tmp_path):
    write_coqa(tmp_path / "coqa")
    loaded = load("coqa", "validation", tmp_path)
    assert loaded.skipped == {"empty story": 2}
    records = loaded.records
    assert [r.fields["question"] for r in records] == [
        "What color was the cat?",
        "Where did it live?",
        "With whom?",
        "Did they get along?",
        "Why?",
    ]
    assert records[0].targets == ("orange", "Orange.", "an orange one")
    assert records[3].targets == ("yes, they did",)  # only an additional answer for turn 4
    assert records[0].fields["history"] == "(no earlier questions)"
    assert records[0].fields["story"].count("\n") == 1 and "\r" not in records[0].fields["story"]
    assert records[4].fields["history"] == (
        "Q: Where did it live?\nA: in a barn\nQ: With whom?\nA: a dog\nQ: Did they get along?\nA: yes, they did"
    )


# ---- Hub schema mappings, on in-memory datasets (the Hub is never called) ------------------------------------


def hub(name: str, rows: list[dict], split: str = "validation"):
    return get_task(name).load.from_hub(datasets.Dataset.from_list(rows), split)


def release(name: str, row: dict):
    return get_task(name).load.to_record(row)


def test_hub_boolq_and_paws_integer_labels():
    passage = "Persian language -- Persian is a language."
    loaded = hub(
        "boolq",
        [
            {"question": "is persian a language", "passage": passage, "idx": 3, "label": 1},
            {"question": "is it", "passage": passage, "idx": 4, "label": -1},
        ],
    )
    assert loaded.records == [
        release("boolq", {"question": "is persian a language", "passage": passage, "idx": 3, "label": True})
    ]
    assert loaded.records[0].fields["title"] == "Persian language" and loaded.skipped == {"bad label": 1}
    loaded = hub("paws", [{"id": 1, "sentence1": "A ``b'' c .", "sentence2": "C a b .", "label": 0}])
    assert loaded.records == [
        release("paws", {"id": "1", "sentence1": "A ``b'' c .", "sentence2": "C a b .", "label": "0"})
    ]


def test_hub_squad_answers_struct():
    row = {
        "id": "x",
        "title": "Super_Bowl_50",
        "context": "Denver won.",
        "question": "Who won?",
        "answers": {"text": ["Denver", "Denver"], "answer_start": [0, 0]},
    }
    loaded = hub("squad", [row, {**row, "answers": {"text": [], "answer_start": []}}])
    assert loaded.records == [release("squad", {**row, "answers": ["Denver", "Denver"]})]
    assert loaded.records[0].targets == ("Denver", "Denver") and loaded.skipped == {"empty answers": 1}


def test_hub_anli_premise_and_class_label():
    rows = [{"uid": str(i), "premise": "P.", "hypothesis": f"H{i}.", "label": i, "reason": ""} for i in range(3)]
    loaded = hub("anli", rows, "validation")
    assert [r.targets[0] for r in loaded.records] == list(NLI_OPTIONS)
    assert loaded.records[2] == release("anli", {"context": "P.", "hypothesis": "H2.", "label": "c"})


def test_hub_samsum_xsum_cosmosqa_same_schema():
    loaded = hub("samsum", [{"id": "1", "dialogue": "A: hi\r\nB: yo", "summary": "They greet."}])
    assert loaded.records[0].fields["dialogue"] == "A: hi\nB: yo"
    loaded = hub(
        "xsum", [{"document": "Doc.", "summary": "Sum.", "id": "9"}, {"document": "", "summary": "S", "id": "8"}]
    )
    assert loaded.records == [
        release("xsum", {"document": "Doc.", "summary": "Sum.", "id": "9"})
    ] and loaded.skipped == {"empty document": 1}
    row = {
        "id": "q",
        "context": "C.",
        "question": "Q?",
        "answer0": "a",
        "answer1": "b",
        "answer2": "c",
        "answer3": "d",
    }
    loaded = hub("cosmosqa", [{**row, "label": 2}, {**row, "label": -1}])
    assert loaded.records == [release("cosmosqa", {**row, "label": "2"})] and loaded.skipped == {"bad label": 1}


def test_hub_commongen_groups_references_by_concept_set():
    rows = [
        {"concept_set_idx": 0, "concepts": ["field", "look", "stand"], "target": "A man stands in a field."},
        {"concept_set_idx": 0, "concepts": ["field", "look", "stand"], "target": "I look at the field."},
        {"concept_set_idx": 1, "concepts": ["cat", "couch"], "target": "The cat sleeps on the couch."},
    ]
    loaded = hub("commongen", rows)
    scenes = ["A man stands in a field.", "I look at the field."]
    assert loaded.records[0] == release("commongen", {"concept_set": "field_N#look_V#stand_V", "scene": scenes})
    assert [r.concepts for r in loaded.records] == [("field", "look", "stand"), ("cat", "couch")]


def test_hub_tatoeba_and_code_alpaca_carve_their_shared_split():
    pairs = [(f"Hi {i}.", f"Hola {i}.") for i in range(100)]
    rows = [{"sourceLang": "eng", "targetlang": "spa", "sourceString": en, "targetString": es} for en, es in pairs]
    expected = [release("tatoeba_en_es", {"eng": en, "spa": es}) for en, es in pairs]
    for split in ("train", "validation"):  # both carved out of the Hub's dev split
        assert hub("tatoeba_en_es", rows, split).records == [r for r in expected if carved_split(r) == split]
    assert len(hub("tatoeba_en_es", rows, "train").records) > 80
    assert hub("tatoeba_en_es", rows, "test").records == expected  # the Hub's own test split, whole
    row = {"sourceLang": "spa", "targetlang": "eng", "sourceString": "Sí.", "targetString": "Yes."}
    assert hub("tatoeba_en_es", [row], "test").records == [release("tatoeba_en_es", {"eng": "Yes.", "spa": "Sí."})]

    rows = [{"instruction": f"Task {i}.", "input": "", "output": f"print({i})", "prompt": "..."} for i in range(100)]
    expected = [release("code_alpaca", row) for row in rows]
    for split in ("train", "validation", "test"):  # all three carved out of the one Hub split
        assert hub("code_alpaca", rows, split).records == [r for r in expected if carved_split(r) == split]
    assert {carved_split(r) for r in expected} == {"train", "validation", "test"}


def test_hub_coqa_flattens_conversations():
    rows = [
        {
            "source": "mctest",
            "story": "The cat lived in a barn.",
            "questions": ["Who?", "Where?"],
            "answers": {"input_text": ["a cat", "a barn"], "answer_start": [0, 0], "answer_end": [1, 1]},
        }
    ]
    records = hub("coqa", rows).records
    assert [(r.fields["question"], r.targets) for r in records] == [("Who?", ("a cat",)), ("Where?", ("a barn",))]
    assert records[1].fields["history"] == "Q: Who?\nA: a cat"


def test_without_data_dir_the_loader_asks_the_hub(monkeypatch):
    calls, rows = [], {}

    def fake_load_dataset(path, name=None, *, split, **kwargs):
        calls.append((path, name, split, kwargs))
        return datasets.Dataset.from_list(rows[path])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows["google-research-datasets/paws"] = [{"id": 1, "sentence1": "A .", "sentence2": "B .", "label": 1}]
    assert get_task("paws").load("validation", None, None, 0).records[0].targets == ("yes",)
    rows["facebook/anli"] = [{"uid": "u", "premise": "P.", "hypothesis": "H.", "label": 0, "reason": ""}]
    assert get_task("anli_r3").load("test", None, None, 0).records[0].targets == ("Yes",)
    rows["Helsinki-NLP/tatoeba_mt"] = [
        {"sourceLang": "eng", "targetlang": "spa", "sourceString": "A.", "targetString": "B."}
    ]
    assert len(get_task("tatoeba_en_es").load("test", None, None, 0).records) == 1
    assert calls == [
        ("google-research-datasets/paws", "labeled_final", "validation", {}),
        ("facebook/anli", None, "test_r3", {}),
        ("Helsinki-NLP/tatoeba_mt", None, "test", {"revision": "refs/convert/parquet", "data_dir": "eng-spa"}),
    ]
    with pytest.raises(TaskError, match="no labelled 'test' split"):
        get_task("boolq").load("test", None, None, 0)


# ---- templates and the mixture -------------------------------------------------------------------------------


def first_records(shared_data: Path, tmp_path: Path) -> dict:
    write_tatoeba(tmp_path / "tatoeba_en_es")
    write_code_alpaca(tmp_path / "code_alpaca")
    write_coqa(tmp_path / "coqa")
    (tmp_path / "anli").mkdir()
    for r in ("R2", "R3"):
        shutil.copytree(shared_data / "anli/R1", tmp_path / "anli" / r)
    records = {name: load(name, split, shared_data, limit=1).records[0] for name, split, _, _ in SHARED}
    for name in ("tatoeba_en_es", "code_alpaca", "coqa", "anli_r2", "anli_r3"):
        records[name] = load(name, "validation", tmp_path, limit=1).records[0]
    return records


def test_every_template_renders_a_real_record(shared_data, tmp_path):
    records = first_records(shared_data, tmp_path)
    assert set(records) == {t.name for t in REAL_TASKS}
    for task in REAL_TASKS:
        record = records[task.name]
        for template_id, template in enumerate(task.templates):
            prompt, answer = render(task, record, template_id)
            assert answer == record.targets[0]
            used = {name for _, name, _, _ in string.Formatter().parse(template.prompt) if name}
            assert all(record.fields[name] in prompt for name in used - {"options"})
            if task.kind == "options":
                assert render_options(record.options) in prompt
                assert all(f"\n- {option}" in prompt for option in record.options)


def test_mixture_over_real_tasks_is_deterministic(shared_data):
    counts = {"boolq": 25, "anli": 25, "paws": 25, "squad": 25, "samsum": 25, "commongen": 25, "cosmosqa": 25}
    first = build_mixture(counts, split="validation", data_dir=shared_data, seed=11)
    again = build_mixture(counts, split="validation", data_dir=shared_data, seed=11)
    other = build_mixture(counts, split="validation", data_dir=shared_data, seed=12)
    assert first == again
    assert [e.key for e in first.examples] != [e.key for e in other.examples]
    assert Counter(e.task for e in first.examples) == counts
    assert len({e.key for e in first.examples}) == len(first.examples)
    assert first.skipped == {name: {} for name in counts}
    assert {e.template_id for e in first.examples if e.task == "squad"} == {0, 1, 2, 3}
