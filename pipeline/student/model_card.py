"""The model card (``README.md``) of a saved student, as Hugging Face users expect one beside the weights.

``write`` renders it from the distill run record (the config and the teacher cache's provenance, the same
dict as ``kdpipe_distill_config.json``): base model, teacher, cache, loss and λ, training data and settings.
``refresh_eval`` puts an evaluation table into the card of a local student that ``kdpipe eval`` evaluated,
between two markers, so a later evaluation replaces it instead of appending a second one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import cache_schema
from pipeline import __version__

CARD = "README.md"
EVAL_START = "<!-- kdpipe eval: start (rewritten by each `kdpipe eval` of this model) -->"
EVAL_END = "<!-- kdpipe eval: end -->"
_NO_EVAL = "Not evaluated yet: `kdpipe eval --model <this folder>` writes its results here."


def write(out: Path, record: dict) -> Path:
    """Write ``out/README.md`` for the student saved in ``out``; an eval section already there is kept."""
    config, cache = record["config"], record["cache"]
    teacher = cache.get(cache_schema.ATTR_TEACHER) or {}
    mixture = cache.get(cache_schema.ATTR_MIXTURE) or {}
    weight = config["uld_weight"]
    loss = "CE (plain fine-tuning, the FT baseline)" if weight == 0 else f"CE + λ·ULD with λ = {weight}"
    tasks = ", ".join(f"{name} ({n})" for name, n in (mixture.get("tasks") or {}).items()) or "see the cache"
    # Hub metadata: base_model must be a Hub id, so a local student folder is named in the text only.
    base = [] if Path(config["student"]).exists() else [f"base_model: {config['student']}"]
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        *base,
        "tags:",
        "- knowledge-distillation",
        "- kdpipe",
        "---",
        "",
        f"# {out.name}",
        "",
        f"`{config['student']}` trained with kdpipe {__version__} from a cache of teacher `{teacher.get('id')}`'s "
        f"top-k answer distributions (Universal Logit Distillation, https://arxiv.org/abs/2402.12030).",
        "",
        "## Training",
        "",
        "| | |",
        "|:--|:--|",
        f"| base model (student) | `{config['student']}`"
        + (f" @ `{config['revision']}`" if config.get("revision") else "")
        + " |",
        f"| teacher | `{teacher.get('id')}` @ `{teacher.get('revision')}`, {teacher.get('quantization')} |",
        f"| loss | {loss}; student temperature {config['student_temperature']} |",
        f"| teacher cache | `{cache.get('path')}`: {cache.get('examples')} examples, {cache.get('rows')} answer rows, "
        f"top-{cache.get(cache_schema.ATTR_TOP_K)} at T = {cache.get(cache_schema.ATTR_TEMPERATURE)}, "
        f"{cache.get(cache_schema.ATTR_ANSWERS)} answers, schema v{cache.get(cache_schema.ATTR_VERSION)}, "
        f"attrs digest `{cache.get(cache_schema.ATTR_DIGEST)}` |",
        f"| data | {mixture.get('split', '?')} split of: {tasks}; seed {mixture.get('seed')}, "
        f"mixture fingerprint `{cache.get(cache_schema.ATTR_MIXTURE_FP)}` |",
        f"| optimisation | AdamW, lr {config['lr']} ({config['schedule']}), batch {config['batch_size']} × "
        f"{config['grad_accum']} accumulation, {config.get('steps') or str(config['epochs']) + ' epoch(s)'}, "
        f"seed {config['seed']} |",
        "",
        "The full configuration and cache provenance are in `kdpipe_distill_config.json` beside this card.",
        "",
        "## Evaluation",
        "",
        EVAL_START,
        _NO_EVAL,
        EVAL_END,
        "",
        "## Use",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        f'generate = pipeline("text-generation", model="{out.name}", batch_size=2)',
        'print(generate(["Translate to Spanish:\\n\\nGood morning.", "Summarize: ..."], max_new_tokens=32))',
        "```",
        "",
        "Prompts were followed by a space and the answer, then EOS, in training (kdpipe's text contract); the "
        "tokenizer pads with its EOS token, on the left.",
        "",
    ]
    text = "\n".join(lines)
    previous = out / CARD
    if previous.is_file():
        old = _eval_section(previous.read_text(encoding="utf-8"))
        if old is not None:
            text = _with_eval(text, old)
    _write_text(previous, text)
    return previous


def refresh_eval(model_dir: Path, name: str, results: dict, eval_out: Path) -> bool:
    """Put this evaluation's table for ``name`` into ``model_dir``'s card; False when there is no kdpipe card."""
    card = model_dir / CARD
    if not card.is_file():
        return False
    text = card.read_text(encoding="utf-8")
    if _eval_section(text) is None:
        return False
    _write_text(card, _with_eval(text, _eval_table(name, results, eval_out)))
    return True


def _eval_table(name: str, results: dict, eval_out: Path) -> str:
    model = results["models"][name]
    lines = [
        f"`kdpipe eval` ({results['created']}, template {results['template_id']}, limit "
        f"{results['config'].get('limit') or 'none'}; full results in `{eval_out / 'results.json'}`). "
        "Values on a 0–100 scale ± their standard error.",
        "",
        "| task | split | n | metric | value ± se |",
        "|:--|:--|--:|:--|--:|",
    ]
    for task, entry in results["tasks"].items():
        result = model["results"].get(task, {})
        for key, value in result.get("values", {}).items():
            se = result.get("stderr", {}).get(key)
            cell = "n/a" if value is None else f"{value:.1f}" + (f" ± {se:.1f}" if se is not None else "")
            lines.append(f"| {task} | {entry['split']} | {result.get('n')} | {key} | {cell} |")
    return "\n".join(lines)


def _eval_section(text: str) -> str | None:
    match = re.search(re.escape(EVAL_START) + r"\n(.*?)\n?" + re.escape(EVAL_END), text, flags=re.DOTALL)
    return None if match is None else match[1]


def _with_eval(text: str, section: str) -> str:
    pattern = re.escape(EVAL_START) + r".*?" + re.escape(EVAL_END)
    return re.sub(pattern, lambda _: f"{EVAL_START}\n{section}\n{EVAL_END}", text, count=1, flags=re.DOTALL)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
