"""Does the demo student copy from its context, as a pretrained LM does? And a student pretrained so it does.

A pretrained GPT-2 predicts a passage it has just read almost for free the second time (induction heads form
early in pretraining on real text, which repeats itself). ``measure`` prints, for each model, the mean next-token
loss on 64 world-text documents (``pipeline.tasks.demo.world_text``, seed 99, first 40 tokens) read once and read
again right after: a model that copies from its context has a far lower loss on the second reading.

``pretrain`` builds a diagnostic student like the demo's (same tokenizer, architecture, initial weights, batch, peak
rate and schedule: ``pipeline.devtools.demo_models._pretrain_student``) on one of two corpora:
``world`` (the build's own ``pretraining_text``: the facts of each document drawn independently, so nothing in a
document helps predict the rest of it) or ``recurring`` (each document a pool of 2-4 of those facts, written 4-10
times in a random order, so a topic comes back as it does in real text and copying pays).

    python benchmarks/demo_copying.py pretrain --docs recurring --steps 1200 --out runs/demo/student-recurring-1200
    python benchmarks/demo_copying.py measure models/tiny-gpt2-student runs/demo/student-recurring-1200

``teacher`` builds a diagnostic teacher like the demo's (same tokenizer, architecture, initial weights and task
training: ``pipeline.devtools.demo_models._finetune_teacher``, ``TEACHER_STEPS`` steps), pretrained first, as T5 was
before FLAN tuned it, for ``--pretrain-steps`` steps on the recurring documents with T5's prefix-LM objective: the
encoder reads a document's first facts, the decoder writes the next one or two.

    python benchmarks/demo_copying.py teacher --pretrain-steps 400 --out runs/demo/teacher-recurring-400

``binding`` prints a teacher's greedy exact match on the first QA examples of its own training set: whether it fits
which place goes with which animal on the examples it is trained from (chance: one in three).

    python benchmarks/demo_copying.py binding models/tiny-t5-teacher

``alone`` trains the teacher's architecture on the QA task and nothing else (fresh examples or a fixed pool, the
build's or a word-level tokenizer, other sizes, span corruption first, passages cut to one or two facts) and prints
its exact match on training and validation examples: whether it can learn the binding at all.

    python benchmarks/demo_copying.py alone --steps 3000
"""

from __future__ import annotations

import json
import math
import random
import re
import sys
from pathlib import Path

import click
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.devtools import demo_models  # noqa: E402
from pipeline.tasks.demo import world_text  # noqa: E402

STUDENT = "models/tiny-gpt2-student"
TEACHER = "models/tiny-t5-teacher"
FACT_END = re.compile(r"(?<=\.) (?!It )")  # between facts ("lives near" is two sentences, the second "It eats")


def recurring_text(seed: int, n: int, avoid: frozenset[str] = frozenset()) -> list[str]:
    """``n`` documents, each 4-10 facts drawn with replacement from a pool of 2-4 facts of ``world_text``."""
    facts = [f for doc in world_text(seed, 2 * n, avoid) for f in FACT_END.split(doc)]
    r = random.Random(f"recurring:{seed}")
    docs = []
    for _ in range(n):
        pool = r.sample(facts, r.randint(2, 4))
        docs.append(" ".join(r.choice(pool) for _ in range(r.randint(4, 10))))
    return docs


def _load(loader, path: str, what: str):
    """``loader.from_pretrained(path)``, or a one-line usage error naming ``what`` should be there."""
    try:
        return loader.from_pretrained(path)
    except OSError as e:
        raise click.UsageError(f"{path}: no {what} there (make models builds the demo's): {e}") from None


@click.group()
def main() -> None:
    """Copying from context in the demo students."""


@main.command()
@click.option("--docs", type=click.Choice(["world", "recurring"]), required=True, help="The pretraining corpus.")
@click.option("--steps", type=click.IntRange(1), default=demo_models.PRETRAIN_STEPS, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option("--student", default=STUDENT, show_default=True, help="The demo student whose tokenizer it takes.")
def pretrain(docs: str, steps: int, out: str, student: str) -> None:
    """Pretrain a demo student on DOCS for STEPS steps into OUT."""
    from transformers import AutoTokenizer, GenerationConfig, GPT2LMHeadModel

    tok = _load(AutoTokenizer, student, "demo student")
    corpus = (
        recurring_text(0, demo_models.PRETRAIN_DOCS, demo_models.pretraining_avoid()) if docs == "recurring" else None
    )
    with demo_models.deterministic():
        torch.manual_seed(1)  # the build's seed + 1: the demo student's initial weights
        model = GPT2LMHeadModel(demo_models._student_config(len(tok), tok.eos_token_id))
        info = demo_models._pretrain_student(model, tok, 0, steps, corpus)  # None: the build's pretraining_text
    eos = tok.eos_token_id
    model.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (Path(out) / "pretraining.json").write_text(json.dumps({"docs": docs, **info}) + "\n")
    click.echo(json.dumps({"docs": docs, **info}))


def _initial_teacher(tok, **changes):
    """The demo teacher's initial weights, as the build draws them (seed 0, untied head), with ``changes`` made to
    its config first (``num_layers=4``, ...)."""
    from transformers import T5ForConditionalGeneration

    torch.manual_seed(0)  # the build's seed
    config = demo_models.teacher_config(tok)
    for name, value in changes.items():
        setattr(config, name, value)
    model = T5ForConditionalGeneration(config)
    demo_models.untie_head(model)
    return model


def prefix_pairs(seed: int, n: int) -> list[tuple[str, str]]:
    """T5's prefix-LM examples from ``n`` recurring documents: (the facts before a cut, the one or two after it)."""
    r = random.Random(f"prefix:{seed}")
    pairs = []
    for doc in recurring_text(seed, n, demo_models.pretraining_avoid()):
        facts = FACT_END.split(doc)
        cut = r.randint(1, len(facts) - 1)
        pairs.append((" ".join(facts[:cut]), " ".join(facts[cut : cut + r.randint(1, 2)])))
    return pairs


@main.command()
@click.option("--pretrain-steps", type=click.IntRange(0), default=400, show_default=True)
@click.option("--steps", type=click.IntRange(1), default=demo_models.TEACHER_STEPS, show_default=True)
@click.option("--layers", type=click.IntRange(1), default=None, help="Encoder and decoder layers (the build's: 2).")
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option("--teacher", default=TEACHER, show_default=True, help="The demo teacher whose tokenizer it takes.")
def teacher(pretrain_steps: int, steps: int, layers: int | None, out: str, teacher: str) -> None:
    """Pretrain a demo teacher (prefix LM, recurring documents), then train it on its tasks as the build does
    (``--steps``: the build's ``TEACHER_STEPS`` unless told)."""
    from transformers import AutoTokenizer, GenerationConfig

    tok = _load(AutoTokenizer, teacher, "demo teacher")
    with demo_models.deterministic():
        depth = {} if layers is None else {"num_layers": layers, "num_decoder_layers": layers}
        model = _initial_teacher(tok, **depth)
        pretraining = {"steps": 0}
        if pretrain_steps:
            pairs = prefix_pairs(0, demo_models.PRETRAIN_DOCS)
            pretraining = demo_models._finetune_teacher(model, tok, 0, pretrain_steps, pairs)
        training = demo_models._finetune_teacher(model, tok, 0, steps)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(out)
    tok.save_pretrained(out)
    info = {"pretraining": pretraining, "training": training}
    (Path(out) / "training.json").write_text(json.dumps(info) + "\n")
    click.echo(json.dumps(info))


def _exact_match(model, tok, pairs: list[tuple[str, str]]) -> tuple[int, int]:
    """(right, of): greedy answers equal to the gold ones, over the pairs the teacher's encoder keeps."""
    from pipeline.text import TextEncoder

    text = TextEncoder(tok, demo_models.TEACHER_SPEC)
    right = 0
    encoded = [(e, answer) for prompt, answer in pairs if (e := text.encode(prompt, answer)) is not None]
    for e, answer in encoded:
        ids = torch.tensor([e.prompt_ids])  # [1, S]: the ids it trains on (what _finetune_teacher keeps)
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=16,
                decoder_start_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        right += tok.decode(out[0], skip_special_tokens=True).strip() == answer.strip()
    return right, len(encoded)


@main.command()
@click.argument("teachers", nargs=-1, required=True)
@click.option("--examples", type=click.IntRange(1), default=200, show_default=True)
def binding(teachers: tuple[str, ...], examples: int) -> None:
    """Greedy exact match of each of TEACHERS on the first EXAMPLES QA examples of the build's teacher set."""
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    pairs = [(p, a) for p, a in demo_models.teacher_examples(0) if "Where does the" in p][:examples]
    click.echo("| teacher | right | of |\n|:--|--:|--:|")
    for path in teachers:
        tok, model = _load(AutoTokenizer, path, "teacher"), _load(T5ForConditionalGeneration, path, "teacher").eval()
        right, of = _exact_match(model, tok, pairs)
        click.echo(f"| {path} | {right} | {of} |")


SENTINELS = [f"<extra_id_{i}>" for i in range(8)]  # T5's span-corruption sentinels, as many as a document needs


def words_tokenizer():
    """A word-level tokenizer of the teacher's examples: every word one piece, punctuation and newlines their own,
    so a place is the same piece in the passage and in the answer (the build's Unigram fuses "desert." and "\\nQ")."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(), pre_tokenizers.Split(Regex(r"[.,?!:;\n]"), behavior="isolated")]
    )
    tok.decoder = decoders.Metaspace()
    corpus = [t for pair in demo_models.teacher_examples(0, 1000) for t in pair]
    specials = ["<pad>", "</s>", "<unk>"]
    tok.train_from_iterator(
        corpus, trainers.WordLevelTrainer(vocab_size=5000, special_tokens=specials, show_progress=False)
    )
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def span_pairs(seed: int, n: int) -> list[tuple[str, str]]:
    """T5's span corruption on ``n`` recurring documents, by words: about 15 % of a document's words in spans of
    1-3, each replaced by a sentinel in the input and written after it in the target. Most spans can be copied
    from another reading of the same fact in the document."""
    r = random.Random(f"span:{seed}")
    pairs = []
    for doc in recurring_text(seed, n, demo_models.pretraining_avoid()):
        words = doc.split(" ")
        starts = sorted(r.sample(range(len(words)), max(1, round(0.15 * len(words) / 2))))
        source, target, at, used = [], [], 0, 0
        for start in starts:
            if start < at or used == len(SENTINELS):  # inside the span before, or out of sentinels
                continue
            end = start + r.randint(1, 3)
            source += [*words[at:start], SENTINELS[used]]
            target += [SENTINELS[used], *words[start:end]]
            at, used = end, used + 1
        pairs.append((" ".join(source + words[at:]), " ".join(target)))
    return pairs


QA_FACT = re.compile(r"The (\w+) sleeps by the \w+\.")


def fewer_facts(pairs: list[tuple[str, str]], facts: int, seed: int) -> list[tuple[str, str]]:
    """The QA pairs with ``facts`` of each passage's three facts kept: the asked animal's and others drawn with
    ``seed``, in a shuffled order (1: a lone fact, whose place the answer copies with no choice to make)."""
    r = random.Random(f"facts:{seed}")
    out = []
    for prompt, answer in pairs:
        found = list(QA_FACT.finditer(prompt))
        asked = re.search(r"Where does the (\w+) sleep", prompt).group(1)
        kept = [m[0] for m in found if m[1] == asked]
        kept += r.sample([m[0] for m in found if m[1] != asked], facts - 1)
        r.shuffle(kept)
        out.append((prompt[: found[0].start()] + " ".join(kept) + prompt[found[-1].end() :], answer))
    return out


def _cut(pairs: list[tuple[str, str]], facts: int, seed: int) -> list[tuple[str, str]]:
    return pairs if facts == 3 else fewer_facts(pairs, facts, seed)


def _fact_counts(value: str) -> list[int]:
    parts = [part.strip() for part in value.split(",") if part.strip()]
    if not all(part in ("1", "2", "3") for part in parts):
        raise click.BadParameter(f"{value!r}: give fact counts from 1 to 3, comma-separated")
    return [int(part) for part in parts]


@main.command()
@click.option("--steps", type=click.IntRange(1), default=3000, show_default=True)
@click.option(
    "--pool", type=click.IntRange(0), default=0, help="QA examples it draws from (0: steps x batch, so few repeat)."
)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--tokenizer", type=click.Choice(["build", "words"]), default="build", show_default=True)
@click.option("--d-model", type=click.IntRange(8), default=96, show_default=True)
@click.option("--heads", type=click.IntRange(1), default=4, show_default=True)
@click.option("--layers", type=click.IntRange(1), default=2, show_default=True)
@click.option(
    "--span-pretrain", type=click.IntRange(0), default=0, help="Span-corruption steps before, on recurring documents."
)
@click.option("--facts", type=click.IntRange(1, 3), default=3, show_default=True, help="Facts kept in each passage.")
@click.option(
    "--mix-facts",
    callback=lambda _ctx, _param, value: _fact_counts(value),
    default="",
    help="Fact counts (comma-separated) whose passages share the training pool equally with --facts ones.",
)
@click.option(
    "--threads", type=click.IntRange(1), default=1, show_default=True, help="Two runs fit 2 cores side by side."
)
@click.option("--teacher", default=TEACHER, show_default=True, help="The demo teacher whose tokenizer it takes.")
def alone(
    steps, pool, lr, tokenizer, d_model, heads, layers, span_pretrain, facts, mix_facts, threads, teacher
) -> None:
    """Train the demo teacher's architecture on the QA task alone and print its exact match: on the first 200
    training examples, and on 200 of validation, both with ``--facts`` facts. Its loss at chance (one place of
    ``--facts``) is ln facts over the answer's pieces; with ``--mix-facts`` the training loss mixes the counts."""
    from transformers import AutoTokenizer

    from pipeline.tasks import build_mixture
    from pipeline.text import TextEncoder

    tok = _load(AutoTokenizer, teacher, "demo teacher") if tokenizer == "build" else words_tokenizer()
    if span_pretrain:
        tok.add_special_tokens({"additional_special_tokens": SENTINELS})
    n = pool or steps * demo_models.TEACHER_BATCH
    val = [
        (e.prompt, e.answer)
        for e in build_mixture({"demo_qa": 200}, split="validation", seed=0, data_dir=None).examples
    ]
    train = build_mixture({"demo_qa": n}, split="train", data_dir=None, seed=1).examples
    qa = [(e.prompt, e.answer) for e in train]
    counts = [facts, *mix_facts]  # the pool's shares, each cut to its count (the first 200 scored are --facts ones)
    qa = [pair for i, n_facts in enumerate(counts) for pair in _cut(qa[i :: len(counts)], n_facts, 1 + i)]
    val = _cut(val, facts, 0)
    held = {prompt for prompt, _ in val}
    qa = [(prompt, answer) for prompt, answer in qa if prompt not in held]  # none of the examples it is scored on
    with demo_models.deterministic(threads):
        model = _initial_teacher(
            tok, d_model=d_model, d_ff=2 * d_model, num_heads=heads, d_kv=d_model // heads, num_layers=layers,
            num_decoder_layers=layers,
        )  # fmt: skip
        pretraining = {"steps": 0}
        if span_pretrain:
            pairs = span_pairs(0, span_pretrain * demo_models.TEACHER_BATCH)
            pretraining = demo_models._finetune_teacher(model, tok, 0, span_pretrain, pairs, peak=lr)
        training = demo_models._finetune_teacher(model, tok, 0, steps, qa, peak=lr)
        model.eval()
        answer_pieces = len(TextEncoder(tok, demo_models.TEACHER_SPEC).encode(*qa[0]).answer_ids)  # by the <place></s>
        info = {
            "tokenizer": tokenizer,
            "d_model": d_model,
            "heads": heads,
            "layers": layers,
            "lr": lr,
            "pool": len(qa),
            "span_pretrain": pretraining,
            "training": training,
            "facts": facts,
            "mix_facts": mix_facts,
            "chance_loss": round(math.log(facts) / answer_pieces, 4),
            "train_em": _exact_match(model, tok, qa[:200]),
            "validation_em": _exact_match(model, tok, val),
        }
    click.echo(json.dumps(info))


@main.command()
@click.argument("models", nargs=-1, required=True)
def measure(models: tuple[str, ...]) -> None:
    """Mean loss (nats/token) on world text read once and read again, for each of MODELS."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    docs = world_text(99, 64)
    click.echo("| model | read once | read again |\n|:--|--:|--:|")
    for path in models:
        model, tok = _load(AutoModelForCausalLM, path, "causal LM").eval(), _load(AutoTokenizer, path, "causal LM")
        once = again = 0.0
        for doc in docs:
            x = tok(doc)["input_ids"][:40]
            ids = torch.tensor([[tok.eos_token_id, *x, *x]])  # [1, 1 + 2L]
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)  # [2L, V]
            nll = -logp.gather(-1, ids[0, 1:, None])[:, 0]  # [2L]: position i predicts token i + 1
            once += nll[: len(x)].mean().item()
            again += nll[len(x) + 2 :].mean().item()  # the second reading, past its first two tokens
        click.echo(f"| {path} | {once / len(docs):.2f} | {again / len(docs):.2f} |")


if __name__ == "__main__":
    main()
