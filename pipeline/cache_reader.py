"""The streaming cache reader: student-tokenized examples paired with their teacher rows, batched in the background.

Order. The stream is the concatenation of epochs: stream position ``p`` is example ``p mod N`` of epoch
``p // N``'s order, and micro-batch ``m`` holds positions ``[m·B, (m+1)·B)`` (batches run across epoch
boundaries, so no example is dropped or repeated). An epoch's order is a pure function of (seed, epoch) and
the cache's row layout: the row axis is cut into groups of ``shuffle_chunks`` consecutive stored chunks, an
example belongs to the group holding its first row, the groups are visited in a seeded random order and the
examples of each group in a seeded random order. Resuming at micro-batch ``m`` recomputes that order from
examples.parquet alone and starts reading at the group holding position ``m·B``.

Reads. A group is read with one ``Cache.read_rows`` call over its contiguous row range (its chunks, plus the
end of an example that runs into the next group), so reads stay sequential on a local disk, in a zip or on an
object store. Memory: the rows of at most two groups (one being batched, the next being read) and
``prefetch`` collated batches, whatever the size of the cache.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from cache_schema import Cache

IGNORE_INDEX = -100
_POLL_SECONDS = 0.1  # how often a blocked producer checks whether it was asked to stop


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T] long, right-padded
    attention_mask: torch.Tensor  # [B, T] long, 0 on padding
    labels: torch.Tensor  # [B, T] long, -100 on prompt and padding
    teacher_probs: torch.Tensor  # [B, Tt, k] float32, sorted descending, zero rows as padding
    teacher_lengths: torch.Tensor  # [B] long, teacher rows of each example
    indices: np.ndarray  # [B] cache index of each example
    position: int  # stream position of the first example

    def to(self, device: torch.device) -> Batch:
        move = {"device": device, "non_blocking": True}
        return Batch(
            self.input_ids.to(**move),
            self.attention_mask.to(**move),
            self.labels.to(**move),
            self.teacher_probs.to(**move),
            self.teacher_lengths.to(**move),
            self.indices,
            self.position,
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
    """Prompt and answer text -> student input ids and causal-LM labels (prompt masked, EOS appended).

    The prompt is tokenized with the tokenizer's own special tokens (a BOS where the student expects one) and
    cut to its start, like teacher-cache does; the answer without special tokens, then EOS, cut to
    ``max_answer_tokens``. Padding uses the pad id, or EOS for tokenizers without one: padding sits under
    the attention mask and the -100 labels, so no token is added to the vocabulary.
    """

    def __init__(self, tokenizer, max_prompt_tokens: int, max_answer_tokens: int, max_length: int | None = None):
        if tokenizer.eos_token_id is None:
            raise ValueError("the student tokenizer has no EOS token")
        self.tokenizer = tokenizer
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        self.max_prompt, self.max_answer, self.max_length = max_prompt_tokens, max_answer_tokens, max_length

    def encode(self, prompts: list[str], answers: list[str]) -> list[tuple[list[int], list[int]]]:
        """(prompt ids, answer ids ending in EOS unless cut) per example."""
        prompt_ids = self.tokenizer(prompts, add_special_tokens=True).input_ids
        answer_ids = self.tokenizer(answers, add_special_tokens=False).input_ids
        out = []
        for p, a in zip(prompt_ids, answer_ids, strict=True):
            if p and p[-1] == self.eos:  # tokenizers that close every text with EOS: the answer follows here
                p = p[:-1]
            a = [*a, self.eos][: self.max_answer]
            p = p[: self.max_prompt]
            if self.max_length is not None:
                a = a[: self.max_length - 1]
                p = p[: self.max_length - len(a)]
            out.append((p, a))
        return out

    def collate(
        self, encoded: list[tuple[list[int], list[int]]], probs: list[np.ndarray], indices: np.ndarray, position: int
    ) -> Batch:
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
        return Batch(input_ids, attention_mask, labels, teacher_probs, lengths, indices, position)


# ---------------------------------------------------------------------------------------------- stream


@dataclass
class ReaderStats:
    reads: int = 0  # read_rows calls
    rows_read: int = 0
    max_group_rows: int = 0  # largest single read: the bound on decoded rows held at once
    batches: int = 0  # batches handed to the queue


class BatchStream:
    """Iterator over micro-batches from ``start_batch`` on, prepared by a background thread.

    Use as a context manager (or call ``close``) so the thread stops when training does.
    """

    def __init__(
        self,
        cache: Cache,
        encoder: StudentEncoder,
        *,
        batch_size: int,
        seed: int,
        shuffle_chunks: int,
        start_batch: int = 0,
        prefetch: int = 8,
        pin_memory: bool = False,
    ):
        if len(cache) == 0:
            raise ValueError(f"{cache.path}: the cache holds no examples")
        self.cache, self.encoder = cache, encoder
        self.batch_size, self.seed, self.pin_memory = batch_size, seed, pin_memory
        self.groups = chunk_groups(cache, shuffle_chunks)
        self.start_position = start_batch * batch_size
        self.stats = ReaderStats()
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

    def _examples(self) -> Iterator[tuple[int, np.ndarray]]:
        """(cache index, teacher probs [n_rows, k]) in stream order from the start position, forever."""
        n = len(self.cache)
        epoch, skip = divmod(self.start_position, n)
        for e in itertools.count(epoch):
            for group in epoch_order(self.groups, self.seed, e):
                if skip >= len(group):
                    skip -= len(group)
                    continue
                first, last = int(group.min()), int(group.max())  # a group's examples are contiguous in the cache
                lo = int(self.cache.row_start[first])
                hi = int(self.cache.row_start[last] + self.cache.n_rows[last])
                probs = self.cache.read_rows(lo, hi)[0]  # [hi - lo, k], one sequential read
                self.stats.reads += 1
                self.stats.rows_read += hi - lo
                self.stats.max_group_rows = max(self.stats.max_group_rows, hi - lo)
                for i in group[skip:]:
                    start = int(self.cache.row_start[i]) - lo
                    yield int(i), probs[start : start + int(self.cache.n_rows[i])]
                skip = 0

    def _produce(self) -> None:
        examples = self._examples()
        position = self.start_position
        while not self._stop.is_set():
            chosen = list(itertools.islice(examples, self.batch_size))
            indices = np.array([i for i, _ in chosen])
            take = indices.tolist()
            prompts = self._prompts.take(take).to_pylist()
            answers = self._answers.take(take).to_pylist()
            batch = self.encoder.collate(
                self.encoder.encode(prompts, answers), [rows for _, rows in chosen], indices, position
            )
            if self.pin_memory:
                batch = Batch(
                    *(
                        t.pin_memory()
                        for t in (
                            batch.input_ids,
                            batch.attention_mask,
                            batch.labels,
                            batch.teacher_probs,
                            batch.teacher_lengths,
                        )
                    ),
                    indices,
                    position,
                )
            if not self._put(batch):
                return
            self.stats.batches += 1
            position += self.batch_size

    def _put(self, item) -> bool:
        """Block until the queue takes ``item``; False when asked to stop meanwhile."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False
