"""The demo's evidence, measured by one protocol: every arm tuned on the dev split with the same budget, then trained
over seeds and reported on a split nothing was tuned on.

Arms (``benchmarks/demo_arms.yaml``). Regime 1, the seed's: FT and CE + λ·{uld, uld-aligned, hybrid}, all from the
labelled cache (gold answers). Regime 2, the transfer set: CE on the teacher's own greedy answers over prompts
nobody labelled (sequence-level KD) and CE + λ·{uld, uld-aligned, hybrid}, all from the transfer cache. Every arm
trains for the same number of optimizer steps of the same batch size (the file's ``steps``), λ is the official 1.5,
and the learning rate is each arm's one tuned hyperparameter, searched over the same grid for every arm.

    python benchmarks/demo_protocol.py tune  --labelled runs/demo/cache --transfer runs/demo/cache-transfer \\
        --out runs/demo/protocol --write benchmarks/demo_arms.yaml  # make demo-tune: the grid on the dev split
    python benchmarks/demo_protocol.py seeds --labelled ... --transfer ... --seeds 0,1,2 --out runs/demo/protocol
                                                                      # make demo-seeds: every arm over seeds
    python benchmarks/demo_protocol.py flags ARM                      # the chosen distill flags of an arm

``tune`` trains every (arm, learning rate) with seed 0, evaluates it on the dev split (``dev_split``), writes
``grid.json`` and ``grid.md``, and with ``--write`` records in the arms file each arm's best learning rate and the
best arm of each regime, by the mean over tasks of each task's headline metric on dev. ``seeds`` trains every arm at
its chosen rate for each seed, evaluates on the reported split (``report_split``) and writes ``seeds.json`` and
``seeds.md``: mean ± sample sd per task and over tasks, and each arm's paired difference to FT (mean ± sd of the
per-seed differences). Runs resume: a finished student or evaluation is reused.
"""

from __future__ import annotations

import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

import click
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import ConfigError, DistillConfig, EvalConfig, TeacherCacheConfig, load  # noqa: E402
from pipeline.tasks import get_task  # noqa: E402

ARMS_FILE = Path(__file__).resolve().parent / "demo_arms.yaml"
HEADLINE = {"accuracy": "acc", "squad": "f1", "rouge_l": "rouge_l"}  # the value each task is read by


def headline(task: str) -> str:
    return HEADLINE[get_task(task).metrics[0]]


def against(arm: dict) -> str:
    """The FT arm an arm's paired difference is to: ``ft``, or the arm's ``against`` (same student)."""
    return arm.get("against", "ft")


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def read_arms(path: Path = ARMS_FILE) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise click.UsageError(f"{path}: cannot read the arms ({e})") from None
    for name, arm in data["arms"].items():
        if arm.get("cache") not in ("labelled", "transfer") or not isinstance(arm.get("flags"), dict):
            raise click.UsageError(f"{path}: arm {name!r} needs a cache (labelled or transfer) and flags")
    return data


def arm_config(
    base: DistillConfig, arm: dict, lr: float, seed: int, steps: int, cache: str, out: Path
) -> DistillConfig:
    """The distill config of one run of an arm: the demo config, the arm's flags, its rate, the steps and seed."""
    return replace(base, **arm["flags"], lr=lr, seed=seed, steps=steps, cache=cache, out=str(out), resume=True)


def _run(job: tuple[DistillConfig, EvalConfig]) -> dict:
    """Train one student (or find it trained) and evaluate it; in a worker process."""
    from stages import distill
    from stages import eval as evaluate

    cfg, ecfg = job
    distill.run(cfg)
    result = evaluate.run(replace(ecfg, models=(cfg.out,), names=("student",)))
    return {t: r["values"][headline(t)] for t, r in result.results["models"]["student"]["results"].items()}


def _teacher(teacher: str, ecfg: EvalConfig) -> dict:
    from stages import eval as evaluate

    result = evaluate.run(replace(ecfg, models=(teacher,), names=("teacher",)))
    return {t: r["values"][headline(t)] for t, r in result.results["models"]["teacher"]["results"].items()}


class Protocol:
    def __init__(self, config: str, labelled: str, transfer: str, out: str, jobs: int, arms: str):
        try:
            self.base = load(DistillConfig, config, "distill")
            self.teacher = load(TeacherCacheConfig, config, "teacher_cache").teacher
            self.ecfg = load(EvalConfig, config, "eval", {"models": (self.teacher,)})
        except ConfigError as e:
            raise click.UsageError(str(e)) from None
        self.arms = read_arms(Path(arms))
        self.caches = {"labelled": labelled, "transfer": transfer}
        self.root = Path(out)
        self.jobs = jobs
        self.tasks = list(self.ecfg.tasks)

    def eval_config(self, split: str, out: Path) -> EvalConfig:
        """Every model, the teacher too, is scored on the same records: those in neither cache (a student leaves
        out what it trained on by itself; without this, an arm of the other cache would be scored on others)."""
        return replace(self.ecfg, split=split, out=str(out), exclude_cache=tuple(self.caches.values()))

    def run_all(self, jobs: list[tuple[DistillConfig, EvalConfig]]) -> list[dict]:
        if self.jobs == 1:
            return [_run(job) for job in jobs]
        with ProcessPoolExecutor(self.jobs, mp_context=get_context("spawn")) as pool:
            return list(pool.map(_run, jobs))

    def job(self, name: str, lr: float, seed: int, split: str) -> tuple[DistillConfig, EvalConfig]:
        arm = self.arms["arms"][name]
        folder = self.root / "runs" / f"{name}-lr{lr:g}-seed{seed}"
        cfg = arm_config(self.base, arm, lr, seed, self.arms["steps"], self.caches[arm["cache"]], folder / "student")
        return cfg, self.eval_config(split, folder / f"eval-{split}")


def _mean(values: dict, tasks: list[str]) -> float:
    return statistics.fmean(values[t] for t in tasks)


def _grid_table(rows: list[dict], tasks: list[str], chosen: dict) -> str:
    lines = [
        "| arm | regime | lr | " + " | ".join(f"{t} {headline(t)}" for t in tasks) + " | dev mean | chosen |",
        "|:--|:--|--:|" + "--:|" * len(tasks) + "--:|:--|",
    ]
    for r in rows:
        cells = " | ".join(f"{r['values'][t]:.1f}" for t in tasks)
        mark = "**yes**" if chosen.get(r["arm"]) == r["lr"] else ""
        lines.append(f"| {r['arm']} | {r['regime']} | {r['lr']:g} | {cells} | {r['mean']:.1f} | {mark} |")
    return "\n".join(lines) + "\n"


def _seeds_table(runs: dict, tasks: list[str], teacher: dict, arms: dict) -> str:
    cols = [*tasks, "mean"]
    head = [f"{t} {headline(t)}" for t in tasks] + ["mean over tasks"]
    lines = ["| model | regime | " + " | ".join(head) + " |", "|:--|:--|" + "--:|" * len(cols)]
    teacher = {**teacher, "mean": _mean(teacher, tasks)}
    lines.append("| teacher | – | " + " | ".join(f"{teacher[c]:.1f}" for c in cols) + " |")
    with_mean = {
        name: {s: {**v, "mean": _mean(v, tasks)} for s, v in by_seed.items()} for name, by_seed in runs.items()
    }
    for name, by_seed in with_mean.items():
        cells = [mean_sd([v[c] for v in by_seed.values()]) for c in cols]
        regime = arms[name]["regime"]
        lines.append(f"| {name} | {regime} | " + " | ".join(f"{m:.1f} ± {sd:.1f}" for m, sd in cells) + " |")
    lines += ["", "Paired difference to FT of the same student, per seed (mean ± sd of the differences):", ""]
    lines += ["| arm − FT | regime | " + " | ".join(head) + " |", "|:--|:--|" + "--:|" * len(cols)]
    for name, by_seed in with_mean.items():
        base = against(arms[name])
        if name == base:
            continue
        ft = with_mean[base]
        diff = [mean_sd([by_seed[s][c] - ft[s][c] for s in by_seed]) for c in cols]
        regime = arms[name]["regime"]
        lines.append(f"| {name} − {base} | {regime} | " + " | ".join(f"{m:+.1f} ± {sd:.1f}" for m, sd in diff) + " |")
    return "\n".join(lines) + "\n"


def _options(fn):
    fn = click.option("--config", default="configs/demo.yaml", show_default=True)(fn)
    fn = click.option("--labelled", default="runs/demo/cache", show_default=True, help="The regime-1 cache.")(fn)
    fn = click.option("--transfer", default="runs/demo/cache-transfer", show_default=True, help="Regime 2.")(fn)
    fn = click.option("--out", default="runs/demo/protocol", show_default=True)(fn)
    fn = click.option("--jobs", default=2, show_default=True, help="Runs trained side by side.")(fn)
    fn = _arms_option(fn)
    return fn


def _arms_option(fn):
    help_ = "The arms file."
    return click.option("--arms", "arms_file", default=str(ARMS_FILE), show_default=True, help=help_)(fn)


@click.group()
def main() -> None:
    """Tune every demo arm on the dev split, then report every arm over seeds on the held-out split."""


@main.command()
@_options
@click.option("--write", type=click.Path(dir_okay=False), default=None, help="Record the choices in this arms file.")
def tune(config: str, labelled: str, transfer: str, out: str, jobs: int, arms_file: str, write: str | None) -> None:
    """Every (arm, learning rate) with seed 0 on the dev split; the best rate per arm, the best arm per regime."""
    protocol = Protocol(config, labelled, transfer, out, jobs, arms_file)
    arms, grid, split = protocol.arms, protocol.arms["lr_grid"], protocol.arms["dev_split"]
    keys = [(name, lr) for name in arms["arms"] for lr in grid]
    scores = protocol.run_all([protocol.job(name, lr, 0, split) for name, lr in keys])
    rows = [
        {
            "arm": name,
            "regime": arms["arms"][name]["regime"],
            "lr": lr,
            "values": values,
            "mean": _mean(values, protocol.tasks),
        }
        for (name, lr), values in zip(keys, scores, strict=True)
    ]
    chosen = {name: max((r for r in rows if r["arm"] == name), key=lambda r: r["mean"])["lr"] for name in arms["arms"]}
    best = {}
    for regime in sorted({a["regime"] for a in arms["arms"].values()}):
        candidates = [
            r
            for r in rows
            if r["regime"] == regime
            and r["arm"] != "ft"
            and against(arms["arms"][r["arm"]]) == "ft"
            and chosen[r["arm"]] == r["lr"]
        ]
        if candidates:  # a regime of FT alone keeps its headline
            best[f"regime{regime}"] = max(candidates, key=lambda r: r["mean"])["arm"]
    protocol.root.mkdir(parents=True, exist_ok=True)
    (protocol.root / "grid.json").write_text(json.dumps({"split": split, "rows": rows, "chosen": chosen}, indent=2))
    text = (
        f"# Every arm's learning-rate grid, seed 0, {split} split (the dev split; mean over tasks picks)\n\n"
        + _grid_table(rows, protocol.tasks, chosen)
        + "\nBest arm per regime on dev: "
        + ", ".join(f"{k}: {v}" for k, v in best.items())
        + "\n"
    )
    (protocol.root / "grid.md").write_text(text)
    click.echo(text)
    if write:
        _record(Path(write), chosen, best)


def _record(path: Path, chosen: dict, best: dict) -> None:
    """Set each arm's ``lr`` and the ``headline`` arms in the arms file, keeping its comments and order."""
    lines = path.read_text().splitlines()
    out, arm = [], None
    for line in lines:
        stripped = line.strip()
        if line.startswith("  ") and not line.startswith("    ") and stripped.endswith(":"):
            arm = stripped[:-1]
        if line.startswith("    lr:") and arm in chosen:
            line = f"    lr: {chosen[arm]:g}"
        for regime, name in best.items():
            if line.startswith(f"  {regime}:"):
                line = f"  {regime}: {name}"
        out.append(line)
    path.write_text("\n".join(out) + "\n")


@main.command()
@_options
@click.option("--seeds", default="0,1,2", show_default=True)
def seeds(config: str, labelled: str, transfer: str, out: str, jobs: int, arms_file: str, seeds: str) -> None:
    """Every arm at its chosen rate, for each seed, on the reported split: mean ± sd and paired differences to FT."""
    protocol = Protocol(config, labelled, transfer, out, jobs, arms_file)
    seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    if len(seed_list) < 2 or len(set(seed_list)) != len(seed_list):
        raise click.UsageError("--seeds: give at least two different seeds (an sd needs two)")
    arms, split = protocol.arms, protocol.arms["report_split"]
    keys = [(name, seed) for name in arms["arms"] for seed in seed_list]
    scores = protocol.run_all([protocol.job(n, arms["arms"][n]["lr"], s, split) for n, s in keys])
    runs: dict[str, dict[int, dict]] = {}
    for (name, seed), values in zip(keys, scores, strict=True):
        runs.setdefault(name, {})[seed] = values
    teacher = _teacher(protocol.teacher, protocol.eval_config(split, protocol.root / f"teacher-{split}"))
    text = (
        f"# Every arm over seeds {', '.join(map(str, seed_list))} ({split} split, {protocol.ecfg.limit} examples "
        f"per task; mean ± sample sd; {arms['steps']} steps each)\n\n"
        + _seeds_table(runs, protocol.tasks, teacher, arms["arms"])
    )
    protocol.root.mkdir(parents=True, exist_ok=True)
    (protocol.root / "seeds.json").write_text(
        json.dumps({"split": split, "seeds": seed_list, "teacher": teacher, "runs": runs}, indent=2)
    )
    (protocol.root / "seeds.md").write_text(text)
    click.echo(text)


def _chosen(arm: str, arms_file: str) -> tuple[str, dict, dict]:
    arms = read_arms(Path(arms_file))
    name = arms["headline"].get(arm, arm)
    if name not in arms["arms"]:
        raise click.UsageError(f"unknown arm {arm!r}; arms: {', '.join(arms['arms'])}, regime1, regime2")
    return name, arms["arms"][name], arms


@main.command()
@click.argument("arm")
@click.option("--labelled", default="runs/demo/cache", show_default=True, help="The regime-1 cache.")
@click.option("--transfer", default="runs/demo/cache-transfer", show_default=True, help="Regime 2.")
@_arms_option
def flags(arm: str, labelled: str, transfer: str, arms_file: str) -> None:
    """Print the distill flags of ARM (or of `regime1` / `regime2`, the best arm of each) at its chosen rate, its
    cache first."""
    _, spec, arms = _chosen(arm, arms_file)
    cache = {"labelled": labelled, "transfer": transfer}[spec["cache"]]
    values = {"cache": cache, **spec["flags"], "lr": spec["lr"], "steps": arms["steps"]}
    # the transfer cache holds the transfer set, not the config's teacher_cache mixture: on purpose
    accept = " --accept-cache" if spec["cache"] == "transfer" else ""
    click.echo(" ".join(f"--{k.replace('_', '-')} {v}" for k, v in values.items()) + accept)


@main.command()
@click.argument("arm")
@_arms_option
def arm(arm: str, arms_file: str) -> None:
    """Print the name of ARM (`regime1` / `regime2`: the best arm of that regime)."""
    click.echo(_chosen(arm, arms_file)[0])


if __name__ == "__main__":
    main()
