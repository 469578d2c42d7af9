"""The embedded default: a tiny T5 teacher and a tiny GPT-2 student, each with its own locally trained tokenizer.

Built deterministically from the demo tasks (no download): the teacher gets a SentencePiece-style Unigram
tokenizer and the student a byte-level BPE one with a different vocabulary size, the real cross-tokenizer
situation in miniature. The teacher is briefly fine-tuned on the demo train split so that its cached
distributions carry signal; the student starts from random weights. Both load with
``AutoModel…/AutoTokenizer.from_pretrained(dir)`` like real checkpoints.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tqdm import tqdm
from transformers import (
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from pipeline.config import DEMO_MIXTURE
from pipeline.tasks import build_mixture

log = logging.getLogger(__name__)

TEACHER_DIR = "tiny-t5-teacher"
STUDENT_DIR = "tiny-gpt2-student"
BUILD_VERSION = 1  # bump when the recipe changes: existing models/ are then rebuilt
STAMP = "kdpipe-demo-model.json"
TEACHER_STEPS = 300  # about a minute on 2 cores, well inside the 3-minute budget


def _corpus(seed: int) -> list[str]:
    mixture = build_mixture(DEMO_MIXTURE, split="train", data_dir=None, seed=seed)
    return [t for e in mixture.examples for t in (e.prompt, e.answer)]


def _teacher_tokenizer(corpus: list[str]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials = ["<pad>", "</s>", "<unk>"]
    tok.train_from_iterator(
        corpus,
        trainers.UnigramTrainer(vocab_size=700, special_tokens=specials, unk_token="<unk>", show_progress=False),
    )
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def _student_tokenizer(corpus: list[str]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=520,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    eos = "<|endoftext|>"
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=eos, eos_token=eos, unk_token=eos, model_max_length=512
    )


def _finetune_teacher(model: T5ForConditionalGeneration, tok: PreTrainedTokenizerFast, seed: int, steps: int) -> dict:
    """Teacher-forced CE on the demo train split for a fixed number of steps (so the build is deterministic)."""
    mixture = build_mixture({k: 4 * v for k, v in DEMO_MIXTURE.items()}, split="train", data_dir=None, seed=seed + 1)
    pairs = [(e.prompt, e.answer) for e in mixture.examples]
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    start, losses = time.monotonic(), []
    bar = tqdm(range(steps), desc="fine-tune demo teacher", unit="step", mininterval=1.0)
    for _ in bar:
        batch = rng.sample(pairs, 32)
        enc = tok([p for p, _ in batch], return_tensors="pt", padding=True)
        labels = tok([a for _, a in batch], return_tensors="pt", padding=True).input_ids
        labels[labels == tok.pad_token_id] = -100
        loss = model(**enc, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    model.eval()
    return {
        "steps": steps,
        "seconds": round(time.monotonic() - start, 1),
        "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
    }


def build(out: Path, *, seed: int = 0, force: bool = False, steps: int = TEACHER_STEPS) -> dict:
    """Build both demo models under ``out``; returns what was built. Skips when an up-to-date build is there."""
    teacher_dir, student_dir = out / TEACHER_DIR, out / STUDENT_DIR
    stamp = {"build_version": BUILD_VERSION, "seed": seed, "teacher_steps": steps}
    if not force and all(_stamp_matches(d, stamp) for d in (teacher_dir, student_dir)):
        log.info("demo models in %s are up to date", out)
        return {"teacher": str(teacher_dir), "student": str(student_dir), "built": False}
    torch.manual_seed(seed)
    corpus = _corpus(seed)
    t_tok, s_tok = _teacher_tokenizer(corpus), _student_tokenizer(corpus)

    t_cfg = T5Config(
        vocab_size=len(t_tok),
        d_model=96,
        d_ff=192,
        d_kv=24,
        num_heads=4,
        num_layers=2,
        num_decoder_layers=2,
        dropout_rate=0.0,
        pad_token_id=t_tok.pad_token_id,
        eos_token_id=t_tok.eos_token_id,
        decoder_start_token_id=t_tok.pad_token_id,
        tie_word_embeddings=False,
    )
    teacher = T5ForConditionalGeneration(t_cfg)
    training = _finetune_teacher(teacher, t_tok, seed, steps)
    teacher.generation_config = GenerationConfig(
        decoder_start_token_id=t_tok.pad_token_id, eos_token_id=t_tok.eos_token_id, pad_token_id=t_tok.pad_token_id
    )
    _save(teacher, t_tok, teacher_dir, {**stamp, "training": training})

    torch.manual_seed(seed + 1)
    s_cfg = GPT2Config(
        vocab_size=len(s_tok),
        n_embd=96,
        n_layer=2,
        n_head=4,
        n_positions=512,
        bos_token_id=s_tok.eos_token_id,
        eos_token_id=s_tok.eos_token_id,
    )
    student = GPT2LMHeadModel(s_cfg)
    student.generation_config = GenerationConfig(
        bos_token_id=s_tok.eos_token_id, eos_token_id=s_tok.eos_token_id, pad_token_id=s_tok.eos_token_id
    )
    _save(student, s_tok, student_dir, stamp)
    return {"teacher": str(teacher_dir), "student": str(student_dir), "built": True, "teacher_training": training}


def _save(model, tokenizer, path: Path, stamp: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / STAMP).write_text(json.dumps(stamp, indent=2))  # written last: a half-built model is rebuilt


def _stamp_matches(path: Path, stamp: dict) -> bool:
    try:
        saved = json.loads((path / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return all(saved.get(k) == v for k, v in stamp.items())
