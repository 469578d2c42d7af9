import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

import cache_schema as cs
from pipeline.config import ConfigError, TeacherCacheConfig
from stages import teacher_cache
from tests.conftest import REPO, run_kdpipe
from tests.helpers import SMALL_MIXTURE, small_teacher_cache_config


@pytest.fixture(scope="module")
def gold_cache(demo_models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tc") / "cache"
    teacher_cache.run(small_teacher_cache_config(demo_models["teacher"], out=str(out)))
    return out


def test_cache_holds_the_teachers_softmax_top_k_for_every_answer_token(gold_cache, demo_models):
    cache = cs.open_cache(gold_cache)
    assert len(cache) == 48
    assert cache.meta[cs.ATTR_TOP_K] == 16 and cache.meta[cs.ATTR_ANSWERS] == "gold"
    assert cache.meta[cs.ATTR_TEACHER]["id"] == str(demo_models["teacher"])
    assert sorted(cache.meta[cs.ATTR_COUNTS]["per_task"]) == sorted(SMALL_MIXTURE)
    table = pq.read_table(gold_cache / cs.EXAMPLES_FILE).to_pylist()
    tok = AutoTokenizer.from_pretrained(demo_models["teacher"])
    model = AutoModelForSeq2SeqLM.from_pretrained(demo_models["teacher"]).eval()
    for i in (0, 17, 47):  # an independent forward of one example, unbatched
        row = table[i]
        enc = tok(row["prompt"], return_tensors="pt")
        labels = tok(row["answer"], return_tensors="pt").input_ids
        with torch.no_grad():
            probs = torch.softmax(model(**enc, labels=labels).logits[0].float(), -1)
        top = probs.topk(16, -1).values.numpy()
        ex = cache[i]
        assert ex.key == row["key"] and ex.probs.shape == (labels.shape[1], 16)
        np.testing.assert_array_equal(ex.token_ids, labels[0].numpy())
        assert ex.token_ids[-1] == tok.eos_token_id  # the last row predicts EOS
        assert np.abs(ex.probs - top).sum(1).max() < cs.decode_tolerance(16) + 1e-4
        np.testing.assert_allclose(ex.tail, 1 - top.sum(1), atol=1e-4)
    assert cs.verify_cache(gold_cache)["examples"] == 48


def test_rerun_of_a_complete_cache_does_nothing(gold_cache, demo_models):
    before = (gold_cache / "zarr.json").read_bytes()
    result = teacher_cache.run(small_teacher_cache_config(demo_models["teacher"], out=str(gold_cache)))
    assert result.already_complete and result.examples == 48
    assert (gold_cache / "zarr.json").read_bytes() == before


def test_refuses_to_write_into_a_different_cache(gold_cache, demo_models):
    with pytest.raises(cs.CacheError, match="different top_k: 16 there, 8 asked"):
        teacher_cache.run(small_teacher_cache_config(demo_models["teacher"], top_k=8, out=str(gold_cache)))


def test_teacher_answers_are_generated_then_cached(demo_models, tmp_path):
    cfg = small_teacher_cache_config(
        demo_models["teacher"], answers="teacher", answer_overflow="cut", tasks={"demo_qa": 8}, max_answer_tokens=12
    )
    teacher_cache.run(replace(cfg, out=str(tmp_path / "c")))
    cache = cs.open_cache(tmp_path / "c")
    tok = AutoTokenizer.from_pretrained(demo_models["teacher"])
    model = AutoModelForSeq2SeqLM.from_pretrained(demo_models["teacher"]).eval()
    row = cache.examples.to_pylist()[3]
    generated = model.generate(**tok(row["prompt"], return_tensors="pt"), max_new_tokens=12, do_sample=False)
    expected = generated[0, 1:].tolist()
    expected = expected[: expected.index(tok.eos_token_id) + 1] if tok.eos_token_id in expected else expected
    assert cache[3].token_ids.tolist() == expected
    assert row["answer"] == tok.decode(expected, skip_special_tokens=True)
    assert cache.meta[cs.ATTR_ANSWERS] == "teacher"


def test_causal_lm_teacher_rows_match_a_direct_forward(demo_models, tmp_path):
    cfg = small_teacher_cache_config(demo_models["student"], tasks={"demo_yesno": 6}, top_k=8)
    teacher_cache.run(replace(cfg, out=str(tmp_path / "c")))
    cache = cs.open_cache(tmp_path / "c")
    tok = AutoTokenizer.from_pretrained(demo_models["student"])
    model = AutoModelForCausalLM.from_pretrained(demo_models["student"]).eval()
    row = cache.examples.to_pylist()[0]
    # the llm-recipes layout, written out here: BOS + prompt, then " " + answer + EOS
    prompt = [tok.bos_token_id, *tok(row["prompt"], add_special_tokens=False).input_ids]
    answer = [*tok(" " + row["answer"], add_special_tokens=False).input_ids, tok.eos_token_id]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + answer])).logits[0, len(prompt) - 1 : -1]
    top = torch.softmax(logits, -1).topk(8, -1).values.numpy()
    assert cache[0].token_ids.tolist() == answer
    assert np.abs(cache[0].probs - top).sum(1).max() < cs.decode_tolerance(8) + 1e-4


def test_truncations_and_skips_are_recorded(demo_models, tmp_path):
    cfg = small_teacher_cache_config(
        demo_models["teacher"],
        tasks={"demo_summary": 8, "demo_yesno": 8},
        max_answer_tokens=5,
        max_prompt_tokens=20,
        prompt_overflow="skip",
    )
    result = teacher_cache.run(replace(cfg, out=str(tmp_path / "c")))
    counts = cs.open_cache(tmp_path / "c").meta[cs.ATTR_COUNTS]
    assert counts["skipped"]["prompt_over_limit"] == result.skipped["prompt_over_limit"] > 0
    assert counts["skipped"]["answer_over_limit"] == result.skipped["answer_over_limit"] > 0  # the official choice
    assert counts["examples"] == 16 - result.skipped["prompt_over_limit"] - result.skipped["answer_over_limit"]
    cfg = replace(cfg, prompt_overflow="truncate", answer_overflow="cut")
    teacher_cache.run(replace(cfg, out=str(tmp_path / "t")))
    cache = cs.open_cache(tmp_path / "t")
    assert cache.meta[cs.ATTR_COUNTS]["truncated"]["prompt"] == 16
    assert cache.meta[cs.ATTR_COUNTS]["truncated"]["answer"] > 0
    assert cache.meta[cs.ATTR_TEXT]["answer_overflow"] == "cut"
    assert int(cache.n_rows.max()) == 5
    eos = cache.meta[cs.ATTR_EOS]["token_id"]
    assert all(cache[i].token_ids[-1] == eos for i in range(len(cache)))  # a cut answer keeps its EOS


def test_config_validation_names_the_flag():
    with pytest.raises(ConfigError, match="--top-k"):
        TeacherCacheConfig(top_k=0)
    with pytest.raises(ConfigError, match="--shard-rows"):
        TeacherCacheConfig(chunk_rows=100, shard_rows=150)
    with pytest.raises(ConfigError, match="--answers"):
        TeacherCacheConfig(answers="silver")


def test_cli_errors_are_one_line(demo_models, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher_cache:\n  teachr: x\n")
    for args, message in [
        (["--config", str(bad)], "unknown key 'teachr'"),
        (["--teacher", str(tmp_path / "nope")], "cannot load it"),
        (["--teacher", str(demo_models["teacher"]), "--tasks", "no_such_task=3"], "unknown task 'no_such_task'"),
    ]:
        proc = run_kdpipe("teacher-cache", "--out", str(tmp_path / "c"), *args)
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        assert message in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr


def test_cli_writes_info_and_verify(gold_cache):
    info = run_kdpipe("cache", "info", str(gold_cache))
    assert info.returncode == 0 and "complete     True" in info.stdout and "demo_qa: 12 ex" in info.stdout
    ok = run_kdpipe("cache", "verify", str(gold_cache))
    assert ok.returncode == 0 and ok.stdout.startswith("ok:")


def _arrays(path: Path) -> dict:
    cache = cs.open_cache(path)
    probs, tail, ids, _ = cache.read_rows(0, cache.total_rows)
    return {"examples": cache.examples.to_pylist(), "probs": probs, "tail": tail, "ids": ids}


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_cache(demo_models, tmp_path):
    """Kill a real run after it committed some batches; the resumed cache equals an uninterrupted one."""
    tasks = "demo_yesno=40,demo_qa=40,demo_summary=40,demo_concepts=40"
    args = [
        "teacher-cache",
        "--teacher",
        str(demo_models["teacher"]),
        "--tasks",
        tasks,
        "--batch-size",
        "4",
        "--top-k",
        "16",
        "--device",
        "cpu",
        "--chunk-rows",
        "16",
        "--shard-rows",
        "32",
    ]
    assert run_kdpipe(*args, "--out", str(tmp_path / "whole")).returncode == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *args, "--out", str(killed)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list((killed / cs.PARTS_DIR).glob("*.parquet"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    parts = list((killed / cs.PARTS_DIR).glob("*.parquet"))
    assert parts and not (killed / cs.EXAMPLES_FILE).exists(), "the run must be killed mid-way"
    with pytest.raises(cs.CacheError, match="incomplete"):
        cs.open_cache(killed)
    resumed = run_kdpipe(*args, "--out", str(killed))
    assert resumed.returncode == 0, resumed.stderr
    a, b = _arrays(tmp_path / "whole"), _arrays(killed)
    assert a["examples"] == b["examples"]
    for key in ("probs", "tail", "ids"):
        np.testing.assert_array_equal(a[key], b[key])
    assert cs.verify_cache(killed)["examples"] == 160
