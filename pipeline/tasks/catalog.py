"""The real tasks: release-file and Hub sources, field mappings and instruction templates.

Each task reads its records from ``<data_dir>/<folder>/`` (original release files, see
:mod:`pipeline.tasks.formats` for the readers and the split rule) or, without a data folder, from the Hugging
Face Hub with ``datasets.load_dataset``. Both paths map to the same :class:`Record`: a Hub row is first
reshaped into the release's row, then one function per task turns a release row into a record. Rows that
cannot (missing field, bad label, empty text) are counted in ``Loaded.skipped`` by reason.

Code Alpaca and the ManyThings Tatoeba file are single unsplit releases: when such a file is the source (the
only file of its folder, not named for a split) or one Hub split serves several of our splits, the splits are
carved from it by a hash of each record's inputs (90/5/5 train/validation/test), so the same input always lands
in the same split and train never overlaps evaluation. For the other tasks a lone unnamed file is read as is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.tasks import Loaded, Record, Task, TaskError, Template, formats
from pipeline.tasks.formats import Malformed, Row

log = logging.getLogger(__name__)

YES_NO = ("no", "yes")
NLI_OPTIONS = ("Yes", "It's impossible to say", "No")  # entailment, neutral, contradiction
COQA_HISTORY_TURNS = 3  # earlier (question, answer) turns shown with each CoQA question
CARVE = (("train", 90), ("validation", 95), ("test", 100))  # hash bucket (of 100) upper bounds per split


def _parquet_export(config: str) -> dict[str, str]:
    # datasets>=4 no longer runs loading scripts; the Hub's own Parquet export of a script-era dataset holds
    # the same rows, one folder per config (https://huggingface.co/docs/dataset-viewer/parquet).
    return {"revision": "refs/convert/parquet", "data_dir": config}


@dataclass(frozen=True, eq=False)
class Source:
    """Where a task's records come from. A Source is the task's loader: ``Task.load(split, data_dir, limit, seed)``."""

    folder: str  # release files live in <data_dir>/<folder>/
    readers: Mapping[str, Callable[[Path], Iterable[Row | Malformed]]]  # file suffix -> release-format reader
    to_record: Callable[[Row], Record]  # release row -> Record; raises Malformed
    hub_id: str
    hub_splits: Mapping[str, str]  # our split -> Hub split; a split left out has no labelled Hub rows
    hub_config: str | None = None
    hub_kwargs: Mapping[str, str] = field(default_factory=dict)  # more load_dataset arguments
    hub_rows: Callable[[Iterable[Row]], Iterable[Row | Malformed]] = iter  # Hub rows -> release rows
    carve: bool = False  # an unsplit local file is carved into train/validation/test (module doc)
    hub_carved: frozenset[str] = frozenset()  # our splits carved out of their (shared) Hub split

    def __call__(self, split: str, data_dir: Path | None, limit: int | None, seed: int) -> Loaded:
        if split not in formats.SPLIT_KEYWORDS:
            raise TaskError(f"split must be one of {sorted(formats.SPLIT_KEYWORDS)}, not {split!r}")
        if data_dir is None:
            return self.from_hub(self._load_hub(split), split, limit)
        path, named = formats.pick_file(Path(data_dir) / self.folder, split, tuple(self.readers))
        if not named and not self.carve:
            log.warning("%s is named for no split: it is read whole for %r (and for any other split)", path, split)
        rows = self.readers[path.suffix.lower()](path)
        loaded = _collect(rows, self.to_record, limit, split if self.carve and not named else None)
        return dataclasses.replace(loaded, source=str(path))

    def from_hub(self, rows: Iterable[Row], split: str, limit: int | None = None) -> Loaded:
        """Records from rows of the Hub dataset's ``hub_splits[split]`` (a ``datasets.Dataset`` iterates rows)."""
        loaded = _collect(self.hub_rows(rows), self.to_record, limit, split if split in self.hub_carved else None)
        return dataclasses.replace(loaded, source=self.hub_source(split))

    def hub_source(self, split: str) -> str:
        """The Hub dataset read for ``split``: ``hub:<id>[/<config>]@<revision>:<split>`` (revision: as asked)."""
        name = f"{self.hub_id}/{self.hub_config}" if self.hub_config else self.hub_id
        data_dir = f"/{self.hub_kwargs['data_dir']}" if "data_dir" in self.hub_kwargs else ""
        revision = self.hub_kwargs.get("revision", "main")
        return f"hub:{name}{data_dir}@{revision}:{self.hub_splits.get(split, split)}"

    def _load_hub(self, split: str) -> Iterable[Row]:
        if split not in self.hub_splits:
            raise TaskError(f"{self.hub_id} has no labelled {split!r} split; give a data folder with a {split} file")
        import datasets  # only the Hub path needs it, and it is slow to import

        log.info("loading %s (%s) split %s from the Hub", self.hub_id, self.hub_config, self.hub_splits[split])
        return datasets.load_dataset(self.hub_id, self.hub_config, split=self.hub_splits[split], **self.hub_kwargs)


def _collect(
    rows: Iterable[Row | Malformed], to_record: Callable[[Row], Record], limit: int | None, carve: str | None
) -> Loaded:
    records: list[Record] = []
    skipped: Counter = Counter()
    for row in rows:
        if limit is not None and len(records) >= limit:
            break
        try:
            if isinstance(row, Malformed):
                raise row
            record = to_record(row)
        except Malformed as e:
            skipped[e.reason] += 1
            continue
        if carve is None or carved_split(record) == carve:
            records.append(record)
    return Loaded(records, skipped)


def carved_split(record: Record) -> str:
    """The split a record of an unsplit release belongs to, from a hash of its inputs (not its targets)."""
    digest = hashlib.blake2b("\x00".join(record.fields.values()).encode("utf-8"), digest_size=8).digest()
    bucket = int.from_bytes(digest, "big") % 100
    return next(split for split, upper in CARVE if bucket < upper)


# ---- release row -> Record ----------------------------------------------------------------------------------


def _clean(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def _text(row: Row, key: str) -> str:
    value = row.get(key)
    if value is None:
        raise Malformed(f"missing {key}")
    if not isinstance(value, str):
        raise Malformed(f"bad {key}")
    if not (value := _clean(value)):
        raise Malformed(f"empty {key}")
    return value


def _texts(row: Row, key: str) -> tuple[str, ...]:
    """A list of reference texts; empty ones are dropped, none left is malformed."""
    value = row.get(key)
    if value is None:
        raise Malformed(f"missing {key}")
    if not isinstance(value, list | tuple):
        raise Malformed(f"bad {key}")
    texts = tuple(t for t in (_clean(v) for v in value if isinstance(v, str)) if t)
    if not texts:
        raise Malformed(f"empty {key}")
    return texts


def _label(row: Row, table: Mapping[Any, int]) -> int:
    value = row.get("label")
    if value is None:
        raise Malformed("missing label")
    key = value.strip().lower() if isinstance(value, str) else value
    try:
        return table[key]
    except (KeyError, TypeError):
        raise Malformed("bad label") from None


def _choice(fields: dict[str, str], options: tuple[str, ...], label: int, source_id: str | None) -> Record:
    return Record(fields, (options[label],), options=options, label=label, source_id=source_id)


def _id(row: Row, key: str) -> str | None:
    """The source's own id of a row (``None`` when the row has none); numbers become their text."""
    value = row.get(key)
    return None if value is None or isinstance(value, bool) else str(value)


def boolq_record(row: Row) -> Record:
    # SuperGLUE passages are "<Wikipedia title> -- <text>"; a passage without the separator has no title.
    passage = _text(row, "passage")
    titled = re.fullmatch(r"(.+?) --(?:\s+(.*))?", passage, flags=re.DOTALL)
    title, text = (titled[1], (titled[2] or "").strip()) if titled else ("", passage)
    if not text:
        raise Malformed("empty passage")
    label = _label(row, {True: 1, False: 0, "true": 1, "false": 0})  # also 1/0: True == 1 as a dict key
    fields = {"title": title, "passage": text, "question": _text(row, "question")}
    return _choice(fields, YES_NO, label, _id(row, "idx"))


def squad_record(row: Row) -> Record:
    title = _clean(row.get("title") or "").replace("_", " ")  # SQuAD titles are Wikipedia page names
    fields = {"title": title, "context": _text(row, "context"), "question": _text(row, "question")}
    return Record(fields, _texts(row, "answers"), source_id=_id(row, "id"))


def samsum_record(row: Row) -> Record:
    return Record({"dialogue": _text(row, "dialogue")}, (_text(row, "summary"),), source_id=_id(row, "id"))


def anli_record(row: Row) -> Record:
    label = _label(row, {"e": 0, "n": 1, "c": 2, 0: 0, 1: 1, 2: 2})  # the Hub's ClassLabel has the same order
    fields = {"premise": _text(row, "context"), "hypothesis": _text(row, "hypothesis")}
    return _choice(fields, NLI_OPTIONS, label, _id(row, "uid"))


def paws_record(row: Row) -> Record:
    label = _label(row, {"0": 0, "1": 1, 0: 0, 1: 1})  # 1 = paraphrase
    fields = {"sentence1": _text(row, "sentence1"), "sentence2": _text(row, "sentence2")}
    return _choice(fields, YES_NO, label, _id(row, "id"))


def xsum_record(row: Row) -> Record:
    return Record({"document": _text(row, "document")}, (_text(row, "summary"),), source_id=_id(row, "id"))


def commongen_record(row: Row) -> Record:
    # "field_N#look_V#stand_V": concepts joined by '#', each with a part-of-speech suffix.
    concepts = tuple(re.sub(r"_[A-Z]+$", "", c.strip()) for c in _text(row, "concept_set").split("#"))
    if not all(concepts):
        raise Malformed("bad concept_set")
    # The release has no id: the concept set names the example ("field#look#stand", the same from the Hub).
    return Record(
        {"concepts": ", ".join(concepts)}, _texts(row, "scene"), concepts=concepts, source_id="#".join(concepts)
    )


def cosmosqa_record(row: Row) -> Record:
    options = tuple(_text(row, f"answer{i}") for i in range(4))
    label = _label(row, {**{str(i): i for i in range(4)}, **{i: i for i in range(4)}})  # 0-based
    fields = {"context": _text(row, "context"), "question": _text(row, "question")}
    return _choice(fields, options, label, _id(row, "id"))


def tatoeba_record(row: Row) -> Record:
    return Record({"english": _text(row, "eng")}, (_text(row, "spa"),))


def code_alpaca_record(row: Row) -> Record:
    request = _text(row, "instruction")
    extra = row.get("input")
    if extra is not None and not isinstance(extra, str):
        raise Malformed("bad input")
    if extra and (extra := _clean(extra)):
        request = f"{request}\n\nInput:\n{extra}"
    return Record({"request": request}, (_text(row, "output"),))


def coqa_record(row: Row) -> Record:
    turns = row.get("history") or []
    recent = [(_clean(q), _clean(a)) for q, a in turns[-COQA_HISTORY_TURNS:]]
    history = "\n".join(f"Q: {q}\nA: {a}" for q, a in recent) or "(no earlier questions)"
    fields = {"story": _text(row, "story"), "history": history, "question": _text(row, "question")}
    turn = _id(row, "turn_id")
    source = f"{row['id']}:{turn}" if _id(row, "id") and turn else None  # the official scorer keys (id, turn_id)
    return Record(fields, _texts(row, "answers"), source_id=source)


# ---- Hub row -> release row (where the schemas differ) -------------------------------------------------------


def _squad_hub(rows: Iterable[Row]) -> Iterator[Row]:
    for row in rows:  # answers: {"text": [...], "answer_start": [...]}
        yield {**row, "answers": (row.get("answers") or {}).get("text")}


def _anli_hub(rows: Iterable[Row]) -> Iterator[Row]:
    for row in rows:
        yield {"context": row.get("premise"), "hypothesis": row.get("hypothesis"), "label": row.get("label")}


def _commongen_hub(rows: Iterable[Row]) -> Iterator[Row | Malformed]:
    # The Hub has one row per (concept set, reference); the release has one per concept set with all references.
    for _, group in itertools.groupby(rows, key=lambda r: r.get("concept_set_idx")):
        group = list(group)
        concepts = group[0].get("concepts")
        if not isinstance(concepts, list) or not all(isinstance(c, str) for c in concepts):
            yield Malformed("bad concepts")
            continue
        yield {"concept_set": "#".join(concepts), "scene": [r.get("target") for r in group]}


def _tatoeba_hub(rows: Iterable[Row]) -> Iterator[Row]:
    for row in rows:  # Helsinki-NLP/tatoeba_mt: sourceLang, targetlang, sourceString, targetString
        pair = (row.get("sourceString"), row.get("targetString"))
        eng, spa = pair[::-1] if str(row.get("sourceLang", "")).startswith("spa") else pair
        yield {"eng": eng, "spa": spa}


def _coqa_hub(rows: Iterable[Row]) -> Iterator[Row]:
    for row in rows:  # stanfordnlp/coqa: questions [str], answers {"input_text": [str], ...} by position
        questions = row.get("questions") or []
        answers = (row.get("answers") or {}).get("input_text") or []
        per_turn = [[answers[i]] if i < len(answers) else [] for i in range(len(questions))]
        yield from formats.coqa_turns(row.get("story"), questions, per_turn, row.get("id"))


# ---- the tasks -----------------------------------------------------------------------------------------------

JSONL = {".jsonl": formats.read_jsonl}
SPLITS = {"train": "train", "validation": "validation", "test": "test"}
TRAIN_VALIDATION = {"train": "train", "validation": "validation"}  # the Hub's test rows carry no labels

BOOLQ = (
    "{title}\n{passage}\n\nBased on the text above, {question}?\n{options}",
    "Read the passage and answer the yes/no question.\n\nPassage: {passage}\nQuestion: {question}?\n{options}",
    "Here is an article about {title}:\n{passage}\n\nAnswer yes or no: {question}?\n{options}",
    "Question: {question}?\nUse this text to decide.\n\n{passage}\n{options}",
)
SQUAD = (
    "Read the passage and answer the question with a short span copied from it.\n\n{context}\n\nQ: {question}",
    "{context}\n\nUsing the text above, answer: {question}",
    'An article about {title}:\n{context}\n\nWhat is the answer to "{question}"? Answer briefly.',
    "Q: {question}\nThe answer is somewhere in this text:\n{context}\nA:",
)
SAMSUM = (
    "Summarize the following conversation.\n\n{dialogue}",
    "{dialogue}\n\nWrite a short summary of the chat above.",
    "Here is a chat between friends:\n{dialogue}\n\nWhat happened in this conversation? Answer in a sentence or two.",
    "Dialogue:\n{dialogue}\n\nBriefly, what was said?",
)
ANLI = (
    '{premise}\n\nGiven the paragraph above, can we conclude that "{hypothesis}"?\n{options}',
    "Premise: {premise}\nHypothesis: {hypothesis}\n\nDoes the premise entail the hypothesis?\n{options}",
    "Decide whether the claim follows from the text.\n\nText: {premise}\nClaim: {hypothesis}\n{options}",
    "{premise}\n\nIf the text above is true, is this true as well? {hypothesis}\n{options}",
)
PAWS = (
    "Sentence 1: {sentence1}\nSentence 2: {sentence2}\n\nDo these two sentences mean the same thing?\n{options}",
    "Are the following two sentences paraphrases of each other?\n\n{sentence1}\n{sentence2}\n{options}",
    "First: {sentence1}\nSecond: {sentence2}\n\nIs the second sentence a rewording of the first?\n{options}",
    "{sentence1}\n{sentence2}\n\nDo both sentences say the same thing in other words?\n{options}",
)
XSUM = (
    "Summarize this article in one sentence.\n\n{document}",
    "{document}\n\nWhat is a one-sentence summary of the text above?",
    "Article:\n{document}\n\nGive the main point of this article in a single sentence.",
    "Read the news story and state what it is about in one sentence.\n\n{document}",
)
COMMONGEN = (
    "Write a sentence that uses all of these words: {concepts}",
    "Concepts: {concepts}\n\nCompose one everyday sentence that includes every concept.",
    "Make a short, natural sentence describing a scene with: {concepts}",
    "Words: {concepts}\nWhat is a sentence that mentions all of them?",
)
COSMOSQA = (
    "{context}\n\nQuestion: {question}\nChoose the most sensible answer.\n{options}",
    "Read the passage and pick the best answer.\n\n{context}\n\n{question}\n{options}",
    "Context: {context}\nQ: {question}\n{options}",
    "{question}\n\nUse common sense and this text to answer:\n{context}\n{options}",
)
TATOEBA = (
    "Translate to Spanish:\n\n{english}",
    "{english}\n\nHow would you say this in Spanish?",
    "English: {english}\nSpanish:",
    "Give the Spanish translation of this sentence: {english}",
)
CODE_ALPACA = (
    "Write Python code for the following task.\n\n{request}",
    "{request}\n\nAnswer with a Python program.",
    "Task: {request}\n\nPython solution:",
    "You are a careful Python programmer. Solve this:\n{request}",
)
COQA = (
    "{story}\n\nConversation so far:\n{history}\n\nAnswer the next question briefly: {question}",
    "Read the story, then answer the last question of the conversation.\n\n{story}\n\n{history}\nQ: {question}\nA:",
    "{story}\n\nEarlier questions and answers:\n{history}\n\nNow answer in a few words: {question}",
)


def _templates(prompts: tuple[str, ...]) -> tuple[Template, ...]:
    return tuple(Template(p) for p in prompts)


def _anli(round_: int) -> Task:
    return Task(
        name="anli" if round_ == 1 else f"anli_r{round_}",
        kind="options",
        templates=_templates(ANLI),
        metrics=("accuracy",),
        max_new_tokens=8,  # "It's impossible to say"
        load=Source(
            folder=f"anli/R{round_}",
            readers=JSONL,
            to_record=anli_record,
            hub_id="facebook/anli",
            hub_splits={"train": f"train_r{round_}", "validation": f"dev_r{round_}", "test": f"test_r{round_}"},
            hub_rows=_anli_hub,
        ),
        description=f"Adversarial NLI round {round_}: does the premise entail the hypothesis (3-way)",
    )


REAL_TASKS: tuple[Task, ...] = (
    Task(
        name="boolq",
        kind="options",
        templates=_templates(BOOLQ),
        metrics=("accuracy",),
        max_new_tokens=4,
        load=Source(
            folder="boolq",
            readers=JSONL,
            to_record=boolq_record,
            hub_id="aps/super_glue",
            hub_splits=TRAIN_VALIDATION,
            hub_kwargs=_parquet_export("boolq"),
        ),
        description="BoolQ (SuperGLUE copy): yes/no questions over a Wikipedia passage",
    ),
    Task(
        name="squad",
        kind="generate",
        templates=_templates(SQUAD),
        metrics=("squad",),
        max_new_tokens=32,
        load=Source(
            folder="squad",
            readers={".json": formats.read_squad},
            to_record=squad_record,
            hub_id="rajpurkar/squad",
            hub_splits=TRAIN_VALIDATION,
            hub_rows=_squad_hub,
        ),
        description="SQuAD v1.1: extractive question answering; every annotator's answer is a reference",
    ),
    Task(
        name="samsum",
        kind="generate",
        templates=_templates(SAMSUM),
        metrics=("rouge_l",),
        max_new_tokens=96,
        load=Source(
            folder="samsum",
            readers={".csv": formats.read_csv, ".json": formats.read_json_list},
            to_record=samsum_record,
            hub_id="knkarthick/samsum",
            hub_splits=SPLITS,
        ),
        description="SAMSum: abstractive summaries of messenger-style dialogues",
    ),
    _anli(1),
    _anli(2),
    _anli(3),
    Task(
        name="paws",
        kind="options",
        templates=_templates(PAWS),
        metrics=("accuracy",),
        max_new_tokens=4,
        load=Source(
            folder="paws",
            readers={".tsv": formats.read_tsv_unquoted},
            to_record=paws_record,
            hub_id="google-research-datasets/paws",
            hub_config="labeled_final",
            hub_splits=SPLITS,
        ),
        description="PAWS-Wiki labeled_final: paraphrase identification under high word overlap",
    ),
    Task(
        name="xsum",
        kind="generate",
        templates=_templates(XSUM),
        metrics=("rouge_l",),
        max_new_tokens=64,
        load=Source(
            folder="xsum",
            readers=JSONL,
            to_record=xsum_record,
            hub_id="EdinburghNLP/xsum",
            hub_splits=SPLITS,
            hub_kwargs=_parquet_export("default"),
        ),
        description="XSum: one-sentence summaries of BBC articles",
    ),
    Task(
        name="commongen",
        kind="generate",
        templates=_templates(COMMONGEN),
        metrics=("rouge_l", "coverage"),
        max_new_tokens=48,
        load=Source(
            folder="commongen",
            readers=JSONL,
            to_record=commongen_record,
            hub_id="allenai/common_gen",
            hub_splits=TRAIN_VALIDATION,
            hub_rows=_commongen_hub,
        ),
        description="CommonGen: a plausible everyday sentence covering a set of concepts",
    ),
    Task(
        name="cosmosqa",
        kind="options",
        templates=_templates(COSMOSQA),
        metrics=("accuracy",),
        max_new_tokens=48,  # the longest answers run to about 40 tokens
        load=Source(
            folder="cosmosqa",
            readers={".csv": formats.read_csv},
            to_record=cosmosqa_record,
            hub_id="allenai/cosmos_qa",
            hub_splits=TRAIN_VALIDATION,
            hub_kwargs=_parquet_export("default"),
        ),
        description="Cosmos QA: commonsense reading comprehension with 4 options",
    ),
    Task(
        name="tatoeba_en_es",
        kind="generate",
        templates=_templates(TATOEBA),
        metrics=("bleu",),
        max_new_tokens=64,
        load=Source(
            folder="tatoeba_en_es",
            readers={".txt": formats.read_tatoeba, ".tsv": formats.read_tatoeba},
            to_record=tatoeba_record,
            hub_id="Helsinki-NLP/tatoeba_mt",
            # The Tatoeba Translation Challenge has dev and test only: train on dev less a held-out slice.
            hub_splits={"train": "validation", "validation": "validation", "test": "test"},
            hub_kwargs=_parquet_export("eng-spa"),
            hub_rows=_tatoeba_hub,
            carve=True,
            hub_carved=frozenset({"train", "validation"}),
        ),
        description="Tatoeba: English to Spanish sentence translation",
    ),
    Task(
        name="code_alpaca",
        kind="generate",
        templates=_templates(CODE_ALPACA),
        metrics=("rouge_l",),
        max_new_tokens=256,
        load=Source(
            folder="code_alpaca",
            readers={".json": formats.read_json_list},
            to_record=code_alpaca_record,
            hub_id="iamtarun/python_code_instructions_18k_alpaca",
            hub_splits=dict.fromkeys(SPLITS, "train"),
            carve=True,
            hub_carved=frozenset(SPLITS),
        ),
        description="Python code instructions in the Alpaca format (~18k, one split carved 90/5/5)",
    ),
    Task(
        name="coqa",
        kind="generate",
        templates=_templates(COQA),
        metrics=("squad",),
        max_new_tokens=32,
        load=Source(
            folder="coqa",
            readers={".json": formats.read_coqa},
            to_record=coqa_record,
            hub_id="stanfordnlp/coqa",
            hub_splits=TRAIN_VALIDATION,
            hub_rows=_coqa_hub,
        ),
        description="CoQA: conversational question answering over a story (optional eleventh task)",
    ),
)
