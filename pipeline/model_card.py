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


def write(out: Path, record: dict, tokens: dict | None = None) -> Path:
    """Write ``out/README.md`` for the student saved in ``out``; an eval section already there is kept.

    ``tokens``: what the layout adds around the texts (``pipeline.text.layout_tokens`` of the saved tokenizer).
    """
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
        f"| teacher | `{teacher.get('id')}`"
        + (f" @ `{teacher['revision']}`" if teacher.get("revision") else " (no revision recorded)")
        + f", {teacher.get('quantization')} |",
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
        *_use_section(out, record.get("text") or {}, tokens),
    ]
    text = "\n".join(lines)
    previous = out / CARD
    if previous.is_file():
        old = _eval_section(previous.read_text(encoding="utf-8"))
        if old is not None:
            text = _with_eval(text, old)
    _write_text(previous, text)
    return previous


def _use_section(out: Path, text: dict, tokens: dict | None) -> list[str]:
    """How to show the model its text as kdpipe does, with transformers and with lm-evaluation-harness."""
    layout = text.get("layout", "causal")
    tokens = tokens or {}
    lines = ["## Use", ""]
    if layout == "chat":
        lines += [
            "Trained through its chat template: the prompt as the user turn, the answer as the assistant turn, closed "
            "by the template's end-of-turn token. Render prompts with `tokenizer.apply_chat_template([{'role': "
            "'user', 'content': prompt}], add_generation_prompt=True)`; `kdpipe generate --model <this folder>` does.",
            "",
        ]
        return lines
    adds = tokens.get("tokenizer_adds_bos")
    bos = tokens.get("bos_token")
    prompt, answer = tokens.get("prompt", "BOS + prompt"), tokens.get("answer", '" " + answer + EOS')
    lines += [
        f"Trained on `{prompt}`, then `{answer}` "
        "(kdpipe's text contract). "
        + (
            f"The saved tokenizer puts the BOS (`{bos}`) before a text by itself, so tokenizing with its defaults "
            "shows the model its prompts as training did; a transformers pipeline needs `add_special_tokens=True` "
            "for that (it tokenizes without special tokens by default)."
            if adds
            else f"Put the BOS (`{bos}`) before each prompt yourself: this tokenizer cannot add it by default."
            if bos
            else "The tokenizer has no BOS: prompts are used as they are."
        ),
        "",
        "Greedy answers as `kdpipe eval` and `kdpipe generate` give them:",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        f'generate = pipeline("text-generation", model="{out}")',
        'out = generate("Summarize this dialogue:\\n...", max_new_tokens=32, do_sample=False, return_full_text=False'
        + (", add_special_tokens=True" if adds else "")
        + ")",
        'print(out[0]["generated_text"].strip())',
        "```",
        "",
        "Rank classification as `kdpipe eval` scores it (its `acc` and `acc_norm` are lm-evaluation-harness's): "
        "`kdpipe eval --model <this folder> --out E` writes lm-eval task files for its option tasks under "
        "`E/lm_eval/` and the exact `lm_eval` command into the evaluation section above.",
        "",
        "Padding is the EOS token, on the left.",
        "",
    ]
    return lines


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
    harness = model.get("lm_eval")
    if harness:
        lines += [
            "",
            "`acc` and `acc_norm` are lm-evaluation-harness's; this command scores the same examples there and prints "
            "the same values (`acc_eos` is kdpipe's own, with the end token):",
            "",
            "```bash",
            harness["command"],
            "```",
        ]
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
