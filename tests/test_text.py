"""The text contract (pipeline.text): every layout written out by hand here, and every stage giving the same ids."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2TokenizerFast,
    GPTNeoXTokenizerFast,
    LlamaTokenizerFast,
)

import cache_schema as cs
from pipeline.alignment import generated_spans
from pipeline.config import DistillConfig
from pipeline.evaluation.inference import EvalModel
from pipeline.losses import IGNORE_INDEX
from pipeline.student.cache_stream import StudentEncoder
from pipeline.text import (
    TEXT_FILE,
    TextEncoder,
    TextError,
    TextSpec,
    chat_template_for,
    cut_middle,
    layout_for,
    save_spec,
    saved_layout,
    split_characters,
    splits_characters,
)
from stages import distill

CORPUS = [
    "Read the passage and answer the question. Is the sky blue? yes no maybe",
    "Carolina Panthers won the game; the Denver Broncos lost it. Super Bowl 50 was played in 2016.",
    "Über café naïve résumé — “quotes” and emoji 🙂 in answers too.",
] * 20
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
PROMPT = "Read the passage and answer the question. Who won Super Bowl 50?"
ANSWER = "Carolina Panthers"


def _byte_level_bpe(specials: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


@pytest.fixture(scope="module")
def tokenizers_by_family() -> dict:
    """GPT-2, Pythia (GPT-NeoX) and Llama-style (adds BOS by default) tokenizers, built here on a small corpus."""
    gpt = _byte_level_bpe(["<|endoftext|>"])
    llama = _byte_level_bpe(["<s>", "</s>", "<|im_start|>", "<|im_end|>"])
    llama_tok = LlamaTokenizerFast(tokenizer_object=llama, bos_token="<s>", eos_token="</s>", add_bos_token=True)
    llama_tok.chat_template = CHATML
    return {
        "gpt2": GPT2TokenizerFast(tokenizer_object=gpt, bos_token="<|endoftext|>", eos_token="<|endoftext|>"),
        "pythia": GPTNeoXTokenizerFast(tokenizer_object=gpt, bos_token="<|endoftext|>", eos_token="<|endoftext|>"),
        "llama": llama_tok,
    }


def _tiny_causal(tokenizer) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=16, n_layer=1, n_head=2)
    return GPT2LMHeadModel(config).eval()


# ---- the layouts, by hand ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["gpt2", "pythia", "llama"])
def test_causal_layout_is_bos_prompt_then_space_answer_eos(family, tokenizers_by_family):
    tok = tokenizers_by_family[family]
    enc = TextEncoder(tok, TextSpec("causal", 512, 64)).encode(PROMPT + "  ", "  " + ANSWER)
    assert enc.prompt_ids == [tok.bos_token_id, *tok(PROMPT, add_special_tokens=False).input_ids]
    assert enc.answer_ids == [*tok(" " + ANSWER, add_special_tokens=False).input_ids, tok.eos_token_id]
    assert enc.prompt_ids.count(tok.bos_token_id) == 1  # a tokenizer that adds BOS itself gets no second one
    assert enc.prompt_cut == enc.answer_cut == 0


def test_the_space_keeps_words_whole(tokenizers_by_family):
    tok = tokenizers_by_family["gpt2"]
    glued = tok(PROMPT + ANSWER, add_special_tokens=False).input_ids
    enc = TextEncoder(tok, TextSpec("causal", 512, 64)).encode(PROMPT, ANSWER)
    assert enc.prompt_ids[1:] + enc.answer_ids[:-1] == tok(PROMPT + " " + ANSWER, add_special_tokens=False).input_ids
    assert glued != enc.prompt_ids[1:] + enc.answer_ids[:-1]


def test_seq2seq_layout_closes_prompt_and_answer_with_eos(demo_models):
    tok = AutoTokenizer.from_pretrained(demo_models["teacher"])
    enc = TextEncoder(tok, TextSpec("seq2seq", 512, 64)).encode(PROMPT, ANSWER)
    assert enc.prompt_ids == tok(PROMPT).input_ids and enc.prompt_ids[-1] == tok.eos_token_id
    assert enc.answer_ids == tok(ANSWER).input_ids and enc.answer_ids[-1] == tok.eos_token_id
    assert tok.bos_token_id is None or tok.bos_token_id not in enc.prompt_ids


def test_chat_layout_is_the_template_with_its_end_token_as_eos(tokenizers_by_family):
    tok = tokenizers_by_family["llama"]
    enc = TextEncoder(tok, TextSpec("chat", 512, 64)).encode(PROMPT, ANSWER)
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=False
    )
    assert enc.prompt_ids == tok(rendered, add_special_tokens=False).input_ids
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert enc.answer_ids == [*tok(ANSWER, add_special_tokens=False).input_ids, end]


def test_chat_errors_are_one_line(tokenizers_by_family):
    with pytest.raises(TextError, match="has no chat template"):
        TextEncoder(tokenizers_by_family["gpt2"], TextSpec("chat", 512, 64))
    with pytest.raises(TextError, match="encoder-decoder model has no chat template"):
        layout_for(type("Config", (), {"is_encoder_decoder": True})(), chat_template=True)
    with pytest.raises(TextError, match="layout 'glued'"):
        TextSpec("glued", 512, 64)


# ---- truncation ---------------------------------------------------------------------------------------------------


def test_cut_middle_keeps_both_ends():
    assert cut_middle(list(range(10)), 10) == list(range(10))
    assert cut_middle(list(range(10)), 5) == [0, 1, 7, 8, 9]


@pytest.mark.parametrize("layout", ["causal", "chat"])
def test_a_long_prompt_loses_its_middle_within_the_limit(layout, tokenizers_by_family):
    tok = tokenizers_by_family["llama"]
    prompt = "Read the passage. " + "blue sky " * 300 + "Who won?"
    text = TextEncoder(tok, TextSpec(layout, 64, 16))
    frame, _ = text.encode_prompt("")  # BOS, or the chat markup around the user turn
    ids, cut = text.encode_prompt(prompt)
    whole = tok(prompt, add_special_tokens=False).input_ids
    room = 64 - len(frame)
    assert len(ids) == 64 and cut == len(whole) - room
    assert ids[0] == frame[0] and (layout == "causal" or ids[-3:] == frame[-3:])  # BOS / chat markup stay whole
    decoded = tok.decode(ids, skip_special_tokens=True)
    assert "Read the passage." in decoded and "Who won?" in decoded and decoded.count("blue sky") < 300


def test_a_causal_context_leaves_room_for_the_answer(tokenizers_by_family):
    tok = tokenizers_by_family["gpt2"]
    text = TextEncoder(tok, TextSpec("causal", 512, 16), context=40)
    enc = text.encode("blue sky " * 100, ANSWER)
    assert len(enc.prompt_ids) + len(enc.answer_ids) == 40 and enc.prompt_cut > 0


def test_over_long_answers_are_skipped_or_cut_keeping_eos(tokenizers_by_family):
    tok = tokenizers_by_family["gpt2"]
    long_answer = "blue sky " * 20
    assert TextEncoder(tok, TextSpec("causal", 512, 8, "skip")).encode(PROMPT, long_answer) is None
    cut = TextEncoder(tok, TextSpec("causal", 512, 8, "cut")).encode(PROMPT, long_answer)
    whole = tok(" " + long_answer.strip(), add_special_tokens=False).input_ids
    assert cut.answer_ids == [*whole[:7], tok.eos_token_id] and cut.answer_cut == len(whole) - 7
    assert TextEncoder(tok, TextSpec("causal", 512, 8)).encode(PROMPT, "   ") is None  # nothing to learn


# ---- answer spans ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["causal", "chat", "seq2seq"])
def test_answer_spans_cover_the_answer_bytes_in_order(layout, tokenizers_by_family, demo_models):
    tok = (
        AutoTokenizer.from_pretrained(demo_models["teacher"]) if layout == "seq2seq" else tokenizers_by_family["llama"]
    )
    answer = "Über café — naïve 🙂 résumé"
    enc = TextEncoder(tok, TextSpec(layout, 512, 64)).encode(PROMPT, answer)
    raw = answer.encode("utf-8")
    spans = enc.answer_spans
    assert spans.shape == (len(enc.answer_ids), 2) and spans.dtype == np.int32
    assert (spans[:, 0] <= spans[:, 1]).all() and (np.diff(spans[:, 0]) >= 0).all()
    assert spans[-1].tolist() == [len(raw), len(raw)]  # EOS covers no answer text
    assert spans[0, 0] == 0 and spans[:-1, 1].max() == len(raw)
    assert (spans[1:, 0] == spans[:-1, 1]).all()  # the spans tile the answer: each starts where the last ended
    if layout != "seq2seq":  # byte-level BPE: every token covers exactly its own bytes, split characters too
        _assert_byte_exact(tok, answer, enc.answer_ids, spans, joining_space=layout == "causal")


def _assert_byte_exact(tok, answer: str, ids: list[int], spans: np.ndarray, joining_space: bool) -> None:
    """Each answer token's span holds exactly its bytes (the causal layout's joining space aside), and they tile."""
    raw = answer.encode("utf-8")
    assert spans[0, 0] == 0 and (spans[1:, 0] == spans[:-1, 1]).all() and spans[-1].tolist() == [len(raw)] * 2
    for i, (token, (s, e)) in enumerate(zip(ids[:-1], spans[:-1].tolist(), strict=True)):
        piece = _byte_level_bytes(tok.convert_ids_to_tokens(token))
        assert raw[s:e] == (piece.removeprefix(b" ") if i == 0 and joining_space else piece), (i, piece)


def _byte_level_bytes(piece: str) -> bytes:
    """The bytes of a byte-level BPE piece (GPT-2's byte-to-unicode table, inverted)."""
    bs = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = {chr(c): b for b, c in zip(bs, cs, strict=True)}
    return bytes(table[ch] for ch in piece)


SPLIT_ANSWERS = ["café sat", "東京タワーです", "a 🙂 b", "naïve résumé", "Zürich 😀👍🏽 x", "你好世界"]


def test_split_characters_get_their_own_bytes_with_the_demo_student(demo_models):
    """The demo student's byte-level BPE splits é, CJK and emoji into byte tokens: each has its bytes (cache v1.3)."""
    tok = AutoTokenizer.from_pretrained(demo_models["student"])
    text = TextEncoder(tok, TextSpec("causal", 512, 64))
    for answer in SPLIT_ANSWERS:
        enc = text.encode(PROMPT, answer)
        assert splits_characters(_character_spans(tok, answer)), answer  # the case: several tokens in one character
        _assert_byte_exact(tok, answer, enc.answer_ids, enc.answer_spans, joining_space=True)
    assert text.encode(PROMPT, "café").answer_spans[:-1].tolist() == [[0, 1], [1, 2], [2, 3], [3, 4], [4, 5]]


@pytest.mark.slow
def test_split_characters_get_their_own_bytes_with_the_real_smollm2_tokenizer(smollm2_tokenizer):
    tok = smollm2_tokenizer
    for layout in ("causal", "chat"):
        text = TextEncoder(tok, TextSpec(layout, 512, 64))
        for answer in SPLIT_ANSWERS:
            enc = text.encode(PROMPT, answer)
            _assert_byte_exact(tok, answer, enc.answer_ids, enc.answer_spans, joining_space=layout == "causal")
    # " 東京" is 'Ġæ' 'Ŀ' '±' 'äº' '¬': the first carries the joining space and one byte of 東
    assert TextEncoder(tok, TextSpec("causal", 512, 64)).encode(PROMPT, "東京").answer_spans.tolist() == [
        [0, 1],
        [1, 2],
        [2, 3],
        [3, 5],
        [5, 6],
        [6, 6],
    ]


def _character_spans(tok, answer: str) -> np.ndarray:
    """Each token's span widened to the whole characters its offsets touch (what caches before v1.3 stored)."""
    text = " " + answer
    at = np.cumsum([0, *(len(c.encode()) for c in text)])
    offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True).offset_mapping
    return np.array([(max(at[s] - 1, 0), max(at[e] - 1, 0)) for s, e in offsets])


def test_split_characters_cuts_shared_spans_by_byte_lengths():
    # "é" as 2 byte tokens after "caf", a 4-byte emoji as 3 + 1, and a first token carrying a joining space
    shared = np.array([(0, 3), (3, 5), (3, 5), (5, 9), (5, 9), (9, 9)])
    assert split_characters(shared, [3, 1, 1, 3, 1, 0]).tolist() == [[0, 3], [3, 4], [4, 5], [5, 8], [8, 9], [9, 9]]
    assert split_characters([(0, 3), (0, 3)], [2, 1]).tolist() == [[0, 2], [2, 3]]  # " æ" + one byte: 1 + 2 bytes
    # a token straddling two characters (bytes 3 of 你 and 1 of 好) joins them in one run
    assert split_characters([(0, 3), (0, 6), (3, 6)], [2, 2, 2]).tolist() == [[0, 2], [2, 4], [4, 6]]
    # tokens that do not spell their run (T5's "▁" and an <unk> for "Ü"): only the run's end is a boundary
    assert split_characters([(0, 2), (0, 2), (2, 3)], [1, 0, 1]).tolist() == [[0, 0], [0, 2], [2, 3]]
    plain = np.array([(0, 3), (3, 5), (5, 5)])
    assert not splits_characters(plain) and split_characters(plain, [9, 9, 9]).tolist() == plain.tolist()


def test_generated_spans_where_a_decoded_prefix_ends_inside_a_character(demo_models):
    """--answers teacher: the ids were generated, the spans come from decoding prefixes; one that stops inside "é"
    decodes to U+FFFD, and its token still gets its own byte, as if the answer had been tokenized."""
    tok = AutoTokenizer.from_pretrained(demo_models["student"])
    text = TextEncoder(tok, TextSpec("causal", 512, 64))
    for answer in SPLIT_ANSWERS:
        ids = text.answer_ids(answer)  # what a causal teacher generates after the prompt: " " + answer, EOS
        decoded = text.decode_answer(ids[:-1])
        assert decoded == answer
        assert any(tok.decode(ids[:j]).endswith("\ufffd") for j in range(1, len(ids)))  # a prefix inside a character
        np.testing.assert_array_equal(generated_spans(text, ids, decoded), text.encode(PROMPT, answer).answer_spans)


# ---- one contract for every stage -------------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "chat"), [("gpt2", False), ("pythia", False), ("llama", False), ("llama", True)])
def test_distill_and_eval_see_byte_identical_ids(family, chat, tokenizers_by_family):
    tok = tokenizers_by_family[family]
    layout = "chat" if chat else "causal"
    student = StudentEncoder(TextEncoder(tok, TextSpec(layout, 512, 64, "cut"), context=128))
    (prompt_ids, answer_ids), *_ = student.encode([PROMPT], [ANSWER])
    batch = student.collate([(prompt_ids, answer_ids)], [np.zeros((1, 4), np.float32)], np.array([0]), 0)
    trained = batch.input_ids[0, : len(prompt_ids) + len(answer_ids)].tolist()
    labels = batch.labels[0].tolist()

    lm = EvalModel(_tiny_causal(tok), tok, max_prompt_tokens=512, batch_size=1, chat_template=chat)
    evaluated = lm.prompt_ids([PROMPT], reserve=len(answer_ids))[0] + lm.answer_ids([ANSWER])[0]
    assert trained == evaluated
    assert [t for t in labels if t != IGNORE_INDEX] == lm.answer_ids([ANSWER])[0]


# ---- what distill records and eval reads ---------------------------------------------------------------------


def test_a_trained_layout_is_recorded_and_wins_over_the_flag(tmp_path, caplog):
    save_spec(tmp_path, TextSpec("chat", 256, 64))
    assert saved_layout(str(tmp_path)) == "chat"
    assert chat_template_for(str(tmp_path), asked=False) is True  # trained with its template: evaluated so
    assert "trained with the chat layout" in caplog.text
    save_spec(tmp_path, TextSpec("causal", 256, 64))
    assert chat_template_for(str(tmp_path), asked=True) is False
    assert chat_template_for(str(tmp_path / "hub-id-or-teacher"), asked=True) is True  # no record: the flag
    (tmp_path / TEXT_FILE).write_text("[1, 2]")
    with pytest.raises(TextError, match="not a readable text record"):
        saved_layout(str(tmp_path))


class _FakeCache:
    def __init__(self, meta: dict):
        self.meta, self.path = meta, "cache"


def test_distill_warns_where_the_cached_text_cannot_match_the_students(caplog):
    cfg = DistillConfig(max_prompt_tokens=200, max_answer_tokens=32)
    old = _FakeCache({cs.ATTR_COUNTS: {"truncated": {}}})
    spec = distill._student_text_spec(cfg, old)
    assert spec == TextSpec("causal", 200, 32, "cut") and "predates the text contract" in caplog.text
    caplog.clear()
    text = TextSpec("seq2seq", 100, 64, "skip").to_dict()
    cut = _FakeCache({cs.ATTR_TEXT: text, cs.ATTR_COUNTS: {"truncated": {"prompt": 7}}})
    spec = distill._student_text_spec(replace(cfg, chat_template=True), cut)
    assert spec == TextSpec("chat", 200, 32, "skip")  # the student cuts answers as the teacher did
    assert "saw 7 prompts cut to 100 teacher tokens" in caplog.text
    caplog.clear()
    whole = _FakeCache({cs.ATTR_TEXT: text, cs.ATTR_COUNTS: {"truncated": {}}})
    distill._student_text_spec(cfg, whole)
    assert not caplog.text
