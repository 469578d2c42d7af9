"""The teacher-cache stage's config (``kdpipe teacher-cache``): what the teacher caches and how."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import shared
from pipeline.config.framework import ConfigError, check_all_choices, check_finite, check_positive, option


@dataclass(frozen=True)
class TeacherCacheConfig:
    out: str | None = option(
        None, "Cache directory (or fsspec URL) to write, or to resume; required.", operational=True
    )
    teacher: str = option("models/tiny-t5-teacher", "Teacher: a Hugging Face hub id or a local directory.")
    revision: str | None = shared.revision("teacher")
    tasks: dict[str, int] = option(
        help="Mixture: task=examples pairs, e.g. boolq=1000,squad=1000; a task may be your own file "
        "(data/support.jsonl=2000: .jsonl, .json, .csv or .parquet) or hf:ORG/NAME[:CONFIG][@SPLIT].",
        factory=lambda: dict(shared.DEMO_MIXTURE),
    )
    fields: dict[str, str] = shared.fields()
    data_dir: str | None = shared.data_dir()
    split: str = option("train", "Split of each task the mixture is drawn from.")
    task_splits: dict[str, str] = shared.task_splits()
    seed: int = option(0, "Seed of the mixture (examples, templates, order).")
    limit: int | None = option(None, "Cache only the first N examples of the mixture.")
    field_caps: dict[str, int] = shared.field_caps()
    top_k: int = option(64, "Probabilities kept per answer row.")
    temperature: float = option(1.0, "Softmax temperature T of the cached distributions.")
    answers: str = option(
        "gold", "Cache rows of the dataset answer, or of the teacher's greedy answer.", choices=("gold", "teacher")
    )
    quantize: str = shared.quantize("Teacher weights")
    compare_unquantized: int | None = option(
        None,
        "Instead of caching, show what --quantize costs this teacher: top-1 agreement and mean L1 of its top-k rows "
        "against the unquantized teacher's, over the first N examples (same batches and answers); writes nothing.",
        operational=True,
    )
    device: str = shared.device("the teacher runs")
    batch_size: int = option(32, "Examples per teacher batch (batches are bucketed by length).")
    chat_template: bool = option(
        False,
        "Show a causal teacher its text through its chat template (prompt as the user turn, answer as the assistant "
        "turn, the template's end token as EOS) instead of BOS + prompt, then ' ' + answer + EOS.",
    )
    max_prompt_tokens: int = option(
        512,
        "Prompt tokens kept, BOS/</s> and chat markup included; a longer prompt loses its middle (instructions "
        "open and questions close prompts), or the example with --prompt-overflow skip.",
    )
    prompt_overflow: str = option(
        "truncate", "Longer prompts: cut their middle, or leave the example out.", choices=("truncate", "skip")
    )
    max_answer_tokens: int = option(128, "Answer rows cached per example, EOS included.")
    answer_overflow: str = option(
        "skip",
        "A longer answer: leave the example out (the official recipe), or cut it to the limit with its EOS kept "
        "(the cache records which; --answers teacher needs cut).",
        choices=("skip", "cut"),
    )
    store_ids: bool = option(
        True,
        "Store the teacher token id of each top-k probability (the token-aware distill losses need them; "
        "--no-store-ids saves about half the bytes for plain ULD).",
    )
    ids_k: int | None = option(
        None,
        "Store the ids of only the N most probable of the top-k entries of each row (default: all of them); the "
        "token-aware losses treat the rest as unidentified mass. On a 49k vocabulary at --top-k 64, 32 keeps "
        "96.7 % of the top-k mass identified for half the id bytes (schema v1.2).",
    )
    chunk_rows: int = option(4096, "Rows per Zarr chunk (the unit a reader decodes).")
    shard_rows: int = option(65536, "Rows per Zarr shard file (the unit a writer commits).")
    worker: int | None = option(
        None,
        "With --num-workers N: this process writes batches b with b % N == I into OUT/worker-I-of-N.",
        operational=True,
    )
    num_workers: int | None = option(
        None,
        "Processes writing one cache together (default: WORLD_SIZE and RANK under torchrun or accelerate "
        "launch, else 1); join their parts with kdpipe cache merge.",
        operational=True,
    )

    def __post_init__(self) -> None:
        check_all_choices(self)
        check_finite(self)
        check_positive(
            self,
            "top_k",
            "temperature",
            "batch_size",
            "max_prompt_tokens",
            "max_answer_tokens",
            "chunk_rows",
            "shard_rows",
            "limit",
            "num_workers",
            "ids_k",
            "compare_unquantized",
        )
        from cache_schema import MAX_CHUNK_BYTES, MAX_TOP_K

        if self.compare_unquantized is not None and self.quantize == "none":
            raise ConfigError("--compare-unquantized: compares a quantized teacher; give --quantize nf4 or int8")

        if self.ids_k is not None and self.ids_k > self.top_k:
            raise ConfigError(f"--ids-k: {self.ids_k} is more than the --top-k {self.top_k} entries of a row")
        if self.ids_k is not None and not self.store_ids:
            raise ConfigError("--ids-k: keeps the ids of the first entries, which --no-store-ids leaves out")

        if self.top_k > MAX_TOP_K:
            raise ConfigError(f"--top-k: {self.top_k} is more than the {MAX_TOP_K} a cache may hold per row")
        if self.chunk_rows * self.top_k * 2 > MAX_CHUNK_BYTES:
            raise ConfigError(
                f"--chunk-rows: {self.chunk_rows} rows of {self.top_k} probabilities exceed the "
                f"{MAX_CHUNK_BYTES} bytes a reader accepts per chunk"
            )
        if not self.tasks:
            raise ConfigError("--tasks: the mixture names no task")
        for name, n in self.tasks.items():
            if not isinstance(n, int) or n <= 0:
                raise ConfigError(f"--tasks: {name}={n!r} must be a positive number of examples")
        shared.check_file_tasks(tuple(self.tasks), self.fields, self.task_splits)
        if self.shard_rows % self.chunk_rows:
            raise ConfigError(f"--shard-rows: {self.shard_rows} is not a multiple of --chunk-rows {self.chunk_rows}")
        if self.answers == "teacher" and self.answer_overflow != "cut":
            raise ConfigError(
                "--answer-overflow: --answers teacher cuts a greedy answer that does not end within "
                "--max-answer-tokens (keeping its EOS); say so with --answer-overflow cut"
            )
        shared.check_text_limits(self)
        if (self.worker is None) != (self.num_workers is None):
            raise ConfigError("--worker and --num-workers go together (give neither to read RANK and WORLD_SIZE)")
        if self.num_workers is not None and not 0 <= self.worker < self.num_workers:
            raise ConfigError(f"--worker: {self.worker} is not in [0, --num-workers {self.num_workers})")

    def text_spec(self, layout: str):
        """The teacher's ``pipeline.text.TextSpec`` for a model of ``layout``."""
        from pipeline.text import TextSpec

        return TextSpec(layout, self.max_prompt_tokens, self.max_answer_tokens, self.answer_overflow)

    def mixture(self) -> dict:
        """The mixture spec recorded in the cache (and compared by distill): tasks, counts, split, seed, caps."""
        from pipeline.tasks import mixture_spec

        source = "files" if self.data_dir else "hub"
        return mixture_spec(
            self.tasks,
            split=self.split,
            seed=self.seed,
            limit=self.limit,
            caps=self.field_caps,
            source=source,
            fields=self.fields,
            task_splits=self.task_splits,
        )
