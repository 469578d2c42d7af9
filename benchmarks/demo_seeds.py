"""FT and KD students over several seeds from one teacher cache: mean ± sd per task and over tasks.

One seed is an anecdote: a 2-layer student trained on 960 examples moves by points from one seed to the next.
This trains, for every seed, the KD student (CE + λ·ULD, the config's λ) and the FT student (λ = 0) from the
same cache, evaluates both (and the teacher once), and prints a table of each task's headline metric as
mean ± sample sd over the seeds, with the paired KD − FT difference. It also measures how often ULD's
position-by-position pairing (student answer row i with teacher row i) joins two rows that stand for the same
text across the two tokenizers, the first suspect when KD loses to FT.

    python benchmarks/demo_seeds.py --config configs/demo.yaml --cache runs/demo/cache --seeds 0,1,2 \
        --out runs/demo/seeds          # or: make demo-seeds

Writes ``seeds.md`` and ``seeds.json`` under ``--out`` (students under ``--out/seed<N>/``; a rerun resumes).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cache_schema  # noqa: E402
from pipeline.config import ConfigError, DistillConfig, EvalConfig, TeacherCacheConfig, load  # noqa: E402
from pipeline.tasks import get_task  # noqa: E402

# The value a task is read by (the table): acc (lm-eval's: summed log-likelihood), SQuAD F1, ROUGE-L.
HEADLINE = {"accuracy": "acc", "squad": "f1", "rouge_l": "rouge_l"}


def headline(task: str) -> str:
    return HEADLINE[get_task(task).metrics[0]]


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def span_pairing(cache_path: str, teacher: str, student: str, cfg: DistillConfig) -> dict:
    """Share of ULD's paired rows (student answer row i, teacher row i) that cover the same answer text.

    Rows are paired by position, min(S - 1, L) per example (the student's EOS row is skipped, as in the official
    recipe); a pair "matches" when both tokens cover the same byte range of the answer (``Encoded.answer_spans``
    of the text contract). Per task and overall.
    """
    from transformers import AutoTokenizer

    from pipeline.text import TextEncoder, TextSpec

    cache = cache_schema.open_cache(cache_path)
    spec = cache_schema.text_spec(cache.meta) or {
        "layout": "seq2seq",
        "max_prompt_tokens": 256,
        "max_answer_tokens": 48,
    }
    t_text = TextEncoder(
        AutoTokenizer.from_pretrained(teacher),
        TextSpec(
            spec["layout"], spec["max_prompt_tokens"], spec["max_answer_tokens"], spec.get("answer_overflow", "skip")
        ),
    )
    s_text = TextEncoder(
        AutoTokenizer.from_pretrained(student), TextSpec("causal", cfg.max_prompt_tokens, cfg.max_answer_tokens)
    )
    prompts, answers = cache.examples.column("prompt").to_pylist(), cache.examples.column("answer").to_pylist()
    pairs, same = defaultdict(int), defaultdict(int)
    for task, prompt, answer, rows in zip(cache.tasks, prompts, answers, cache.n_rows.tolist(), strict=True):
        t, s = t_text.encode(prompt, answer), s_text.encode(prompt, answer)
        if t is None or s is None:
            continue
        n = max(0, min(len(s.answer_ids) - int(cfg.skip_student_eos), rows, len(t.answer_ids)))
        hits = int((s.answer_spans[:n] == t.answer_spans[:n]).all(axis=1).sum())
        for key in (task, "all"):
            pairs[key] += n
            same[key] += hits
    return {k: {"pairs": pairs[k], "same_span": same[k], "share": 100.0 * same[k] / max(pairs[k], 1)} for k in pairs}


def table(runs: dict[str, dict[int, dict[str, float]]], tasks: list[str], teacher: dict[str, float]) -> str:
    cols = [*tasks, "mean"]
    lines = [
        "| model | " + " | ".join(f"{t} {headline(t)}" if t != "mean" else "mean over tasks" for t in cols) + " |",
        "|:--" + "|--:" * len(cols) + "|",
    ]
    with_mean = {
        name: {s: {**v, "mean": statistics.fmean(v[t] for t in tasks)} for s, v in by_seed.items()}
        for name, by_seed in runs.items()
    }
    teacher = {**teacher, "mean": statistics.fmean(teacher[t] for t in tasks)}
    lines.append("| teacher (one build) | " + " | ".join(f"{teacher[c]:.1f}" for c in cols) + " |")
    for name, by_seed in with_mean.items():
        cells = [mean_sd([v[c] for v in by_seed.values()]) for c in cols]
        lines.append(f"| {name} | " + " | ".join(f"{m:.1f} ± {sd:.1f}" for m, sd in cells) + " |")
    seeds = sorted(with_mean["student-ft"])
    diff = [mean_sd([with_mean["student-kd"][s][c] - with_mean["student-ft"][s][c] for s in seeds]) for c in cols]
    lines.append("| KD − FT (paired) | " + " | ".join(f"{m:+.1f} ± {sd:.1f}" for m, sd in diff) + " |")
    tvf = [teacher[c] - mean_sd([v[c] for v in with_mean["student-ft"].values()])[0] for c in cols]
    lines.append("| teacher − FT | " + " | ".join(f"{d:+.1f}" for d in tvf) + " |")
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--config", "config_file", default="configs/demo.yaml", show_default=True, type=click.Path())
@click.option("--cache", "cache_path", default="runs/demo/cache", show_default=True)
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated distill seeds (at least 2).")
@click.option("--out", default="runs/demo/seeds", show_default=True, type=click.Path())
def main(config_file: str, cache_path: str, seeds: str, out: str) -> None:
    from stages import distill
    from stages import eval as evaluate

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise click.UsageError(f"--seeds: expected comma-separated integers, got {seeds!r}") from None
    if len(seed_list) < 2 or len(set(seed_list)) != len(seed_list):
        raise click.UsageError("--seeds: give at least two different seeds (an sd needs two)")
    try:
        base = load(DistillConfig, config_file, "distill")
        teacher = load(TeacherCacheConfig, config_file, "teacher_cache").teacher
        # the models are set per seed below; an eval config needs one to be built
        ecfg = load(EvalConfig, config_file, "eval", {"models": (teacher,)})
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    root = Path(out)
    runs: dict[str, dict[int, dict[str, float]]] = {"student-ft": {}, "student-kd": {}}
    no_eos: dict[str, dict[int, dict[str, float]]] = {"student-ft": {}, "student-kd": {}}
    teacher_values: dict[str, float] = {}
    for seed in seed_list:
        folder = root / f"seed{seed}"
        paths = {}
        for name, weight in (("student-kd", base.uld_weight), ("student-ft", 0.0)):
            cfg = replace(
                base, seed=seed, uld_weight=weight, cache=str(cache_path), out=str(folder / name), resume=True
            )
            click.echo(f"seed {seed}: {name} (uld_weight {weight})", err=True)
            paths[name] = distill.run(cfg).path
        models = (teacher, *paths.values()) if not teacher_values else tuple(paths.values())
        names = ("teacher", *paths) if not teacher_values else tuple(paths)
        result = evaluate.run(replace(ecfg, models=models, names=names, out=str(folder / "eval")))
        for name, entry in result.results["models"].items():
            values = {t: entry["results"][t]["values"][headline(t)] for t in ecfg.tasks}
            if name == "teacher":
                teacher_values = values
                continue
            runs[name][seed] = values
            no_eos[name][seed] = {
                t: entry["results"][t]["values"]["no_eos"]
                for t in ecfg.tasks
                if "no_eos" in entry["results"][t]["values"]
            }
    tasks = list(ecfg.tasks)
    pairing = span_pairing(cache_path, teacher, base.student, base)
    text = (
        f"# FT and KD over seeds {', '.join(map(str, seed_list))} (mean ± sample sd; {ecfg.split} split, "
        f"{ecfg.limit} examples per task)\n\n"
        + table(runs, tasks, teacher_values)
        + "\nULD pairs student answer row i with teacher row i: rows covering the same answer text, per task: "
        + ", ".join(f"{k} {v['share']:.1f}% of {v['pairs']}" for k, v in pairing.items())
        + ".\n\nGenerations without EOS (no_eos, %, mean over seeds): "
        + "; ".join(
            f"{name}: "
            + ", ".join(f"{t} {statistics.fmean(v[t] for v in by_seed.values()):.1f}" for t in by_seed[seed_list[0]])
            for name, by_seed in no_eos.items()
        )
        + ".\n"
    )
    root.mkdir(parents=True, exist_ok=True)
    (root / "seeds.md").write_text(text)
    (root / "seeds.json").write_text(
        json.dumps(
            {"seeds": seed_list, "teacher": teacher_values, "runs": runs, "no_eos": no_eos, "pairing": pairing},
            indent=2,
        )
    )
    click.echo(text)


if __name__ == "__main__":
    main()
