"""Readers for the tasks' original release files, and the rule that picks a split's file in a data folder.

A reader takes one file and yields one raw row (a dict) per source record, in file order, or a
:class:`Malformed` for a row it cannot parse, so that the loader counts it and goes on. A file that cannot be
read at all (not JSON, broken CSV quoting) is a :class:`TaskError` naming the path.

The split rule (:func:`pick_file`): a folder holds any files of the task's format, whatever their names.
A file belongs to a split when a word of its name is one of :data:`SPLIT_KEYWORDS` (the keywords
``datasets`` itself uses to infer splits from file names, words separated by ``-._`` space or digits), so
``dev-v1.1.json``, ``commongen.dev.jsonl`` and ``val.csv`` are validation files. If some file is named for a
split, the requested split must have exactly one such file. If no file is named for any split, a folder with
exactly one file of the format uses it for every split. Anything else is an error that names the folder
and the files seen.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.tasks import TaskError

Row = dict[str, Any]

# Same keywords as datasets.data_files.SPLIT_KEYWORDS, so a folder splits the same way here and on the Hub.
SPLIT_KEYWORDS: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "dev", "val"),
    "test": ("test", "testing", "eval", "evaluation"),
}
# Documentation that release archives ship beside the data (ANLI's README.txt, ManyThings' _about.txt).
_NOT_DATA = {"readme", "license", "licence", "notice", "citation", "changelog"}


class Malformed(Exception):
    """A source row that cannot become a record; ``reason`` is the key it is counted under in ``Loaded.skipped``."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def splits_named(filename: str) -> set[str]:
    """The splits whose keywords appear as words in ``filename`` (usually none or one)."""
    words = set(re.split(r"[-._ 0-9]+", filename.lower()))
    return {split for split, keywords in SPLIT_KEYWORDS.items() if words & set(keywords)}


def pick_file(folder: Path, split: str, suffixes: tuple[str, ...]) -> tuple[Path, bool]:
    """The file of ``folder`` to read for ``split``, and whether its name says that split (see module doc)."""
    if not folder.is_dir():
        raise TaskError(f"no data folder {folder}")
    entries = sorted(folder.iterdir())
    files = [
        p
        for p in entries
        if p.is_file()
        and p.suffix.lower() in suffixes
        and not p.name.startswith((".", "_"))
        and p.stem.lower() not in _NOT_DATA
    ]
    seen = ", ".join(p.name for p in entries) or "none"
    named = [p for p in files if splits_named(p.name)]
    if named:
        picks = [p for p in named if split in splits_named(p.name)]
        if len(picks) == 1:
            return picks[0], True
        how = "no file" if not picks else f"{len(picks)} files"
        words = "/".join(SPLIT_KEYWORDS[split])
        raise TaskError(
            f"{folder}: {how} of {'/'.join(suffixes)} named for split {split!r} ({words}); files seen: {seen}"
        )
    if len(files) == 1:
        return files[0], False
    how = "no" if not files else f"{len(files)}"
    raise TaskError(f"{folder}: {how} {'/'.join(suffixes)} files and none named for a split; files seen: {seen}")


def _lines(path: Path) -> Iterator[str | Malformed]:
    """Lines without their ending, split on LF only: a stray CR inside a field stays in the field.

    A line that is not UTF-8 comes as ``Malformed("not utf-8")``, to be counted and skipped like any bad row.
    """
    with open(path, "rb") as f:
        for number, raw in enumerate(f):
            if number == 0:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield Malformed("not utf-8")
                continue
            yield line.removesuffix("\n").removesuffix("\r")


def _not_utf8(path: Path, e: UnicodeDecodeError) -> TaskError:
    return TaskError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); convert it with iconv -t UTF-8")


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise TaskError(f"{path}: not valid JSON ({e})") from e
    except UnicodeDecodeError as e:
        raise _not_utf8(path, e) from None


def read_jsonl(path: Path) -> Iterator[Row | Malformed]:
    """One JSON object per line (BoolQ, ANLI, XSum, CommonGen releases)."""
    for line in _lines(path):
        if isinstance(line, Malformed):
            yield line
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            yield Malformed("bad json line")
            continue
        yield row if isinstance(row, dict) else Malformed("not an object")


def read_json_list(path: Path) -> Iterator[Row | Malformed]:
    """A JSON list of objects (Code Alpaca's release; SAMSum's original train/val/test.json)."""
    data = _load_json(path)
    if not isinstance(data, list):
        raise TaskError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    for row in data:
        yield row if isinstance(row, dict) else Malformed("not an object")


def read_csv(path: Path) -> Iterator[Row | Malformed]:
    """CSV with a header line and quoted multi-line fields (SAMSum, CosmosQA)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        try:
            for row in reader:
                # DictReader puts extra cells under None and fills missing ones with None.
                bad = None in row or None in row.values()
                yield Malformed("bad column count") if bad else row
        except csv.Error as e:
            raise TaskError(f"{path}: line {reader.line_num}: {e}") from e
        except UnicodeDecodeError as e:  # quoted fields span lines: a CSV is decoded whole, not row by row
            raise _not_utf8(path, e) from None


def read_tsv_unquoted(path: Path) -> Iterator[Row | Malformed]:
    """Tab-separated with a header line and no quoting at all (PAWS): quote characters are text."""
    lines = _lines(path)
    header = next(lines, "")
    if isinstance(header, Malformed):
        raise TaskError(f"{path}: its header line is not UTF-8 text; convert it with iconv -t UTF-8")
    header = header.split("\t")
    for line in lines:
        if isinstance(line, Malformed):
            yield line
            continue
        if not line.strip():
            continue
        cells = line.split("\t")
        yield dict(zip(header, cells, strict=True)) if len(cells) == len(header) else Malformed("bad column count")


_LANG = re.compile(r"^[a-z]{2,3}(_[A-Za-z]+)?$")


def read_tatoeba(path: Path) -> Iterator[Row | Malformed]:
    """English-Spanish sentence pairs, one per line, tab-separated, in any of the three common layouts.

    - ``eng<TAB>spa`` (plain pairs);
    - ``eng<TAB>spa<TAB>attribution`` (ManyThings/Anki ``spa.txt``, from Tatoeba);
    - ``eng<TAB>spa<TAB>English<TAB>Spanish`` (Tatoeba Translation Challenge ``dev.txt``/``test.txt``: two
      language labels, then the pair; a ``spa<TAB>eng`` file is read in its reverse direction).
    """
    for line in _lines(path):
        if isinstance(line, Malformed):
            yield line
            continue
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) == 4 and _LANG.match(cells[0]) and _LANG.match(cells[1]):
            langs = (cells[0][:3], cells[1][:3])
            if langs == ("eng", "spa"):
                yield {"eng": cells[2], "spa": cells[3]}
            elif langs == ("spa", "eng"):
                yield {"eng": cells[3], "spa": cells[2]}
            else:
                yield Malformed("not eng-spa")
        elif len(cells) in (2, 3):
            yield {"eng": cells[0], "spa": cells[1]}
        else:
            yield Malformed("bad column count")


def read_squad(path: Path) -> Iterator[Row | Malformed]:
    """SQuAD v1.1 nested JSON, one row per question: title, context, question, id, answers (all texts)."""
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise TaskError(f"{path}: not a SQuAD file (no top-level 'data' list)")
    for article in data["data"]:
        for paragraph in article.get("paragraphs", []) if isinstance(article, dict) else []:
            for qa in paragraph.get("qas", []):
                answers = qa.get("answers")
                yield {
                    "title": article.get("title", ""),
                    "context": paragraph.get("context"),
                    "question": qa.get("question"),
                    "id": qa.get("id"),
                    "answers": [a.get("text") for a in answers] if isinstance(answers, list) else None,
                }


def coqa_turns(
    story: Any, questions: list[Any], answers: list[list[Any]], story_id: Any = None, turn_ids: list[Any] | None = None
) -> Iterator[Row]:
    """One row per question of a CoQA conversation, with the (question, first answer) turns before it.

    ``id`` and ``turn_id`` are the story's id and the turn's (1-based by default), as the official scorer keys them.
    """
    history: list[tuple[str, str]] = []
    turn_ids = turn_ids or list(range(1, len(questions) + 1))
    for question, turn_answers, turn in zip(questions, answers, turn_ids, strict=True):
        yield {
            "story": story,
            "question": question,
            "answers": turn_answers,
            "history": list(history),
            "id": story_id,
            "turn_id": turn,
        }
        if isinstance(question, str) and turn_answers and isinstance(turn_answers[0], str):
            history.append((question, turn_answers[0]))


def read_coqa(path: Path) -> Iterator[Row | Malformed]:
    """The official CoQA JSON: ``data[]`` stories with ``questions``/``answers`` matched by ``turn_id``.

    The dev release adds ``additional_answers`` (three more references per turn); they become extra targets.
    """
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise TaskError(f"{path}: not a CoQA file (no top-level 'data' list)")
    for entry in data["data"]:
        if not isinstance(entry, dict):
            yield Malformed("not an object")
            continue
        by_turn: dict[Any, list[Any]] = {}
        extra = entry.get("additional_answers") or {}
        for answer in [*entry.get("answers", []), *(a for group in extra.values() for a in group)]:
            if isinstance(answer, dict):
                by_turn.setdefault(answer.get("turn_id"), []).append(answer.get("input_text"))
        questions = [q if isinstance(q, dict) else {} for q in entry.get("questions", [])]
        yield from coqa_turns(
            entry.get("story"),
            [q.get("input_text") for q in questions],
            [by_turn.get(q.get("turn_id"), []) for q in questions],
            entry.get("id"),
            [q.get("turn_id") for q in questions],
        )
