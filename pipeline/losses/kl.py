"""The KL family for a shared vocabulary: forward KL, reverse KL and TRL GKD's generalized JSD on the cached top-k.

For a student whose vocabulary the teacher's maps onto (the same tokenizer, or every teacher token spelled alike by
a student token): the teacher's stored top-k plus a rest bucket against the student's softmax on the same ids plus
its own rest, with ULD's row pairing and reductions (``pipeline.losses.uld``).
"""

import math

import torch

from pipeline.losses import check_reduction
from pipeline.losses.uld import paired_rows, row_mean

KL_DIVERGENCES = ("kl", "rkl", "jsd")
_TINY = torch.finfo(torch.float32).tiny  # the floor inside every log: a bucket that rounded to zero


def kl_family_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_probs: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_lengths: torch.Tensor,
    *,
    divergence: str = "kl",
    beta: float = 0.5,
    student_temperature: float = 1.0,
    skip_student_eos: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    """A KL-family divergence between the cached teacher top-k and the student, for a shared vocabulary.

    For each paired row (``uld_loss``'s pairing: the i-th student answer row with the i-th teacher row, the first
    n_b = min(S_b, L_b), the student's EOS row left out with ``skip_student_eos``), both distributions are put on the
    same k + 1 buckets: one per teacher top-k entry that has a student id and a non-zero probability, and one rest
    bucket. The teacher's buckets are its stored probabilities t_i, its rest 1 − Σ t_i (the cache's tail plus the
    entries without a student id); the student's are p_i = softmax(z / τ)[id_i] (their logs taken as z_i − logsumexp z,
    exactly) and its rest 1 − Σ p_i, the student mass on every other id. Then, over the buckets,

        kl:  KL(t ‖ p) = Σ t log(t / p)                                  (forward; Megatron-LM, MaxText, DistillKit)
        rkl: KL(p ‖ t) = Σ p log(p / t)                                  (reverse)
        jsd: β KL(t ‖ m) + (1 − β) KL(p ‖ m),  m = β t + (1 − β) p        (TRL GKD's generalized JSD; β = 0 is kl,
                                                                           β = 1 is rkl, as GKD special-cases them)

    per row, with 0 log 0 = 0 and every probability floored at float32's smallest normal number inside the logs
    (a bucket whose stored value rounded to zero), then the mean over each example's rows and over the examples
    with rows, as ``uld_loss``. float32 throughout. With k = V and every id mapped the rest bucket is empty (both
    sides hold zero there) and the value is the textbook divergence between the two full distributions.
    GKD: https://arxiv.org/abs/2306.13649 (Eq. 1).

    Args:
        student_logits: [B, T, Vs].
        labels: [B, T] causal-LM labels, ``-100`` on prompt and padding.
        teacher_probs: [B, Tt, k] cached top-k probabilities (rows beyond ``teacher_lengths`` are padding).
        teacher_ids: [B, Tt, k] long, the STUDENT id of each teacher entry, ``-1`` where it has none.
        teacher_lengths: [B].
        divergence: ``"kl"``, ``"rkl"`` or ``"jsd"``.
        beta: β of ``jsd``, in [0, 1].
        student_temperature: τ.
        skip_student_eos: as ``uld_loss``.
        reduction: ``"mean"`` or ``"sum"`` over examples, as ``uld_loss``.

    Returns:
        Scalar float32; a connected zero when no example has a paired row.
    """
    check_reduction(reduction)
    if divergence not in KL_DIVERGENCES:
        raise ValueError(f"divergence must be one of {KL_DIVERGENCES}, got {divergence!r}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if student_temperature <= 0:
        raise ValueError(f"student_temperature must be > 0, got {student_temperature}")
    if teacher_ids.shape != teacher_probs.shape:
        raise ValueError(f"teacher_ids {tuple(teacher_ids.shape)} and probs {tuple(teacher_probs.shape)} differ")
    batch, _, vocab = student_logits.shape
    b_idx, t_idx, r_idx, n_rows = paired_rows(labels, teacher_lengths, skip_student_eos)
    if b_idx.numel() == 0:
        return student_logits[..., :0].sum().float()

    z = student_logits[b_idx, t_idx].float()  # [N, Vs]
    if student_temperature != 1.0:
        z = z / student_temperature
    lse = torch.logsumexp(z, dim=-1, keepdim=True)  # [N, 1]: the only passes over the whole vocabulary
    t = teacher_probs[b_idx, r_idx].float()  # [N, k]
    ids = teacher_ids[b_idx, r_idx]  # [N, k]
    bucket = (ids >= 0) & (ids < vocab) & (t > 0)  # [N, k]
    log_p = z.gather(1, torch.where(bucket, ids, 0)) - lse  # [N, k] exact log-probabilities at the bucket ids
    p_b = torch.where(bucket, log_p.exp(), 0.0)  # [N, k]
    t_b = torch.where(bucket, t, 0.0)  # [N, k]
    # The rests: what the buckets leave to 1, summed in float64. An empty rest (every student id is a bucket, as with
    # k = V) holds nothing on either side, whatever the stored probabilities leave to 1 by rounding; elsewhere a rest
    # is off by float32 rounding at most (~1e-6), and enters the divergence scaled by its own mass.
    has_rest = bucket.sum(dim=-1, keepdim=True) < vocab  # [N, 1] (a row's ids are distinct)
    p_rest = torch.where(has_rest, (1.0 - p_b.double().sum(dim=-1, keepdim=True)).clamp(min=0.0).float(), 0.0)
    t_rest = torch.where(has_rest, (1.0 - t_b.double().sum(dim=-1, keepdim=True)).clamp(min=0.0).float(), 0.0)
    teacher = torch.cat([t_b, t_rest], dim=-1)  # [N, k + 1]
    student = torch.cat([p_b, p_rest], dim=-1)  # [N, k + 1]
    log_t = teacher.clamp(min=_TINY).log()  # [N, k + 1]
    floor = math.log(_TINY)
    log_s = torch.cat([torch.where(bucket, log_p, floor), p_rest.clamp(min=_TINY).log()], dim=-1)  # [N, k + 1]
    if divergence == "kl" or (divergence == "jsd" and beta == 0.0):
        distance = _kl(teacher, log_t, log_s)
    elif divergence == "rkl" or beta == 1.0:
        distance = _kl(student, log_s, log_t)
    else:
        log_m = torch.logaddexp(log_t + math.log(beta), log_s + math.log1p(-beta))  # [N, k + 1]
        distance = beta * _kl(teacher, log_t, log_m) + (1.0 - beta) * _kl(student, log_s, log_m)
    return row_mean(distance, b_idx, n_rows, batch, reduction)


def _kl(p: torch.Tensor, log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Σ p (log p − log q) over the last axis [N, K] -> [N], with 0 log 0 = 0."""
    return torch.where(p > 0, p * (log_p - log_q), 0.0).sum(dim=-1)
