"""The user's own data as a task: a local ``.jsonl``/``.json``/``.csv``/``.parquet`` file, or a Hub dataset.

A task spec that is not a built-in task's name is a file task (:func:`is_file_spec`): a local path with one of
:data:`SUFFIXES`, or ``hf:ORG/NAME[:CONFIG][@SPLIT]``, read with ``datasets.load_dataset(ORG/NAME, CONFIG,
split=SPLIT)`` (without ``@SPLIT``, the split the stage reads: train for teacher-cache, validation for eval, or
the ``--task-splits`` entry). A local file is one split and is read whole whatever the split. The task's name in
caches, results and predictions is the file's stem (``data/support.jsonl`` -> ``support``; a Hub dataset:
``NAME``, or ``NAME_CONFIG``); it must not clash with another task of the run or with a built-in task.

Columns (the role -> column *field map* renames them, ``--fields prompt=question,answer=reply``):

- ``prompt`` + ``answer``: the answer may be missing (a prompts-only row, which only ``--answers teacher``
  caches) or a list of strings (several references for eval; the first is the training answer);
- or ``messages``, a chat in the OpenAI/HF format (a list of ``{"role", "content"}``): a conversation that ends
  on an assistant turn has that turn as its answer and the turns before it as its prompt; one that ends on
  another turn is all prompt. A prompt of one user turn is that turn's text; a longer history is rendered as
  ``role: content`` lines. Under ``--chat-template`` that text is the user turn of the model's template, so the
  cache holds one prompt text that every model, seq2seq teacher or chat student, sees the same way;
- ``options`` (a list of strings) + ``label`` (the index of the right one) make an options task, evaluated by
  rank classification like BoolQ (lm-eval's acc / acc_norm); its answer is ``options[label]``;
- ``id`` (optional): the row's own id, carried into the cache's ``source_id`` and into eval predictions.

In a CSV file every cell is text: ``options`` and ``messages`` cells hold JSON, ``label`` an integer.

Bad input. A file that cannot be used (missing, unknown column, empty, every row malformed, too large a JSON list)
is a :class:`TaskError` naming it. A bad row (missing prompt, a field that is not text, invalid UTF-8, a JSONL line
over the reader's byte cap, a text over :data:`MAX_TEXT_BYTES`) is counted in ``Loaded.skipped`` by reason and
logged in one line naming the file, the row and the field. Reads are bounded (:mod:`pipeline.tasks.readers`), so a
10 GB line costs a skipped row, not the machine's memory.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.tasks import Loaded, Record, Task, TaskError, Template
from pipeline.tasks.formats import Malformed, Row
from pipeline.tasks.readers import (
    count_rows,
    hub_rows,
    load_hub,
    read_rows,
    scan_columns,
    sha256_files,
)

log = logging.getLogger(__name__)

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
HUB_PREFIX = "hf:"
HUB_FORM = "hf:ORG/NAME[:CONFIG][@SPLIT]"
ROLES = ("prompt", "answer", "messages", "options", "label", "id")
# The prompt-size bound: a prompt, answer or option over this many UTF-8 bytes skips its row. 256 KiB is about 60k
# tokens, far past any prompt a stage keeps (it cuts prompts to --max-prompt-tokens) but short enough that
# tokenizing one never stalls a run.
MAX_TEXT_BYTES = 1 << 18
WARNED_ROWS = 5  # malformed rows logged one by one per file, before one line counts the rest
SHORT_ANSWER_WORDS = 5  # references with a median of at most this many words also get exact match and F1
MAX_NEW_TOKENS = 128  # eval's generation budget: the --max-answer-tokens default a student is trained on
# bytes that were not UTF-8 (kept by errors="surrogateescape"), or a lone surrogate a JSON escape made
_SURROGATE = re.compile("[\ud800-\udfff]")
_NAME_CHARS = re.compile(r"[^\w.-]+")


# ---- specs and names -----------------------------------------------------------------------------------------


def is_file_spec(spec: str) -> bool:
    """A task spec naming the user's data: ``hf:...`` or a path with one of :data:`SUFFIXES`."""
    return spec.startswith(HUB_PREFIX) or Path(spec).suffix.lower() in SUFFIXES


@dataclass(frozen=True)
class HubSpec:
    name: str  # ORG/NAME (or a local folder of data files, which load_dataset reads the same way)
    config: str | None
    split: str | None  # None: the split the stage asks for


def parse_hub(spec: str) -> HubSpec:
    """``hf:ORG/NAME[:CONFIG][@SPLIT]`` -> its parts; TaskError naming the spec when one is empty."""
    body = spec.removeprefix(HUB_PREFIX)
    name_config, at, split = body.partition("@")
    name, colon, config = name_config.partition(":")
    if not name or (colon and not config) or (at and not split):
        raise TaskError(f"{spec!r}: a Hub dataset is {HUB_FORM}")
    return HubSpec(name, config or None, split or None)


def task_name(spec: str) -> str:
    """A task's name in caches and results: a built-in's own, a file's stem, a Hub dataset's NAME[_CONFIG]."""
    if not is_file_spec(spec):
        return spec
    if spec.startswith(HUB_PREFIX):
        hub = parse_hub(spec)
        stem = Path(hub.name).name + (f"_{hub.config}" if hub.config else "")
    else:
        stem = Path(spec).stem
    return _NAME_CHARS.sub("_", stem).strip("._") or "data"


def check_specs(specs: Iterable[str], builtin: Iterable[str]) -> None:
    """Task names unique in a run, and no file named like a built-in task; TaskError naming both specs."""
    builtin = set(builtin)
    seen: dict[str, str] = {}
    for spec in specs:
        name = task_name(spec)
        if is_file_spec(spec) and name in builtin:
            raise TaskError(
                f"{spec}: its task name {name!r} (the file stem) is a built-in task's; rename the file"
                if not spec.startswith(HUB_PREFIX)
                else f"{spec}: its task name {name!r} is a built-in task's, which already reads that dataset"
            )
        if name in seen:
            raise TaskError(f"{seen[name]} and {spec} are both named {name!r} (the file stem); rename one file")
        seen[name] = spec


def fields_for(name: str, fields: Mapping[str, str]) -> dict[str, str]:
    """The role -> column map of file task ``name``: the ``ROLE=COLUMN`` entries, then its ``NAME.ROLE`` ones."""
    own = {k.rpartition(".")[2]: v for k, v in fields.items() if "." in k and k.rpartition(".")[0] == name}
    return {**{k: v for k, v in fields.items() if "." not in k}, **own}


def check_fields(fields: Mapping[str, str], specs: Iterable[str]) -> None:
    """Field map keys are ``ROLE`` or ``TASK.ROLE`` for a file task of the run; TaskError naming the key."""
    if not fields:
        return
    names = {task_name(s) for s in specs if is_file_spec(s)}
    if not names:
        raise TaskError(f"{', '.join(fields)}: a field map renames the columns of file tasks, and there is none")
    for key, column in fields.items():
        task, dot, role = key.rpartition(".")
        if role not in ROLES:
            raise TaskError(f"{key}={column}: {role!r} is not one of the roles {', '.join(ROLES)}")
        if dot and task not in names:
            raise TaskError(f"{key}={column}: {task!r} is not a file task of this run ({', '.join(sorted(names))})")
        if not column:
            raise TaskError(f"{key}=: give the column's name")


# ---- the task ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Columns:
    """Which column plays which role in one file, once the field map is applied to the columns it has."""

    prompt: str | None  # None when the prompt comes from ``messages``
    messages: str | None
    answer: str | None
    options: str | None  # set: an options task
    label: str | None
    id: str | None

    def as_map(self) -> dict[str, str]:
        """role -> column of the roles this file has, as a cache records it."""
        roles = {r: getattr(self, r) for r in ROLES}
        return {role: column for role, column in roles.items() if column is not None}

    def needed(self) -> list[str]:
        return list(dict.fromkeys(self.as_map().values()))


def resolve(spec: str, fields: Mapping[str, str] | None = None, split: str = "train") -> Task:
    """The :class:`Task` of a file spec, its columns checked against ``fields`` (``ROLE`` / ``NAME.ROLE`` keys)."""
    name = task_name(spec)
    own = fields_for(name, fields or {})
    rows = None  # counted here for JSON files (their columns need a pass anyway), else when the cache asks
    if spec.startswith(HUB_PREFIX):
        present = list(_load_hub(spec, split).column_names)
    else:
        path = Path(spec)
        if not path.is_file():
            raise TaskError(f"{spec}: no such file" if not path.exists() else f"{spec}: not a regular file")
        present, rows = scan_columns(path)
    columns = _columns(spec, present, own)
    source = FileSource(spec, name, columns, rows)
    options = columns.options is not None
    return Task(
        name=name,
        kind="options" if options else "generate",
        templates=(Template("{prompt}"),),
        metrics=("accuracy",) if options else ("rouge_l",),  # eval adds exact match and F1 for short references
        max_new_tokens=MAX_NEW_TOKENS,
        load=source,
        description=f"your data: {spec}",
    )


def _columns(spec: str, present: list[str], fields: Mapping[str, str]) -> Columns:
    """Roles -> columns: a mapped column must exist; unmapped roles take their own name where the file has it."""
    have = set(present)
    shown = ", ".join(present) or "none"
    for role, column in fields.items():
        if column not in have:
            raise TaskError(f"{spec}: no column {column!r} (field map {role}={column}); its columns: {shown}")

    def pick(role: str) -> str | None:
        column = fields.get(role, role)
        return column if column in have else None

    chat = "messages" in fields or ("prompt" not in fields and "prompt" not in have and "messages" in have)
    if chat and ("prompt" in fields or "answer" in fields):
        raise TaskError(f"{spec}: messages hold the prompt and the answer; map messages, or prompt and answer")
    if not chat and pick("prompt") is None:
        raise TaskError(
            f"{spec}: no prompt column ('prompt', or chat 'messages'); its columns: {shown}; "
            "name yours with --fields prompt=COLUMN"
        )
    options = pick("options")
    return Columns(
        prompt=None if chat else pick("prompt"),
        messages=pick("messages") if chat else None,
        answer=None if chat or options else pick("answer"),
        options=options,
        label=pick("label") if options else None,
        id=pick("id"),
    )


@dataclass(frozen=True, eq=False)
class FileSource:
    """A file task's loader: ``Task.load(split, data_dir, limit, seed)`` reads the file (``data_dir`` unused)."""

    spec: str
    name: str
    columns: Columns = field(repr=False)
    rows: int | None = None  # the local file's rows, malformed ones included, when resolving counted them

    def __call__(self, split: str, data_dir: Path | None, limit: int | None, seed: int) -> Loaded:
        records: list[Record] = []
        skipped: Counter = Counter()
        bad: list[str] = []  # "line N: reason" of the first malformed rows
        for where, row in self._rows(split):
            if limit is not None and len(records) >= limit:
                break
            try:
                if isinstance(row, Malformed):
                    raise row
                records.append(self._record(row))
            except Malformed as e:
                skipped[e.reason] += 1
                if len(bad) < WARNED_ROWS:
                    bad.append(f"{where}: {e.reason}")
        n_bad = sum(skipped.values())
        if not records:  # one line says it all: no row-by-row warnings before it
            if n_bad:
                raise TaskError(
                    f"{self.spec}: every one of its {n_bad} rows is malformed (first: {bad[0]}); {dict(skipped)}"
                )
            raise TaskError(f"{self.spec}: empty file (no rows)")
        for line in bad:
            log.warning("%s: %s; row skipped", self.spec, line)
        if n_bad > len(bad):
            log.warning(
                "%s: %d more malformed rows skipped; by reason: %s", self.spec, n_bad - len(bad), dict(skipped)
            )
        return Loaded(records, skipped, self.spec if self.spec.startswith(HUB_PREFIX) else str(Path(self.spec)))

    def provenance(self, split: str = "train") -> dict:
        """What the cache records of the file: its sha256 (a Hub dataset: of its Arrow files), rows and columns."""
        if self.spec.startswith(HUB_PREFIX):
            dataset = _load_hub(self.spec, split)
            digest = sha256_files([Path(f["filename"]) for f in dataset.cache_files]) or dataset._fingerprint
            return {"name": self.name, "split": split, "sha256": digest, "rows": len(dataset), **self._fields()}
        path = Path(self.spec)
        return {
            "name": self.name,
            "sha256": sha256_files([path]),
            "rows": self.rows if self.rows is not None else count_rows(path),
            **self._fields(),
        }

    def _fields(self) -> dict:
        return {"fields": self.columns.as_map()}

    def _rows(self, split: str) -> Iterator[tuple[str, Row | Malformed]]:
        if self.spec.startswith(HUB_PREFIX):
            dataset = _load_hub(self.spec, split)
            return hub_rows(dataset, self.columns.needed())
        return read_rows(Path(self.spec), self.columns.needed())

    def _record(self, row: Row) -> Record:
        c = self.columns
        if c.messages is not None:
            prompt, answer = _chat(row, c.messages)
            targets = (answer,) if answer else ()
        else:
            prompt = _text(row, c.prompt)
            targets = _answers(row, c.answer) if c.answer else ()
        options, label = (), None
        if c.options is not None:
            options = _options(row, c.options)
            label = _label(row, c.label, len(options)) if c.label else None
            targets = (options[label],) if label is not None else ()
        return Record({"prompt": prompt}, targets, options=options, label=label, source_id=_id(row, c.id))


def eval_metrics(task: Task, records: list[Record], chosen: tuple[str, ...] = ()) -> tuple[str, ...]:
    """A file task's eval metrics: ``chosen`` (``--metric``), else ROUGE-L, with SQuAD's exact match and F1 when
    the references are short (their median is at most :data:`SHORT_ANSWER_WORDS` words). Options tasks: accuracy."""
    if task.kind == "options":
        return ("accuracy",)
    if chosen:
        return chosen
    words = [len(t.split()) for r in records for t in r.targets]
    short = bool(words) and statistics.median(words) <= SHORT_ANSWER_WORDS
    return ("rouge_l", "squad") if short else ("rouge_l",)


# ---- row -> record -------------------------------------------------------------------------------------------


def _clean(text: str) -> str:
    # as the built-in tasks clean theirs (catalog._clean), so the same text gives the same prompt either way
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def _checked(value: str, column: str) -> str:
    if _SURROGATE.search(value):
        raise Malformed(f"{column} not utf-8")
    if len(value) > MAX_TEXT_BYTES // 4 and len(value.encode("utf-8")) > MAX_TEXT_BYTES:
        raise Malformed(f"{column} over {MAX_TEXT_BYTES} bytes")
    return _clean(value)


def _text(row: Row, column: str) -> str:
    value = row.get(column)
    if value is None:
        raise Malformed(f"missing {column}")
    if not isinstance(value, str):
        raise Malformed(f"{column} not text")
    if not (text := _checked(value, column)):
        raise Malformed(f"empty {column}")
    return text


def _answers(row: Row, column: str) -> tuple[str, ...]:
    """A text, or a list of reference texts (the first trains); missing or empty: no answer (a prompt alone)."""
    value = row.get(column)
    values = value if isinstance(value, list | tuple) else [value]
    if not all(v is None or isinstance(v, str) for v in values):
        raise Malformed(f"{column} not text")
    return tuple(t for t in (_checked(v, column) for v in values if v is not None) if t)


def _json_cell(value: Any) -> Any:
    """A list given as JSON text (every CSV cell is text) -> the list; anything else as it is."""
    if isinstance(value, str) and value.lstrip().startswith(("[", "{")):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):
            return value
    return value


def _options(row: Row, column: str) -> tuple[str, ...]:
    value = _json_cell(row.get(column))
    if value is None:
        raise Malformed(f"missing {column}")
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise Malformed(f"{column} not a list of texts")
    options = tuple(_checked(v, column) for v in value)
    if len(options) < 2 or not all(options):
        raise Malformed(f"{column} not two or more non-empty texts")
    return options


def _label(row: Row, column: str, n_options: int) -> int | None:
    value = row.get(column)
    if value is None or value == "":
        return None  # an unlabelled row: a prompt alone
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise Malformed(f"{column} not an integer")
    if not 0 <= value < n_options:
        raise Malformed(f"{column} out of range")
    return value


def _id(row: Row, column: str | None) -> str | None:
    value = row.get(column) if column else None
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise Malformed(f"{column} not text")
    return _checked(str(value), column)


def _chat(row: Row, column: str) -> tuple[str, str | None]:
    """(prompt, answer or None) of a chat: the last turn is the answer when it is the assistant's."""
    turns = _json_cell(row.get(column))
    if turns is None:
        raise Malformed(f"missing {column}")
    if not isinstance(turns, list) or not turns:
        raise Malformed(f"{column} not a list of turns")
    parsed = []
    for turn in turns:
        role, content = (turn.get("role"), turn.get("content")) if isinstance(turn, dict) else (None, None)
        if not isinstance(role, str) or not isinstance(content, str):
            raise Malformed(f"{column} turn without text role and content")
        parsed.append((role.strip(), _checked(content, column)))
    answer = None
    if parsed[-1][0] == "assistant":
        answer = parsed.pop()[1]
        if not answer:
            raise Malformed(f"{column} empty answer")
    if not parsed:
        raise Malformed(f"{column} no turn before the answer")
    prompt = parsed[0][1] if len(parsed) == 1 and parsed[0][0] == "user" else render_history(parsed)
    if not prompt:
        raise Malformed(f"empty {column}")
    if len(prompt.encode("utf-8")) > MAX_TEXT_BYTES:
        raise Malformed(f"{column} over {MAX_TEXT_BYTES} bytes")
    return prompt, answer


def render_history(turns: list[tuple[str, str]]) -> str:
    """A chat history as plain text: one ``role: content`` block per turn."""
    return "\n".join(f"{role}: {content}" for role, content in turns)


def _load_hub(spec: str, split: str):
    """The ``datasets.Dataset`` of a Hub spec: its own ``@SPLIT``, else ``split``."""
    hub = parse_hub(spec)
    return load_hub(spec, hub.name, hub.config, hub.split or split)
