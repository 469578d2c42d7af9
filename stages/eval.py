"""Stage 3, eval: several models side by side on the evaluation split of the tasks.

validate → load every task's records (template 0) and check every model can be found, before any model
runs → per model: load it once, then per task rank-classify the options (option tasks) or generate greedily
(the others), score with :func:`pipeline.metrics.score` and write ``predictions/<model>/<task>.jsonl`` →
write ``results.json``, ``results.md`` and ``results.png`` (:mod:`pipeline.report`).

Option tasks report ``accuracy`` (argmax of the length-normalised log-likelihood, the headline) and
``accuracy_sum`` (argmax of the summed log-likelihood). A finished (model, task) leaves a small
``<task>.json`` beside its predictions recording the settings and model files it was made with; a rerun with
``resume`` reuses it when they are the same, so an interrupted evaluation continues where it stopped.
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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

from pipeline import __version__, metrics, report
from pipeline.config import EvalConfig, to_dict
from pipeline.models import ModelError, load_model, pick_device
from pipeline.scoring import EvalModel
from pipeline.tasks import Record, Task, TaskError, get_task, render
from pipeline.text import chat_template_for

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


@dataclass(frozen=True)
class EvalResult:
    out: Path
    results: dict  # what results.json holds
    table: str  # results.md


def run(cfg: EvalConfig) -> EvalResult:
    """Evaluate every model of ``cfg`` on every task and write the results under ``cfg.out``."""
    device = pick_device(cfg.device)
    names = model_names(cfg.models, cfg.names)
    tasks = [_load_task(name, cfg) for name in cfg.tasks]
    for path in cfg.models:
        _check_model(path)
    out = Path(cfg.out)
    models: dict[str, dict] = {}
    for name, path in zip(names, cfg.models, strict=True):
        models[name] = _evaluate_model(name, path, tasks, cfg, device, out)
    results = {
        "format_version": RESULTS_FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
        "config": to_dict(cfg),
        "template_id": TEMPLATE_ID,
        "tasks": {t.task.name: _task_entry(t, cfg) for t in tasks},
        "models": models,
    }
    _write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    table = report.markdown(results)
    _write_text(out / "results.md", table)
    report.plot(results, out / "results.png")
    log.info("wrote %s, results.md and results.png", out / "results.json")
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


def _load_task(name: str, cfg: EvalConfig) -> _TaskData:
    task = get_task(name)
    split = cfg.task_splits.get(name, cfg.split)
    loaded = task.load(split, Path(cfg.data_dir) if cfg.data_dir else None, cfg.limit, cfg.seed)
    records = loaded.records[: cfg.limit] if cfg.limit else loaded.records
    if not records:
        raise TaskError(f"task {name!r}: no usable records in its {split!r} split (skipped: {dict(loaded.skipped)})")
    if loaded.skipped:
        log.warning("%s: left out malformed rows %s", name, dict(loaded.skipped))
    prompts = [render(task, r, TEMPLATE_ID, cfg.field_caps)[0] for r in records]
    max_new = min(task.max_new_tokens, cfg.max_new_tokens or task.max_new_tokens)
    return _TaskData(task, split, records, prompts, dict(loaded.skipped), max_new)


def _check_model(path: str) -> None:
    """Fail in a second, before hours of evaluation, when a model is neither a local folder nor reachable."""
    if Path(path).is_dir():
        return
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(path)
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
    }
    if task.kind == "generate":
        entry["max_new_tokens"] = data.max_new_tokens
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
        _write_text(folder / f"{task}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        # Written last: its presence says the predictions beside it are complete.
        marker = {"stamp": stamps[task], "model_info": entry["info"], "result": result}
        _write_text(folder / f"{task}.json", json.dumps(marker, indent=2) + "\n")
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
    cut_before = lm.truncated
    if data.task.kind == "options":
        scores, rows = _rank_classify(lm, data, desc)
    else:
        scores, rows = _generate(lm, data, cfg, desc)
    truncated = lm.truncated - cut_before
    if truncated:
        log.warning("%s: %d of %d prompts were cut to fit (their middle)", desc, truncated, len(rows))
    return {
        "values": scores.values,
        "not_computed": scores.not_computed,
        "n": len(rows),
        "truncated_prompts": truncated,
    }, rows


def _rank_classify(lm: EvalModel, data: _TaskData, desc: str) -> tuple[metrics.Scores, list[dict]]:
    records = data.records
    scores = lm.score_options(data.prompts, [r.options for r in records], desc=desc)
    by_mean = [max(range(len(s)), key=lambda j, s=s: s[j].logprob_mean) for s in scores]
    by_sum = [max(range(len(s)), key=lambda j, s=s: s[j].logprob_sum) for s in scores]
    labels = [r.label for r in records]
    predictions = [r.options[j] for r, j in zip(records, by_mean, strict=True)]
    references = [[r.options[r.label]] for r in records]
    result = metrics.score(data.task.metrics, predictions, references, predicted_labels=by_mean, labels=labels)
    values = {**result.values, "accuracy_sum": metrics.accuracy(by_sum, labels)["accuracy"]}
    rows = [
        {
            "prediction": r.options[j],
            "references": [r.options[r.label]],
            "label": r.label,
            "predicted_label": j,
            "predicted_label_sum": k,
            "options": list(r.options),
            "logprob_sum": [round(o.logprob_sum, 5) for o in s],
            "n_tokens": [o.n_tokens for o in s],
            "prompt": prompt,
        }
        for r, j, k, s, prompt in zip(records, by_mean, by_sum, scores, data.prompts, strict=True)
    ]
    return metrics.Scores(values, dict(result.not_computed)), rows


def _generate(lm: EvalModel, data: _TaskData, cfg: EvalConfig, desc: str) -> tuple[metrics.Scores, list[dict]]:
    records = data.records
    predictions, ended = lm.generate(data.prompts, data.max_new_tokens, desc=desc, with_eos=True)
    references = [list(r.targets) for r in records]
    names = (*data.task.metrics, "bertscore") if cfg.bertscore_model else data.task.metrics
    concepts = [list(r.concepts) for r in records] if "coverage" in names else None
    result = metrics.score(names, predictions, references, concepts=concepts, bertscore_model=cfg.bertscore_model)
    # A degenerate model runs on to the token budget: the share of generations that never emitted EOS shows it.
    result.values["no_eos"] = 100.0 * ended.count(False) / max(len(ended), 1)
    rows = [
        {"prediction": p, "references": ref, "prompt": prompt, "eos": e}
        for p, ref, prompt, e in zip(predictions, references, data.prompts, ended, strict=True)
    ]
    if concepts:  # CommonGen: what coverage is measured against
        for row, c in zip(rows, concepts, strict=True):
            row["concepts"] = c
    return result, rows


# ---- resume ---------------------------------------------------------------------------------------------------


def _stamp(path: str, data: _TaskData, cfg: EvalConfig, device: torch.device, chat: bool) -> dict:
    """Everything a (model, task) result depends on; equal stamps mean the stored result can be reused."""
    folder = Path(path)
    files = (
        sorted([p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in folder.iterdir() if p.is_file())
        if folder.is_dir()
        else None
    )
    return {
        "model": path,
        "model_files": files,
        "task": data.task.name,
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


# ---- output ---------------------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import transformers

    return {
        "kdpipe": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def _write_text(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so a kill never leaves a half-written file under the name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
