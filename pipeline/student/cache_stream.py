"""The streaming cache reader: student-tokenized examples paired with their teacher rows, batched in the background.

Order. The row axis is cut into groups of ``shuffle_chunks`` consecutive stored chunks; an example belongs to
the group holding its first row. Epoch ``e`` visits the groups in a seeded random order and the examples of
each group in a seeded random order, a pure function of (seed, e) and the cache's row layout. The visits of
all epochs, one after the other, are dealt round-robin to ``lanes`` streams: lane ``l`` takes visits ``l``,
``l + lanes``, ``l + 2·lanes``, ... and delivers their examples in order. Optimizer step ``s`` takes the next
``G / lanes`` examples of every lane (``G`` = ``step_examples``, the global batch): lane 0's, then lane 1's, ...
With one lane this is the plain concatenation of epochs (batches run across epoch boundaries). With several,
a global batch mixes ``lanes`` groups, and as each lane moves at the pace of its own groups' sizes, some
examples of the next epoch may come before the last ones of the current epoch (and at the end of a run).

Processes. Rank ``r`` of ``world_size`` streams the lanes ``l`` with ``l mod world_size = r``: it reads only
their groups, so the ranks read disjoint shares of the cache, and each step's examples are the same whatever
the number of processes (which must divide ``lanes``): the order is defined by (seed, shuffle_chunks, lanes,
G), not by the world size. A rank's share of a step is cut into micro-batches of at most ``batch_size``.
Resuming at step ``s`` recomputes the order from examples.parquet alone and starts each lane at example
``s · G / lanes`` of its stream, without reading what comes before.

Reads. A group is read with one ``Cache.read_rows`` call over its contiguous row range (its chunks, plus the
end of an example that runs into the next group), so reads stay sequential on a local disk, in a zip or on an
object store. Memory: the rows of one group per lane of this rank (plus the one being read) and ``prefetch``
collated micro-batches, whatever the size of the cache.

Token-aware losses (``align=AlignOptions(...)``, distill ``--loss uld-aligned|hybrid``). The same thread also reads
the v1.1 token layout (top-k ids, spans, label probabilities) with the probabilities, takes each student answer's
byte spans from the text contract (``Encoded.answer_spans``) and forms the batch's groups with
``pipeline.alignment.align_batch`` (the teacher side merged, its ids mapped to student ids by a vocabulary map
built once per run), so the training step only gathers and compares; ``stats.align_seconds`` is its cost.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from cache_schema import Cache
from pipeline.alignment import Aligned, TeacherRows, VocabMap, align_batch
from pipeline.losses import IGNORE_INDEX
from pipeline.text import TextEncoder

_POLL_SECONDS = 0.1  # how often a blocked producer checks whether it was asked to stop


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T] long, right-padded
    attention_mask: torch.Tensor  # [B, T] long, 0 on padding
    labels: torch.Tensor  # [B, T] long, -100 on prompt and padding
    teacher_probs: torch.Tensor  # [B, Tt, k] float32, sorted descending, zero rows as padding
    teacher_lengths: torch.Tensor  # [B] long, teacher rows of each example
    indices: np.ndarray  # [B] cache index of each example
    step: int  # the optimizer step (0-based) whose global batch the examples belong to
    aligned: Aligned | None = None  # the byte-span groups, for the token-aware losses (BatchStream align=...)
    teacher_ids: torch.Tensor | None = None  # [B, Tt, k] long, student id of each teacher entry or -1 (student_ids=)

    def to(self, device: torch.device) -> Batch:
        move = {"device": device, "non_blocking": True}
        return Batch(
            self.input_ids.to(**move),
            self.attention_mask.to(**move),
            self.labels.to(**move),
            self.teacher_probs.to(**move),
            self.teacher_lengths.to(**move),
            self.indices,
            self.step,
            None if self.aligned is None else self.aligned.to(device),
            None if self.teacher_ids is None else self.teacher_ids.to(**move),
        )

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())


# ---------------------------------------------------------------------------------------------- order


def chunk_groups(cache: Cache, shuffle_chunks: int) -> list[np.ndarray]:
    """Cache indices of the examples whose first row lies in each group of ``shuffle_chunks`` chunks."""
    group_of = cache.row_start // (cache.chunk_rows * shuffle_chunks)  # [N]
    boundaries = np.flatnonzero(np.diff(group_of)) + 1
    return [g for g in np.split(np.arange(len(cache)), boundaries) if len(g)]


def epoch_order(groups: list[np.ndarray], seed: int, epoch: int) -> list[np.ndarray]:
    """The groups of one epoch in visiting order, each holding its examples in delivery order."""
    rng = np.random.default_rng([seed, epoch])
    return [groups[g][rng.permutation(len(groups[g]))] for g in rng.permutation(len(groups))]


# ---------------------------------------------------------------------------------------------- tokens


class StudentEncoder:
    """Prompt and answer text -> student input ids and causal-LM labels, through the text contract.

    ``pipeline.text.TextEncoder`` gives the ids (BOS + prompt, then " " + answer + EOS, or the chat template);
    the prompt is masked with -100. An example whose answer the contract skips (over the limit with
    ``answer_overflow="skip"``) keeps its place in the data order but trains on nothing: its labels are all
    -100, so the order and step sizes stay a pure function of the cache. Padding uses the pad id, or EOS for
    tokenizers without one: padding sits under the attention mask and the -100 labels, so no token is added
    to the vocabulary. ``counts`` tallies cut prompts, cut answers and skipped answers as batches are made.
    """

    def __init__(self, text: TextEncoder):
        self.text = text
        self.tokenizer, self.pad = text.tokenizer, text.pad
        self.counts: Counter = Counter()

    def encode(self, prompts: list[str], answers: list[str]) -> list[tuple[list[int], list[int]]]:
        """(prompt ids, answer ids ending in EOS; [] for a skipped answer) per example."""
        return self.encode_with_spans(prompts, answers)[0]

    def encode_with_spans(
        self, prompts: list[str], answers: list[str]
    ) -> tuple[list[tuple[list[int], list[int]]], list[np.ndarray]]:
        """:meth:`encode`, and each answer's byte spans int32 [len(answer ids), 2] (the text contract's)."""
        out, spans = [], []
        for prompt, answer in zip(prompts, answers, strict=True):
            encoded = self.text.encode(prompt, answer)
            if encoded is None:
                self.counts["answer_skipped"] += 1
                out.append((self.text.encode_prompt(prompt)[0], []))
                spans.append(np.zeros((0, 2), dtype=np.int32))
                continue
            self.counts["prompt_cut"] += encoded.prompt_cut > 0
            self.counts["answer_cut"] += encoded.answer_cut > 0
            out.append((encoded.prompt_ids, encoded.answer_ids))
            spans.append(encoded.answer_spans)
        return out, spans

    def collate(
        self,
        encoded: list[tuple[list[int], list[int]]],
        probs: list[np.ndarray],
        indices: np.ndarray,
        step: int,
        ids: list[np.ndarray] | None = None,
    ) -> Batch:
        """The padded batch; ``ids`` [n_rows, k] per example (student ids of the teacher entries) fill
        ``teacher_ids``, -1 on padding."""
        # numpy, not torch: a torch fill this size runs on the intra-op thread pool the training step is using
        width = max(len(p) + len(a) for p, a in encoded)
        teacher_width = max(len(r) for r in probs)
        batch = len(encoded)
        input_ids = np.full((batch, width), self.pad, dtype=np.int64)  # [B, T]
        attention_mask = np.zeros((batch, width), dtype=np.int64)  # [B, T]
        labels = np.full((batch, width), IGNORE_INDEX, dtype=np.int64)  # [B, T]
        teacher_probs = np.zeros((batch, teacher_width, probs[0].shape[1]), dtype=np.float32)  # [B, Tt, k]
        for b, ((p, a), rows) in enumerate(zip(encoded, probs, strict=True)):
            n = len(p) + len(a)
            input_ids[b, :n] = p + a
            attention_mask[b, :n] = 1
            labels[b, len(p) : n] = a
            teacher_probs[b, : len(rows)] = rows
        lengths = np.array([len(r) for r in probs], dtype=np.int64)  # [B]
        input_ids, attention_mask, labels, teacher_probs, lengths = map(
            torch.from_numpy, (input_ids, attention_mask, labels, teacher_probs, lengths)
        )
        teacher_ids = None
        if ids is not None:
            filled = np.full(tuple(teacher_probs.shape), -1, dtype=np.int64)  # [B, Tt, k]
            for b, rows in enumerate(ids):
                filled[b, : len(rows)] = rows
            teacher_ids = torch.from_numpy(filled)
        return Batch(input_ids, attention_mask, labels, teacher_probs, lengths, indices, step, None, teacher_ids)


# ---------------------------------------------------------------------------------------------- stream


@dataclass(frozen=True)
class AlignOptions:
    """Pair student and teacher tokens by byte spans on the reader thread (the token-aware losses)."""

    skip_student_eos: bool = True
    vocab: VocabMap | None = None  # also map the teacher top-k ids to student ids (hybrid)
    # int [Vt] byte length of each teacher token, for a cache older than v1.3: cut its split characters' shared
    # spans into the tokens' own bytes before grouping (see align_batch)
    teacher_token_bytes: np.ndarray | None = None


@dataclass
class ReaderStats:
    reads: int = 0  # read_rows calls
    rows_read: int = 0
    max_group_rows: int = 0  # largest single read: the bound on decoded rows held at once
    batches: int = 0  # batches handed to the queue
    align_seconds: float = 0.0  # spent pairing student and teacher tokens (align=...), on the reader thread


class BatchStream:
    """Iterator over this rank's micro-batches from step ``start_step`` on, prepared by a background thread.

    ``next_step()`` returns the ``micro_batches`` micro-batches of one optimizer step. Use as a context
    manager (or call ``close``) so the thread stops when training does.
    """

    def __init__(
        self,
        cache: Cache,
        encoder: StudentEncoder,
        *,
        batch_size: int,
        seed: int,
        shuffle_chunks: int,
        step_examples: int | None = None,
        lanes: int = 1,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
        prefetch: int = 8,
        pin_memory: bool = False,
        align: AlignOptions | None = None,
        student_ids: VocabMap | None = None,
    ):
        if len(cache) == 0:
            raise ValueError(f"{cache.path}: the cache holds no examples")
        step_examples = step_examples or batch_size
        if step_examples % lanes or lanes % world_size or not 0 <= rank < world_size:
            raise ValueError(
                f"{step_examples} examples per step, {lanes} lanes, rank {rank} of {world_size}: the lanes must "
                "divide the examples per step and be shared evenly by the processes"
            )
        self.cache, self.encoder = cache, encoder
        self.batch_size, self.seed, self.pin_memory = batch_size, seed, pin_memory
        self.lanes, self.per_lane = lanes, step_examples // lanes
        self.my_lanes = list(range(rank, lanes, world_size))
        share = self.per_lane * len(self.my_lanes)  # examples of each step this rank trains on
        self.micro_batches = -(-share // batch_size)
        self.groups = chunk_groups(cache, shuffle_chunks)
        self.start_step = start_step
        self.stats = ReaderStats()
        self.align = align
        self.student_ids = student_ids
        if student_ids is not None and not cache.has_topk_ids:
            raise ValueError(f"{cache.path}: stores no teacher top-k ids to map to student ids")
        self._orders: dict[int, list[np.ndarray]] = {}
        self._prompts = cache.examples.column("prompt")
        self._answers = cache.examples.column("answer")
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cache-reader", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def next_step(self) -> list[Batch]:
        """The micro-batches of this rank's share of the next optimizer step."""
        return [next(self) for _ in range(self.micro_batches)]

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):  # unblock a producer waiting on a full queue
                self._queue.get(timeout=_POLL_SECONDS)
        self._thread.join()

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -------------------------------------------------------------------------------------- producer

    def _run(self) -> None:
        try:
            self._produce()
        except BaseException as e:  # handed to the consumer, which raises it on its next batch
            self._put(e)

    def _visit(self, visit: int) -> np.ndarray:
        """Group visit ``visit`` of the concatenated epochs: its examples in delivery order."""
        epoch, g = divmod(visit, len(self.groups))
        if epoch not in self._orders:
            if len(self._orders) > 2 * self.lanes:  # lanes are at most a few epochs apart
                self._orders.pop(min(self._orders))
            self._orders[epoch] = epoch_order(self.groups, self.seed, epoch)
        return self._orders[epoch][g]

    def _lane(self, lane: int) -> Iterator[tuple[int, np.ndarray | TeacherRows]]:
        """(cache index, teacher probs [n_rows, k], or its TeacherRows with ``align``) of lane ``lane`` from the
        start step on, forever."""
        skip = self.start_step * self.per_lane
        for visit in itertools.count(lane, self.lanes):
            group = self._visit(visit)
            if skip >= len(group):
                skip -= len(group)
                continue
            first, last = int(group.min()), int(group.max())  # a group's examples are contiguous in the cache
            lo = int(self.cache.row_start[first])
            hi = int(self.cache.row_start[last] + self.cache.n_rows[last])
            probs, _, token_ids, topk_ids = self.cache.read_rows(lo, hi)  # [hi - lo, k], one sequential read
            if self.align is not None:  # checked as verify checks them: spans, label probabilities, ids
                spans, label_probs = self.cache.read_token_rows(lo, hi)
                if topk_ids is not None:
                    self.cache.check_label_probs(lo, hi, probs, token_ids, topk_ids, label_probs)
            self.stats.reads += 1
            self.stats.rows_read += hi - lo
            self.stats.max_group_rows = max(self.stats.max_group_rows, hi - lo)
            for i in group[skip:]:
                start = int(self.cache.row_start[i]) - lo
                rows = slice(start, start + int(self.cache.n_rows[i]))
                if self.student_ids is not None:
                    yield int(i), (probs[rows], self._as_student_ids(probs[rows], topk_ids[rows]))
                elif self.align is None:
                    yield int(i), probs[rows]
                else:
                    ids = None if topk_ids is None else topk_ids[rows]
                    yield int(i), TeacherRows(probs[rows], ids, spans[rows], label_probs[rows], token_ids[rows])
            skip = 0

    def _produce(self) -> None:
        lanes = [self._lane(lane) for lane in self.my_lanes]
        for step in itertools.count(self.start_step):
            chosen = [item for lane in lanes for item in itertools.islice(lane, self.per_lane)]
            for part in np.array_split(np.arange(len(chosen)), self.micro_batches):
                if not self._put(self._collate([chosen[j] for j in part], step)):
                    return
                self.stats.batches += 1

    def _collate(self, chosen: list[tuple[int, np.ndarray | TeacherRows]], step: int) -> Batch:
        indices = np.array([i for i, _ in chosen])
        take = indices.tolist()
        prompts = self._prompts.take(take).to_pylist()
        answers = self._answers.take(take).to_pylist()
        encoded, spans = self.encoder.encode_with_spans(prompts, answers)
        rows = [r for _, r in chosen]
        ids = None
        if self.student_ids is not None:
            rows, ids = [r for r, _ in rows], [i for _, i in rows]
        aligned = None
        if self.align is not None:
            began = time.perf_counter()
            aligned = align_batch(
                [len(p) - 1 for p, _ in encoded],
                [a for _, a in encoded],
                spans,
                rows,
                skip_student_eos=self.align.skip_student_eos,
                vocab=self.align.vocab,
                teacher_token_bytes=self.align.teacher_token_bytes,
            )
            self.stats.align_seconds += time.perf_counter() - began
            rows = [r.probs for r in rows]
        batch = self.encoder.collate(encoded, rows, indices, step, ids)
        batch.aligned = aligned
        if not self.pin_memory:
            return batch
        tensors = (batch.input_ids, batch.attention_mask, batch.labels, batch.teacher_probs, batch.teacher_lengths)
        pinned = None if aligned is None else aligned.pin_memory()
        pinned_ids = None if batch.teacher_ids is None else batch.teacher_ids.pin_memory()
        return Batch(*(t.pin_memory() for t in tensors), indices, step, pinned, pinned_ids)

    def _as_student_ids(self, probs: np.ndarray, topk_ids: np.ndarray) -> np.ndarray:
        """int64 [n, k]: the student id of each stored teacher entry (``student_ids`` map), -1 where it has none, or
        where the entry's id is unknown (schema v1.2) or outside the teacher vocabulary, or its probability is 0."""
        table = self.student_ids.teacher_to_student
        known = (topk_ids >= 0) & (topk_ids < len(table)) & (probs > 0)
        return np.where(known, table[np.where(known, topk_ids, 0)], -1)

    def _put(self, item) -> bool:
        """Block until the queue takes ``item``; False when asked to stop meanwhile."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False
