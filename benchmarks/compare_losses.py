"""FT vs uld vs uld-aligned vs hybrid on one cache: distill each with several seeds, evaluate, mean ± sd per task.

    .venv/bin/python benchmarks/compare_losses.py --cache runs/demo/cache --out runs/compare [--seeds 0,1,2]
        [--epochs 8] [--config configs/demo.yaml]

Every run goes through the CLI (``kdpipe distill`` then one ``kdpipe eval`` per seed over the four students),
and is resumed or skipped when already done, so a killed comparison continues where it stopped. Prints a
markdown table (every task metric, mean ± sd over the seeds) and the mean data-wait share and reader-thread
alignment time of each loss, and writes both to OUT/comparison.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

VARIANTS = {  # name -> distill flags
    "FT": ["--uld-weight", "0"],
    "uld": ["--loss", "uld"],
    "uld-aligned": ["--loss", "uld-aligned"],
    "hybrid": ["--loss", "hybrid"],
}


def kdpipe(*args: str) -> None:
    print("$ kdpipe " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "pipeline.cli", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=float, default=None, help="override the config's epochs")
    args = parser.parse_args()
    out = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    extra = ["--epochs", str(args.epochs)] if args.epochs else []
    scores: dict[str, dict[str, list[float]]] = {}
    reader: dict[str, list[tuple[float, float]]] = {}
    for seed in seeds:
        models = []
        for name, flags in VARIANTS.items():
            student = out / f"seed{seed}" / name
            kdpipe(
                "distill", "--config", args.config, "--cache", args.cache, "--out", str(student), "--seed", str(seed),
                "--resume", *flags, *extra,
            )  # fmt: skip
            record = json.loads((student / "kdpipe_distill_config.json").read_text())
            rows = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines()]
            wait = statistics.mean(r["data_wait"] for r in rows)
            reader.setdefault(name, []).append((wait, record.get("align_seconds", 0.0)))
            models += ["--model", str(student), "--name", name]
        eval_out = out / f"seed{seed}" / "eval"
        kdpipe("eval", "--config", args.config, *models, "--out", str(eval_out))
        results = json.loads((eval_out / "results.json").read_text())
        for name, task, value in _main_scores(results):
            scores.setdefault(task, {}).setdefault(name, []).append(value)
    lines = ["| task | " + " | ".join(VARIANTS) + " |", "|---" * (len(VARIANTS) + 1) + "|"]
    for task, by_name in scores.items():
        cells = []
        for name in VARIANTS:
            values = by_name.get(name, [])
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} ± {sd:.1f}" if values else "-")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    for name, pairs in reader.items():
        waits, aligns = zip(*pairs, strict=True)
        wait, align = 100 * statistics.mean(waits), statistics.mean(aligns)
        print(f"{name:>12}: data wait {wait:.2f} % of step time, alignment {align:.2f} s/run")
    (out / "comparison.json").write_text(json.dumps({"scores": scores, "reader": reader, "seeds": seeds}, indent=2))


def _main_scores(results: dict):
    """(model name, "task metric", value) of every computed metric in an eval results.json."""
    for name, model in results["models"].items():
        for task, result in model["results"].items():
            for key, value in result.get("values", {}).items():
                if value is not None:
                    yield name, f"{task} {key}", value


if __name__ == "__main__":
    main()
