"""What quantization costs a teacher: its cached rows beside the unquantized teacher's, on the same examples.

``kdpipe teacher-cache --quantize nf4 --compare-unquantized N`` runs both teachers over the first N examples of the
mixture, in the stage's own batches, and reports two figures per row of top-k probabilities:

- top-1 agreement: the fraction of rows whose most probable token is the same for both;
- mean L1: the mean over rows of Σ_i |p_i − q_i| between the two sorted top-k probability vectors, the distance
  the ULD loss itself measures (Boizard et al. 2024, arXiv 2402.12030), in [0, 2].

With ``--answers teacher`` the unquantized teacher writes the answers and both are teacher-forced on them, so the
rows compare the same tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from pipeline.config import TeacherCacheConfig
from pipeline.models import load_model, pick_device
from pipeline.teacher.batches import batch_rows, encode_examples, mixture_examples, plan_batches, teacher_text
from pipeline.teacher.rows import Rows


@dataclass(frozen=True)
class QuantizationCost:
    quantization: str
    examples: int
    rows: int
    top1_agreement: float  # fraction of rows with the same most probable token
    mean_l1: float  # mean over rows of the L1 distance between the sorted top-k probabilities
    seconds: dict[str, float]  # teacher passes (forward, softmax, top-k) of each teacher, model loading excluded


def row_distance(
    probs_a: np.ndarray, ids_a: np.ndarray, probs_b: np.ndarray, ids_b: np.ndarray
) -> tuple[float, float]:
    """(top-1 agreement, mean L1) of two sets of rows: probs [R, k] sorted descending, ids [R, k] their token ids."""
    if probs_a.shape != probs_b.shape or len(probs_a) == 0:
        raise ValueError(f"rows of shapes {probs_a.shape} and {probs_b.shape} do not compare")
    agreement = float((ids_a[:, 0] == ids_b[:, 0]).mean())
    l1 = float(np.abs(probs_a.astype(np.float64) - probs_b).sum(axis=1).mean())
    return agreement, l1


def quantization_cost(cfg: TeacherCacheConfig) -> QuantizationCost:
    """Both teachers over the first ``cfg.compare_unquantized`` examples; loads one model at a time."""
    device = pick_device(cfg.device)
    examples, _ = mixture_examples(replace(cfg, limit=cfg.compare_unquantized))
    reference, answers, seconds = None, None, {}
    for quantize in ("none", cfg.quantize):  # the reference first: with --answers teacher it writes the answers
        model, tokenizer, _ = load_model(
            cfg.teacher, revision=cfg.revision, quantize=quantize, device=device, role="teacher"
        )
        text = teacher_text(cfg, model, tokenizer)
        prepared, _, _ = encode_examples(examples, text, cfg)
        plan = plan_batches(prepared, cfg.batch_size, cfg.seed)
        start, batches = time.perf_counter(), []
        for b, batch in enumerate(plan):
            items = [prepared[i] for i in batch]
            given = None if answers is None else answers[b]  # store_ids: top-1 agreement needs the token ids
            batches.append(batch_rows(model, text, items, cfg, device, store_ids=True, answers=given))
        seconds[quantize] = time.perf_counter() - start
        del model
        if reference is None:
            reference, answers = batches, [rows.answers for rows in batches]
    agreement, l1 = row_distance(*_stack(batches), *_stack(reference))
    rows = sum(len(r.tail) for r in batches)
    return QuantizationCost(cfg.quantize, len(prepared), rows, agreement, l1, seconds)


def _stack(batches: list[Rows]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([r.probs for r in batches]), np.concatenate([r.topk_ids for r in batches])
