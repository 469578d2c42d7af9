"""The eval stage's human-readable outputs, drawn from the results.json content alone.

``markdown`` gives a table shaped like a paper's (models as rows, one column per task metric, values on a
0–100 scale, "n/a" with a footnote when a metric could not be computed); ``plot`` draws grouped bars per
task metric, one bar per model, with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

from pathlib import Path

# Column labels as papers print them; a key not listed is printed as is.
SHORT = {
    "accuracy": "acc",
    "accuracy_sum": "acc (sum)",
    "exact_match": "EM",
    "f1": "F1",
    "rouge_l": "R-L",
    "coverage": "cov",
    "bleu": "BLEU",
    "bertscore_precision": "BS-P",
    "bertscore_recall": "BS-R",
    "bertscore_f1": "BS-F1",
}


def columns(results: dict) -> list[tuple[str, str]]:
    """(task, metric key) pairs in task order, then in the order the metrics reported them."""
    cols: list[tuple[str, str]] = []
    for task in results["tasks"]:
        for model in results["models"].values():
            for key in model["results"].get(task, {}).get("values", {}):
                if (task, key) not in cols:
                    cols.append((task, key))
    return cols


def markdown(results: dict) -> str:
    cols = columns(results)
    tasks, models = results["tasks"], results["models"]
    splits = sorted({t["split"] for t in tasks.values()})
    lines = [
        f"# Evaluation ({', '.join(splits)} split{'s' if len(splits) > 1 else ''}, template {results['template_id']})",
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
                cells.append(f"{value:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Examples per task: "
        + ", ".join(f"{task} {t['n']}" + (f" ({t['split']})" if len(splits) > 1 else "") for task, t in tasks.items())
        + "."
    )
    if any(t["kind"] == "options" for t in tasks.values()):
        lines.append(
            "Option tasks are rank-classified: acc picks the option with the highest mean log-likelihood "
            "per token, acc (sum) the highest total."
        )
    budgets = {t["max_new_tokens"] for t in tasks.values() if t["kind"] == "generate"}
    if budgets:
        lines.append(f"Generation tasks: greedy, at most {'/'.join(map(str, sorted(budgets)))} new tokens.")
    lines.append("Models: " + ", ".join(f"{name} = `{m['path']}`" for name, m in models.items()) + ".")
    if notes:
        lines.append("")
        lines.extend(f"[^{n}]: {reason}" for reason, n in notes.items())
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Grouped bars: one group per (task, metric), one bar per model; metrics not computed are left out."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend

    cols = columns(results)
    models = results["models"]
    width = 0.8 / max(len(models), 1)
    fig = Figure(figsize=(max(6.0, 0.9 * len(cols) * max(1, len(models)) / 2 + 2), 4.5), layout="constrained")
    ax = fig.subplots()
    for m, (name, model) in enumerate(models.items()):
        xs, heights = [], []
        for c, (task, key) in enumerate(cols):
            value = model["results"].get(task, {}).get("values", {}).get(key)
            if value is not None:
                xs.append(c - 0.4 + width * (m + 0.5))
                heights.append(value)
        ax.bar(xs, heights, width=width, label=name)
    ax.set_xticks(range(len(cols)), [f"{task}\n{SHORT.get(key, key)}" for task, key in cols], fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("score (0–100)")
    ax.set_title("kdpipe eval")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: bars reach 100
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=120)
