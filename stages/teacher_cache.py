"""Stage 1, teacher-cache: run the teacher once over the mixture and write its top-k answer distributions.

validate → build the mixture (a bad file task fails here, before any model loads) → load the teacher → tokenize
and plan length-bucketed batches → for each batch not yet committed: forward (or generate), softmax(logits / T)
and top-k on the device → hand the rows to a background writer that commits whole batches → finalize
(examples.parquet, checksums, complete).

The batch plan depends only on the config, and committed work is marked per range of batches, so a run
killed at any moment and started again computes the remaining batches exactly as the first run would have.
With several workers (--worker/--num-workers, or RANK/WORLD_SIZE from torchrun or accelerate launch), each
computes every N-th batch of that plan into a part of its own; ``kdpipe cache merge`` joins the parts.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import timedelta

import numpy as np
import torch
from tqdm import tqdm

import cache_schema
from pipeline import output_lock
from pipeline.alignment import generated_spans
from pipeline.config import ConfigError, TeacherCacheConfig, operational_fields, to_dict
from pipeline.models import load_config_and_tokenizer, load_model, pick_device, tokenizer_fingerprint
from pipeline.teacher.batches import (
    Prepared,
    batch_rows,
    encode_examples,
    mixture_examples,
    plan_batches,
    teacher_text,
)
from pipeline.teacher.rows import Rows
from pipeline.text import TextEncoder, token_bytes

log = logging.getLogger(__name__)

COMMIT_SECONDS = 30.0  # commit at least this often, so a kill loses at most this much teacher time


@dataclass
class TeacherCacheResult:
    path: str
    examples: int
    rows: int
    seconds: float  # teacher loop and finalize
    resumed_from_batch: int
    prepare_seconds: float = 0.0  # mixture, tokenization and batch plan
    forward_seconds: float = 0.0  # of ``seconds``, in the teacher's batches (forward, softmax, top-k, copy to host)
    already_complete: bool = False
    workers: int = 1  # > 1: ``path`` is this worker's part
    merged: str | None = None  # under a launcher: the cache rank 0 merged the parts into
    skipped: dict = field(default_factory=dict)
    truncated: dict = field(default_factory=dict)


def run(cfg: TeacherCacheConfig) -> TeacherCacheResult:
    """Write (or resume, or confirm) the cache for ``cfg`` at ``cfg.out``.

    Under torchrun or ``accelerate launch`` (no --worker flags), each rank writes its part, then rank 0 waits
    for all of them and merges them into ``cache_schema.merged_path(cfg.out)``; a rank that dies leaves its part
    resumable, and rerunning the same launch resumes every part and then merges.
    """
    if not cfg.out:
        raise ConfigError("--out: give the cache directory to write (or resume)")
    worker, workers = _worker_slot(cfg)
    target = cache_schema.worker_part(cfg.out, worker, workers) if workers > 1 else cfg.out
    with output_lock.hold(target):  # one writer per cache: a second run on it stops here, naming the first
        result = _run(cfg, cfg.out)
    if result.workers > 1 and cfg.num_workers is None and "MASTER_ADDR" in os.environ:
        result.merged = _merge_on_rank0(cfg.out)
    return result


def _merge_on_rank0(out: str) -> str:
    """Wait for every rank's part (gloo barrier, no deadline worth hitting), then merge on rank 0."""
    import torch.distributed as dist

    from pipeline.distributed import process_group

    # gloo: the barrier only waits, and ranks may finish hours apart
    with process_group("gloo", timeout=timedelta(days=7)):
        dist.barrier()
        target = cache_schema.merged_path(out)
        if dist.get_rank() == 0:
            cache_schema.merge_parts([out], target)
        dist.barrier()
        return target


def _run(cfg: TeacherCacheConfig, out: str) -> TeacherCacheResult:
    worker, workers = _worker_slot(cfg)
    device = pick_device(cfg.device)
    if device.type == "cuda" and workers > 1 and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))  # one GPU per process under torchrun
    _check_top_k(cfg)
    prepare_start = time.monotonic()
    examples, source_skipped = mixture_examples(cfg)  # the data first: a bad file fails before the teacher loads
    mixture_seconds = time.monotonic() - prepare_start
    model, tokenizer, teacher_info = load_model(
        cfg.teacher, revision=cfg.revision, quantize=cfg.quantize, device=device, role="teacher"
    )
    prepare_start = time.monotonic()
    text = teacher_text(cfg, model, tokenizer)
    prepared, skipped, truncated = encode_examples(examples, text, cfg)
    skipped = {"source": source_skipped, **skipped}
    plan = plan_batches(prepared, cfg.batch_size, cfg.seed)
    identity = cache_schema.identity_attrs(
        teacher=teacher_info,
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        top_k=cfg.top_k,
        temperature=cfg.temperature,
        answers=cfg.answers,
        eos_token_id=text.eos,
        text=text.spec.to_dict(),
        mixture=cfg.mixture(),
        config=_config_attr(cfg),
    )
    if workers > 1:
        out = cache_schema.worker_part(out, worker, workers)
        identity.update(cache_schema.worker_attrs(worker, workers, len(plan)))
        plan = plan[worker::workers]  # this worker's global batches, in plan order
    max_rows = sum(len(b) for b in plan) * cfg.max_answer_tokens
    try:
        writer = cache_schema.CacheWriter(
            out,
            identity,
            max_rows=max_rows,
            store_ids=cfg.store_ids,
            ids_k=cfg.ids_k,
            chunk_rows=cfg.chunk_rows,
            shard_rows=cfg.shard_rows,
            vocab=token_bytes(text.tokenizer, size=model.get_output_embeddings().weight.shape[0]),
        )
    except cache_schema.CacheComplete:
        meta = cache_schema.open_cache(out).meta
        counts = meta[cache_schema.ATTR_COUNTS]
        return TeacherCacheResult(
            out, counts["examples"], counts["rows"], 0.0, len(plan), already_complete=True, workers=workers
        )
    prepare_seconds = mixture_seconds + time.monotonic() - prepare_start
    resumed_from = writer.next_batch
    if resumed_from:
        log.info("resuming %s: %d of %d batches already committed", out, resumed_from, len(plan))
    start = time.monotonic()
    forward_seconds = _write_batches(model, text, prepared, plan, writer, cfg, device)
    per_task = writer.per_task_counts()
    if cfg.answers == "teacher":  # greedy answers that reached the limit were cut there, EOS kept
        truncated = {**truncated, "answer": writer.examples_with_rows(cfg.max_answer_tokens)}
    writer.finalize(cache_schema.counts_attrs(writer.examples, writer.rows, per_task, skipped, truncated))
    return TeacherCacheResult(
        out,
        writer.examples,
        writer.rows,
        time.monotonic() - start,
        resumed_from,
        prepare_seconds,
        forward_seconds=forward_seconds,
        skipped=skipped,
        truncated=truncated,
        workers=workers,
    )


def _check_top_k(cfg: TeacherCacheConfig) -> None:
    """--top-k against the teacher's vocabulary, read from its config before any weight is loaded."""
    config, _ = load_config_and_tokenizer(cfg.teacher, cfg.revision, "teacher")
    vocab = getattr(config, "vocab_size", None)
    if isinstance(vocab, int) and cfg.top_k > vocab:
        raise ConfigError(f"--top-k: {cfg.top_k} is more than the teacher's vocabulary of {vocab} tokens")


def _worker_slot(cfg: TeacherCacheConfig) -> tuple[int, int]:
    """(worker, workers): the flags, else RANK and WORLD_SIZE as torchrun and accelerate launch set them."""
    if cfg.num_workers is not None:
        return cfg.worker, cfg.num_workers
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if world is None:
        return 0, 1
    try:
        slot = replace(cfg, worker=int(rank or 0), num_workers=int(world))
    except (ValueError, ConfigError) as e:
        raise ConfigError(f"RANK={rank!r} WORLD_SIZE={world!r}: not a worker slot ({e})") from None
    return slot.worker, slot.num_workers


def _config_attr(cfg: TeacherCacheConfig) -> dict:
    """The config a cache records: without where and how it ran (its path, the worker slot), so all parts, a
    one-worker run and a copy elsewhere record the same."""
    return {k: v for k, v in to_dict(cfg).items() if k not in operational_fields(TeacherCacheConfig)}


def _write_batches(
    model,
    text: TextEncoder,
    prepared: list[Prepared],
    plan: list[list[int]],
    writer: cache_schema.CacheWriter,
    cfg: TeacherCacheConfig,
    device: torch.device,
) -> float:
    """Compute the remaining batches; a background thread commits them so the teacher never waits on disk.

    Returns the seconds spent in the teacher's batches, so a run shows how much of it was host work.
    """
    committer = _Committer(writer, cfg.shard_rows)
    done = sum(len(b) for b in plan[: writer.next_batch])
    bar = tqdm(total=sum(len(b) for b in plan), initial=done, desc="teacher-cache", unit="ex", mininterval=1.0)
    rows, start, forward = 0, time.monotonic(), 0.0
    try:
        for b in range(writer.next_batch, len(plan)):
            items = [prepared[i] for i in plan[b]]
            began = time.perf_counter()
            rows_of = batch_rows(model, text, items, cfg, device)  # ends in a copy to the host: synchronised
            forward += time.perf_counter() - began
            records = [
                {
                    "key": it.example.key,
                    "task": it.example.task,
                    "template_id": it.example.template_id,
                    "prompt": it.example.prompt,
                    "answer": it.example.answer if cfg.answers == "gold" else text.decode_answer(a[:-1]),
                    "n_rows": len(a),
                    "source_id": it.example.source_id,
                }
                for it, a in zip(items, rows_of.answers, strict=True)
            ]
            if cfg.answers == "gold":
                spans = np.concatenate([it.answer_spans for it in items])
            else:  # the teacher's own answer: spans of its generated ids in the decoded text
                spans = np.concatenate(
                    [generated_spans(text, a, r["answer"]) for a, r in zip(rows_of.answers, records, strict=True)]
                )
            committer.put(b, records, rows_of, spans)
            rows += len(rows_of.tail)
            elapsed = max(time.monotonic() - start, 1e-9)
            bar.update(len(items))
            bar.set_postfix(ex_s=f"{(bar.n - done) / elapsed:.1f}", rows_s=f"{rows / elapsed:.0f}")
    finally:
        bar.close()
        committer.close()  # commits every finished batch, also when interrupted
    return forward


@dataclass(frozen=True)
class _Finished:
    """A computed batch waiting to be committed."""

    batch: int  # index in the batch plan
    records: list[dict]  # examples.parquet rows of its examples
    rows: Rows
    spans: np.ndarray  # int32 [R, 2]: byte span of each row's token in its example's answer


class _Committer:
    """Background thread that accumulates finished batches and commits them in order."""

    def __init__(self, writer: cache_schema.CacheWriter, shard_rows: int):
        self.writer, self.shard_rows = writer, shard_rows
        self.queue: queue.Queue = queue.Queue(maxsize=8)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="cache-writer", daemon=True)
        self.thread.start()

    def put(self, batch: int, records: list[dict], rows: Rows, spans: np.ndarray) -> None:
        if self.error:
            raise self.error
        self.queue.put(_Finished(batch, records, rows, spans))

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error:
            raise self.error

    def _loop(self) -> None:
        pending, first, last_commit = [], None, time.monotonic()
        while True:
            item = self.queue.get()
            if item is not None:
                if first is None:
                    first = item.batch
                pending.append(item)
            due = (
                sum(len(p.rows.tail) for p in pending) >= self.shard_rows
                or time.monotonic() - last_commit > COMMIT_SECONDS
            )
            if pending and (item is None or due):
                try:
                    self._commit(first, pending)
                except BaseException as e:  # surfaced to the main thread on its next put/close
                    self.error = e
                    return
                pending, first, last_commit = [], None, time.monotonic()
            if item is None:
                return

    def _commit(self, first: int, pending: list[_Finished]) -> None:
        cat = np.concatenate
        rows = [p.rows for p in pending]
        topk = cat([r.topk_ids for r in rows]) if rows[0].topk_ids is not None else None
        self.writer.commit(
            first,
            pending[-1].batch + 1,
            [record for p in pending for record in p.records],
            cat([r.probs for r in rows]),
            cat([r.tail for r in rows]),
            cat([r.token_ids for r in rows]),
            topk,
            batch_examples=[len(p.records) for p in pending],
            spans=cat([p.spans for p in pending]),
            label_probs=cat([p.rows.label_probs for p in pending]),
        )
