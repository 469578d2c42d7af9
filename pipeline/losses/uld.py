"""The Universal Logit Distillation (ULD) distance, official semantics, against the cached teacher top-k.

ULD (Boizard et al. 2024, https://arxiv.org/abs/2402.12030) compares teacher and student token
distributions without a shared vocabulary: each distribution is sorted in decreasing order, the shorter is
zero-padded, and the two are compared with the L1 distance. The training loss is

    loss = CE + λ · ULD,    λ = 1.5 in the official recipe (https://github.com/Nicolas-BZRD/llm-recipes).

The teacher side comes from the offline cache as top-k probabilities already sorted descending. The row pairing
(``paired_rows``) and reductions (``row_mean``) here are also the KL family's (``pipeline.losses.kl``).
"""

import torch
import torch.nn.functional as F

from pipeline.losses import IGNORE_INDEX, check_reduction


def uld_pairs(labels: torch.Tensor, teacher_lengths: torch.Tensor, *, skip_student_eos: bool = True) -> torch.Tensor:
    """n_b = min(S_b, L_b) [B]: the student/teacher row pairs of each example that ``uld_loss`` compares.

    ``uld_loss`` averages over the examples with n_b > 0; a batch split into parts sums the parts'
    ``reduction="sum"`` values and divides by ``(uld_pairs(...) > 0).sum()`` over the whole batch.
    """
    answer = labels[:, 1:] != IGNORE_INDEX  # [B, T-1]
    student_rows = answer.sum(dim=1) - int(skip_student_eos)  # [B] (-1 for an empty answer)
    lengths = teacher_lengths.to(device=labels.device, dtype=student_rows.dtype)  # [B]
    return torch.minimum(student_rows, lengths).clamp(min=0)  # [B]


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
    check_reduction(reduction)
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
    b_idx, t_idx, r_idx, n_rows = paired_rows(labels, teacher_lengths, skip_student_eos)
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
    return row_mean(distance, b_idx, n_rows, batch, reduction)


def paired_rows(
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


def row_mean(distance: torch.Tensor, b_idx: torch.Tensor, n_rows: torch.Tensor, batch: int, reduction: str):
    """Mean of the per-row ``distance`` [N] over each example's rows, then over the examples with rows (or the sum)."""
    per_example = torch.zeros(batch, dtype=distance.dtype, device=distance.device).index_add(0, b_idx, distance)
    per_example = per_example / n_rows.clamp(min=1)  # [B]
    if reduction == "sum":
        return per_example.sum().float()
    return (per_example.sum() / (n_rows > 0).sum()).float()
