"""End to end against the official ULD: the loss distill computes from the cache equals the llm-recipes
``DistillationLoss`` fed a LIVE teacher on the same texts, within the cache's quantisation plus its top-k tail."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

import cache_schema as cs
from pipeline.config import TeacherCacheConfig
from pipeline.losses.uld import uld_loss
from pipeline.student.cache_stream import BatchStream, StudentEncoder
from pipeline.text import TextEncoder, TextSpec
from stages import teacher_cache


def official_uld(student_logits, labels, teacher_logits, teacher_labels) -> float:
    """llm-recipes' DistillationLoss, written out in float64 on full vocabularies (no top-k, no cache).

    Answer rows: from the first label that is not -100 (the student's row before it predicts it; a seq2seq
    teacher's row j predicts label j); the student's EOS row is dropped; both cut to the shorter; softmax, sort
    descending, zero-pad the vocabularies to one size, L1 over the vocabulary, mean over rows, then over examples.
    """
    losses = []
    for s_logits, s_labels, t_logits, t_labels in zip(
        student_logits, labels, teacher_logits, teacher_labels, strict=True
    ):
        s_pos = (s_labels != -100).nonzero().flatten()
        s_rows = s_logits[s_pos[:-1] - 1]  # the rows predicting the answer, without the one predicting EOS
        t_rows = t_logits[: len(t_labels)]
        n = min(len(s_rows), len(t_rows))
        s = torch.softmax(s_rows[:n].double(), -1).sort(-1, descending=True).values
        t = torch.softmax(t_rows[:n].double(), -1).sort(-1, descending=True).values
        width = max(s.shape[-1], t.shape[-1])
        s = torch.nn.functional.pad(s, (0, width - s.shape[-1]))
        t = torch.nn.functional.pad(t, (0, width - t.shape[-1]))
        losses.append((s - t).abs().sum(-1).mean())
    return float(torch.stack(losses).mean())


@pytest.mark.parametrize("top_k", [8, 64])
def test_cached_uld_equals_the_official_loss_with_a_live_teacher(top_k, demo_models, tmp_path):
    cfg = TeacherCacheConfig(
        teacher=str(demo_models["teacher"]),
        tasks={"demo_qa": 6, "demo_yesno": 6, "demo_summary": 4},
        top_k=top_k,
        batch_size=8,
        device="cpu",
        max_answer_tokens=64,
    )
    teacher_cache.run(replace(cfg, out=str(tmp_path / "cache")))
    cache = cs.open_cache(tmp_path / "cache")
    s_tok = AutoTokenizer.from_pretrained(demo_models["student"])
    student = AutoModelForCausalLM.from_pretrained(demo_models["student"]).eval()
    t_tok = AutoTokenizer.from_pretrained(demo_models["teacher"])
    teacher = AutoModelForSeq2SeqLM.from_pretrained(demo_models["teacher"]).eval()
    encoder = StudentEncoder(TextEncoder(s_tok, TextSpec("causal", 256, 64, "skip")))
    with BatchStream(cache, encoder, batch_size=len(cache), seed=0, shuffle_chunks=1) as stream:
        batch = next(stream)
    with torch.no_grad():
        logits = student(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits  # [B, T, Vs]
        ours = float(uld_loss(logits, batch.labels, batch.teacher_probs, batch.teacher_lengths))
        teacher_logits, teacher_labels, tails = [], [], []
        for i in batch.indices.tolist():
            row = cache.examples.slice(i, 1).to_pylist()[0]
            # the seq2seq layout written out: prompt + </s> into the encoder, answer + </s> as labels
            labels = torch.tensor([t_tok(row["answer"]).input_ids])
            out = teacher(input_ids=torch.tensor([t_tok(row["prompt"]).input_ids]), labels=labels).logits[0]
            teacher_logits.append(out)
            teacher_labels.append(labels[0])
            assert cache[i].token_ids.tolist() == labels[0].tolist()
            n = min(len(labels[0]), int((batch.labels[batch.indices.tolist().index(i)] != -100).sum()) - 1)
            tails.append(cache[i].tail[:n].mean() if n else 0.0)
    official = official_uld(logits, batch.labels, teacher_logits, teacher_labels)
    # The cache keeps the top-k and the tail mass: per row, the L1 moves by at most the tail (the teacher
    # values beyond k that the student is compared against) plus the uint16 rounding of the k stored values.
    bound = float(np.mean(tails)) + cs.decode_tolerance(top_k)
    assert abs(ours - official) <= bound, (ours, official, bound)
    if top_k == 64:  # the tiny teacher's vocabulary is small: k = 64 keeps nearly all of its mass
        assert abs(ours - official) < 5e-3
