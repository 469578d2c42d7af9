"""Stage 2, distill: train a causal-LM student from the teacher cache with CE + λ·ULD (λ = 0: the FT baseline).

validate → open the cache → check the output directory (fresh, or the same run to resume) → load the student
(from the last checkpoint when resuming) → stream batches from the cache in the background → train with a
progress bar, one metrics.jsonl row per step and a checkpoint every N steps → save the student with
``save_pretrained``, the run's config and cache provenance, the record of its training examples
(``pipeline.trained_on``, so eval never scores it on them) and the loss curve.

The data order, the learning rate and the checkpointed state are all the uninterrupted run's, so a run killed
at any point and resumed with ``--resume`` reproduces its metrics step for step.

Several processes (torchrun, ``accelerate launch``; ``pipeline.distributed``) share each optimizer step's
global batch of batch_size × grad_accum examples, each reading its own lanes of the cache; the loss is
normalised over the whole global batch, so the run follows the one-process run (up to the order of float
sums) and its checkpoints resume on any number of processes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

import cache_schema
from pipeline import __version__, distributed, output_lock, trained_on
from pipeline.atomic import write_atomic
from pipeline.config import ConfigError, DistillConfig, operational_fields, to_dict
from pipeline.distributed import World
from pipeline.losses.ce import answer_tokens, causal_lm_ce
from pipeline.models import context_limit
from pipeline.student import objective, reporting, training
from pipeline.student.cache_stream import BatchStream, StudentEncoder
from pipeline.student.diagnostics import answer_health
from pipeline.text import PROMPT_POLICY, TextEncoder, TextSpec, save_spec

log = logging.getLogger(__name__)

RUN_FILE = "kdpipe_distill_config.json"  # the run's config and cache provenance; "complete" once saved
METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "loss_curve.png"
# The cache attributes a student records, so it can be traced to its teacher and data.
PROVENANCE_ATTRS = (
    cache_schema.ATTR_SCHEMA,
    cache_schema.ATTR_VERSION,
    cache_schema.ATTR_TEACHER,
    cache_schema.ATTR_TOKENIZER_FP,
    cache_schema.ATTR_TOP_K,
    cache_schema.ATTR_TEMPERATURE,
    cache_schema.ATTR_ANSWERS,
    cache_schema.ATTR_TEXT,
    cache_schema.ATTR_MIXTURE,
    cache_schema.ATTR_MIXTURE_FP,
    cache_schema.ATTR_DIGEST,
)


@dataclass
class DistillResult:
    path: str
    steps: int
    resumed_from_step: int
    seconds: float
    final: dict  # the last metrics row
    already_complete: bool = False
    rank: int = 0  # of the process that returns it (torchrun, accelerate: only rank 0 reports)


def run(cfg: DistillConfig) -> DistillResult:
    """Train the student of ``cfg`` from the cache at ``cfg.cache`` into ``cfg.out`` (continuing it when
    ``cfg.resume``).

    Under torchrun or ``accelerate launch`` every process calls this; rank 0 alone touches ``cfg.out``. A cache
    whose mixture is not ``cfg.expected_mixture`` (when set) is refused unless ``cfg.accept_cache``.
    """
    if not cfg.cache:
        raise ConfigError("--cache: required, the teacher cache to train from")
    if not cfg.out:
        raise ConfigError("--out: required, the folder for the student")
    out = Path(cfg.out)
    # rank 0 alone writes ``out``, so it alone holds the lock that stops a second run on the same --out at once
    with (
        distributed.launch(cfg.device) as world,
        output_lock.hold(str(out)) if world.main else contextlib.nullcontext(),
    ):
        return _run(cfg, out, world)


def _run(cfg: DistillConfig, out: Path, world: World) -> DistillResult:
    _check_world(cfg, world)
    bf16 = _use_bf16(cfg.precision, world.device)
    teacher_cache = cache_schema.open_cache(cfg.cache, checksums=cfg.cache_checksums)
    cache_schema.check_provenance(teacher_cache, cfg.expected_mixture, accept=cfg.accept_cache)
    objective.check_cache(cfg, teacher_cache)
    if len(teacher_cache) == 0:
        raise cache_schema.CacheError(f"{teacher_cache.path}: the cache holds no examples")
    spec = _student_text_spec(cfg, teacher_cache)
    record = {
        "complete": False,
        "config": to_dict(cfg),
        "text": spec.to_dict(),
        "cache": _provenance(teacher_cache),
        "tool_version": __version__,
    }
    previous, checkpoint = distributed.on_main(world, lambda: _resume_point(out, record, cfg.resume))
    if previous is not None and previous.get("complete"):
        return DistillResult(str(out), previous["steps"], previous["steps"], 0.0, previous["final"], True, world.rank)

    torch.manual_seed(cfg.seed)
    weights = Path(checkpoint[1]) if checkpoint and world.main else None  # the others get rank 0's weights
    model, tokenizer = training.load_student(cfg.student, cfg.revision, weights)
    if cfg.gradient_checkpointing:
        training.activation_checkpointing(model, enable=True)
    model = distributed.wrap(model, world, cfg.parallel)
    optimizer = training.build_optimizer(model, cfg)
    start = checkpoint[0] if checkpoint else 0
    if checkpoint:
        training.load_training_state(weights, model, optimizer, world)
        log.info("resuming %s from the checkpoint at step %d", out, start)
    if world.main:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / RUN_FILE, json.dumps(record, indent=2, default=str))
    total = training.total_steps(cfg, len(teacher_cache))
    hf_model = distributed.unwrap(model)
    encoder = StudentEncoder(TextEncoder(tokenizer, spec, context_limit(hf_model.config)))
    metrics = training.MetricsLog(out / METRICS_FILE, keep_through_step=start) if world.main else None
    reporter = reporting.open_reporter(cfg.report_to, out, to_dict(cfg)) if world.main else reporting.Reporter()
    began = time.monotonic()
    kd = objective.Objective(cfg, teacher_cache, tokenizer, hf_model, world.device)
    with BatchStream(
        teacher_cache,
        encoder,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        shuffle_chunks=cfg.shuffle_chunks,
        step_examples=cfg.batch_size * cfg.grad_accum,
        lanes=cfg.lanes,
        rank=world.rank,
        world_size=world.size,
        start_step=start,
        prefetch=cfg.prefetch,
        pin_memory=world.device.type == "cuda",
        **kd.reader_options(),
    ) as stream:
        try:
            final = _train(
                model,
                optimizer,
                stream,
                metrics=metrics,
                cfg=cfg,
                out=out,
                start=start,
                total=total,
                bf16=bf16,
                examples=len(teacher_cache),
                world=world,
                kd=kd,
                reporter=reporter,
            )
        finally:
            reporter.close()
            if metrics is not None:
                metrics.close()
    seconds = time.monotonic() - began
    if kd.align is not None:
        log.info("reader thread: %.2f s pairing tokens by bytes for --loss %s", stream.stats.align_seconds, cfg.loss)

    training.save_student(model, tokenizer, out, world, checkpointed=cfg.gradient_checkpointing, record=record)
    if world.main:
        save_spec(out, spec, tokenizer)
        trained_on.write(out, trained_on.from_cache(teacher_cache))  # eval leaves these examples out
        cut = {k: v for k, v in encoder.counts.items() if v}
        if cut:
            log.info("student text on this rank (over all epochs): %s", cut)
        title = f"{Path(cfg.student).name}: CE + {cfg.uld_weight}·{cfg.loss}"
        training.plot_metrics(metrics.rows, out / CURVE_FILE, title)
        final = metrics.rows[-1] if metrics.rows else {}
        examples_seen = total * cfg.grad_accum * cfg.batch_size
        record.update(complete=True, steps=total, final=final, examples_seen=examples_seen, processes=world.size)
        record["align_seconds"] = round(stream.stats.align_seconds, 3)  # reader thread, this rank
        # written last: "complete" means the student above is whole
        write_atomic(out / RUN_FILE, json.dumps(record, indent=2, default=str))
        if not cfg.keep_checkpoint:
            shutil.rmtree(out / training.CHECKPOINTS_DIR, ignore_errors=True)
    return DistillResult(str(out), total, start, seconds, final, rank=world.rank)


def _student_text_spec(cfg: DistillConfig, teacher_cache) -> TextSpec:
    """The student's text contract; warns where the teacher's cached text cannot match what the student sees.

    The student cuts answers as the teacher did (``answer_overflow``); prompt limits count different
    tokenizers, so they cannot agree token for token: a prompt the teacher saw cut may reach the student whole
    (its cached rows then come from a shorter context than the student's), and the other way round.
    """
    teacher = cache_schema.text_spec(teacher_cache.meta)
    layout = "chat" if cfg.chat_template else "causal"
    if teacher is None:
        log.warning(
            "%s predates the text contract (no %r attribute): its teacher saw an unrecorded layout and "
            "truncation; the student follows the contract and cuts over-long answers keeping EOS",
            teacher_cache.path,
            cache_schema.ATTR_TEXT,
        )
        return TextSpec(layout, cfg.max_prompt_tokens, cfg.max_answer_tokens, "cut")
    if teacher.get("prompt_policy") != PROMPT_POLICY:
        log.warning(
            "%s: the teacher's prompts were cut by policy %r, the student's by %r",
            teacher_cache.path,
            teacher.get("prompt_policy"),
            PROMPT_POLICY,
        )
    cut = cache_schema.nonzero_counts(teacher_cache.meta[cache_schema.ATTR_COUNTS].get("truncated", {}))
    if cut.get("prompt"):
        log.warning(
            "%s: the teacher saw %d prompts cut to %d teacher tokens (their middle); the student sees up to %d "
            "student tokens of them, so those rows come from a shorter prompt than the student's",
            teacher_cache.path,
            cut["prompt"],
            teacher["max_prompt_tokens"],
            cfg.max_prompt_tokens,
        )
    return TextSpec(layout, cfg.max_prompt_tokens, cfg.max_answer_tokens, teacher.get("answer_overflow", "cut"))


def _check_world(cfg: DistillConfig, world: World) -> None:
    if cfg.lanes % world.size:
        raise ConfigError(
            f"--lanes: {cfg.lanes} lanes cannot be shared evenly by {world.size} processes; use a multiple of "
            f"{world.size} (the lanes are part of the data order: a run keeps its --lanes on any number of processes)"
        )


def _resume_point(out: Path, record: dict, resume: bool) -> tuple[dict | None, tuple[int, str] | None]:
    """Rank 0: the previous record in ``out`` (None when fresh) and its newest checkpoint (step, directory)."""
    previous = _check_out(out, record, resume)
    if previous is None or previous.get("complete") or not resume:
        return previous, None
    checkpoint = training.latest_checkpoint(out)
    return previous, (checkpoint[0], str(checkpoint[1])) if checkpoint else None


def _use_bf16(precision: str, device: torch.device) -> bool:
    if precision == "bf16" and not (device.type == "cuda" and torch.cuda.is_bf16_supported()):
        raise ConfigError("--precision bf16: bf16 autocast needs a CUDA GPU that supports it (use fp32 or auto)")
    return precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())


def _provenance(cache: cache_schema.Cache) -> dict:
    """What the student was trained from: the cache's teacher, mixture and schema (by attribute name)."""
    meta = cache.meta
    provenance = {name: meta.get(name) for name in PROVENANCE_ATTRS}
    provenance["path"] = cache.path
    provenance["examples"], provenance["rows"] = len(cache), cache.total_rows
    return provenance


def _identity(record: dict) -> dict:
    """What a resumed run must share with the one it continues: the config that shapes the math, and the cache."""
    config = {k: v for k, v in record["config"].items() if k not in operational_fields(DistillConfig)}
    return {
        **{f"--{k.replace('_', '-')}": v for k, v in config.items()},
        "cache": record["cache"][cache_schema.ATTR_DIGEST],
    }


def _check_out(out: Path, record: dict, resume: bool) -> dict | None:
    """The previous record of the run in ``out`` (None when starting fresh); refuses another run's directory."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return None
    if not out.is_dir():
        raise ConfigError(f"--out: {out} exists and is not a directory")
    try:
        previous = json.loads((out / RUN_FILE).read_text())
    except (OSError, ValueError):
        raise ConfigError(f"--out: {out} is not empty and holds no kdpipe distill run; choose another --out") from None
    if not resume:
        state = "a finished" if previous.get("complete") else "an unfinished"
        raise ConfigError(
            f"--out: {out} already holds {state} distill run; pass --resume to continue it, or choose another --out"
        )
    mine, theirs = _identity(record), _identity(previous)
    for key in sorted(set(mine) | set(theirs)):
        if mine.get(key) != theirs.get(key):
            raise ConfigError(
                f"--resume: the run in {out} has {key} {theirs.get(key)!r}, this one {mine.get(key)!r}; "
                "resume with the same settings or choose another --out"
            )
    return previous


def _train(
    model,
    optimizer,
    stream: BatchStream,
    *,
    metrics: training.MetricsLog | None,
    cfg: DistillConfig,
    out: Path,
    start: int,
    total: int,
    bf16: bool,
    examples: int,
    world: World,
    kd: objective.Objective,
    reporter: reporting.Reporter | None = None,
) -> dict:
    """The optimizer steps from ``start`` to ``total``; returns the last metrics row.

    The loss of a step is over its whole global batch, however the batch is split into micro-batches and
    processes: CE is the sum of token losses over the batch's answer tokens divided by their count, ULD the sum
    of per-example distances divided by the examples with paired rows. Both counts are summed over the ranks
    before the forward passes, each rank backpropagates its sums divided by them (times the world size, as DDP
    and FSDP average gradients over ranks), and so the gradient is the one-process gradient of the same batch.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    model.train()
    bar = tqdm(
        total=total,
        initial=start,
        desc="distill" if cfg.uld_weight else "finetune",
        unit="step",
        mininterval=1.0,
        disable=not world.main,
    )
    row: dict = {}
    for step in range(start, total):
        began = time.perf_counter()
        torch.manual_seed(training.step_seed(cfg.seed, world.rank, step))
        lr = training.lr_at(step, total, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        waited = time.perf_counter()
        micro = [batch.to(world.device) for batch in stream.next_step()]
        wait = time.perf_counter() - waited
        tokens, pairs = distributed.sum_over_ranks(
            world,
            [
                sum(answer_tokens(b.labels) for b in micro),
                sum(kd.pairs(b) for b in micro),
            ],
        )
        sums = torch.zeros(2, dtype=torch.float64, device=world.device)  # Σ CE, Σ KD of this rank
        for i, batch in enumerate(micro):
            with distributed.gradient_sync(model, enabled=i == len(micro) - 1):
                ce, term, health = _losses(model, batch, cfg, autocast, kd)
                loss = (
                    ce / max(tokens, 1) + cfg.uld_weight * term / max(pairs, 1)
                    if cfg.uld_weight > 0
                    else ce / max(tokens, 1)
                )
                (loss * world.size).backward()
            sums += torch.stack([ce.detach(), term.detach()]).double()
        grad_norm = distributed.grad_norm_value(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or math.inf))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        local_tokens = sum(b.tokens for b in micro)
        ce_sum, kd_sum, all_tokens, all_wait = distributed.sum_over_ranks(world, [*sums.tolist(), local_tokens, wait])
        seconds = time.perf_counter() - began
        ce, kd_value = ce_sum / max(tokens, 1), kd_sum / max(pairs, 1)
        row = {
            "step": step + 1,
            "epoch": round((step + 1) * cfg.grad_accum * cfg.batch_size / examples, 4),
            "loss": round(ce + cfg.uld_weight * kd_value if cfg.uld_weight > 0 else ce, 6),
            "ce": round(ce, 6),
            "kd": round(kd_value, 6),  # the --loss term, whatever it is
            **({"uld": round(kd_value, 6)} if kd.family == "uld" else {}),  # its name in the ULD family's logs
            "lr": lr,
            "grad_norm": round(grad_norm, 4),
            "tokens_s": round(all_tokens / seconds, 1),
            "data_wait": round(all_wait / world.size / seconds, 4),
            "step_s": round(seconds, 4),
            # a student that stops ending answers, or answers everything alike (pipeline.student.diagnostics; the
            # step's last micro-batch on this process)
            # four significant digits: a pretrained student's EOS probability starts far below 1e-4
            **{k: float(f"{v:.4g}") if math.isfinite(v) else None for k, v in health.items()},
        }
        if not math.isfinite(row["loss"]):
            raise ConfigError(f"--lr: the loss became {row['loss']} at step {step + 1}; try a lower --lr")
        if metrics is not None:
            metrics.append(row)
        if reporter is not None:
            reporter.log(row)
        bar.update(1)
        bar.set_postfix(
            loss=f"{row['loss']:.3f}",
            kd=f"{row['kd']:.3f}",
            tok_s=f"{row['tokens_s']:.0f}",
            wait=f"{100 * row['data_wait']:.1f}%",
        )
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total:
            training.save_checkpoint(out, step + 1, model, optimizer, world)
    bar.close()
    if cfg.keep_checkpoint and total > start:
        training.save_checkpoint(out, total, model, optimizer, world)
    return row


def _losses(model, batch, cfg: DistillConfig, autocast, kd) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Σ CE over the micro-batch's answer tokens, Σ of the KD term (``--loss``, ``kd.term``) over its examples, and
    the answer health (``pipeline.student.diagnostics``)."""
    with autocast:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    ce = causal_lm_ce(logits, batch.labels, reduction="sum")  # logits: [B, T, Vs]
    # λ = 0 is the FT baseline: its KD term is measured without gradient so both curves compare.
    with torch.set_grad_enabled(cfg.uld_weight > 0):
        term = kd.term(logits, batch)
    return ce, term, answer_health(logits, batch.labels)
