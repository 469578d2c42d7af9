"""Training pieces of the distill stage: student loading, optimizer, learning-rate schedule, checkpoints, metrics.

Everything a resumed run needs is either a pure function of the config and the step (the schedule, the data
order, the dropout seeds) or in the checkpoint (weights, optimizer state), so a run killed at any point and
resumed from its last checkpoint computes what the uninterrupted run would have, on any number of processes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from pipeline import distributed, model_card
from pipeline.atomic import write_atomic
from pipeline.config import ConfigError, DistillConfig
from pipeline.distributed import World
from pipeline.errors import ModelError
from pipeline.models import load_config_and_tokenizer, source_kwargs
from pipeline.text import add_bos_by_default, layout_tokens

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
TRAINING_STATE = "training_state.pt"
STATE_FORMAT = 2  # 2: optimizer state keyed by parameter name, gathered from all ranks; no RNG state
# OneCycleLR settings of the official ULD recipe (https://github.com/Nicolas-BZRD/llm-recipes, configs/training.py).
ONE_CYCLE_DIV = 2.0  # the first lr is peak / 2
ONE_CYCLE_FINAL_DIV = 5.0  # the last lr is (peak / 2) / 5


def load_student(name: str, revision: str | None, weights: Path | None = None):
    """A causal LM in float32 (autocast supplies bf16 compute) and its tokenizer, or a one-line ModelError.

    ``name``: a hub id, a local directory or a ``.gguf`` file (de-quantized to float32, then trained and saved as a
    regular checkpoint). ``weights``: a checkpoint directory to take the weights from instead (a resumed run).
    """
    config, tokenizer = load_config_and_tokenizer(name, revision, "student")
    if config.is_encoder_decoder:
        raise ModelError(f"student {name!r}: is an encoder-decoder ({config.model_type}); distill trains causal LMs")
    if tokenizer.eos_token_id is None:
        raise ModelError(f"student {name!r}: its tokenizer has no EOS token, which every answer ends with")
    try:
        if weights is not None:
            model = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32)
        else:  # a .gguf file is de-quantized from its folder, as teacher-cache and eval load one
            source, extra = source_kwargs(name, "student")
            model = AutoModelForCausalLM.from_pretrained(source, revision=revision, dtype=torch.float32, **extra)
            if extra and getattr(model, "hf_quantizer", None) is not None:
                # the weights are plain float32 now; without the GGUF marker save_pretrained writes them as any model
                model.hf_quantizer.remove_quantization_config(model)
    except (OSError, ValueError) as e:
        raise ModelError(f"student {name!r}: cannot load the weights ({str(e).splitlines()[0]})") from None
    return model, tokenizer


def total_steps(cfg: DistillConfig, examples: int) -> int:
    return cfg.steps or max(1, math.ceil(cfg.epochs * examples / (cfg.batch_size * cfg.grad_accum)))


def lr_at(step: int, total: int, cfg: DistillConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based) out of ``total``: a pure function, nothing to checkpoint.

    ``one-cycle`` follows torch.optim.lr_scheduler.OneCycleLR (cosine annealing, pct_start = warmup_ratio) with
    the official recipe's div factors; the others warm up linearly from 0 and then decay to 0 (cosine, linear)
    or stay (constant).
    """
    peak = cfg.lr
    if cfg.schedule == "one-cycle":
        initial = peak / ONE_CYCLE_DIV
        final = initial / ONE_CYCLE_FINAL_DIV
        up_end, down_end = cfg.warmup_ratio * total - 1, total - 1
        if up_end > 0 and step <= up_end:
            return _cos_anneal(initial, peak, step / up_end)
        down_start = max(up_end, 0)  # no warmup phase when it would be shorter than a step
        return _cos_anneal(peak, final, (step - down_start) / max(down_end - down_start, 1))
    warmup = round(cfg.warmup_ratio * total)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    if cfg.schedule == "cosine":
        return peak * 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.schedule == "linear":
        return peak * (1 - progress)
    return peak


def _cos_anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)


def build_optimizer(model, cfg: DistillConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (biases and norm gains are left alone, as in nanoGPT)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def save_student(model, tokenizer, out: Path, world: World, checkpointed: bool, record: dict | None = None) -> None:
    """The trained student as a Hugging Face checkpoint: loads with from_pretrained and runs in a pipeline.

    Every rank takes part in gathering the weights (FSDP holds them sharded); rank 0 writes them, and with the
    run ``record`` (config and cache provenance) a model card (:mod:`pipeline.model_card`). A tokenizer
    without a pad token gets its EOS as pad (no new token, so no new embedding row; padding is masked anyway) and left
    padding, so ``pipeline("text-generation", batch_size=2)`` batches prompts as kdpipe's own evaluation does; a
    student trained in the causal layout gets a tokenizer that adds BOS by itself
    (``pipeline.text.add_bos_by_default``), so tools that tokenize with its defaults see the prompts as training did.
    """
    hf_model = distributed.unwrap(model)
    if checkpointed:
        activation_checkpointing(hf_model, enable=False)
    state = distributed.full_model_state(model)
    if not world.main:
        return
    hf_model.config.use_cache = True
    generation = hf_model.generation_config
    if generation.pad_token_id is None:  # padding in generate, under the attention mask like in training
        pad = tokenizer.pad_token_id
        generation.pad_token_id = pad if pad is not None else tokenizer.eos_token_id
    if generation.eos_token_id is None:
        generation.eos_token_id = tokenizer.eos_token_id
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not hf_model.config.is_encoder_decoder:
        tokenizer.padding_side = "left"  # generation continues every row from the same position
        tokenizer.init_kwargs["padding_side"] = "left"  # what save_pretrained writes (the attribute is not saved)
    if record is not None and record["text"]["layout"] == "causal" and not add_bos_by_default(tokenizer):
        log.info("%s: the tokenizer cannot add BOS by itself; the model card says to put it before each prompt", out)
    hf_model.save_pretrained(out, state_dict=state)
    tokenizer.save_pretrained(out)
    if record is not None:
        model_card.write(out, record, layout_tokens(tokenizer, record["text"]["layout"]))


def activation_checkpointing(model, enable: bool) -> None:
    """Activation (gradient) checkpointing; transformers 5 renamed it and deprecates the old name."""
    prefix = "activation" if hasattr(model, "activation_checkpointing_enable") else "gradient"
    getattr(model, f"{prefix}_checkpointing_{'enable' if enable else 'disable'}")()


# ---------------------------------------------------------------------------------------------- checkpoints


def _step_dir(step: int) -> str:
    return f"step-{step:08d}"


def latest_checkpoint(out: Path) -> tuple[int, Path] | None:
    """(step, directory) of the newest complete checkpoint; leftovers of an interrupted write are removed."""
    root = out / CHECKPOINTS_DIR
    if not root.is_dir():
        return None
    found = []
    for entry in root.iterdir():
        if entry.name.startswith(".tmp-"):
            shutil.rmtree(entry)  # killed mid-write: never renamed, so never used
        elif entry.name.startswith("step-") and (entry / TRAINING_STATE).is_file():
            found.append((int(entry.name.removeprefix("step-")), entry))
    return max(found) if found else None


def save_checkpoint(out: Path, step: int, model, optimizer: torch.optim.Optimizer, world: World) -> Path:
    """Gather the full weights and optimizer state on rank 0 (every rank calls this), which writes them to a
    temporary directory, renames it into place and drops older ones.

    Nothing in it depends on the number of processes or the wrapper: the weights as ``save_pretrained`` writes
    them, the optimizer state keyed by parameter name, and the step. Dropout is seeded per step and rank
    (``step_seed``), so there is no RNG state to keep.
    """
    model_state = distributed.full_model_state(model)
    optimizer_state = distributed.full_optimizer_state(model, optimizer)
    root = out / CHECKPOINTS_DIR
    final, tmp = root / _step_dir(step), root / f".tmp-{_step_dir(step)}"
    if not world.main:
        return final
    root.mkdir(parents=True, exist_ok=True)
    if tmp.exists():
        shutil.rmtree(tmp)
    distributed.unwrap(model).save_pretrained(tmp, state_dict=model_state)
    torch.save({"format": STATE_FORMAT, "step": step, "optimizer": optimizer_state}, tmp / TRAINING_STATE)
    _fsync_dir(tmp)
    os.replace(tmp, final)  # atomic: a checkpoint directory is either absent or whole
    _fsync_dir(root)
    for entry in root.iterdir():
        if entry.name.startswith("step-") and entry != final:
            shutil.rmtree(entry)
    return final


def load_training_state(path: Path | None, model, optimizer: torch.optim.Optimizer, world: World) -> None:
    """Restore the optimizer state of checkpoint ``path``, read by rank 0 (``path`` is ignored elsewhere)."""
    state = {}
    if world.main:
        state = torch.load(path / TRAINING_STATE, map_location="cpu", weights_only=True)
        if state.get("format") != STATE_FORMAT:
            raise ConfigError(
                f"--resume: {path} was written by another kdpipe version (training state format "
                f"{state.get('format')!r}, this one reads {STATE_FORMAT}); start afresh in another --out"
            )
    distributed.load_optimizer_state(world, model, optimizer, state.get("optimizer", {}))


def step_seed(seed: int, rank: int, step: int) -> int:
    """The torch seed of optimizer step ``step`` on rank ``rank``: dropout masks are a function of the three."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def _fsync_dir(path: Path) -> None:
    for name in [*os.listdir(path), "."]:
        fd = os.open(path / name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------------------- metrics


class MetricsLog:
    """metrics.jsonl, one row per optimizer step; on resume, rows after the checkpoint are dropped first."""

    def __init__(self, path: Path, keep_through_step: int):
        self.path = path
        self.rows = read_metrics(path) if path.exists() else []
        self.rows = [r for r in self.rows if r["step"] <= keep_through_step]
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in self.rows))
        self._file = path.open("a")

    def append(self, row: dict) -> None:
        self.rows.append(row)
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_metrics(path: Path) -> list[dict]:
    """Rows of a metrics.jsonl; a line cut short by a kill is ignored."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s: ignoring an incomplete line", path)
    return rows


def plot_metrics(rows: list[dict], path: Path, title: str) -> None:
    """Loss curves (total, CE, the KD term) and the learning rate against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for key in ("loss", "ce", "kd"):
        top.plot(steps, [r[key] for r in rows], label=key, linewidth=1)
    top.set_ylabel("loss")
    top.set_title(title)
    top.legend()
    top.grid(alpha=0.3)
    bottom.plot(steps, [r["lr"] for r in rows], color="gray", linewidth=1)
    bottom.set_ylabel("lr")
    bottom.set_xlabel("step")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
