"""The embedded demo mixture: small, seeded, generated tasks with the shapes of the real ones.

No third-party text: sentences are built from the word lists below. Each task mirrors a real one (yes/no,
3-way and 4-way options, extractive QA, dialogue summary, concepts-to-sentence) so every code path of the
pipeline runs on it. The "train" and "validation" splits come from disjoint seeds.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

from pipeline.tasks import Loaded, Record, Task, TaskError, Template

NAMES = ["Ana", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea", "Max", "Nia"]
ANIMALS = ["cat", "dog", "fox", "owl", "bear", "deer", "duck", "frog", "goat", "hare", "lion", "mole"]
COLORS = ["red", "blue", "green", "gray", "white", "black", "brown", "gold"]
PLACES = ["forest", "river", "garden", "city", "farm", "lake", "hill", "desert", "beach", "valley"]
FOODS = ["apples", "bread", "rice", "soup", "cheese", "fish", "grapes", "beans"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
VERBS = {"ball": "kicks", "book": "reads", "song": "sings", "cake": "bakes", "kite": "flies", "boat": "rows"}
SPLIT_SEEDS = {"train": 1000, "validation": 2000, "test": 3000}


def _rng(split: str, seed: int, task: str, i: int) -> random.Random:
    if split not in SPLIT_SEEDS:
        raise TaskError(f"demo tasks have splits {sorted(SPLIT_SEEDS)}, not {split!r}")
    return random.Random(f"{SPLIT_SEEDS[split]}:{seed}:{task}:{i}")


def _yesno(r: random.Random) -> Record:
    animal, color, place = r.choice(ANIMALS), r.choice(COLORS), r.choice(PLACES)
    asked = place if r.random() < 0.5 else r.choice([p for p in PLACES if p != place])
    passage = f"The {color} {animal} lives near the {place}. It eats {r.choice(FOODS)} every day."
    return Record(
        {"passage": passage, "question": f"does the {animal} live near the {asked}"},
        ("yes" if asked == place else "no",),
        options=("no", "yes"),
        label=int(asked == place),
    )


def _nli(r: random.Random) -> Record:
    # The label is how the hypothesis's relation stands to the premise's, and the premise's is drawn too, so it
    # cannot be read off the hypothesis alone (in an earlier version "shorter" always meant yes, "taller" always
    # no). The hypothesis keeps the premise's order of names: read either way round, the label became an XOR of
    # the relation and the order that no demo model learned (the teacher stayed below the FT student's 70 %).
    a, b = r.sample(NAMES, 2)
    relation = r.choice(["taller", "shorter"])
    opposite = {"taller": "shorter", "shorter": "taller"}[relation]
    premise = f"{a} is {relation} than {b}, and {b} likes {r.choice(FOODS)}."
    label = r.randrange(3)
    said = {0: relation, 1: r.choice(["older", "younger", "faster"]), 2: opposite}[label]  # entailed, neutral, no
    options = ("Yes", "It's impossible to say", "No")
    return Record(
        {"premise": premise, "hypothesis": f"{a} is {said} than {b}."}, (options[label],), options=options, label=label
    )


def _mc4(r: random.Random) -> Record:
    # Two people buy two foods: the answer is the food bound to the asked name, and the other one is among the
    # options (in an earlier version the right option was the only food of the story, found without reading).
    (name, other), (food, other_food) = r.sample(NAMES, 2), r.sample(FOODS, 2)
    first, second = ((name, food), (other, other_food)) if r.random() < 0.5 else ((other, other_food), (name, food))
    day = r.choice(DAYS)
    context = f"On {day}, {first[0]} bought {first[1]} and {second[0]} bought {second[1]} at the market."
    options = [food, other_food, *r.sample([f for f in FOODS if f not in (food, other_food)], 2)]
    r.shuffle(options)
    return Record(
        {"context": context, "question": f"What did {name} buy?"},
        (food,),
        options=tuple(options),
        label=options.index(food),
    )


def _qa(r: random.Random) -> Record:
    animals = r.sample(ANIMALS, 3)
    places = r.sample(PLACES, 3)
    facts = " ".join(f"The {a} sleeps by the {p}." for a, p in zip(animals, places, strict=True))
    k = r.randrange(3)
    return Record({"context": facts, "question": f"Where does the {animals[k]} sleep?"}, (f"by the {places[k]}",))


def _summary(r: random.Random) -> Record:
    a, b = r.sample(NAMES, 2)
    day, place = r.choice(DAYS), r.choice(PLACES)
    dialogue = f"{a}: Shall we meet on {day}?\n{b}: Yes! Where?\n{a}: At the {place}.\n{b}: Great, see you."
    return Record({"dialogue": dialogue}, (f"{a} and {b} will meet at the {place} on {day}.",))


def _concepts(r: random.Random) -> Record:
    thing = r.choice(sorted(VERBS))
    animal, place = r.choice(ANIMALS), r.choice(PLACES)
    concepts = (animal, thing, place)
    return Record(
        {"concepts": ", ".join(concepts)},
        (f"The {animal} {VERBS[thing]} a {thing} at the {place}.",),
        concepts=concepts,
    )


def world_text(seed: int, n: int, avoid: frozenset[str] = frozenset()) -> list[str]:
    """``n`` short documents about the demo world, for pretraining a student as a language model: the facts the
    task generators draw from (who lives and sleeps where, who is taller, who bought what, who meets whom, what
    an animal does where), strung together as plain prose. No instruction, question, option list or answer
    format of any task is in them, and no fact that is one of ``avoid`` (the caller's eval inputs and answers:
    ``pipeline.devtools.demo_models.pretraining_text``) is drawn."""
    r = random.Random(f"world:{seed}")

    def fact() -> str:
        while (text := draw()) in avoid:
            pass
        return text

    def draw() -> str:
        kind = r.randrange(6)
        if kind == 0:
            animal, color, place = r.choice(ANIMALS), r.choice(COLORS), r.choice(PLACES)
            return f"The {color} {animal} lives near the {place}. It eats {r.choice(FOODS)} every day."
        if kind == 1:
            return f"The {r.choice(ANIMALS)} sleeps by the {r.choice(PLACES)}."
        if kind == 2:
            a, b = r.sample(NAMES, 2)
            return f"{a} is {r.choice(['taller', 'shorter', 'older', 'younger', 'faster'])} than {b}."
        if kind == 3:
            return f"On {r.choice(DAYS)}, {r.choice(NAMES)} bought {r.choice(FOODS)} at the market."
        if kind == 4:
            a, b = r.sample(NAMES, 2)
            return f"{a} met {b} at the {r.choice(PLACES)} on {r.choice(DAYS)}."
        thing = r.choice(sorted(VERBS))
        return f"The {r.choice(ANIMALS)} {VERBS[thing]} a {thing} near the {r.choice(PLACES)}."

    return [" ".join(fact() for _ in range(r.randint(3, 8))) for _ in range(n)]


def _loader(name: str, make):
    def load(split: str, data_dir: Path | None, limit: int | None, seed: int) -> Loaded:
        n = 1000 if limit is None else limit
        records = [dataclasses.replace(make(_rng(split, seed, name, i)), source_id=f"{split}-{i}") for i in range(n)]
        return Loaded(records, source=f"generated: {name}, split {split}, seed {seed}")

    return load


DEMO_TASKS: tuple[Task, ...] = (
    Task(
        "demo_yesno",
        "options",
        (
            Template("{passage}\n\nQuestion: {question}?\n{options}"),
            Template("Read the text and answer yes or no.\n{passage}\n{question}?\n{options}"),
        ),
        ("accuracy",),
        4,
        _loader("demo_yesno", _yesno),
        "yes/no question over a passage (BoolQ shape)",
    ),
    Task(
        "demo_nli",
        "options",
        (
            Template(
                "Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise entail the hypothesis?\n{options}"
            ),
            Template('{premise}\nCan we conclude that "{hypothesis}"?\n{options}'),
        ),
        ("accuracy",),
        8,
        _loader("demo_nli", _nli),
        "3-way entailment (ANLI shape)",
    ),
    Task(
        "demo_mc4",
        "options",
        (
            Template("{context}\nQuestion: {question}\n{options}"),
            Template("Answer the question about the story.\n{context}\n{question}\n{options}"),
        ),
        ("accuracy",),
        6,
        _loader("demo_mc4", _mc4),
        "4-way multiple choice (CosmosQA shape)",
    ),
    Task(
        "demo_qa",
        "generate",
        (
            Template("{context}\n\nAnswer the question from the text: {question}"),
            Template("Read this and answer.\n{context}\nQ: {question}"),
        ),
        ("squad",),
        12,
        _loader("demo_qa", _qa),
        "extractive QA (SQuAD shape)",
    ),
    Task(
        "demo_summary",
        "generate",
        (
            Template("Summarize this dialogue:\n{dialogue}"),
            Template("{dialogue}\n\nWhat was this conversation about?"),
        ),
        ("rouge_l",),
        24,
        _loader("demo_summary", _summary),
        "dialogue summary (SAMSum shape)",
    ),
    Task(
        "demo_concepts",
        "generate",
        (
            Template("Write a sentence using these concepts: {concepts}"),
            Template("Concepts: {concepts}\nMake a sentence with all of them."),
        ),
        ("rouge_l", "coverage"),
        24,
        _loader("demo_concepts", _concepts),
        "concepts to sentence (CommonGen shape)",
    ),
)
