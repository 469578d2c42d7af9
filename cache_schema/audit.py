"""What a cache is and whether it is intact: verify, summary and describe, provenance and its check."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter

import numpy as np
import pyarrow.parquet as pq

from cache_schema.reader import Cache, open_cache, read_attrs
from cache_schema.spec import (
    ARRAY_DTYPES,
    ATTR_ANSWERS,
    ATTR_COMPLETE,
    ATTR_COUNTS,
    ATTR_CREATED,
    ATTR_DIGEST,
    ATTR_MERGED,
    ATTR_MIXTURE,
    ATTR_MIXTURE_FP,
    ATTR_SCHEMA,
    ATTR_TEACHER,
    ATTR_TEMPERATURE,
    ATTR_TEXT,
    ATTR_TOKENIZER_FP,
    ATTR_TOOL_VERSION,
    ATTR_TOP_K,
    ATTR_VERSION,
    ATTR_VOCAB,
    ATTR_WORKER,
    EXAMPLES_FILE,
    GROUP_META_FILE,
    LABEL_PROBS,
    PARTS_DIR,
    PROBS,
    READABLE_VERSIONS,
    SOURCE_ID,
    SPANS,
    TAIL,
    TOPK_IDS,
    CacheError,
    CacheIncomplete,
    byte_exact_spans,
    decode_tolerance,
    example_key,
)
from cache_schema.store import can_list, check_files, filesystem, join, list_files, listed_files, storage_errors

log = logging.getLogger(__name__)


@storage_errors
def verify_cache(path: str | os.PathLike) -> dict:
    """Re-check checksums and contents; return a summary, or raise CacheError naming the first problem."""
    cache = open_cache(path)
    listed = listed_files(cache.meta, cache.path)
    check_files(cache.fs, cache.root, cache.path, listed)
    _check_per_task(cache)
    _check_keys(cache)
    tolerance = decode_tolerance(cache.top_k)
    worst = 0.0
    tokens = _TokenCheck(cache) if cache.has_token_spans else None
    for start, stop in cache.iter_chunks():
        try:
            probs, tail, token_ids, topk_ids = cache.read_rows(start, stop)
            if tokens is not None:
                tokens.check(start, stop, probs, token_ids, topk_ids)
        except CacheError:
            raise
        except Exception as e:  # a truncated shard the checksums did not cover
            raise CacheError(f"{cache.path}: rows [{start}, {stop}) unreadable: {e}") from e
        if (np.diff(probs, axis=1) > 0).any():
            raise CacheError(f"{cache.path}/{PROBS}: rows [{start}, {stop}) not sorted descending")
        if (tail < -tolerance).any() or (tail > 1 + tolerance).any():
            raise CacheError(f"{cache.path}/{TAIL}: rows [{start}, {stop}) have a tail outside [0, 1]")
        error = np.abs(probs.sum(axis=1, dtype=np.float64) + tail - 1.0)
        worst = max(worst, float(error.max(initial=0.0)))
        if worst > tolerance:
            raise CacheError(
                f"{cache.path}/{PROBS}: rows [{start}, {stop}) sum to 1 only within {worst:.2e} (> {tolerance:.2e})"
            )
    return {
        "path": cache.path,
        "examples": len(cache),
        "rows": cache.total_rows,
        "files": len(listed),
        "listed_only": not can_list(cache.fs),
        "max_sum_error": worst,
        "token_layout": tokens is not None,
        **(tokens.report() if tokens is not None else {}),
    }


def _check_keys(cache: Cache) -> None:
    """Each example's key recomputed from its text (gold answers only: a teacher-answer cache stores the
    teacher's answer, while the key hashes the gold one it replaced)."""
    if cache.meta.get(ATTR_ANSWERS) != "gold":
        return
    columns = [cache.examples.column(c).to_pylist() for c in ("task", "template_id", "prompt", "answer")]
    for i, (key, *text) in enumerate(zip(cache.keys, *columns, strict=True)):
        if key != example_key(*text):
            raise CacheError(
                f"{cache.path}/{EXAMPLES_FILE}: example {i} has the key {key!r}, its text hashes to "
                f"{example_key(*text)!r} (the text or the key was edited)"
            )


class _TokenCheck:
    """Checks of the v1.1 token layout, chunk by chunk: the vocabulary decodes and has the size the reader checks
    ids against; spans, label probabilities and ids as every reader checks them (``Cache.read_token_rows``,
    ``Cache.read_rows``), and label probabilities equal to the top-k entry of the same id."""

    def __init__(self, cache: Cache):
        self.cache = cache
        self.vocab_size = len(cache.teacher_vocab())
        self.worst_label = 0.0

    def check(self, start: int, stop: int, probs: np.ndarray, token_ids: np.ndarray, topk_ids) -> None:
        _, label = self.cache.read_token_rows(start, stop)
        if topk_ids is not None:
            worst = self.cache.check_label_probs(start, stop, probs, token_ids, topk_ids, label)
            self.worst_label = max(self.worst_label, worst)

    def report(self) -> dict:
        return {"teacher_vocab": self.vocab_size, "max_label_prob_error": self.worst_label}


def _check_per_task(cache: Cache) -> None:
    """The per-task counts of the attributes (where recorded) against the examples table."""
    recorded = cache.meta[ATTR_COUNTS].get("per_task")
    if not recorded:
        return
    examples, rows = Counter(cache.tasks), Counter()
    for task, n in zip(cache.tasks, cache.n_rows.tolist(), strict=True):
        rows[task] += n
    table = {t: {"examples": examples[t], "rows": rows[t]} for t in sorted(examples)}
    if table != {t: recorded[t] for t in sorted(recorded)}:
        raise CacheError(
            f"{cache.path}/{EXAMPLES_FILE}: per-task counts {json.dumps(table)} differ from the attributes' "
            f"{json.dumps(recorded)}"
        )


@storage_errors
def summary(path: str | os.PathLike) -> str:
    """A human summary for ``kdpipe cache info``: a complete cache in full, an incomplete one's progress."""
    path = os.fspath(path)
    try:
        return describe(open_cache(path))
    except CacheIncomplete:
        pass
    except CacheError:
        if not _creation_cut_short(path):
            raise
        return "\n".join(
            [
                f"cache        {path}",
                "complete     False (killed while being created: no rows yet; rerun the same teacher-cache "
                "command to start it again)",
            ]
        )
    fs, root = filesystem(path)
    meta = read_attrs(path, fs, root)
    parts = [p for p in list_files(fs, join(root, PARTS_DIR)) if p.endswith(".parquet")] if can_list(fs) else []
    examples = 0
    for part in parts:
        with fs.open(join(root, f"{PARTS_DIR}/{part}"), "rb") as f:  # the footer alone
            examples += pq.read_metadata(f).num_rows
    return "\n".join(
        [
            f"cache        {path}",
            f"schema       {meta.get(ATTR_SCHEMA)} v{meta.get(ATTR_VERSION)}",
            "complete     False (rerun the same teacher-cache command to resume)",
            f"teacher      {_get(meta, ATTR_TEACHER, 'id')}",
            f"top-k        {meta.get(ATTR_TOP_K)}   temperature {meta.get(ATTR_TEMPERATURE)}   "
            f"answers {meta.get(ATTR_ANSWERS)}",
            f"committed    {examples} examples in {len(parts)} parts",
        ]
    )


def _creation_cut_short(path: str) -> bool:
    """A writer killed between creating the arrays and writing the attributes that mark a cache as created."""
    fs, root = filesystem(path)
    if not can_list(fs) or not fs.exists(join(root, GROUP_META_FILE)):
        return False
    if ATTR_SCHEMA in read_attrs(path, fs, root):
        return False
    names = {rel.split("/")[0] for rel in list_files(fs, root)}
    return bool(names & set(ARRAY_DTYPES)) and names <= {GROUP_META_FILE, PARTS_DIR, *ARRAY_DTYPES}


def _ids_line(cache: Cache, bytes_per_row: float) -> str:
    if not cache.has_topk_ids:
        return "no"
    which = "" if cache.ids_k == cache.top_k else f" for the first {cache.ids_k} of the {cache.top_k} entries"
    return f"stored{which}, {bytes_per_row:.1f} bytes/row"


def describe(cache: Cache) -> str:
    """A human summary of a complete cache."""
    p, counts = provenance(cache), cache.meta[ATTR_COUNTS]
    sizes = _sizes(cache)
    stored = sum(size for rel, size in sizes.items() if rel.split("/")[0] in (PROBS, TAIL))
    rows = max(p["rows"], 1)
    per_row = {
        name: sum(s for rel, s in sizes.items() if rel.split("/")[0] == name) / rows
        for name in (TOPK_IDS, SPANS, LABEL_PROBS)
    }
    lines = [
        f"cache        {cache.path}",
        f"schema       {p['schema']} v{p['schema_version']} (kdpipe {p['tool_version']})",
        f"complete     {cache.meta[ATTR_COMPLETE]}",
        f"created      {p['created_at']} on {p['created_on']}",
        f"teacher      {p['teacher']} (revision {p['revision']}, {p['quantization']}, {p['compute_dtype']})",
        f"top-k        {p['top_k']}   temperature {p['temperature']}   answers {p['answers']}",
        f"text         {_text_line(cache.meta)}",
        f"mixture      {str(p['mixture_fingerprint'])[:16]}  split {_get(cache.meta, ATTR_MIXTURE, 'split')}  "
        f"seed {_get(cache.meta, ATTR_MIXTURE, 'seed')}",
        f"examples     {p['examples']}   rows {p['rows']}",
        f"size         {sum(sizes.values())} bytes; probs + tail {stored / max(p['rows'], 1):.1f} bytes/row",
        f"top-k ids    {_ids_line(cache, per_row[TOPK_IDS])}",
        "token layout "
        + (
            f"yes (schema v{'1.3' if byte_exact_spans(cache.meta) else '1.1'}): spans {per_row[SPANS]:.1f} + label "
            f"probs {per_row[LABEL_PROBS]:.1f} bytes/row, "
            f"teacher vocabulary {_get(cache.meta, ATTR_VOCAB, 'size')} tokens"
            if cache.has_token_spans
            else "no (token-aware losses need a cache with it, written by teacher-cache)"
        ),
        "per task     "
        + "  ".join(
            f"{t}: {c.get('examples')} ex / {c.get('rows')} rows" for t, c in (counts.get("per_task") or {}).items()
        ),
    ]
    lines += _file_lines(cache)
    if p["worker"]:
        lines.append(f"part         {p['worker']} (join the parts with kdpipe cache merge)")
    if p["merged_from"]:
        lines.append(f"merged       from {p['merged_from']} worker parts")
    for label in ("skipped", "truncated"):
        nonzero = nonzero_counts(counts.get(label) or {})
        if nonzero:
            lines.append(f"{label:<13}{json.dumps(nonzero)}")
    return "\n".join(lines)


def _file_lines(cache: Cache) -> list[str]:
    """The provenance of each file task (ATTR_MIXTURE files) and how many examples carry a source id."""
    files = _get(cache.meta, ATTR_MIXTURE, "files") or {}
    lines = []
    for spec, f in files.items() if isinstance(files, dict) else ():
        fields = ",".join(f"{role}={column}" for role, column in (f.get("fields") or {}).items())
        split = f"  split {f['split']}" if f.get("split") else ""
        lines.append(
            f"file task    {f.get('name')}: {spec}{split}  sha256 {f.get('sha256')}  {f.get('rows')} rows  "
            f"fields {fields}"
        )
    with_id = sum(s is not None for s in cache.source_ids)
    has_column = SOURCE_ID in cache.examples.column_names
    lines.append(
        f"source ids   {with_id} of {len(cache)} examples" if has_column else "source ids   none (a cache before v1.3)"
    )
    return lines


def _text_line(meta: dict) -> str:
    """How the teacher saw the text (ATTR_TEXT), in one line."""
    text = meta.get(ATTR_TEXT)
    if not isinstance(text, dict):
        return "not recorded (written before the text contract)"
    return (
        f"{text.get('layout')} layout; prompts up to {text.get('max_prompt_tokens')} tokens "
        f"({text.get('prompt_policy')}), answers up to {text.get('max_answer_tokens')} rows "
        f"({text.get('answer_overflow')} when longer)"
    )


def _sizes(cache: Cache) -> dict[str, int]:
    """Bytes of each listed file: one listing where the store can list, else one request per file."""
    listed = listed_files(cache.meta, cache.path)
    if can_list(cache.fs):
        prefix = cache.root.rstrip("/") + "/" if cache.root else ""
        found = cache.fs.find(cache.root or "/", withdirs=False, detail=True)
        sizes = {name.removeprefix(prefix).lstrip("/"): info["size"] for name, info in found.items()}
        return {rel: sizes.get(rel, 0) for rel in listed}
    return {rel: cache.fs.size(join(cache.root, rel)) for rel in listed}


def _get(meta: dict, attr: str, key: str):
    value = meta.get(attr)
    return value.get(key) if isinstance(value, dict) else None


def nonzero_counts(counts: dict) -> dict:
    """Nested counts with the zeros and empty groups left out."""
    out = {}
    for key, value in counts.items():
        value = nonzero_counts(value) if isinstance(value, dict) else value
        if value:
            out[key] = value
    return out


def provenance(cache: Cache) -> dict:
    """Where a cache comes from, for display and for the artifacts trained from it (JSON-ready)."""
    m = cache.meta
    worker, merged = m.get(ATTR_WORKER), m.get(ATTR_MERGED)
    return {
        "path": cache.path,
        "schema": m.get(ATTR_SCHEMA),
        "schema_version": m.get(ATTR_VERSION),
        "tool_version": m.get(ATTR_TOOL_VERSION),
        "created_at": _get(m, ATTR_CREATED, "at"),
        "created_on": _get(m, ATTR_CREATED, "on"),
        "teacher": _get(m, ATTR_TEACHER, "id"),
        "revision": _get(m, ATTR_TEACHER, "revision"),
        "quantization": _get(m, ATTR_TEACHER, "quantization"),
        "compute_dtype": _get(m, ATTR_TEACHER, "compute_dtype"),
        "tokenizer_fingerprint": m.get(ATTR_TOKENIZER_FP),
        "top_k": m.get(ATTR_TOP_K),
        "temperature": m.get(ATTR_TEMPERATURE),
        "answers": m.get(ATTR_ANSWERS),
        "mixture_fingerprint": m.get(ATTR_MIXTURE_FP),
        "examples": len(cache),
        "rows": cache.total_rows,
        "worker": f"worker {worker['index']} of {worker['count']}" if isinstance(worker, dict) else None,
        "merged_from": merged.get("parts") if isinstance(merged, dict) else None,
        "attrs_digest": m.get(ATTR_DIGEST),
    }


def check_provenance(cache: Cache, expected_mixture_fingerprint: str | None, accept: bool = False) -> None:
    """Refuse a cache a trainer should not silently use: another schema version (always), a mixture other than
    the configured one or a lone worker part (unless ``accept``, the user's ``--accept-cache``).

    ``expected_mixture_fingerprint``: ``fingerprint(mixture_spec(...))`` of the mixture the config asks for, or
    None to accept any mixture.
    """
    version = cache.meta.get(ATTR_VERSION)
    if version not in READABLE_VERSIONS:
        raise CacheError(
            f"{cache.path}: schema version {version!r}, this kdpipe reads " + " and ".join(map(str, READABLE_VERSIONS))
        )
    problems = []
    have = cache.meta.get(ATTR_MIXTURE_FP)
    if expected_mixture_fingerprint is not None and have != expected_mixture_fingerprint:
        problems.append(
            f"its mixture fingerprint {have} differs from the configured mixture's {expected_mixture_fingerprint}"
        )
    worker = cache.meta.get(ATTR_WORKER)
    if isinstance(worker, dict):
        problems.append(
            f"it is the part of worker {worker.get('index')} of {worker.get('count')} only "
            "(join the parts with kdpipe cache merge)"
        )
    if not problems:
        return
    if not accept:
        raise CacheError(f"{cache.path}: {'; '.join(problems)}; pass --accept-cache to use it anyway")
    log.warning("%s: %s; using it anyway (--accept-cache)", cache.path, "; ".join(problems))
