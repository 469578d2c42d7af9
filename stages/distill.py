"""Stage 2, distill: train a causal-LM student from the teacher cache with CE + λ·ULD (λ = 0: the FT baseline).

validate → open the cache → check the output directory (fresh, or the same run to resume) → load the student
(from the last checkpoint when resuming) → stream batches from the cache in the background → train with a
progress bar, one metrics.jsonl row per step and a checkpoint every N steps → save the student with
``save_pretrained``, the run's config and cache provenance, and the loss curve.

The data order, the learning rate and the checkpointed state are all the uninterrupted run's, so a run killed
at any point and resumed with ``--resume`` reproduces its metrics step for step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

import cache_schema
from pipeline import __version__, training
from pipeline.cache_reader import BatchStream, StudentEncoder
from pipeline.config import DISTILL_OPERATIONAL, ConfigError, DistillConfig, to_dict
from pipeline.losses import causal_lm_ce, uld_loss
from pipeline.models import pick_device

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


def run(
    cfg: DistillConfig,
    cache: str | os.PathLike,
    out: str | os.PathLike,
    resume: bool = False,
    expected_mixture: str | None = None,
) -> DistillResult:
    """Train the student of ``cfg`` from the cache at ``cache`` into ``out`` (continuing it with ``resume``).

    ``expected_mixture``: fingerprint of the mixture the config asks for; a cache of another mixture is refused
    unless ``cfg.accept_cache``.
    """
    out = Path(out)
    device = pick_device(cfg.device)
    bf16 = _use_bf16(cfg.precision, device)
    teacher_cache = cache_schema.open_cache(cache)
    cache_schema.check_provenance(teacher_cache, expected_mixture, accept=cfg.accept_cache)
    if len(teacher_cache) == 0:
        raise cache_schema.CacheError(f"{teacher_cache.path}: the cache holds no examples")
    record = {
        "complete": False,
        "config": to_dict(cfg),
        "cache": _provenance(teacher_cache),
        "tool_version": __version__,
    }
    previous = _check_out(out, record, resume)
    if previous is not None and previous.get("complete"):
        return DistillResult(str(out), previous["steps"], previous["steps"], 0.0, previous["final"], True)

    torch.manual_seed(cfg.seed)
    checkpoint = training.latest_checkpoint(out) if resume else None
    model, tokenizer = training.load_student(cfg.student, cfg.revision, checkpoint[1] if checkpoint else None)
    model.to(device)
    if cfg.gradient_checkpointing:
        _checkpointing(model, enable=True)
    optimizer = training.build_optimizer(model, cfg)
    start = training.load_training_state(checkpoint[1], optimizer) if checkpoint is not None else 0
    if start:
        log.info("resuming %s from the checkpoint at step %d", out, start)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / RUN_FILE, record)
    total = training.total_steps(cfg, len(teacher_cache))
    encoder = StudentEncoder(tokenizer, cfg.max_prompt_tokens, cfg.max_answer_tokens, training.max_positions(model))
    metrics = training.MetricsLog(out / METRICS_FILE, keep_through_step=start)
    began = time.monotonic()
    with BatchStream(
        teacher_cache,
        encoder,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        shuffle_chunks=cfg.shuffle_chunks,
        start_batch=start * cfg.grad_accum,
        prefetch=cfg.prefetch,
        pin_memory=device.type == "cuda",
    ) as stream:
        try:
            _train(model, optimizer, stream, metrics, cfg, out, start, total, bf16, len(teacher_cache))
        finally:
            metrics.close()
    seconds = time.monotonic() - began

    _save_student(model, tokenizer, cfg, out)
    training.plot_metrics(metrics.rows, out / CURVE_FILE, f"{Path(cfg.student).name}: CE + {cfg.uld_weight}·ULD")
    final = metrics.rows[-1] if metrics.rows else {}
    record.update(complete=True, steps=total, final=final, examples_seen=total * cfg.grad_accum * cfg.batch_size)
    _write_json(out / RUN_FILE, record)  # written last: "complete" means the student above is whole
    if not cfg.keep_checkpoint:
        shutil.rmtree(out / training.CHECKPOINTS_DIR, ignore_errors=True)
    return DistillResult(str(out), total, start, seconds, final)


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
    config = {k: v for k, v in record["config"].items() if k not in DISTILL_OPERATIONAL}
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
    metrics: training.MetricsLog,
    cfg: DistillConfig,
    out: Path,
    start: int,
    total: int,
    bf16: bool,
    examples: int,
) -> None:
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    model.train()
    bar = tqdm(
        total=total, initial=start, desc="distill" if cfg.uld_weight else "finetune", unit="step", mininterval=1.0
    )
    for step in range(start, total):
        began = time.perf_counter()
        lr = training.lr_at(step, total, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        sums, wait, tokens = {"loss": 0.0, "ce": 0.0, "uld": 0.0}, 0.0, 0
        for _ in range(cfg.grad_accum):
            waited = time.perf_counter()
            batch = next(stream).to(device)
            wait += time.perf_counter() - waited
            tokens += batch.tokens
            with autocast:
                logits = model(
                    input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
                ).logits  # [B, T, Vs]
            ce = causal_lm_ce(logits, batch.labels)
            # λ = 0 is the FT baseline: its ULD distance is measured without gradient so both curves compare.
            with torch.set_grad_enabled(cfg.uld_weight > 0):
                uld = uld_loss(
                    logits,
                    batch.labels,
                    batch.teacher_probs,
                    batch.teacher_lengths,
                    student_temperature=cfg.student_temperature,
                    skip_student_eos=cfg.skip_student_eos,
                )
            loss = ce + cfg.uld_weight * uld if cfg.uld_weight > 0 else ce
            (loss / cfg.grad_accum).backward()
            values = torch.stack([loss.detach(), ce.detach(), uld.detach()]).float().tolist()  # one device sync
            for key, value in zip(("loss", "ce", "uld"), values, strict=True):
                sums[key] += value / cfg.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or math.inf)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - began
        row = {
            "step": step + 1,
            "epoch": round((step + 1) * cfg.grad_accum * cfg.batch_size / examples, 4),
            **{k: round(v, 6) for k, v in sums.items()},
            "lr": lr,
            "grad_norm": round(float(grad_norm), 4),
            "tokens_s": round(tokens / seconds, 1),
            "data_wait": round(wait / seconds, 4),
            "step_s": round(seconds, 4),
        }
        if not math.isfinite(row["loss"]):
            raise ConfigError(f"--lr: the loss became {row['loss']} at step {step + 1}; try a lower --lr")
        metrics.append(row)
        bar.update(1)
        bar.set_postfix(
            loss=f"{row['loss']:.3f}",
            uld=f"{row['uld']:.3f}",
            tok_s=f"{row['tokens_s']:.0f}",
            wait=f"{100 * row['data_wait']:.1f}%",
        )
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total:
            training.save_checkpoint(out, step + 1, model, optimizer)
    bar.close()
    if cfg.keep_checkpoint and total > start:
        training.save_checkpoint(out, total, model, optimizer)


def _save_student(model, tokenizer, cfg: DistillConfig, out: Path) -> None:
    """The trained student as a Hugging Face checkpoint: loads with from_pretrained and runs in a pipeline."""
    if cfg.gradient_checkpointing:
        _checkpointing(model, enable=False)
    model.config.use_cache = True
    generation = model.generation_config
    if generation.pad_token_id is None:  # padding in generate, under the attention mask like in training
        pad = tokenizer.pad_token_id
        generation.pad_token_id = pad if pad is not None else tokenizer.eos_token_id
    if generation.eos_token_id is None:
        generation.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _checkpointing(model, enable: bool) -> None:
    """Activation (gradient) checkpointing; transformers 5 renamed it and deprecates the old name."""
    prefix = "activation" if hasattr(model, "activation_checkpointing_enable") else "gradient"
    getattr(model, f"{prefix}_checkpointing_{'enable' if enable else 'disable'}")()


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str))
    os.replace(tmp, path)
