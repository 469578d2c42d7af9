"""A larger transfer set for the demo's regime 2: ``per_task`` prompts of each demo task, with no answers, drawn
as ``kdpipe build-demo-models`` draws its 640 (inputs in neither the demo cache nor the evaluated records of the
validation and test splits), written as a prompts-only file task for ``teacher-cache --answers teacher``.

    python benchmarks/demo_transfer.py --per-task 2560 --out runs/demo/transfer-2560/demo-transfer-2560.jsonl
    kdpipe teacher-cache --config configs/demo.yaml --tasks runs/demo/transfer-2560/demo-transfer-2560.jsonl=20000 \\
        --answers teacher --answer-overflow cut --out runs/demo/cache-transfer-2560

demo_concepts holds at most 341 such prompts whatever ``per_task`` says (its world has 720 inputs).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.devtools.demo_models import write_transfer  # noqa: E402


@click.command()
@click.option("--per-task", default=2560, show_default=True, help="Prompts of each demo task.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="The .jsonl file to write.")
def main(per_task: int, out: str) -> None:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_transfer(path, per_task)
    counts = Counter(json.loads(line)["id"].split("/")[0] for line in path.read_text(encoding="utf-8").splitlines())
    click.echo(f"{path}: {sum(counts.values())} prompts (" + ", ".join(f"{t} {n}" for t, n in counts.items()) + ")")


if __name__ == "__main__":
    main()
