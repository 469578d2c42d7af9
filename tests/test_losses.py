import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.losses.ce import answer_tokens, causal_lm_ce
from pipeline.losses.uld import uld_loss, uld_pairs

EOS = 2


def reference_uld(logits, labels, teacher_probs, teacher_lengths, temperature=1.0, skip_student_eos=True):
    """ULD the slow way, in the official form: answer start + size, full sort, explicit padding, float64."""
    per_example = []
    for b in range(logits.shape[0]):
        answer_positions = [p for p in range(labels.shape[1]) if labels[b, p].item() != -100]
        if not answer_positions:
            continue
        start = answer_positions[0] - 1
        size = len(answer_positions) - int(skip_student_eos)
        n = min(size, int(teacher_lengths[b]))
        if n <= 0:
            continue
        distances = []
        for r in range(n):
            student = torch.softmax(logits[b, start + r].double() / temperature, dim=-1)
            student = torch.sort(student, descending=True).values
            teacher = teacher_probs[b, r].double()
            width = max(student.shape[0], teacher.shape[0])
            student = torch.cat([student, student.new_zeros(width - student.shape[0])])
            teacher = torch.cat([teacher, teacher.new_zeros(width - teacher.shape[0])])
            distances.append((student - teacher).abs().sum())
        per_example.append(torch.stack(distances).mean())
    if not per_example:
        return logits.sum() * 0.0
    return torch.stack(per_example).mean()


def paired_rows(labels, teacher_lengths, skip_student_eos=True):
    """Set of (b, row) logits rows the loss should read."""
    rows = set()
    for b in range(labels.shape[0]):
        answer_positions = [p for p in range(labels.shape[1]) if labels[b, p].item() != -100]
        n = min(len(answer_positions) - int(skip_student_eos), int(teacher_lengths[b]))
        rows.update((b, p - 1) for p in answer_positions[: max(n, 0)])
    return rows


def random_batch(batch, seq, vocab, top_k, *, dense, seed):
    """Right-padded prompt + answer batch with a cached teacher that is k-sparse or the top-k of a dense one."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, seq, vocab, generator=gen) * 3.0
    labels = torch.full((batch, seq), -100)
    answer_sizes = []
    for b in range(batch):
        prompt = int(torch.randint(1, seq // 2 + 1, (1,), generator=gen))
        size = int(torch.randint(2, seq - prompt + 1, (1,), generator=gen))  # the rest of the row is padding
        labels[b, prompt : prompt + size] = torch.randint(3, 1000, (size,), generator=gen)
        labels[b, prompt + size - 1] = EOS
        answer_sizes.append(size)
    # Teacher rows: sometimes fewer, sometimes more than the student's answer rows.
    teacher_lengths = torch.tensor([max(0, s + int(torch.randint(-2, 3, (1,), generator=gen))) for s in answer_sizes])
    teacher_lengths[0] = teacher_lengths[0].clamp(min=1)  # at least one example is not empty
    teacher_rows = int(teacher_lengths.max()) + 1
    if dense:
        full = torch.softmax(torch.randn(batch, teacher_rows, top_k + 40, generator=gen) * 2.0, dim=-1)
        teacher = full.topk(top_k, dim=-1).values  # tail mass > 0
    else:
        teacher = torch.rand(batch, teacher_rows, top_k, generator=gen) ** 3
        teacher = torch.sort(teacher / teacher.sum(-1, keepdim=True), descending=True).values
    row_ids = torch.arange(teacher_rows)[None, :, None]
    teacher = torch.where(row_ids < teacher_lengths[:, None, None], teacher, 0.0)  # zero rows as padding
    return logits, labels, teacher, teacher_lengths


SHAPES = [  # batch, seq, student vocab, teacher k
    (1, 6, 7, 3),
    (3, 12, 50, 8),
    (4, 16, 5, 9),  # student vocab smaller than k
    (2, 10, 9, 9),
    (5, 24, 300, 32),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-T{}-V{}-k{}".format(*s))
@pytest.mark.parametrize("dense", [False, True], ids=["sparse-teacher", "dense-teacher"])
@pytest.mark.parametrize("skip_student_eos", [True, False], ids=["skip-eos", "keep-eos"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_value_and_gradient_match_reference(shape, dense, skip_student_eos, temperature):
    logits, labels, teacher, lengths = random_batch(*shape, dense=dense, seed=sum(shape) + 7 * dense)
    logits.requires_grad_(True)
    kwargs = {"student_temperature": temperature, "skip_student_eos": skip_student_eos}

    loss = uld_loss(logits, labels, teacher, lengths, **kwargs)
    expected = reference_uld(logits, labels, teacher, lengths, temperature, skip_student_eos)
    (grad,) = torch.autograd.grad(loss, logits)
    (expected_grad,) = torch.autograd.grad(expected, logits)

    assert loss.dtype == torch.float32 and loss.shape == ()
    assert expected.item() > 0
    torch.testing.assert_close(loss.double(), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-6)


def test_hand_computed_case():
    probs = [
        # example 0: rows predicting labels 1 and 2, the row predicting EOS, the row after EOS
        [[0.2, 0.3, 0.5], [0.1, 0.7, 0.2], [0.3, 0.3, 0.4], [0.5, 0.3, 0.2]],
        # example 1: a prompt row, the row predicting label 2, the row predicting EOS, the row after EOS
        [[0.3, 0.3, 0.4], [0.25, 0.25, 0.5], [0.2, 0.2, 0.6], [0.4, 0.3, 0.3]],
    ]
    logits = torch.tensor(probs).log()
    labels = torch.tensor([[-100, 7, 8, EOS], [-100, -100, 4, EOS]])
    teacher = torch.tensor([[[0.6, 0.4], [0.5, 0.5], [0.0, 0.0]], [[1.0, 0.0], [0.8, 0.2], [0.7, 0.3]]])
    lengths = torch.tensor([2, 3])

    # skip EOS: example 0 rows 0-1 vs teacher rows 0-1: (0.1 + 0.1 + 0.2 + 0.2 + 0.3 + 0.1) / 2 = 0.5;
    # example 1 row 2 vs teacher row 0: sorted (0.5, 0.25, 0.25) vs (1, 0, 0) = 1.0.  Mean: 0.75.
    assert uld_loss(logits, labels, teacher, lengths).item() == pytest.approx(0.75, abs=1e-6)
    # keep EOS: example 0 is cut to its 2 teacher rows: 0.5; example 1 rows 1-2:
    # (1.0 + |0.6 - 0.8| + |0.2 - 0.2| + 0.2) / 2 = 0.7.  Mean: 0.6.
    assert uld_loss(logits, labels, teacher, lengths, skip_student_eos=False).item() == pytest.approx(0.6, abs=1e-6)
    # temperature 0.5 squares and renormalises: example 0 row 0 (25, 9, 4)/38 vs (0.6, 0.4, 0) = 12.4/38,
    # row 1 sorted (49, 4, 1)/54 vs (0.5, 0.5, 0) = 46/54; example 1 (4, 1, 1)/6 vs (1, 0, 0) = 2/3.
    loss = uld_loss(logits, labels, teacher, lengths, student_temperature=0.5)
    assert loss.item() == pytest.approx(((12.4 / 38 + 46 / 54) / 2 + 2 / 3) / 2, abs=1e-6)


@pytest.mark.parametrize("extra", [0, 3], ids=["k-equals-vocab", "k-above-vocab"])
def test_student_equal_to_teacher_gives_zero(extra):
    logits, labels, _, lengths = random_batch(3, 12, 6, 6, dense=False, seed=3)
    rows = sorted(paired_rows(labels, lengths))
    teacher = torch.zeros(3, int(lengths.max()), 6 + extra)
    for b, row in rows:
        r = sum(1 for bb, rr in rows if bb == b and rr < row)
        teacher[b, r, :6] = torch.sort(torch.softmax(logits[b, row], -1), descending=True).values

    assert uld_loss(logits, labels, teacher, lengths).item() == pytest.approx(0.0, abs=1e-6)


def test_masked_rows_are_ignored():
    logits, labels, teacher, lengths = random_batch(4, 16, 40, 8, dense=True, seed=11)
    loss = uld_loss(logits, labels, teacher, lengths)
    read = paired_rows(labels, lengths)
    unread = torch.ones(logits.shape[:2], dtype=torch.bool)
    for b, row in read:
        unread[b, row] = False
    assert unread.any()

    noisy_logits = torch.where(unread[..., None], torch.randn_like(logits) * 10, logits)
    teacher_pad = torch.arange(teacher.shape[1])[None, :, None] >= lengths[:, None, None]
    noisy_teacher = torch.where(teacher_pad, torch.rand_like(teacher), teacher)
    assert torch.equal(uld_loss(noisy_logits, labels, noisy_teacher, lengths), loss)

    # ... while the rows that are read do matter.
    b, row = min(read)
    changed = logits.clone()
    changed[b, row] = changed[b, row].flip(0) * 2
    assert uld_loss(changed, labels, teacher, lengths).item() != pytest.approx(loss.item(), abs=1e-4)


@pytest.mark.parametrize("skip_student_eos", [True, False])
def test_gradient_reaches_exactly_the_answer_rows(skip_student_eos):
    logits, labels, teacher, lengths = random_batch(4, 16, 40, 8, dense=False, seed=5)
    logits.requires_grad_(True)
    uld_loss(logits, labels, teacher, lengths, skip_student_eos=skip_student_eos).backward()

    has_grad = logits.grad.abs().sum(-1) > 0  # [B, T]
    expected = torch.zeros_like(has_grad)
    for b, row in paired_rows(labels, lengths, skip_student_eos):
        expected[b, row] = True
    assert expected.any()
    assert torch.equal(has_grad, expected)


def test_example_without_answer_rows_is_left_out_of_the_mean():
    logits, labels, teacher, lengths = random_batch(3, 12, 30, 8, dense=True, seed=2)
    lengths = lengths.clamp(min=1)
    labels[1] = -100  # no answer at all
    lengths[2] = 0  # no teacher rows
    labels[0, :] = -100
    labels[0, 3:5] = torch.tensor([9, EOS])  # one answer row once EOS is skipped

    loss = uld_loss(logits, labels, teacher, lengths)
    alone = uld_loss(logits[:1], labels[:1], teacher[:1], lengths[:1])
    assert loss.item() == pytest.approx(alone.item(), abs=1e-7)
    assert loss.item() == pytest.approx(reference_uld(logits, labels, teacher, lengths).item(), abs=1e-6)


def test_no_answer_rows_anywhere_gives_a_connected_zero():
    logits = torch.randn(2, 5, 11, requires_grad=True)
    labels = torch.full((2, 5), -100)
    labels[1, 4] = EOS  # an EOS-only answer: nothing left once it is skipped
    teacher = torch.rand(2, 3, 4)

    loss = uld_loss(logits, labels, teacher, torch.tensor([3, 3]))
    assert loss.item() == 0.0 and loss.dtype == torch.float32
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_bfloat16_logits_are_compared_in_float32():
    logits, labels, teacher, lengths = random_batch(2, 10, 64, 8, dense=True, seed=9)
    low = logits.bfloat16()

    loss = uld_loss(low, labels, teacher, lengths)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(reference_uld(low.float(), labels, teacher, lengths).item(), abs=1e-6)


def test_teacher_lengths_beyond_the_teacher_rows_are_an_error():
    logits, labels, teacher, lengths = random_batch(2, 10, 20, 4, dense=False, seed=1)
    with pytest.raises(ValueError, match="teacher_lengths"):
        uld_loss(logits, labels, teacher, lengths + teacher.shape[1])


def test_causal_lm_ce_matches_shifted_cross_entropy():
    logits, labels, _, _ = random_batch(3, 12, 50, 4, dense=False, seed=4)
    labels = labels.clamp(max=49).where(labels != -100, -100)
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 50), labels[:, 1:].reshape(-1), ignore_index=-100)

    torch.testing.assert_close(causal_lm_ce(logits, labels), expected)
    uniform = causal_lm_ce(torch.zeros_like(logits), labels)
    assert uniform.item() == pytest.approx(math.log(50), rel=1e-6)


def test_causal_lm_ce_without_answer_tokens_is_a_connected_zero():
    logits = torch.randn(2, 4, 7, requires_grad=True)
    loss = causal_lm_ce(logits, torch.full((2, 4), -100))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_sums_over_parts_divided_by_whole_batch_counts_give_the_whole_batch_mean():
    """How distill splits a step over micro-batches and processes: Σ parts' sums / whole-batch counts = mean."""
    logits, labels, teacher, lengths = random_batch(6, 12, 1000, 8, dense=True, seed=3)  # labels < 1000
    lengths[2] = 0  # an example without paired rows counts for CE but not for ULD
    whole = logits.clone().requires_grad_(True)
    split = logits.clone().requires_grad_(True)
    ce_mean, uld_mean = causal_lm_ce(whole, labels), uld_loss(whole, labels, teacher, lengths)
    (ce_mean + uld_mean).backward()
    tokens = answer_tokens(labels)
    pairs = int((uld_pairs(labels, lengths) > 0).sum())
    assert pairs == len({b for b, _ in paired_rows(labels, lengths)}) < 6 and tokens == int((labels != -100).sum())
    ce_parts = uld_parts = 0.0
    for part in (slice(0, 1), slice(1, 4), slice(4, 6)):
        ce = causal_lm_ce(split[part], labels[part], reduction="sum")
        uld = uld_loss(split[part], labels[part], teacher[part], lengths[part], reduction="sum")
        (ce / tokens + uld / pairs).backward()
        ce_parts, uld_parts = ce_parts + ce.item(), uld_parts + uld.item()
    assert ce_parts / tokens == pytest.approx(ce_mean.item(), rel=1e-6)
    assert uld_parts / pairs == pytest.approx(uld_mean.item(), rel=1e-6)
    torch.testing.assert_close(split.grad, whole.grad, rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="reduction"):
        causal_lm_ce(logits, labels, reduction="none")
