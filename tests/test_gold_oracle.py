"""uld-aligned and hybrid against TRL GOLD's own code (``trl.experimental.gold``, TRL 1.16), run on the same rows.

GOLD's ``ULDLoss`` with ``use_extended_uld=True`` is the oracle: its byte-offset walk, its merge and its sorted L1,
fed the same student logits, the same dense teacher distributions and GOLD's own byte offsets
(``trl.experimental.utils.encode_with_byte_offsets``), while kdpipe gets its spans from its text contract. Two
things are set so that both compute the same quantity, and nothing else of GOLD's is changed:

- the row convention. kdpipe's cache stores row j as the distribution that predicts answer token j. GOLD's
  ``"observed"`` strategy slices the logits at the answer positions themselves (row j predicts token j + 1), so it
  is given the logits shifted by one position: its merge, the first row's distribution times the probabilities of
  the group's later tokens, is then kdpipe's. (GOLD's ``"bayesian"`` strategy has this row convention but merges
  onto the group's last row; kdpipe does not offer it, see ``pipeline.alignment``.)
- hybrid: GOLD compares the matched vocabulary entries with a generalized JSD, kdpipe with L1 (the reason is in
  ``pipeline.losses.hybrid_loss``), so GOLD's matched-token divergence is replaced by the L1 over the matched
  entries, averaged over the groups as GOLD averages its JSD; and GOLD is given kdpipe's byte-string vocabulary map
  (GOLD matches token strings, the same for two byte-level BPEs on every token that is not special).

The teacher keeps its whole vocabulary (k = Vt), so the cache's top-k cut plays no part.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from pipeline.alignment import TeacherRows, align_batch, align_spans, vocab_map
from pipeline.losses.token_aware import hybrid_loss, uld_aligned_loss
from pipeline.text import TextEncoder, TextSpec, split_characters, token_bytes

gold = pytest.importorskip("trl.experimental.gold.gold_trainer")
trl_utils = pytest.importorskip("trl.experimental.utils")

# Characters split over several byte tokens by the demo student (é, ï, CJK, emoji), and kept whole by the teacher.
SPLIT_ANSWERS = ["café sat", "東京タワーです", "a 🙂 b", "naïve résumé", "Zürich 😀👍🏽 x"]
# Hand-made spans of "the cat sat" (11 bytes), answer tokens only: (student, teacher).
HAND_MADE = {
    "one-to-one": ([(0, 3), (3, 7), (7, 11)], [(0, 3), (3, 7), (7, 11)]),
    "one-to-many": ([(0, 7), (7, 11)], [(0, 3), (3, 7), (7, 9), (9, 11)]),
    "many-to-one": ([(0, 1), (1, 3), (3, 7), (7, 11)], [(0, 3), (3, 11)]),
    "no-overlap": ([(0, 2), (2, 5), (5, 11)], [(0, 1), (1, 4), (4, 9), (9, 11)]),
}
TOLERANCE = 1e-6  # on the value and on every gradient entry: kdpipe's float32 against GOLD in float64


@pytest.fixture(scope="module")
def student(demo_models):
    return AutoTokenizer.from_pretrained(demo_models["student"])


@pytest.fixture(scope="module")
def teacher():
    """A byte-level BPE other than the student's, trained here on the answers so that their characters are whole."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700, special_tokens=["</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([" " + a for a in SPLIT_ANSWERS] * 50 + ["the cat sat on the mat"] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>")


# ---------------------------------------------------------------------------------------------- one example


def _example(answer_ids, spans, gold_offsets, t_ids, t_spans, t_gold_offsets, prompt, vt, gen):
    """Random student rows and a dense teacher for one example; spans exclude EOS, which both sides get here, at the
    end of the answer as kdpipe and GOLD place it."""
    size = max(end for _, end in [*spans, *t_spans])
    gold_size = max(end for _, end in [*gold_offsets, *t_gold_offsets])
    return {
        "prompt": prompt,
        "answer": [*answer_ids, 0],  # EOS last (its id plays no part: the row predicting it is skipped)
        "spans": np.array([*spans, (size, size)], dtype=np.int32),
        "gold_offsets": [*gold_offsets, (gold_size, gold_size)],
        "t_ids": np.array([*t_ids, 0], dtype=np.int32),
        "t_spans": np.array([*t_spans, (size, size)], dtype=np.int32),
        "t_gold_offsets": [*t_gold_offsets, (gold_size, gold_size)],
        "dense": torch.softmax(
            _peaked(torch.randn(len(t_ids) + 1, vt, generator=gen, dtype=torch.float64), [*t_ids, 0]), -1
        ),
    }


def _peaked(logits: torch.Tensor, tokens) -> torch.Tensor:
    """Logits [n, V] that favour each row's own token, as a model trained on the text does (so that a group's
    later tokens keep its merged vector well away from zero, and the pairing shows in the value)."""
    return logits + 10 * torch.nn.functional.one_hot(torch.as_tensor(list(tokens)), logits.shape[1])


def _hand_made(case: str, vs: int, vt: int, rng, gen) -> dict:
    s_spans, t_spans = HAND_MADE[case]
    ids = rng.integers(1, vs, len(s_spans)).tolist()
    t_ids = rng.integers(1, vt, len(t_spans)).tolist()
    return _example(ids, s_spans, s_spans, t_ids, t_spans, t_spans, int(rng.integers(2, 5)), vt, gen)


def _tokenized(answer: str, s_tok, t_tok, rng, gen, t_spans=None) -> dict:
    """Both sides tokenized: kdpipe's spans from its text contract (answer-relative), GOLD's from its own byte
    offsets of " " + answer (the causal layout's text), which are kdpipe's plus the joining space."""
    s_enc = TextEncoder(s_tok, TextSpec("causal", 512, 64)).encode("q", answer)
    t_enc = TextEncoder(t_tok, TextSpec("causal", 512, 64)).encode("q", answer)
    (s_gold_ids, s_gold), (t_gold_ids, t_gold) = (
        trl_utils.encode_with_byte_offsets(tok.backend_tokenizer, [" " + answer])[0] for tok in (s_tok, t_tok)
    )
    assert s_gold_ids == s_enc.answer_ids[:-1] and t_gold_ids == t_enc.answer_ids[:-1]
    t_kd = t_enc.answer_spans[:-1].tolist() if t_spans is None else t_spans
    return _example(
        s_enc.answer_ids[:-1],
        [tuple(s) for s in s_enc.answer_spans[:-1].tolist()],
        [tuple(o) for o in s_gold],
        t_enc.answer_ids[:-1],
        [tuple(s) for s in t_kd],
        [tuple(o) for o in t_gold],
        int(rng.integers(2, 5)),
        len(t_tok),
        gen,
    )


# ---------------------------------------------------------------------------------------------- both losses


def _kdpipe(kind, logits, examples, vmap, tau, teacher_token_bytes=None):
    rows = [
        TeacherRows(
            ex["dense"].float().sort(-1, descending=True).values.numpy(),
            ex["dense"].sort(-1, descending=True).indices.int().numpy(),
            ex["t_spans"],
            ex["dense"][np.arange(len(ex["t_ids"])), ex["t_ids"]].float().numpy(),
            ex["t_ids"],
        )
        for ex in examples
    ]
    aligned = align_batch(
        [ex["prompt"] - 1 for ex in examples],
        [ex["answer"] for ex in examples],
        [ex["spans"] for ex in examples],
        rows,
        vocab=vmap,
        teacher_token_bytes=teacher_token_bytes,
    )
    if kind == "uld-aligned":
        return uld_aligned_loss(logits, aligned, student_temperature=tau)
    matched = torch.from_numpy(vmap.student_matched)
    return hybrid_loss(logits, aligned, matched, vmap.matched_share, student_temperature=tau)


def _gold(kind, logits, examples, vmap, tau):
    """GOLD's ULDLoss on the same rows, as padded batch tensors like its trainer's (labels -100 off the answer)."""
    config = SimpleNamespace(
        uld_crossentropy_weight=0.0,
        uld_distillation_weight=1.0,
        uld_student_temperature=tau,
        uld_teacher_temperature=1.0,
        uld_skip_student_eos=True,
        uld_skip_teacher_eos=True,
        use_extended_uld=True,
        uld_token_merge_strategy="observed",
        uld_use_hybrid_loss=kind == "hybrid",
        uld_hybrid_matched_weight=None,
        uld_hybrid_unmatched_weight=None,
        beta=1.0,
    )
    loss = gold.ULDLoss(config)
    if kind == "hybrid":
        pairs = {t: int(s) for t, s in enumerate(vmap.teacher_to_student.tolist()) if s >= 0}
        loss._vocab_mapping = pairs
        loss._teacher_matched_ids, loss._student_matched_ids = set(pairs), set(pairs.values())
        loss.mapping_tensor = torch.full((max(pairs) + 1,), -1, dtype=torch.long)
        loss.mapping_tensor[list(pairs)] = torch.tensor(list(pairs.values()))
        loss._compute_jsd_loss_for_matched_tokens = lambda s, t: (s - t).abs().sum() / s.shape[0]
    batch, width, _ = logits.shape
    vt = examples[0]["dense"].shape[1]
    t_width = 1 + max(len(ex["t_ids"]) for ex in examples)
    shifted = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # position p: the row that predicts token p
    labels = torch.full((batch, width), -100)
    input_ids = torch.zeros(batch, width, dtype=torch.long)
    offsets = torch.zeros(batch, width, 2, dtype=torch.long)
    t_logits = torch.zeros(batch, t_width, vt, dtype=torch.float64)
    t_labels = torch.full((batch, t_width), -100)
    t_input_ids = torch.zeros(batch, t_width, dtype=torch.long)
    t_offsets = torch.zeros(batch, t_width, 2, dtype=torch.long)
    for b, ex in enumerate(examples):
        p, n, m = ex["prompt"], len(ex["answer"]), len(ex["t_ids"])
        labels[b, p : p + n] = input_ids[b, p : p + n] = torch.tensor(ex["answer"])
        offsets[b, p : p + n] = torch.tensor(ex["gold_offsets"])
        t_logits[b, 1 : 1 + m] = ex["dense"].log()
        t_labels[b, 1 : 1 + m] = t_input_ids[b, 1 : 1 + m] = torch.from_numpy(ex["t_ids"]).long()
        t_offsets[b, 1 : 1 + m] = torch.tensor(ex["t_gold_offsets"])
    return loss(shifted, t_logits, labels, t_labels, input_ids, t_input_ids, offsets, t_offsets)


def _compare(kind, examples, vs, vmap, tau, seed, teacher_token_bytes=None) -> tuple[float, float, float]:
    """(GOLD's value, |value difference|, max |gradient difference| over the logits) on one batch of ``examples``."""
    width = max(ex["prompt"] + len(ex["answer"]) for ex in examples) + 1
    logits = torch.randn(len(examples), width, vs, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for b, ex in enumerate(examples):  # the student's rows favour its own answer tokens too
        rows = slice(ex["prompt"] - 1, ex["prompt"] - 1 + len(ex["answer"]))
        logits[b, rows] = _peaked(logits[b, rows], ex["answer"]) - 2 * torch.nn.functional.one_hot(
            torch.as_tensor(ex["answer"]), vs
        )  # less sure than the teacher
    mine_logits = logits.float().requires_grad_(True)
    gold_logits = logits.clone().requires_grad_(True)
    mine = _kdpipe(kind, mine_logits, examples, vmap, tau, teacher_token_bytes)
    theirs = _gold(kind, gold_logits, examples, vmap, tau)
    mine.backward()
    theirs.backward()
    grad = (mine_logits.grad.double() - gold_logits.grad).abs().max().item()
    return theirs.item(), abs(mine.item() - theirs.item()), grad


def _assert_equal(compared: tuple[float, float, float], label: object = "") -> None:
    """Value and gradient within TOLERANCE, the value also to 1e-4 relative (a group of many tokens merges to a
    small vector, and so to a small distance)."""
    value, diff, grad = compared
    assert value > 0 and diff < TOLERANCE and diff < 1e-4 * value and grad < TOLERANCE, (label, value, diff, grad)


def _vmap(student_bytes: list[bytes], teacher_bytes: list[bytes]):
    return vocab_map(teacher_bytes, student_bytes)


# ---------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("kind", ["uld-aligned", "hybrid"])
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_hand_made_groupings_equal_gold(kind, tau):
    vs, vt = 13, 11
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    shared = [b" the", b" cat", b"s", b"at", b" ", b"t"]
    vmap = _vmap([b"", b"ya", *reversed(shared), b"yb", b"yc", b"yd", b"ye", b"t"], [b"", *shared, b"xa", *[b"x"] * 3])
    for case in HAND_MADE:
        _assert_equal(_compare(kind, [_hand_made(case, vs, vt, rng, gen)], vs, vmap, tau, seed=1), case)
    batch = [_hand_made(case, vs, vt, rng, gen) for case in HAND_MADE]
    _assert_equal(_compare(kind, batch, vs, vmap, tau, seed=2), "batch")


def test_kdpipe_spans_are_gold_byte_offsets(student, teacher):
    """GOLD's offsets of " " + answer are kdpipe's answer spans moved by the joining space, split characters too."""
    for tok in (student, teacher):
        text = TextEncoder(tok, TextSpec("causal", 512, 64))
        for answer in SPLIT_ANSWERS:
            spans = text.encode("q", answer).answer_spans[:-1]
            _, offsets = trl_utils.encode_with_byte_offsets(tok.backend_tokenizer, [" " + answer])[0]
            np.testing.assert_array_equal(np.array(offsets)[:, 1], spans[:, 1] + 1)
            np.testing.assert_array_equal(np.array(offsets)[1:, 0], spans[1:, 0] + 1)
    # the demo student splits each of these characters, the teacher keeps them whole: a many-to-one group each
    assert len(student(" café").input_ids) > len(teacher(" café").input_ids)


@pytest.mark.parametrize("kind", ["uld-aligned", "hybrid"])
def test_split_characters_equal_gold(kind, student, teacher):
    rng, gen = np.random.default_rng(3), torch.Generator().manual_seed(3)
    vmap = _vmap(token_bytes(student), token_bytes(teacher))
    examples = [_tokenized(a, student, teacher, rng, gen) for a in SPLIT_ANSWERS]
    for i, ex in enumerate(examples):
        _assert_equal(_compare(kind, [ex], len(student), vmap, 1.0, seed=10 + i), SPLIT_ANSWERS[i])
    # the other way round: the teacher splits what the student keeps whole
    flipped = [_tokenized(a, teacher, student, rng, gen) for a in SPLIT_ANSWERS]
    _assert_equal(_compare(kind, flipped, len(teacher), _vmap(token_bytes(teacher), token_bytes(student)), 2.0, 20))


def _character_spans(tokenizer, answer: str) -> list[tuple[int, int]]:
    """What caches before v1.3 stored: each token's span widened to the whole characters its offsets touch."""
    text = " " + answer
    at = np.cumsum([0, *(len(c.encode()) for c in text)])
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True).offset_mapping
    spans, covered = [], 0
    for s, e in offsets:
        start, end = max(int(at[s]) - 1, 0), max(int(at[e]) - 1, 0)
        spans.append((min(start, covered), end))
        covered = max(covered, end)
    return spans


@pytest.mark.parametrize("kind", ["uld-aligned", "hybrid"])
def test_a_cache_before_v1_3_is_read_as_gold_would_pair_it(kind, student, teacher):
    """The teacher's rows of a split character carry the character's span (v1.1 / v1.2): the alignment cuts them by
    the stored vocabulary's byte lengths and pairs what GOLD pairs; left shared, they are paired otherwise."""
    rng, gen = np.random.default_rng(5), torch.Generator().manual_seed(5)
    vmap = _vmap(token_bytes(teacher), token_bytes(student))
    lengths = np.array([len(b) for b in token_bytes(student)])
    for answer in SPLIT_ANSWERS:
        ex = _tokenized(answer, teacher, student, rng, gen, t_spans=_character_spans(student, answer))
        assert len(set(map(tuple, ex["t_spans"].tolist()))) < len(ex["t_spans"])  # rows sharing a span
        _assert_equal(_compare(kind, [ex], len(teacher), vmap, 1.0, seed=30, teacher_token_bytes=lengths), answer)
        s_spans, t_spans = ex["spans"][:-1], ex["t_spans"][:-1]
        theirs = gold.ULDLoss._align_by_byte_offsets(ex["gold_offsets"][:-1], ex["t_gold_offsets"][:-1])
        cut = align_spans(s_spans, split_characters(t_spans, lengths[ex["t_ids"][:-1]]))
        assert _as_lists(cut) == theirs
        assert _as_lists(align_spans(s_spans, t_spans)) != theirs  # a group closed after a character's first byte


def _as_lists(groups) -> tuple[list[list[int]], list[list[int]]]:
    """kdpipe's groups as GOLD's ``_align_by_byte_offsets`` returns them: (student groups, teacher groups)."""
    return [list(s) for s, _ in groups], [list(t) for _, t in groups]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["uld-aligned", "hybrid"])
def test_split_characters_with_the_real_smollm2_tokenizer_equal_gold(kind, student, smollm2_tokenizer):
    smollm2 = smollm2_tokenizer
    rng, gen = np.random.default_rng(7), torch.Generator().manual_seed(7)
    vmap = _vmap(token_bytes(student), token_bytes(smollm2))
    examples = [_tokenized(a, student, smollm2, rng, gen) for a in SPLIT_ANSWERS]
    _assert_equal(_compare(kind, examples, len(student), vmap, 1.0, seed=40))
