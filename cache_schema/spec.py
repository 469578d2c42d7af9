"""The cache format's names, bounds and encodings: array, attribute and column names, dtypes, the MAX_* bounds,
the probability, span and vocabulary encodings, and the attribute builders (the format itself is documented in
the package docstring, ``cache_schema``).

The bottom floor of the package: it imports nothing from the rest of ``cache_schema``, which all builds on it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

SCHEMA_NAME = "kdpipe-teacher-cache"
SCHEMA_VERSION = "1.3"  # what this kdpipe writes: every new cache has source_id and byte-exact spans
READABLE_VERSIONS = (1, "1.1", "1.2", "1.3")  # what it reads: v1 caches have no token layout, < v1.3 no source_id
UNKNOWN_ID = -1  # what a reader returns for a top-k entry whose id the cache did not keep (v1.2)
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
SPANS = "spans"  # v1.1 token layout; byte-exact for split characters from v1.3 (see byte_exact_spans)
LABEL_PROBS = "label_probs"  # v1.1 token layout
# Once per cache (v1.1 token layout), not along the row axis.
VOCAB_BYTES = "vocab_bytes"
VOCAB_OFFSETS = "vocab_offsets"
TOKEN_ARRAYS = (SPANS, LABEL_PROBS)  # along the row axis, in a cache with the token layout
VOCAB_ARRAYS = (VOCAB_BYTES, VOCAB_OFFSETS)
ARRAY_DTYPES = {
    PROBS: np.dtype("uint16"),
    TAIL: np.dtype("float32"),
    TOKEN_IDS: np.dtype("int32"),
    TOPK_IDS: np.dtype("int32"),
    SPANS: np.dtype("int32"),
    LABEL_PROBS: np.dtype("float16"),
    VOCAB_BYTES: np.dtype("uint8"),
    VOCAB_OFFSETS: np.dtype("int64"),
}

# examples.parquet columns and their Arrow types (v1.3; caches before it lack source_id).
EXAMPLE_COLUMNS = pa.schema(
    [
        ("key", pa.string()),  # stable content hash of (task, template_id, prompt, answer)
        ("task", pa.string()),
        ("template_id", pa.int32()),
        ("prompt", pa.string()),
        ("answer", pa.string()),  # the answer whose rows are cached (gold, or the teacher's own)
        ("n_rows", pa.int32()),  # teacher answer rows cached for this example
        ("row_start", pa.int64()),  # first row of this example along the row axis
        ("source_id", pa.string()),  # v1.3: the example's id in its source (null: none); a writer's record may omit it
    ]
)
SOURCE_ID = "source_id"
EXAMPLE_COLUMNS_V1 = EXAMPLE_COLUMNS.remove(EXAMPLE_COLUMNS.get_field_index(SOURCE_ID))  # v1 to v1.2

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
# The mixture spec: tasks and counts, split, seed, caps, templates digest, and with file tasks "files": {task spec:
# {"name", "sha256", "rows", "fields": {role: column}}}, the provenance of each file read (changed_files).
ATTR_MIXTURE = "mixture"
ATTR_MIXTURE_FP = "mixture_fingerprint"  # sha256 of ATTR_MIXTURE
ATTR_COUNTS = "counts"  # {"examples", "rows", "per_task": {task: {"examples", "rows"}}, "skipped", "truncated"}
ATTR_CONFIG = "config"  # the teacher-cache config that produced the cache
# {"chunk_rows", "shard_rows", "store_ids", "token_spans" (v1.1; absent: false), "ids_k" (v1.2; absent: top-k)}
ATTR_LAYOUT = "layout"
ATTR_VOCAB = "teacher_vocab"  # v1.1 token layout: {"size": V, "bytes": B}, the shapes of the vocab arrays
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
# ... and what it may parse into: values (each a Python object of up to ~70 bytes: 3 bytes of "{}," make a dict) and
# nesting (the parser recurses per level). A large cache's checksum list or a part's batch sizes are ~10^5 items.
MAX_METADATA_ITEMS = 1 << 21
MAX_METADATA_DEPTH = 32
MAX_VOCAB = 1 << 22  # teacher vocabulary entries
MAX_VOCAB_BYTES = 1 << 28  # their byte strings together
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
    topk_ids: np.ndarray | None = None  # int32 [n_rows, k] when the cache stores them (UNKNOWN_ID past ids_k)
    spans: np.ndarray | None = None  # int32 [n_rows, 2] byte [start, end) in the answer (v1.1 token layout)
    label_probs: np.ndarray | None = None  # float32 [n_rows] teacher probability of each row's token (idem)


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


def mask_zero_ids(stored_probs: np.ndarray, topk_ids: np.ndarray) -> np.ndarray:
    """int32 [n, k] ids with those of entries stored as probability 0 set to 0 (they carry no mass)."""
    q = stored_probs.astype(np.int64)
    zero = (q[:, :1] - np.concatenate([np.zeros_like(q[:, :1]), np.cumsum(q[:, 1:], axis=1)], axis=1)) == 0
    return np.where(zero, 0, topk_ids).astype(np.int32)


def example_columns(version: object) -> pa.Schema:
    """The examples.parquet schema of a cache of schema ``version``."""
    return EXAMPLE_COLUMNS if version == "1.3" else EXAMPLE_COLUMNS_V1


def changed_files(a: object, b: object, labels: tuple[str, str]) -> list[str]:
    """The file tasks whose provenance differs between two ATTR_MIXTURE values ``a`` and ``b``, each as one phrase
    naming the file and both provenances under ``labels`` (an empty list: no file task changed)."""
    files_a = (a.get("files") if isinstance(a, dict) else None) or {}
    files_b = (b.get("files") if isinstance(b, dict) else None) or {}

    def show(p: dict) -> str:
        return f"sha256 {str(p.get('sha256'))[:16]}, {p.get('rows')} rows, fields {p.get('fields')}"

    return [
        f"{spec} ({labels[0]}: {show(files_a[spec])}; {labels[1]}: {show(files_b[spec])})"
        for spec in sorted(set(files_a) & set(files_b))
        if files_a[spec] != files_b[spec]
    ]


def byte_exact_spans(meta: dict) -> bool:
    """Whether a cache's spans give each row of a split character its own bytes (v1.3); in v1.1 and v1.2 caches
    all the rows of such a character carry the whole character's span."""
    return meta.get(ATTR_VERSION) not in (1, "1.1", "1.2")


def ids_width(meta: dict) -> int:
    """How many leading entries of a row have their id stored (``layout.ids_k``, else every one of the k)."""
    return int((meta.get(ATTR_LAYOUT) or {}).get("ids_k", meta[ATTR_TOP_K]))


def pad_ids(stored: np.ndarray, top_k: int) -> np.ndarray:
    """int32 [n, j] stored ids -> int32 [n, k], ``UNKNOWN_ID`` for the entries past the j stored."""
    if stored.shape[1] == top_k:
        return stored
    return np.pad(stored, ((0, 0), (0, top_k - stored.shape[1])), constant_values=UNKNOWN_ID).astype(np.int32)


def encode_spans(spans: np.ndarray) -> np.ndarray:
    """int [n, 2] byte [start, end) -> int32 [n, 2] (start, end − start): the lengths compress to almost nothing."""
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    if (spans[:, 0] < 0).any() or (spans[:, 1] < spans[:, 0]).any():
        raise CacheError("token byte spans must satisfy 0 <= start <= end")
    return np.stack([spans[:, 0], spans[:, 1] - spans[:, 0]], axis=1).astype(np.int32)


def decode_spans(stored: np.ndarray) -> np.ndarray:
    """int32 [n, 2] as written by :func:`encode_spans` -> int32 [n, 2] byte [start, end)."""
    return np.stack([stored[:, 0], stored[:, 0] + stored[:, 1]], axis=1).astype(np.int32)


def encode_vocab(tokens: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Token byte strings -> (uint8 [B] concatenation, int64 [V + 1] offsets)."""
    lengths = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(tokens))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return np.frombuffer(b"".join(tokens), dtype=np.uint8).copy(), offsets


def decode_vocab(data: np.ndarray, offsets: np.ndarray) -> list[bytes]:
    """(uint8 [B], int64 [V + 1]) as written by :func:`encode_vocab` -> the V byte strings."""
    raw = data.tobytes()
    return [raw[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)]


def decode_tolerance(k: int) -> float:
    """Largest L1 error of one decoded row (rounding each of k values by at most half a step), plus slack."""
    return k * 0.5 / PROB_SCALE + 1e-5


def fingerprint(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj``."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def example_key(task: str, template_id: int, prompt: str, answer: str) -> str:
    """The ``key`` column: a stable content hash of one example's text (``verify`` recomputes it)."""
    h = hashlib.blake2b(digest_size=16)
    for part in (task, str(template_id), prompt, answer):
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


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
