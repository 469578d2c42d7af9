"""Stage configs: one frozen dataclass per stage, each field documented once.

The click options and their ``--help`` are generated from the fields (``click_options``), and a YAML config
file is read section by section (``load``): file values first, then any flag given on the command line.
Unknown keys are errors; ``__post_init__`` validates and names the flag and the bad value.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import yaml

from pipeline import losses


class ConfigError(ValueError):
    """A config file or flag value that cannot be used; the message names it."""


_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxlist, _BRIEF.maxdict, _BRIEF.maxtuple, _BRIEF.maxstring, _BRIEF.maxother = (
    2,
    4,
    4,
    4,
    60,
    60,
)


def brief(value: Any) -> str:
    """``repr(value)`` cut short: a few items of each container, two levels deep, so that a value from a
    hostile config file costs the error message a bounded amount whatever it holds."""
    return _BRIEF.repr(value)


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    choices: tuple[str, ...] | None = None,
    factory: Callable[[], Any] | None = None,
    cli: bool = True,
    operational: bool = False,
    comma_list: bool = False,
) -> Any:
    """A config field with its help text (shown by ``--help``) and, optionally, allowed values.

    ``operational``: the field changes how a run is carried out, not what it computes (a resumed run may change it).
    ``comma_list``: a list field whose items may each be comma-separated (``--tasks a,b --tasks c``), split by
    :func:`load`.
    """
    meta = {"help": help, "choices": choices, "cli": cli, "operational": operational, "comma_list": comma_list}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def operational_fields(cls: type) -> frozenset[str]:
    """Names of the fields of ``cls`` declared with ``option(..., operational=True)``."""
    return frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get("operational"))


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_choice(cfg: Any, name: str) -> None:
    choices = {f.name: f.metadata.get("choices") for f in dataclasses.fields(cfg)}[name]
    value = getattr(cfg, name)
    if choices and value not in choices:
        raise ConfigError(f"{flag_name(name)}: {brief(value)} is not one of {', '.join(choices)}")


def check_positive(cfg: Any, *names: str, allow_zero: bool = False) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is not None and (value < 0 if allow_zero else value <= 0):
            raise ConfigError(f"{flag_name(name)}: must be {'≥ 0' if allow_zero else '> 0'}, got {brief(value)}")


def check_text_limits(cfg: Any) -> None:
    """The text contract needs room for BOS or </s> beside a prompt, and for EOS after an answer."""
    if cfg.max_prompt_tokens < 2:
        raise ConfigError(f"--max-prompt-tokens: must be at least 2, got {cfg.max_prompt_tokens!r}")
    if cfg.max_answer_tokens < 1:
        raise ConfigError(f"--max-answer-tokens: must be at least 1, got {cfg.max_answer_tokens!r}")


def check_all_choices(cfg: Any) -> None:
    for f in dataclasses.fields(cfg):
        if f.metadata.get("choices"):
            check_choice(cfg, f.name)


def check_file_tasks(specs: tuple[str, ...], fields: dict[str, str], task_splits: dict[str, str]) -> None:
    """Task names unique, field map keys naming roles of file tasks, split overrides naming tasks that have splits.

    Pure checks on the values (no file is opened): what the files hold is checked when a stage reads them.
    """
    from pipeline.tasks import TaskError, task_names
    from pipeline.tasks.files import HUB_PREFIX, check_fields, check_specs, is_file_spec, parse_hub, task_name

    try:
        check_specs(specs, task_names())
    except TaskError as e:
        raise ConfigError(f"--tasks: {e}") from None
    try:
        check_fields(fields, specs)
    except TaskError as e:
        raise ConfigError(f"--fields: {e}") from None
    by_name = {task_name(s): s for s in specs} | {s: s for s in specs}
    for name, split in task_splits.items():
        spec = by_name.get(name)
        if spec is None:
            raise ConfigError(f"--task-splits: {name!r} is not one of the --tasks ({', '.join(specs)})")
        if split not in SPLITS:
            raise ConfigError(f"--task-splits: {name}={split!r} is not one of {', '.join(SPLITS)}")
        if is_file_spec(spec) and not spec.startswith(HUB_PREFIX):
            raise ConfigError(f"--task-splits: {spec} is a file, read whole: it has no splits")
        if spec.startswith(HUB_PREFIX) and parse_hub(spec).split:
            raise ConfigError(f"--task-splits: {spec} names its split already (@{parse_hub(spec).split})")


def check_finite(cfg: Any) -> None:
    """Every float field a finite number: NaN passes every comparison-based check, inf makes no sense here."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{flag_name(f.name)}: must be a finite number, got {brief(value)}")


# ---------------------------------------------------------------------------------------------- stage configs

FIELDS_HELP = (
    "Columns of file tasks: ROLE=COLUMN for every file task, TASK.ROLE=COLUMN for one (TASK: the file stem); "
    "roles: prompt, answer, messages, options, label, id; e.g. prompt=question,answer=reply. A YAML config may "
    "also give TASK: {ROLE: COLUMN}."
)
SPLITS = ("train", "validation", "test")

# The demo mixture: examples per demo task (the tasks themselves: pipeline.tasks.demo.DEMO_TASKS).
DEMO_MIXTURE = {
    "demo_yesno": 160,
    "demo_nli": 160,
    "demo_mc4": 160,
    "demo_qa": 160,
    "demo_summary": 160,
    "demo_concepts": 160,
}


@dataclass(frozen=True)
class TeacherCacheConfig:
    out: str | None = option(
        None, "Cache directory (or fsspec URL) to write, or to resume; required.", operational=True
    )
    teacher: str = option("models/tiny-t5-teacher", "Teacher: a Hugging Face hub id or a local directory.")
    revision: str | None = option(None, "Hub revision (branch, tag or commit) of the teacher.")
    tasks: dict[str, int] = option(
        help="Mixture: task=examples pairs, e.g. boolq=1000,squad=1000; a task may be your own file "
        "(data/support.jsonl=2000: .jsonl, .json, .csv or .parquet) or hf:ORG/NAME[:CONFIG][@SPLIT].",
        factory=lambda: dict(DEMO_MIXTURE),
    )
    fields: dict[str, str] = option(help=FIELDS_HELP, factory=dict)
    data_dir: str | None = option(None, "Folder of original release files, <data-dir>/<task>/; default: the hub.")
    split: str = option("train", "Split of each task the mixture is drawn from.")
    task_splits: dict[str, str] = option(
        help="Per-task split overrides, e.g. xsum=test (XSum's release files ship a test split only).", factory=dict
    )
    seed: int = option(0, "Seed of the mixture (examples, templates, order).")
    limit: int | None = option(None, "Cache only the first N examples of the mixture.")
    field_caps: dict[str, int] = option(help="Cap named prompt fields to N words, e.g. passage=300.", factory=dict)
    top_k: int = option(64, "Probabilities kept per answer row.")
    temperature: float = option(1.0, "Softmax temperature T of the cached distributions.")
    answers: str = option(
        "gold", "Cache rows of the dataset answer, or of the teacher's greedy answer.", choices=("gold", "teacher")
    )
    quantize: str = option(
        "none",
        "Teacher weights: NF4 4-bit, int8 (bitsandbytes, bf16 compute, CUDA or CPU) or unquantized.",
        choices=("none", "nf4", "int8"),
    )
    compare_unquantized: int | None = option(
        None,
        "Instead of caching, show what --quantize costs this teacher: top-1 agreement and mean L1 of its top-k rows "
        "against the unquantized teacher's, over the first N examples (same batches and answers); writes nothing.",
        operational=True,
    )
    device: str = option(
        "auto", "Where the teacher runs: auto picks CUDA when present.", choices=("auto", "cpu", "cuda")
    )
    batch_size: int = option(32, "Examples per teacher batch (batches are bucketed by length).")
    chat_template: bool = option(
        False,
        "Show a causal teacher its text through its chat template (prompt as the user turn, answer as the assistant "
        "turn, the template's end token as EOS) instead of BOS + prompt, then ' ' + answer + EOS.",
    )
    max_prompt_tokens: int = option(
        512,
        "Prompt tokens kept, BOS/</s> and chat markup included; a longer prompt loses its middle (instructions "
        "open and questions close prompts), or the example with --prompt-overflow skip.",
    )
    prompt_overflow: str = option(
        "truncate", "Longer prompts: cut their middle, or leave the example out.", choices=("truncate", "skip")
    )
    max_answer_tokens: int = option(128, "Answer rows cached per example, EOS included.")
    answer_overflow: str = option(
        "skip",
        "A longer answer: leave the example out (the official recipe), or cut it to the limit with its EOS kept "
        "(the cache records which; --answers teacher needs cut).",
        choices=("skip", "cut"),
    )
    store_ids: bool = option(
        True,
        "Store the teacher token id of each top-k probability (the token-aware distill losses need them; "
        "--no-store-ids saves about half the bytes for plain ULD).",
    )
    ids_k: int | None = option(
        None,
        "Store the ids of only the N most probable of the top-k entries of each row (default: all of them); the "
        "token-aware losses treat the rest as unidentified mass. On a 49k vocabulary at --top-k 64, 32 keeps "
        "96.7 % of the top-k mass identified for half the id bytes (schema v1.2).",
    )
    chunk_rows: int = option(4096, "Rows per Zarr chunk (the unit a reader decodes).")
    shard_rows: int = option(65536, "Rows per Zarr shard file (the unit a writer commits).")
    worker: int | None = option(
        None,
        "With --num-workers N: this process writes batches b with b % N == I into OUT/worker-I-of-N.",
        operational=True,
    )
    num_workers: int | None = option(
        None,
        "Processes writing one cache together (default: WORLD_SIZE and RANK under torchrun or accelerate "
        "launch, else 1); join their parts with kdpipe cache merge.",
        operational=True,
    )

    def __post_init__(self) -> None:
        check_all_choices(self)
        check_finite(self)
        check_positive(
            self,
            "top_k",
            "temperature",
            "batch_size",
            "max_prompt_tokens",
            "max_answer_tokens",
            "chunk_rows",
            "shard_rows",
            "limit",
            "num_workers",
            "ids_k",
            "compare_unquantized",
        )
        from cache_schema import MAX_CHUNK_BYTES, MAX_TOP_K

        if self.compare_unquantized is not None and self.quantize == "none":
            raise ConfigError("--compare-unquantized: compares a quantized teacher; give --quantize nf4 or int8")

        if self.ids_k is not None and self.ids_k > self.top_k:
            raise ConfigError(f"--ids-k: {self.ids_k} is more than the --top-k {self.top_k} entries of a row")
        if self.ids_k is not None and not self.store_ids:
            raise ConfigError("--ids-k: keeps the ids of the first entries, which --no-store-ids leaves out")

        if self.top_k > MAX_TOP_K:
            raise ConfigError(f"--top-k: {self.top_k} is more than the {MAX_TOP_K} a cache may hold per row")
        if self.chunk_rows * self.top_k * 2 > MAX_CHUNK_BYTES:
            raise ConfigError(
                f"--chunk-rows: {self.chunk_rows} rows of {self.top_k} probabilities exceed the "
                f"{MAX_CHUNK_BYTES} bytes a reader accepts per chunk"
            )
        if not self.tasks:
            raise ConfigError("--tasks: the mixture names no task")
        for name, n in self.tasks.items():
            if not isinstance(n, int) or n <= 0:
                raise ConfigError(f"--tasks: {name}={n!r} must be a positive number of examples")
        check_file_tasks(tuple(self.tasks), self.fields, self.task_splits)
        if self.shard_rows % self.chunk_rows:
            raise ConfigError(f"--shard-rows: {self.shard_rows} is not a multiple of --chunk-rows {self.chunk_rows}")
        if self.answers == "teacher" and self.answer_overflow != "cut":
            raise ConfigError(
                "--answer-overflow: --answers teacher cuts a greedy answer that does not end within "
                "--max-answer-tokens (keeping its EOS); say so with --answer-overflow cut"
            )
        check_text_limits(self)
        if (self.worker is None) != (self.num_workers is None):
            raise ConfigError("--worker and --num-workers go together (give neither to read RANK and WORLD_SIZE)")
        if self.num_workers is not None and not 0 <= self.worker < self.num_workers:
            raise ConfigError(f"--worker: {self.worker} is not in [0, --num-workers {self.num_workers})")

    def text_spec(self, layout: str):
        """The teacher's ``pipeline.text.TextSpec`` for a model of ``layout``."""
        from pipeline.text import TextSpec

        return TextSpec(layout, self.max_prompt_tokens, self.max_answer_tokens, self.answer_overflow)

    def mixture(self) -> dict:
        """The mixture spec recorded in the cache (and compared by distill): tasks, counts, split, seed, caps."""
        from pipeline.tasks import mixture_spec

        source = "files" if self.data_dir else "hub"
        return mixture_spec(
            self.tasks,
            split=self.split,
            seed=self.seed,
            limit=self.limit,
            caps=self.field_caps,
            source=source,
            fields=self.fields,
            task_splits=self.task_splits,
        )


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
    revision: str | None = option(None, "Hub revision (branch, tag or commit) of the student.")
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
    device: str = option(
        "auto", "Where the student trains: auto picks CUDA when present.", choices=("auto", "cpu", "cuda")
    )
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
        check_text_limits(self)
        if (self.batch_size * self.grad_accum) % self.lanes:
            raise ConfigError(
                f"--lanes: {self.lanes} does not divide the {self.batch_size * self.grad_accum} examples of a step "
                "(--batch-size × --grad-accum); every lane gives each step the same number of examples"
            )


# ---------------------------------------------------------------------------------------------- loading


def _coerce(name: str, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if value is None:
        return None
    if origin in (typing.Union, types.UnionType) and args:
        return _coerce(name, args[0], value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{flag_name(name)}: expected a mapping, got {brief(value)}")
        if args[1] is str:  # a nested mapping of text, {a: {b: c}}, is the flat {a.b: c} (per-task field maps)
            value = {
                f"{k}.{k2}" if isinstance(v, dict) else k: v2
                for k, v in value.items()
                for k2, v2 in (v.items() if isinstance(v, dict) else [(None, v)])
            }
        return {str(k): _coerce(name, args[1], v) for k, v in value.items()}
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError(f"{flag_name(name)}: expected a list, got {brief(value)}")
        return tuple(_coerce(name, args[0], v) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{flag_name(name)}: expected true or false, got {brief(value)}")
        return value
    if hint in (int, float, str):
        if hint is str and not isinstance(value, str | int | float):
            raise ConfigError(f"{flag_name(name)}: expected text, got {brief(value)}")
        try:
            coerced = hint(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{flag_name(name)}: expected {hint.__name__}, got {brief(value)}") from None
        if hint is int and coerced != value and not isinstance(value, str):
            raise ConfigError(f"{flag_name(name)}: expected an integer, got {brief(value)}")
        return coerced
    return value


# The sections a config file may hold, one per stage that reads one.
SECTIONS = ("teacher_cache", "distill", "eval")
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_DEPTH = 16  # nested mappings and lists; a stage config needs 4


class _ConfigLoader(yaml.SafeLoader):
    """Safe YAML without aliases and with bounded nesting: a config then holds at most what its bytes spell out.

    An alias repeats a whole subtree for a few bytes, so nine levels of ten (515 bytes) stand for 10^9 items
    that any walk, copy or message of the value expands (the "billion laughs"); a config has no need of them.
    The composer recurses once per level, so depth is bounded before Python's stack is.
    """

    def compose_document(self):
        self._depth = 0
        return super().compose_document()

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in a config file", self.peek_event().start_mark
            )
        self._depth += 1
        if self._depth > MAX_CONFIG_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested more than {MAX_CONFIG_DEPTH} levels deep", self.peek_event().start_mark
            )
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def read_section(path: str | Path | None, section: str) -> dict:
    """The mapping under ``section`` in a YAML config file ({} when no file); unknown sections are errors."""
    if path is None:
        return {}
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"--config: cannot read {path}: {e.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"--config: {path} is larger than {MAX_CONFIG_BYTES} bytes; is it really a config file?")
    try:
        data = yaml.load(raw.decode("utf-8"), Loader=_ConfigLoader) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"--config: {path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except yaml.YAMLError as e:
        message = " ".join(str(e).split())
        raise ConfigError(f"--config: {path} is not valid YAML: {message}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path} must hold a mapping of stage sections")
    unknown = sorted(str(k) for k in data if k not in SECTIONS)
    if unknown:
        raise ConfigError(f"--config: unknown section {brief(unknown[0])} in {path}; known: {', '.join(SECTIONS)}")
    value = data.get(section, {}) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"--config: section {section!r} of {path} must be a mapping")
    return value


def load(cls: type, path: str | Path | None, section: str, overrides: dict[str, Any] | None = None) -> Any:
    """Build ``cls`` from section ``section`` of the YAML file at ``path``, then flags that were given."""
    values = read_section(path, section)
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ConfigError(
            f"--config: unknown key {brief(unknown[0])} in section {section!r} of {path}; "
            f"known: {', '.join(sorted(hints))}"
        )
    values.update({k: v for k, v in (overrides or {}).items() if v not in (None, ()) and k in hints})
    try:
        coerced = {k: _coerce(k, hints[k], v) for k, v in values.items()}
        for f in dataclasses.fields(cls):
            if f.metadata.get("comma_list") and coerced.get(f.name) is not None:
                # "--tasks a,b", "--tasks a --tasks b" and a YAML list all mean the same list
                items = (s.strip() for item in coerced[f.name] for s in str(item).split(","))
                coerced[f.name] = tuple(dict.fromkeys(s for s in items if s))
        return cls(**coerced)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def to_dict(cfg: Any) -> dict:
    """JSON-ready config, recorded in every artifact."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}


# ---------------------------------------------------------------------------------------------- click


class _MappingParam(click.ParamType):
    """``name=value,name=value`` on the command line."""

    name = "NAME=VALUE,..."

    def __init__(self, value_type: type):
        self.value_type = value_type

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dict:
        if isinstance(value, dict):
            return value
        out = {}
        for item in filter(None, (s.strip() for s in str(value).split(","))):
            key, sep, raw = item.partition("=")
            if not sep:
                self.fail(f"{item!r} is not NAME=VALUE", param, ctx)
            try:
                out[key.strip()] = self.value_type(raw.strip())
            except ValueError:
                self.fail(f"{item!r}: {raw!r} is not a {self.value_type.__name__}", param, ctx)
        return out


def click_options(cls: type, *, skip: tuple[str, ...] = ()) -> Callable:
    """Decorator adding one option per field of ``cls``; every default is None so only given flags override."""
    hints = typing.get_type_hints(cls)

    def decorate(fn: Callable) -> Callable:
        for f in reversed(dataclasses.fields(cls)):
            if not f.metadata.get("cli", True) or f.name in skip:
                continue
            hint = hints[f.name]
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            base = args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) else hint
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            help_text = f"{f.metadata['help']}  [default: {_show(default)}]"
            kwargs: dict[str, Any] = {"default": None, "help": help_text}
            name = flag_name(f.name)
            if base is bool:
                fn = click.option(f"{name}/--no-{f.name.replace('_', '-')}", f.name, **kwargs)(fn)
                continue
            if typing.get_origin(base) is dict:
                kwargs["type"] = _MappingParam(typing.get_args(base)[1])
            elif typing.get_origin(base) is tuple:
                kwargs.update(type=typing.get_args(base)[0], multiple=True, default=None)
            elif f.metadata.get("choices"):
                kwargs["type"] = click.Choice(f.metadata["choices"])
            else:
                kwargs["type"] = base
            fn = click.option(name, f.name, **kwargs)(fn)
        return fn

    return decorate


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


# ---------------------------------------------------------------------------------------------- eval


@dataclass(frozen=True)
class EvalConfig:
    models: tuple[str, ...] = option(
        help="Model to evaluate: a local directory or a hub id; repeat for several.", factory=tuple
    )
    names: tuple[str, ...] = option(
        help="Short name per --model, in the same order (default: from the path).", factory=tuple
    )
    tasks: tuple[str, ...] = option(
        help="Tasks to evaluate, comma-separated or repeated; a task may be your own file (.jsonl, .json, .csv, "
        ".parquet) or hf:ORG/NAME[:CONFIG][@SPLIT].",
        factory=lambda: tuple(DEMO_MIXTURE),
        comma_list=True,
    )
    fields: dict[str, str] = option(help=FIELDS_HELP, factory=dict)
    metric: tuple[str, ...] = option(
        help="Metrics of file tasks that generate, comma-separated or repeated (rouge_l, squad, bleu, accuracy, "
        "bertscore); default: rouge_l, plus squad (exact match, F1) when the references are short. Options files "
        "are rank-classified (acc, acc_norm) whatever this says; built-in tasks keep their own metrics.",
        factory=tuple,
        comma_list=True,
    )
    data_dir: str | None = option(None, "Folder of original release files, <data-dir>/<task>/; default: the hub.")
    split: str = option("validation", "Split of each task to evaluate on.", choices=("validation", "test"))
    task_splits: dict[str, str] = option(
        help="Per-task split overrides, e.g. xsum=test (a folder holding only that split's file).", factory=dict
    )
    limit: int | None = option(None, "Evaluate the first N examples of each task.")
    seed: int = option(0, "Seed handed to the task loaders (the demo tasks generate their examples from it).")
    field_caps: dict[str, int] = option(help="Cap named prompt fields to N words, e.g. passage=300.", factory=dict)
    max_prompt_tokens: int = option(
        512,
        "Prompt tokens kept; a longer prompt loses its middle (instructions open "
        "and questions close prompts). A causal model's context caps it further.",
    )
    chat_template: bool = option(
        False,
        "Show causal models their prompts through their chat template (a distilled student uses the layout it "
        "was trained with, which this must not contradict).",
    )
    max_new_tokens: int | None = option(None, "Cap on generated tokens (default: each task's own budget).")
    batch_size: int = option(16, "Sequences per forward pass (prompt+option pairs, or prompts to generate from).")
    quantize: str = option(
        "none",
        "Weights of the evaluated models: NF4 4-bit, int8 (bitsandbytes, bf16 compute, CUDA or CPU) or unquantized.",
        choices=("none", "nf4", "int8"),
    )
    device: str = option(
        "auto", "Where the models run: auto picks CUDA when present.", choices=("auto", "cpu", "cuda")
    )
    bertscore_model: str | None = option(
        None, "Local BERTScore model directory; when given, generation tasks also report BERTScore."
    )
    include_trained: bool = option(
        False,
        "Also score examples a model was trained on (a kdpipe student's kdpipe_trained_on.parquet lists the examples "
        "of the cache it was distilled from); by default they are left out of every model's evaluation, the next "
        "examples of the split take their place, and results.md counts them.",
    )
    exclude_cache: tuple[str, ...] = option(
        help="Caches whose examples are left out too (what a teacher or base model was trained on); repeatable.",
        factory=tuple,
    )
    resume: bool = option(
        True, "Reuse (model, task) results already in --out that were made with the same settings and model files."
    )
    out: str = option("runs/eval", "Folder for results.json, results.md, results.png and predictions/.")

    def __post_init__(self) -> None:
        """Checks of the values alone; what they name (tasks, folders) is checked by the eval stage."""
        check_all_choices(self)
        check_positive(self, "limit", "max_prompt_tokens", "max_new_tokens", "batch_size")
        if not self.models:
            raise ConfigError("--model: give at least one model to evaluate")
        if self.names and len(self.names) != len(self.models):
            raise ConfigError(f"--name: {len(self.names)} names for {len(self.models)} models; give one per --model")
        bad = [n for n in self.names if not n or "/" in n or "\\" in n or n.startswith(".")]
        if bad or len(set(self.names)) != len(self.names):
            raise ConfigError(f"--name: names must be unique folder names, got {list(self.names)!r}")
        if not self.tasks:
            raise ConfigError("--tasks: no task to evaluate")
        check_file_tasks(self.tasks, self.fields, self.task_splits)
        from pipeline.evaluation.metrics import METRIC_KEYS

        for name in self.metric:
            if name not in METRIC_KEYS or name == "coverage":
                known = ", ".join(m for m in METRIC_KEYS if m != "coverage")
                raise ConfigError(f"--metric: {name!r} is not one of {known} (coverage needs concepts)")


# The sizes of `kdpipe gpu-check` (pipeline.devtools.gpu_check); tests shrink them to run the same code on the CPU.
@dataclasses.dataclass(frozen=True)
class GpuCheckConfig:
    out: str = option("runs/gpu-check", "Folder for the caches, the student and summary.json (rewritten).")
    teacher: str = option("models/tiny-t5-teacher", "Teacher to cache: the embedded default, or any seq2seq LM.")
    student: str = option("models/tiny-gpt2-student", "Student to distill: the embedded default, or any causal LM.")
    examples: int = option(960, "Examples of the demo mixture the teacher caches.")
    distill_steps: int = option(100, "Optimizer steps of the bf16 distill (batch 16).")
    data_rows: int = option(200_000, "Rows of the synthetic cache of the data-path benchmark.")
    bench_vocab: int = option(50_257, "Student vocabulary of the ULD and step benchmarks (GPT-2's).")
    bench_medium: bool = option(True, "GPT-2-medium shapes in the step benchmark (else a 2-layer GPT-2).")
    bench_rounds: int = option(3, "Rounds of the step benchmark over its variants (the best median is kept).")
    online_examples: int = option(192, "Examples of the offline-against-online benchmark (cached, then trained on).")
    online_steps: int = option(12, "Timed steps of each side of the offline-against-online benchmark.")

    def __post_init__(self) -> None:
        check_positive(
            self,
            "examples",
            "distill_steps",
            "data_rows",
            "bench_vocab",
            "bench_rounds",
            "online_examples",
            "online_steps",
        )
