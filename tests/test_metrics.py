import json
import sys

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from pipeline import metrics
from pipeline.metrics import MetricError, Scores

# --- accuracy ---


def test_accuracy_counts_matching_labels():
    assert metrics.accuracy([1, 0, 2, 2], [1, 1, 2, 0]) == {"accuracy": 50.0}


def test_metrics_reject_mismatched_lengths_and_empty_input():
    with pytest.raises(MetricError, match="3 predictions but 2 labels"):
        metrics.accuracy([1, 0, 1], [1, 0])
    with pytest.raises(MetricError, match="no predictions"):
        metrics.rouge_l([], [])


# --- SQuAD v1.1 ---


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("The Cat.", "cat"),
        ("  An  apple,\ta day!  ", "apple day"),
        ("THE END", "end"),
        ("Theatre and another", "theatre and another"),  # articles only as whole words
        ("a the an", ""),
        ('Jean-Luc\'s   "café"', "jeanlucs café"),  # ASCII punctuation is deleted, not spaced
    ],
)
def test_squad_normalization(text, normalized):
    assert metrics.normalize_answer(text) == normalized


def test_squad_case_punctuation_and_articles_do_not_matter():
    assert metrics.squad(["The Cat."], [["cat"]]) == {"exact_match": 100.0, "f1": 100.0}


def test_squad_answer_made_only_of_articles_is_exact_but_has_zero_f1():
    # evaluate-v1.1.py: both sides normalise to "", so they are equal, but F1 has no common token.
    assert metrics.squad(["a"], [["the"]]) == {"exact_match": 100.0, "f1": 0.0}


def test_squad_partial_overlap_f1_by_hand():
    # [quick, brown, fox] vs [quick, brown, dog, jumps]: 2 common, P = 2/3, R = 1/2, F1 = 4/7.
    result = metrics.squad(["the quick brown fox"], [["Quick brown dog jumps"]])
    assert result["exact_match"] == 0.0
    assert result["f1"] == pytest.approx(100 * 4 / 7)


def test_squad_repeated_tokens_count_once_per_match():
    # [cat, cat, cat] vs [cat]: 1 common, P = 1/3, R = 1, F1 = 1/2.
    assert metrics.squad(["cat cat cat"], [["cat"]])["f1"] == pytest.approx(50.0)


def test_squad_takes_the_best_reference_and_averages_examples():
    # Example 1 vs "red": P = 1/3, R = 1, F1 = 1/2; vs "a small dog": P = 1/3, R = 1/2, F1 = 2/5. Best is 1/2.
    # Example 2 matches its second reference exactly.
    result = metrics.squad(["big red dog", "Paris"], [["red", "a small dog"], ["London", "paris!"]])
    assert result["exact_match"] == pytest.approx(50.0)
    assert result["f1"] == pytest.approx((50.0 + 100.0) / 2)


# --- ROUGE-L ---


def test_rouge_l_matches_rouge_score_with_stemming_and_best_reference():
    predictions = [
        "the cats were sitting on the mat",
        "a quick brown fox",
        "nothing in common here",
        "police killed the gunman",
    ]
    references = [
        ["the cat sat on the mat"],
        ["the quick brown fox jumps", "a fast brown fox", "fox"],
        ["completely different words"],
        ["the gunman was shot dead by police", "police kill the gunman"],
    ]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = [
        max(scorer.score(r, p)["rougeL"].fmeasure for r in refs)
        for p, refs in zip(predictions, references, strict=True)
    ]
    assert expected[3] > scorer.score(references[3][0], predictions[3])["rougeL"].fmeasure  # the max matters
    assert metrics.rouge_l(predictions, references)["rouge_l"] == pytest.approx(100 * sum(expected) / 4)


def test_rouge_l_identical_is_100_and_disjoint_is_0():
    assert metrics.rouge_l(["the cat sat"], [["the cat sat"]]) == {"rouge_l": 100.0}
    assert metrics.rouge_l(["dog"], [["cat"]]) == {"rouge_l": 0.0}


# --- CommonGen coverage ---


def test_coverage_matches_inflected_forms():
    result = metrics.coverage(["Two dogs are running in the park."], [["dog", "run", "park", "stand"]])
    assert result == {"coverage": 75.0}  # "stand" is absent


def test_coverage_exact_words_multiword_concepts_and_mean_over_examples():
    predictions = ["He throws the frisbee to his dog.", "A ball."]
    concepts = [["throw", "frisbee", "ice cream"], ["ball", "kick"]]
    # Example 1: throw (stem), frisbee (word), "ice cream" missing -> 2/3. Example 2: 1/2.
    assert metrics.coverage(predictions, concepts)["coverage"] == pytest.approx(100 * (2 / 3 + 1 / 2) / 2)
    assert metrics.coverage(["ice cream melts"], [["ice cream", "melt"]]) == {"coverage": 100.0}


def test_coverage_does_not_match_substrings():
    assert metrics.coverage(["a catalogue"], [["cat"]]) == {"coverage": 0.0}


# --- BLEU ---


def test_bleu_matches_sacrebleu_corpus_bleu():
    predictions = ["El gato está en la alfombra.", "Me gusta leer libros.", "Hola mundo"]
    references = [["El gato está sobre la alfombra."], ["Me gusta leer libros."], ["Hola, mundo."]]
    expected = sacrebleu.corpus_bleu(predictions, [[r[0] for r in references]]).score
    assert 0 < expected < 100
    assert metrics.bleu(predictions, references) == {"bleu": pytest.approx(expected)}


def test_bleu_with_a_varying_number_of_references():
    predictions = ["el perro corre rápido", "la casa es grande"]
    references = [["el perro corre", "el perro corre rápido hoy"], ["la casa es muy grande"]]
    streams = [["el perro corre", "la casa es muy grande"], ["el perro corre rápido hoy", None]]
    expected = sacrebleu.corpus_bleu(predictions, streams).score
    assert metrics.bleu(predictions, references)["bleu"] == pytest.approx(expected)
    assert expected != pytest.approx(sacrebleu.corpus_bleu(predictions, streams[:1]).score)


# --- dispatch ---


def test_score_dispatches_task_metric_names():
    result = metrics.score(["squad", "rouge_l"], ["The Cat."], [["cat"]])
    rouge = 100 * 2 * (1 / 2) / (1 + 1 / 2)  # ROUGE keeps "the": P = 1/2, R = 1
    assert result == Scores({"exact_match": 100.0, "f1": 100.0, "rouge_l": pytest.approx(rouge)}, {})


def test_score_accuracy_from_labels_or_from_option_text():
    assert metrics.score(["accuracy"], [], [], predicted_labels=[0, 1], labels=[0, 0]).values == {"accuracy": 50.0}
    result = metrics.score(["accuracy"], ["yes ", "no", "maybe"], [["yes"], ["yes"], ["maybe"]])
    assert result.values["accuracy"] == pytest.approx(200 / 3)


def test_score_rejects_unknown_metric_and_coverage_without_concepts():
    with pytest.raises(MetricError, match="unknown metric"):
        metrics.score(["meteor"], ["a"], [["a"]])
    with pytest.raises(MetricError, match="concepts"):
        metrics.score(["coverage"], ["a"], [["a"]])


# --- predictions file ---


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_score_predictions_file_matches_direct_scoring(tmp_path):
    rows = [
        {"prediction": "Dogs run in the park", "references": ["The dog runs in a park"], "concepts": ["dog", "run"]},
        {"prediction": "a cat", "references": ["the cat sleeps", "a cat"], "concepts": ["cat", "sleep"], "id": 7},
    ]
    path = _write_jsonl(tmp_path / "preds.jsonl", [rows[0], "", rows[1]])  # blank lines are skipped
    result = metrics.score_predictions_file(["rouge_l", "coverage"], path)
    expected = metrics.score(
        ["rouge_l", "coverage"],
        [r["prediction"] for r in rows],
        [r["references"] for r in rows],
        concepts=[r["concepts"] for r in rows],
    )
    assert result == expected
    assert result.values["coverage"] == 75.0


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"prediction": "x", "references": ["y"]', r"preds\.jsonl:2: not valid JSON"),
        ('["x", ["y"]]', r"preds\.jsonl:2: expected a JSON object, got list"),
        ('{"prediction": "x"}', r"preds\.jsonl:2: missing key 'references'"),
        ('{"prediction": "x", "references": "y"}', r"preds\.jsonl:2: 'references' must be a list, got str"),
        ('{"prediction": 3, "references": ["y"]}', r"preds\.jsonl:2: 'prediction' must be a str, got int"),
        ('{"prediction": "x", "references": []}', r"preds\.jsonl:2: 'references' must be a non-empty list"),
    ],
)
def test_score_predictions_file_names_the_bad_line(tmp_path, bad_line, message):
    path = _write_jsonl(tmp_path / "preds.jsonl", [{"prediction": "a", "references": ["a"]}, bad_line])
    with pytest.raises(MetricError, match=message):
        metrics.score_predictions_file(["squad"], path)


def test_score_predictions_file_requires_concepts_for_coverage(tmp_path):
    path = _write_jsonl(tmp_path / "preds.jsonl", [{"prediction": "a", "references": ["a"]}])
    with pytest.raises(MetricError, match=r":1: missing key 'concepts'"):
        metrics.score_predictions_file(["coverage"], path)


def test_score_predictions_file_rejects_an_empty_file(tmp_path):
    with pytest.raises(MetricError, match="no predictions"):
        metrics.score_predictions_file(["squad"], _write_jsonl(tmp_path / "preds.jsonl", [""]))


# --- BERTScore ---


def test_bertscore_without_a_local_model_is_marked_not_computed():
    result = metrics.score(["rouge_l", "bertscore"], ["a cat"], [["a cat"]])
    assert result.values == {"rouge_l": 100.0, **dict.fromkeys(metrics.BERTSCORE_KEYS)}
    assert set(result.not_computed) == set(metrics.BERTSCORE_KEYS)
    assert "bertscore_model" in result.not_computed["bertscore_f1"]


def test_bertscore_without_the_package_is_marked_not_computed(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "bert_score", None)  # makes `import bert_score` raise ImportError
    result = metrics.score(["bertscore"], ["a cat"], [["a cat"]], bertscore_model=tmp_path)
    assert result.values["bertscore_f1"] is None
    assert "not installed" in result.not_computed["bertscore_f1"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A randomly initialised 2-layer BERT with a word-level tokenizer, saved like a downloaded model."""
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    words = ["the", "a", "cat", "dog", "sat", "on", "mat", "ran", "quickly", "in", "park", "big", "red"]
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=64,
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    path = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_bertscore_with_a_local_model(tiny_bert):
    pytest.importorskip("bert_score")
    same = metrics.score(
        ["bertscore"], ["the cat sat on the mat"], [["the cat sat on the mat"]], bertscore_model=tiny_bert
    )
    assert same.not_computed == {}
    assert same.values["bertscore_f1"] == pytest.approx(100.0, abs=1e-3)
    different = metrics.bertscore(["a dog ran quickly"], [["the cat sat on the mat"]], tiny_bert)
    assert set(different) == set(metrics.BERTSCORE_KEYS)
    assert different["bertscore_f1"] < 99.0
    # With several references the best one counts.
    best = metrics.bertscore(["a dog ran quickly"], [["the cat sat on the mat", "a dog ran quickly"]], tiny_bert)
    assert best["bertscore_f1"] == pytest.approx(100.0, abs=1e-3)


def test_bertscore_with_a_missing_model_directory_is_an_error(tmp_path):
    with pytest.raises(MetricError, match="does not exist"):
        metrics.score(["bertscore"], ["a"], [["a"]], bertscore_model=tmp_path / "absent")


# --- evaluate modules loaded from their local path ---


@pytest.mark.parametrize(
    ("name", "inputs", "direct"),
    [
        ("rouge_l", {"references": [["the cat sat on the mat"], ["x y", "a b c"]]}, metrics.rouge_l),
        ("squad", {"references": [["The cats!"], ["a b", "c"]]}, metrics.squad),
        ("coverage", {"concepts": [["cat", "sit", "mat"], ["b", "z"]]}, metrics.coverage),
    ],
)
def test_local_evaluate_module_equals_the_direct_function(name, inputs, direct):
    predictions = ["the cats sitting on a mat", "a b"]
    module = metrics.load_metric(name)
    result = module.compute(predictions=predictions, **inputs)
    assert result == direct(predictions, *inputs.values())
    assert 0 < next(iter(result.values())) < 100


def test_load_metric_rejects_an_unknown_module():
    with pytest.raises(MetricError, match="known: coverage, rouge_l, squad"):
        metrics.load_metric("rouge")
