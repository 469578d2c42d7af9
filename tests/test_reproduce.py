"""kdpipe's numbers, reproduced with the tools users check them with: lm-evaluation-harness and transformers.

A distilled demo student is evaluated by ``kdpipe eval``; then the exact ``lm_eval`` command its model card gives
must print the same ``acc`` and ``acc_norm``, a transformers pipeline called as the card says must give the same
greedy answers, and the demo teacher (T5 v1.1, an output head of its own) must survive lm-eval's ``tie_weights()``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer
from transformers import pipeline as hf_pipeline

from pipeline import model_card
from pipeline.config import DistillConfig, EvalConfig
from pipeline.models import load_model
from pipeline.tasks import get_task, render
from pipeline.text import TEXT_FILE, TextEncoder, TextSpec
from stages import distill, teacher_cache
from stages import eval as eval_stage
from tests.helpers import small_teacher_cache_config

pytest.importorskip("lm_eval")

OPTION_TASKS = ("demo_yesno", "demo_nli", "demo_mc4")
GENERATE_TASKS = ("demo_qa", "demo_summary")
LIMIT = 24


@pytest.fixture(scope="module")
def student(demo_models, tmp_path_factory) -> Path:
    """A student distilled by kdpipe (80 steps over the demo tasks, enough to answer), saved as distill saves it."""
    root = tmp_path_factory.mktemp("reproduce")
    tasks = {name: 16 for name in (*OPTION_TASKS, *GENERATE_TASKS)}
    cache = small_teacher_cache_config(demo_models["teacher"], tasks=tasks, out=str(root / "cache"))
    teacher_cache.run(cache)
    cfg = DistillConfig(
        student=str(demo_models["student"]),
        cache=cache.out,
        out=str(root / "student"),
        steps=80,
        batch_size=8,
        lr=2e-3,
        device="cpu",
        lanes=2,
        checkpoint_every=0,
    )
    distill.run(cfg)
    return Path(cfg.out)


@pytest.fixture(scope="module")
def evaluated(student, demo_models, tmp_path_factory) -> eval_stage.EvalResult:
    out = tmp_path_factory.mktemp("reproduce-eval")
    cfg = EvalConfig(
        models=(str(demo_models["teacher"]), str(student)),
        names=("teacher", "student"),
        tasks=(*OPTION_TASKS, *GENERATE_TASKS),
        limit=LIMIT,
        device="cpu",
        out=str(out),
    )
    return eval_stage.run(cfg)


def test_the_saved_tokenizer_adds_bos_and_kdpipe_sees_the_same_ids(student, demo_models):
    saved, base = AutoTokenizer.from_pretrained(student), AutoTokenizer.from_pretrained(demo_models["student"])
    bos = base.bos_token_id
    assert base("The owl sleeps.").input_ids[0] != bos  # the demo student's tokenizer adds nothing, like GPT-2's
    assert saved("The owl sleeps.").input_ids == [bos, *base("The owl sleeps.").input_ids]
    assert saved("The owl sleeps.", add_special_tokens=False).input_ids == base("The owl sleeps.").input_ids
    # kdpipe tokenizes without special tokens and adds BOS itself: the same ids and spans with either tokenizer
    spec = TextSpec("causal", 256, 64)
    task = get_task("demo_summary")
    for record in task.load("validation", None, 8, 0).records:
        prompt, answer = render(task, record, 0)
        a, b = TextEncoder(saved, spec).encode(prompt, answer), TextEncoder(base, spec).encode(prompt, answer)
        assert (a.prompt_ids, a.answer_ids, a.answer_spans.tolist()) == (
            b.prompt_ids,
            b.answer_ids,
            b.answer_spans.tolist(),
        )
    text = json.loads((student / TEXT_FILE).read_text())
    assert text["layout"] == "causal" and text["tokens"]["tokenizer_adds_bos"] is True
    assert text["tokens"]["bos_token_id"] == bos and text["tokens"]["prompt"] == "BOS + prompt"


def test_the_card_names_no_missing_revision_and_says_how_to_reproduce(student, evaluated):
    card = (student / model_card.CARD).read_text()
    assert "@ `None`" not in card and "(no revision recorded)" in card
    assert "add_special_tokens=True" in card and "lm_eval --model hf" in card


def _card_command(student: Path) -> list[str]:
    card = (student / model_card.CARD).read_text()
    line = next(line for line in card.splitlines() if line.startswith("lm_eval "))
    return shlex.split(line)


def test_the_cards_lm_eval_command_prints_kdpipes_acc_and_acc_norm(student, evaluated, tmp_path):
    args = _card_command(student)
    assert args[args.index("--tasks") + 1] == ",".join(f"kdpipe_{t}" for t in OPTION_TASKS)
    run = subprocess.run(
        [sys.executable, "-m", "lm_eval", *args[1:], "--output_path", str(tmp_path / "lm")],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(next((tmp_path / "lm").rglob("results_*.json")).read_text())["results"]
    ours = evaluated.results["models"]["student"]["results"]
    for task in OPTION_TASKS:
        theirs = found[f"kdpipe_{task}"]
        assert theirs["acc,none"] * 100 == pytest.approx(ours[task]["values"]["acc"], abs=1e-9), task
        assert theirs["acc_norm,none"] * 100 == pytest.approx(ours[task]["values"]["acc_norm"], abs=1e-9), task


def test_lm_eval_on_the_teacher_kdpipe_loads_equals_kdpipe_and_keeps_its_own_head(evaluated, demo_models):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tokenizer, _ = load_model(str(demo_models["teacher"]), device=torch.device("cpu"))
    head = model.lm_head.weight.detach().clone()
    # HFLM calls tie_weights(); transformers 5 would tie the T5 v1.1 head to the embeddings but for keep_untied_head
    lm = HFLM(pretrained=model, tokenizer=tokenizer, backend="seq2seq", batch_size=1)
    assert torch.equal(model.lm_head.weight, head) and not torch.equal(head, model.shared.weight)
    info = evaluated.results["models"]["teacher"]["lm_eval"]
    assert "tie_weights" in info["note"]
    include = shlex.split(info["command"])[shlex.split(info["command"]).index("--include_path") + 1]
    found = simple_evaluate(model=lm, tasks=info["tasks"], task_manager=TaskManager(include_path=include))["results"]
    ours = evaluated.results["models"]["teacher"]["results"]
    for task in OPTION_TASKS:
        assert found[f"kdpipe_{task}"]["acc,none"] * 100 == pytest.approx(ours[task]["values"]["acc"], abs=1e-9)
        assert found[f"kdpipe_{task}"]["acc_norm,none"] * 100 == pytest.approx(ours[task]["values"]["acc_norm"])
    # the trained teacher is well above chance on the 3-way task: its own head, not the embeddings, scored it
    assert ours["demo_nli"]["values"]["acc"] >= 50.0


def test_a_pipeline_called_as_the_card_says_gives_kdpipes_greedy_answers(student, evaluated):
    card = (student / model_card.CARD).read_text()
    call = re.search(r"generate\(\"[^\n]*\)", card)[0]
    assert "do_sample=False" in call and "return_full_text=False" in call and "add_special_tokens=True" in call
    generate = hf_pipeline("text-generation", model=str(student), device="cpu")
    compared = 0
    for task in GENERATE_TASKS:
        result = evaluated.results["models"]["student"]["results"][task]
        budget = evaluated.results["tasks"][task]["max_new_tokens"]
        rows = [json.loads(line) for line in (evaluated.out / result["predictions"]).read_text().splitlines()]
        for row in rows:
            out = generate(
                row["prompt"], max_new_tokens=budget, do_sample=False, return_full_text=False, add_special_tokens=True
            )
            assert out[0]["generated_text"].strip() == row["prediction"], (task, row["index"])
            compared += 1
    assert compared == 2 * LIMIT
    assert sum(bool(row["prediction"]) for row in rows) >= LIMIT // 2  # it answers: the comparison is not of blanks
