"""The eval stage's config (``kdpipe eval``): which models, on which tasks, scored how."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import shared
from pipeline.config.framework import ConfigError, check_all_choices, check_positive, option


@dataclass(frozen=True)
class EvalConfig:
    models: tuple[str, ...] = option(
        help="Model to evaluate: a local directory or a hub id; repeat for several.", factory=tuple
    )
    names: tuple[str, ...] = option(
        help="Short name per --model, in the same order (default: from the path).", factory=tuple
    )
    tasks: tuple[str, ...] = option(
        help="Tasks to evaluate, comma-separated or repeated; a task may be your own file (.jsonl, .json, .csv, "
        ".parquet) or hf:ORG/NAME[:CONFIG][@SPLIT].",
        factory=lambda: tuple(shared.DEMO_MIXTURE),
        comma_list=True,
    )
    fields: dict[str, str] = shared.fields()
    metric: tuple[str, ...] = option(
        help="Metrics of file tasks that generate, comma-separated or repeated (rouge_l, squad, bleu, accuracy, "
        "bertscore); default: rouge_l, plus squad (exact match, F1) when the references are short. Options files "
        "are rank-classified (acc, acc_norm) whatever this says; built-in tasks keep their own metrics.",
        factory=tuple,
        comma_list=True,
    )
    data_dir: str | None = shared.data_dir()
    split: str = option("validation", "Split of each task to evaluate on.", choices=("validation", "test"))
    task_splits: dict[str, str] = shared.task_splits()
    limit: int | None = option(None, "Evaluate the first N examples of each task.")
    seed: int = option(0, "Seed handed to the task loaders (the demo tasks generate their examples from it).")
    field_caps: dict[str, int] = shared.field_caps()
    max_prompt_tokens: int = option(
        512,
        "Prompt tokens kept; a longer prompt loses its middle (instructions open "
        "and questions close prompts). A causal model's context caps it further.",
    )
    chat_template: bool = option(
        False,
        "Show causal models their prompts through their chat template (a distilled student uses the layout it "
        "was trained with, which this must not contradict).",
    )
    max_new_tokens: int | None = option(None, "Cap on generated tokens (default: each task's own budget).")
    batch_size: int = option(16, "Sequences per forward pass (prompt+option pairs, or prompts to generate from).")
    quantize: str = shared.quantize("Weights of the evaluated models")
    device: str = shared.device("the models run")
    bertscore_model: str | None = option(
        None, "Local BERTScore model directory; when given, generation tasks also report BERTScore."
    )
    include_trained: bool = option(
        False,
        "Also score examples a model was trained on (a kdpipe student's kdpipe_trained_on.parquet lists the examples "
        "of the cache it was distilled from); by default they are left out of every model's evaluation, the next "
        "examples of the split take their place, and results.md counts them.",
    )
    exclude_cache: tuple[str, ...] = option(
        help="Caches whose examples are left out too (what a teacher or base model was trained on); repeatable.",
        factory=tuple,
    )
    resume: bool = option(
        True, "Reuse (model, task) results already in --out that were made with the same settings and model files."
    )
    out: str = option("runs/eval", "Folder for results.json, results.md, results.png and predictions/.")

    def __post_init__(self) -> None:
        """Checks of the values alone; what they name (tasks, folders) is checked by the eval stage."""
        check_all_choices(self)
        check_positive(self, "limit", "max_prompt_tokens", "max_new_tokens", "batch_size")
        if not self.models:
            raise ConfigError("--model: give at least one model to evaluate")
        if self.names and len(self.names) != len(self.models):
            raise ConfigError(f"--name: {len(self.names)} names for {len(self.models)} models; give one per --model")
        bad = [n for n in self.names if not n or "/" in n or "\\" in n or n.startswith(".")]
        if bad or len(set(self.names)) != len(self.names):
            raise ConfigError(f"--name: names must be unique folder names, got {list(self.names)!r}")
        if not self.tasks:
            raise ConfigError("--tasks: no task to evaluate")
        shared.check_file_tasks(self.tasks, self.fields, self.task_splits)
        from pipeline.evaluation.metrics import METRIC_KEYS

        for name in self.metric:
            if name not in METRIC_KEYS or name == "coverage":
                known = ", ".join(m for m in METRIC_KEYS if m != "coverage")
                raise ConfigError(f"--metric: {name!r} is not one of {known} (coverage needs concepts)")
