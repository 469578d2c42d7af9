"""Tasks: records, FLAN-style instruction templates, and the seeded training mixture.

A task turns its source (generated demo data, original release files under ``<data-dir>/<task>/``, or the
Hugging Face Hub) into :class:`Record` objects; a :class:`Template` renders a record into a prompt and an
answer. Training draws one template per example (seeded); evaluation uses the first.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


class TaskError(ValueError):
    """A task name, split, data folder or field that cannot be used; the message names it."""


@dataclass(frozen=True)
class Record:
    """One task example before templating."""

    fields: Mapping[str, str]  # template inputs, e.g. {"passage": ..., "question": ...}
    targets: tuple[str, ...]  # reference outputs; targets[0] is the training answer
    options: tuple[str, ...] = ()  # option tasks: the answer strings that rank classification scores
    label: int | None = None  # option tasks: index of the right option
    concepts: tuple[str, ...] = ()  # concept-to-sentence tasks: the concepts the output should cover
    source_id: str | None = None  # the source's own id (SQuAD qid, SAMSum id...), for the official scorers


@dataclass(frozen=True)
class Template:
    """``prompt`` is a ``str.format`` pattern over the record's fields plus ``{options}`` (a rendered list)."""

    prompt: str
    answer: str = "{answer}"  # ``{answer}`` is the record's target (option tasks: the right option)


@dataclass(frozen=True)
class Loaded:
    records: list[Record]
    skipped: Counter = field(default_factory=Counter)  # reason -> count of malformed rows left out
    source: str = ""  # what was read: a file path, or "hub:<id>[/<config>]@<revision>"


# A loader gets (split, data_dir, limit, seed) and returns the task's records in source order.
Loader = Callable[[str, Path | None, int | None, int], Loaded]


@dataclass(frozen=True)
class Task:
    name: str
    kind: Literal["options", "generate"]
    templates: tuple[Template, ...]
    metrics: tuple[str, ...]  # metric names understood by pipeline.evaluation.metrics
    max_new_tokens: int  # generation budget at evaluation
    load: Loader = field(repr=False)
    description: str = ""


def render_options(options: tuple[str, ...]) -> str:
    return "OPTIONS:\n" + "\n".join(f"- {o}" for o in options)


def _cap(text: str, max_words: int | None) -> str:
    if max_words is None:
        return text
    words = text.split()
    return text if len(words) <= max_words else " ".join(words[:max_words])


def render(task: Task, record: Record, template_id: int, caps: Mapping[str, int] | None = None) -> tuple[str, str]:
    """Render ``record`` with template ``template_id``; ``caps`` limits named fields to that many words."""
    template = task.templates[template_id]
    caps = caps or {}
    values = {k: _cap(v, caps.get(k)) for k, v in record.fields.items()}
    values["options"] = render_options(record.options) if record.options else ""
    answer = record.options[record.label] if record.options and record.label is not None else record.targets[0]
    return template.prompt.format(**values).strip(), template.answer.format(answer=answer).strip()


def example_key(task: str, template_id: int, prompt: str, answer: str) -> str:
    """Stable content hash of one training example: the same text always gets the same key."""
    h = hashlib.blake2b(digest_size=16)
    for part in (task, str(template_id), prompt, answer):
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


@dataclass(frozen=True)
class MixtureExample:
    key: str
    task: str
    template_id: int
    prompt: str
    answer: str


@dataclass(frozen=True)
class Mixture:
    examples: list[MixtureExample]
    skipped: dict[str, dict[str, int]]  # task -> reason -> count (malformed source rows)


@functools.cache
def _all_tasks() -> dict[str, Task]:
    # Imported here: the task modules import this one for Record, Task and Template.
    from pipeline.tasks.catalog import REAL_TASKS
    from pipeline.tasks.demo import DEMO_TASKS

    tasks = {t.name: t for t in (*DEMO_TASKS, *REAL_TASKS)}
    if len(tasks) != len(DEMO_TASKS) + len(REAL_TASKS):
        raise TaskError("two tasks share a name: every task name must be unique")
    return tasks


def task_names() -> list[str]:
    return list(_all_tasks())


def get_task(name: str) -> Task:
    tasks = _all_tasks()
    if name not in tasks:
        raise TaskError(f"unknown task {name!r}; known: {', '.join(sorted(tasks))}")
    return tasks[name]


def build_mixture(
    tasks: Mapping[str, int],
    *,
    split: str,
    data_dir: Path | None,
    seed: int,
    caps: Mapping[str, int] | None = None,
) -> Mixture:
    """``tasks`` maps a task name to how many examples to take from it (in source order, then shuffled).

    One template is drawn per example from a generator seeded by (seed, task, index), so adding a task
    does not change the draws of the others. The result is shuffled with ``seed``.
    """
    examples: list[MixtureExample] = []
    skipped: dict[str, dict[str, int]] = {}
    for name, n in tasks.items():
        task = get_task(name)
        loaded = task.load(split, data_dir, n, seed)
        skipped[name] = dict(loaded.skipped)
        for i, record in enumerate(loaded.records[:n]):
            template_id = random.Random(f"{seed}:{name}:{i}").randrange(len(task.templates))
            prompt, answer = render(task, record, template_id, caps)
            examples.append(
                MixtureExample(example_key(name, template_id, prompt, answer), name, template_id, prompt, answer)
            )
    random.Random(seed).shuffle(examples)
    return Mixture(examples, skipped)


def mixture_spec(
    tasks: Mapping[str, int], *, split: str, seed: int, limit: int | None, caps: Mapping[str, int] | None, source: str
) -> dict:
    """What defines a mixture, recorded in a cache: two equal specs over the same sources give equal examples."""
    templates = {name: [[t.prompt, t.answer] for t in get_task(name).templates] for name in tasks}
    digest = hashlib.sha256(repr(sorted(templates.items())).encode()).hexdigest()
    return {
        "tasks": dict(tasks),
        "split": split,
        "seed": seed,
        "limit": limit,
        "field_caps": dict(caps or {}),
        "source": source,
        "templates_sha256": digest,
    }
