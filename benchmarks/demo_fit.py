"""How well a student fits the answers it was trained on, for the option tasks of a cache: lm-eval's ``acc`` on
the cache's own examples (its gold answers, or the teacher's in a transfer cache), beside the same student's
``acc`` on held-out examples. A student near chance on its own training examples did not fit the task; one that
fits them and not the held-out ones memorised.

    python benchmarks/demo_fit.py --cache runs/demo/cache-transfer --model runs/demo/student-regime2 \\
        --out runs/demo/fit/regime2 [--per-task 100]

Each option-task example of the cache becomes a row of a file task (its prompt, the options listed in it, the
label of the cached answer), evaluated with ``--include-trained``: these are training examples on purpose.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cache_schema  # noqa: E402
from pipeline.config import EvalConfig  # noqa: E402
from pipeline.tasks import render_options  # noqa: E402

MARK = "\n" + render_options(("",))  # what precedes the first option in a rendered prompt


def option_rows(cache_path: str, per_task: int) -> dict[str, list[dict]]:
    """The cache's examples whose prompt lists options (``OPTIONS:`` then ``- option`` lines) and whose answer is
    one of them, grouped by the task the prompt came from (a file task's source id prefix, else its task)."""
    cache = cache_schema.open_cache(cache_path)
    ex = cache.examples
    rows: dict[str, list[dict]] = defaultdict(list)
    for task, prompt, answer, source in zip(
        ex["task"].to_pylist(), ex["prompt"].to_pylist(), ex["answer"].to_pylist(), cache.source_ids, strict=True
    ):
        if MARK not in prompt:
            continue
        options = prompt.split(MARK, 1)[1].split("\n- ")
        if answer not in options:
            continue
        name = source.split("/")[0] if source and "/" in source else task
        if len(rows[name]) < per_task:
            rows[name].append({"prompt": prompt, "options": options, "label": options.index(answer)})
    return rows


@click.command()
@click.option("--cache", required=True, help="The cache the student trained on.")
@click.option("--model", required=True, help="The student.")
@click.option("--out", required=True)
@click.option("--per-task", default=100, show_default=True)
def main(cache: str, model: str, out: str, per_task: int) -> None:
    from stages import eval as evaluate

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for name, rows in option_rows(cache, per_task).items():
        path = folder / f"fit_{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        files.append(str(path))
    if not files:
        raise click.UsageError(f"{cache}: no option-task examples")
    cfg = EvalConfig(
        models=(model,), names=("student",), tasks=tuple(files), include_trained=True, out=str(folder / "eval")
    )
    result = evaluate.run(cfg)
    for task, r in result.results["models"]["student"]["results"].items():
        click.echo(f"{task}: acc on its own training examples {r['values']['acc']:.1f} (n={r['n']})")


if __name__ == "__main__":
    main()
