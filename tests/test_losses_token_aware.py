"""uld-aligned and hybrid against independent float64 references on hand-made tokenizations of one answer, and on
answers whose characters a byte-level BPE splits into several tokens (accented, CJK, emoji)."""

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from cache_schema import UNKNOWN_ID
from pipeline.alignment import TeacherRows, align_batch, vocab_map
from pipeline.losses.token_aware import hybrid_loss, uld_aligned_loss
from pipeline.text import TextEncoder, TextSpec

ANSWER = b"the cat sat"  # 11 bytes; EOS rows have the zero-width span (11, 11)
EOS = (11, 11)
# (student spans, teacher spans), answer tokens only; each case also gets an EOS row on both sides.
TOKENIZATIONS = {
    "one-to-one": ([(0, 3), (3, 7), (7, 11)], [(0, 3), (3, 7), (7, 11)]),
    "one-to-many": ([(0, 7), (7, 11)], [(0, 3), (3, 7), (7, 9), (9, 11)]),
    "many-to-one": ([(0, 1), (1, 3), (3, 7), (7, 11)], [(0, 3), (3, 11)]),
    "no-overlap": ([(0, 2), (2, 5), (5, 11)], [(0, 1), (1, 4), (4, 9), (9, 11)]),
}
# Characters split into byte tokens, byte-exact spans as the text contract gives them (cache v1.3); other answers,
# so each case's EOS is at its own end.
SPLIT_CHARACTERS = {
    # "café sat" (9 bytes): the student has é as its 2 bytes, the teacher has "café" whole
    "accented": ([(0, 3), (3, 4), (4, 5), (5, 9)], [(0, 5), (5, 9)]),
    # "東京" (6 bytes): the student splits each character 2 + 1 and 1 + 2, the teacher keeps them whole
    "cjk": ([(0, 2), (2, 3), (3, 4), (4, 6)], [(0, 3), (3, 6)]),
    # "東京" again, the student's middle token straddling both characters: no boundary but the end
    "cjk-straddling": ([(0, 2), (2, 4), (4, 6)], [(0, 3), (3, 6)]),
    # "a 🙂 b" (8 bytes): the student has the emoji's 4 bytes, the teacher " " + 3 of them and the last: both end
    # at the emoji's third byte, a group inside the character
    "emoji": ([(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 8)], [(0, 1), (1, 5), (5, 6), (6, 8)]),
}
VS, VT, K = 13, 11, 5


def _vocabularies() -> tuple[list[bytes], list[bytes]]:
    """Teacher and student byte strings: ids 0 special, some strings shared (in another order), some not."""
    shared = [b" the", b" cat", b"s", b"at", b" ", b"t"]
    teacher = [b"", *shared, b"xa", b"xb", b"xc", b"xd"]
    student = [b"", b"ya", *reversed(shared), b"yb", b"yc", b"yd", b"ye", b"t"]  # b"t" twice: first wins
    assert len(teacher) == VT and len(student) == VS
    return teacher, student


def _make_batch(cases: list[str], seed: int, with_eos: bool = True, table: dict | None = None):
    """Random student logits and dense teacher distributions for one example per case (of ``table``, by default
    the hand-made ones)."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    table = table or {**TOKENIZATIONS, **SPLIT_CHARACTERS}
    examples = []
    width = 0
    for name in cases:
        s_spans, t_spans = table[name]
        size = t_spans[-1][1]
        s_spans = [*s_spans, (size, size)] if with_eos else list(s_spans)
        t_spans = [*t_spans, (size, size)]
        prompt = int(rng.integers(2, 5))
        answer = rng.integers(1, VS, len(s_spans)).tolist()
        dense = torch.softmax(torch.randn(len(t_spans), VT, generator=gen, dtype=torch.float64) * 2, -1)
        t_tokens = rng.integers(1, VT, len(t_spans))
        examples.append((prompt, answer, np.array(s_spans), np.array(t_spans), dense, t_tokens))
        width = max(width, prompt + len(answer) + 2)
    logits = torch.randn(len(cases), width, VS, generator=gen, dtype=torch.float64)
    return logits, examples


def _cached(dense: torch.Tensor, t_tokens: np.ndarray, t_spans: np.ndarray, ids_k: int = K) -> TeacherRows:
    """The rows as a cache returns them; one keeping the ids of the first ``ids_k`` entries only (v1.2) returns
    UNKNOWN_ID for the others."""
    top = dense.float().topk(K, dim=-1)
    label = dense[np.arange(len(t_tokens)), t_tokens].float().numpy()
    ids = top.indices.int().numpy()
    ids[:, ids_k:] = UNKNOWN_ID
    return TeacherRows(top.values.numpy(), ids, t_spans.astype(np.int32), label)


def _aligned(examples, skip_student_eos=True, vocab=None, ids_k=K):
    return align_batch(
        [p - 1 for p, *_ in examples],
        [a for _, a, *_ in examples],
        [s for _, _, s, *_ in examples],
        [_cached(d, tok, t, ids_k) for *_, t, d, tok in examples],
        skip_student_eos=skip_student_eos,
        vocab=vocab,
    )


# ---------------------------------------------------------------------------------------------- references


def _reference_groups(s_spans, t_spans, skip_eos: bool):
    """Groups from the set of byte ends both sides share; EOS rows (zero width at the end) paired apart. A row of
    zero width at the start (a token holding only the space before the answer) joins the first group, or pairs
    with the other side's such row, as the walk does; the cases have no zero-width row elsewhere."""
    size = t_spans[-1][1]  # the answer's bytes: the teacher's EOS row is the last, at the end
    s_real = [j for j, (a, b) in enumerate(s_spans) if not a == b == size]
    t_real = [j for j, (a, b) in enumerate(t_spans) if not a == b == size]
    for spans, real in ((s_spans, s_real), (t_spans, t_real)):
        assert all(spans[j][0] < spans[j][1] or spans[j][1] == 0 for j in real)
    common = sorted({s_spans[j][1] for j in s_real} & {t_spans[j][1] for j in t_real})
    groups, lo = [], -1
    for end in common:
        s_rows = [j for j in s_real if lo < s_spans[j][1] <= end]
        t_rows = [j for j in t_real if lo < t_spans[j][1] <= end]
        groups.append((s_rows, t_rows))
        lo = end
    if not skip_eos:
        groups.append(([j for j in range(len(s_spans)) if j not in s_real], [len(t_spans) - 1]))
    return groups


def _reference_vectors(logits_b, prompt, answer, dense, t_tokens, s_rows, t_rows, tau):
    """Merged student [Vs] and teacher [Vt] vectors of one group, float64, the teacher zero beyond its top-k."""
    rows = torch.softmax(logits_b[prompt - 1 : prompt - 1 + len(answer)] / tau, -1)  # row j predicts answer[j]
    student = rows[s_rows[0]] * torch.prod(torch.stack([rows[j, answer[j]] for j in s_rows[1:]] + [rows.new_ones(())]))
    first = dense[t_rows[0]]
    kept = torch.zeros_like(first)
    top = first.topk(K).indices
    kept[top] = first[top]
    scale = np.prod([float(dense[j, t_tokens[j]]) for j in t_rows[1:]])
    return student, kept * scale, top


def _reference(logits, examples, kind: str, tau=1.0, skip_eos=True, ids_k=K):
    """The mean over examples of the mean group distance. With ``ids_k`` < K the teacher entries past the first
    ``ids_k`` have no identity: zero on every vocabulary entry, their values joining the unmatched ones."""
    teacher_vocab, student_vocab = _vocabularies()
    per_example = []
    for b, (prompt, answer, s_spans, t_spans, dense, t_tokens) in enumerate(examples):
        s_list, t_list = [tuple(x) for x in s_spans.tolist()], [tuple(x) for x in t_spans.tolist()]
        distances = []
        for s_rows, t_rows in _reference_groups(s_list, t_list, skip_eos):
            s, t, top = _reference_vectors(logits[b], prompt, answer, dense, t_tokens, s_rows, t_rows, tau)
            if kind == "uld-aligned":
                width = max(VS, VT)
                s_sorted = torch.nn.functional.pad(s.sort(descending=True).values, (0, width - VS))
                t_sorted = torch.nn.functional.pad(t.sort(descending=True).values, (0, width - VT))
                distances.append((s_sorted - t_sorted).abs().sum())
                continue
            pairs = {}  # teacher id -> student id, exact byte strings, one-to-one
            for tid, tb in enumerate(teacher_vocab):
                for sid, sb in enumerate(student_vocab):
                    if tb and tb == sb and sid not in pairs.values() and tid not in pairs:
                        pairs[tid] = sid
            w = len(pairs) / VT
            anonymous = t[top[ids_k:]]  # values whose token the cache forgot
            t = t.clone()
            t[top[ids_k:]] = 0.0
            matched = sum((s[sid] - t[tid]).abs() for tid, sid in pairs.items())
            s_rest = torch.stack([s[i] for i in range(VS) if i not in pairs.values()]).sort(descending=True).values
            t_rest = torch.cat([torch.stack([t[i] for i in range(VT) if i not in pairs]), anonymous])
            t_rest = t_rest.sort(descending=True).values
            width = max(len(s_rest), len(t_rest))
            rest = (
                torch.nn.functional.pad(s_rest, (0, width - len(s_rest)))
                - torch.nn.functional.pad(t_rest, (0, width - len(t_rest)))
            ).abs()
            distances.append(w * matched + (1 - w) * rest.sum())
        if distances:
            per_example.append(torch.stack(distances).mean())
    return torch.stack(per_example).mean()


def _loss(kind, logits, aligned, vmap, tau=1.0):
    if kind == "uld-aligned":
        return uld_aligned_loss(logits, aligned, student_temperature=tau)
    matched = torch.from_numpy(vmap.student_matched)
    return hybrid_loss(logits, aligned, matched, vmap.matched_share, student_temperature=tau)


# ---------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("kind", ["uld-aligned", "hybrid"])
@pytest.mark.parametrize("case", [*TOKENIZATIONS, *SPLIT_CHARACTERS, "all"])
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_value_and_gradient_match_the_float64_reference(kind, case, tau):
    cases = [*TOKENIZATIONS, *SPLIT_CHARACTERS] if case == "all" else [case]
    logits, examples = _make_batch(cases, seed=len(case) + int(tau))
    vmap = vocab_map(*_vocabularies())
    aligned = _aligned(examples, vocab=vmap)
    mine_logits = logits.float().requires_grad_(True)
    ref_logits = logits.clone().requires_grad_(True)
    mine = _loss(kind, mine_logits, aligned, vmap, tau)
    ref = _reference(ref_logits, examples, kind, tau)
    mine.backward()
    ref.backward()
    assert mine.item() == pytest.approx(ref.item(), abs=2e-6)
    torch.testing.assert_close(mine_logits.grad.double(), ref_logits.grad, atol=2e-6, rtol=1e-4)


@pytest.mark.parametrize("ids_k", [1, 3])
def test_hybrid_on_ids_of_the_first_entries_only_matches_the_reference(ids_k):
    logits, examples = _make_batch(list(TOKENIZATIONS), seed=11 + ids_k)
    vmap = vocab_map(*_vocabularies())
    aligned = _aligned(examples, vocab=vmap, ids_k=ids_k)
    mine_logits = logits.float().requires_grad_(True)
    ref_logits = logits.clone().requires_grad_(True)
    mine = _loss("hybrid", mine_logits, aligned, vmap)
    ref = _reference(ref_logits, examples, "hybrid", ids_k=ids_k)
    mine.backward()
    ref.backward()
    assert mine.item() == pytest.approx(ref.item(), abs=2e-6)
    torch.testing.assert_close(mine_logits.grad.double(), ref_logits.grad, atol=2e-6, rtol=1e-4)
    full = _loss("hybrid", logits.float(), _aligned(examples, vocab=vmap), vmap)
    assert abs(full.item() - mine.item()) > 1e-4  # forgetting identities changes the loss


@pytest.mark.parametrize("kind", ["uld-aligned", "hybrid"])
def test_eos_rows_pair_with_each_other_when_kept(kind):
    logits, examples = _make_batch(list(TOKENIZATIONS), seed=3)
    vmap = vocab_map(*_vocabularies())
    aligned = _aligned(examples, skip_student_eos=False, vocab=vmap)
    assert aligned.groups.tolist() == [4, 3, 3, 2]  # the content groups plus EOS <-> EOS
    value = _loss(kind, logits.float(), aligned, vmap)
    assert value.item() == pytest.approx(_reference(logits, examples, kind, skip_eos=False).item(), abs=2e-6)


def test_groups_of_split_characters_close_only_where_both_sides_end_on_the_same_byte():
    _, examples = _make_batch(list(SPLIT_CHARACTERS), seed=0)
    aligned = _aligned(examples)
    assert aligned.groups.tolist() == [2, 2, 1, 4]
    # emoji: the student's " " and first 3 bytes with the teacher's " " + 3 bytes, then the last byte on both sides
    emoji = aligned.groups[:3].sum().item()
    prompt = examples[3][0]
    assert aligned.student_t[emoji : emoji + 4].tolist() == [prompt - 1 + j for j in (0, 1, 5, 6)]


@pytest.mark.parametrize("kind", ["uld-aligned", "hybrid"])
def test_split_characters_of_the_demo_tokenizers_match_the_float64_reference(kind, demo_models):
    """The spans from the text contract itself: the demo student (byte-level BPE) splits é, ï, CJK and emoji into
    bytes, the demo teacher (SentencePiece) has each as one <unk>; ids are drawn from the small test vocabularies."""
    student = TextEncoder(AutoTokenizer.from_pretrained(demo_models["student"]), TextSpec("causal", 512, 64))
    teacher = TextEncoder(AutoTokenizer.from_pretrained(demo_models["teacher"]), TextSpec("seq2seq", 512, 64))
    answers = ["café sat", "東京タワーです", "a 🙂 b", "naïve résumé", "Zürich 😀👍🏽 x"]
    table = {a: tuple(enc.encode("q", a).answer_spans[:-1].tolist() for enc in (student, teacher)) for a in answers}
    for answer, (s_spans, _) in table.items():  # the student ends some tokens inside a character
        boundaries = set(np.cumsum([0, *(len(c.encode()) for c in answer)]).tolist())
        assert any(end not in boundaries for _, end in s_spans), answer
    logits, examples = _make_batch(answers, seed=21, table=table)
    vmap = vocab_map(*_vocabularies())
    aligned = _aligned(examples, vocab=vmap)
    mine_logits = logits.float().requires_grad_(True)
    ref_logits = logits.clone().requires_grad_(True)
    mine = _loss(kind, mine_logits, aligned, vmap)
    ref = _reference(ref_logits, examples, kind)
    mine.backward()
    ref.backward()
    assert mine.item() == pytest.approx(ref.item(), abs=2e-6)
    torch.testing.assert_close(mine_logits.grad.double(), ref_logits.grad, atol=2e-6, rtol=1e-4)


def test_groups_of_the_hand_made_tokenizations():
    _, examples = _make_batch(list(TOKENIZATIONS), seed=0)
    aligned = _aligned(examples)
    assert aligned.groups.tolist() == [3, 2, 2, 1]
    # many-to-one: the student's rows 0 and 1 (bytes 0-3) make one group; row 1 (logits position prompt) is a later row
    prompt, answer = examples[2][0], examples[2][1]
    third = aligned.groups[:2].sum().item()
    assert aligned.student_t[third].item() == prompt - 1
    assert (prompt, answer[1]) in {
        (t, tok) for t, tok in zip(aligned.extra_t.tolist(), aligned.extra_token.tolist(), strict=True)
    }


@pytest.mark.parametrize("kind", ["uld-aligned", "hybrid"])
def test_a_student_equal_to_the_teacher_gives_zero(kind):
    """Same vocabulary, same tokenization, the whole distribution cached: nothing to learn."""
    vocab = [b"", *(f"w{i}".encode() for i in range(1, 8))]
    dense = torch.softmax(torch.randn(4, 8, dtype=torch.float64), -1)
    spans = np.array([(0, 3), (3, 7), (7, 11), EOS])
    rows = TeacherRows(
        dense.float().sort(-1, descending=True).values.numpy(),
        dense.sort(-1, descending=True).indices.int().numpy(),
        spans.astype(np.int32),
        dense[np.arange(4), [1, 2, 3, 0]].float().numpy(),
    )
    logits = torch.zeros(1, 8, 8)
    logits[0, 1:5] = dense.log().float()  # prompt of 2: row 1 predicts answer token 0
    vmap = vocab_map(vocab, vocab)
    aligned = align_batch([1], [[1, 2, 3, 0]], [spans], [rows], vocab=vmap)
    assert _loss(kind, logits, aligned, vmap).item() == pytest.approx(0.0, abs=1e-5)


def test_gradient_reaches_only_the_grouped_rows():
    logits, examples = _make_batch(["one-to-many", "no-overlap"], seed=5)
    logits = logits.float().requires_grad_(True)
    aligned = _aligned(examples)
    uld_aligned_loss(logits, aligned).backward()
    touched = set(zip(aligned.example.tolist(), aligned.student_t.tolist(), strict=True))
    touched |= {
        (aligned.example[g].item(), t)
        for g, t in zip(aligned.extra_group.tolist(), aligned.extra_t.tolist(), strict=True)
    }
    reached = {(b, t) for b, t in (logits.grad.abs().sum(-1) > 0).nonzero().tolist()}
    # a row can get an exactly zero gradient (a sorted L1 whose signs all agree is flat through the softmax)
    assert reached <= touched and {b for b, _ in reached} == {0, 1}


def test_a_teacher_cut_short_leaves_the_uncovered_student_rows_out():
    """Teacher rows stop at byte 7 (its answer was cut): the student's token (7, 11) has no partner."""
    s_spans = np.array([(0, 3), (3, 7), (7, 11), EOS])
    t_spans = np.array([(0, 3), (3, 7)], dtype=np.int32)
    rows = TeacherRows(np.full((2, K), 0.2, np.float32), np.ones((2, K), np.int32), t_spans, np.ones(2, np.float32))
    aligned = align_batch([0], [[1, 2, 3, 4]], [s_spans], [rows])
    assert aligned.groups.tolist() == [2] and aligned.student_t.tolist() == [0, 1]


def test_no_group_anywhere_gives_a_connected_zero():
    s_spans = np.array([(0, 5), EOS])
    t_spans = np.array([(0, 3)], dtype=np.int32)
    rows = TeacherRows(np.full((1, K), 0.2, np.float32), np.ones((1, K), np.int32), t_spans, np.ones(1, np.float32))
    logits = torch.randn(1, 4, VS, requires_grad=True)
    aligned = align_batch([0], [[1, 2]], [s_spans], [rows])
    loss = uld_aligned_loss(logits, aligned)
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


def test_hybrid_without_mapped_ids_is_an_error():
    logits, examples = _make_batch(["one-to-one"], seed=1)
    with pytest.raises(ValueError, match="needs the teacher top-k ids mapped"):
        hybrid_loss(logits, _aligned(examples), torch.zeros(VS, dtype=torch.bool), 0.5)


def test_sums_over_parts_divided_by_whole_batch_counts_give_the_whole_batch_mean():
    logits, examples = _make_batch(list(TOKENIZATIONS), seed=7)
    whole = uld_aligned_loss(logits.float(), _aligned(examples))
    parts = [(slice(0, 1), examples[:1]), (slice(1, 4), examples[1:])]
    total = sum(uld_aligned_loss(logits[s].float(), _aligned(e), reduction="sum") for s, e in parts)
    assert (total / 4).item() == pytest.approx(whole.item(), rel=1e-6)
