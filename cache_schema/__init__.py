"""Teacher-logit cache, schema v1: the single source of truth for the on-disk format.

A cache is a directory (or a zip of one, or an fsspec URL) that is at once a Zarr v3 group and the home
of a Parquet table::

    cache/
      zarr.json            group metadata; its attributes are the cache's metadata (ATTR_* below)
      examples.parquet     one row per example, in cache order (EXAMPLE_COLUMNS)
      probs/               uint16  [rows, k]  chunks (chunk_rows, k)  shards (shard_rows, k)  blosc zstd shuffle
      tail/                float32 [rows]     chunks (chunk_rows,)    shards (shard_rows,)
      token_ids/           int32   [rows]     chunks (chunk_rows,)    shards (shard_rows,)
      topk_ids/            int32   [rows, k]  optional (--store-ids): the teacher vocabulary id of each prob
      _parts/              only while being written: one Parquet file per committed range of batches

A cache is written by one process, or by several workers (``teacher-cache --worker I --num-workers N``, or
RANK and WORLD_SIZE under torchrun) that each write a part: a cache of the same layout holding the global
batches I, I + N, I + 2N, ... of the one batch plan, in a folder of its own::

    out/
      worker-0-of-2/       a part: a complete cache plus ATTR_WORKER and ATTR_BATCH_EXAMPLES
      worker-1-of-2/

``kdpipe cache merge out merged`` joins the parts batch by batch in plan order (cache_schema.merge), so the
merged cache holds the examples and rows of a one-worker run, in the same order and the same bytes.

Rows: every answer token of every example, flattened; example ``i`` owns rows
``[row_start[i], row_start[i] + n_rows[i])``. Row ``j`` of an example is the teacher's distribution
softmax(logits / T) at answer position ``j`` (teacher-forced on the answer, or on its own greedy answer),
of which the cache keeps the top-k probabilities sorted descending and ``tail`` = 1 − Σ top-k.

Probability encoding (``probs``): fixed point with scale ``PROB_SCALE`` (q = round(p · 65535)), stored as
the first value of the row followed by the successive drops q[j−1] − q[j] (all ≥ 0 because rows are sorted
descending), which compress far better than the values. Decode with plain numpy::

    q = d[:, :1] - np.concatenate([np.zeros_like(d[:, :1]), np.cumsum(d[:, 1:], axis=1)], axis=1)
    p = q.astype(np.float32) / 65535

The decoded row is within ``k / (2 · 65535)`` L1 of the float32 values (≤ 4.9e-4 at k = 64).

A cache is untrusted data: nothing in it is executed or unpickled, dtypes and shapes are checked against
this schema before anything is read (no pickle, no object dtype, only the codecs in ALLOWED_CODECS, sizes
bounded by the MAX_* constants), and a mismatch raises :class:`CacheError` naming both values.

Modules: this one names the format; ``store`` maps a path, zip or URL to files; ``reader`` opens and reads a
cache; ``audit`` verifies and describes one; ``writer`` creates and resumes one; ``share`` copies and packs
caches; ``merge`` joins worker parts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

SCHEMA_NAME = "kdpipe-teacher-cache"
SCHEMA_VERSION = 1
PROB_SCALE = 65535
EXAMPLES_FILE = "examples.parquet"
GROUP_META_FILE = "zarr.json"  # holds the attributes, so it is covered by ATTR_DIGEST, not by a checksum
PARTS_DIR = "_parts"
MERGED_CACHE = "merged"  # beside the parts: the cache rank 0 joins them into under a launcher
WORKER_PART = "worker-{index}-of-{count}"  # folder of worker ``index``'s part, beside the other parts

# Arrays along the flat row axis.
PROBS = "probs"
TAIL = "tail"
TOKEN_IDS = "token_ids"
TOPK_IDS = "topk_ids"
ARRAY_DTYPES = {
    PROBS: np.dtype("uint16"),
    TAIL: np.dtype("float32"),
    TOKEN_IDS: np.dtype("int32"),
    TOPK_IDS: np.dtype("int32"),
}

# examples.parquet columns and their Arrow types.
EXAMPLE_COLUMNS = pa.schema(
    [
        ("key", pa.string()),  # stable content hash of (task, template_id, prompt, answer)
        ("task", pa.string()),
        ("template_id", pa.int32()),
        ("prompt", pa.string()),
        ("answer", pa.string()),  # the answer whose rows are cached (gold, or the teacher's own)
        ("n_rows", pa.int32()),  # teacher answer rows cached for this example
        ("row_start", pa.int64()),  # first row of this example along the row axis
    ]
)

# Group attributes.
ATTR_SCHEMA = "schema"  # SCHEMA_NAME
ATTR_VERSION = "schema_version"  # SCHEMA_VERSION of the writer
ATTR_TOOL_VERSION = "tool_version"  # kdpipe version that wrote the cache
ATTR_CREATED = "created"  # {"at": ISO time, "on": host and platform}
ATTR_TEACHER = "teacher"  # {"id", "revision", "quantization", "compute_dtype", "architecture"}
ATTR_TOKENIZER_FP = "teacher_tokenizer_fingerprint"  # sha256 of the teacher vocabulary and special tokens
ATTR_TOP_K = "top_k"  # k: probabilities kept per row
ATTR_TEMPERATURE = "temperature"  # T in softmax(logits / T)
ATTR_ANSWERS = "answers"  # "gold" (dataset answers) or "teacher" (the teacher's greedy answers)
ATTR_EOS = "eos"  # {"included": true, "token_id": id}: each example's last row predicts the teacher's EOS
# How the teacher saw the text (pipeline.text): {"layout": "seq2seq" | "causal" | "chat", "max_prompt_tokens",
# "max_answer_tokens", "answer_overflow": "skip" | "cut" (an over-long answer is left out, or cut to the limit
# with its EOS kept as the last row), "prompt_policy": "cut-middle"}. Absent from caches written before the
# text contract; ATTR_COUNTS["truncated"] counts the prompts and answers that were cut.
ATTR_TEXT = "text"
ATTR_MIXTURE = "mixture"  # the mixture spec: tasks and counts, split, seed, caps, templates digest
ATTR_MIXTURE_FP = "mixture_fingerprint"  # sha256 of ATTR_MIXTURE
ATTR_COUNTS = "counts"  # {"examples", "rows", "per_task": {task: {"examples", "rows"}}, "skipped", "truncated"}
ATTR_CONFIG = "config"  # the teacher-cache config that produced the cache
ATTR_LAYOUT = "layout"  # {"chunk_rows", "shard_rows", "store_ids"}
ATTR_CHECKSUMS = "checksums"  # {relative file path: sha256}, every file but GROUP_META_FILE; set at finalize
ATTR_COMPLETE = "complete"  # true only after a finished run; readers refuse a cache without it
ATTR_DIGEST = "attrs_digest"  # sha256 of all the other attributes; catches an edited attribute
# Only in a worker's part (absent from one-worker and merged caches; older caches read as before):
ATTR_WORKER = "worker"  # {"index": i, "count": n, "plan_batches": B}: this part holds global batches i, i+n, ...
ATTR_BATCH_EXAMPLES = "batch_examples"  # examples in each of the part's batches, in order; merge interleaves by it
# Only in a merged cache:
ATTR_MERGED = "merged_from"  # {"parts": n, "attrs_digests": [digest of each part, by worker index]}

# The attributes that define what a cache holds: resuming, and merging parts, require them equal.
IDENTITY_ATTRS = (
    ATTR_TEACHER,
    ATTR_TOKENIZER_FP,
    ATTR_TOP_K,
    ATTR_TEMPERATURE,
    ATTR_ANSWERS,
    ATTR_EOS,
    ATTR_TEXT,
    ATTR_MIXTURE,
    ATTR_MIXTURE_FP,
    ATTR_CONFIG,
)

# Bounds checked before allocating anything a cache asks for.
MAX_TOP_K = 4096
MAX_ROWS_PER_EXAMPLE = 1 << 16
MAX_CHUNK_BYTES = 256 << 20
MAX_CHUNKS_PER_SHARD = 1 << 16  # a shard's index (16 bytes per chunk) is read whole
MAX_EXAMPLES = 1 << 28
MAX_METADATA_BYTES = 64 << 20  # any zarr.json
ALLOWED_CODECS = frozenset({"sharding_indexed", "bytes", "blosc", "zstd", "gzip", "crc32c", "transpose"})
DEFAULT_CHUNK_ROWS = 4096
DEFAULT_SHARD_ROWS = 65536


class CacheError(Exception):
    """A cache that cannot be used as asked: wrong version, mismatch, truncation, corruption."""


class CacheIncomplete(CacheError):
    """A cache whose writer has not finished (``kdpipe cache info`` still reports its progress)."""


@dataclass(frozen=True)
class CachedExample:
    key: str
    probs: np.ndarray  # float32 [n_rows, k], sorted descending
    tail: np.ndarray  # float32 [n_rows]
    token_ids: np.ndarray  # int32 [n_rows]
    topk_ids: np.ndarray | None = None  # int32 [n_rows, k] when the cache stores them


# ---------------------------------------------------------------------------------------------- encoding


def encode_probs(probs: np.ndarray) -> np.ndarray:
    """float [n, k] sorted descending -> uint16 [n, k]: first fixed-point value, then successive drops."""
    q = np.rint(np.clip(probs, 0.0, 1.0) * PROB_SCALE).astype(np.int32)  # [n, k]
    drops = q[:, :-1] - q[:, 1:]  # [n, k-1]
    if (drops < 0).any():
        raise CacheError("top-k probabilities must be sorted descending in every row")
    return np.concatenate([q[:, :1], drops], axis=1).astype(np.uint16)


def decode_probs(stored: np.ndarray) -> np.ndarray:
    """uint16 [n, k] as written by :func:`encode_probs` -> float32 [n, k] probabilities, sorted descending."""
    d = stored.astype(np.int64)
    q = d[:, :1] - np.concatenate([np.zeros_like(d[:, :1]), np.cumsum(d[:, 1:], axis=1)], axis=1)  # [n, k]
    return q.astype(np.float32) / PROB_SCALE


def decode_tolerance(k: int) -> float:
    """Largest L1 error of one decoded row (rounding each of k values by at most half a step), plus slack."""
    return k * 0.5 / PROB_SCALE + 1e-5


def fingerprint(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj``."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def attrs_digest(attrs: dict) -> str:
    """The ATTR_DIGEST value: the fingerprint of every other attribute."""
    return fingerprint({k: v for k, v in attrs.items() if k != ATTR_DIGEST})


def counts_attrs(examples: int, rows: int, per_task: dict, skipped: dict, truncated: dict) -> dict:
    """The ATTR_COUNTS value, built here so its keys are named in one place."""
    return {
        ATTR_COUNTS: {
            "examples": examples,
            "rows": rows,
            "per_task": per_task,
            "skipped": skipped,
            "truncated": truncated,
        }
    }


def identity_attrs(
    *,
    teacher: dict,
    tokenizer_fingerprint: str,
    top_k: int,
    temperature: float,
    answers: str,
    eos_token_id: int,
    mixture: dict,
    config: dict,
    text: dict | None = None,
) -> dict:
    """The attributes that define a cache (IDENTITY_ATTRS): a resumed run must match them exactly.

    ``text`` (ATTR_TEXT) is left out only by synthetic caches that no tokenizer wrote (tests, benchmarks).
    """
    return {
        **({ATTR_TEXT: text} if text is not None else {}),
        ATTR_TEACHER: teacher,
        ATTR_TOKENIZER_FP: tokenizer_fingerprint,
        ATTR_TOP_K: top_k,
        ATTR_TEMPERATURE: temperature,
        ATTR_ANSWERS: answers,
        ATTR_EOS: {"included": True, "token_id": eos_token_id},
        ATTR_MIXTURE: mixture,
        ATTR_MIXTURE_FP: fingerprint(mixture),
        ATTR_CONFIG: config,
    }


def text_spec(meta: dict) -> dict | None:
    """The ATTR_TEXT of a cache's attributes: how its teacher saw the text (None for caches written before it)."""
    value = meta.get(ATTR_TEXT)
    return value if isinstance(value, dict) else None


def worker_attrs(index: int, count: int, plan_batches: int) -> dict:
    """The ATTR_WORKER value of worker ``index`` of ``count``; it joins a part's identity."""
    return {ATTR_WORKER: {"index": index, "count": count, "plan_batches": plan_batches}}


def merged_path(out: str) -> str:
    """Where rank 0 merges the parts of ``out`` when the workers ran under one launcher (torchrun, accelerate)."""
    return f"{out.rstrip('/')}/{MERGED_CACHE}"


def worker_part(out: str, index: int, count: int) -> str:
    """Where worker ``index`` of ``count`` writes its part of the cache ``out`` (a path or URL)."""
    return f"{out.rstrip('/')}/{WORKER_PART.format(index=index, count=count)}"


# The reading and writing code builds on the names above, so it is imported after them.
from cache_schema.audit import check_provenance as check_provenance  # noqa: E402
from cache_schema.audit import describe as describe  # noqa: E402
from cache_schema.audit import nonzero_counts as nonzero_counts  # noqa: E402
from cache_schema.audit import provenance as provenance  # noqa: E402
from cache_schema.audit import summary as summary  # noqa: E402
from cache_schema.audit import verify_cache as verify_cache  # noqa: E402
from cache_schema.merge import find_parts as find_parts  # noqa: E402
from cache_schema.merge import merge_parts as merge_parts  # noqa: E402
from cache_schema.reader import Cache as Cache  # noqa: E402
from cache_schema.reader import open_cache as open_cache  # noqa: E402
from cache_schema.share import copy_cache as copy_cache  # noqa: E402
from cache_schema.share import pack_cache as pack_cache  # noqa: E402
from cache_schema.writer import CacheComplete as CacheComplete  # noqa: E402
from cache_schema.writer import CacheWriter as CacheWriter  # noqa: E402
