"""The training losses and the one registry that knows the distillation terms.

The training loss is CE + λ·KD: ``pipeline.losses.ce`` is the CE, and each KD term is one entry of :data:`LOSSES`
with the module that computes it. An entry says everything distill, the config and the docs need: the ``--loss``
name, what the term computes and when to use it (``--help`` and the loss table of ``docs/losses.md`` are drawn
from it), its family (``uld``: sorted distributions, any two vocabularies; ``kl``: one shared vocabulary), what the
cache must hold, and what the reader thread prepares for it (``rows``: the teacher rows by position; ``groups``:
student and teacher tokens paired by their bytes in the answer; ``ids``: the rows with their teacher ids mapped to
student ids). ``pipeline.student.objective`` turns an entry into the checks, the reader options and the term of a
micro-batch. Adding a loss is a module with a pure function in this package and its entry here.

This module imports no torch: the CLI and the config read the registry without loading it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

IGNORE_INDEX = -100  # label of a position without a loss (prompt, padding); torch's cross_entropy default
READERS = ("rows", "groups", "ids")
NEEDS = {  # what a cache must hold for a loss, in words
    "token_layout": "the token layout (token spans, label probabilities, the teacher vocabulary; schema v1.1 on)",
    "topk_ids": "the teacher's top-k ids (teacher-cache --store-ids, the default)",
}


@dataclass(frozen=True)
class Loss:
    name: str  # the --loss value
    family: str  # "uld" | "kl"
    reader: str  # one of READERS
    needs: tuple[str, ...]  # keys of NEEDS the cache must hold
    computes: str  # one line: what the term is
    use: str  # one line: when to choose it
    function: str  # "module:function": the pure function computing the term (tensors in, scalar out)
    options: dict = field(default_factory=dict)  # fixed keyword arguments of the function

    def resolve(self) -> Callable:
        """The term's function (imports its module, and torch with it)."""
        module, name = self.function.split(":")
        return getattr(importlib.import_module(module), name)


LOSSES: dict[str, Loss] = {
    loss.name: loss
    for loss in (
        Loss(
            "uld",
            "uld",
            "rows",
            (),
            "official ULD: the i-th student row against the i-th teacher row, both sorted, L1",
            "any two tokenizers; the official recipe, and the only loss a v1 cache supports",
            "pipeline.losses.uld:uld_loss",
        ),
        Loss(
            "uld-aligned",
            "uld",
            "groups",
            ("token_layout",),
            "sorted L1 between student and teacher tokens paired by their bytes in the answer (TRL GOLD's grouping; "
            "each group merged onto its first row: GOLD's 'observed' merge on its 'bayesian' rows)",
            "different tokenizers whose tokens of an answer do not line up position by position",
            "pipeline.losses.token_aware:uld_aligned_loss",
        ),
        Loss(
            "hybrid",
            "uld",
            "groups",
            ("token_layout", "topk_ids"),
            "uld-aligned, with the tokens both vocabularies spell alike compared by identity (L1 where GOLD uses JSD)",
            "different tokenizers that share part of their vocabulary",
            "pipeline.losses.token_aware:hybrid_loss",
        ),
        Loss(
            "kl",
            "kl",
            "ids",
            ("topk_ids",),
            "forward KL(teacher ‖ student) on the teacher's top-k ids plus a rest bucket",
            "a shared vocabulary: the teacher's tokenizer, or one that spells every teacher token",
            "pipeline.losses.kl:kl_family_loss",
            {"divergence": "kl"},
        ),
        Loss(
            "rkl",
            "kl",
            "ids",
            ("topk_ids",),
            "reverse KL(student ‖ teacher) on the same buckets (mode-seeking)",
            "a shared vocabulary, when the student should commit to the teacher's likeliest tokens",
            "pipeline.losses.kl:kl_family_loss",
            {"divergence": "rkl"},
        ),
        Loss(
            "jsd",
            "kl",
            "ids",
            ("topk_ids",),
            "TRL GKD's generalized JSD with β = --jsd-beta on the same buckets",
            "a shared vocabulary, between kl (β = 0) and rkl (β = 1)",
            "pipeline.losses.kl:kl_family_loss",
            {"divergence": "jsd"},
        ),
    )
}


def check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def help_text() -> str:
    """The ``--loss`` help: every registered term in one line each."""
    return "Distillation term: " + "; ".join(f"{loss.name} ({loss.computes})" for loss in LOSSES.values()) + "."


def table() -> str:
    """The loss table of the docs (``docs/losses.md`` holds it verbatim; a test checks)."""
    lines = [
        "| `--loss` | family | computes | use it for | the cache must hold |",
        "|:--|:--|:--|:--|:--|",
    ]
    for loss in LOSSES.values():
        needs = "; ".join(NEEDS[n] for n in loss.needs) or "probabilities and tails (any cache)"
        lines.append(f"| `{loss.name}` | {loss.family} | {loss.computes} | {loss.use} | {needs} |")
    return "\n".join(lines) + "\n"
