"""Stage 3, eval: several models side by side on the evaluation split of the tasks.

validate → check every model can be found → load every task's records (template 0; a task may be the user's own
file, ``pipeline.tasks.files``, whose metrics follow its references unless ``--metric`` names them), leaving out the
ones a model was trained on → per model: load it once, then per task rank-classify the options (option tasks) or
generate greedily (the others), score with :func:`pipeline.evaluation.metrics.score` and write
``predictions/<model>/<task>.jsonl`` → write ``results.json``, ``results.md`` and ``results.png``
(:mod:`pipeline.evaluation.report`).

Option tasks report lm-eval's two accuracies under lm-eval's names and definitions: ``acc`` (argmax of the
summed log-likelihood of the option's tokens, no end token) and ``acc_norm`` (argmax of that sum divided by the
option's length in characters, the option string alone), and kdpipe's ``acc_eos`` (``acc`` with the answer's EOS
added; see ``OPTION_RULES``). Every value has its standard error
(:mod:`pipeline.evaluation.metrics`), and ``results.json`` holds, for every pair of models, the paired difference on
the same examples with its standard error. A prediction row carries the example's source id (SQuAD qid, SAMSum id,
...), its position and whether its prompt was cut.

Examples a model was trained on are never scored by default: a kdpipe student carries the record of the cache it
was distilled from (``pipeline.trained_on``), ``--exclude-cache`` names more caches, and an evaluation record
whose prompt under any template of its task is among them is left out for every model (so the paired comparisons
stay on the same examples), the next records of the split taking its place; results.md counts them, and
``--include-trained`` keeps them (counted too).

A finished (model, task) leaves a small ``<task>.json`` beside its predictions recording the settings and model
files it was made with; a rerun with ``resume`` reuses it when they are the same, so an interrupted evaluation
continues where it stopped. Outputs of an earlier run in ``out`` that this run does not cover (other models or
tasks) are moved to ``out/replaced/<time>/`` with the earlier results, so the folder never mixes two runs.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import platform
import re
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import torch

import cache_schema
from pipeline import __version__, model_card, trained_on
from pipeline.atomic import write_atomic
from pipeline.config import ConfigError, EvalConfig, to_dict
from pipeline.errors import ModelError
from pipeline.evaluation import harness, metrics, report
from pipeline.evaluation.inference import EvalModel
from pipeline.models import load_model, pick_device, source_kwargs
from pipeline.tasks import Record, Task, TaskError, render, resolve_tasks, task_split
from pipeline.tasks.files import FileSource, eval_metrics
from pipeline.text import TEXT_FILE, chat_template_for

log = logging.getLogger(__name__)

TEMPLATE_ID = 0  # evaluation uses each task's first template
RESULTS_FORMAT = 1  # version of the results.json layout


@dataclass(frozen=True)
class _TaskData:
    task: Task
    split: str
    records: list[Record]
    prompts: list[str]
    skipped: dict[str, int]  # malformed source rows left out, by reason
    max_new_tokens: int
    source: str  # the file read, or the Hub dataset
    trained_on: dict  # records left out (or included) as ones a model was trained on, and what was checked
    file: dict | None = None  # a file task's provenance: sha256, rows, the columns read


@dataclass(frozen=True)
class EvalResult:
    out: Path
    results: dict  # what results.json holds
    table: str  # results.md


def run(cfg: EvalConfig) -> EvalResult:
    """Evaluate every model of ``cfg`` on every task and write the results under ``cfg.out``."""
    resolved = _check_inputs(cfg)
    device = pick_device(cfg.device)
    names = model_names(cfg.models, cfg.names)
    for path in cfg.models:
        _check_model(path)
    trained = _training_records(cfg)
    tasks = [_load_task(spec, task, cfg, trained) for spec, task in zip(cfg.tasks, resolved, strict=True)]
    out = Path(cfg.out)
    _set_aside_other_runs(out, names, [t.task.name for t in tasks])
    models: dict[str, dict] = {}
    for name, path in zip(names, cfg.models, strict=True):
        models[name] = _evaluate_model(name, path, tasks, cfg, device, out)
        models[name]["lm_eval"] = _harness_files(path, models[name], tasks, out, device)
    results = {
        "format_version": RESULTS_FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
        "config": to_dict(cfg),
        "template_id": TEMPLATE_ID,
        "tasks": {t.task.name: _task_entry(t, cfg) for t in tasks},
        "models": models,
        "comparisons": _comparisons(out, models, tasks),
    }
    write_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
    table = report.markdown(results)
    write_atomic(out / "results.md", table)
    report.plot(results, out / "results.png")
    log.info("wrote %s, results.md and results.png", out / "results.json")
    for name, path in zip(names, cfg.models, strict=True):
        if model_card.refresh_eval(Path(path), name, results, out):
            log.info("%s: refreshed the eval table of its model card %s", name, Path(path) / model_card.CARD)
    return EvalResult(out, results, table)


def model_names(paths: tuple[str, ...], names: tuple[str, ...] = ()) -> list[str]:
    """Short unique names: the last path component, with as many parents as it takes to tell them apart."""
    if names:
        return list(names)
    parts = [Path(p).resolve().parts[1:] if Path(p).exists() else Path(p).parts for p in paths]
    parts = [tuple(re.sub(r"[^\w.-]+", "_", s) for s in p) or ("model",) for p in parts]
    candidates: list[str] = []
    for depth in range(1, max(len(p) for p in parts) + 1):
        candidates = ["-".join(p[-depth:]) for p in parts]
        if len(set(candidates)) == len(candidates):
            return candidates
    return [f"{c}-{i + 1}" for i, c in enumerate(candidates)]  # the same model given twice


# ---- inputs ---------------------------------------------------------------------------------------------------


def _check_inputs(cfg: EvalConfig) -> list[Task]:
    """What the config names exists: its tasks (built-in, or files with the columns asked), its folders on disk."""
    splits = {spec: task_split(spec, cfg.split, cfg.task_splits) for spec in cfg.tasks}
    try:
        tasks = resolve_tasks(list(cfg.tasks), cfg.fields, splits)
    except ValueError as e:
        raise ConfigError(f"--tasks: {e}") from None
    if cfg.data_dir is not None and not Path(cfg.data_dir).is_dir():
        raise ConfigError(f"--data-dir: no such folder {cfg.data_dir}")
    if cfg.bertscore_model is not None and not Path(cfg.bertscore_model).is_dir():
        raise ConfigError(f"--bertscore-model: no such folder {cfg.bertscore_model}")
    return tasks


def _training_records(cfg: EvalConfig) -> list[trained_on.TrainedOn]:
    """What the models were trained on: the record beside each model that has one, and the --exclude-cache caches."""
    found = []
    for path in cfg.models:
        try:
            record = trained_on.read(path) if Path(path).is_dir() else None
        except trained_on.TrainedOnError as e:
            raise ModelError(f"--model {path!r}: {e}") from None
        if record is not None:
            found.append(record)
        elif Path(path, TEXT_FILE).is_file():  # a kdpipe student from before the record existed
            log.warning(
                "%s has no %s: the examples it was distilled from cannot be left out; name its cache with "
                "--exclude-cache",
                path,
                trained_on.FILE,
            )
    for cache in cfg.exclude_cache:
        found.append(trained_on.from_cache(cache_schema.open_cache(cache)))
    return found


def _load_task(spec: str, task: Task, cfg: EvalConfig, trained: list[trained_on.TrainedOn]) -> _TaskData:
    name = task.name
    split = task_split(spec, cfg.split, cfg.task_splits)
    # leaving trained-on records out, the next records of the split take their place: read them all
    read_limit = cfg.limit if cfg.include_trained or not trained else None
    try:
        loaded = task.load(split, Path(cfg.data_dir) if cfg.data_dir else None, read_limit, cfg.seed)
    except ConnectionError as e:  # datasets offline, or no network: one line, not a 58-line traceback
        hub = getattr(task.load, "hub_id", name)
        raise TaskError(
            f"task {name!r}: cannot load {hub} from the Hugging Face Hub ({e}); give --data-dir, a folder with "
            f"the task's release files in <data-dir>/{getattr(task.load, 'folder', name)}/"
        ) from None
    if unanswered := sum(not r.targets for r in loaded.records):
        raise TaskError(
            f"{loaded.source or spec}: {unanswered} of its {len(loaded.records)} rows read have no answer to score "
            "against; evaluate on data with answers"
        )
    records, overlap = _without_trained(task, loaded.records, trained, cfg)
    if not records:
        left_out = f", {overlap['left_out']} left out as trained on" if overlap.get("left_out") else ""
        raise TaskError(
            f"task {name!r}: no usable records in its {split!r} split (skipped: {dict(loaded.skipped)}{left_out})"
        )
    if isinstance(task.load, FileSource):
        task = replace(task, metrics=eval_metrics(task, records, cfg.metric))
    if loaded.skipped:
        log.warning("%s: left out malformed rows %s", name, dict(loaded.skipped))
    if overlap.get("left_out"):
        log.warning("%s: left out %d %s records the models were trained on", name, overlap["left_out"], split)
    if overlap.get("included"):
        log.warning("%s: %d of the evaluated records are ones the models were trained on", name, overlap["included"])
    prompts = [render(task, r, TEMPLATE_ID, cfg.field_caps)[0] for r in records]
    max_new = min(task.max_new_tokens, cfg.max_new_tokens or task.max_new_tokens)
    provenance = task.load.provenance(split) if isinstance(task.load, FileSource) else None
    return _TaskData(task, split, records, prompts, dict(loaded.skipped), max_new, loaded.source, overlap, provenance)


def _without_trained(
    task: Task, records: list[Record], trained: list[trained_on.TrainedOn], cfg: EvalConfig
) -> tuple[list[Record], dict]:
    """The first ``cfg.limit`` records no model was trained on (with --include-trained: the first ``cfg.limit``),
    and what was found: the records left out for it (or included anyway) and the records checked against."""
    overlap: dict = {"checked_against": [t.source for t in trained]}
    if not trained:
        return records[: cfg.limit] if cfg.limit else records, overlap

    def seen(record: Record) -> bool:
        return any(t.seen(task, record) for t in trained)

    if cfg.include_trained:
        kept = records[: cfg.limit] if cfg.limit else records
        overlap["included"] = sum(map(seen, kept))
        return kept, overlap
    kept, left_out = [], 0
    for record in records:
        if cfg.limit and len(kept) == cfg.limit:
            break
        if seen(record):
            left_out += 1
        else:
            kept.append(record)
    overlap["left_out"] = left_out
    return kept, overlap


def _check_model(path: str) -> None:
    """Fail in a second, before hours of evaluation, when a model is neither a local folder nor reachable."""
    if Path(path).is_dir():
        return
    from transformers import AutoConfig

    source, extra = source_kwargs(path, "--model")  # a .gguf file: checked here, read from its folder
    try:
        AutoConfig.from_pretrained(source, **extra)
    except (OSError, ValueError):
        raise ModelError(f"--model {path!r}: no such folder, and no hub model of that name could be loaded") from None


def _task_entry(data: _TaskData, cfg: EvalConfig) -> dict:
    task = data.task
    entry = {
        "kind": task.kind,
        "metrics": list(task.metrics),
        "split": data.split,
        "n": len(data.records),
        "skipped": data.skipped,
        "source": data.source,
        "limit": cfg.limit,
        "trained_on": data.trained_on,
    }
    if data.file is not None:
        entry["file"] = data.file
    if task.kind == "generate":
        entry["max_new_tokens"] = data.max_new_tokens
    if "coverage" in task.metrics:  # the ceiling: the human references' own coverage of their concepts
        references = [(ref, list(r.concepts)) for r in data.records for ref in r.targets]
        entry["references_coverage"] = metrics.coverage([p for p, _ in references], [c for _, c in references])[
            "coverage"
        ]
    return entry


# ---- one model ------------------------------------------------------------------------------------------------


def _evaluate_model(
    name: str, path: str, tasks: list[_TaskData], cfg: EvalConfig, device: torch.device, out: Path
) -> dict:
    folder = out / "predictions" / name
    folder.mkdir(parents=True, exist_ok=True)
    chat = chat_template_for(path, cfg.chat_template)
    stamps = {t.task.name: _stamp(path, t, cfg, device, chat) for t in tasks}
    done = {t: r for t, r in ((t, _reusable(folder / f"{t}.json", s, cfg.resume)) for t, s in stamps.items()) if r}
    entry: dict = {"path": path, "results": {}}
    if len(done) == len(tasks):
        log.info("%s: every task already evaluated with these settings (resume)", name)
        entry["info"] = next(iter(done.values()))["model_info"]
    else:
        model, tokenizer, entry["info"] = load_model(path, quantize=cfg.quantize, device=device)
        lm = EvalModel(
            model, tokenizer, max_prompt_tokens=cfg.max_prompt_tokens, batch_size=cfg.batch_size, chat_template=chat
        )
        entry["info"]["text"] = lm.text.spec.to_dict()
        entry["info"]["untied_head"] = not getattr(model.config, "tie_word_embeddings", True)  # keep_untied_head
    for data in tasks:
        task = data.task.name
        if task in done:
            log.info("%s / %s: reusing %s", name, task, folder / f"{task}.json")
            entry["results"][task] = {**done[task]["result"], "reused": True}
            continue
        start = time.monotonic()
        result, rows = _evaluate_task(lm, data, cfg, desc=f"{name} {task}")
        result["seconds"] = round(time.monotonic() - start, 2)
        result["predictions"] = f"predictions/{name}/{task}.jsonl"
        write_atomic(folder / f"{task}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        # Written last: its presence says the predictions beside it are complete.
        marker = {"stamp": stamps[task], "model_info": entry["info"], "result": result}
        write_atomic(folder / f"{task}.json", json.dumps(marker, indent=2) + "\n")
        entry["results"][task] = {**result, "reused": False}
        log.info("%s / %s: %s", name, task, {k: v if v is None else round(v, 2) for k, v in result["values"].items()})
    if len(done) < len(tasks):
        del model, lm
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return entry


def _evaluate_task(lm: EvalModel, data: _TaskData, cfg: EvalConfig, desc: str) -> tuple[dict, list[dict]]:
    """Scores and one JSONL row per example (``prediction`` and ``references``, as ``eval score`` reads them)."""
    if data.task.kind == "options":
        scores, rows = _rank_classify(lm, data, desc)
    else:
        scores, rows = _generate(lm, data, cfg, desc)
    cut = lm.cut  # per prompt of the call above
    for i, (row, record, was_cut) in enumerate(zip(rows, data.records, cut, strict=True)):
        row["scores"] = {k: round(v[i], 6) for k, v in scores.per_example.items()}
        row.update(index=i, id=record.source_id, truncated=was_cut)
    if truncated := sum(cut):
        log.warning("%s: %d of %d prompts were cut to fit (their middle)", desc, truncated, len(rows))
    return {
        "values": scores.values,
        "stderr": scores.stderr,
        "not_computed": scores.not_computed,
        "n": len(rows),
        "truncated_prompts": truncated,
    }, rows


def _rank_classify(lm: EvalModel, data: _TaskData, desc: str) -> tuple[metrics.Scores, list[dict]]:
    records = data.records
    scores = lm.score_options(data.prompts, [r.options for r in records], desc=desc)
    picks = {key: [rule(s, r.options) for s, r in zip(scores, records, strict=True)] for key, rule in OPTION_RULES}
    labels = [r.label for r in records]
    references = [[r.options[r.label]] for r in records]
    predictions = [r.options[j] for r, j in zip(records, picks["acc"], strict=True)]
    acc = metrics.score(data.task.metrics, predictions, references, predicted_labels=picks["acc"], labels=labels)
    values, stderr, per_example = dict(acc.values), dict(acc.stderr), dict(acc.per_example)
    for key, picked in picks.items():
        if key != "acc":
            other = metrics.score(("accuracy",), predictions, references, predicted_labels=picked, labels=labels)
            values[key], stderr[key] = other.values["acc"], other.stderr["acc"]
            per_example[key] = other.per_example["acc"]
    result = metrics.Scores(values, dict(acc.not_computed), stderr, acc.n, per_example)
    rows = [
        {
            "prediction": r.options[picks["acc"][i]],
            "references": [r.options[r.label]],
            "label": r.label,
            "predicted_label": picks["acc"][i],
            "predicted_label_norm": picks["acc_norm"][i],
            "predicted_label_eos": picks["acc_eos"][i],
            "options": list(r.options),
            "logprob_sum": [round(o.logprob_sum, 5) for o in s],
            "eos_logprob": [round(o.eos_logprob, 5) for o in s],
            "n_tokens": [o.n_tokens for o in s],
            "prompt": prompt,
        }
        for i, (r, s, prompt) in enumerate(zip(records, scores, data.prompts, strict=True))
    ]
    return result, rows


def _argmax(values: list[float]) -> int:
    """The first index of the largest value, as numpy's argmax (lm-eval's) breaks ties."""
    return max(range(len(values)), key=lambda j: (values[j], -j))


# How each accuracy of an option task picks its option, from the option scores and the option strings.
# acc and acc_norm are lm-eval's (lm_eval/api/task.py, multiple_choice): the log-likelihood of the option's tokens
# after the target delimiter " ", and that divided by len(option) in characters (the choice string itself, without
# the delimiter). acc_eos is kdpipe's own: acc with the EOS that ends every answer in training added, so an option
# that is a prefix of another is not favoured by stopping early.
OPTION_RULES = (
    ("acc", lambda s, options: _argmax([o.logprob_sum for o in s])),
    ("acc_norm", lambda s, options: _argmax([o.logprob_sum / len(t) for o, t in zip(s, options, strict=True)])),
    ("acc_eos", lambda s, options: _argmax([o.with_eos for o in s])),
)


def _generate(lm: EvalModel, data: _TaskData, cfg: EvalConfig, desc: str) -> tuple[metrics.Scores, list[dict]]:
    records = data.records
    predictions, ended = lm.generate(data.prompts, data.max_new_tokens, desc=desc, with_eos=True)
    references = [list(r.targets) for r in records]
    names = (*data.task.metrics, "bertscore") if cfg.bertscore_model else data.task.metrics
    concepts = [list(r.concepts) for r in records] if "coverage" in names else None
    result = metrics.score(names, predictions, references, concepts=concepts, bertscore_model=cfg.bertscore_model)
    # A degenerate model runs on to the token budget: the share of generations that never emitted EOS shows it.
    no_eos = [0.0 if e else 100.0 for e in ended]
    result.values["no_eos"] = metrics.mean(no_eos) if no_eos else 0.0
    result.stderr["no_eos"] = metrics.mean_stderr(no_eos)
    result.per_example["no_eos"] = no_eos
    rows = [
        {"prediction": p, "references": ref, "prompt": prompt, "eos": e}
        for p, ref, prompt, e in zip(predictions, references, data.prompts, ended, strict=True)
    ]
    if concepts:  # CommonGen: what coverage is measured against
        for row, c in zip(rows, concepts, strict=True):
            row["concepts"] = c
    return result, rows


def _harness_files(path: str, entry: dict, tasks: list[_TaskData], out: Path, device: torch.device) -> dict | None:
    """lm-eval task files of the option tasks for this model's layout, and the command that scores it on them."""
    options = [t for t in tasks if t.task.kind == "options"]
    if not options:
        return None
    layout = entry["info"]["text"]["layout"]
    names = [
        harness.write_task(
            out, t.task.name, layout, t.prompts, [r.options for r in t.records], [r.label for r in t.records]
        )
        for t in options
    ]
    command = harness.command(path, out, names, seq2seq=layout == "seq2seq", device=device.type)
    found = {"tasks": names, "command": command}
    if entry["info"].get("untied_head") and layout == "seq2seq":
        # pipeline.models.keep_untied_head: lm-eval's own loading calls tie_weights(), which under transformers 5
        # overwrites a T5 v1.1 head with the embeddings; a model loaded by kdpipe survives it
        found["note"] = (
            "lm_eval's tie_weights() overwrites this T5 model's own output head under transformers 5: score it "
            "through lm_eval's Python API with the model pipeline.models.load_model returns (HFLM(pretrained=model))"
        )
    return found


# ---- paired comparisons ---------------------------------------------------------------------------------------


def _comparisons(out: Path, models: dict[str, dict], tasks: list[_TaskData]) -> list[dict]:
    """For every pair of models (in the order given) and every task metric both computed: ``b − a`` on the same
    examples and its standard error, from the per-example scores in the prediction files."""
    names = list(models)
    found: list[dict] = []
    for data in tasks:
        task = data.task.name
        scored = {name: _rescored(out, models[name]["results"][task]) for name in names}
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                if scored[a] is None or scored[b] is None:
                    continue
                for key in models[a]["results"][task]["values"]:
                    diff = metrics.paired_difference(scored[a], scored[b], key)
                    if diff is not None:
                        found.append(
                            {
                                "a": a,
                                "b": b,
                                "task": task,
                                "metric": key,
                                "difference": diff.value,
                                "stderr": diff.stderr,
                                "n": diff.n,
                            }
                        )
    return found


def _rescored(out: Path, result: dict) -> metrics.Scores | None:
    """Per-example scores (and BLEU's resampling) of one (model, task) from its prediction rows."""
    rows = [
        json.loads(line) for line in (out / result["predictions"]).read_text(encoding="utf-8").splitlines() if line
    ]
    if any("scores" not in r for r in rows):
        return None  # written by an older kdpipe: no per-example scores
    per_example = {key: [r["scores"][key] for r in rows] for key in rows[0]["scores"]} if rows else {}
    resample = {}
    if result["values"].get("bleu") is not None:
        resample["bleu"] = metrics.bleu_resample([r["prediction"] for r in rows], [r["references"] for r in rows])
    return metrics.Scores(result["values"], n=len(rows), per_example=per_example, resample=resample)


# ---- resume ---------------------------------------------------------------------------------------------------


def _stamp(path: str, data: _TaskData, cfg: EvalConfig, device: torch.device, chat: bool) -> dict:
    """Everything a (model, task) result depends on; equal stamps mean the stored result can be reused."""
    folder = Path(path)
    files = (
        sorted([p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in folder.iterdir() if p.is_file())
        if folder.is_dir()
        else [[folder.name, folder.stat().st_size, folder.stat().st_mtime_ns]]
        if folder.is_file()  # a single-file model (GGUF)
        else None
    )
    return {
        "model": path,
        "model_files": files,
        "task": data.task.name,
        "metrics": list(data.task.metrics),
        "split": data.split,
        "limit": cfg.limit,
        "n": len(data.records),
        "seed": cfg.seed,
        "template_id": TEMPLATE_ID,
        "field_caps": cfg.field_caps,
        "max_prompt_tokens": cfg.max_prompt_tokens,
        "chat_template": chat,
        "max_new_tokens": data.max_new_tokens if data.task.kind == "generate" else None,
        "quantize": cfg.quantize,
        "device": device.type,
        "bertscore_model": cfg.bertscore_model,
        "data_dir": cfg.data_dir,
        "trained_on": data.trained_on,
        "examples_sha256": _digest(data),
        "kdpipe": __version__,
    }


def _digest(data: _TaskData) -> str:
    """The examples themselves: a data file edited in place changes the stamp."""
    payload = [
        (prompt, r.targets, r.options, r.label, r.concepts)
        for prompt, r in zip(data.prompts, data.records, strict=True)
    ]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def _reusable(marker: Path, stamp: dict, resume: bool) -> dict | None:
    if not resume or not marker.is_file() or not marker.with_suffix(".jsonl").is_file():
        return None
    try:
        saved = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return saved if saved.get("stamp") == json.loads(json.dumps(stamp)) else None


def _set_aside_other_runs(out: Path, names: list[str], tasks: list[str]) -> None:
    """Move what an earlier run left in ``out`` for other models or tasks to ``out/replaced/<time>/``.

    results.json always describes exactly the predictions beside it: a run with fewer tasks or models would
    otherwise leave the earlier ones' files next to a results.json that no longer lists them. The earlier
    results.json/md/png go along, so the replaced run stays readable as a whole.
    """
    predictions = out / "predictions"
    stale = [
        p
        for p in (sorted(predictions.glob("*/*")) if predictions.is_dir() else [])
        if p.parent.name not in names or p.name.removesuffix(".jsonl").removesuffix(".json") not in tasks
    ]
    if not stale:
        return
    dest = out / "replaced" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    for path in stale + [out / f"results.{ext}" for ext in ("json", "md", "png")]:
        if path.is_file():
            target = dest / path.relative_to(out)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    for folder in predictions.iterdir():
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    log.warning("%s: moved %d prediction files of models/tasks this run does not cover to %s", out, len(stale), dest)


# ---- output ---------------------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import transformers

    return {
        "kdpipe": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
