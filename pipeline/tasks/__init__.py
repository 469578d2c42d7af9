"""Tasks: records, FLAN-style instruction templates, and the seeded training mixture.

A task turns its source (generated demo data, original release files under ``<data-dir>/<task>/``, the
Hugging Face Hub, or the user's own file, :mod:`pipeline.tasks.files`) into :class:`Record` objects; a
:class:`Template` renders a record into a prompt and an answer. Training draws one template per example
(seeded); evaluation uses the first. A stage names its tasks by spec: a built-in task's name or a file task's
path (``hf:`` dataset); :func:`resolve_task` turns either into a :class:`Task`.
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

from cache_schema import example_key  # the cache's key column: one definition, which verify recomputes


class TaskError(ValueError):
    """A task name, split, data folder or field that cannot be used; the message names it."""


@dataclass(frozen=True)
class Record:
    """One task example before templating."""

    fields: Mapping[str, str]  # template inputs, e.g. {"passage": ..., "question": ...}
    targets: tuple[str, ...]  # reference outputs; targets[0] is the training answer; () for a prompt alone
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
    if record.options and record.label is not None:
        answer = record.options[record.label]
    else:
        answer = record.targets[0] if record.targets else ""  # a prompt alone: the teacher answers it
    return template.prompt.format(**values).strip(), template.answer.format(answer=answer).strip()


@dataclass(frozen=True)
class MixtureExample:
    key: str
    task: str
    template_id: int
    prompt: str
    answer: str  # "" for a prompt alone (a file task's row without an answer)
    source_id: str | None = None  # the record's own id in its source


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
    """A built-in task by name (a file task has no name until its spec is resolved: :func:`resolve_task`)."""
    tasks = _all_tasks()
    if name not in tasks:
        raise TaskError(f"unknown task {name!r}; known: {', '.join(sorted(tasks))}")
    return tasks[name]


def resolve_task(spec: str, fields: Mapping[str, str] | None = None, split: str = "train") -> Task:
    """The task a spec names: a built-in task's name, or a file task (``pipeline.tasks.files``) read with the field
    map ``fields``; ``split`` is the split a Hub dataset without its own ``@SPLIT`` is read from."""
    from pipeline.tasks import files

    if files.is_file_spec(spec):
        files.check_specs([spec], _all_tasks())
        return files.resolve(spec, fields, split)
    try:
        return get_task(spec)
    except TaskError as e:
        raise TaskError(f"{e}; or your own {'/'.join(files.SUFFIXES)} file, or {files.HUB_FORM}") from None


def resolve_tasks(
    specs: list[str], fields: Mapping[str, str] | None = None, splits: Mapping[str, str] | None = None
) -> list[Task]:
    """The tasks of a run, in order; their names unique (a file named like another task is an error).

    ``splits`` maps a spec to the split its Hub dataset is read from (default train).
    """
    from pipeline.tasks import files

    files.check_specs(specs, _all_tasks())
    files.check_fields(fields or {}, specs)
    return [resolve_task(spec, fields, (splits or {}).get(spec, "train")) for spec in specs]


def task_split(spec: str, split: str, task_splits: Mapping[str, str] | None) -> str:
    """The split a run reads of one task: its ``--task-splits`` entry (by spec or by name), else ``split``."""
    from pipeline.tasks.files import task_name

    overrides = task_splits or {}
    return overrides.get(spec, overrides.get(task_name(spec), split))


def build_mixture(
    tasks: Mapping[str, int],
    *,
    split: str,
    data_dir: Path | None,
    seed: int,
    caps: Mapping[str, int] | None = None,
    fields: Mapping[str, str] | None = None,
    task_splits: Mapping[str, str] | None = None,
    require_answers: bool = True,
) -> Mixture:
    """``tasks`` maps a task spec to how many examples to take from it (in source order, then shuffled).

    One template is drawn per example from a generator seeded by (seed, task, index), so adding a task
    does not change the draws of the others. The result is shuffled with ``seed``. ``fields`` is the field map of
    the file tasks, ``task_splits`` a split per task; ``require_answers``: a record without an answer (a file's
    prompt alone) is an error naming its file, as only a teacher that writes the answers can use one.
    """
    specs = list(tasks)
    splits = {spec: task_split(spec, split, task_splits) for spec in specs}
    examples: list[MixtureExample] = []
    skipped: dict[str, dict[str, int]] = {}
    for task, (spec, n) in zip(resolve_tasks(specs, fields, splits), tasks.items(), strict=True):
        name = task.name
        loaded = task.load(splits[spec], data_dir, n, seed)
        skipped[name] = dict(loaded.skipped)
        records = loaded.records[:n]
        unanswered = sum(not r.targets for r in records)
        if unanswered and require_answers:
            raise TaskError(
                f"{loaded.source or spec}: {unanswered} of its {len(records)} rows read have no answer; give them "
                "answers, or let the teacher answer them with --answers teacher"
            )
        for i, record in enumerate(records):
            template_id = random.Random(f"{seed}:{name}:{i}").randrange(len(task.templates))
            prompt, answer = render(task, record, template_id, caps)
            key = example_key(name, template_id, prompt, answer)
            examples.append(MixtureExample(key, name, template_id, prompt, answer, record.source_id))
    random.Random(seed).shuffle(examples)
    return Mixture(examples, skipped)


def mixture_spec(
    tasks: Mapping[str, int],
    *,
    split: str,
    seed: int,
    limit: int | None,
    caps: Mapping[str, int] | None,
    source: str,
    fields: Mapping[str, str] | None = None,
    task_splits: Mapping[str, str] | None = None,
) -> dict:
    """What defines a mixture, recorded in a cache: two equal specs over the same sources give equal examples.

    A mixture with file tasks also records each file's provenance under ``files`` (spec -> name, sha256, rows, the
    columns read), so that a changed file changes the fingerprint; ``task_splits`` is recorded when given. A
    mixture of built-in tasks alone has the spec (and fingerprint) it had before file tasks existed.
    """
    from pipeline.tasks.files import FileSource

    specs = list(tasks)
    splits = {spec: task_split(spec, split, task_splits) for spec in specs}
    resolved = dict(zip(specs, resolve_tasks(specs, fields, splits), strict=True))
    templates = {spec: [[t.prompt, t.answer] for t in task.templates] for spec, task in resolved.items()}
    digest = hashlib.sha256(repr(sorted(templates.items())).encode()).hexdigest()
    spec = {
        "tasks": dict(tasks),
        "split": split,
        "seed": seed,
        "limit": limit,
        "field_caps": dict(caps or {}),
        "source": source,
        "templates_sha256": digest,
    }
    files = {s: t.load.provenance(splits[s]) for s, t in resolved.items() if isinstance(t.load, FileSource)}
    if files:
        spec["files"] = files
    if task_splits:
        spec["task_splits"] = dict(task_splits)
    return spec
