"""Training losses: causal-LM cross-entropy and the Universal Logit Distillation (ULD) distance.

ULD (Boizard et al. 2024, https://arxiv.org/abs/2402.12030) compares teacher and student token
distributions without a shared vocabulary: each distribution is sorted in decreasing order, the shorter is
zero-padded, and the two are compared with the L1 distance. The training loss is

    loss = CE + λ · ULD,    λ = 1.5 in the official recipe (https://github.com/Nicolas-BZRD/llm-recipes).

The teacher side comes from the offline cache as top-k probabilities already sorted descending.
"""

import math

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # label of a position without a loss (prompt, padding); torch's cross_entropy default


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
    _check_reduction(reduction)
    targets = labels[:, 1:]  # [B, T-1]
    answer = targets != IGNORE_INDEX  # [B, T-1]
    # Only the answer rows are upcast: float32 softmax without a float32 copy of the whole [B, T, Vs].
    rows = student_logits[:, :-1][answer].float()  # [N, Vs]
    total = F.cross_entropy(rows, targets[answer], reduction="sum")
    return total if reduction == "sum" else total / max(rows.shape[0], 1)


def answer_tokens(labels: torch.Tensor) -> int:
    """The number of tokens ``causal_lm_ce`` averages over: labels [B, T] that are not ``-100``, after the shift."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def uld_pairs(labels: torch.Tensor, teacher_lengths: torch.Tensor, *, skip_student_eos: bool = True) -> torch.Tensor:
    """n_b = min(S_b, L_b) [B]: the student/teacher row pairs of each example that ``uld_loss`` compares.

    ``uld_loss`` averages over the examples with n_b > 0; a batch split into parts sums the parts'
    ``reduction="sum"`` values and divides by ``(uld_pairs(...) > 0).sum()`` over the whole batch.
    """
    answer = labels[:, 1:] != IGNORE_INDEX  # [B, T-1]
    student_rows = answer.sum(dim=1) - int(skip_student_eos)  # [B] (-1 for an empty answer)
    lengths = teacher_lengths.to(device=labels.device, dtype=student_rows.dtype)  # [B]
    return torch.minimum(student_rows, lengths).clamp(min=0)  # [B]


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def uld_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_probs: torch.Tensor,
    teacher_lengths: torch.Tensor,
    *,
    student_temperature: float = 1.0,
    skip_student_eos: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    """The unweighted ULD distance between the student and the cached teacher top-k, official semantics.

    The student answer rows are the logits rows ``p - 1`` for every label position p with
    ``labels[p] != -100`` (the row before the first answer label predicts it); with ``skip_student_eos`` the
    last of them (the one predicting EOS) is dropped. For example b with S_b student answer rows and
    L_b = ``teacher_lengths[b]`` teacher rows, the first n_b = min(S_b, L_b) rows of each are paired and

        ULD_b = 1/n_b Σ_rows Σ_i |sort↓(softmax(z / τ))_i − pad(t)_i|,   ULD = mean over b with n_b > 0.

    The teacher is zero beyond its k cached entries, so with s = sort↓(softmax(z / τ))

        Σ_i |s_i − t_i| = Σ_{i≤k} |s_i − t_i| + Σ_{i>k} s_i,

    and only the student's top-k is needed, not a sort of its whole vocabulary: the tail Σ_{i>k} s_i is
    1 − Σ_{i≤k} s_i (clamped at 0), taken in float64 from the float32 softmax.

    Args:
        student_logits: [B, T, Vs] student logits for every input position.
        labels: [B, T] Hugging Face causal-LM labels aligned with input_ids, ``-100`` on prompt and padding.
        teacher_probs: [B, Tt, k] cached teacher top-k probabilities, sorted descending; rows at and beyond
            ``teacher_lengths[b]`` are padding.
        teacher_lengths: [B] number of real teacher rows per example.
        student_temperature: τ, dividing the student logits before the softmax (the teacher's temperature is
            applied when the cache is written).
        skip_student_eos: drop the student's last answer row (it predicts EOS, which the teacher rows lack).
        reduction: ``"mean"`` over examples as above, or ``"sum"``: Σ_b ULD_b, for a batch split into parts
            (see ``uld_pairs``).

    Returns:
        Scalar float32 loss. Examples with n_b = 0 are left out of the mean; if all are, a zero that is still
        connected to ``student_logits`` in the autograd graph.
    """
    _check_reduction(reduction)
    batch, _, vocab = student_logits.shape
    _, teacher_rows, top_k = teacher_probs.shape
    if labels.shape != student_logits.shape[:2]:
        raise ValueError(f"labels shape {tuple(labels.shape)} does not match logits {tuple(student_logits.shape)}")
    if teacher_probs.shape[0] != batch or teacher_lengths.shape != (batch,):
        raise ValueError(
            f"teacher batch (probs {tuple(teacher_probs.shape)}, lengths {tuple(teacher_lengths.shape)}) "
            f"does not match student batch {batch}"
        )
    if student_temperature <= 0:
        raise ValueError(f"student_temperature must be > 0, got {student_temperature}")

    if bool((teacher_lengths > teacher_rows).any()):
        raise ValueError(f"teacher_lengths {teacher_lengths.tolist()} exceed the {teacher_rows} teacher rows given")
    b_idx, t_idx, r_idx, n_rows = _paired_rows(labels, teacher_lengths, skip_student_eos)
    if b_idx.numel() == 0:
        return student_logits[..., :0].sum().float()

    z = student_logits[b_idx, t_idx].float()  # [N, Vs]
    if student_temperature != 1.0:
        z = z / student_temperature
    student = torch.softmax(z, dim=-1)  # [N, Vs]
    # The k-sized rest in float64: 1 − Σ s_i then keeps the tail to float32 precision despite the cancellation.
    student_top = student.topk(min(top_k, vocab), dim=-1).values.double()  # [N, min(k, Vs)]
    teacher = teacher_probs[b_idx, r_idx].double()  # [N, k]
    distance = (F.pad(student_top, (0, top_k - student_top.shape[1])) - teacher).abs().sum(dim=-1)  # [N]
    if top_k < vocab:
        distance = distance + (1.0 - student_top.sum(dim=-1)).clamp(min=0.0)  # [N] the student mass beyond k
    return _row_mean(distance, b_idx, n_rows, batch, reduction)


def _paired_rows(
    labels: torch.Tensor, teacher_lengths: torch.Tensor, skip_student_eos: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The row pairs ``uld_loss`` compares: (example [N], student logits position [N], teacher row [N], n_b [B]).

    Row p - 1 predicts label p; the i-th answer row of the student is paired with the i-th teacher row, for the
    first n_b = ``uld_pairs`` of each example.
    """
    answer = labels[:, 1:] != IGNORE_INDEX  # [B, T-1]
    rank = answer.cumsum(dim=1)  # [B, T-1] 1-based index of each answer row within its example
    n_rows = uld_pairs(labels, teacher_lengths, skip_student_eos=skip_student_eos)  # [B]
    keep = answer & (rank <= n_rows[:, None])  # [B, T-1] the n_b paired rows of each example
    b_idx, t_idx = keep.nonzero(as_tuple=True)  # [N], [N]
    return b_idx, t_idx, rank[b_idx, t_idx] - 1, n_rows


def _row_mean(distance: torch.Tensor, b_idx: torch.Tensor, n_rows: torch.Tensor, batch: int, reduction: str):
    """Mean of the per-row ``distance`` [N] over each example's rows, then over the examples with rows (or the sum)."""
    per_example = torch.zeros(batch, dtype=distance.dtype, device=distance.device).index_add(0, b_idx, distance)
    per_example = per_example / n_rows.clamp(min=1)  # [B]
    if reduction == "sum":
        return per_example.sum().float()
    return (per_example.sum() / (n_rows > 0).sum()).float()


# ---------------------------------------------------------------------------------------------- token-aware losses
# Both read the groups that ``pipeline.student.alignment.align_batch`` formed on the reader thread (student and teacher
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
    ``pipeline.student.alignment``), with s_g = c_g · softmax(z_first / τ) the merged student vector and t_g the merged
    cached teacher top-k (zero beyond k):

        D_g = Σ_i |sort↓(s_g)_i − sort↓(t_g)_i|,   loss_b = mean over b's groups,   loss = mean over b with groups.

    The anchor's semantics: GOLD ``use_extended_uld=True`` with the ``"observed"`` merge formula on rows that each
    predict their own token (GOLD's ``"bayesian"`` slice), as the cache stores them, which is neither of GOLD's two
    strategies as shipped (``pipeline.student.alignment`` says why); tokens after the last common byte boundary are
    left out (GOLD pairs them). GOLD's code run on the same rows gives the same value and gradient
    (tests/test_gold_oracle.py).

    Args:
        student_logits: [B, T, Vs].
        aligned: ``pipeline.student.alignment.Aligned`` of the batch (G groups).
        student_temperature: τ.
        reduction: ``"mean"`` as above, or ``"sum"`` over examples (a batch split into parts then divides by its
            examples with ``aligned.groups > 0``).

    Returns:
        Scalar float32; a connected zero when no example has a group.
    """
    _check_reduction(reduction)
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
        aligned: ``pipeline.student.alignment.Aligned`` with ``teacher_student_ids`` (G groups).
        student_matched: [Vs] bool, the student ids in M.
        matched_weight: w.
        student_temperature: τ.
        reduction: as :func:`uld_aligned_loss`.

    Returns:
        Scalar float32; a connected zero when no example has a group.
    """
    _check_reduction(reduction)
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


# ---------------------------------------------------------------------------------------------- KL family

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
    entries without a student id); the student's are p_i = softmax(z / τ)[id_i] and its rest 1 − Σ p_i, the student
    mass on every other id (a log-sum-exp of those logits, so no cancellation). Then, over the buckets,

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
    _check_reduction(reduction)
    if divergence not in KL_DIVERGENCES:
        raise ValueError(f"divergence must be one of {KL_DIVERGENCES}, got {divergence!r}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if student_temperature <= 0:
        raise ValueError(f"student_temperature must be > 0, got {student_temperature}")
    if teacher_ids.shape != teacher_probs.shape:
        raise ValueError(f"teacher_ids {tuple(teacher_ids.shape)} and probs {tuple(teacher_probs.shape)} differ")
    batch, _, vocab = student_logits.shape
    b_idx, t_idx, r_idx, n_rows = _paired_rows(labels, teacher_lengths, skip_student_eos)
    if b_idx.numel() == 0:
        return student_logits[..., :0].sum().float()

    log_p_all = torch.log_softmax(student_logits[b_idx, t_idx].float() / student_temperature, dim=-1)  # [N, Vs]
    t = teacher_probs[b_idx, r_idx].float()  # [N, k]
    ids = teacher_ids[b_idx, r_idx]  # [N, k]
    bucket = (ids >= 0) & (ids < vocab) & (t > 0)  # [N, k]
    safe = torch.where(bucket, ids, 0)  # [N, k]
    log_p = log_p_all.gather(1, safe)  # [N, k]
    in_bucket = torch.zeros_like(log_p_all, dtype=torch.bool).scatter(1, safe, bucket)  # [N, Vs]
    log_p_rest = log_p_all.masked_fill(in_bucket, float("-inf")).logsumexp(dim=-1, keepdim=True)  # [N, 1]
    t_b = torch.where(bucket, t, 0.0)  # [N, k]
    # an empty rest (every student id is a bucket, as with k = V) holds nothing on either side, whatever the teacher's
    # stored probabilities leave to 1 by rounding
    has_rest = (~in_bucket).any(dim=-1, keepdim=True)  # [N, 1]
    t_rest = torch.where(has_rest, (1.0 - t_b.sum(dim=-1, keepdim=True)).clamp(min=0.0), 0.0)  # [N, 1]
    teacher = torch.cat([t_b, t_rest], dim=-1)  # [N, k + 1]
    student = torch.cat([torch.where(bucket, log_p.exp(), 0.0), log_p_rest.exp()], dim=-1)  # [N, k + 1]
    log_t, log_s = teacher.clamp(min=_TINY).log(), student.clamp(min=_TINY).log()  # [N, k + 1]
    if divergence == "kl" or (divergence == "jsd" and beta == 0.0):
        distance = _kl(teacher, log_t, log_s)
    elif divergence == "rkl" or beta == 1.0:
        distance = _kl(student, log_s, log_t)
    else:
        log_m = torch.logaddexp(log_t + math.log(beta), log_s + math.log1p(-beta))  # [N, k + 1]
        distance = beta * _kl(teacher, log_t, log_m) + (1.0 - beta) * _kl(student, log_s, log_m)
    return _row_mean(distance, b_idx, n_rows, batch, reduction)


def _kl(p: torch.Tensor, log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Σ p (log p − log q) over the last axis [N, K] -> [N], with 0 log 0 = 0."""
    return torch.where(p > 0, p * (log_p - log_q), 0.0).sum(dim=-1)
