import json
import sys

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from pipeline.evaluation import metrics
from pipeline.evaluation.metrics import MetricError

# --- accuracy ---


def test_accuracy_counts_matching_labels():
    assert metrics.accuracy([1, 0, 2, 2], [1, 1, 2, 0]) == {"acc": 50.0}


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
    assert result.values == {"exact_match": 100.0, "f1": 100.0, "rouge_l": pytest.approx(rouge)}
    assert result.not_computed == {} and result.n == 1
    assert result.stderr == {"exact_match": None, "f1": None, "rouge_l": None}  # one example: no standard error


def test_score_accuracy_from_labels_or_from_option_text():
    assert metrics.score(["accuracy"], [], [], predicted_labels=[0, 1], labels=[0, 0]).values == {"acc": 50.0}
    result = metrics.score(["accuracy"], ["yes ", "no", "maybe"], [["yes"], ["yes"], ["maybe"]])
    assert result.values["acc"] == pytest.approx(200 / 3)


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


# --- tolerant accuracy for generated option answers ---


def _variants(option: str, index: int) -> list[str]:
    """How models write an option they mean: other case, trailing punctuation, quotes, its letter or number."""
    return [
        option.upper(),
        option.lower() + ".",
        f' "{option.capitalize()}"! ',
        f"{option}\n\nBecause the passage says so.",
        chr(ord("A") + index),
        f"({chr(ord('a') + index)})",
        str(index + 1),
        f"Answer: {chr(ord('A') + index)}",
    ]


@pytest.mark.parametrize("task", ["boolq", "paws", "anli", "cosmosqa"])
def test_generated_option_answers_score_through_case_punctuation_letters_and_numbers(task, shared_data):
    from pipeline.tasks import get_task

    records = get_task(task).load("validation", shared_data, 40, 0).records
    assert records
    predictions, references, options, labels = [], [], [], []
    for r in records:
        for variant in _variants(r.options[r.label], r.label):
            predictions.append(variant)
            references.append([r.options[r.label]])
            options.append(list(r.options))
            labels.append(r.label)
    result = metrics.score(["accuracy"], predictions, references, options=options, labels=labels)
    assert result.values["acc"] == 100.0 and result.stderr["acc"] == 0.0
    # without the option list, only the text variants can count; with it, a wrong option is still wrong
    assert metrics.match_option("Yes.", ["no", "yes"]) == 1 and metrics.match_option("maybe", ["no", "yes"]) is None
    wrong = [r.options[(r.label + 1) % len(r.options)].upper() + "." for r in records]
    result = metrics.score(
        ["accuracy"], wrong, [[r.options[r.label]] for r in records], options=[list(r.options) for r in records]
    )
    assert result.values["acc"] == 0.0


def test_match_option_prefers_an_option_text_over_a_letter_and_refuses_out_of_range():
    assert metrics.match_option("a", ["b", "a"]) == 1  # the option "a" itself, not letter A
    assert metrics.match_option("C", ["yes", "no"]) is None and metrics.match_option("3", ["yes", "no"]) is None
    assert metrics.match_option("It's impossible to say.", ["Yes", "It's impossible to say", "No"]) == 1
    assert metrics.normalize_choice("  'YES!' ") == "yes"


def test_eval_score_reads_a_bom_file_with_options_and_letters(tmp_path):
    path = tmp_path / "bom.jsonl"
    rows = [
        {"prediction": "Yes.", "references": ["yes"], "options": ["no", "yes"], "label": 1},
        {"prediction": "A", "references": ["no"], "options": ["no", "yes"], "label": 0},
        {"prediction": "NO", "references": ["yes"], "options": ["no", "yes"], "label": 1},
    ]
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in rows).encode())
    result = metrics.score_predictions_file(["accuracy"], path)
    assert result.values == {"acc": pytest.approx(200 / 3)} and result.n == 3


# --- standard errors and paired differences ---


def test_mean_metrics_carry_the_sample_standard_error_of_the_mean():
    result = metrics.score(["accuracy"], [], [], predicted_labels=[0, 1, 1, 1], labels=[0, 1, 0, 1])
    # per-example 100, 100, 0, 100: mean 75, sample std sqrt(((25² × 3) + 75²) / 3) = 50, se = 50 / 2
    assert result.values["acc"] == 75.0 and result.stderr["acc"] == pytest.approx(25.0)
    preds, refs = ["the cat sat", "a dog", "blue sky", "x"], [["the cat sat"], ["a dog ran"], ["red sky"], ["y"]]
    result = metrics.score(["rouge_l"], preds, refs)
    per = [
        100 * rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(r[0], p)["rougeL"].fmeasure
        for p, r in zip(preds, refs, strict=True)
    ]
    mean = sum(per) / 4
    assert result.stderr["rouge_l"] == pytest.approx((sum((v - mean) ** 2 for v in per) / 3) ** 0.5 / 2)


def test_bleu_bootstrap_standard_error_is_seeded_and_its_value_is_sacrebleu():
    preds = [f"the {w} cat sat on the mat" for w in ("black", "white", "small", "big", "old", "young")]
    refs = [["the black cat sat on a mat"], ["a white cat sat on the mat"], ["the cat sat"], ["big cats sit"]] + [
        ["the old cat sat on the mat"],
        ["a young dog sat on the mat"],
    ]
    first, second = metrics.score(["bleu"], preds, refs), metrics.score(["bleu"], preds, refs)
    assert first.values["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [[r[0] for r in refs]]).score)
    assert first.stderr == second.stderr and 0.0 < first.stderr["bleu"] < 50.0


def test_paired_difference_is_the_mean_of_per_example_differences():
    a = metrics.score(["accuracy"], [], [], predicted_labels=[0, 0, 0, 0], labels=[0, 1, 0, 1])  # 100 0 100 0
    b = metrics.score(["accuracy"], [], [], predicted_labels=[0, 1, 1, 1], labels=[0, 1, 0, 1])  # 100 100 0 100
    diff = metrics.paired_difference(a, b, "acc")
    # differences 0, 100, -100, 100: mean 25, sample std sqrt((25² + 75² + 125² + 75²) / 3) = 86.6..., se / 2
    assert diff.value == 25.0 and diff.n == 4
    assert diff.stderr == pytest.approx(((25**2 + 75**2 + 125**2 + 75**2) / 3) ** 0.5 / 2)
    same = metrics.paired_difference(a, a, "acc")
    assert same.value == 0.0 and same.stderr == 0.0
    preds, refs = (
        ["the cat sat on the mat", "a dog ran home", "sun"],
        [["the cat sat on a mat"], ["a dog ran"], ["sky"]],
    )
    bleu_a = metrics.score(["bleu"], preds, refs)
    bleu_b = metrics.score(["bleu"], [refs[0][0], preds[1], preds[2]], refs)
    diff = metrics.paired_difference(bleu_a, bleu_b, "bleu")
    assert diff.value == pytest.approx(bleu_b.values["bleu"] - bleu_a.values["bleu"]) and diff.stderr > 0


# --- CommonGen coverage through lemmas ---


@pytest.mark.parametrize(
    ("sentence", "concept"),
    [("He sat down.", "sit"), ("She stood up.", "stand"), ("They held hands.", "hold"), ("He threw it.", "throw")]
    + [("Brush your teeth.", "tooth"), ("Leaves fall.", "leaf"), ("The mice ran.", "mouse")],
)
def test_coverage_matches_irregular_forms_through_lemmas(sentence, concept):
    assert metrics.coverage([sentence], [[concept]]) == {"coverage": 100.0}


def test_commongen_references_cover_their_own_concepts(shared_data):
    """The ceiling: human references themselves, scored as outputs (a Porter stemmer gave 97.5 here)."""
    from pipeline.tasks import get_task

    records = get_task("commongen").load("validation", shared_data, None, 0).records
    predictions = [scene for r in records for scene in r.targets]
    concepts = [list(r.concepts) for r in records for _ in r.targets]
    assert metrics.coverage(predictions, concepts)["coverage"] > 99.5
