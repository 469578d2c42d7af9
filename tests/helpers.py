"""What several test modules share: small configs, synthetic caches, CLI flags of a config, a one-line error check.

A test module imports from here (or from ``tests.conftest``), never from another test module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import zarr

import cache_schema as cs
from pipeline.config import DistillConfig, TeacherCacheConfig, to_dict
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


def peaked_rows(rng: np.random.Generator, n: int, k: int, vocab: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """``n`` sorted top-``k`` rows of random peaked softmaxes over ``vocab``, and their tails."""
    logits = rng.standard_normal((n, vocab)) * 2.0
    logits[:, 0] += rng.uniform(2, 10, n)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    top = -np.sort(-p, axis=1)[:, :k].astype(np.float32)
    return top, (1.0 - top.sum(1, dtype=np.float64)).astype(np.float32)


def cache_identity(k: int = 8) -> dict:
    """Identity attrs of a synthetic cache with top-``k`` rows."""
    return cs.identity_attrs(
        teacher={"id": "t"},
        tokenizer_fingerprint="f",
        top_k=k,
        temperature=1.0,
        answers="gold",
        eos_token_id=1,
        mixture={"tasks": {"a": 3}},
        config={"x": 1},
    )


TEACHER_VOCAB = [b"", *(f"t{i}".encode() for i in range(1, 500))]  # id 0 special (no bytes)


def write_known_rows_cache(
    path: Path,
    lengths=(3, 1, 5, 2),
    k: int = 8,
    store_ids: bool = False,
    seed: int = 0,
    commit_every: int = 2,
    token_layout: bool = False,
    ids_k: int | None = None,
) -> dict:
    """A small finished cache with placeholder text; returns the rows written (probs, tail, ids, topk, keys...).

    ``token_layout``: a v1.1 cache with spans (row j of an example covers byte j of its answer), label
    probabilities (each row's token is its top-1) and TEACHER_VOCAB.
    """
    rng = np.random.default_rng(seed)
    writer = cs.CacheWriter(
        path,
        cache_identity(k),
        max_rows=sum(lengths) + 10,
        store_ids=store_ids,
        ids_k=ids_k,
        chunk_rows=4,
        shard_rows=8,
        vocab=TEACHER_VOCAB if token_layout else None,
    )
    written = {"probs": [], "tail": [], "ids": [], "topk": [], "keys": [], "spans": [], "label": []}
    for b in range(0, len(lengths), commit_every):
        group = lengths[b : b + commit_every]
        probs, tail = peaked_rows(rng, sum(group), k)
        ids = rng.integers(0, 500, sum(group)).astype(np.int32)
        topk = rng.integers(1, 500, (sum(group), k)).astype(np.int32)
        spans = np.concatenate([np.stack([np.arange(n), np.arange(n) + 1], axis=1) for n in group])
        label = probs[:, 0].copy()
        if token_layout:
            ids = topk[:, 0].copy()
        records = []
        for i, n in enumerate(group):
            task, answer = ("a" if (b + i) % 2 else "b"), ("x" * n if token_layout else "a")
            records.append(
                {
                    "key": cs.example_key(task, 0, f"p{b + i}", answer),
                    "task": task,
                    "template_id": 0,
                    "prompt": f"p{b + i}",
                    "answer": answer,
                    "n_rows": n,
                }
            )
        token_rows = {"spans": spans, "label_probs": label} if token_layout else {}
        writer.commit(b, b + len(group), records, probs, tail, ids, topk if store_ids else None, **token_rows)
        for key, arr in (
            ("probs", probs),
            ("tail", tail),
            ("ids", ids),
            ("topk", topk),
            ("spans", spans),
            ("label", label),
        ):
            written[key].append(arr)
        written["keys"] += [r["key"] for r in records]
    writer.finalize(cs.counts_attrs(writer.examples, writer.rows, {}, {}, {}))
    return {k: (np.concatenate(v) if k != "keys" else v) for k, v in written.items()}


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
    identity = cs.identity_attrs(
        teacher={"id": "synthetic"},
        tokenizer_fingerprint="f",
        top_k=TEXT_CACHE_K,
        temperature=1.0,
        answers="gold",
        eos_token_id=1,
        mixture={"tasks": {"t": n_examples}},
        config={},
    )
    writer = cs.CacheWriter(
        path,
        identity,
        max_rows=int(lengths.sum()),
        store_ids=False,
        chunk_rows=TEXT_CACHE_CHUNK_ROWS,
        shard_rows=4 * TEXT_CACHE_CHUNK_ROWS,
    )
    for b in range(0, n_examples, 10):
        group = lengths[b : b + 10]
        logits = rng.standard_normal((int(group.sum()), 64)) * 2
        logits[:, 0] += 4
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        top = -np.sort(-p, axis=1)[:, :TEXT_CACHE_K].astype(np.float32)
        records = [
            {
                "key": f"k{b + i}",
                "task": "t",
                "template_id": 0,
                "prompt": " ".join(rng.choice(TEXT_WORDS, int(rng.integers(3, 12)))) + f" #{b + i}?",
                "answer": " ".join(rng.choice(TEXT_WORDS, int(n))),
                "n_rows": int(n),
            }
            for i, n in enumerate(group)
        ]
        writer.commit(
            b // 10, b // 10 + 1, records, top, (1 - top.sum(1)).astype(np.float32), np.zeros(len(top), np.int32)
        )
    if finalize:
        writer.finalize(cs.counts_attrs(writer.examples, writer.rows, {}, {}, {}))
    return path


def forge_attrs(path: Path, **changes) -> None:
    """Edit attributes the way a forger would: the attrs digest recomputed to match."""
    group = zarr.open_group(zarr.storage.LocalStore(path), mode="r+")
    attrs = group.attrs.asdict()
    attrs.update(changes)
    attrs[cs.ATTR_DIGEST] = cs.attrs_digest(attrs)
    group.attrs.put(attrs)


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
