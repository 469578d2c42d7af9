"""The eval stage's human-readable outputs, drawn from the results.json content alone.

``markdown`` gives a table shaped like a paper's (models as rows, one column per task metric, ``value ± se`` on a
0–100 scale, "n/a" with a footnote when a metric could not be computed), the paired differences between models
on the same examples, and per task its n, skipped rows, cut prompts and the file read; ``plot`` draws grouped
bars per task metric, one bar per model, with error bars, values and n, with matplotlib's Agg backend.
"""

from __future__ import annotations

from pathlib import Path

# Column labels as papers print them; a key not listed is printed as is. acc/acc_norm are lm-eval's names.
SHORT = {
    "exact_match": "EM",
    "f1": "F1",
    "rouge_l": "R-L",
    "coverage": "cov",
    "bleu": "BLEU",
    "bertscore_precision": "BS-P",
    "bertscore_recall": "BS-R",
    "bertscore_f1": "BS-F1",
}
SIGNIFICANT = 1.96  # |difference| > 1.96 standard errors: marked, about a 5% two-sided test
# Kept in results.json and the predictions, left out of the tables and the plot: kdpipe's own variant of acc (the
# option with its EOS), beside lm-eval's acc and acc_norm, which the tables show so that they compare with lm-eval's.
DETAIL_ONLY = frozenset({"acc_eos"})


def columns(results: dict) -> list[tuple[str, str]]:
    """(task, metric key) pairs in task order, then in the order the metrics reported them (``DETAIL_ONLY`` out)."""
    cols: list[tuple[str, str]] = []
    for task in results["tasks"]:
        for model in results["models"].values():
            for key in model["results"].get(task, {}).get("values", {}):
                if key not in DETAIL_ONLY and (task, key) not in cols:
                    cols.append((task, key))
    return cols


def with_se(value: float, se: float | None, sign: bool = False) -> str:
    """``45.0 ± 11.4``; a value without a standard error (one example) prints ``± n/a``."""
    text = f"{value:+.1f}" if sign else f"{value:.1f}"
    return f"{text} ± {se:.1f}" if se is not None else f"{text} ± n/a"


def _limit(results: dict) -> str:
    limit = results["config"].get("limit")
    return f"first {limit} examples per task" if limit else "every example"


def markdown(results: dict) -> str:
    cols = columns(results)
    tasks, models = results["tasks"], results["models"]
    splits = sorted({t["split"] for t in tasks.values()})
    lines = [
        f"# Evaluation ({', '.join(splits)} split{'s' if len(splits) > 1 else ''}, template {results['template_id']}, "
        f"{_limit(results)})",
        "",
        "Values on a 0–100 scale ± their standard error: the sample standard error of the mean for per-example "
        "metrics, the standard deviation of a seeded bootstrap for corpus BLEU.",
        "",
    ]
    lines.append("| model | " + " | ".join(f"{task} {SHORT.get(key, key)}" for task, key in cols) + " |")
    lines.append("|:--" + "|--:" * len(cols) + "|")
    notes: dict[str, int] = {}  # reason -> footnote number
    for name, model in models.items():
        cells = []
        for task, key in cols:
            result = model["results"].get(task, {})
            value = result.get("values", {}).get(key)
            if value is None:
                reason = result.get("not_computed", {}).get(key, "not evaluated")
                cells.append(f"n/a[^{notes.setdefault(reason, len(notes) + 1)}]")
            else:
                cells.append(with_se(value, result.get("stderr", {}).get(key)))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    if any(t["kind"] == "options" for t in tasks.values()):
        lines.append(
            "Option tasks are rank-classified with lm-evaluation-harness's definitions, so these numbers compare with "
            "its own: acc picks the option whose tokens (after a space, no end token) have the highest summed "
            "log-likelihood, acc_norm the highest per character of the option string. results.json also has acc_eos, "
            "kdpipe's variant that adds the end token each answer is trained with."
        )
    budgets = {t["max_new_tokens"] for t in tasks.values() if t["kind"] == "generate"}
    if budgets:
        lines.append(f"Generation tasks: greedy, at most {'/'.join(map(str, sorted(budgets)))} new tokens.")
    lines.append("Models: " + ", ".join(f"{name} = `{m['path']}`" for name, m in models.items()) + ".")
    lines.extend(_comparison_table(results, cols))
    lines.extend(_task_table(results))
    if notes:
        lines.append("")
        lines.extend(f"[^{n}]: {reason}" for reason, n in notes.items())
    return "\n".join(lines) + "\n"


def _comparison_table(results: dict, cols: list[tuple[str, str]]) -> list[str]:
    found = results.get("comparisons") or []
    if not found:
        return []
    pairs = list(dict.fromkeys((c["a"], c["b"]) for c in found))
    by = {(c["a"], c["b"], c["task"], c["metric"]): c for c in found}
    lines = [
        "",
        "## Paired differences (same examples)",
        "",
        "Row `b − a`: the mean per-example difference and its standard error (BLEU: paired bootstrap); "
        f"`*` where |difference| > {SIGNIFICANT} standard errors.",
        "",
        "| b − a | " + " | ".join(f"{task} {SHORT.get(key, key)}" for task, key in cols) + " |",
        "|:--" + "|--:" * len(cols) + "|",
    ]
    for a, b in pairs:
        cells = []
        for task, key in cols:
            c = by.get((a, b, task, key))
            if c is None:
                cells.append("n/a")
                continue
            star = "*" if c["stderr"] and abs(c["difference"]) > SIGNIFICANT * c["stderr"] else ""
            cells.append(with_se(c["difference"], c["stderr"], sign=True) + star)
        lines.append(f"| {b} − {a} | " + " | ".join(cells) + " |")
    return lines


def _task_table(results: dict) -> list[str]:
    models = results["models"]
    lines = [
        "",
        "## Tasks",
        "",
        "| task | split | n | trained on | skipped source rows | prompts cut (middle) | read from |",
        "|:--|:--|--:|:--|:--|:--|:--|",
    ]
    for task, t in results["tasks"].items():
        skipped = ", ".join(f"{reason}: {n}" for reason, n in t.get("skipped", {}).items()) or "none"
        cut = ", ".join(
            f"{name} {m['results'][task].get('truncated_prompts', 0)}"
            for name, m in models.items()
            if task in m["results"]
        )
        trained = _trained_cell(t.get("trained_on") or {})
        lines.append(
            f"| {task} | {t['split']} | {t['n']} | {trained} | {skipped} | {cut} | `{t.get('source') or '?'}` |"
        )
    if any((t.get("trained_on") or {}).get("checked_against") for t in results["tasks"].values()):
        lines.append("")
        lines.append(
            "Trained on: evaluation records that are training examples of a model here (under any template of the "
            "task), checked against "
            + "; ".join(
                dict.fromkeys(s for t in results["tasks"].values() for s in t["trained_on"]["checked_against"])
            )
            + ". Left out ones are replaced by the next records of the split; included ones (--include-trained) "
            "are scored."
        )
    ceilings = [
        f"{task} {t['references_coverage']:.1f}" for task, t in results["tasks"].items() if "references_coverage" in t
    ]
    if ceilings:
        lines.append("")
        lines.append("Coverage ceiling, the references' own coverage of their concepts: " + ", ".join(ceilings) + ".")
    return lines


def _trained_cell(found: dict) -> str:
    if not found.get("checked_against"):
        return "not checked"
    if "included" in found:
        return f"{found['included']} included"
    return f"{found.get('left_out', 0)} left out"


def plot(results: dict, path: Path) -> None:
    """Grouped bars with standard-error whiskers and their values: one group per (task, metric), one bar per
    model. A metric that could not be computed gets a grey "n/a" mark, never a bar, so it is not read as 0."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend

    cols = columns(results)
    models = results["models"]
    tasks = results["tasks"]
    width = 0.8 / max(len(models), 1)
    crowded = len(cols) > 8  # beyond that the task names under the bars run into each other
    fig = Figure(figsize=(max(7.0, 0.45 * len(cols) * max(1, len(models)) + 2.5), 5.5), layout="constrained")
    ax = fig.subplots()
    for m, (name, model) in enumerate(models.items()):
        xs, heights, errors, missing = [], [], [], []
        for c, (task, key) in enumerate(cols):
            result = model["results"].get(task, {})
            value = result.get("values", {}).get(key)
            x = c - 0.4 + width * (m + 0.5)
            if value is None:
                missing.append(x)
                continue
            xs.append(x)
            heights.append(value)
            errors.append(result.get("stderr", {}).get(key) or 0.0)
        bars = ax.bar(xs, heights, width=width, label=name, yerr=errors, capsize=2, error_kw={"lw": 0.8})
        ax.bar_label(bars, labels=[f"{h:.1f}" for h in heights], fontsize=6, rotation=90 if crowded else 0, padding=2)
        for x in missing:
            ax.text(x, 1, "n/a", ha="center", va="bottom", rotation=90, fontsize=7, color="0.45", style="italic")
    labels = [f"{task}\n{SHORT.get(key, key)}\nn={tasks[task]['n']}" for task, key in cols]
    if crowded:  # one slanted line each, anchored at its right end, so neighbours never overlap
        labels = [label.replace("\n", " ", 1).replace("\n", ", ") for label in labels]
        ax.set_xticks(range(len(cols)), labels, fontsize=7, rotation=45, ha="right", rotation_mode="anchor")
    else:
        ax.set_xticks(range(len(cols)), labels, fontsize=8)
    ax.set_ylim(0, 110)
    ax.set_ylabel("score (0–100), whiskers ± 1 standard error")
    splits = ", ".join(sorted({t["split"] for t in tasks.values()}))
    ax.set_title(f"kdpipe eval: {splits} split, template {results['template_id']}, {_limit(results)}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: bars reach 100
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=120)
