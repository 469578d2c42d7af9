"""Pairing student and teacher tokens of the same answer text, for the token-aware losses (``pipeline.losses``).

Everything here runs on the CPU reader thread (``pipeline.student.cache_stream``), never in the training step: the
student answer rows and the cached teacher rows of each example are grouped by their UTF-8 byte spans in the
answer string, the teacher side of every group is formed from the cache at once, and the teacher top-k ids
are mapped to student ids through the two vocabularies' byte strings (a map computed once per run).

Spans are UTF-8 byte ranges in the answer string (``pipeline.text``): a character split over several tokens (é, an
emoji, a CJK character in a byte-level BPE) gives each of its tokens its own bytes, as GOLD's byte offsets do
(``trl.experimental.utils.encode_with_byte_offsets``). A cache older than v1.3 gave each of them the whole
character's range instead; ``align_batch`` cuts those shared spans by the cached vocabulary's byte lengths first
(``teacher_token_bytes``), into the spans v1.3 stores, so such a cache pairs as a new one does.

Groups (TRL GOLD's extended ULD, ``ULDLoss._align_by_byte_offsets``, TRL 1.16): walk both token lists, advancing
the side whose current token ends earlier; a group closes where both sides end at the same byte. One-to-one,
one-to-many and many-to-one pairings all come out of the same walk; two tokenizations that never agree before the
end form one group. Unlike GOLD, tokens left after the last common boundary (one side cut shorter, e.g. by
``max_answer_tokens``) are dropped, not paired: they cover different bytes.

Merging a group's rows r_0..r_m into one vector. Each row is the distribution that predicts the row's own token,
as the cache stores it: r_i = P(· | prefix, tok_<i). The merged vector is the first row's full distribution times
the probabilities of the group's later actual tokens,

    r_0 · Π_{i≥1} r_i[tok_i] = P(· | prefix) · Π_{i≥1} P(tok_i | prefix, tok_<i),

which at the actual first token is the probability of the group's whole byte string; the first rows of a student
group and of its teacher group condition on the same text (the group starts at a common boundary). The teacher
side uses the cached top-k of its first row and the cached ``label_probs`` of the later rows. This is neither of
GOLD's two ``uld_token_merge_strategy`` values, but their parts: GOLD's ``"observed"`` formula (first row's full
distribution times the later tokens' scalar probabilities) on the rows of GOLD's ``"bayesian"`` slice (row k
predicts token k). GOLD's ``"observed"`` itself slices the logits at the answer positions, so its row k predicts
token k + 1 and its scalars are each such row's probability of token k; a cache keeps each row's probability of
its own token only, so that merge cannot be formed from one. GOLD's ``"bayesian"`` merges onto the group's LAST row
(r_m · Π_{i<m} r_i[tok_i]), which on the two sides conditions on different splits of the group's text; it is not
offered. Run on the same rows (its ``"observed"`` merge given the logits shifted by one position), GOLD's own code
gives uld-aligned's and hybrid's value and gradient: tests/test_gold_oracle.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.text import split_characters, splits_characters

# ---------------------------------------------------------------------------------------------- vocabularies


@dataclass(frozen=True)
class VocabMap:
    """Teacher id -> student id of the same (non-empty) byte string, one-to-one; -1 where there is none."""

    teacher_to_student: np.ndarray  # int64 [Vt]
    student_matched: np.ndarray  # bool [Vs], student ids some teacher id maps to
    matched: int  # matched pairs
    teacher_size: int  # Vt

    @property
    def matched_share(self) -> float:
        """GOLD's hybrid weight: the matched share of the teacher vocabulary."""
        return self.matched / max(self.teacher_size, 1)


def vocab_map(teacher: list[bytes], student: list[bytes]) -> VocabMap:
    """Match the two vocabularies by exact byte string (the first id of a repeated string on either side)."""
    by_bytes: dict[bytes, int] = {}
    for sid, b in enumerate(student):
        if b:
            by_bytes.setdefault(b, sid)
    mapping = np.full(len(teacher), -1, dtype=np.int64)
    student_matched = np.zeros(len(student), dtype=bool)
    for tid, b in enumerate(teacher):
        sid = by_bytes.get(b, -1) if b else -1
        if sid >= 0 and not student_matched[sid]:
            mapping[tid] = sid
            student_matched[sid] = True
    return VocabMap(mapping, student_matched, int((mapping >= 0).sum()), len(teacher))


def generated_spans(text, ids: list[int], answer: str) -> np.ndarray:
    """int32 [len(ids), 2] byte spans of generated answer ids (EOS last) in ``answer``, their decoded text.

    ``text``: the teacher's ``pipeline.text.TextEncoder``. The ids were generated, not tokenized from the text, so
    there are no offsets to ask for: a token ends where the decoded prefix up to it ends, less the leading
    whitespace the decoded answer was stripped of, kept in order and inside the answer. A prefix that ends inside a
    character decodes to U+FFFD (3 bytes), not to the bytes it holds, and is no prefix of the whole decoded answer:
    its token shares the span of the next token whose prefix is one, and ``split_characters`` cuts that shared span
    by the tokens' byte lengths, as the text contract does for a tokenized answer.
    """
    size = len(answer.encode())
    tokenizer = text.tokenizer
    full = tokenizer.decode(ids[:-1], skip_special_tokens=True)
    lead = len(full.encode()) - len(full.lstrip().encode())
    spans, covered, waiting = [], 0, 0  # waiting: tokens since the last clean prefix, which share its span
    for j in range(len(ids) - 1):
        prefix = tokenizer.decode(ids[: j + 1], skip_special_tokens=True)
        waiting += 1
        if full.startswith(prefix):
            end = min(max(len(prefix.encode()) - lead, covered), size)
            spans += [(covered, end)] * waiting
            covered, waiting = end, 0
    spans += [(covered, size)] * waiting  # none: the last prefix is the whole answer
    spans.append((size, size))  # EOS
    spans = np.array(spans, dtype=np.int64).reshape(-1, 2)
    if splits_characters(spans[:-1]):
        spans[:-1] = split_characters(spans[:-1], text.byte_lengths(ids[:-1]))
    return spans.astype(np.int32)


# ---------------------------------------------------------------------------------------------- groups


def align_spans(student_spans: np.ndarray, teacher_spans: np.ndarray) -> list[tuple[range, range]]:
    """(student rows, teacher rows) of each group, in order: both sides of a group end at the same byte.

    ``student_spans`` [S, 2], ``teacher_spans`` [T, 2]: byte [start, end) of each token in the same answer
    string. Rows after the last common end are left out.
    """
    s_end, t_end = student_spans[:, 1].tolist(), teacher_spans[:, 1].tolist()
    groups = []
    s = t = s0 = t0 = 0
    while s < len(s_end) and t < len(t_end):
        if s_end[s] < t_end[t]:
            s += 1
        elif s_end[s] > t_end[t]:
            t += 1
        else:
            s, t = s + 1, t + 1
            groups.append((range(s0, s), range(t0, t)))
            s0, t0 = s, t
    return groups


@dataclass
class Aligned:
    """The groups of a batch, flattened: student rows to gather from the logits, the teacher side formed.

    G groups, E later rows of student groups (all but the first row of each group).
    """

    example: torch.Tensor  # [G] long, example of each group
    student_t: torch.Tensor  # [G] long, logits position of each group's first student row
    extra_group: torch.Tensor  # [E] long, group of each later student row
    extra_t: torch.Tensor  # [E] long, its logits position
    extra_token: torch.Tensor  # [E] long, the student token it predicts
    teacher: torch.Tensor  # [G, k] float32, merged teacher top-k: first row's top-k × Π later label probs
    teacher_student_ids: torch.Tensor | None  # [G, k] long, student id of each teacher entry or -1 (hybrid)
    groups: torch.Tensor  # [B] long, groups per example

    def to(self, device: torch.device) -> Aligned:
        move = {"device": device, "non_blocking": True}
        ids = self.teacher_student_ids
        return Aligned(
            *(t.to(**move) for t in (self.example, self.student_t, self.extra_group, self.extra_t, self.extra_token)),
            self.teacher.to(**move),
            None if ids is None else ids.to(**move),
            self.groups.to(**move),
        )

    def pin_memory(self) -> Aligned:
        ids = self.teacher_student_ids
        return Aligned(
            *(
                t.pin_memory()
                for t in (self.example, self.student_t, self.extra_group, self.extra_t, self.extra_token)
            ),
            self.teacher.pin_memory(),
            None if ids is None else ids.pin_memory(),
            self.groups.pin_memory(),
        )


@dataclass(frozen=True)
class TeacherRows:
    """One example's cached teacher rows, as the token-aware losses need them."""

    probs: np.ndarray  # float32 [n, k] sorted descending
    topk_ids: np.ndarray | None  # int32 [n, k]
    spans: np.ndarray  # int32 [n, 2]
    label_probs: np.ndarray  # float32 [n]
    token_ids: np.ndarray | None = None  # int32 [n], each row's own token (to cut a pre-v1.3 cache's spans)


def align_batch(
    first_rows: list[int],
    answers: list[list[int]],
    student_spans: list[np.ndarray],
    teachers: list[TeacherRows],
    *,
    skip_student_eos: bool = True,
    vocab: VocabMap | None = None,
    teacher_token_bytes: np.ndarray | None = None,
) -> Aligned:
    """The groups of a batch of examples (reader thread).

    ``first_rows[b]``: logits position of example b's first answer row (the one predicting ``answers[b][0]``);
    ``answers[b]``: its student answer ids; ``student_spans[b]`` [len(answers[b]), 2] their byte spans;
    ``teachers[b]``: its cached rows. With ``skip_student_eos`` the student's last row is dropped, and with it the
    teacher's trailing zero-width rows (its EOS, at the end of the answer). ``vocab``: also map the teacher top-k
    ids to student ids (the hybrid loss). ``teacher_token_bytes`` int [Vt], each teacher token's byte length: given
    for a cache older than v1.3, whose rows of a split character all carry the character's span; those spans are
    cut first (``pipeline.text.split_characters``, from the rows' ``token_ids``), into what v1.3 stores.
    """
    example, student_t, extra_group, extra_t, extra_token = [], [], [], [], []
    teacher, teacher_ids, per_example = [], [], []
    for b, (first, answer, s_spans, rows) in enumerate(zip(first_rows, answers, student_spans, teachers, strict=True)):
        n_s = len(answer) - int(skip_student_eos)
        t_spans = rows.spans
        if teacher_token_bytes is not None and splits_characters(t_spans):
            ids = rows.token_ids
            inside = (ids >= 0) & (ids < len(teacher_token_bytes))  # an id beyond the vocabulary: no bytes known
            t_spans = split_characters(t_spans, np.where(inside, teacher_token_bytes[np.where(inside, ids, 0)], 0))
        n_t = len(t_spans)
        if skip_student_eos:
            end = int(t_spans[:, 1].max(initial=0))
            while n_t and t_spans[n_t - 1, 0] == t_spans[n_t - 1, 1] == end:
                n_t -= 1
        groups = align_spans(s_spans[: max(n_s, 0)], t_spans[:n_t])
        per_example.append(len(groups))
        for s_rows, t_rows in groups:
            g = len(example)
            example.append(b)
            student_t.append(first + s_rows[0])
            for j in s_rows[1:]:
                extra_group.append(g)
                extra_t.append(first + j)
                extra_token.append(answer[j])
            scale = float(np.prod(rows.label_probs[t_rows[1:]], dtype=np.float64))
            teacher.append(rows.probs[t_rows[0]] * scale)
            if vocab is not None:
                values, ids = rows.probs[t_rows[0]], rows.topk_ids[t_rows[0]]
                # zero entries carry nothing (and their stored id is 0): unmatched, so ids stay distinct per row
                known = (values > 0) & (ids >= 0) & (ids < vocab.teacher_size)
                teacher_ids.append(np.where(known, vocab.teacher_to_student[np.where(known, ids, 0)], -1))
    k = teachers[0].probs.shape[1] if teachers else 0

    def long(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long)

    return Aligned(
        long(example),
        long(student_t),
        long(extra_group),
        long(extra_t),
        long(extra_token),
        torch.from_numpy(np.array(teacher, dtype=np.float32).reshape(-1, k)),
        torch.from_numpy(np.array(teacher_ids, dtype=np.int64).reshape(-1, k)) if vocab is not None else None,
        long(per_example),
    )
