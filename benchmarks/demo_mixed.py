"""The demo's regime-2 transfer set with the labelled examples mixed in (what the issue's "the labelled examples may
be mixed in" allows): a file task of every example of the labelled cache with its gold answer, and every prompt of
the transfer cache with the answer the teacher wrote for it, for ``teacher-cache`` to cache again with the file's
answers (``--answers gold``: a file task's "gold" is the answer its line gives).

    python benchmarks/demo_mixed.py --labelled runs/demo/cache --transfer runs/demo/cache-transfer-2560 \\
        --out runs/demo/mixed-2560/demo-mixed-2560.jsonl
    kdpipe teacher-cache --config configs/demo.yaml --tasks runs/demo/mixed-2560/demo-mixed-2560.jsonl=20000 \\
        --answers gold --answer-overflow cut --out runs/demo/cache-mixed-2560

The teacher's rows over its own greedy answer, teacher-forced, are the rows it generated them with; so a student of
the mixed cache sees, for each transfer prompt, what a student of the transfer cache sees, and for each labelled
example what FT and the regime-1 students see. Nothing is oversampled: each example is one line.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cache_schema  # noqa: E402
from pipeline.atomic import write_atomic  # noqa: E402


def mixed_lines(labelled: str, transfer: str) -> list[dict]:
    """The file task's lines: the labelled cache's examples (id ``labelled/TASK/SOURCE``) then the transfer
    cache's (their own source ids), each with the answer its cache holds."""
    gold, taught = cache_schema.open_cache(labelled), cache_schema.open_cache(transfer)
    for cache, answers in ((gold, "gold"), (taught, "teacher")):
        if cache.meta[cache_schema.ATTR_ANSWERS] != answers:
            raise click.UsageError(
                f"{cache.path}: holds {cache.meta[cache_schema.ATTR_ANSWERS]} answers; it must hold {answers} answers"
            )
    lines = [
        {"id": f"labelled/{e['task']}/{_source(e)}", "prompt": e["prompt"], "answer": e["answer"]}
        for e in gold.examples.to_pylist()
    ]
    lines += [{"id": _source(e), "prompt": e["prompt"], "answer": e["answer"]} for e in taught.examples.to_pylist()]
    return lines


def _source(example: dict) -> str:
    """An example's source id, its key where the cache records none."""
    return example["source_id"] or example["key"]


@click.command()
@click.option("--labelled", default="runs/demo/cache", show_default=True, help="The regime-1 cache (gold answers).")
@click.option("--transfer", required=True, help="A transfer cache (the teacher's answers).")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="The .jsonl file to write.")
def main(labelled: str, transfer: str, out: str) -> None:
    try:
        lines = mixed_lines(labelled, transfer)
    except cache_schema.CacheError as e:
        raise click.UsageError(str(e)) from None
    path = Path(out)
    write_atomic(path, "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    counts = Counter(line["id"].split("/")[0] for line in lines)
    click.echo(f"{path}: {len(lines)} lines (" + ", ".join(f"{t} {n}" for t, n in counts.items()) + ")")


if __name__ == "__main__":
    main()
