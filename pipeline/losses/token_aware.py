"""Token-aware ULD for different tokenizers: rows paired by the byte spans of their tokens in the answer.

Both losses read the groups that ``pipeline.alignment.align_batch`` formed on the reader thread (student
and teacher tokens covering the same answer bytes, the teacher side already merged); see that module for the
semantics.
"""

import torch
import torch.nn.functional as F

from pipeline.losses import check_reduction

# Both read the groups that ``pipeline.alignment.align_batch`` formed on the reader thread (student and teacher
# tokens covering the same answer bytes, the teacher side already merged); see that module for the semantics.


def _student_groups(
    student_logits: torch.Tensor, aligned, student_temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(p [G, Vs] float32 softmax of each group's first student row, c [G] float64 Π of its later rows' p(token)).

    The merged student vector of group g is c_g · p_g (GOLD's "observed" merge, rows predicting their own token).
    """
    if student_temperature <= 0:
        raise ValueError(f"student_temperature must be > 0, got {student_temperature}")
    b_first = aligned.example  # [G]
    z = student_logits[b_first, aligned.student_t].float() / student_temperature  # [G, Vs]
    p = torch.softmax(z, dim=-1)  # [G, Vs]
    log_c = torch.zeros(len(b_first), dtype=torch.float64, device=student_logits.device)  # [G]
    if aligned.extra_t.numel():
        b_extra = b_first[aligned.extra_group]  # [E]
        z_extra = student_logits[b_extra, aligned.extra_t].float() / student_temperature  # [E, Vs]
        log_p = torch.log_softmax(z_extra, dim=-1).gather(1, aligned.extra_token[:, None])[:, 0]  # [E]
        log_c = log_c.index_add(0, aligned.extra_group, log_p.double())
    return p, log_c.exp()


def _per_example(distance: torch.Tensor, aligned, batch: int, reduction: str) -> torch.Tensor:
    """Mean over each example's groups, then the mean (or sum) over the examples that have groups."""
    per_example = torch.zeros(batch, dtype=distance.dtype, device=distance.device).index_add(
        0, aligned.example, distance
    )
    per_example = per_example / aligned.groups.clamp(min=1)  # [B]
    if reduction == "sum":
        return per_example.sum().float()
    return (per_example.sum() / (aligned.groups > 0).sum().clamp(min=1)).float()


def _sorted_l1(student: torch.Tensor, mass: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Σ_i |sort↓(s)_i − t_i| over the whole vocabulary for a teacher zero beyond its k sorted entries.

    ``student`` [G, Vs] (float32, unscaled), ``mass`` [G] float64 the factor it is scaled by, ``teacher`` [G, k]
    float64 sorted descending. Only the student's top-k is sorted: the rest adds c · (1 − Σ top-k) where the
    student vector sums to c (its total mass), as in :func:`uld_loss`.
    """
    k, vocab = teacher.shape[1], student.shape[1]
    top = student.topk(min(k, vocab), dim=-1).values.double()  # [G, min(k, Vs)]
    total = student.sum(dim=-1).double()  # [G] 1, or less for a masked student
    scaled = top * mass[:, None]  # [G, min(k, Vs)]
    distance = (F.pad(scaled, (0, k - top.shape[1])) - teacher).abs().sum(dim=-1)  # [G]
    if k < vocab:
        distance = distance + (mass * (total - top.sum(dim=-1))).clamp(min=0.0)  # [G] the student mass beyond k
    return distance


def uld_aligned_loss(
    student_logits: torch.Tensor, aligned, *, student_temperature: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    """ULD on token groups paired by byte spans (TRL GOLD's extended ULD, https://huggingface.co/docs/trl/gold_trainer).

    For each group g (student rows and teacher rows that cover the same answer bytes, see
    ``pipeline.alignment``), with s_g = c_g · softmax(z_first / τ) the merged student vector and t_g the merged
    cached teacher top-k (zero beyond k):

        D_g = Σ_i |sort↓(s_g)_i − sort↓(t_g)_i|,   loss_b = mean over b's groups,   loss = mean over b with groups.

    The anchor's semantics: GOLD ``use_extended_uld=True`` with the ``"observed"`` merge formula on rows that each
    predict their own token (GOLD's ``"bayesian"`` slice), as the cache stores them, which is neither of GOLD's two
    strategies as shipped (``pipeline.alignment`` says why); tokens after the last common byte boundary are
    left out (GOLD pairs them). GOLD's code run on the same rows gives the same value and gradient
    (tests/test_gold_oracle.py).

    Args:
        student_logits: [B, T, Vs].
        aligned: ``pipeline.alignment.Aligned`` of the batch (G groups).
        student_temperature: τ.
        reduction: ``"mean"`` as above, or ``"sum"`` over examples (a batch split into parts then divides by its
            examples with ``aligned.groups > 0``).

    Returns:
        Scalar float32; a connected zero when no example has a group.
    """
    check_reduction(reduction)
    if aligned.example.numel() == 0:
        return student_logits[..., :0].sum().float()
    p, c = _student_groups(student_logits, aligned, student_temperature)  # [G, Vs], [G]
    distance = _sorted_l1(p, c, aligned.teacher.double())  # [G]
    return _per_example(distance, aligned, student_logits.shape[0], reduction)


def hybrid_loss(
    student_logits: torch.Tensor,
    aligned,
    student_matched: torch.Tensor,
    matched_weight: float,
    *,
    student_temperature: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Token-aware ULD: exact-string matched vocabulary entries compared by identity, sorted L1 on the rest.

    The anchor is TRL GOLD's hybrid ULD (``uld_use_hybrid_loss``): on the byte-aligned groups of
    :func:`uld_aligned_loss`, the vocabulary entries whose byte strings match exactly between the two
    tokenizers (M, a one-to-one map) are compared entry by entry, the others (U) by sorted L1, and the two
    are weighted by the matched share w = |M| / Vt of the teacher vocabulary (GOLD's default weights):

        D_g = w · Σ_{v∈M} |s_g[v] − t_g[v]| + (1 − w) · Σ_i |sort↓(s_g[U])_i − sort↓(t_g[U])_i|.

    Divergence on M: L1 (twice the total variation), where GOLD uses a generalized JSD. Why: the cache knows
    the teacher only on its top-k, so t_g is zero on every other matched entry; L1 needs nothing else
    (Σ_{v∈M} |s − t| = Σ_{top-k ∩ M} |s − t| + mass of s on the rest of M), needs no log of a zero or an
    unnormalised group vector, and keeps one metric across the loss: with no match it is ULD, with every entry
    matched it is the exact L1 distance between the two distributions.

    Args:
        student_logits: [B, T, Vs].
        aligned: ``pipeline.alignment.Aligned`` with ``teacher_student_ids`` (G groups).
        student_matched: [Vs] bool, the student ids in M.
        matched_weight: w.
        student_temperature: τ.
        reduction: as :func:`uld_aligned_loss`.

    Returns:
        Scalar float32; a connected zero when no example has a group.
    """
    check_reduction(reduction)
    if aligned.teacher_student_ids is None:
        raise ValueError("hybrid_loss needs the teacher top-k ids mapped to student ids (aligned.teacher_student_ids)")
    if aligned.example.numel() == 0:
        return student_logits[..., :0].sum().float()
    p, c = _student_groups(student_logits, aligned, student_temperature)  # [G, Vs], [G]
    teacher = aligned.teacher.double()  # [G, k]
    ids = aligned.teacher_student_ids  # [G, k]
    matched = ids >= 0  # [G, k]
    s_at = p.gather(1, ids.clamp(min=0)).double() * c[:, None]  # [G, k] student at each teacher entry's id
    on_m = (p * student_matched.to(p.dtype)).sum(dim=-1).double() * c  # [G] student mass on M
    hit = torch.where(matched, s_at, 0.0)  # [G, k]
    matched_l1 = torch.where(matched, (s_at - teacher).abs(), 0.0).sum(dim=-1) + (on_m - hit.sum(dim=-1)).clamp(min=0)
    rest = p.masked_fill(student_matched, 0.0)  # [G, Vs] student on U
    teacher_rest = torch.where(matched, 0.0, teacher).sort(dim=-1, descending=True).values  # [G, k]
    rest_l1 = _sorted_l1(rest, c, teacher_rest)  # [G]
    distance = matched_weight * matched_l1 + (1.0 - matched_weight) * rest_l1  # [G]
    return _per_example(distance, aligned, student_logits.shape[0], reduction)
