"""`make demo-tune` and `make demo-seeds` (benchmarks/demo_protocol.py) end to end, shortened: two arms (FT on the
labelled cache, sequence-level KD on a transfer cache the teacher answered), two tasks, a few steps."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import cache_schema
from pipeline.devtools import demo_models as builder
from stages import teacher_cache
from tests.conftest import REPO
from tests.helpers import small_teacher_cache_config

TASKS = {"demo_yesno": 8, "demo_qa": 8}


def protocol(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "benchmarks/demo_protocol.py", *args], cwd=REPO, capture_output=True, text=True, timeout=900
    )


@pytest.mark.slow
def test_tune_picks_on_dev_and_seeds_reports_paired_differences_on_the_held_out_split(demo_models, tmp_path):
    labelled, transfer = tmp_path / "labelled", tmp_path / "transfer"
    teacher_cache.run(small_teacher_cache_config(demo_models["teacher"], tasks=TASKS, out=str(labelled)))
    prompts = str(demo_models["teacher"].parent / builder.TRANSFER_FILE)
    teacher_cache.run(
        small_teacher_cache_config(
            demo_models["teacher"], tasks={prompts: 16}, answers="teacher", answer_overflow="cut", out=str(transfer)
        )
    )
    config = tmp_path / "demo.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "teacher_cache": {"teacher": str(demo_models["teacher"]), "tasks": TASKS},
                "distill": {"student": str(demo_models["student"]), "batch_size": 8, "device": "cpu"},
                "eval": {"tasks": list(TASKS), "limit": 4, "max_new_tokens": 4, "device": "cpu"},
            }
        )
    )
    arms = tmp_path / "arms.yaml"
    arms.write_text(
        "steps: 2\nlr_grid: [0.001, 0.01]\ndev_split: validation\nreport_split: test\narms:\n"
        "  ft:\n    regime: 1\n    cache: labelled\n    flags: {uld_weight: 0.0}\n    lr: 0.002\n"
        "  seqkd:\n    regime: 2\n    cache: transfer\n    flags: {uld_weight: 0.0}\n    lr: 0.002\n"
        "headline:\n  regime1: ft\n  regime2: seqkd\n"
    )
    common = ["--config", str(config), "--labelled", str(labelled), "--transfer", str(transfer), "--jobs", "1"]
    out = tmp_path / "protocol"
    tuned = protocol("tune", *common, "--arms", str(arms), "--out", str(out), "--write", str(arms))
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    grid = json.loads((out / "grid.json").read_text())
    assert grid["split"] == "validation" and len(grid["rows"]) == 2 * 2  # every arm at every rate
    for name, lr in grid["chosen"].items():
        rows = [r for r in grid["rows"] if r["arm"] == name]
        assert lr == max(rows, key=lambda r: r["mean"])["lr"]
    written = yaml.safe_load(arms.read_text())
    assert {n: a["lr"] for n, a in written["arms"].items()} == grid["chosen"]
    assert written["headline"] == {"regime1": "ft", "regime2": "seqkd"}  # regime 1 is FT alone: kept as written

    flags = protocol("flags", "regime2", "--arms", str(arms), "--transfer", str(transfer))
    name = written["headline"]["regime2"]
    assert flags.stdout.split()[:2] == ["--cache", str(transfer)] and f"--lr {grid['chosen'][name]:g}" in flags.stdout
    assert flags.stdout.split()[-1] == "--accept-cache"  # the transfer set is not the config's mixture

    seeded = protocol("seeds", *common, "--arms", str(arms), "--out", str(out), "--seeds", "0,1")
    assert seeded.returncode == 0, seeded.stderr[-3000:]
    result = json.loads((out / "seeds.json").read_text())
    assert result["split"] == "test" and result["seeds"] == [0, 1] and set(result["runs"]) == set(written["arms"])
    runs = result["runs"]
    mean = {n: {s: sum(v.values()) / len(v) for s, v in by_seed.items()} for n, by_seed in runs.items()}
    diffs = [mean["seqkd"][s] - mean["ft"][s] for s in ("0", "1")]
    paired = f"{sum(diffs) / 2:+.1f} ± {abs(diffs[0] - diffs[1]) / 2**0.5:.1f}"
    line = next(x for x in (out / "seeds.md").read_text().splitlines() if x.startswith("| seqkd − ft |"))
    assert line.rstrip(" |").endswith(paired), (line, paired)
    assert seeded.stdout.startswith("# Every arm over seeds 0, 1 (test split")
    # every arm is scored on the same records, those in neither cache, whichever cache it trained on
    ids = {
        name: [json.loads(x)["id"] for x in (run / "eval-test/predictions/student/demo_qa.jsonl").open()]
        for name, run in ((n, out / "runs" / f"{n}-lr{written['arms'][n]['lr']:g}-seed1") for n in ("ft", "seqkd"))
    }
    assert ids["ft"] == ids["seqkd"] and len(ids["ft"]) == 4


@pytest.mark.parametrize("path", sorted((REPO / "benchmarks").glob("demo_arms*.yaml")), ids=lambda p: p.name)
def test_every_arms_file_reads_and_holds_its_choices_from_its_own_grid(path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from demo_protocol import read_arms

    arms = read_arms(path)
    assert isinstance(arms["steps"], int) and arms["steps"] > 0 and arms["dev_split"] != arms["report_split"]
    for name, arm in arms["arms"].items():
        assert arm["lr"] in arms["lr_grid"], name
    assert set(arms["headline"].values()) <= set(arms["arms"])


def test_demo_transfer_writes_the_larger_set_as_the_build_draws_it(tmp_path):
    out = tmp_path / "t.jsonl"
    done = subprocess.run(
        [sys.executable, "benchmarks/demo_transfer.py", "--per-task", "3", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in builder.transfer_prompts(3)]
    assert len(rows) == 3 * 6 and all(set(r) == {"id", "prompt"} for r in rows)
    assert "18 prompts (demo_yesno 3," in done.stdout


def test_demo_mixed_writes_the_labelled_examples_with_gold_answers_then_the_teacher_answered_prompts(tmp_path):
    from pipeline.devtools.synthetic_cache import forge_attrs
    from tests.helpers import write_text_cache

    gold, taught = write_text_cache(tmp_path / "gold", 12), write_text_cache(tmp_path / "taught", 9, seed=1)
    forge_attrs(taught, answers="teacher")
    out = tmp_path / "mixed.jsonl"

    def mixed(labelled: Path, transfer: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "benchmarks/demo_mixed.py", "--labelled", str(labelled), "--transfer", str(transfer),
             "--out", str(out)],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    done = mixed(gold, taught)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    expected = [
        (f"labelled/{e['task']}/{e['source_id'] or e['key']}", e["prompt"], e["answer"])
        for e in cache_schema.open_cache(gold).examples.to_pylist()
    ] + [
        (e["source_id"] or e["key"], e["prompt"], e["answer"])
        for e in cache_schema.open_cache(taught).examples.to_pylist()
    ]
    assert [(r["id"], r["prompt"], r["answer"]) for r in lines] == expected and len(lines) == 21
    refused = mixed(taught, gold)  # the caches the wrong way round
    assert refused.returncode == 2 and "must hold gold answers" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_demo_copying_recurring_documents_repeat_a_small_pool_of_world_facts():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from demo_copying import FACT_END, recurring_text

    from pipeline.tasks.demo import world_text

    avoided = FACT_END.split(world_text(0, 1)[0])[0]  # the first fact the world draws
    facts = {f for doc in world_text(0, 400, frozenset({avoided})) for f in FACT_END.split(doc)}
    docs = recurring_text(0, 200, frozenset({avoided}))
    assert len(docs) == 200
    for doc in docs:
        said = FACT_END.split(doc)
        assert 4 <= len(said) <= 10 and len(set(said)) <= 4 and set(said) <= facts and avoided not in said
    assert sum(len(set(FACT_END.split(d))) < len(FACT_END.split(d)) for d in docs) >= 180  # nearly every one repeats


def test_demo_copying_prefix_pairs_cut_a_recurring_document_between_facts():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from demo_copying import FACT_END, prefix_pairs

    held = builder.pretraining_avoid()
    pairs = prefix_pairs(0, 50)
    assert len(pairs) == 50
    for source, target in pairs:
        before, after = FACT_END.split(source), FACT_END.split(target)
        assert before and 1 <= len(after) <= 2 and not (set(before) | set(after)) & held


@pytest.mark.parametrize(
    "command, model",
    [
        (["pretrain", "--docs", "world", "--out", "out"], "student"),
        (["teacher", "--pretrain-steps", "0", "--out", "out"], "teacher"),
        (["alone"], "teacher"),
    ],
    ids=["pretrain", "teacher", "alone"],
)
def test_demo_copying_refuses_a_missing_model_in_one_line(tmp_path, command, model):
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/demo_copying.py"), *command, "--steps", "1", f"--{model}",
         str(tmp_path / "none")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and f"no demo {model} there" in done.stderr and "Traceback" not in done.stderr


def test_demo_copying_binding_scores_the_teacher_on_its_own_qa_examples(demo_models):
    done = subprocess.run(
        [sys.executable, "benchmarks/demo_copying.py", "binding", str(demo_models["teacher"]), "--examples", "3"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    row = done.stdout.strip().splitlines()[-1].split("|")
    assert row[1].strip() == str(demo_models["teacher"]) and row[3].strip() == "3" and 0 <= int(row[2]) <= 3


def test_demo_copying_span_pairs_hide_spans_of_a_recurring_document_behind_sentinels_in_order():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from demo_copying import SENTINELS, recurring_text, span_pairs

    docs = recurring_text(0, 50, builder.pretraining_avoid())
    masked = total = 0
    for doc, (source, target) in zip(docs, span_pairs(0, 50), strict=True):
        spans = [s.split(" ") for s in _between(target, SENTINELS)]
        used = [t for t in SENTINELS if t in source]
        assert used == SENTINELS[: len(used)] and len(spans) == len(used) >= 1 and all(1 <= len(s) <= 3 for s in spans)
        filled = source
        for sentinel, span in zip(used, spans, strict=True):
            filled = filled.replace(sentinel, " ".join(span), 1)
        assert filled == doc  # the target holds exactly what the source hides
        masked, total = masked + sum(map(len, spans)), total + len(doc.split(" "))
    assert 0.08 < masked / total < 0.25


def _between(target: str, sentinels: list[str]) -> list[str]:
    """The spans of a span-corruption target, in order: the text after each sentinel up to the next one."""
    pieces = []
    for word in target.split(" "):
        if word in sentinels:
            pieces.append([])
        else:
            pieces[-1].append(word)
    return [" ".join(p) for p in pieces]


def test_demo_copying_words_tokenizer_gives_a_place_one_piece_in_the_passage_and_the_answer():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from demo_copying import words_tokenizer

    tok = words_tokenizer()
    passage = tok("The mole sleeps by the desert.\nQ: Where does the mole sleep?")["input_ids"]
    answer = tok("by the desert")["input_ids"]
    assert tok.unk_token_id not in passage + answer and answer[2] in passage
    assert tok.decode(answer, skip_special_tokens=True) == "by the desert"


def test_demo_copying_alone_trains_a_qa_teacher_and_scores_it_on_training_and_validation_examples(demo_models):
    done = subprocess.run(
        [sys.executable, "benchmarks/demo_copying.py", "alone", "--steps", "2", "--pool", "300", "--facts", "2",
         "--mix-facts", "1", "--teacher", str(demo_models["teacher"])],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert info["training"]["steps"] == 2 and info["pool"] <= 300 and info["validation_em"][1] == 200
    assert 0 <= info["train_em"][0] <= info["train_em"][1] == 200 and info["facts"] == 2 and info["mix_facts"] == [1]
    assert 0.1 < info["chance_loss"] < 0.2  # ln 2 over "by the <place>" and the end


@pytest.mark.parametrize("facts", [1, 2])
def test_demo_copying_fewer_facts_keeps_the_asked_animals_fact_and_the_answer(facts):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from demo_copying import QA_FACT, fewer_facts

    from pipeline.tasks import build_mixture

    pairs = [
        (e.prompt, e.answer) for e in build_mixture({"demo_qa": 40}, split="train", data_dir=None, seed=1).examples
    ]
    for (prompt, answer), (kept, same) in zip(pairs, fewer_facts(pairs, facts, 0), strict=True):
        before, after = list(QA_FACT.finditer(prompt)), list(QA_FACT.finditer(kept))
        asked = re.search(r"Where does the (\w+) sleep", prompt)[1]
        assert same == answer and len(before) == 3 and len(after) == facts
        assert {m[0] for m in after} <= {m[0] for m in before}
        assert [m[0] for m in after if m[1] == asked] == [f"The {asked} sleeps by the {answer.split()[-1]}."]
        assert kept[: after[0].start()] == prompt[: before[0].start()]
        assert kept[after[-1].end() :] == prompt[before[-1].end() :]


def test_demo_copying_alone_refuses_a_fact_count_it_cannot_cut_to_in_one_line():
    done = subprocess.run(
        [sys.executable, "benchmarks/demo_copying.py", "alone", "--mix-facts", "1,4"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and "give fact counts from 1 to 3" in done.stderr and "Traceback" not in done.stderr
