"""distill --loss kl | rkl | jsd: a shared vocabulary's losses, end to end from a cache."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from pipeline.cli import main
from pipeline.config import DistillConfig
from pipeline.losses import LOSSES, table
from stages import distill, teacher_cache
from tests.conftest import REPO
from tests.helpers import one_line_error, small_teacher_cache_config, step_metrics

GGUF = REPO / "models" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def cache(demo_models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kl") / "cache"
    teacher_cache.run(small_teacher_cache_config(demo_models["teacher"], out=str(out)))
    return out


@pytest.fixture(scope="module")
def same_tokenizer_student(demo_models, tmp_path_factory) -> Path:
    """A tiny GPT-2 that reads and writes the demo TEACHER's tokenizer: the shared-vocabulary case."""
    folder = tmp_path_factory.mktemp("kl") / "student"
    tokenizer = AutoTokenizer.from_pretrained(demo_models["teacher"])
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=512)
    config.eos_token_id = config.bos_token_id = tokenizer.eos_token_id
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _config(student: Path, cache: Path, out: Path, **kw) -> DistillConfig:
    base = {"steps": 3, "batch_size": 4, "lr": 2e-3, "device": "cpu", "lanes": 2, "checkpoint_every": 0}
    return DistillConfig(student=str(student), cache=str(cache), out=str(out), **{**base, **kw})


@pytest.mark.parametrize("loss", ["kl", "rkl", "jsd"])
def test_a_student_with_the_teachers_tokenizer_trains_and_logs_kd(loss, cache, same_tokenizer_student, tmp_path):
    distill.run(_config(same_tokenizer_student, cache, tmp_path / "s", loss=loss))
    rows = step_metrics(tmp_path / "s")
    assert len(rows) == 3 and all("uld" not in r for r in rows)  # uld is the ULD family's name only
    assert all(math.isfinite(r["kd"]) and r["kd"] > 0 for r in rows)
    assert all(r["loss"] == pytest.approx(r["ce"] + 1.5 * r["kd"], abs=1e-5) for r in rows)


def test_the_uld_family_logs_its_term_under_both_names(cache, demo_models, tmp_path):
    distill.run(_config(demo_models["student"], cache, tmp_path / "s"))
    assert all(r["kd"] == r["uld"] for r in step_metrics(tmp_path / "s"))


def test_different_tokenizers_are_refused_in_one_line_with_the_count(cache, demo_models, tmp_path):
    result = CliRunner().invoke(
        main,
        ["distill", "--cache", str(cache), "--out", str(tmp_path / "o"), "--student", str(demo_models["student"])]
        + ["--loss", "kl", "--device", "cpu"],
    )
    one_line_error(result, "--loss kl: ")
    assert "of the teacher's" in result.output and "use --loss hybrid or uld-aligned" in result.output
    count = int(result.output.split("--loss kl: ")[1].split()[0])
    assert count > 0


def test_the_registry_is_the_config_and_the_docs():
    import dataclasses

    from pipeline.config import DistillConfig as Config

    field = next(f for f in dataclasses.fields(Config) if f.name == "loss")
    assert field.metadata["choices"] == tuple(LOSSES)
    assert all(
        loss.name in field.metadata["help"] and loss.computes in field.metadata["help"] for loss in LOSSES.values()
    )
    docs = (REPO / "docs" / "losses.md").read_text()
    assert table() in docs  # the docs' loss table is the registry's, verbatim


@pytest.mark.slow
def test_smollm2_as_teacher_and_student_gives_kl_terms_of_about_zero(tmp_path):
    """An exact oracle on real weights: the student IS the teacher, so every KL-family term on the first step is the
    cache's own rounding (uint16 probabilities) and the float differences of two forward passes."""
    if not GGUF.is_file():
        pytest.skip(f"{GGUF} is absent (make real-teacher fetches it)")
    cfg = small_teacher_cache_config(GGUF, tasks={"demo_yesno": 4, "demo_qa": 4}, top_k=64, out=str(tmp_path / "c"))
    teacher_cache.run(cfg)
    for loss in ("kl", "rkl", "jsd"):
        distill.run(_config(GGUF, tmp_path / "c", tmp_path / loss, loss=loss, steps=1, batch_size=8, lanes=1))
        first = step_metrics(tmp_path / loss)[0]
        # the stored probabilities are rounded to 1/65535, so the buckets' sums can miss 1 by a hair either way
        assert abs(first["kd"]) < 1e-3, (loss, first)
    # and the distilled GGUF student is a regular checkpoint
    assert (tmp_path / "kl" / "model.safetensors").is_file() and (tmp_path / "kl" / "config.json").is_file()
