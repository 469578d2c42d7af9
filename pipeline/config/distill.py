"""The distill stage's config (``kdpipe distill``): the student, its loss and its training run."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline import losses
from pipeline.config import shared
from pipeline.config.framework import ConfigError, check_all_choices, check_finite, check_positive, option


@dataclass(frozen=True)
class DistillConfig:
    cache: str | None = option(
        None, "Teacher cache: a directory, a .zip or an fsspec URL; required.", operational=True
    )
    out: str | None = option(
        None, "Directory for the trained student, its metrics and checkpoints; required.", operational=True
    )
    resume: bool = option(False, "Continue the run in --out from its last checkpoint.", operational=True)
    expected_mixture: str | None = option(
        None,
        "Fingerprint of the mixture the cache must hold (the CLI takes it from the config file's teacher_cache "
        "section); a cache of another mixture is refused unless accept_cache.",
        cli=False,
        operational=True,
    )
    student: str = option("models/tiny-gpt2-student", "Student: a causal LM, hub id or local directory.")
    revision: str | None = shared.revision("student")
    uld_weight: float = option(
        1.5,
        "λ in CE + λ·KD, KD the --loss term (1.5 in the official ULD recipe); 0 is plain fine-tuning on the "
        "same examples, the FT baseline (the KD term is then still logged).",
    )
    student_temperature: float = option(1.0, "Temperature τ of the student softmax inside the KD term.")
    skip_student_eos: bool = option(
        True, "Leave the student row predicting EOS out of the KD term (the official ULD recipe)."
    )
    loss: str = option(
        "uld",
        losses.help_text(),
        choices=tuple(losses.LOSSES),
    )
    jsd_beta: float = option(0.5, "β of --loss jsd (TRL GKD's generalized JSD): 0 is forward KL, 1 reverse KL.")
    epochs: float = option(1.0, "Passes over the cache (fractions allowed); --steps overrides it.")
    steps: int | None = option(None, "Optimizer steps to train for (default: from --epochs).")
    batch_size: int = option(8, "Examples per micro-batch: the most one process trains on at once.")
    grad_accum: int = option(
        1,
        "Micro-batches per optimizer step on one process. A step trains on batch_size × grad_accum examples "
        "whatever the number of processes, which share them (each accumulating fewer micro-batches).",
    )
    lr: float = option(5e-5, "Peak learning rate of AdamW.")
    schedule: str = option(
        "one-cycle",
        "Learning-rate schedule after warmup; one-cycle is the official recipe's "
        "OneCycleLR (start lr/2, end lr/10, cosine).",
        choices=("one-cycle", "cosine", "linear", "constant"),
    )
    warmup_ratio: float = option(0.1, "Fraction of the steps spent warming up (one-cycle: its pct_start).")
    weight_decay: float = option(0.1, "AdamW decoupled weight decay, on weight matrices (not biases or norms).")
    max_grad_norm: float = option(1.0, "Clip the global gradient norm to this; 0 disables clipping.")
    seed: int = option(0, "Seed of the data order and of dropout.")
    device: str = shared.device("the student trains")
    precision: str = option(
        "auto",
        "bf16 autocast (CUDA) over fp32 weights, or plain fp32; auto is bf16 on a CUDA GPU that supports it.",
        choices=("auto", "bf16", "fp32"),
    )
    gradient_checkpointing: bool = option(False, "Recompute activations in the backward pass to save memory.")
    chat_template: bool = option(
        False,
        "Show the student its text through its chat template instead of BOS + prompt, then ' ' + answer + EOS; "
        "eval reads this choice from the saved student.",
    )
    max_prompt_tokens: int = option(
        512, "Student prompt tokens kept, BOS and chat markup included; a longer prompt loses its middle."
    )
    max_answer_tokens: int = option(
        128,
        "Student answer tokens kept, EOS included; a longer answer is handled as the cache's answer_overflow says "
        "(cut with EOS kept, or trained on nothing).",
    )
    shuffle_chunks: int = option(8, "Cache chunks read in one sequential range and shuffled together.")
    lanes: int = option(
        8,
        "Streams of chunk groups that every optimizer step draws from equally; part of the data order. "
        "Processes read disjoint lanes, so it must be a multiple of the number of processes and divide "
        "batch_size × grad_accum.",
    )
    parallel: str = option(
        "ddp",
        "With several processes (torchrun, accelerate launch): DDP replicates the student on every GPU, "
        "FSDP shards it (weights, gradients, optimizer state) for students that do not fit one GPU.",
        choices=("ddp", "fsdp"),
        operational=True,
    )
    prefetch: int = option(8, "Batches the background reader prepares ahead.", operational=True)
    report_to: str = option(
        "none",
        "Also send every metrics.jsonl row, with the run's config, to TensorBoard (<out>/tensorboard) or Weights & "
        "Biases (project kdpipe; WANDB_MODE=offline honoured).",
        choices=("none", "tensorboard", "wandb"),
        operational=True,
    )
    checkpoint_every: int = option(
        500, "Write a resumable checkpoint every N optimizer steps (0: never).", operational=True
    )
    keep_checkpoint: bool = option(False, "Keep the last checkpoint once training has finished.", operational=True)
    accept_cache: bool = option(
        False,
        "Train from a cache whose mixture differs from the config file's teacher_cache section, or from a lone "
        "worker part, with a warning instead of an error.",
        operational=True,
    )
    cache_checksums: str = option(
        "open",
        "Check the cache's file checksums before step 0 (open), each shard file as training first reads it "
        "(stream), or only that every file is there with a plausible size (none).",
        choices=("open", "stream", "none"),
        operational=True,
    )

    def __post_init__(self) -> None:
        check_all_choices(self)
        check_finite(self)
        check_positive(
            self,
            "student_temperature",
            "epochs",
            "steps",
            "batch_size",
            "grad_accum",
            "lr",
            "max_prompt_tokens",
            "max_answer_tokens",
            "shuffle_chunks",
            "lanes",
            "prefetch",
        )
        check_positive(
            self, "uld_weight", "weight_decay", "max_grad_norm", "seed", "checkpoint_every", allow_zero=True
        )
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"--warmup-ratio: must be in [0, 1), got {self.warmup_ratio!r}")
        if not 0 <= self.jsd_beta <= 1:
            raise ConfigError(f"--jsd-beta: must be in [0, 1], got {self.jsd_beta!r}")
        shared.check_text_limits(self)
        if (self.batch_size * self.grad_accum) % self.lanes:
            raise ConfigError(
                f"--lanes: {self.lanes} does not divide the {self.batch_size * self.grad_accum} examples of a step "
                "(--batch-size × --grad-accum); every lane gives each step the same number of examples"
            )
