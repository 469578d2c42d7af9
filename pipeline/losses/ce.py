"""Causal-LM cross-entropy over the answer tokens: the CE of CE + λ·KD, and the whole loss of the FT baseline."""

import torch
import torch.nn.functional as F

from pipeline.losses import IGNORE_INDEX, check_reduction


def causal_lm_ce(student_logits: torch.Tensor, labels: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the next token, averaged over answer tokens (the usual Hugging Face shift).

    Args:
        student_logits: [B, T, Vs] logits for every input position.
        labels: [B, T] token ids aligned with input_ids, ``-100`` on prompt and padding.
        reduction: ``"mean"`` over answer tokens, or their ``"sum"`` (a batch split into micro-batches, or over
            processes, then divides the summed parts by its total of ``answer_tokens(labels)``).

    Returns:
        Scalar ``-mean_p log softmax(logits[p - 1])[labels[p]]`` over positions p with ``labels[p] != -100``;
        zero (still connected to ``student_logits``) when there is no answer token.
    """
    check_reduction(reduction)
    targets = labels[:, 1:]  # [B, T-1]
    answer = targets != IGNORE_INDEX  # [B, T-1]
    # Only the answer rows are upcast: float32 softmax without a float32 copy of the whole [B, T, Vs].
    rows = student_logits[:, :-1][answer].float()  # [N, Vs]
    total = F.cross_entropy(rows, targets[answer], reduction="sum")
    return total if reduction == "sum" else total / max(rows.shape[0], 1)


def answer_tokens(labels: torch.Tensor) -> int:
    """The number of tokens ``causal_lm_ce`` averages over: labels [B, T] that are not ``-100``, after the shift."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())
