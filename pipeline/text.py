"""The text contract: (prompt, answer) text -> token ids, for every model role, in one place.

Every stage (teacher-cache, distill, eval, generate) turns text into ids through ``TextEncoder`` and nothing
else tokenizes prompts or answers, so a model sees byte-identical ids for the same text in training and eval.

Layouts (``TextSpec.layout``):

- ``seq2seq`` (T5, FLAN-T5): encoder input = prompt + ``</s>``; labels = answer + ``</s>`` (row j predicts
  label j).
- ``causal`` (GPT-2, Pythia, Llama, SmolLM; the llm-recipes README layout,
  https://github.com/Nicolas-BZRD/llm-recipes): BOS where the tokenizer defines one + prompt, then
  ``" " + answer`` + EOS. Labels are -100 over the prompt. The space joins the two texts as in running prose,
  so an answer is tokenized as the model saw words in pretraining ("ĠCarolina", not "Car|ol|ina").
- ``chat`` (instruct models, ``--chat-template``): the tokenizer's chat template renders the prompt as the
  user turn and opens the assistant turn; the answer is the assistant content, followed by the template's own
  end-of-turn token, which plays the part of EOS. Uncut, the prompt ids equal
  ``tokenizer.apply_chat_template([user], add_generation_prompt=True)``. A chat history from a user's file
  reaches this module as one prompt text (``pipeline.tasks.files``: its earlier turns as ``role: content``
  lines), because a cache stores one prompt text per example for every model to read; that text is the user turn.

Every text is tokenized without the tokenizer's own special tokens; the layout adds BOS / EOS itself, so a
tokenizer that adds BOS by default (Llama) and one that does not (GPT-2) follow the same rule.

Truncation, one policy everywhere: a prompt over ``max_prompt_tokens`` (counting BOS, ``</s>`` and chat
markup) loses the MIDDLE of its own text and keeps both ends: instructions open some templates ("Summarize this
article…") while the question and options close others (LongBench does the same,
https://arxiv.org/abs/2308.14508, section 3.3). A causal model's context window lowers the limit to leave room
for the answer. An answer over ``max_answer_tokens`` (EOS included) is skipped (``answer_overflow="skip"``, the
official recipe's choice) or cut with its EOS kept (``"cut"``). Both cuts are counted in ``Encoded``.

Answer spans: for each answer id, the UTF-8 byte range [start, end) it covers in the answer string itself. The
spans tile the answer in order: whitespace belongs to the token that follows it (" café" covers " café"), the
joining space of the causal layout is not part of the answer (a first token " yes" covers "yes"), each byte
token of a character split over several tokens (é, an emoji or a CJK character in a byte-level BPE or a
byte-fallback vocabulary) covers its own bytes of it (``split_characters``; cache schema v1.3, where older
caches gave each of them the whole character), and EOS gets the empty range at the end. Token-aware
cross-tokenizer losses pair the teacher's and the student's rows through these ranges.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LAYOUTS = ("seq2seq", "causal", "chat")
ANSWER_OVERFLOW = ("skip", "cut")
PROMPT_POLICY = "cut-middle"  # the one prompt truncation policy, recorded with the spec

log = logging.getLogger(__name__)


class TextError(ValueError):
    """A tokenizer or text that cannot follow the contract; the message says why in one line."""


@dataclass(frozen=True)
class TextSpec:
    """How one model sees text: its layout and its limits. Caches record the teacher's; distill and eval check."""

    layout: str  # "seq2seq" | "causal" | "chat"
    max_prompt_tokens: int
    max_answer_tokens: int
    answer_overflow: str = "skip"  # "skip" (official) | "cut" (EOS kept)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise TextError(f"layout {self.layout!r}: expected one of {', '.join(LAYOUTS)}")
        if self.answer_overflow not in ANSWER_OVERFLOW:
            raise TextError(f"answer overflow {self.answer_overflow!r}: expected one of {', '.join(ANSWER_OVERFLOW)}")
        if self.max_prompt_tokens < 2 or self.max_answer_tokens < 1:
            raise TextError(
                f"limits: max_prompt_tokens >= 2 and max_answer_tokens >= 1, got "
                f"{self.max_prompt_tokens} and {self.max_answer_tokens}"
            )

    def to_dict(self) -> dict:
        """The spec as a cache attr or results entry records it."""
        return {
            "layout": self.layout,
            "max_prompt_tokens": self.max_prompt_tokens,
            "max_answer_tokens": self.max_answer_tokens,
            "answer_overflow": self.answer_overflow,
            "prompt_policy": PROMPT_POLICY,
        }


def layout_for(model_config, chat_template: bool) -> str:
    """The layout a model's recipe expects: seq2seq for encoder-decoders, else chat when asked, else causal."""
    if model_config.is_encoder_decoder:
        if chat_template:
            raise TextError("--chat-template: an encoder-decoder model has no chat template; leave it off")
        return "seq2seq"
    return "chat" if chat_template else "causal"


@dataclass(frozen=True)
class Encoded:
    prompt_ids: list[int]  # seq2seq: encoder input; causal / chat: everything before the first answer id
    answer_ids: list[int]  # labels; the last is EOS (the template's end token for chat)
    answer_spans: np.ndarray  # int32 [len(answer_ids), 2]: UTF-8 byte [start, end) of each id in the answer
    prompt_cut: int  # prompt tokens cut from the middle (0: the whole prompt)
    answer_cut: int  # answer tokens cut (0: the whole answer; only with answer_overflow="cut")


def cut_middle(ids: list[int], limit: int) -> list[int]:
    """``ids`` if they fit, else their first ``limit // 2`` and last ``limit - limit // 2`` ids."""
    if len(ids) <= limit:
        return ids
    head = limit // 2
    return ids[:head] + ids[len(ids) - (limit - head) :]


class TextEncoder:
    """One model's (prompt, answer) -> ids under a ``TextSpec`` (see the module doc for the layouts).

    ``context`` is the model's position limit (None for relative positions, as in T5): the prompt is cut
    further so that prompt + answer fit it.
    """

    def __init__(self, tokenizer, spec: TextSpec, context: int | None = None):
        self.tokenizer, self.spec, self.context = tokenizer, spec, context
        self.eos = tokenizer.eos_token_id
        if self.eos is None:
            raise TextError(f"tokenizer {tokenizer.name_or_path!r} has no EOS token, which every answer ends with")
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        self.bos = tokenizer.bos_token_id if spec.layout == "causal" else None
        self._byte_level: bool | None = None  # is_byte_level(tokenizer), asked the first time a character is split
        if spec.layout == "chat":
            self._chat_before, self._chat_after, self.eos = self._chat_parts()

    # ---- public --------------------------------------------------------------------------------------------

    def encode(self, prompt: str, answer: str) -> Encoded | None:
        """The ids of one example, or None when it is skipped (empty answer, or over the limit with "skip")."""
        answer = answer.strip()
        if not answer:
            return None
        body, spans = self._answer_body(answer)
        answer_cut, limit = 0, self.answer_limit()
        if len(body) + 1 > limit:
            if self.spec.answer_overflow == "skip":
                return None
            keep = limit - 1
            answer_cut, body, spans = len(body) - keep, body[:keep], spans[:keep]
        end = len(answer.encode("utf-8"))
        answer_ids = [*body, self.eos]
        answer_spans = np.array([*spans, (end, end)], dtype=np.int32).reshape(-1, 2)  # [La, 2]
        prompt_ids, prompt_cut = self.encode_prompt(prompt, reserve=len(answer_ids))
        return Encoded(prompt_ids, answer_ids, answer_spans, prompt_cut, answer_cut)

    def encode_prompt(self, prompt: str, reserve: int = 0) -> tuple[list[int], int]:
        """(prompt ids, tokens cut from the middle); ``reserve`` positions stay free in a causal context window."""
        before, after = self._prompt_frame()
        text = self._ids(prompt.strip())
        limit = self.spec.max_prompt_tokens
        if self.context is not None:
            limit = min(limit, self.context - reserve)
        room = limit - len(before) - len(after)
        if room < 1:
            raise TextError(
                f"no room for a prompt: limit {limit} (max_prompt_tokens {self.spec.max_prompt_tokens}, context "
                f"{self.context}, {reserve} positions reserved), {len(before) + len(after)} taken by the layout"
            )
        kept = cut_middle(text, room)
        # a causal layout without BOS needs one id before the answer: a lone EOS stands for an empty prompt
        return [*before, *kept, *after] or [self.eos], len(text) - len(kept)

    def answer_limit(self) -> int:
        """Answer ids allowed, EOS included: the spec's limit, lowered so that a causal context keeps a prompt."""
        if self.context is None:
            return self.spec.max_answer_tokens
        before, after = self._prompt_frame()
        return max(1, min(self.spec.max_answer_tokens, self.context - len(before) - len(after) - 1))

    def answer_ids(self, answer: str) -> list[int]:
        """An option or reference answer's ids as the model is trained to produce them (EOS last), never cut."""
        body, _ = self._answer_body(answer.strip())
        return [*body, self.eos]

    def decode_answer(self, ids: list[int]) -> str:
        """Generated answer ids (stopping before EOS) back to answer text, as stored in a cache or scored."""
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def byte_lengths(self, ids: list[int]) -> np.ndarray:
        """int64 [len(ids)]: each id's byte length in text (``token_bytes``; 0 for special tokens)."""
        if self._byte_level is None:
            self._byte_level = is_byte_level(self.tokenizer)
        return np.array([len(b) for b in _ids_bytes(self.tokenizer, ids, self._byte_level)], dtype=np.int64)

    # ---- layouts -------------------------------------------------------------------------------------------

    def _ids(self, text: str) -> list[int]:
        # verbose=False: kdpipe cuts every text itself, so "longer than model_max_length" warnings are noise
        return self.tokenizer(text, add_special_tokens=False, verbose=False).input_ids if text else []

    def _prompt_frame(self) -> tuple[list[int], list[int]]:
        """Ids the layout puts before and after the prompt text."""
        if self.spec.layout == "seq2seq":
            return [], [self.eos]
        if self.spec.layout == "chat":
            return self._chat_before, self._chat_after
        return ([self.bos] if self.bos is not None else []), []

    def _answer_body(self, answer: str) -> tuple[list[int], list[tuple[int, int]]]:
        """The answer's ids without EOS, and each id's byte span in ``answer``."""
        lead = " " if self.spec.layout == "causal" else ""
        text = lead + answer
        try:
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
            ids, offsets = enc.input_ids, enc.offset_mapping
        except (NotImplementedError, ValueError, TypeError):  # a tokenizer without offsets (rare, slow ones)
            ids = self._ids(text)
            offsets = _offsets_by_decoding(self.tokenizer, ids, text)
        byte_at = _byte_positions(text)
        shift = byte_at[len(lead)]
        spans, covered = [], 0
        for s, e in offsets:
            start, end = max(byte_at[s] - shift, 0), max(byte_at[e] - shift, 0)
            if end <= start:  # a token that covers no text (a special token inside the answer)
                start = end = covered
            # whitespace a tokenizer trims from its offsets (GPT-2's trim_offsets) joins the next token
            start = min(start, covered)
            spans.append((start, end))
            covered = max(covered, end)
        spans = np.array(spans, dtype=np.int64).reshape(-1, 2)  # [L, 2] character-exact
        if splits_characters(spans):
            spans = split_characters(spans, self.byte_lengths(list(ids)))
        return list(ids), [tuple(s) for s in spans.tolist()]

    def _chat_parts(self) -> tuple[list[int], list[int], int]:
        """(ids before the user text, ids after it up to the answer, the end-of-turn id) of the chat template."""
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            raise TextError(f"--chat-template: tokenizer {tok.name_or_path!r} has no chat template")
        mark_user, mark_answer = "\x00kdpipe-user\x00", "\x00kdpipe-answer\x00"
        user = [{"role": "user", "content": mark_user}]
        try:
            opened = tok.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
            full = tok.apply_chat_template(
                [*user, {"role": "assistant", "content": mark_answer}], tokenize=False, add_generation_prompt=False
            )
        except Exception as e:  # a template is code from the model's repo; any failure is the template's
            raise TextError(f"--chat-template: the chat template of {tok.name_or_path!r} fails ({e})") from None
        if opened.count(mark_user) != 1 or mark_answer not in full or not full.startswith(opened):
            raise TextError(
                f"--chat-template: the chat template of {tok.name_or_path!r} does not render the user turn and "
                "then the assistant turn after it"
            )
        before, after = opened.split(mark_user)
        closing = self._ids(full.split(mark_answer, 1)[1])
        if not closing:
            raise TextError(f"--chat-template: the template of {tok.name_or_path!r} closes no assistant turn")
        return self._ids(before), self._ids(after), closing[0]


# ---- token bytes ---------------------------------------------------------------------------------------------

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the printable character that stands for each byte -> the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTE_LEVEL = _byte_alphabet()


def is_byte_level(tokenizer) -> bool:
    """Whether the tokenizer's pieces are spelled in GPT-2's byte alphabet (byte-level BPE: GPT-2, Llama 3, SmolLM)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    decoder = json.dumps(json.loads(backend.to_str()).get("decoder")) if backend is not None else ""
    return '"ByteLevel"' in decoder


def _ids_bytes(tokenizer, ids, byte_level: bool) -> list[bytes]:
    """The UTF-8 bytes each id stands for in text (see ``token_bytes``)."""
    ids = list(ids)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    special = set(tokenizer.all_special_ids)
    added = tokenizer.added_tokens_decoder
    out = []
    for i, piece in zip(ids, pieces, strict=True):
        if i in special or piece is None or (i in added and added[i].special):
            out.append(b"")
        elif i in added:
            out.append(added[i].content.encode())
        elif byte_level:
            out.append(
                bytes(_BYTE_LEVEL[c] for c in piece) if all(c in _BYTE_LEVEL for c in piece) else piece.encode()
            )
        else:
            fallback = _BYTE_FALLBACK.fullmatch(piece)
            out.append(bytes([int(fallback[1], 16)]) if fallback else piece.replace("▁", " ").encode())
    return out


def token_bytes(tokenizer, size: int | None = None) -> list[bytes]:
    """Each token's UTF-8 bytes as it appears in text, by id; special tokens (and ids beyond the tokenizer, up to
    ``size``, e.g. a model's padded embedding rows) are empty, so they never match anything.

    Byte-level BPE (GPT-2, Llama 3, SmolLM2) pieces are mapped back through the byte alphabet; SentencePiece
    pieces (T5, Llama 2) have ``▁`` read as a space and ``<0xNN>`` byte-fallback pieces read as that byte.
    """
    n = len(tokenizer)
    return _ids_bytes(tokenizer, range(n), is_byte_level(tokenizer)) + [b""] * max(0, (size or 0) - n)


def splits_characters(spans: np.ndarray) -> bool:
    """Whether some token of ``spans`` int [n, 2] starts before the tokens ahead of it end (see
    ``split_characters``): character offsets give every token of a split character the whole character."""
    spans = np.asarray(spans).reshape(-1, 2)
    return len(spans) > 1 and bool((spans[1:, 0] < np.maximum.accumulate(spans[:-1, 1])).any())


def split_characters(spans: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Byte-exact spans for the tokens of characters split over several tokens.

    ``spans`` int [n, 2]: byte [start, end) of each token in order, from character offsets, so every token of a
    split character (the 2 byte tokens of "é", the 4 of an emoji, in a byte-level BPE or byte fallback) has the
    whole character's range and starts before the tokens ahead of it end. ``lengths`` int [n]: each token's byte
    length (``token_bytes``). Each run of such overlapping tokens is cut into spans that tile the run's range. Where
    its tokens hold at least the run's bytes, from the run's end backwards by their lengths, the first token keeping
    what is left: the excess is a space it carries that is not answer text (the causal layout's joining space, a
    SentencePiece "▁"). Where they hold fewer, they do not spell the run (an unknown token, a character a
    normalizer rewrote, a run cut inside its character), so no byte inside it can be placed: the last token takes
    the run and the others an empty span at its start, and only the run's end is a boundary. Other spans are
    returned as they are.

    Returns int32 [n, 2].
    """
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    lengths = np.asarray(lengths, dtype=np.int64)
    out = spans.copy()
    i = 0
    while i < len(spans):
        j, end = i + 1, int(spans[i, 1])
        while j < len(spans) and spans[j, 0] < end:  # token j starts inside the run: it shares a character
            end = max(end, int(spans[j, 1]))
            j += 1
        start = int(spans[i, 0])
        if j - i > 1 and int(lengths[i:j].sum()) >= end - start:
            at = end
            for r in range(j - 1, i, -1):
                out[r] = (max(at - int(lengths[r]), start), at)
                at = int(out[r, 0])
            out[i] = (start, at)
        elif j - i > 1:
            out[i : j - 1] = (start, start)
            out[j - 1] = (start, end)
        i = j
    return out.astype(np.int32)


def _byte_positions(text: str) -> list[int]:
    """UTF-8 byte offset of every character boundary of ``text`` (len(text) + 1 entries)."""
    out, at = [0], 0
    for ch in text:
        at += len(ch.encode("utf-8"))
        out.append(at)
    return out


def _offsets_by_decoding(tokenizer, ids: list[int], text: str) -> list[tuple[int, int]]:
    """Character offsets from decoding growing prefixes, for tokenizers that report none."""
    offsets, prev = [], 0
    for i in range(len(ids)):
        end = min(len(tokenizer.decode(ids[: i + 1])), len(text))
        offsets.append((prev, end))
        prev = end
    return offsets


# ---- what a trained model records ----------------------------------------------------------------------------

TEXT_FILE = "kdpipe_text.json"  # beside a distilled student's weights: the TextSpec it was trained with


def save_spec(folder: str | Path, spec: TextSpec, tokenizer=None) -> None:
    """Record beside a model how it was trained to see text, so eval and generate show it the same.

    With the model's ``tokenizer``, the record also names the tokens the layout adds and whether the saved tokenizer
    adds BOS by itself (:func:`add_bos_by_default`), so other tools can reproduce the layout.
    """
    record = spec.to_dict()
    if tokenizer is not None:
        record["tokens"] = layout_tokens(tokenizer, spec.layout)
    Path(folder, TEXT_FILE).write_text(json.dumps(record, indent=2) + "\n")


def layout_tokens(tokenizer, layout: str) -> dict:
    """What the layout puts around the texts, in words and token ids (a ``kdpipe_text.json`` entry, the model card)."""
    bos = tokenizer.bos_token_id if layout == "causal" else None
    shape = {
        "causal": ("BOS + prompt" if bos is not None else "prompt", '" " + answer + EOS'),
        "chat": ("the chat template's user turn and assistant opening", "answer + the template's end-of-turn token"),
        "seq2seq": ("prompt + </s> (encoder)", "answer + </s> (decoder)"),
    }[layout]
    return {
        "prompt": shape[0],
        "answer": shape[1],
        "bos_token": tokenizer.bos_token if bos is not None else None,
        "bos_token_id": bos,
        "eos_token": tokenizer.eos_token,
        "eos_token_id": tokenizer.eos_token_id,
        "tokenizer_adds_bos": bos is not None and tokenizer_adds_bos(tokenizer),
    }


def tokenizer_adds_bos(tokenizer) -> bool:
    """Whether ``tokenizer(text)``, left to its own default (special tokens on), starts with its BOS."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a").input_ids[:1] == [bos]


def add_bos_by_default(tokenizer) -> bool:
    """Make ``tokenizer(text)`` start with BOS by default, as the causal layout starts every prompt; True if it does.

    A student saved with such a tokenizer reproduces its layout with no flags wherever text is tokenized with the
    tokenizer's defaults: ``AutoTokenizer`` users, ``pipeline("text-generation", add_special_tokens=True)``, and
    lm-evaluation-harness's HF model, which encodes with the defaults unless given ``add_bos_token``. kdpipe itself
    tokenizes with ``add_special_tokens=False`` and adds BOS itself, so its ids do not change. Transformers 5 fast
    tokenizers (``add_bos_token``) rewrite their post-processor and record the flag in tokenizer_config.json, which
    loading honours; a tokenizer without one is left as it is (False).
    """
    if tokenizer.bos_token_id is None:
        return False
    if tokenizer_adds_bos(tokenizer):
        return True
    try:
        tokenizer.add_bos_token = True
    except (AttributeError, ValueError, TypeError):  # a tokenizer with no post-processor to rewrite
        return False
    tokenizer.init_kwargs["add_bos_token"] = True  # what save_pretrained writes; a reload rebuilds the same
    return tokenizer_adds_bos(tokenizer)


def saved_layout(model: str) -> str | None:
    """The layout recorded beside a local model (None: no record, e.g. a hub model or a teacher)."""
    path = Path(model, TEXT_FILE)
    if not path.is_file():
        return None
    try:
        layout = json.loads(path.read_text()).get("layout")
    except (OSError, ValueError, AttributeError):
        raise TextError(f"{path}: not a readable text record (JSON with a layout)") from None
    if layout not in LAYOUTS:
        raise TextError(f"{path}: layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    return layout


def chat_template_for(model: str, asked: bool) -> bool:
    """Whether ``model`` sees its chat template: a recorded layout wins over ``asked`` (with a warning)."""
    layout = saved_layout(model)
    if layout is None:
        return asked
    if asked != (layout == "chat"):
        log.warning(
            "%s was trained with the %s layout (%s): evaluating it so, whatever --chat-template says",
            model,
            layout,
            TEXT_FILE,
        )
    return layout == "chat"
