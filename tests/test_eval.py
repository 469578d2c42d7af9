"""The eval stage: rank classification, greedy generation, the three outputs, rescoring, resume, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.config import ConfigError, EvalConfig, load
from pipeline.evaluation import metrics
from pipeline.evaluation.inference import EvalModel
from pipeline.models import load_model
from pipeline.tasks import get_task, render
from stages import eval as stage
from tests.conftest import run_kdpipe

DEMO = ("demo_yesno", "demo_nli", "demo_mc4", "demo_qa", "demo_summary", "demo_concepts")
SHARED = ("boolq", "squad", "samsum", "anli", "paws", "xsum", "commongen", "cosmosqa")
LIMIT = 12
MAX_NEW = 8
REPO = Path(__file__).resolve().parent.parent


def _cfg(demo_models, out: Path, **kw) -> EvalConfig:
    base = {
        "models": (str(demo_models["teacher"]), str(demo_models["student"])),
        "limit": LIMIT,
        "max_new_tokens": MAX_NEW,
        "batch_size": 8,
        "device": "cpu",
        "out": str(out),
    }
    return EvalConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, demo_models):
    out = tmp_path_factory.mktemp("eval")
    return stage.run(_cfg(demo_models, out))


@pytest.fixture(scope="module")
def loaded(demo_models):
    return {role: load_model(str(path), device=torch.device("cpu"))[:2] for role, path in demo_models.items()}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- the three outputs ----------------------------------------------------------------------------------------


def test_results_json_structure_and_values(demo_run, demo_models):
    results = json.loads((demo_run.out / "results.json").read_text())
    assert results == json.loads(json.dumps(demo_run.results))
    assert set(results["versions"]) >= {"kdpipe", "torch", "transformers"}
    assert results["config"]["models"] == [str(demo_models["teacher"]), str(demo_models["student"])]
    assert list(results["tasks"]) == list(DEMO) and results["template_id"] == 0
    assert list(results["models"]) == ["tiny-t5-teacher", "tiny-gpt2-student"]
    for model in results["models"].values():
        assert list(model["results"]) == list(DEMO)
        for task, r in model["results"].items():
            assert r["n"] == LIMIT and results["tasks"][task]["n"] == LIMIT and r["not_computed"] == {}
            promised = [k for m in get_task(task).metrics for k in metrics.METRIC_KEYS[m]]
            extra = ["acc_norm", "acc_eos"] if get_task(task).kind == "options" else ["no_eos"]
            assert list(r["values"]) == promised + extra and list(r["stderr"]) == promised + extra
            assert all(0.0 <= v <= 100.0 for v in r["values"].values()), (task, r["values"])
            assert all(se is not None and 0.0 <= se <= 50.0 for se in r["stderr"].values()), (task, r["stderr"])
    assert all(t["source"].startswith("generated: demo_") and t["limit"] == LIMIT for t in results["tasks"].values())
    # one paired comparison (student − teacher) per task metric, its difference equal to the values' difference
    comparisons = results["comparisons"]
    assert len(comparisons) == sum(len(r["values"]) for r in results["models"]["tiny-t5-teacher"]["results"].values())
    for c in comparisons:
        a, b = (results["models"][m]["results"][c["task"]]["values"][c["metric"]] for m in (c["a"], c["b"]))
        assert (c["a"], c["b"], c["n"]) == ("tiny-t5-teacher", "tiny-gpt2-student", LIMIT)
        assert c["difference"] == pytest.approx(b - a, abs=1e-4) and c["stderr"] is not None
    # The teacher was trained on the demo tasks: well above chance (33%) on the 3-way entailment one, which a
    # reversed argmax, misaligned answer tokens or scoring the prompt instead of the option would not give.
    assert results["models"]["tiny-t5-teacher"]["results"]["demo_nli"]["values"]["acc"] >= 50.0


def test_predictions_rescored_with_eval_score_equal_results(demo_run):
    for name, model in demo_run.results["models"].items():
        for task, r in model["results"].items():
            path = demo_run.out / r["predictions"]
            assert path == demo_run.out / "predictions" / name / f"{task}.jsonl"
            rows = _jsonl(path)
            assert len(rows) == LIMIT and all(isinstance(row["prediction"], str) for row in rows)
            assert [row["index"] for row in rows] == list(range(LIMIT))
            assert [row["id"] for row in rows] == [f"validation-{i}" for i in range(LIMIT)]
            assert all(row["truncated"] is False for row in rows)
            rescored = metrics.score_predictions_file(get_task(task).metrics, path)
            run_only = ("acc_norm", "acc_eos", "no_eos")  # from the option scores / the generation
            expected = {k: v for k, v in r["values"].items() if k not in run_only}
            assert rescored.values == pytest.approx(expected)
            assert rescored.stderr == pytest.approx({k: r["stderr"][k] for k in expected})
            if "no_eos" in r["values"]:  # the share of rows whose generation never met EOS
                assert r["values"]["no_eos"] == pytest.approx(100 * sum(not row["eos"] for row in rows) / len(rows))
    # and through the command line, which prints the same numbers as JSON
    task_result = demo_run.results["models"]["tiny-gpt2-student"]["results"]["demo_concepts"]
    cli = CliRunner().invoke(
        main,
        ["eval", "score", "--task", "demo_concepts", "--predictions", str(demo_run.out / task_result["predictions"])],
    )
    assert cli.exit_code == 0, cli.output
    printed = json.loads(cli.stdout)
    expected = {k: v for k, v in task_result["values"].items() if k != "no_eos"}
    assert printed["stderr"] == pytest.approx({k: task_result["stderr"][k] for k in expected})
    assert printed["n"] == LIMIT
    assert printed["values"] == pytest.approx(expected) and set(printed["values"]) == {
        "rouge_l",
        "coverage",
    }


def test_results_md_is_a_models_by_metrics_table(demo_run):
    text = (demo_run.out / "results.md").read_text()
    assert text == demo_run.table
    tables = [[line for line in block.splitlines() if line.startswith("|")] for block in text.split("\n\n")]
    main_table, paired, per_task = (t for t in tables if t)
    header = [c.strip() for c in main_table[0].strip("|").split("|")]
    assert header[0] == "model"
    values = demo_run.results["models"]["tiny-t5-teacher"]["results"]
    expected = [(t, k) for t in DEMO for k in values[t]["values"] if k != "acc_eos"]  # acc_eos: results.json only
    assert len(header) == 1 + len(expected)
    assert "demo_mc4 acc" in header and "demo_mc4 acc_norm" in header and "demo_concepts cov" in header
    assert "acc_eos" in values["demo_mc4"]["values"] and "demo_mc4 acc_eos" not in header
    assert len(main_table) == 2 + 2  # header, alignment, one row per model
    for row in main_table[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        r = demo_run.results["models"][cells[0]]["results"]
        want = [f"{r[t]['values'][k]:.1f} ± {r[t]['stderr'][k]:.1f}" for t, k in expected]
        assert cells[1:] == want
    assert paired[2].startswith("| tiny-gpt2-student − tiny-t5-teacher |") and "±" in paired[2]
    assert len(per_task) == 2 + len(DEMO)
    assert (
        "| demo_qa | validation | 12 | not checked | none | tiny-t5-teacher 0, tiny-gpt2-student 0 | `generated:"
        in text
    )


def test_results_png_is_a_png(demo_run):
    data = (demo_run.out / "results.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


# ---- rank classification and generation against independent computations --------------------------------


def _hand_logprobs(model, tok, prompt: str, option: str) -> list[float]:
    """log p of each option token and then of its EOS, one unpadded sequence, by a full forward."""
    with torch.no_grad():
        if model.config.is_encoder_decoder:  # prompt </s> -> option </s> (the teacher's tokenizer appends </s>)
            enc, labels = tok(prompt, return_tensors="pt").input_ids, tok(option, return_tensors="pt").input_ids
            logits = model(input_ids=enc, labels=labels).logits[0]  # [L, V]
            targets = labels[0]
        else:  # the llm-recipes layout: BOS + prompt, then " " + option + EOS
            p = [tok.bos_token_id, *tok(prompt, add_special_tokens=False).input_ids]
            a = tok(" " + option, add_special_tokens=False).input_ids + [tok.eos_token_id]
            logits = model(input_ids=torch.tensor([p + a])).logits[0, len(p) - 1 : -1]  # [L, V]: rows predicting a
            targets = torch.tensor(a)
    return logits.log_softmax(-1).gather(-1, targets[:, None])[:, 0].tolist()


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_rank_classification_matches_hand_computation(role, loaded, demo_run):
    model, tok = loaded[role]
    task = get_task("demo_mc4")
    records = task.load("validation", None, 3, 0).records
    prompts = [render(task, r, 0)[0] for r in records]
    hand = [[_hand_logprobs(model, tok, p, o) for o in r.options] for p, r in zip(prompts, records, strict=True)]
    # batch 5 over 12 (prompt, option) pairs: options of different lengths share padded batches
    lm = EvalModel(model, tok, max_prompt_tokens=512, batch_size=5)
    got = lm.score_options(prompts, [r.options for r in records])
    for h_row, g_row in zip(hand, got, strict=True):
        assert [g.n_tokens for g in g_row] == [len(h) - 1 for h in h_row]
        assert [g.logprob_sum for g in g_row] == pytest.approx([sum(h[:-1]) for h in h_row], abs=1e-4)
        assert [g.eos_logprob for g in g_row] == pytest.approx([h[-1] for h in h_row], abs=1e-4)
    # the stage wrote the same scores and picked lm-eval's argmaxes: of the option's own tokens (acc), of those per
    # character of the option string (acc_norm); and kdpipe's acc_eos, with the end token added
    name = {"teacher": "tiny-t5-teacher", "student": "tiny-gpt2-student"}[role]
    row = _jsonl(demo_run.out / "predictions" / name / "demo_mc4.jsonl")[0]
    sums, eos = [sum(h[:-1]) for h in hand[0]], [h[-1] for h in hand[0]]
    assert row["logprob_sum"] == pytest.approx(sums, abs=1e-3) and row["n_tokens"] == [len(h) - 1 for h in hand[0]]
    assert row["eos_logprob"] == pytest.approx(eos, abs=1e-3)
    chars = [len(o) for o in records[0].options]
    assert row["predicted_label"] == max(range(4), key=lambda j: sums[j])
    assert row["predicted_label_norm"] == max(range(4), key=lambda j: sums[j] / chars[j])
    assert row["predicted_label_eos"] == max(range(4), key=lambda j: sums[j] + eos[j])
    assert row["prediction"] == records[0].options[row["predicted_label"]]


def _hand_greedy(model, tok, prompt: str, n: int) -> tuple[str, bool]:
    """Greedy decoding by repeated full forwards of one unpadded sequence, stopping at EOS (and whether it did)."""
    eos = tok.eos_token_id
    if model.config.is_encoder_decoder:
        enc = tok(prompt, return_tensors="pt").input_ids
        out = [model.generation_config.decoder_start_token_id]
        for _ in range(n):
            nxt = int(model(input_ids=enc, decoder_input_ids=torch.tensor([out])).logits[0, -1].argmax())
            if nxt == eos:
                return tok.decode(out[1:], skip_special_tokens=True).strip(), True
            out.append(nxt)
        return tok.decode(out[1:], skip_special_tokens=True).strip(), False
    ids = [tok.bos_token_id, *tok(prompt, add_special_tokens=False).input_ids]
    new: list[int] = []
    for _ in range(n):
        nxt = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
        if nxt == eos:
            return tok.decode(new, skip_special_tokens=True).strip(), True
        new.append(nxt)
    return tok.decode(new, skip_special_tokens=True).strip(), False


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_batched_generation_equals_one_sequence_greedy(role, loaded):
    model, tok = loaded[role]
    task = get_task("demo_qa")
    # prompts of different lengths, so the batch is padded (left for the causal student)
    prompts = [render(task, r, 0)[0] for r in task.load("validation", None, 3, 0).records] + ["Where?"]
    with torch.inference_mode():
        hand = [_hand_greedy(model, tok, p, 6) for p in prompts]
    got, ended = EvalModel(model, tok, max_prompt_tokens=512, batch_size=4).generate(prompts, 6, with_eos=True)
    assert got == [text for text, _ in hand]
    assert ended == [stopped for _, stopped in hand]  # EOS reported exactly where the hand loop met it
    if role == "teacher":  # trained: it answers the question, not with nothing
        assert all(g.startswith("by the") for g in got[:3]), got


def test_long_prompts_lose_their_middle_to_fit_the_student(loaded):
    model, tok = loaded["student"]  # GPT-2 with 512 positions
    lm = EvalModel(model, tok, max_prompt_tokens=10_000, batch_size=2)
    long_prompt = "Summarize this. " + "word " * 2000 + "Question: is it?"
    scores = lm.score_options([long_prompt, "short?"], [("yes", "no"), ("yes", "no")])
    assert lm.truncated == 1 and all(s.n_tokens >= 1 for row in scores for s in row)
    ids = lm.prompt_ids([long_prompt], reserve=8)[0]
    text = tok.decode(ids)
    assert len(ids) == 512 - 8 and ids[0] == tok.bos_token_id
    assert text.removeprefix(tok.bos_token).startswith("Summarize this.") and text.endswith("Question: is it?")
    assert lm.prompt_ids(["short?"], reserve=8)[0] == [tok.bos_token_id, *tok("short?").input_ids]  # untouched


# ---- resume ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_resume_reuses_finished_tasks_and_redoes_changed_ones(tmp_path, demo_models):
    tasks = ("demo_yesno", "demo_qa")
    first = stage.run(_cfg(demo_models, tmp_path, tasks=tasks, limit=4))
    student_qa = tmp_path / "predictions" / "tiny-gpt2-student" / "demo_qa.json"
    student_qa.unlink()  # as if the run had been killed while generating for that task
    second = stage.run(_cfg(demo_models, tmp_path, tasks=tasks, limit=4))
    reused = {(m, t): r["reused"] for m, e in second.results["models"].items() for t, r in e["results"].items()}
    assert reused == {
        ("tiny-t5-teacher", "demo_yesno"): True,
        ("tiny-t5-teacher", "demo_qa"): True,
        ("tiny-gpt2-student", "demo_yesno"): True,
        ("tiny-gpt2-student", "demo_qa"): False,
    }
    for m, e in second.results["models"].items():
        for t, r in e["results"].items():
            assert r["values"] == first.results["models"][m]["results"][t]["values"]
    # a different generation budget redoes the generation task only; --no-resume redoes everything
    third = stage.run(_cfg(demo_models, tmp_path, tasks=tasks, limit=4, max_new_tokens=3))
    assert [r["reused"] for r in third.results["models"]["tiny-t5-teacher"]["results"].values()] == [True, False]
    fourth = stage.run(_cfg(demo_models, tmp_path, tasks=tasks, limit=4, max_new_tokens=3, resume=False))
    assert not any(r["reused"] for e in fourth.results["models"].values() for r in e["results"].values())


# ---- real task files ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_eval_cli_over_shared_data_writes_all_outputs(tmp_path, shared_data, demo_models):
    out = tmp_path / "eval"
    proc = run_kdpipe(
        "eval",
        "--model",
        str(demo_models["teacher"]),
        "--model",
        str(demo_models["student"]),
        "--data-dir",
        str(shared_data),
        "--tasks",
        ",".join(SHARED),
        "--task-splits",
        "xsum=test",
        "--limit",
        "20",
        "--max-new-tokens",
        "8",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert list(results["tasks"]) == list(SHARED)
    assert results["tasks"]["xsum"]["split"] == "test" and results["tasks"]["boolq"]["split"] == "validation"
    for name, model in results["models"].items():
        for task in SHARED:
            r = model["results"][task]
            assert r["n"] == 20 and all(0.0 <= v <= 100.0 for v in r["values"].values())
            assert len(_jsonl(out / "predictions" / name / f"{task}.jsonl")) == 20
    # XSum articles run past the student's 512 positions: cut, not crashed, and each cut row says so
    xsum = results["models"]["tiny-gpt2-student"]["results"]["xsum"]
    rows = _jsonl(out / "predictions" / "tiny-gpt2-student" / "xsum.jsonl")
    assert xsum["truncated_prompts"] > 0 and sum(r["truncated"] for r in rows) == xsum["truncated_prompts"]
    # rows carry the source's own ids, so they can go to the official scorers
    squad_ids = [r["id"] for r in _jsonl(out / "predictions" / "tiny-t5-teacher" / "squad.jsonl")]
    squad_file = json.loads((shared_data / "squad" / "dev-v1.1.json").read_text())
    qids = [qa["id"] for a in squad_file["data"] for p in a["paragraphs"] for qa in p["qas"]]
    assert squad_ids == qids[:20]
    samsum_ids = [r["id"] for r in _jsonl(out / "predictions" / "tiny-t5-teacher" / "samsum.jsonl")]
    assert samsum_ids[0] == "13817023" and all(samsum_ids)
    for task in SHARED:
        assert all(r["id"] for r in _jsonl(out / "predictions" / "tiny-t5-teacher" / f"{task}.jsonl")), task
    assert results["tasks"]["squad"]["source"] == str(shared_data / "squad" / "dev-v1.1.json")
    assert 95.0 < results["tasks"]["commongen"]["references_coverage"] <= 100.0
    assert "Coverage ceiling, the references' own coverage" in (out / "results.md").read_text()
    assert f"`{shared_data / 'xsum' / 'test.jsonl'}`" in (out / "results.md").read_text()
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    table = (out / "results.md").read_text()
    assert "| tiny-t5-teacher |" in table and "squad EM" in table and "commongen cov" in table
    assert "tiny-t5-teacher" in proc.stdout  # the command prints the table


# ---- CLI and config errors ------------------------------------------------------------------------------------


def _fails_with_one_line(args: list[str], *needles: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and all(n in lines[0] for n in needles), result.stderr


def test_eval_score_rejects_a_malformed_file_in_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prediction": "a", "references": ["a"]}\n{"prediction": "b"}\n')
    _fails_with_one_line(["eval", "score", "--task", "squad", "--predictions", str(bad)], "bad.jsonl:2", "references")
    bad.write_text("not json\n")
    _fails_with_one_line(["eval", "score", "--task", "squad", "--predictions", str(bad)], "not valid JSON")
    _fails_with_one_line(
        ["eval", "score", "--task", "squad", "--predictions", str(tmp_path / "none.jsonl")], "no such file"
    )
    _fails_with_one_line(["eval", "score", "--task", "nope", "--predictions", str(bad)], "unknown task 'nope'")


def test_a_run_with_fewer_tasks_and_models_sets_the_earlier_outputs_aside(tmp_path, demo_models):
    stage.run(_cfg(demo_models, tmp_path, tasks=("demo_yesno", "demo_qa"), limit=3))
    second = stage.run(_cfg(demo_models, tmp_path, models=(str(demo_models["student"]),), tasks=("demo_qa",), limit=3))
    assert sorted(
        p.relative_to(tmp_path / "predictions").as_posix() for p in (tmp_path / "predictions").rglob("*")
    ) == [
        "tiny-gpt2-student",
        "tiny-gpt2-student/demo_qa.json",
        "tiny-gpt2-student/demo_qa.jsonl",
    ]
    assert second.results["models"]["tiny-gpt2-student"]["results"]["demo_qa"]["reused"] is True
    (replaced,) = (tmp_path / "replaced").iterdir()
    earlier = json.loads((replaced / "results.json").read_text())
    assert list(earlier["models"]) == ["tiny-t5-teacher", "tiny-gpt2-student"]
    assert (replaced / "predictions" / "tiny-t5-teacher" / "demo_qa.jsonl").is_file()
    assert (replaced / "predictions" / "tiny-gpt2-student" / "demo_yesno.jsonl").is_file()
    assert not (replaced / "predictions" / "tiny-gpt2-student" / "demo_qa.jsonl").exists()  # kept: this run's


def test_hub_task_offline_is_a_one_line_error(tmp_path, demo_models, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _fails_with_one_line(
        ["eval", "--model", str(demo_models["teacher"]), "--tasks", "boolq", "--out", str(tmp_path)],
        "aps/super_glue",
        "--data-dir",
    )


def test_eval_score_cli_accepts_a_utf8_bom(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"prediction": "Yes.", "references": ["yes"]}\n')
    result = CliRunner().invoke(main, ["eval", "score", "--task", "boolq", "--predictions", str(path)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["values"] == {"acc": 100.0}


def test_eval_score_prints_json(tmp_path):
    good = tmp_path / "p.jsonl"
    good.write_text(
        '{"prediction": "the cat", "references": ["cat", "a dog"]}\n{"prediction": "blue", "references": ["red"]}\n'
    )
    result = CliRunner().invoke(main, ["eval", "score", "--task", "squad", "--predictions", str(good)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "task": "squad",
        "n": 2,
        "values": {"exact_match": 50.0, "f1": 50.0},
        "stderr": {"exact_match": 50.0, "f1": 50.0},
        "not_computed": {},
    }


def test_eval_errors_are_one_line(tmp_path, demo_models):
    teacher = str(demo_models["teacher"])
    _fails_with_one_line(
        ["eval", "--model", str(tmp_path / "missing-model"), "--out", str(tmp_path)], "--model", "missing-model"
    )
    _fails_with_one_line(
        ["eval", "--model", teacher, "--tasks", "demo_qa,nope", "--out", str(tmp_path)],
        "--tasks",
        "unknown task 'nope'",
    )
    _fails_with_one_line(
        ["eval", "--model", teacher, "--tasks", "boolq", "--data-dir", str(tmp_path / "no")],
        "--data-dir",
        "no such folder",
    )
    _fails_with_one_line(
        ["eval", "--model", teacher, "--tasks", "boolq", "--data-dir", str(tmp_path)], "no data folder", "boolq"
    )
    _fails_with_one_line(["eval", "--out", str(tmp_path)], "--model")
    _fails_with_one_line(["eval", "--model", teacher, "--name", "a", "--name", "b"], "--name", "2 names for 1")
    assert not (tmp_path / "results.json").exists()


def test_generate_prints_the_greedy_completion(demo_models, loaded):
    task = get_task("demo_qa")
    prompt = render(task, task.load("validation", None, 1, 0).records[0], 0)[0]
    result = CliRunner().invoke(
        main, ["generate", "--model", str(demo_models["teacher"]), "--device", "cpu", "--max-new-tokens", "8", prompt]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == _hand_greedy(*loaded["teacher"], prompt, 8)[0] and result.stdout.strip()
    assert "ex/s" not in result.stderr and "it/s" not in result.stderr  # one prompt: no progress bar
    _fails_with_one_line(["generate", "--model", "no/such-model", "hi"], "no/such-model")


def test_config_tasks_lists_names_and_shipped_sections():
    cfg = load(EvalConfig, None, "eval", {"models": ("m",), "tasks": ("demo_qa,demo_nli", "demo_qa", " squad ")})
    assert cfg.tasks == ("demo_qa", "demo_nli", "squad")
    with pytest.raises(ConfigError, match="--task-splits"):
        EvalConfig(models=("m",), tasks=("squad",), task_splits={"xsum": "test"})


def test_model_names_are_short_and_unique(tmp_path):
    assert stage.model_names(("runs/demo/student-ft", "runs/demo/student-kd")) == ["student-ft", "student-kd"]
    assert stage.model_names(("runs/a/student", "runs/b/student")) == ["a-student", "b-student"]
    assert stage.model_names(("google/flan-t5-xxl",)) == ["flan-t5-xxl"]
    assert stage.model_names(("x/m", "x/m")) == ["x-m-1", "x-m-2"]
    assert stage.model_names(("a", "b"), ("teacher", "student")) == ["teacher", "student"]
