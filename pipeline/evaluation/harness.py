"""lm-evaluation-harness task files for the option tasks of an evaluation, so its numbers can be reproduced there.

``kdpipe eval`` writes, under ``<out>/lm_eval/``, one JSONL of the evaluated examples per option task (the prompt
exactly as kdpipe rendered it, the options, the label) and one task YAML that lm-eval's ``multiple_choice`` output
type reads: ``doc_to_text`` the prompt, ``doc_to_choice`` the options, ``doc_to_target`` the label, and the target
delimiter the model's layout joins prompt and answer with (a space in the causal and seq2seq layouts, nothing after
a chat template's assistant opening). lm-eval's ``acc`` and ``acc_norm`` on these files are kdpipe's ``acc`` and
``acc_norm`` (``stages.eval.OPTION_RULES``) as long as the model sees the same ids: a kdpipe student's saved
tokenizer adds its BOS by itself (``pipeline.text.add_bos_by_default``), and a prompt kdpipe cut to fit the context
(its middle) is cut by lm-eval from the left instead, so those rows may differ. See
https://github.com/EleutherAI/lm-evaluation-harness/blob/main/docs/task_guide.md for the YAML fields.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from pathlib import Path

from pipeline.atomic import write_atomic

FOLDER = "lm_eval"
TASK_PREFIX = "kdpipe_"  # lm-eval task names: kept apart from lm-eval's own (boolq, anli_r1, ...)
DELIMITER = {"causal": " ", "seq2seq": " ", "chat": ""}  # what separates the prompt from the option in each layout


def task_name(task: str, layout: str) -> str:
    """The lm-eval name of a kdpipe task's file for models of ``layout`` (the delimiter differs for chat)."""
    return f"{TASK_PREFIX}{task}" + ("_chat" if layout == "chat" else "")


def write_task(
    out: Path, task: str, layout: str, prompts: Sequence[str], options: Sequence[Sequence[str]], labels: Sequence[int]
) -> str:
    """Write the docs and the YAML of one option task under ``out/lm_eval``; returns the lm-eval task name."""
    folder = out / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    name = task_name(task, layout)
    docs = folder / f"{name}.jsonl"
    rows = (
        {"prompt": p, "options": list(o), "label": int(y)} for p, o, y in zip(prompts, options, labels, strict=True)
    )
    write_atomic(docs, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    # YAML by hand: JSON strings are valid YAML scalars, so every value is quoted safely
    yaml = "\n".join(
        [
            f"# kdpipe eval: {len(prompts)} examples of {task}, as kdpipe rendered them for a {layout} model",
            f"task: {name}",
            "dataset_path: json",
            "dataset_kwargs:",
            "  data_files:",
            f"    test: {json.dumps(str(docs.resolve()))}",
            "test_split: test",
            "output_type: multiple_choice",
            "doc_to_text: prompt",
            "doc_to_choice: options",
            "doc_to_target: label",
            f"target_delimiter: {json.dumps(DELIMITER[layout])}",
            "metric_list:",
            "  - metric: acc",
            "    aggregation: mean",
            "    higher_is_better: true",
            "  - metric: acc_norm",
            "    aggregation: mean",
            "    higher_is_better: true",
            "",
        ]
    )
    write_atomic(folder / f"{name}.yaml", yaml)
    return name


def command(model: str, out: Path, names: Sequence[str], *, seq2seq: bool = False, device: str = "cpu") -> str:
    """The ``lm_eval`` command line that scores ``model`` on the task files ``names`` written under ``out``.

    float32 as kdpipe evaluates on the CPU; batch size 1, so no padding enters the comparison.
    """
    model_args = f"pretrained={model},dtype=float32" + (",backend=seq2seq" if seq2seq else "")
    return shlex.join(
        [
            "lm_eval",
            "--model",
            "hf",
            "--model_args",
            model_args,
            "--include_path",
            str((out / FOLDER).resolve()),
            "--tasks",
            ",".join(names),
            "--batch_size",
            "1",
            "--device",
            device,
        ]
    )
