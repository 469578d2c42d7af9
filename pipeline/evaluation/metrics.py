"""Per-task evaluation metrics: pure functions over lists of strings, every value on a 0–100 scale.

Each metric function returns ``dict[str, float]`` (its keys below). :func:`score` runs the metrics a task names
and returns :class:`Scores`: ``values`` maps every key those metrics promise to a float, or to ``None`` when
the metric could not be computed here (BERTScore without a local scorer model), and ``not_computed`` maps each
``None`` key to the reason, so a results table can print "n/a" with a footnote instead of a made-up number.
``stderr`` gives every value its standard error, as lm-eval reports one: the sample standard error of the mean
(``std(ddof=1) / sqrt(n)``) for metrics that average a per-example score (all but BLEU), and the standard
deviation of :data:`BOOTSTRAP_RESAMPLES` bootstrap resamples (seed :data:`BOOTSTRAP_SEED`) for corpus-level BLEU.
``per_example`` keeps the per-example scores and ``resample`` the corpus statistic, so that two models scored on
the same examples can be compared pairwise (:func:`paired_difference`).

=============  =======================================  ==================================================
task metric    keys                                     semantics
=============  =======================================  ==================================================
``accuracy``   ``acc``                                  share of predicted labels equal to the gold label; a
                                                        generated answer names an option (:func:`match_option`)
``squad``      ``exact_match``, ``f1``                  official SQuAD v1.1 evaluate script, max over refs
``rouge_l``    ``rouge_l``                              ``rouge_score`` ROUGE-L F-measure, stemmed, max over refs
``coverage``   ``coverage``                             CommonGen: share of the concepts the output mentions,
                                                        words matched through their lemmas (``lemminflect``)
``bleu``       ``bleu``                                 ``sacrebleu`` corpus BLEU, default settings
``bertscore``  ``bertscore_precision|recall|f1``        ``bert_score`` with a local model directory only
=============  =======================================  ==================================================

The ``rouge_l``, ``squad`` and ``coverage`` metrics also exist as local ``evaluate`` modules
(``pipeline/evaluation/metric_modules``) that :func:`load_metric` loads from their path, which needs no hub.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

METRIC_MODULES = Path(__file__).resolve().parent / "metric_modules"
BERTSCORE_KEYS = ("bertscore_precision", "bertscore_recall", "bertscore_f1")
BOOTSTRAP_RESAMPLES = 1000  # for corpus-level metrics; sacrebleu's own paired bootstrap default is also 1000
BOOTSTRAP_SEED = 1234  # fixed: the same predictions always get the same standard error


class MetricError(ValueError):
    """Inputs a metric cannot score (mismatched lengths, no examples, a malformed predictions file)."""


# A corpus-level metric, recomputed on a resample: example indices [n] (with repeats) -> value on the 0–100 scale.
Resample = Callable[[np.ndarray], float]


@dataclass(frozen=True)
class Scores:
    """Metric values on a 0–100 scale; a value is ``None`` exactly when ``not_computed`` gives the reason.

    ``stderr[key]`` is the value's standard error (``None`` when the value is, or with a single example).
    ``per_example[key]`` holds the per-example scores a per-example metric averages (0–100 each);
    ``resample[key]`` recomputes a corpus-level metric on resampled example indices.
    """

    values: dict[str, float | None]
    not_computed: dict[str, str] = field(default_factory=dict)
    stderr: dict[str, float | None] = field(default_factory=dict)
    n: int = 0  # examples scored
    per_example: dict[str, list[float]] = field(default_factory=dict, repr=False, compare=False)
    resample: dict[str, Resample] = field(default_factory=dict, repr=False, compare=False)


def _check_lengths(predictions: Sequence[Any], others: Sequence[Any], what: str) -> None:
    if len(predictions) != len(others):
        raise MetricError(f"{len(predictions)} predictions but {len(others)} {what}")
    if not predictions:
        raise MetricError("no predictions to score")


def mean(values: Sequence[float]) -> float:
    """The mean of per-example values (what a metric reports; eval averages its own per-example figures too)."""
    return float(np.mean(values))


# --- standard errors and paired differences ---


def mean_stderr(values: Sequence[float]) -> float | None:
    """Sample standard error of the mean, ``std(ddof=1) / sqrt(n)`` (lm-eval's ``mean_stderr``); None for n < 2."""
    if len(values) < 2:
        return None
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def bootstrap_stderr(statistic: Resample, n: int, *, resamples: int = BOOTSTRAP_RESAMPLES) -> float | None:
    """Standard deviation of ``statistic`` over ``resamples`` bootstrap resamples of ``n`` examples (fixed seed)."""
    if n < 2:
        return None
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    draws = [statistic(rng.integers(0, n, size=n)) for _ in range(resamples)]
    return float(np.std(draws, ddof=1))


@dataclass(frozen=True)
class Difference:
    """``b − a`` on the same examples, with the standard error of the difference."""

    value: float
    stderr: float | None
    n: int


def paired_difference(a: Scores, b: Scores, key: str) -> Difference | None:
    """``b − a`` for metric ``key`` on the same examples, or None when either side could not compute it.

    Per-example metrics: the mean and sample standard error of the per-example differences (the pairing removes
    the spread between examples that both models share, so it is tighter than the two errors combined).
    Corpus-level metrics: the paired bootstrap, the same resampled indices for both models (Koehn 2004,
    https://aclanthology.org/W04-3250).
    """
    if a.values.get(key) is None or b.values.get(key) is None:
        return None
    if key in a.per_example and key in b.per_example:
        x, y = np.asarray(a.per_example[key]), np.asarray(b.per_example[key])
        if len(x) != len(y):
            raise MetricError(f"{key}: {len(x)} and {len(y)} examples; a paired comparison needs the same examples")
        diffs = y - x
        return Difference(float(diffs.mean()), mean_stderr(diffs), len(diffs))
    if key in a.resample and key in b.resample:
        if a.n != b.n:
            raise MetricError(f"{key}: {a.n} and {b.n} examples; a paired comparison needs the same examples")
        fa, fb = a.resample[key], b.resample[key]
        all_indices = np.arange(a.n)
        diff = bootstrap_stderr(lambda idx: fb(idx) - fa(idx), a.n)
        return Difference(fb(all_indices) - fa(all_indices), diff, a.n)
    return None


# --- accuracy ---


def accuracy(predicted: Sequence[int | None], labels: Sequence[int]) -> dict[str, float]:
    return {"acc": mean(_hits(predicted, labels))}


def _hits(predicted: Sequence[int | None], labels: Sequence[int]) -> list[float]:
    _check_lengths(predicted, labels, "labels")
    return [100.0 * (p == y) for p, y in zip(predicted, labels, strict=True)]


_EDGE_JUNK = "".join(sorted(set(string.punctuation + "“”‘’«»") - set("()"))) + string.whitespace
_CHOICE_PREFIX = re.compile(r"^(?:the\s+)?(?:answer|option|choice)(?:\s+is)?\s*[:\-]?\s*")
_CHOICE_MARK = re.compile(r"^\(?([a-z]|[1-9][0-9]?)\)?$")


def normalize_choice(text: str) -> str:
    """A generated answer or an option as compared: casefolded, whitespace collapsed, the punctuation and quotes
    around it dropped ("Yes." / " yes" / "'YES'" → "yes"); punctuation inside ("It's impossible to say") stays."""
    return " ".join(text.casefold().split()).strip(_EDGE_JUNK)


def match_option(prediction: str, options: Sequence[str]) -> int | None:
    """Index of the option a generated answer names, or None when it names none (or several equally).

    In order: the option's text after :func:`normalize_choice` (the first line of the answer also counts, for a
    model that goes on after answering); else its letter or 1-based number in the option list ("B", "(b)",
    "2", "Answer: B"), as option lists are lettered or numbered in prompts.
    """
    options_norm = [normalize_choice(o) for o in options]
    lines = prediction.strip().splitlines()
    for candidate in dict.fromkeys([prediction, lines[0] if lines else ""]):
        text = normalize_choice(candidate)
        if text and text in options_norm:
            return options_norm.index(text)
    text = _CHOICE_PREFIX.sub("", normalize_choice(prediction)).strip("() ")
    mark = _CHOICE_MARK.match(f"({text})") if text else None
    if mark is None:
        return None
    value = mark[1]
    index = ord(value) - ord("a") if value.isalpha() else int(value) - 1
    return index if 0 <= index < len(options) else None


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


def squad_per_example(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, list[float]]:
    _check_lengths(predictions, references, "reference lists")
    em, f1 = [], []
    for prediction, refs in zip(predictions, references, strict=True):
        refs = _nonempty(refs)
        em.append(100.0 * max(float(normalize_answer(prediction) == normalize_answer(r)) for r in refs))
        f1.append(100.0 * max(_squad_f1(prediction, r) for r in refs))
    return {"exact_match": em, "f1": f1}


def squad(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    return {k: mean(v) for k, v in squad_per_example(predictions, references).items()}


def _nonempty(refs: Sequence[str]) -> Sequence[str]:
    if not refs:
        raise MetricError("an example has no references")
    return refs


# --- ROUGE-L, BLEU: the reference packages themselves, so numbers match published ones ---


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_per_example(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, list[float]]:
    _check_lengths(predictions, references, "reference lists")
    scorer = _rouge_scorer()
    return {
        "rouge_l": [
            100.0 * scorer.score_multi(_nonempty(refs), p)["rougeL"].fmeasure
            for p, refs in zip(predictions, references, strict=True)
        ]
    }


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean ROUGE-L F-measure (stemmed); with several references the best one counts (``score_multi``)."""
    return {"rouge_l": mean(rouge_l_per_example(predictions, references)["rouge_l"])}


def bleu_resample(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> Resample:
    """sacrebleu corpus BLEU of any resample of the examples, from sentence statistics computed once.

    The statistics (n-gram matches and lengths per sentence) add up over a corpus; this is how sacrebleu's own
    ``--paired-bs`` resamples (``sacrebleu.significance``). Examples may have different numbers of references.
    """
    from sacrebleu.metrics import BLEU

    _check_lengths(predictions, references, "reference lists")
    width = max(len(_nonempty(refs)) for refs in references)
    streams = [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]
    metric = BLEU()
    stats = np.asarray(metric._extract_corpus_statistics(list(predictions), streams), dtype=np.int64)  # [N, S]

    def statistic(indices: np.ndarray) -> float:
        return float(metric._compute_score_from_stats(stats[indices].sum(0).tolist()).score)

    return statistic


def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """sacrebleu corpus BLEU; examples may have different numbers of references (missing ones are ``None``)."""
    import sacrebleu

    _check_lengths(predictions, references, "reference lists")
    width = max(len(_nonempty(refs)) for refs in references)
    streams = [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]
    return {"bleu": float(sacrebleu.corpus_bleu(list(predictions), streams).score)}


# --- CommonGen concept coverage ---


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


@lru_cache(maxsize=65536)
def lemmas(word: str) -> frozenset[str]:
    """The word and every lemma ``lemminflect`` knows for it, whatever its part of speech ("stood" → stand,
    "teeth" → tooth, "leaves" → leaf and leave); a word outside its dictionary gets its noun and verb rules."""
    import lemminflect  # its dictionary ships inside the wheel: no download, no hub

    found = lemminflect.getAllLemmas(word)
    if not found:
        found = {pos: lemminflect.getAllLemmasOOV(word, upos=pos).get(pos, ()) for pos in ("NOUN", "VERB")}
    return frozenset({word, *(lemma.lower() for group in found.values() for lemma in group)})


def coverage_per_example(predictions: Sequence[str], concepts: Sequence[Sequence[str]]) -> dict[str, list[float]]:
    _check_lengths(predictions, concepts, "concept lists")
    scores = []
    for prediction, example_concepts in zip(predictions, concepts, strict=True):
        if not example_concepts:
            raise MetricError("an example has no concepts")
        forms = set().union(*(lemmas(w) for w in _words(prediction)))
        covered = sum(all(lemmas(w) & forms for w in _words(c)) for c in example_concepts)
        scores.append(100.0 * covered / len(example_concepts))
    return {"coverage": scores}


def coverage(predictions: Sequence[str], concepts: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean share of each example's concepts that its output mentions: a word and a concept word match when
    they share a lemma (:func:`lemmas`), so "dogs" covers "dog", "stood" covers "stand" and "teeth" "tooth".

    The official CommonGen coverage lemmatises both sides too (with spaCy). A multi-word concept counts when all
    of its words are present.
    """
    return {"coverage": mean(coverage_per_example(predictions, concepts)["coverage"])}


# --- BERTScore: only with a local scorer model directory ---


def bertscore(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    model_dir: str | Path,
    *,
    num_layers: int | None = None,
    batch_size: int = 64,
) -> dict[str, float]:
    """Mean BERTScore P/R/F1 (:func:`bertscore_per_example`)."""
    per_example = bertscore_per_example(
        predictions, references, model_dir, num_layers=num_layers, batch_size=batch_size
    )
    return {k: mean(v) for k, v in per_example.items()}


def bertscore_per_example(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    model_dir: str | Path,
    *,
    num_layers: int | None = None,
    batch_size: int = 64,
) -> dict[str, list[float]]:
    """BERTScore P/R/F1 (no idf, no baseline rescaling) with the ``bert_score`` package, best reference.

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
    return {key: (100.0 * t.double()).tolist() for key, t in zip(BERTSCORE_KEYS, (p, r, f), strict=True)}


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
    "accuracy": ("acc",),
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
    options: Sequence[Sequence[str]] | None = None,
    predicted_labels: Sequence[int | None] | None = None,
    labels: Sequence[int] | None = None,
    bertscore_model: str | Path | None = None,
    bertscore_layers: int | None = None,
) -> Scores:
    """Run the metrics a task names (keys of :data:`METRIC_KEYS`) over one task's predictions.

    ``accuracy`` uses ``predicted_labels``/``labels`` when given (rank classification). Otherwise the predictions
    are generated answers: with ``options`` each is matched to an option (:func:`match_option`; the gold one is
    ``labels[i]``, or the option equal to the first reference), without them it must equal a reference after
    :func:`normalize_choice`. ``coverage`` needs ``concepts``.
    """
    unknown = [m for m in metric_names if m not in METRIC_KEYS]
    if unknown:
        raise MetricError(f"unknown metric(s) {unknown}; known: {', '.join(METRIC_KEYS)}")
    per_example: dict[str, list[float]] = {}
    resample: dict[str, Resample] = {}
    not_computed: dict[str, str] = {}
    for name in metric_names:
        if name == "accuracy":
            per_example["acc"] = _accuracy_hits(predictions, references, options, predicted_labels, labels)
        elif name == "coverage":
            if concepts is None:
                raise MetricError("metric 'coverage' needs the examples' concepts")
            per_example.update(coverage_per_example(predictions, concepts))
        elif name == "bertscore":
            reason = _bertscore_unavailable(bertscore_model)
            if reason is None:
                per_example.update(
                    bertscore_per_example(predictions, references, bertscore_model, num_layers=bertscore_layers)
                )
            else:
                not_computed.update(dict.fromkeys(BERTSCORE_KEYS, reason))
        elif name == "bleu":
            resample["bleu"] = bleu_resample(predictions, references)
        else:
            per_example.update(_PER_EXAMPLE[name](predictions, references))
    n = len(predicted_labels) if predicted_labels is not None and not predictions else len(predictions)
    values: dict[str, float | None] = {}
    stderr: dict[str, float | None] = {}
    for key in (k for name in metric_names for k in METRIC_KEYS[name]):
        if key in per_example:
            values[key], stderr[key] = mean(per_example[key]), mean_stderr(per_example[key])
        elif key in resample:
            values[key], stderr[key] = resample[key](np.arange(n)), bootstrap_stderr(resample[key], n)
        else:
            values[key] = stderr[key] = None
    return Scores(values, not_computed, stderr, n, per_example, resample)


_PER_EXAMPLE = {"squad": squad_per_example, "rouge_l": rouge_l_per_example}


def _accuracy_hits(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    options: Sequence[Sequence[str]] | None,
    predicted_labels: Sequence[int | None] | None,
    labels: Sequence[int] | None,
) -> list[float]:
    if predicted_labels is not None and labels is not None:
        return _hits(predicted_labels, labels)
    if options is None:
        return [
            100.0 * (normalize_choice(p) in {normalize_choice(r) for r in _nonempty(refs)})
            for p, refs in zip(predictions, references, strict=True)
        ]
    _check_lengths(predictions, options, "option lists")
    gold = (
        labels
        if labels is not None
        else [_gold_option(refs, opts) for refs, opts in zip(references, options, strict=True)]
    )
    return _hits([match_option(p, opts) for p, opts in zip(predictions, options, strict=True)], gold)


def _gold_option(references: Sequence[str], options: Sequence[str]) -> int:
    normalized = [normalize_choice(o) for o in options]
    for ref in _nonempty(references):
        if normalize_choice(ref) in normalized:
            return normalized.index(normalize_choice(ref))
    raise MetricError(f"no reference {list(references)!r} is one of the options {list(options)!r}")


def score_predictions_file(
    task_metrics: Sequence[str],
    path: str | Path,
    *,
    bertscore_model: str | Path | None = None,
    bertscore_layers: int | None = None,
) -> Scores:
    """Score a JSONL file with one ``{"prediction": str, "references": [str, ...]}`` object a line.

    CommonGen lines also carry ``"concepts": [str, ...]``. Option tasks' lines may carry ``"options": [str, ...]``
    and ``"label": int`` (the right option's index): a generated answer is then matched to an option by its text,
    letter or number (:func:`match_option`). Other keys are ignored, blank lines skipped, and a UTF-8 byte order
    mark is accepted (the task loaders accept one too). A malformed line raises :class:`MetricError` naming the
    file, the line number and the problem.
    """
    needs_concepts = "coverage" in task_metrics
    predictions, references, concepts, options, labels = [], [], [], [], []
    with open(path, encoding="utf-8-sig") as f:
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
            if "options" in row:
                options.append(_string_list(row, "options", where))
                if "label" in row:
                    labels.append(_label(row, len(options[-1]), where))
    if not predictions:
        raise MetricError(f"{path}: no predictions in the file")
    if options and len(options) != len(predictions):
        raise MetricError(
            f"{path}: {len(options)} of {len(predictions)} lines have 'options'; give them on all or none"
        )
    return score(
        task_metrics,
        predictions,
        references,
        concepts=concepts or None,
        options=options or None,
        labels=labels if labels and len(labels) == len(predictions) else None,
        bertscore_model=bertscore_model,
        bertscore_layers=bertscore_layers,
    )


def _label(row: dict, n_options: int, where: str) -> int:
    label = row["label"]
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < n_options:
        raise MetricError(f"{where}: 'label' must be an option index 0..{n_options - 1}, got {label!r}")
    return label


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
