"""The teacher-cache stage's pieces between the config and the writer, public so that a benchmark or a check runs
exactly what the stage runs: the mixture, the teacher's text contract, token ids per example, the length-bucketed
batch plan, and one batch's rows.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import cache_schema
from pipeline.config import TeacherCacheConfig
from pipeline.models import context_limit
from pipeline.tasks import MixtureExample, TaskError, build_mixture
from pipeline.teacher.rows import Rows, teacher_rows
from pipeline.text import Encoded, TextEncoder, layout_for

BUCKET_BATCHES = 50  # examples are sorted by length within windows of this many batches


@dataclass(frozen=True)
class Prepared:
    example: MixtureExample
    prompt_ids: list[int]
    answer_ids: list[int]  # gold answer tokens (EOS included unless the answer was cut); [] with --answers teacher
    answer_spans: np.ndarray  # int32 [len(answer_ids), 2] their byte spans in the answer (cache v1.1)


def mixture_examples(cfg: TeacherCacheConfig) -> tuple[list[MixtureExample], dict]:
    """The examples ``cfg`` caches (its --limit applied) and the source rows skipped; a TaskError when none is left."""
    mixture = build_mixture(
        cfg.tasks,
        split=cfg.split,
        data_dir=Path(cfg.data_dir) if cfg.data_dir else None,
        seed=cfg.seed,
        caps=cfg.field_caps,
        fields=cfg.fields,
        task_splits=cfg.task_splits,
        require_answers=cfg.answers == "gold",
    )
    examples = mixture.examples[: cfg.limit] if cfg.limit else mixture.examples
    if not examples:
        where = f"--data-dir {cfg.data_dir}" if cfg.data_dir else "the hub"
        raise TaskError(
            f"the mixture holds no example: {where} gave no usable {cfg.split} row for "
            f"{', '.join(cfg.tasks)} (skipped: {json.dumps(cache_schema.nonzero_counts(mixture.skipped))})"
        )
    return examples, mixture.skipped


def teacher_text(cfg: TeacherCacheConfig, model, tokenizer) -> TextEncoder:
    """The teacher's text contract: its layout (seq2seq, causal or chat) with the config's limits."""
    return TextEncoder(
        tokenizer, cfg.text_spec(layout_for(model.config, cfg.chat_template)), context_limit(model.config)
    )


def encode_examples(examples: list[MixtureExample], text: TextEncoder, cfg: TeacherCacheConfig):
    """(prepared, skipped, truncated): token ids per example under the text contract, every skip and cut counted."""
    skipped, truncated = Counter(), Counter()
    prepared = []
    for example in tqdm(examples, desc="tokenize", unit="ex", mininterval=1.0, leave=False):
        if cfg.answers == "teacher":  # the teacher writes the answer: only the prompt is encoded here
            prompt_ids, prompt_cut = text.encode_prompt(example.prompt, reserve=cfg.max_answer_tokens)
            encoded = Encoded(prompt_ids, [], np.zeros((0, 2), np.int32), prompt_cut, 0)
        else:
            if not example.answer.strip():
                skipped["empty_answer"] += 1
                continue
            encoded = text.encode(example.prompt, example.answer)
            if encoded is None:
                skipped["answer_over_limit"] += 1
                continue
        if encoded.prompt_cut:
            if cfg.prompt_overflow == "skip":
                skipped["prompt_over_limit"] += 1
                continue
            truncated["prompt"] += 1
        truncated["answer"] += encoded.answer_cut > 0
        prepared.append(Prepared(example, encoded.prompt_ids, encoded.answer_ids, encoded.answer_spans))
    return prepared, dict(skipped), {k: v for k, v in truncated.items() if v}


def plan_batches(prepared: list[Prepared], batch_size: int, seed: int) -> list[list[int]]:
    """Length-bucketed batches in a seeded order: few pad tokens, and the same plan on every run."""
    order = list(range(len(prepared)))
    rng = random.Random(seed)
    rng.shuffle(order)
    window = batch_size * BUCKET_BATCHES
    batches = []
    for w in range(0, len(order), window):
        chunk = sorted(
            order[w : w + window], key=lambda i: (len(prepared[i].prompt_ids) + len(prepared[i].answer_ids), i)
        )
        batches += [chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def batch_rows(
    model,
    text: TextEncoder,
    items: list[Prepared],
    cfg: TeacherCacheConfig,
    device: torch.device,
    *,
    store_ids: bool | None = None,
    answers: list[list[int]] | None = None,
) -> Rows:
    """The teacher's rows of one planned batch, as the stage computes them.

    ``store_ids`` overrides the config's; ``answers`` teacher-forces these answers instead of the gold ones (or of
    generating them, with --answers teacher).
    """
    if answers is None and cfg.answers == "gold":
        answers = [it.answer_ids for it in items]
    return teacher_rows(
        model,
        text.pad,
        text.eos,
        [it.prompt_ids for it in items],
        answers,
        top_k=cfg.top_k,
        temperature=cfg.temperature,
        max_answer_tokens=cfg.max_answer_tokens,
        store_ids=cfg.store_ids if store_ids is None else store_ids,
        device=device,
    )
