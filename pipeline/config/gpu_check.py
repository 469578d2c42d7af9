"""The config of ``kdpipe gpu-check`` (pipeline.devtools.gpu_check)."""

from __future__ import annotations

import dataclasses

from pipeline.config.framework import check_positive, option


# The sizes of `kdpipe gpu-check` (pipeline.devtools.gpu_check); tests shrink them to run the same code on the CPU.
@dataclasses.dataclass(frozen=True)
class GpuCheckConfig:
    out: str = option("runs/gpu-check", "Folder for the caches, the student and summary.json (rewritten).")
    teacher: str = option("models/tiny-t5-teacher", "Teacher to cache: the embedded default, or any seq2seq LM.")
    student: str = option("models/tiny-gpt2-student", "Student to distill: the embedded default, or any causal LM.")
    examples: int = option(960, "Examples of the demo mixture the teacher caches.")
    distill_steps: int = option(100, "Optimizer steps of the bf16 distill (batch 16).")
    data_rows: int = option(200_000, "Rows of the synthetic cache of the data-path benchmark.")
    bench_vocab: int = option(50_257, "Student vocabulary of the ULD and step benchmarks (GPT-2's).")
    bench_medium: bool = option(True, "GPT-2-medium shapes in the step benchmark (else a 2-layer GPT-2).")
    bench_rounds: int = option(3, "Rounds of the step benchmark over its variants (the best median is kept).")
    online_examples: int = option(192, "Examples of the offline-against-online benchmark (cached, then trained on).")
    online_steps: int = option(12, "Timed steps of each side of the offline-against-online benchmark.")

    def __post_init__(self) -> None:
        check_positive(
            self,
            "examples",
            "distill_steps",
            "data_rows",
            "bench_vocab",
            "bench_rounds",
            "online_examples",
            "online_steps",
        )
