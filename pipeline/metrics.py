"""Per-task evaluation metrics: pure functions over lists of strings, every value on a 0–100 scale.

Each metric function returns ``dict[str, float]`` (its keys below). :func:`score` runs the metrics a task names
and returns :class:`Scores`: ``values`` maps every key those metrics promise to a float, or to ``None`` when
the metric could not be computed here (BERTScore without a local scorer model), and ``not_computed`` maps each
``None`` key to the reason, so a results table can print "n/a" with a footnote instead of a made-up number.

=============  =======================================  ==================================================
task metric    keys                                     semantics
=============  =======================================  ==================================================
``accuracy``   ``accuracy``                             share of predicted labels equal to the gold label
``squad``      ``exact_match``, ``f1``                  official SQuAD v1.1 evaluate script, max over refs
``rouge_l``    ``rouge_l``                              ``rouge_score`` ROUGE-L F-measure, stemmed, max over refs
``coverage``   ``coverage``                             CommonGen: share of the concepts the output mentions
``bleu``       ``bleu``                                 ``sacrebleu`` corpus BLEU, default settings
``bertscore``  ``bertscore_precision|recall|f1``        ``bert_score`` with a local model directory only
=============  =======================================  ==================================================

The ``rouge_l``, ``squad`` and ``coverage`` metrics also exist as local ``evaluate`` modules
(``pipeline/metric_modules``) that :func:`load_metric` loads from their path, which needs no hub.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

METRIC_MODULES = Path(__file__).resolve().parent / "metric_modules"
BERTSCORE_KEYS = ("bertscore_precision", "bertscore_recall", "bertscore_f1")


class MetricError(ValueError):
    """Inputs a metric cannot score (mismatched lengths, no examples, a malformed predictions file)."""


@dataclass(frozen=True)
class Scores:
    """Metric values on a 0–100 scale; a value is ``None`` exactly when ``not_computed`` gives the reason."""

    values: dict[str, float | None]
    not_computed: dict[str, str] = field(default_factory=dict)


def _check_lengths(predictions: Sequence[Any], others: Sequence[Any], what: str) -> None:
    if len(predictions) != len(others):
        raise MetricError(f"{len(predictions)} predictions but {len(others)} {what}")
    if not predictions:
        raise MetricError("no predictions to score")


def accuracy(predicted: Sequence[int], labels: Sequence[int]) -> dict[str, float]:
    _check_lengths(predicted, labels, "labels")
    return {"accuracy": 100.0 * sum(int(p == y) for p, y in zip(predicted, labels, strict=True)) / len(labels)}


# --- SQuAD v1.1: the official evaluate-v1.1.py semantics (https://rajpurkar.github.io/SQuAD-explorer/) ---


_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace (official order)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _squad_f1(prediction: str, reference: str) -> float:
    pred_tokens, ref_tokens = normalize_answer(prediction).split(), normalize_answer(reference).split()
    same = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if same == 0:  # v1.1 gives 0 here even when both sides normalise to nothing (v2.0 would give 1)
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def squad(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    _check_lengths(predictions, references, "reference lists")
    em = f1 = 0.0
    for prediction, refs in zip(predictions, references, strict=True):
        refs = _nonempty(refs)
        em += max(float(normalize_answer(prediction) == normalize_answer(r)) for r in refs)
        f1 += max(_squad_f1(prediction, r) for r in refs)
    return {"exact_match": 100.0 * em / len(predictions), "f1": 100.0 * f1 / len(predictions)}


def _nonempty(refs: Sequence[str]) -> Sequence[str]:
    if not refs:
        raise MetricError("an example has no references")
    return refs


# --- ROUGE-L, BLEU: the reference packages themselves, so numbers match published ones ---


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean ROUGE-L F-measure (stemmed); with several references the best one counts (``score_multi``)."""
    _check_lengths(predictions, references, "reference lists")
    scorer = _rouge_scorer()
    total = sum(
        scorer.score_multi(_nonempty(refs), p)["rougeL"].fmeasure
        for p, refs in zip(predictions, references, strict=True)
    )
    return {"rouge_l": 100.0 * total / len(predictions)}


def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """sacrebleu corpus BLEU; examples may have different numbers of references (missing ones are ``None``)."""
    import sacrebleu

    _check_lengths(predictions, references, "reference lists")
    width = max(len(_nonempty(refs)) for refs in references)
    streams = [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]
    return {"bleu": float(sacrebleu.corpus_bleu(list(predictions), streams).score)}


# --- CommonGen concept coverage ---


@lru_cache(maxsize=1)
def _stemmer():
    from nltk.stem.porter import PorterStemmer  # rule-based: needs no nltk data download

    return PorterStemmer()


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def coverage(predictions: Sequence[str], concepts: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean share of each example's concepts that its output mentions, as the word or a Porter-stem variant.

    "dogs" covers "dog" and "running" covers "run"; irregular forms ("stood" for "stand") are not matched.
    A multi-word concept counts when all of its words are present.
    """
    _check_lengths(predictions, concepts, "concept lists")
    stem = _stemmer().stem
    total = 0.0
    for prediction, example_concepts in zip(predictions, concepts, strict=True):
        if not example_concepts:
            raise MetricError("an example has no concepts")
        words = set(_words(prediction))
        stems = {stem(w) for w in words}
        covered = sum(all(w in words or stem(w) in stems for w in _words(c)) for c in example_concepts)
        total += covered / len(example_concepts)
    return {"coverage": 100.0 * total / len(predictions)}


# --- BERTScore: only with a local scorer model directory ---


def bertscore(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    model_dir: str | Path,
    *,
    num_layers: int | None = None,
    batch_size: int = 64,
) -> dict[str, float]:
    """Mean BERTScore P/R/F1 (no idf, no baseline rescaling) with the ``bert_score`` package, best reference.

    ``model_dir`` is a local ``save_pretrained`` directory (model + tokenizer); ``bert_score`` loads it with
    ``from_pretrained`` and never asks a hub. ``num_layers`` defaults to ``bert_score``'s tuned layer when the
    directory is named after a model it knows (a local ``roberta-large`` gives the usual 17), else all layers.
    """
    import bert_score
    from transformers import AutoConfig

    _check_lengths(predictions, references, "reference lists")
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise MetricError(f"BERTScore model directory {model_dir} does not exist")
    if num_layers is None:
        num_layers = bert_score.utils.model2layers.get(model_dir.name)
    if num_layers is None:
        num_layers = AutoConfig.from_pretrained(model_dir).num_hidden_layers
    refs = [list(_nonempty(r)) for r in references]
    p, r, f = bert_score.score(
        list(predictions), refs, model_type=str(model_dir), num_layers=num_layers, batch_size=batch_size
    )
    return {key: 100.0 * float(t.mean()) for key, t in zip(BERTSCORE_KEYS, (p, r, f), strict=True)}


def _bertscore_unavailable(model_dir: str | Path | None) -> str | None:
    if model_dir is None:
        return "no local BERTScore model directory configured (bertscore_model); the hub is not reachable here"
    if not Path(model_dir).is_dir():  # a configured model that is missing is a mistake, not a reason to skip
        raise MetricError(f"BERTScore model directory {model_dir} does not exist")
    try:
        import bert_score  # noqa: F401
    except ImportError:
        return "the bert_score package is not installed (pip install 'kdpipe[bertscore]')"
    return None


# --- dispatch ---

METRIC_KEYS: dict[str, tuple[str, ...]] = {
    "accuracy": ("accuracy",),
    "squad": ("exact_match", "f1"),
    "rouge_l": ("rouge_l",),
    "coverage": ("coverage",),
    "bleu": ("bleu",),
    "bertscore": BERTSCORE_KEYS,
}


def score(
    metric_names: Sequence[str],
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    concepts: Sequence[Sequence[str]] | None = None,
    predicted_labels: Sequence[int] | None = None,
    labels: Sequence[int] | None = None,
    bertscore_model: str | Path | None = None,
    bertscore_layers: int | None = None,
) -> Scores:
    """Run the metrics a task names (keys of :data:`METRIC_KEYS`) over one task's predictions.

    ``accuracy`` uses ``predicted_labels``/``labels`` when given; otherwise it is the share of predictions that
    equal one of their references exactly (rank classification writes the chosen option's text).
    ``coverage`` needs ``concepts``.
    """
    unknown = [m for m in metric_names if m not in METRIC_KEYS]
    if unknown:
        raise MetricError(f"unknown metric(s) {unknown}; known: {', '.join(METRIC_KEYS)}")
    values: dict[str, float | None] = {}
    not_computed: dict[str, str] = {}
    for name in metric_names:
        if name == "accuracy":
            if predicted_labels is None or labels is None:
                values.update(_option_text_accuracy(predictions, references))
            else:
                values.update(accuracy(predicted_labels, labels))
        elif name == "coverage":
            if concepts is None:
                raise MetricError("metric 'coverage' needs the examples' concepts")
            values.update(coverage(predictions, concepts))
        elif name == "bertscore":
            reason = _bertscore_unavailable(bertscore_model)
            if reason is None:
                values.update(bertscore(predictions, references, bertscore_model, num_layers=bertscore_layers))
            else:
                values.update(dict.fromkeys(BERTSCORE_KEYS))
                not_computed.update(dict.fromkeys(BERTSCORE_KEYS, reason))
        else:
            values.update(_TEXT_METRICS[name](predictions, references))
    return Scores(values, not_computed)


_TEXT_METRICS = {"squad": squad, "rouge_l": rouge_l, "bleu": bleu}


def _option_text_accuracy(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    _check_lengths(predictions, references, "reference lists")
    hits = [int(p.strip() in {r.strip() for r in refs}) for p, refs in zip(predictions, references, strict=True)]
    return accuracy(hits, [1] * len(hits))


def score_predictions_file(
    task_metrics: Sequence[str],
    path: str | Path,
    *,
    bertscore_model: str | Path | None = None,
    bertscore_layers: int | None = None,
) -> Scores:
    """Score a JSONL file with one ``{"prediction": str, "references": [str, ...]}`` object a line.

    CommonGen lines also carry ``"concepts": [str, ...]``; other keys are ignored and blank lines skipped.
    A malformed line raises :class:`MetricError` naming the file, the line number and the problem.
    """
    needs_concepts = "coverage" in task_metrics
    predictions, references, concepts = [], [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise MetricError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise MetricError(f"{where}: expected a JSON object, got {type(row).__name__}")
            predictions.append(_field(row, "prediction", str, where))
            references.append(_string_list(row, "references", where))
            if needs_concepts:
                concepts.append(_string_list(row, "concepts", where))
    if not predictions:
        raise MetricError(f"{path}: no predictions in the file")
    return score(
        task_metrics,
        predictions,
        references,
        concepts=concepts or None,
        bertscore_model=bertscore_model,
        bertscore_layers=bertscore_layers,
    )


def _field(row: dict, key: str, kind: type, where: str) -> Any:
    if key not in row:
        raise MetricError(f"{where}: missing key {key!r} (keys present: {', '.join(sorted(row)) or 'none'})")
    if not isinstance(row[key], kind):
        raise MetricError(f"{where}: {key!r} must be a {kind.__name__}, got {type(row[key]).__name__}")
    return row[key]


def _string_list(row: dict, key: str, where: str) -> list[str]:
    value = _field(row, key, list, where)
    if not value or not all(isinstance(v, str) for v in value):
        raise MetricError(f"{where}: {key!r} must be a non-empty list of strings, got {value!r}")
    return value


def load_metric(name: str):
    """Load one of our metrics as an ``evaluate`` module from its local path (``rouge_l``, ``squad``, ``coverage``).

    ``evaluate.load("rouge")`` asks the hub; a directory path is loaded locally (copied into the
    ``HF_MODULES_CACHE`` so it can be imported) and works with ``HF_HUB_OFFLINE=1``.
    """
    try:
        import evaluate
    except ImportError:
        raise MetricError("load_metric needs the evaluate package: pip install 'kdpipe[evaluate]'") from None

    module_dir = METRIC_MODULES / name
    if not (module_dir / f"{name}.py").is_file():
        known = sorted(p.name for p in METRIC_MODULES.iterdir() if (p / f"{p.name}.py").is_file())
        raise MetricError(f"no local evaluate module {name!r}; known: {', '.join(known)}")
    return evaluate.load(str(module_dir))
