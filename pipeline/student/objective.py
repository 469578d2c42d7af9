"""What distill needs for its ``--loss``, read off the loss registry (``pipeline.losses.LOSSES``).

``Objective`` is built once per run from the entry of ``--loss``: it refuses, in one line, a cache that lacks what
the loss reads; it builds the vocabulary map the loss needs (the byte map of the two tokenizers for ``hybrid``, a
one-to-one map of the teacher's ids onto the student's for the KL family) and the reader options that prepare a
batch for it on the reader thread; and it computes the term of a micro-batch (its sum over examples) and the
number of examples that sum averages over.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow.compute as pc
import torch

import cache_schema
from pipeline.alignment import VocabMap, vocab_map
from pipeline.config import ConfigError, DistillConfig
from pipeline.losses import LOSSES, NEEDS
from pipeline.losses.uld import uld_pairs
from pipeline.models import tokenizer_fingerprint
from pipeline.student.cache_stream import AlignOptions
from pipeline.text import token_bytes

log = logging.getLogger(__name__)


class Objective:
    """The KD term of ``cfg.loss`` for the run of ``cfg`` on ``cache`` with this student."""

    def __init__(self, cfg: DistillConfig, cache, tokenizer, hf_model, device: torch.device):
        self.cfg, self.loss = cfg, LOSSES[cfg.loss]
        self.function = self.loss.resolve()
        check_cache(cfg, cache)
        self.align: AlignOptions | None = None
        self.student_ids: VocabMap | None = None
        self.matched: tuple[torch.Tensor, float] | None = None
        size = hf_model.get_output_embeddings().weight.shape[0]
        if self.loss.reader == "groups":
            self.align, self.matched = group_options(cfg, cache, tokenizer, size, device)
        elif self.loss.reader == "ids":
            self.student_ids = shared_vocab(cfg.loss, cache, tokenizer, size)

    @property
    def family(self) -> str:
        return self.loss.family

    def reader_options(self) -> dict:
        """Keyword arguments of ``BatchStream``: what its thread prepares for this loss."""
        return {"align": self.align, "student_ids": self.student_ids}

    def term(self, logits: torch.Tensor, batch) -> torch.Tensor:
        """Σ over the micro-batch's examples of the KD term (``reduction="sum"``)."""
        cfg, options = self.cfg, {**self.loss.options, "reduction": "sum"}
        if self.loss.reader == "groups":
            if self.matched is not None:
                options.update(student_matched=self.matched[0], matched_weight=self.matched[1])
            return self.function(logits, batch.aligned, student_temperature=cfg.student_temperature, **options)
        if self.loss.reader == "ids":
            options["beta"] = cfg.jsd_beta
            return self.function(
                logits,
                batch.labels,
                batch.teacher_probs,
                batch.teacher_ids,
                batch.teacher_lengths,
                student_temperature=cfg.student_temperature,
                skip_student_eos=cfg.skip_student_eos,
                **options,
            )
        return self.function(
            logits,
            batch.labels,
            batch.teacher_probs,
            batch.teacher_lengths,
            student_temperature=cfg.student_temperature,
            skip_student_eos=cfg.skip_student_eos,
            **options,
        )

    def pairs(self, batch) -> int:
        """Examples of a micro-batch the term averages over: with paired rows, or with groups."""
        if self.loss.reader == "groups":
            return int((batch.aligned.groups > 0).sum())
        return int(
            (uld_pairs(batch.labels, batch.teacher_lengths, skip_student_eos=self.cfg.skip_student_eos) > 0).sum()
        )


def group_options(
    cfg: DistillConfig, cache, tokenizer, size: int, device: torch.device
) -> tuple[AlignOptions, tuple[torch.Tensor, float] | None]:
    """What the reader needs to pair tokens by bytes (``uld-aligned``, ``hybrid``), and for ``hybrid`` the student ids
    spelled like a teacher token ([Vs] bool on ``device``) with their weight, the matched share of the teacher
    vocabulary. ``size``: the student's output rows. The vocabulary map is built once per run, from the cache's
    teacher byte strings and the student tokenizer's."""
    vocab, matched = None, None
    if cfg.loss == "hybrid":
        vocab = vocab_map(cache.teacher_vocab(), token_bytes(tokenizer, size=size))
        log.info(
            "hybrid: %d of %d teacher tokens spelled alike by the student (weight %.3f)",
            vocab.matched,
            vocab.teacher_size,
            vocab.matched_share,
        )
        if cache.ids_k < cache.top_k:
            log.info(
                "hybrid: the cache keeps the ids of the first %d of %d entries per row; the rest of the teacher's "
                "top-k goes to the sorted (unmatched) part",
                cache.ids_k,
                cache.top_k,
            )
        matched = (torch.from_numpy(vocab.student_matched).to(device), vocab.matched_share)
    lengths = None
    if not cache_schema.byte_exact_spans(cache.meta):
        lengths = np.array([len(b) for b in cache.teacher_vocab()], dtype=np.int64)  # [Vt]
        log.info(
            "%s: a v%s cache, whose rows of a split character share its span: cutting them by the teacher tokens' "
            "byte lengths, as v1.3 stores them",
            cache.path,
            cache.meta.get(cache_schema.ATTR_VERSION),
        )
    return AlignOptions(skip_student_eos=cfg.skip_student_eos, vocab=vocab, teacher_token_bytes=lengths), matched


def check_cache(cfg: DistillConfig, cache) -> None:
    """Refuse, in one line, a ``--loss`` on a cache that lacks what it reads."""
    loss = LOSSES[cfg.loss]
    have = {"token_layout": cache.has_token_spans, "topk_ids": cache.has_topk_ids}
    for need in loss.needs:
        if not have[need]:
            others = [n for n, other in LOSSES.items() if all(have[x] for x in other.needs)]
            raise ConfigError(
                f"--loss {cfg.loss}: {cache.path} (schema v{cache.meta.get(cache_schema.ATTR_VERSION)}) lacks "
                f"{NEEDS[need]}; rewrite it with this kdpipe's teacher-cache, or use --loss {' or '.join(others)}"
            )
    if loss.reader == "groups" and not cache_schema.byte_exact_spans(cache.meta):
        _check_old_generated_spans(cfg, cache)


def _check_old_generated_spans(cfg: DistillConfig, cache) -> None:
    """Before v1.3 a generated answer's row ended where its decoded prefix did, and a prefix ending inside a
    character decodes to U+FFFD: wrong ends, not the character's range that a teacher-forced cache shares over its
    rows (and align_batch cuts). Only a vocabulary with tokens that are part of a character can end a prefix there,
    and only a non-ASCII answer has a character to end inside."""
    if cache.meta.get(cache_schema.ATTR_ANSWERS) != "teacher":
        return
    partial = any(not _is_utf8(b) for b in cache.teacher_vocab())
    if partial and not pc.all(pc.string_is_ascii(cache.examples.column("answer"))).as_py():
        raise ConfigError(
            f"--loss {cfg.loss}: {cache.path} is a v{cache.meta.get(cache_schema.ATTR_VERSION)} cache of the "
            "teacher's own answers whose spans of characters split over several tokens are wrong; rewrite it with "
            "this kdpipe's teacher-cache (v1.3), or use --loss uld"
        )


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def shared_vocab(loss: str, cache, tokenizer, size: int) -> VocabMap:
    """The teacher's ids as student ids, for a KL-family loss: the same ids for the teacher's own tokenizer (the
    cache's tokenizer fingerprint), else the byte map of the two vocabularies, which must give every teacher token
    (special tokens aside) a student token spelled alike; otherwise a one-line ``ConfigError`` that names the gap
    and the losses for different tokenizers."""
    if cache.meta.get(cache_schema.ATTR_TOKENIZER_FP) == tokenizer_fingerprint(tokenizer):
        teacher_size = len(tokenizer)
        log.info("--loss %s: the student has the teacher's tokenizer (%d tokens): the same ids", loss, teacher_size)
        matched = np.zeros(size, dtype=bool)
        matched[:teacher_size] = True
        return VocabMap(np.arange(teacher_size, dtype=np.int64), matched, teacher_size, teacher_size)
    if not cache.has_token_spans:
        raise ConfigError(
            f"--loss {loss}: the student's tokenizer is not the teacher's, and {cache.path} holds no teacher "
            "vocabulary to map one onto the other (schema v1.1 and later); use --loss uld"
        )
    teacher = cache.teacher_vocab()
    vocab = vocab_map(teacher, token_bytes(tokenizer, size=size))
    spelled = sum(1 for b in teacher if b)  # special tokens are empty: they map to nothing, on purpose
    missing = spelled - vocab.matched
    if missing:
        raise ConfigError(
            f"--loss {loss}: {missing} of the teacher's {spelled} tokens have no student token with the same bytes, "
            "so the two vocabularies do not map onto each other; use --loss hybrid or uld-aligned (different "
            "tokenizers)"
        )
    log.info("--loss %s: every teacher token maps to a student token spelled alike (%d)", loss, vocab.matched)
    return vocab
