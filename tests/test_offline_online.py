"""The offline-against-online benchmark compares like with like: the online teacher's rows are the cache's rows."""

from dataclasses import replace

import pytest
import torch
from transformers import AutoTokenizer

import cache_schema as cs
from pipeline.devtools.benchmarks import offline_online
from pipeline.models import load_model
from pipeline.student.cache_stream import BatchStream, StudentEncoder
from pipeline.teacher.batches import teacher_text
from pipeline.text import TextEncoder, TextSpec
from stages import teacher_cache
from tests.helpers import small_teacher_cache_config


def test_online_teacher_rows_are_the_cached_rows_of_the_same_batch(demo_models, tmp_path):
    cfg = small_teacher_cache_config(demo_models["teacher"], tasks={"demo_qa": 8, "demo_yesno": 8})
    teacher_cache.run(replace(cfg, out=str(tmp_path / "c")))
    cache = cs.open_cache(tmp_path / "c")
    student_tok = AutoTokenizer.from_pretrained(demo_models["student"])
    encoder = StudentEncoder(TextEncoder(student_tok, TextSpec("causal", 512, 40, "skip")))
    with BatchStream(cache, encoder, batch_size=8, seed=0, shuffle_chunks=8) as stream:
        batch = next(stream)
    teacher, tok, _ = load_model(str(demo_models["teacher"]), device=torch.device("cpu"))
    text = teacher_text(cfg, teacher, tok)
    prompts, answers = offline_online.teacher_tokens(text, cache, batch)
    probs, lengths = offline_online.online_teacher_probs(teacher, text, prompts, answers, cfg, torch.device("cpu"))
    assert lengths.tolist() == batch.teacher_lengths.tolist()
    assert probs.shape == batch.teacher_probs.shape
    assert (probs - batch.teacher_probs).abs().sum(-1).max().item() < cs.decode_tolerance(cfg.top_k) + 1e-4


def test_break_even_follows_from_the_measured_steps(demo_models):
    args = offline_online.build_parser().parse_args(
        ["--teacher", str(demo_models["teacher"]), "--student", str(demo_models["student"]), "--examples", "24"]
        + ["--batch-size", "8", "--steps", "1", "--top-k", "16", "--device", "cpu", "--cache-repeats", "1"]
    )
    r = offline_online.measure(args)
    assert r["examples"] == 24 and r["steps_per_epoch"] == 3 and r["offline_ms"] > 0 and r["online_ms"] > 0
    assert r["ratio"] == pytest.approx(r["online_ms"] / r["offline_ms"])
    if r["online_ms"] > r["offline_ms"]:
        saved = r["steps_per_epoch"] * (r["online_ms"] - r["offline_ms"]) / 1000
        assert r["break_even_epochs_x_students"] == pytest.approx(r["cache_seconds"] / saved)
    text = offline_online.report(r)
    assert "ms/step" in text and "break-even: E·S =" in text
