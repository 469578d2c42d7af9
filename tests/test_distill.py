import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner
from transformers import AutoModelForCausalLM, AutoTokenizer, GPTNeoXConfig, LlamaConfig
from transformers import pipeline as hf_pipeline

import cache_schema as cs
from pipeline.cli import main
from pipeline.config import ConfigError, DistillConfig, TeacherCacheConfig, to_dict
from pipeline.devtools.synthetic_cache import cache_identity
from pipeline.student import objective, training
from stages import distill, teacher_cache
from tests.conftest import REPO
from tests.helpers import (
    as_older_version,
    cli_flags,
    one_line_error,
    small_teacher_cache_config,
    step_metrics,
    write_known_rows_cache,
    write_text_cache,
)

STEPS = 16
COMPARED = ("step", "loss", "ce", "uld", "lr", "grad_norm")  # the columns a resumed run must reproduce


def small_config(student: Path, **overrides) -> DistillConfig:
    base = DistillConfig(
        student=str(student),
        steps=STEPS,
        batch_size=4,
        lr=2e-3,
        device="cpu",
        checkpoint_every=4,
        keep_checkpoint=True,
        max_prompt_tokens=128,
        max_answer_tokens=32,
        shuffle_chunks=2,
        lanes=2,
        seed=0,
    )
    return replace(base, **overrides)


@pytest.fixture(scope="module")
def cache(demo_models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("distill") / "cache"
    teacher_cache.run(_cache_config(demo_models["teacher"], out))
    return out


def _cache_config(teacher: Path, out: Path, **overrides) -> TeacherCacheConfig:
    tasks = {"demo_yesno": 12, "demo_qa": 12, "demo_summary": 12, "demo_concepts": 12}
    return small_teacher_cache_config(
        teacher, tasks=tasks, batch_size=16, max_answer_tokens=32, out=str(out), **overrides
    )


@pytest.fixture(scope="module")
def kd_run(cache, demo_models, tmp_path_factory) -> tuple[DistillConfig, Path, distill.DistillResult]:
    out = tmp_path_factory.mktemp("kd") / "student"
    cfg = small_config(demo_models["student"], cache=str(cache), out=str(out))
    return cfg, out, distill.run(cfg)


@pytest.fixture(scope="module")
def ft_run(cache, demo_models, tmp_path_factory) -> tuple[DistillConfig, Path, distill.DistillResult]:
    out = tmp_path_factory.mktemp("ft") / "student"
    cfg = small_config(demo_models["student"], uld_weight=0.0, keep_checkpoint=False, cache=str(cache), out=str(out))
    return cfg, out, distill.run(cfg)


def test_distill_writes_metrics_checkpoint_config_curve_and_a_loadable_student(kd_run, cache):
    cfg, out, result = kd_run
    rows = step_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)) and result.steps == STEPS
    for r in rows:
        assert set(r) >= {"step", "loss", "ce", "uld", "lr", "tokens_s", "data_wait", "grad_norm", "epoch", "eos_p"}
        assert 0 < r["eos_p"] < 1 and 0 < r["first_top_share"] <= 1
        assert math.isfinite(r["loss"]) and r["uld"] > 0 and 0 <= r["data_wait"] <= 1 and r["tokens_s"] > 0
        assert r["loss"] == pytest.approx(r["ce"] + 1.5 * r["uld"], abs=1e-5)
        assert r["lr"] == pytest.approx(training.lr_at(r["step"] - 1, STEPS, cfg))
    assert rows[-1]["epoch"] == pytest.approx(STEPS * 4 / 48, abs=1e-3)
    assert rows[-1]["loss"] < rows[0]["loss"]

    checkpoint = out / training.CHECKPOINTS_DIR / f"step-{STEPS:08d}"
    assert sorted(p.name for p in (out / training.CHECKPOINTS_DIR).iterdir()) == [checkpoint.name]  # older removed
    assert (checkpoint / training.TRAINING_STATE).is_file() and (checkpoint / "model.safetensors").is_file()
    assert (out / distill.CURVE_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    record = json.loads((out / distill.RUN_FILE).read_text())
    meta = cs.open_cache(cache).meta
    assert record["complete"] and record["config"] == to_dict(cfg) and record["final"] == rows[-1]
    for name in (cs.ATTR_TEACHER, cs.ATTR_MIXTURE_FP, cs.ATTR_VERSION, cs.ATTR_SCHEMA, cs.ATTR_TOP_K):
        assert record["cache"][name] == meta[name]

    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "GPT2LMHeadModel" and model.generation_config.pad_token_id is not None
    generate = hf_pipeline("text-generation", model=str(out), device="cpu")
    prompt = "Question: is the sky blue?\nAnswer:"
    text = generate(prompt, min_new_tokens=4, max_new_tokens=6, do_sample=False)[0]["generated_text"]
    assert text.startswith(prompt) and len(text) > len(prompt)


def test_saved_student_pads_with_eos_batches_in_a_pipeline_and_has_a_model_card(kd_run, cache, demo_models, tmp_path):
    from pipeline import model_card
    from pipeline.config import EvalConfig
    from stages import eval as eval_stage

    cfg, out, _ = kd_run
    tokenizer = AutoTokenizer.from_pretrained(out)
    base = AutoTokenizer.from_pretrained(demo_models["student"])
    assert base.pad_token is None  # the demo student ships without one, like GPT-2
    assert tokenizer.pad_token == tokenizer.eos_token and tokenizer.padding_side == "left"
    assert len(tokenizer) == len(base)  # no token added...
    model = AutoModelForCausalLM.from_pretrained(out)
    base_model = AutoModelForCausalLM.from_pretrained(demo_models["student"])
    assert model.get_input_embeddings().num_embeddings == base_model.get_input_embeddings().num_embeddings  # ...no row
    generate = hf_pipeline("text-generation", model=str(out), device="cpu")
    prompts = [
        "Question: is the sky blue?\nAnswer:",
        "Summarize this dialogue:\nAna: Shall we meet on Monday?\nBen: Yes!",
    ]
    kwargs = {"max_new_tokens": 5, "do_sample": False}
    batched = generate(prompts, batch_size=2, **kwargs)
    assert [b[0]["generated_text"] for b in batched] == [generate(p, **kwargs)[0]["generated_text"] for p in prompts]

    card = (out / model_card.CARD).read_text()
    meta = cs.open_cache(cache).meta
    assert card.startswith("---\nlibrary_name: transformers\n")
    for needle in (
        f"`{cfg.student}`",
        f"`{meta[cs.ATTR_TEACHER]['id']}`",
        "CE + λ·ULD with λ = 1.5",
        meta[cs.ATTR_DIGEST],
        meta[cs.ATTR_MIXTURE_FP],
        "demo_yesno (12)",
        model_card.EVAL_START,
    ):
        assert needle in card, needle
    # kdpipe eval of this local student writes its table into the card, and a second eval replaces it
    for limit in (3, 2):
        eval_stage.run(
            EvalConfig(models=(str(out),), tasks=("demo_yesno",), limit=limit, device="cpu", out=str(tmp_path))
        )
        card = (out / model_card.CARD).read_text()
        assert card.count(model_card.EVAL_START) == 1 and f"| demo_yesno | validation | {limit} | acc |" in card
    assert "| demo_yesno | validation | 3 |" not in card and " ± " in card


def test_finetune_baseline_trains_on_ce_alone_and_still_logs_the_uld_distance(kd_run, ft_run):
    (_, kd_out, _), (_, ft_out, _) = kd_run, ft_run
    kd, ft = step_metrics(kd_out), step_metrics(ft_out)
    assert all(r["loss"] == r["ce"] and r["uld"] > 0 for r in ft)
    assert kd[0]["ce"] == pytest.approx(ft[0]["ce"], abs=1e-5)  # same model, same first batch
    assert not (ft_out / training.CHECKPOINTS_DIR).exists()  # removed once finished unless kept
    # the ULD term is what KD optimizes: by the end its distance is below the baseline's
    assert sum(r["uld"] for r in kd[-4:]) < sum(r["uld"] for r in ft[-4:])
    kd_model, ft_model = AutoModelForCausalLM.from_pretrained(kd_out), AutoModelForCausalLM.from_pretrained(ft_out)
    assert not torch.equal(kd_model.lm_head.weight, ft_model.lm_head.weight)


@pytest.mark.slow
def test_resume_after_sigkill_reproduces_the_uninterrupted_run(kd_run, cache, tmp_path):
    cfg, reference, _ = kd_run
    out = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "distill",
        *cli_flags(replace(cfg, checkpoint_every=2, out=str(out))),  # the kd_run config's cache, another --out
    ]
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while not list((out / training.CHECKPOINTS_DIR).glob("step-*")) and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 5 minutes"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    killed_at = len(step_metrics(out))
    assert killed_at < STEPS

    result = distill.run(replace(cfg, cache=str(cache), out=str(out), resume=True))
    assert 0 < result.resumed_from_step <= killed_at
    resumed, uninterrupted = step_metrics(out), step_metrics(reference)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    for a, b in zip(resumed, uninterrupted, strict=True):
        assert {k: a[k] for k in COMPARED} == pytest.approx({k: b[k] for k in COMPARED}, rel=1e-5, abs=1e-6)
    a, b = AutoModelForCausalLM.from_pretrained(out), AutoModelForCausalLM.from_pretrained(reference)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_out_dir_of_another_run_is_refused_and_a_finished_run_is_not_redone(kd_run, cache):
    cfg, out, _ = kd_run
    with pytest.raises(ConfigError, match="--resume"):
        distill.run(replace(cfg, cache=str(cache), out=str(out)))
    with pytest.raises(ConfigError, match="--lr"):
        distill.run(replace(cfg, lr=1e-3, cache=str(cache), out=str(out), resume=True))
    again = distill.run(replace(cfg, checkpoint_every=7, cache=str(cache), out=str(out), resume=True))
    assert again.already_complete and again.steps == STEPS


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
def test_pythia_and_smollm_architectures_distill(arch, cache, demo_models, tmp_path):
    tok = AutoTokenizer.from_pretrained(demo_models["student"])
    common = {
        "vocab_size": len(tok),
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "max_position_embeddings": 256,
        "bos_token_id": tok.eos_token_id,
        "eos_token_id": tok.eos_token_id,
    }
    config = GPTNeoXConfig(**common) if arch == "gpt_neox" else LlamaConfig(num_key_value_heads=2, **common)
    torch.manual_seed(0)
    student = tmp_path / arch
    AutoModelForCausalLM.from_config(config).save_pretrained(student)
    tok.save_pretrained(student)
    cfg = small_config(
        student,
        steps=3,
        grad_accum=2,
        gradient_checkpointing=arch == "llama",
        keep_checkpoint=False,
        max_prompt_tokens=200,
    )
    result = distill.run(replace(cfg, cache=str(cache), out=str(tmp_path / "out")))
    rows = step_metrics(tmp_path / "out")
    assert result.steps == 3 and len(rows) == 3 and all(math.isfinite(r["loss"]) for r in rows)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.config.model_type == arch and model.config.use_cache
    ids = tok("Question: is it?", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3


def cli(*args: str):
    return CliRunner().invoke(main, ["distill", *args])


def test_user_errors_end_in_one_line(kd_run, cache, demo_models, tmp_path):
    student = ["--student", str(demo_models["student"])]
    one_line_error(cli("--cache", str(tmp_path / "no"), "--out", str(tmp_path / "o1"), *student), "no such folder")
    write_text_cache(tmp_path / "partial", finalize=False)
    one_line_error(cli("--cache", str(tmp_path / "partial"), "--out", str(tmp_path / "o2"), *student), "incomplete")
    write_text_cache(tmp_path / "v2")
    group = zarr.open_group(zarr.storage.LocalStore(tmp_path / "v2"), mode="r+")
    group.attrs.put({**group.attrs.asdict(), cs.ATTR_VERSION: 2})
    one_line_error(cli("--cache", str(tmp_path / "v2"), "--out", str(tmp_path / "o2"), *student), "schema version 2")
    one_line_error(
        cli("--cache", str(cache), "--out", str(tmp_path / "o3"), "--student", str(tmp_path / "none")), "cannot load"
    )
    one_line_error(cli("--cache", str(cache), "--out", str(kd_run[1]), *student), "already holds a finished")
    one_line_error(cli("--cache", str(cache), "--out", str(tmp_path / "o4"), "--batch-size", "0"), "--batch-size")
    if not torch.cuda.is_available():
        one_line_error(
            cli("--cache", str(cache), "--out", str(tmp_path / "o5"), "--device", "cuda", *student), "--device cuda"
        )
        one_line_error(
            cli("--cache", str(cache), "--out", str(tmp_path / "o6"), "--precision", "bf16", *student),
            "--precision bf16",
        )


def test_one_cycle_schedule_is_torchs_one_cycle_with_the_official_factors():
    cfg = DistillConfig(lr=1e-3, schedule="one-cycle", warmup_ratio=0.1)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=50, pct_start=0.1, div_factor=2, final_div_factor=5, cycle_momentum=False
    )
    expected = []
    for _ in range(50):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert [training.lr_at(s, 50, cfg) for s in range(50)] == pytest.approx(expected, rel=1e-9)
    cosine = replace(cfg, schedule="cosine")
    assert training.lr_at(0, 50, cosine) == pytest.approx(cfg.lr / 5) and training.lr_at(4, 50, cosine) == cfg.lr
    assert training.lr_at(49, 50, cosine) < 1e-5 and training.lr_at(
        27, 50, replace(cfg, schedule="linear")
    ) == pytest.approx(cfg.lr * (1 - 22 / 45))


def test_config_validation_names_the_flag():
    for bad, flag in (
        ({"batch_size": 0}, "--batch-size"),
        ({"uld_weight": -1.0}, "--uld-weight"),
        ({"warmup_ratio": 1.0}, "--warmup-ratio"),
        ({"schedule": "step"}, "--schedule"),
    ):
        with pytest.raises(ConfigError, match=flag):
            DistillConfig(**bad)


def test_an_interrupted_checkpoint_write_is_ignored(tmp_path):
    (tmp_path / training.CHECKPOINTS_DIR / ".tmp-step-00000008").mkdir(parents=True)
    assert training.latest_checkpoint(tmp_path) is None
    assert not (tmp_path / training.CHECKPOINTS_DIR / ".tmp-step-00000008").exists()


def test_a_cache_of_another_mixture_is_refused_unless_accepted(cache, demo_models, tmp_path):
    """distill compares the cache's mixture with the config file's teacher_cache section."""
    config = tmp_path / "run.yaml"
    mixture = "{demo_yesno: 12, demo_qa: 12, demo_summary: 12, demo_concepts: 12}"
    common = ["--cache", str(cache), "--student", str(demo_models["student"]), "--steps", "1", "--device", "cpu"]
    config.write_text(f"teacher_cache:\n  tasks: {mixture}\n  seed: 1\n")
    one_line_error(cli("--config", str(config), "--out", str(tmp_path / "a"), *common), "--accept-cache")
    accepted = cli("--config", str(config), "--out", str(tmp_path / "b"), "--accept-cache", *common)
    assert accepted.exit_code == 0, accepted.output
    config.write_text(f"teacher_cache:\n  tasks: {mixture}\n")  # the cache's own mixture: no refusal
    same = cli("--config", str(config), "--out", str(tmp_path / "c"), *common)
    assert same.exit_code == 0, same.output


# ---- token-aware losses (cache schema v1.1) ----------------------------------------------------------------


@pytest.mark.parametrize("loss", ["uld-aligned", "hybrid"])
def test_token_aware_losses_train_from_a_v1_1_cache(loss, cache, demo_models, tmp_path):
    cfg = small_config(demo_models["student"], loss=loss, steps=6, checkpoint_every=0, keep_checkpoint=False)
    result = distill.run(replace(cfg, cache=str(cache), out=str(tmp_path / "student")))
    rows = step_metrics(tmp_path / "student")
    assert len(rows) == 6 and all(math.isfinite(r["loss"]) and r["uld"] > 0 for r in rows)
    assert result.final["loss"] == pytest.approx(result.final["ce"] + cfg.uld_weight * result.final["uld"], abs=1e-5)
    record = json.loads((tmp_path / "student" / distill.RUN_FILE).read_text())
    assert record["config"]["loss"] == loss and record["align_seconds"] > 0


def test_hybrid_trains_from_the_ids_of_the_first_entries_only(cache, demo_models, tmp_path):
    """A v1.2 cache (--ids-k 4 of the 16): the entries without an id join the unmatched part, so the first
    step's loss moves but stays finite, and everything else of the run is the same."""
    narrow = tmp_path / "narrow"
    teacher_cache.run(_cache_config(demo_models["teacher"], narrow, ids_k=4))
    assert cs.open_cache(narrow).ids_k == 4
    cfg = small_config(demo_models["student"], loss="hybrid", steps=2, checkpoint_every=0, keep_checkpoint=False)
    first = {}
    for name, path in (("full", cache), ("narrow", narrow)):
        distill.run(replace(cfg, cache=str(path), out=str(tmp_path / f"student-{name}")))
        first[name] = step_metrics(tmp_path / f"student-{name}")[0]
    assert math.isfinite(first["narrow"]["uld"]) and first["narrow"]["ce"] == first["full"]["ce"]
    assert first["narrow"]["uld"] != pytest.approx(first["full"]["uld"], abs=1e-6)


def test_a_cache_without_the_token_layout_is_refused_in_one_line(demo_models, tmp_path):
    student = ["--student", str(demo_models["student"])]
    write_known_rows_cache(tmp_path / "v1", store_ids=True)
    result = cli("--cache", str(tmp_path / "v1"), "--out", str(tmp_path / "o1"), "--loss", "uld-aligned", *student)
    one_line_error(result, "--loss uld-aligned")
    assert "lacks the token layout (token spans, label probabilities, the teacher vocabulary" in result.output
    assert "use --loss uld or kl or rkl or jsd" in result.output  # the losses this cache does support
    write_known_rows_cache(tmp_path / "no-ids", token_layout=True)
    for loss in ("hybrid", "kl"):
        result = cli("--cache", str(tmp_path / "no-ids"), "--out", str(tmp_path / "o2"), "--loss", loss, *student)
        one_line_error(result, f"--loss {loss}")
        assert "lacks the teacher's top-k ids" in result.output and "uld-aligned" in result.output


# ---- caches before v1.3: split characters' shared spans ------------------------------------------------------

SPLIT_VOCAB = [b"", b"caf", b"\xc3", b"\xa9", b" sat"]  # "é" as its two bytes, a byte-level teacher's way
EXACT_SPANS = [(0, 3), (3, 4), (4, 5), (5, 9), (9, 9)]  # "café sat" as v1.3 stores it, EOS last
SHARED_SPANS = [(0, 3), (3, 5), (3, 5), (5, 9), (9, 9)]  # as v1.1 / v1.2 stored it: both bytes of é span é


def _split_character_cache(path: Path, spans, version: str, answers: str = "gold", answer: str = "café sat") -> Path:
    """A one-example cache whose teacher split a character into byte tokens, labelled ``version``."""
    rng = np.random.default_rng(0)
    probs = np.sort(rng.dirichlet(np.ones(4), 5).astype(np.float32), axis=1)[:, ::-1].copy()  # [5, 4]
    identity = {**cache_identity(4), cs.ATTR_ANSWERS: answers}
    writer = cs.CacheWriter(path, identity, max_rows=5, store_ids=True, chunk_rows=8, shard_rows=8, vocab=SPLIT_VOCAB)
    record = {"key": cs.example_key("t", 0, "q", answer), "task": "t", "template_id": 0, "prompt": "q"}
    token_ids = np.array([1, 2, 3, 4, 0], dtype=np.int32)
    topk = np.array([[t, *[i for i in range(5) if i != t][:3]] for t in token_ids], dtype=np.int32)  # own token 1st
    writer.commit(
        0, 1, [{**record, "answer": answer, "n_rows": 5}], probs, 1 - probs.sum(1), token_ids, topk,
        spans=np.array(spans), label_probs=probs[:, 0],
    )  # fmt: skip
    writer.finalize(cs.counts_attrs(1, 5, {}, {}, {}))
    if version != cs.SCHEMA_VERSION:
        as_older_version(path, version)  # what an older kdpipe wrote
    return path


def _first_groups(cache_path: Path, tok, align) -> dict:
    from pipeline.student.cache_stream import BatchStream, StudentEncoder
    from pipeline.text import TextEncoder, TextSpec

    encoder = StudentEncoder(TextEncoder(tok, TextSpec("causal", 64, 32)))
    with BatchStream(cs.open_cache(cache_path), encoder, batch_size=1, seed=0, shuffle_chunks=1, align=align) as s:
        aligned = next(s).aligned
    return {name: getattr(aligned, name).tolist() for name in ("student_t", "extra_t", "groups", "teacher")}


def test_a_cache_before_v1_3_pairs_split_characters_as_a_v1_3_cache(demo_models, tmp_path, caplog):
    """The v1.2 cache's two rows of "é" share its span; distill cuts them by the cached vocabulary's byte lengths
    and forms the groups a v1.3 cache of the same rows gives (left shared, a group would close after Ã)."""
    tok = AutoTokenizer.from_pretrained(demo_models["student"])  # splits é too: Ã, ©
    cfg = small_config(demo_models["student"], loss="uld-aligned")
    new = cs.open_cache(_split_character_cache(tmp_path / "v1.3", EXACT_SPANS, "1.3"))
    old = cs.open_cache(_split_character_cache(tmp_path / "v1.2", SHARED_SPANS, "1.2"))
    assert cs.verify_cache(old.path)["token_layout"]  # a valid v1.2 cache
    new_align, _ = objective.group_options(cfg, new, tok, len(tok), torch.device("cpu"))
    with caplog.at_level("INFO", logger="pipeline.student.objective"):
        old_align, _ = objective.group_options(cfg, old, tok, len(tok), torch.device("cpu"))
    assert new_align.teacher_token_bytes is None and old_align.teacher_token_bytes.tolist() == [0, 3, 1, 1, 4]
    assert "cutting them by the teacher tokens' byte lengths" in caplog.text
    exact = _first_groups(new.path, tok, new_align)
    assert exact["groups"] == [4]  # caf | Ã | © | " sat", each with the student's tokens of the same bytes
    assert _first_groups(old.path, tok, old_align) == exact
    assert _first_groups(old.path, tok, replace(old_align, teacher_token_bytes=None)) != exact


def test_a_cache_before_v1_3_of_generated_answers_with_split_characters_is_refused(demo_models, tmp_path):
    """Before v1.3 a generated answer's rows of a split character end where a prefix decoded to U+FFFD ended."""
    cfg = small_config(demo_models["student"], loss="uld-aligned")
    old = _split_character_cache(tmp_path / "old", EXACT_SPANS, "1.2", answers="teacher")
    with pytest.raises(ConfigError, match=r"v1\.2 cache of the teacher's own answers .* rewrite it"):
        objective.check_cache(cfg, cs.open_cache(old))
    fine = [
        _split_character_cache(tmp_path / "new", EXACT_SPANS, "1.3", answers="teacher"),  # v1.3 spans are exact
        _split_character_cache(tmp_path / "gold", SHARED_SPANS, "1.2"),  # teacher-forced: cut when read
        _split_character_cache(  # no character to end inside
            tmp_path / "ascii", [(0, 3), (3, 4), (4, 4), (4, 8), (8, 8)], "1.2", "teacher", answer="cafe sat"
        ),
    ]
    for path in fine:
        objective.check_cache(cfg, cs.open_cache(path))
