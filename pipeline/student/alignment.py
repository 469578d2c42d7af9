"""Pairing student and teacher tokens of the same answer text, for the token-aware losses (``pipeline.losses``).

Everything here runs on the CPU reader thread (``pipeline.student.cache_stream``), never in the training step: the
student answer rows and the cached teacher rows of each example are grouped by their UTF-8 byte spans in the
answer string, the teacher side of every group is formed from the cache at once, and the teacher top-k ids
are mapped to student ids through the two vocabularies' byte strings (a map computed once per run).

Groups (TRL GOLD's extended ULD, ``_align_by_byte_offsets``): walk both token lists, advancing the side whose
current token ends earlier; a group closes where both sides end at the same byte. One-to-one, one-to-many and
many-to-one pairings all come out of the same walk; two tokenizations that never agree before the end form
one group. Unlike GOLD, tokens left after the last common boundary (one side cut shorter, e.g. by
``max_answer_tokens``) are dropped, not paired: they cover different bytes.

Merging a group of rows r_0..r_m into one vector (GOLD's ``"observed"`` strategy, with each row predicting its
own token as the cache stores it, i.e. GOLD's ``"bayesian"`` row shift): the full distribution of the first row
times the probabilities of the actual later tokens, P(· | prefix) · Π_{i≥1} P(tok_i | prefix, tok_<i). At the
actual first token this is the probability of the group's whole byte string; the first rows of a student group
and of its teacher group see the same text prefix, so their distributions are comparable. The teacher side
uses the cached top-k of its first row and the cached ``label_probs`` of the later rows.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
import torch

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


# ---------------------------------------------------------------------------------------------- vocabularies


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the printable character that stands for each byte -> the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTE_LEVEL = _byte_decoder()


def token_bytes(tokenizer, size: int | None = None) -> list[bytes]:
    """Each token's UTF-8 bytes as it appears in text, by id; special tokens (and ids beyond the tokenizer, up to
    ``size``, e.g. a model's padded embedding rows) are empty, so they never match anything.

    Byte-level BPE (GPT-2, Llama 3, SmolLM2) pieces are mapped back through the byte alphabet; SentencePiece
    pieces (T5, Llama 2) have ``▁`` read as a space and ``<0xNN>`` byte-fallback pieces read as that byte.
    """
    n = len(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
    special = set(tokenizer.all_special_ids)
    added = {i: t for i, t in tokenizer.added_tokens_decoder.items() if i < n}
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    decoder = json.dumps(json.loads(backend.to_str()).get("decoder")) if backend is not None else ""
    byte_level = '"ByteLevel"' in decoder
    out = []
    for i, piece in enumerate(pieces):
        if i in special or piece is None or (i in added and added[i].special):
            out.append(b"")
        elif i in added:
            out.append(added[i].content.encode())
        elif byte_level:
            out.append(
                bytes(_BYTE_LEVEL[c] for c in piece) if all(c in _BYTE_LEVEL for c in piece) else piece.encode()
            )
        else:
            fallback = _BYTE_FALLBACK.fullmatch(piece)
            out.append(bytes([int(fallback[1], 16)]) if fallback else piece.replace("▁", " ").encode())
    return out + [b""] * max(0, (size or 0) - n)


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

    ``text``: the teacher's ``pipeline.text.TextEncoder``. Ends come from decoding growing prefixes (the ids were
    generated, not tokenized from the text, so there are no offsets to ask for); the leading whitespace the
    decoded answer was stripped of is taken off, and ends are kept in order and inside the answer.
    """
    size = len(answer.encode())
    full = text.tokenizer.decode(ids[:-1], skip_special_tokens=True)
    lead = len(full.encode()) - len(full.lstrip().encode())
    spans, covered = [], 0
    for j in range(len(ids) - 1):
        prefix = text.tokenizer.decode(ids[: j + 1], skip_special_tokens=True)
        end = min(max(len(prefix.encode()) - lead, covered), size)
        spans.append((covered, end))
        covered = end
    spans.append((size, size))  # EOS
    return np.array(spans, dtype=np.int32).reshape(-1, 2)


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


def align_batch(
    first_rows: list[int],
    answers: list[list[int]],
    student_spans: list[np.ndarray],
    teachers: list[TeacherRows],
    *,
    skip_student_eos: bool = True,
    vocab: VocabMap | None = None,
) -> Aligned:
    """The groups of a batch of examples (reader thread).

    ``first_rows[b]``: logits position of example b's first answer row (the one predicting ``answers[b][0]``);
    ``answers[b]``: its student answer ids; ``student_spans[b]`` [len(answers[b]), 2] their byte spans;
    ``teachers[b]``: its cached rows. With ``skip_student_eos`` the student's last row is dropped, and with it the
    teacher's trailing zero-width rows (its EOS, at the end of the answer). ``vocab``: also map the teacher top-k
    ids to student ids (the hybrid loss).
    """
    example, student_t, extra_group, extra_t, extra_token = [], [], [], [], []
    teacher, teacher_ids, per_example = [], [], []
    for b, (first, answer, s_spans, rows) in enumerate(zip(first_rows, answers, student_spans, teachers, strict=True)):
        n_s = len(answer) - int(skip_student_eos)
        t_spans = rows.spans
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
