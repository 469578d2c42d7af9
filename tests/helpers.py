"""What several test modules share: small configs, synthetic caches, CLI flags of a config, a one-line error check.

A test module imports from here (or from ``tests.conftest``), never from another test module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import zarr

import cache_schema as cs
from pipeline.config import DistillConfig, TeacherCacheConfig, to_dict
from pipeline.devtools.synthetic_cache import cache_identity, forge_attrs, peaked_rows, write_cache
from pipeline.student import training

# ---------------------------------------------------------------------------------------------- configs

SMALL_MIXTURE = {"demo_yesno": 12, "demo_qa": 12, "demo_summary": 12, "demo_concepts": 12}


def small_teacher_cache_config(teacher: Path, **overrides) -> TeacherCacheConfig:
    """A CPU teacher-cache config of 48 demo examples in small chunks and shards."""
    base = TeacherCacheConfig(
        teacher=str(teacher),
        tasks=SMALL_MIXTURE,
        batch_size=8,
        top_k=16,
        max_answer_tokens=40,
        device="cpu",
        chunk_rows=64,
        shard_rows=128,
    )
    return replace(base, **overrides)


def cli_flags(cfg: DistillConfig) -> list[str]:
    """The command-line flags that give ``cfg`` (every field, so the CLI run is the same run)."""
    out = []
    on_cli = {f.name for f in dataclasses.fields(cfg) if f.metadata.get("cli", True)}
    for key, value in to_dict(cfg).items():
        if key not in on_cli:
            continue
        name = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(name if value else "--no-" + key.replace("_", "-"))
        elif value is not None:
            out += [name, str(value)]
    return out


def step_metrics(out: Path) -> list[dict]:
    """The metrics.jsonl rows of the distill run in ``out``."""
    from stages import distill

    return training.read_metrics(out / distill.METRICS_FILE)


# ---------------------------------------------------------------------------------------------- CLI


def one_line_error(result, match: str) -> None:
    """A ``CliRunner`` result that ended in exit status 1 with one ``Error:`` line containing ``match``."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and match in lines[0], result.output


# ---------------------------------------------------------------------------------------------- synthetic caches


def write_known_rows_cache(
    path: str | Path,
    lengths=(3, 1, 5, 2),
    k: int = 8,
    store_ids: bool = False,
    seed: int = 0,
    commit_every: int = 2,
    token_layout: bool = False,
    ids_k: int | None = None,
) -> dict:
    """A small finished cache with placeholder text (tasks b and a in turn, prompts p0, p1...) in chunks of 4 rows
    and shards of 8; returns the rows written (probs, tail, ids, topk, keys...).

    ``token_layout``: a v1.1 cache with spans (row j of an example covers byte j of its answer, one ``x`` a row),
    label probabilities (each row's token is its top-1) and TEACHER_VOCAB.
    """

    def text(rng: np.random.Generator, i: int, n: int) -> tuple[str, str, str]:
        return ("a" if i % 2 else "b"), f"p{i}", ("x" * n if token_layout else "a")

    return write_cache(
        path,
        lengths,
        text,
        seed=seed,
        k=k,
        commit_every=commit_every,
        store_ids=store_ids,
        ids_k=ids_k,
        token_layout=token_layout,
        chunk_rows=4,
        shard_rows=8,
    )


# fmt: off
TEXT_WORDS = [
    "the", "cat", "sat", "on", "a", "mat", "while",
    "seven", "green", "birds", "sang", "over", "quiet", "hills",
]
# fmt: on
TEXT_CACHE_K = 8
TEXT_CACHE_CHUNK_ROWS = 16


def write_text_cache(path: Path, n_examples: int = 60, seed: int = 0, finalize: bool = True) -> Path:
    """A synthetic cache a student can train on: word prompts and answers, 1-9 peaked teacher rows each."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 10, n_examples)

    def text(rng: np.random.Generator, i: int, n: int) -> tuple[str, str, str]:
        prompt = " ".join(rng.choice(TEXT_WORDS, int(rng.integers(3, 12)))) + f" #{i}?"
        return "t", prompt, " ".join(rng.choice(TEXT_WORDS, n))

    write_cache(
        path,
        lengths,
        text,
        seed=rng,
        k=TEXT_CACHE_K,
        identity=cache_identity(
            TEXT_CACHE_K, teacher={"id": "synthetic"}, mixture={"tasks": {"t": n_examples}}, config={}
        ),
        rows=partial(peaked_rows, vocab=64, peak=4.0),
        commit_every=10,
        id_vocab=None,
        chunk_rows=TEXT_CACHE_CHUNK_ROWS,
        shard_rows=4 * TEXT_CACHE_CHUNK_ROWS,
        finalize=finalize,
    )
    return path


def as_older_version(path: Path, version) -> None:
    """Make a cache written now look as a writer of ``version`` (before v1.3) left it: no source_id column."""
    table = pq.read_table(path / cs.EXAMPLES_FILE)
    pq.write_table(table.drop_columns([cs.SOURCE_ID]), path / cs.EXAMPLES_FILE)
    checksums = zarr.open_group(zarr.storage.LocalStore(path)).attrs[cs.ATTR_CHECKSUMS]
    checksums[cs.EXAMPLES_FILE] = hashlib.sha256((path / cs.EXAMPLES_FILE).read_bytes()).hexdigest()
    forge_attrs(path, **{cs.ATTR_VERSION: version, cs.ATTR_CHECKSUMS: checksums})


def edit_array_meta(path: Path, array: str, edit) -> None:
    """Rewrite one array's zarr.json through ``edit(meta)`` (a hostile or corrupted array description)."""
    meta_file = path / array / "zarr.json"
    meta = json.loads(meta_file.read_text())
    edit(meta)
    meta_file.write_text(json.dumps(meta))
