"""The KL family (kl, rkl, jsd) on cached top-k rows: float64 references written here, and TRL's GKD as an oracle."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.losses.kl import kl_family_loss


def buckets_reference(student_row, teacher_top, teacher_ids, divergence, beta, temperature=1.0):
    """One row, the slow way in float64: the k + 1 buckets built by hand, then the divergence by its definition."""
    p = torch.softmax(student_row.double() / temperature, dim=-1)
    t_b, p_b = [], []
    for value, sid in zip(teacher_top.tolist(), teacher_ids.tolist(), strict=True):
        if sid >= 0 and value > 0:
            t_b.append(value)
            p_b.append(float(p[sid]))
    used = {
        sid for value, sid in zip(teacher_top.tolist(), teacher_ids.tolist(), strict=True) if sid >= 0 and value > 0
    }
    rest_ids = [i for i in range(len(p)) if i not in used]
    t = t_b + ([max(1.0 - sum(t_b), 0.0)] if rest_ids else [])
    s = p_b + ([float(p[rest_ids].sum())] if rest_ids else [])

    def kl(a, b):
        return sum(x * (math.log(x) - math.log(y)) for x, y in zip(a, b, strict=True) if x > 0)

    if divergence == "kl" or (divergence == "jsd" and beta == 0):
        return kl(t, s)
    if divergence == "rkl" or beta == 1:
        return kl(s, t)
    m = [beta * x + (1 - beta) * y for x, y in zip(t, s, strict=True)]
    return beta * kl(t, m) + (1 - beta) * kl(s, m)


def _batch(vocab: int, k: int, *, full: bool, seed: int, unmatched: float = 0.0):
    """Two examples of 3 and 2 answer rows (plus EOS), a teacher of its own logits: all of it (k = V) or its top-k."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(2, 7, vocab, generator=gen) * 2).requires_grad_()
    labels = torch.full((2, 7), -100)
    labels[0, 2:6] = torch.tensor([5, 6, 7, 1])
    labels[1, 3:6] = torch.tensor([8, 9, 1])
    teacher_full = torch.softmax(torch.randn(2, 4, vocab, generator=gen, dtype=torch.float64) * 2, dim=-1)
    top = teacher_full.topk(vocab if full else k, dim=-1)
    ids = top.indices.clone()
    if unmatched:  # some entries have no student id: their mass joins the rest bucket
        ids[torch.rand(ids.shape, generator=gen) < unmatched] = -1
    lengths = torch.tensor([4, 2])
    return logits, labels, top.values.float(), ids, lengths


def _reference(logits, labels, probs, ids, lengths, divergence, beta, temperature=1.0):
    per_example = []
    for b in range(2):
        positions = [p for p in range(labels.shape[1]) if labels[b, p] != -100]
        n = min(len(positions) - 1, int(lengths[b]))  # the student's EOS row left out
        rows = [
            buckets_reference(
                logits[b, positions[r] - 1], probs[b, r].double(), ids[b, r], divergence, beta, temperature
            )
            for r in range(n)
        ]
        per_example.append(sum(rows) / n)
    return sum(per_example) / len(per_example)


@pytest.mark.parametrize("divergence,beta", [("kl", 0.5), ("rkl", 0.5), ("jsd", 0.5), ("jsd", 0.1), ("jsd", 0.0)])
@pytest.mark.parametrize("full", [True, False])
def test_equals_the_float64_reference_on_full_and_top_k_rows(divergence, beta, full):
    logits, labels, probs, ids, lengths = _batch(vocab=40, k=6, full=full, seed=1, unmatched=0.0 if full else 0.2)
    got = kl_family_loss(logits, labels, probs, ids, lengths, divergence=divergence, beta=beta)
    want = _reference(logits.detach(), labels, probs, ids, lengths, divergence, beta)
    assert got.dtype == torch.float32 and got.item() == pytest.approx(want, rel=2e-5, abs=1e-6)


def test_full_rows_give_the_textbook_divergence():
    """k = V, every id mapped: no rest bucket, so the value is KL(teacher ‖ student) of the two full distributions."""
    logits, labels, probs, ids, lengths = _batch(vocab=30, k=30, full=True, seed=2)
    got = kl_family_loss(logits, labels, probs, ids, lengths, divergence="kl")
    per_example = []
    for b, (positions, n) in enumerate((([2, 3, 4, 5], 3), ([3, 4, 5], 2))):
        rows = []
        for r in range(n):
            t = torch.zeros(30, dtype=torch.float64).scatter(0, ids[b, r], probs[b, r].double())
            log_s = torch.log_softmax(logits[b, positions[r] - 1].detach().double(), dim=-1)
            rows.append(float((t * (t.log() - log_s)).sum()))
        per_example.append(sum(rows) / n)
    assert got.item() == pytest.approx(sum(per_example) / 2, rel=1e-5)


@pytest.mark.parametrize("divergence", ["kl", "rkl", "jsd"])
def test_equal_distributions_give_zero_and_the_gradient_matches_float64(divergence):
    logits, labels, probs, ids, lengths = _batch(vocab=25, k=25, full=True, seed=3)
    # a teacher equal to the student on every paired row: the divergence is zero
    same = torch.zeros_like(probs)
    same_ids = torch.zeros_like(ids)
    for b, positions in enumerate(([2, 3, 4], [3, 4])):
        for r, p in enumerate(positions):
            top = torch.softmax(logits[b, p - 1].detach(), dim=-1).topk(25)
            same[b, r], same_ids[b, r] = top.values, top.indices
    zero = kl_family_loss(logits, labels, same, same_ids, lengths, divergence=divergence)
    assert abs(zero.item()) < 1e-6
    # gradient against the float64 reference's autograd
    loss = kl_family_loss(logits, labels, probs, ids, lengths, divergence=divergence, student_temperature=1.5)
    (grad,) = torch.autograd.grad(loss, logits)
    ref_logits = logits.detach().double().requires_grad_()
    ref = _autograd_reference(ref_logits, labels, probs, ids, lengths, divergence, 0.5, 1.5)
    (ref_grad,) = torch.autograd.grad(ref, ref_logits)
    assert torch.allclose(grad.double(), ref_grad, atol=1e-6)
    untouched = torch.ones(2, 7, dtype=torch.bool)
    untouched[0, 1:4] = False  # the rows that predict example 0's first three answer tokens
    untouched[1, 2:4] = False
    assert float(grad[untouched].abs().max()) == 0.0  # prompt, padding and EOS rows get no gradient


def _autograd_reference(logits, labels, probs, ids, lengths, divergence, beta, temperature):
    """The same buckets as ``buckets_reference`` in float64 torch ops, so autograd gives the reference gradient."""
    per_example = []
    for b, (positions, n) in enumerate((([2, 3, 4, 5], 3), ([3, 4, 5], 2))):
        rows = []
        for r in range(n):
            p = torch.softmax(logits[b, positions[r] - 1] / temperature, dim=-1)
            t = probs[b, r].double()
            s = p[ids[b, r]]
            if divergence == "kl":
                rows.append((t * (t.log() - s.log())).sum())
            elif divergence == "rkl":
                rows.append((s * (s.log() - t.log())).sum())
            else:
                m = beta * t + (1 - beta) * s
                rows.append(beta * (t * (t.log() - m.log())).sum() + (1 - beta) * (s * (s.log() - m.log())).sum())
        per_example.append(torch.stack(rows).mean())
    return torch.stack(per_example).mean()


def test_rows_and_examples_are_masked_and_reduced_like_uld():
    logits, labels, probs, ids, lengths = _batch(vocab=30, k=5, full=False, seed=4)
    mean = kl_family_loss(logits, labels, probs, ids, lengths)
    total = kl_family_loss(logits, labels, probs, ids, lengths, reduction="sum")
    assert total.item() == pytest.approx(2 * mean.item(), rel=1e-6)
    # an example without teacher rows is left out of the mean, and contributes nothing to the sum
    none = kl_family_loss(logits, labels, probs, ids, torch.tensor([4, 0]))
    only_first = kl_family_loss(logits[:1], labels[:1], probs[:1], ids[:1], lengths[:1])
    assert none.item() == pytest.approx(only_first.item(), rel=1e-6)
    # unmatched teacher entries carry mass into the rest bucket: the value changes, stays finite
    masked = ids.clone()
    masked[..., 0] = -1
    other = kl_family_loss(logits, labels, probs, masked, lengths)
    assert math.isfinite(other.item()) and other.item() != pytest.approx(mean.item())
    # a zero stored probability and a zero tail never take a log of zero
    zeros = probs.clone()
    zeros[..., -1] = 0.0
    for divergence in ("kl", "rkl", "jsd"):
        assert math.isfinite(float(kl_family_loss(logits, labels, zeros, ids, lengths, divergence=divergence)))
    empty = kl_family_loss(logits, torch.full((2, 7), -100), probs, ids, lengths)
    assert empty.item() == 0.0 and empty.requires_grad


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
def test_full_rows_equal_trls_gkd_generalized_jsd(beta):
    gkd = pytest.importorskip("trl.experimental.gkd.gkd_trainer")
    vocab = 32
    gen = torch.Generator().manual_seed(5)
    student = torch.randn(1, 4, vocab, generator=gen) * 2
    teacher = torch.randn(1, 4, vocab, generator=gen) * 2
    labels = torch.full((1, 5), -100)
    labels[0, 1:5] = torch.tensor([3, 4, 5, 1])  # rows 0..3 predict the four answer tokens; row 3 predicts EOS
    logits = torch.cat([student, torch.zeros(1, 1, vocab)], dim=1)  # [1, 5, V]: the last row predicts nothing
    top = torch.softmax(teacher, dim=-1).topk(vocab, dim=-1)
    ours = kl_family_loss(
        logits, labels, top.values, top.indices, torch.tensor([4]), divergence="jsd", beta=beta, skip_student_eos=False
    )
    # GKD over the same four rows: summed over the vocabulary, averaged over the rows (batchmean of one row each)
    theirs = gkd.GKDTrainer.generalized_jsd_loss(student[0], teacher[0], beta=beta, reduction="batchmean")
    assert ours.item() == pytest.approx(float(theirs), rel=1e-5, abs=1e-6)
