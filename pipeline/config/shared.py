"""What more than one stage config holds: the fields they share, each documented once, and their common checks.

A field two stages read the same way (``data_dir``, ``field_caps``, ``fields``, ``task_splits``) is defined here
once; a field whose meaning differs only by the model it is about (``revision``, ``device``, ``quantize``) takes
that model's name. Fields that mean different things in different stages (``seed``, ``split``, ``limit``,
``max_prompt_tokens``) stay in their stage's config.
"""

from __future__ import annotations

from typing import Any

from pipeline.config.framework import ConfigError, option

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

FIELDS_HELP = (
    "Columns of file tasks: ROLE=COLUMN for every file task, TASK.ROLE=COLUMN for one (TASK: the file stem); "
    "roles: prompt, answer, messages, options, label, id; e.g. prompt=question,answer=reply. A YAML config may "
    "also give TASK: {ROLE: COLUMN}."
)
QUANTIZE = ("none", "nf4", "int8")
DEVICES = ("auto", "cpu", "cuda")


def fields() -> Any:
    return option(help=FIELDS_HELP, factory=dict)


def data_dir() -> Any:
    return option(None, "Folder of original release files, <data-dir>/<task>/; default: the hub.")


def task_splits() -> Any:
    return option(
        help="Per-task split overrides, e.g. xsum=test (XSum's release files ship a test split only).", factory=dict
    )


def field_caps() -> Any:
    return option(help="Cap named prompt fields to N words, e.g. passage=300.", factory=dict)


def revision(model: str) -> Any:
    return option(None, f"Hub revision (branch, tag or commit) of the {model}.")


def device(where: str) -> Any:
    """``where``: what runs there, e.g. "the teacher runs"."""
    return option("auto", f"Where {where}: auto picks CUDA when present.", choices=DEVICES)


def quantize(weights: str) -> Any:
    """``weights``: whose weights, e.g. "Teacher weights"."""
    return option(
        "none",
        f"{weights}: NF4 4-bit, int8 (bitsandbytes, bf16 compute, CUDA or CPU) or unquantized.",
        choices=QUANTIZE,
    )


def check_text_limits(cfg: Any) -> None:
    """The text contract needs room for BOS or </s> beside a prompt, and for EOS after an answer."""
    if cfg.max_prompt_tokens < 2:
        raise ConfigError(f"--max-prompt-tokens: must be at least 2, got {cfg.max_prompt_tokens!r}")
    if cfg.max_answer_tokens < 1:
        raise ConfigError(f"--max-answer-tokens: must be at least 1, got {cfg.max_answer_tokens!r}")


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
