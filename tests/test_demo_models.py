import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

import cache_schema as cs
from pipeline.devtools import demo_models as builder
from pipeline.tasks import TaskError, build_mixture, get_task, render
from pipeline.tasks.demo import DEMO_TASKS


def test_demo_models_load_like_real_checkpoints_with_different_tokenizers(demo_models):
    t_tok = AutoTokenizer.from_pretrained(demo_models["teacher"])
    s_tok = AutoTokenizer.from_pretrained(demo_models["student"])
    teacher = AutoModelForSeq2SeqLM.from_pretrained(demo_models["teacher"])
    student = AutoModelForCausalLM.from_pretrained(demo_models["student"])
    assert teacher.config.model_type == "t5" and student.config.model_type == "gpt2"
    assert len(t_tok) != len(s_tok)
    text = "Summarize this dialogue: Ana: Shall we meet on Monday?"
    assert t_tok(text).input_ids != s_tok(text).input_ids
    assert t_tok(text).input_ids[-1] == t_tok.eos_token_id  # T5-style: the tokenizer appends EOS
    assert t_tok.decode(t_tok(text).input_ids, skip_special_tokens=True) == text
    assert s_tok.decode(s_tok(text).input_ids) == text  # byte-level BPE round-trips exactly


def test_demo_teacher_was_fine_tuned_so_its_distributions_carry_signal(demo_models):
    stamp = json.loads((demo_models["teacher"] / builder.STAMP).read_text())
    assert stamp["training"]["steps"] == builder.TEACHER_STEPS
    tok = AutoTokenizer.from_pretrained(demo_models["teacher"])
    trained = AutoModelForSeq2SeqLM.from_pretrained(demo_models["teacher"]).eval()
    torch.manual_seed(0)
    untrained = AutoModelForSeq2SeqLM.from_config(trained.config).eval()
    examples = build_mixture({t.name: 8 for t in DEMO_TASKS}, split="validation", data_dir=None, seed=5).examples
    enc = tok([e.prompt for e in examples], return_tensors="pt", padding=True)
    labels = tok([e.answer for e in examples], return_tensors="pt", padding=True).input_ids
    labels[labels == tok.pad_token_id] = -100
    with torch.no_grad():
        trained_ce, untrained_ce = (m(**enc, labels=labels).loss.item() for m in (trained, untrained))
    assert trained_ce < 1.0 < 4.0 < untrained_ce  # held-out answers: far better than an untrained teacher


def test_build_is_skipped_when_up_to_date(demo_models):
    before = (demo_models["teacher"] / "model.safetensors").stat().st_mtime_ns
    assert builder.build(demo_models["teacher"].parent)["built"] is False
    assert (demo_models["teacher"] / "model.safetensors").stat().st_mtime_ns == before


def test_demo_tasks_are_seeded_and_splits_differ():
    a = build_mixture({t.name: 20 for t in DEMO_TASKS}, split="train", data_dir=None, seed=3)
    b = build_mixture({t.name: 20 for t in DEMO_TASKS}, split="train", data_dir=None, seed=3)
    c = build_mixture({t.name: 20 for t in DEMO_TASKS}, split="validation", data_dir=None, seed=3)
    assert [e.key for e in a.examples] == [e.key for e in b.examples]
    assert not {e.key for e in a.examples} & {e.key for e in c.examples}
    assert {e.template_id for e in a.examples} == {0, 1}


def test_every_demo_template_renders_and_option_answers_are_options():
    for task in DEMO_TASKS:
        record = task.load("train", None, 1, 0).records[0]
        for template_id in range(len(task.templates)):
            prompt, answer = render(get_task(task.name), record, template_id)
            assert prompt and answer
            if task.kind == "options":
                assert answer in record.options and "OPTIONS:" in prompt


def test_demo_teacher_is_t5_v1_1_with_its_own_output_head(demo_models):
    teacher = AutoModelForSeq2SeqLM.from_pretrained(demo_models["teacher"])
    cfg = teacher.config
    assert cfg.feed_forward_proj == "gated-gelu" and cfg.is_gated_act and cfg.dropout_rate == 0.0
    assert cfg.scale_decoder_outputs is False  # v1.1: no d_model^-0.5 rescale before the head
    # untied: the head is its own matrix after a save/load round trip (transformers 5 ties a fresh T5 regardless)
    assert teacher.lm_head.weight.data_ptr() != teacher.shared.weight.data_ptr()
    assert not torch.equal(teacher.lm_head.weight, teacher.shared.weight)


def test_demo_teacher_never_trains_on_an_example_of_the_cache():
    held = {(e.prompt, e.answer) for e in builder.cache_mixture().examples}
    own = builder.teacher_examples(0, per_task=400)
    assert len(own) > 0.9 * 400 * sum(builder.TEACHER_SHARE.values()) and not held & set(own)
    assert set(builder.TEACHER_SHARE) == {task.name for task in DEMO_TASKS}


def test_demo_teacher_copies_its_4_way_answer_from_the_story_not_from_a_prior(demo_models):
    """Its answer is one of the story's two foods, and when the story's foods change, the answer changes with them."""
    from pipeline.evaluation.inference import EvalModel
    from pipeline.tasks.demo import FOODS

    tok = AutoTokenizer.from_pretrained(demo_models["teacher"])
    model = AutoModelForSeq2SeqLM.from_pretrained(demo_models["teacher"]).eval()
    lm = EvalModel(model, tok, max_prompt_tokens=256, batch_size=32)
    task = get_task("demo_mc4")
    records = task.load("validation", None, 40, 0).records
    prompts, changed, story, new = [], [], [], []
    for r in records:
        prompt = render(task, r, 0)[0]
        foods = [f for f in FOODS if f"bought {f} " in prompt]
        others = [f for f in FOODS if f not in foods][:2]
        edited = prompt
        for old, replacement in zip(foods, others, strict=True):
            edited = edited.replace(f"bought {old} ", f"bought {replacement} ")
        prompts.append(prompt)
        changed.append(edited)
        story.append(set(foods))
        new.append(set(others))
    answers, answers_changed = lm.generate(prompts, 6), lm.generate(changed, 6)
    # a prior over the 8 foods lands on one of the story's 2 about a quarter of the time
    assert sum(a in s for a, s in zip(answers, story, strict=True)) >= 0.75 * len(records), answers
    assert sum(a in s for a, s in zip(answers_changed, new, strict=True)) >= 0.75 * len(records), answers_changed


def test_demo_nli_label_is_the_hypothesis_against_the_premise_not_the_hypothesis_alone():
    records = get_task("demo_nli").load("train", None, 300, 0).records
    labels_by_relation: dict[str, set[int]] = {}
    for r in records:
        said = r.fields["hypothesis"].split(" is ")[1].split(" than ")[0]
        stated = r.fields["premise"].split(" is ")[1].split(" than ")[0]
        labels_by_relation.setdefault(said, set()).add(r.label)
        expected = 0 if said == stated else 2 if said in ("taller", "shorter") else 1
        assert r.label == expected, (r.fields, r.label)
    assert labels_by_relation["taller"] == labels_by_relation["shorter"] == {0, 2}


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_build_is_kept_for_other_clones_and_copied_only_when_whole(tmp_path, monkeypatch):
    monkeypatch.setenv(builder.KEEP_ENV, str(tmp_path / "kept"))
    assert builder.build(tmp_path / "a", steps=2, pretrain_steps=2)["built"] is True
    (kept,) = (tmp_path / "kept").iterdir()
    copied = builder.build(tmp_path / "b", steps=2, pretrain_steps=2)
    assert copied["built"] is False and copied["kept"] == str(kept)
    assert _files(tmp_path / "b") == _files(tmp_path / "a")

    (kept / builder.TEACHER_DIR / builder.STAMP).unlink()  # a kept build without its stamp is not whole
    assert builder.build(tmp_path / "c", steps=2, pretrain_steps=2)["built"] is True
    weights = [f"{name}/model.safetensors" for name in (builder.TEACHER_DIR, builder.STUDENT_DIR)]
    assert all((kept / w).read_bytes() == (tmp_path / "a" / w).read_bytes() for w in weights)  # rebuilt in place
    assert (kept / builder.TEACHER_DIR / builder.STAMP).is_file()
    assert [p.name for p in (tmp_path / "kept").iterdir()] == [kept.name]  # no partial copy left behind
    monkeypatch.setenv(builder.KEEP_ENV, "off")
    assert builder.kept_builds() is None


def test_the_transfer_set_holds_prompts_in_neither_the_cache_nor_an_eval_split(demo_models, tmp_path):
    transfer = Path(demo_models["teacher"]).parent / builder.TRANSFER_FILE
    rows = [json.loads(line) for line in transfer.read_text().splitlines()]
    assert rows == builder.transfer_prompts()  # make models writes it beside the models, up to date
    assert all(set(row) == {"id", "prompt"} for row in rows) and len({row["id"] for row in rows}) == len(rows)
    per_task = Counter(row["id"].split("/")[0] for row in rows)
    assert set(per_task) == set(builder.DEMO_MIXTURE) and min(per_task.values()) > builder.DEMO_MIXTURE["demo_qa"]
    # every rendering, under every template, of what the students see: the cache's examples and the eval splits
    seen = set()
    for name, cached in builder.DEMO_MIXTURE.items():
        task = get_task(name)
        records = task.load("train", None, cached, builder.CACHE_SEED).records + builder.eval_records(task)
        for record in records:
            seen.update(render(task, record, t)[0] for t in range(len(task.templates)))
            # an option task's prompt lists its options in the drawn order: compare it without them
            seen.update(render(task, replace(record, options=()), t)[0] for t in range(len(task.templates)))
    prompts = [row["prompt"] for row in rows]
    assert not seen & set(prompts)
    without_options = {p.split("\nOPTIONS:")[0] for p in prompts}
    assert not {s.split("\nOPTIONS:")[0] for s in seen} & without_options


def test_the_transfer_set_is_a_prompts_only_task_the_teacher_answers(demo_models, tmp_path):
    from stages import teacher_cache
    from tests.helpers import small_teacher_cache_config

    transfer = Path(demo_models["teacher"]).parent / builder.TRANSFER_FILE
    with pytest.raises(TaskError, match=r"demo-transfer.jsonl: 12 of its 12 rows read have no answer"):
        teacher_cache.run(
            small_teacher_cache_config(demo_models["teacher"], tasks={str(transfer): 12}, out=str(tmp_path / "gold"))
        )
    cfg = small_teacher_cache_config(
        demo_models["teacher"],
        tasks={str(transfer): 12},
        answers="teacher",
        answer_overflow="cut",
        out=str(tmp_path / "cache"),
    )
    teacher_cache.run(cfg)
    cache = cs.open_cache(tmp_path / "cache")
    assert len(cache) == 12 and set(cache.tasks) == {"demo-transfer"}
    assert all(answer for answer in cache.examples["answer"].to_pylist())  # the teacher's greedy answers


def test_the_student_is_pretrained_on_world_text_without_task_formats_or_eval_examples(demo_models):
    docs = builder.pretraining_text(0, n=2000)
    held = set()
    for name in builder.DEMO_MIXTURE:
        for record in builder.eval_records(get_task(name)):
            held.update(record.fields.values())
            held.update(record.targets)
    facts = {f for doc in docs for f in doc.replace(". It eats", "|It eats").split(". ")}
    assert not any(h in doc for h in held if len(h.split(". ")) > 1 for doc in docs[:200])  # multi-sentence inputs
    assert not {f.rstrip(".").replace("|", ". ") for f in facts} & {h.rstrip(".") for h in held}
    templates = {line for task in DEMO_TASKS for t in task.templates for line in t.prompt.split("\n")}
    words = {w for line in templates for w in line.replace("{", " ").replace("}", " ").split() if w[0].isupper()}
    assert all(w not in doc.split() for w in words - {"The", "On"} for doc in docs[:200])  # no instructions
    tok = AutoTokenizer.from_pretrained(demo_models["student"])
    pretrained = AutoModelForCausalLM.from_pretrained(demo_models["student"])
    torch.manual_seed(0)
    fresh = type(pretrained)(pretrained.config)
    unseen = builder.world_text(99, 8)  # other documents of the same world
    ids = torch.tensor(
        [[tok.bos_token_id, *tok(d)["input_ids"]][:64] for d in unseen if len(tok(d)["input_ids"]) >= 63]
    )
    with torch.no_grad():
        trained_loss, fresh_loss = (m(input_ids=ids, labels=ids).loss.item() for m in (pretrained, fresh))
    assert trained_loss < 1.5 < 5.0 < fresh_loss, (trained_loss, fresh_loss)
    stamp = json.loads((Path(demo_models["student"]) / builder.STAMP).read_text())
    assert stamp["pretraining"]["steps"] == builder.PRETRAIN_STEPS


def test_the_shared_student_reads_the_teachers_own_tokenizer_and_is_pretrained(demo_models):
    from pipeline.models import tokenizer_fingerprint

    teacher, shared = (AutoTokenizer.from_pretrained(demo_models[k]) for k in ("teacher", "shared"))
    assert tokenizer_fingerprint(teacher) == tokenizer_fingerprint(shared)  # KL's identity map: the same ids
    model = AutoModelForCausalLM.from_pretrained(demo_models["shared"])
    assert model.config.vocab_size == len(teacher) and model.config.n_layer == 2
    stamp = json.loads((Path(demo_models["shared"]) / builder.STAMP).read_text())
    assert stamp["pretraining"]["final_loss"] < 1.5
