"""The embedded default: a tiny T5 teacher and a tiny GPT-2 student, each with its own locally trained tokenizer.

Built deterministically from the demo tasks (no download): the teacher gets a SentencePiece-style Unigram
tokenizer and the student a byte-level BPE one with a different vocabulary size, the real cross-tokenizer
situation in miniature; a third model, ``tiny-gpt2-shared``, is the student's architecture on the teacher's own
tokenizer (the shared-vocabulary case the KL-family losses are for). The students are pretrained as language
models on plain text about the demo world (``pretraining_text``: the facts the task generators draw from, no
task format, no eval example), as GPT-2 was before the seed distilled it, so FT and KD both start from a model
that knows the world's words. Both load with
``AutoModel…/AutoTokenizer.from_pretrained(dir)`` like real checkpoints.

The teacher is what a teacher is in a real run: stronger than the students, because it learned from far more
data than the distillation mixture. It is trained on examples drawn from the same task generators with other
seeds, none of them in the mixture the demo cache holds (``cache_mixture``), with the text contract of
:mod:`pipeline.text`, so it sees exactly the ids teacher-cache and eval give it.

Its architecture is FLAN-T5's, T5 v1.1: gated-GELU feed-forward, no dropout, and an output projection of its
own (not tied to the input embeddings) applied without the d_model^-0.5 rescale of T5 v1.0. Transformers 5
always builds a T5 with tied embeddings (``T5Config`` forces ``tie_word_embeddings=True`` and only reads a False
as "do not rescale"); a checkpoint unties when it holds an ``lm_head.weight`` that differs from the embeddings,
as FLAN-T5's do. So the builder gives the head its own weights before training, and every load logs
transformers' warning that it will not tie them, exactly as FLAN-T5 does.

Reproducible: the build runs with a fixed torch thread count (``DEMO_THREADS``; float sums depend on how work is
split over threads) and deterministic algorithms, from fixed seeds, so it writes the same weights on any machine
with the same CPU kernels. A finished build is also kept for the machine's other clones (``kept_builds``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from pathlib import Path

import tokenizers
import torch
import transformers
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
from pipeline.losses import IGNORE_INDEX
from pipeline.tasks import build_mixture, get_task, render
from pipeline.tasks.demo import world_text
from pipeline.text import TextEncoder, TextSpec

log = logging.getLogger(__name__)

TEACHER_DIR = "tiny-t5-teacher"
STUDENT_DIR = "tiny-gpt2-student"
SHARED_DIR = "tiny-gpt2-shared"  # a third model: the student's architecture with the teacher's own tokenizer
MODEL_DIRS = (TEACHER_DIR, STUDENT_DIR, SHARED_DIR)
BUILD_VERSION = 7  # bump when the recipe changes: existing models/ are then rebuilt
STAMP = "kdpipe-demo-model.json"
TRANSFER_FILE = "demo-transfer.jsonl"  # beside the models: the demo's prompts-only transfer set
TRANSFER_PER_TASK = 640  # 4x the demo cache's 160 labelled examples per task
TRANSFER_SEED = 7  # the train-split generators' seed for it: neither the cache's (CACHE_SEED) nor the teacher's
EVAL_SPLITS = ("validation", "test")  # the transfer set holds none of their inputs
EVAL_HELD = 200  # records of each eval split whose inputs it avoids: the demo's evaluations read at most that many
KEEP_ENV = "KDPIPE_DEMO_MODELS"  # where builds are kept for other clones (see kept_builds)
DEMO_THREADS = 2  # torch threads of the build: float sums depend on the count, so it is fixed; 2 (the smallest
# machine we target) builds the teacher 1.5x faster than 1
CACHE_SEED = 0  # the seed of the demo cache's mixture (configs/demo.yaml): the teacher never trains on it
TEACHER_STEPS = 800
TEACHER_BATCH = 32
TEACHER_LR = 2e-3
TEACHER_EXAMPLES = 4000  # per task and unit of TEACHER_SHARE, from generator seeds other than the cache's
# The teacher's examples of each task, in units of TEACHER_EXAMPLES (the students see 160 of each). The tasks it
# learns last get more: comparing two places (yes/no) and binding a food to a name (4-way) take a tiny T5 far
# longer than copying a meeting into a sentence. At equal shares it had 52 % on yes/no after 600 steps (peak LR
# 3e-3) and 70 % after 1,000; with these shares, 83 % after 800 (a 2-core CPU, 2.8 min).
TEACHER_SHARE = {
    "demo_yesno": 3.0,
    "demo_nli": 1.0,
    "demo_mc4": 2.0,
    "demo_qa": 1.0,
    "demo_summary": 0.5,
    "demo_concepts": 0.5,
}
PRETRAIN_STEPS = 300  # the student's pretraining as a language model on world text (pretraining_text)
PRETRAIN_BATCH = 32
PRETRAIN_LR = 6e-3
PRETRAIN_DOCS = 8000
PRETRAIN_TOKENS = 128
TEACHER_SPEC = TextSpec("seq2seq", max_prompt_tokens=256, max_answer_tokens=48)


@contextlib.contextmanager
def deterministic(threads: int = DEMO_THREADS):
    """Fixed thread count and deterministic algorithms inside; the previous settings are restored after."""
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])


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
    tok = _stable_unigram_ids(tok, len(specials))
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def _stable_unigram_ids(tok: Tokenizer, n_special: int) -> Tokenizer:
    """The trained Unigram made the same in every process. The trainer's scores differ in their last bits from
    run to run (parallel float sums), and it appends the rare single characters with scores 1e-4 apart in
    hash-map order, so ids would differ too. Pieces whose scores follow each other within 1e-3 form a group;
    each group is put in piece order and given its own scores, rounded to 1e-6, in descending order."""
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]  # [[piece, score], ...]
    unk = vocab[spec["model"]["unk_id"]][0]
    ranked = sorted(vocab[n_special:], key=lambda entry: -entry[1])
    groups: list[list] = []
    for entry in ranked:
        if groups and groups[-1][-1][1] - entry[1] < 1e-3:
            groups[-1].append(entry)
        else:
            groups.append([entry])
    stable = []
    for group in groups:
        scores = [round(score, 6) for _, score in group]
        stable += [[piece, score] for (piece, _), score in zip(sorted(group), scores, strict=True)]
    vocab[n_special:] = stable
    spec["model"]["unk_id"] = [piece for piece, _ in vocab].index(unk)
    return Tokenizer.from_str(json.dumps(spec))


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


def cache_mixture():
    """The mixture the demo cache holds (configs/demo.yaml: DEMO_MIXTURE, train split, seed ``CACHE_SEED``)."""
    return build_mixture(DEMO_MIXTURE, split="train", data_dir=None, seed=CACHE_SEED)


def teacher_examples(seed: int, per_task: int = TEACHER_EXAMPLES) -> list[tuple[str, str]]:
    """The teacher's own training set: ``per_task`` × ``TEACHER_SHARE`` examples of each demo task, none of them
    in the cache.

    Drawn from the train-split generators with seed ``seed + 1`` (the cache uses ``CACHE_SEED``), so they are
    other examples of the same tasks; the few that happen to equal a cache example are left out.
    """
    held = {e.key for e in cache_mixture().examples}
    counts = {task: round(per_task * TEACHER_SHARE[task]) for task in DEMO_MIXTURE}
    mixture = build_mixture(counts, split="train", data_dir=None, seed=seed + 1)
    return [(e.prompt, e.answer) for e in mixture.examples if e.key not in held]


def eval_records(task) -> list:
    """The records of ``task`` the demo's evaluations can read: the first ``EVAL_HELD`` of each eval split."""
    return [r for split in EVAL_SPLITS for r in task.load(split, None, EVAL_HELD, CACHE_SEED).records]


def _inputs(task, record) -> tuple:
    """What a model is shown of ``record`` whatever the template: its fields (the options are drawn anew)."""
    return (task.name, tuple(sorted(record.fields.items())))


def transfer_prompts(per_task: int = TRANSFER_PER_TASK) -> list[dict]:
    """The demo's transfer set: ``per_task`` prompts of each demo task, with no answers, whose inputs are in
    neither the demo cache (``cache_mixture``) nor the first ``EVAL_HELD`` records of an eval split. A task whose
    small world runs out of unseen inputs (demo_concepts has 720) gets fewer.

    Drawn from the train-split generators with ``TRANSFER_SEED`` and rendered with the tasks' templates in turn,
    as teacher-cache renders them; a row is ``{"id", "prompt"}``, the shape of a user's prompts-only file, so the
    demo's transfer regime runs on ``--tasks models/demo-transfer.jsonl=N --answers teacher`` like theirs.
    """
    held = set()
    for name, cached in DEMO_MIXTURE.items():
        task = get_task(name)
        held.update(_inputs(task, r) for r in task.load("train", None, cached, CACHE_SEED).records)
        held.update(_inputs(task, r) for r in eval_records(task))
    rows = []
    for name in DEMO_MIXTURE:
        task, seen = get_task(name), set(held)
        drawn = iter(task.load("train", None, 50 * per_task, TRANSFER_SEED).records)
        for i in range(per_task):
            record = next((r for r in drawn if _inputs(task, r) not in seen), None)
            if record is None:  # the task's world has no more unseen inputs
                break
            seen.add(_inputs(task, record))
            prompt, _ = render(task, record, i % len(task.templates))
            rows.append({"id": f"{name}/{record.source_id}", "prompt": prompt})
    return rows


def write_transfer(path: Path, per_task: int = TRANSFER_PER_TASK) -> Path:
    """Write ``transfer_prompts`` to ``path`` (jsonl) in one rename; an up-to-date file is left as it is."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in transfer_prompts(per_task))
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return path
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    partial.write_text(text, encoding="utf-8")
    partial.rename(path)
    return path


def pretraining_text(seed: int, n: int = PRETRAIN_DOCS) -> list[str]:
    """The student's pretraining corpus: ``world_text`` documents, none of whose facts is an input or an answer
    of the first ``EVAL_HELD`` records of an eval split (the facts are the world's, the examples are not)."""
    return world_text(seed, n, pretraining_avoid())


def pretraining_avoid() -> frozenset[str]:
    """Every input and answer of the first ``EVAL_HELD`` records of each eval split: no pretraining fact is one."""
    records = [r for name in DEMO_MIXTURE for r in eval_records(get_task(name))]
    return frozenset(t for r in records for t in (*r.fields.values(), *r.targets))


def _pretrain_student(
    model: GPT2LMHeadModel, tok: PreTrainedTokenizerFast, seed: int, steps: int, docs: list[str] | None = None
) -> dict:
    """Next-token CE on ``docs`` (``pretraining_text`` unless given), BOS first as the student's text contract has
    it, for a fixed number of steps: the demo's miniature of the pretrained GPT-2 the seed distils into."""
    bos = [] if tok.bos_token_id is None else [tok.bos_token_id]  # the teacher's tokenizer has none, like T5's
    docs = pretraining_text(seed) if docs is None else docs
    ids = [[*bos, *tok(doc)["input_ids"]][:PRETRAIN_TOKENS] for doc in docs]

    def inputs(batch: list[list[int]]) -> dict:
        width = max(len(x) for x in batch)
        labels = torch.tensor([x + [IGNORE_INDEX] * (width - len(x)) for x in batch])  # [B, T]
        return {
            "input_ids": torch.tensor([x + [tok.eos_token_id] * (width - len(x)) for x in batch]),  # [B, T]
            "attention_mask": (labels != IGNORE_INDEX).long(),  # [B, T]
            "labels": labels,
        }

    trained = _train(model, ids, inputs, seed, steps, PRETRAIN_BATCH, PRETRAIN_LR, "pretrain demo student")
    return {"steps": steps, "documents": len(ids), **trained}


def _train(model, examples: list, inputs, seed: int, steps: int, batch_size: int, peak: float, desc: str) -> dict:
    """``steps`` AdamW steps on batches of ``batch_size`` drawn from ``examples`` with a seeded generator,
    ``inputs(batch)`` giving the model's keyword arguments, on the ``_lr`` schedule to ``peak``, gradients
    clipped at 1; returns the seconds and the final loss (mean of the last 20 steps)."""
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=peak, weight_decay=0.01)
    model.train()
    start, losses = time.monotonic(), []
    bar = tqdm(range(steps), desc=desc, unit="step", mininterval=1.0)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, steps, peak)
        loss = model(**inputs(rng.sample(examples, batch_size))).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    model.eval()
    return {
        "seconds": round(time.monotonic() - start, 1),
        "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
    }


def _lr(step: int, steps: int, peak: float) -> float:
    """Linear warm-up over the first 5% of the steps, then a cosine down to zero."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _finetune_teacher(
    model: T5ForConditionalGeneration,
    tok: PreTrainedTokenizerFast,
    seed: int,
    steps: int,
    pairs: list[tuple[str, str]] | None = None,
    peak: float = TEACHER_LR,
) -> dict:
    """Teacher-forced CE on (prompt, answer) ``pairs``, the teacher's own examples unless given, for a fixed number
    of steps (so the build is deterministic), on the ``_lr`` schedule to ``peak``."""
    text = TextEncoder(tok, TEACHER_SPEC)
    pairs = teacher_examples(seed) if pairs is None else pairs
    encoded = [e for e in (text.encode(p, a) for p, a in pairs) if e is not None]

    def inputs(batch: list) -> dict:
        width, label_width = max(len(e.prompt_ids) for e in batch), max(len(e.answer_ids) for e in batch)
        return {
            "input_ids": torch.tensor([e.prompt_ids + [text.pad] * (width - len(e.prompt_ids)) for e in batch]),
            "attention_mask": torch.tensor(
                [[1] * len(e.prompt_ids) + [0] * (width - len(e.prompt_ids)) for e in batch]
            ),
            "labels": torch.tensor([e.answer_ids + [IGNORE_INDEX] * (label_width - len(e.answer_ids)) for e in batch]),
        }  # [B, S], [B, S], [B, L]

    trained = _train(model, encoded, inputs, seed, steps, TEACHER_BATCH, peak, "train demo teacher")
    return {"steps": steps, "examples": len(encoded), "examples_seen": steps * TEACHER_BATCH, **trained}


def teacher_config(tok: PreTrainedTokenizerFast) -> T5Config:
    """T5 v1.1 (FLAN-T5's architecture) in miniature: gated-GELU, no dropout, untied head without rescale."""
    return T5Config(
        vocab_size=len(tok),
        d_model=96,
        d_ff=192,
        d_kv=24,
        num_heads=4,
        num_layers=2,
        num_decoder_layers=2,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
        tie_word_embeddings=False,  # read by transformers 5 as "no d_model^-0.5 rescale" (v1.1); see untie_head
    )


def untie_head(model: T5ForConditionalGeneration) -> None:
    """Give the output projection its own weights (T5 v1.1), drawn as transformers draws an untied T5 head.

    Transformers 5 ties it to the input embeddings whatever the config says; once untied here, the saved
    checkpoint holds both matrices, and loading it keeps them apart (as it does for FLAN-T5).
    """
    head = torch.empty_like(model.lm_head.weight)
    torch.nn.init.normal_(head, mean=0.0, std=model.config.initializer_factor * 1.0)
    model.lm_head.weight = torch.nn.Parameter(head)
    model.all_tied_weights_keys.pop("lm_head.weight", None)


def build(
    out: Path, *, seed: int = 0, force: bool = False, steps: int = TEACHER_STEPS, pretrain_steps: int = PRETRAIN_STEPS
) -> dict:
    """Build the demo models under ``out`` (teacher, student, shared-tokenizer student), and the transfer set
    beside them (``out/TRANSFER_FILE``); returns what was built. Skips when an up-to-date build is there, and
    copies the one this machine kept (``kept_builds``) when there is one; ``force`` builds anew either way."""
    result = _build_models(out, seed=seed, force=force, steps=steps, pretrain_steps=pretrain_steps)
    return {**result, "transfer": str(write_transfer(out / TRANSFER_FILE))}


def _build_models(out: Path, *, seed: int, force: bool, steps: int, pretrain_steps: int) -> dict:
    stamp = {"build_version": BUILD_VERSION, "seed": seed, "teacher_steps": steps, "pretrain_steps": pretrain_steps}
    result = {"teacher": str(out / TEACHER_DIR), "student": str(out / STUDENT_DIR), "shared": str(out / SHARED_DIR)}
    result["built"] = False
    if not force and _whole(out, stamp):
        log.info("demo models in %s are up to date", out)
        return result
    kept = _kept_path(stamp)
    if not force and kept is not None and _whole(kept, stamp):
        for name in MODEL_DIRS:
            _copy_whole(kept / name, out / name)
        log.info("demo models: copied the build kept in %s (set %s=off to build anew)", kept, KEEP_ENV)
        return {**result, "kept": str(kept)}
    built = _build(out, stamp, seed, steps, pretrain_steps)
    if kept is not None:
        _keep(out, kept)
    return {**result, **built}


def kept_builds() -> Path | None:
    """Where finished builds are kept for every clone on this machine: ``$KDPIPE_DEMO_MODELS``, by default
    ``~/.cache/kdpipe/demo-models``; ``off`` keeps none. A fresh clone then copies the models instead of spending
    minutes retraining the teacher to the same bytes."""
    where = os.environ.get(KEEP_ENV, "").strip()
    if where.lower() == "off":
        return None
    return Path(where).expanduser() if where else Path.home() / ".cache" / "kdpipe" / "demo-models"


def _kept_path(stamp: dict) -> Path | None:
    """The kept build of ``stamp`` for this software and these CPU kernels: each changes the bytes a build writes."""
    root = kept_builds()
    if root is None:
        return None
    key = {
        **stamp,
        "threads": DEMO_THREADS,
        "versions": [torch.__version__, transformers.__version__, tokenizers.__version__],
        "kernels": [os.environ.get(k, "") for k in ("ATEN_CPU_CAPABILITY", "MKL_CBWR")],
    }
    return root / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _copy_whole(source: Path, target: Path) -> None:
    """``target`` becomes a copy of ``source`` in one rename: a copy cut short never carries the stamp, so it is
    never taken for a whole build (``_whole`` reads the stamps of both models)."""
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


def _whole(folder: Path, stamp: dict) -> bool:
    return all(_stamp_matches(folder / name, stamp) for name in MODEL_DIRS)


def _keep(out: Path, kept: Path) -> None:
    """Copy a finished build to ``kept``, in place of whatever is there; a failure costs only the reuse."""
    try:
        for name in MODEL_DIRS:
            _copy_whole(out / name, kept / name)
        log.info("demo models kept in %s for other clones on this machine", kept)
    except OSError as e:  # the disk is full or read-only, or another clone is keeping the same build
        log.warning("demo models not kept in %s: %s", kept, e)


def _build(out: Path, stamp: dict, seed: int, steps: int, pretrain_steps: int) -> dict:
    teacher_dir, student_dir, shared_dir = (out / name for name in MODEL_DIRS)
    with deterministic():
        torch.manual_seed(seed)
        corpus = _corpus(seed)
        t_tok, s_tok = _teacher_tokenizer(corpus), _student_tokenizer(corpus)
        teacher = T5ForConditionalGeneration(teacher_config(t_tok))
        untie_head(teacher)
        training = _finetune_teacher(teacher, t_tok, seed, steps)
        teacher.generation_config = GenerationConfig(
            decoder_start_token_id=t_tok.pad_token_id, eos_token_id=t_tok.eos_token_id, pad_token_id=t_tok.pad_token_id
        )
        _save(teacher, t_tok, teacher_dir, {**stamp, "training": training})

        torch.manual_seed(seed + 1)
        student = GPT2LMHeadModel(_student_config(len(s_tok), s_tok.eos_token_id))
        pretraining = _pretrain_student(student, s_tok, seed, pretrain_steps)
        student.generation_config = GenerationConfig(
            bos_token_id=s_tok.eos_token_id, eos_token_id=s_tok.eos_token_id, pad_token_id=s_tok.eos_token_id
        )
        _save(student, s_tok, student_dir, {**stamp, "pretraining": pretraining})

        # the shared-vocabulary case: the same architecture and pretraining, on the teacher's tokenizer
        torch.manual_seed(seed + 2)
        shared = GPT2LMHeadModel(_student_config(len(t_tok), t_tok.eos_token_id))
        shared_pretraining = _pretrain_student(shared, t_tok, seed, pretrain_steps)
        shared.generation_config = GenerationConfig(
            eos_token_id=t_tok.eos_token_id, pad_token_id=t_tok.pad_token_id, bos_token_id=t_tok.eos_token_id
        )
        _save(shared, t_tok, shared_dir, {**stamp, "pretraining": shared_pretraining})
    return {"built": True, "teacher_training": training, "student_pretraining": pretraining}


def _student_config(vocab_size: int, eos: int) -> GPT2Config:
    return GPT2Config(
        vocab_size=vocab_size, n_embd=96, n_layer=2, n_head=4, n_positions=512, bos_token_id=eos, eos_token_id=eos
    )


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
