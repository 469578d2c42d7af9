"""Signs of a degenerate student, read off the training logits at no extra forward pass.

Two failures make a distilled student useless while its loss still looks fine: it stops ending answers (greedy
decoding then runs on to the token budget, "by the the the …"), or it answers every option question with the same
option. ``answer_health`` measures both on a batch, teacher-forced:

- ``eos_p``: the probability the student gives EOS where the answer ends (near 1 for a healthy student); the
  text contract ends every answer with EOS (the chat template's end token for chat), so it is the last label;
- ``first_top_share``: the share of examples whose predicted first answer token is the batch's most common one
  (beside ``first_top_share_gold``, the same share for the gold first tokens: a collapsed student sits near 1
  while the gold share stays at the task's mix).
"""

from __future__ import annotations

from collections import Counter

import torch

from pipeline.losses import IGNORE_INDEX


@torch.no_grad()
def answer_health(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """``logits`` [B, T, V] for every input position, ``labels`` [B, T] (-100 outside the answer); see module doc."""
    targets = labels[:, 1:]  # [B, T-1]: row p predicts label p + 1
    answer = targets != IGNORE_INDEX  # [B, T-1]
    has = answer.any(dim=1)  # [B]
    if not bool(has.any()):
        return {"eos_p": float("nan"), "first_top_share": float("nan"), "first_top_share_gold": float("nan")}
    positions = torch.arange(targets.shape[1], device=labels.device)  # [T-1]
    first = torch.where(answer, positions, targets.shape[1]).min(dim=1).values[has]  # [B']
    last = torch.where(answer, positions, -1).max(dim=1).values[has]  # [B']
    rows = torch.nonzero(has).squeeze(1)  # [B']
    eos = targets[rows, last]  # [B']: every answer's last label is its EOS
    eos_p = logits[rows, last].float().softmax(-1).gather(-1, eos[:, None]).squeeze(1)  # [B']
    predicted = Counter(logits[rows, first].argmax(-1).tolist())
    gold = Counter(targets[rows, first].tolist())
    n = len(rows)
    return {
        "eos_p": float(eos_p.mean()),
        "first_top_share": predicted.most_common(1)[0][1] / n,
        "first_top_share_gold": gold.most_common(1)[0][1] / n,
    }
