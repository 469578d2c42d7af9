"""Teacher-logit cache, schema v1.3: the single source of truth for the on-disk format.

A cache is a directory (or a zip of one, or an fsspec URL) that is at once a Zarr v3 group and the home
of a Parquet table::

    cache/
      zarr.json            group metadata; its attributes are the cache's metadata (ATTR_* in spec)
      examples.parquet     one row per example, in cache order (EXAMPLE_COLUMNS)
      probs/               uint16  [rows, k]  chunks (chunk_rows, k)  shards (shard_rows, k)  blosc zstd shuffle
      tail/                float32 [rows]     chunks (chunk_rows,)    shards (shard_rows,)
      token_ids/           int32   [rows]     chunks (chunk_rows,)    shards (shard_rows,)
      topk_ids/            int32   [rows, j]  optional (--store-ids): the teacher vocabulary id of each of the first
                                              j = layout.ids_k probs (v1.2, --ids-k; absent: j = k)
      spans/               int32   [rows, 2]  v1.1, token layout: UTF-8 byte [start, end) of the row's token in answer
      label_probs/         float16 [rows]     v1.1, token layout: teacher probability of the row's own token
      vocab_bytes/         uint8   [B]        v1.1, token layout: every teacher token's byte string, concatenated
      vocab_offsets/       int64   [V + 1]    v1.1, token layout: token i is vocab_bytes[offsets[i]:offsets[i + 1]]
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

Top-k ids (``topk_ids``): an entry whose stored probability is 0 carries no mass, and its id is stored as 0
(``mask_zero_ids``), which leaves nothing to the loss and compresses far better than a random id. A cache may
keep the ids of only the first ``layout.ids_k`` entries of each row (v1.2): readers return ``UNKNOWN_ID`` for
the others, whose mass the token-aware losses then treat as unidentified. Ids are what costs most on a large
vocabulary (1.7 bytes each on real SmolLM2 rows, 49k tokens; the ids' own frequencies at each rank leave even an
ideal coder about 9 bits per id, so 64 ids alone outweigh the probabilities), while the last entries of a row
carry less mass: on those rows at k = 64 the first 32 hold 96.7 % of the top-k mass for half the id bytes.

Versions. v1 caches hold probs, tail, token_ids and optionally topk_ids. v1.1 adds the token layout
(``layout.token_spans`` true), what token-aware cross-tokenizer losses need to pair a student token with the
teacher tokens covering the same bytes, offline: per row the byte span of its token in the answer string
(``spans``, stored as start and length: ``spans[:, 1]`` is end − start), the teacher's probability of that
token (``label_probs``, so the probability of a run of tokens is a product of stored values even where the
token fell outside the top-k), and once per cache the teacher's vocabulary as byte strings (``vocab_bytes`` and
``vocab_offsets``; special tokens are empty), so a student maps teacher ids to its own by exact byte string
without the teacher's tokenizer. The token layout rides on v1.1 caches written by teacher-cache; a v1.1 cache
without it (``layout.token_spans`` false or absent) is read like a v1 cache, and v1 caches still open. v1.2 is
v1.1 with ids for fewer than k entries (``layout.ids_k`` < k).

v1.3, what every cache written now is, changes two things. examples.parquet gains the ``source_id`` column (the
example's own id in its source: a SQuAD qid, a user file's ``id``; null where there is none), so older readers
refuse a v1.3 cache by its version instead of by a column they do not know. And ``spans`` change meaning for a
character split over several tokens (é, an emoji, a CJK character in a byte-level BPE or byte-fallback
vocabulary): each of its rows has its own bytes of the character (``pipeline.text.split_characters``), so within an
example no row starts before the previous one ends (``verify`` checks it), and the rows of a generated answer
(``answers`` "teacher") end where their bytes do, not where a decoded prefix ending in U+FFFD would. Merging or
resuming parts of an older version is refused. Older caches still open, without ``source_id``
(``byte_exact_spans`` tells their spans apart): in v1.1 and v1.2 every row of such a character carries the whole
character's span, which the token-aware losses cut by the stored vocabulary's byte lengths into what v1.3 stores;
the rows of a generated answer of such a character cannot be put right, and distill refuses a token-aware loss on
an older generated cache that may hold one (an answer beyond ASCII, and a vocabulary with tokens that are part of a
character).

A cache is untrusted data: nothing in it is executed or unpickled, dtypes and shapes are checked against
this schema before anything is read (no pickle, no object dtype, only the codecs in ALLOWED_CODECS, sizes
bounded by the MAX_* constants), and a mismatch raises :class:`CacheError` naming both values. Every parse is
bounded before it runs: a zarr.json's values and nesting are counted on its bytes (MAX_METADATA_ITEMS,
MAX_METADATA_DEPTH), examples.parquet's text is sized through its dictionary before it is decoded, the
vocabulary may decode to at most 32 times its stored bytes, and the counts an attribute declares (a part's
planned batches) are capped by the cache's own examples. What a reader uses it checks first, with ``verify``'s
checks: rows finite and summing to 1, spans inside their answers, label probabilities in [0, 1], ids inside the
vocabulary (``Cache.read_rows``, ``Cache.read_token_rows``).

Modules: ``spec`` names the format (the constants and encodings above, which this package re-exports); ``store``
maps a path, zip or URL to files and checks them against the checksum list; ``reader`` opens and reads a cache;
``audit`` verifies and describes one; ``writer`` creates and resumes one; ``share`` copies and packs caches;
``merge`` joins worker parts.
"""

# The public API: the format's names (spec), and the code that reads, checks, writes, moves and merges caches.
from cache_schema.audit import check_provenance as check_provenance
from cache_schema.audit import describe as describe
from cache_schema.audit import nonzero_counts as nonzero_counts
from cache_schema.audit import provenance as provenance
from cache_schema.audit import summary as summary
from cache_schema.audit import verify_cache as verify_cache
from cache_schema.merge import find_parts as find_parts
from cache_schema.merge import merge_parts as merge_parts
from cache_schema.reader import Cache as Cache
from cache_schema.reader import open_cache as open_cache
from cache_schema.share import copy_cache as copy_cache
from cache_schema.share import pack_cache as pack_cache
from cache_schema.spec import ALLOWED_CODECS as ALLOWED_CODECS
from cache_schema.spec import ARRAY_DTYPES as ARRAY_DTYPES
from cache_schema.spec import ATTR_ANSWERS as ATTR_ANSWERS
from cache_schema.spec import ATTR_BATCH_EXAMPLES as ATTR_BATCH_EXAMPLES
from cache_schema.spec import ATTR_CHECKSUMS as ATTR_CHECKSUMS
from cache_schema.spec import ATTR_COMPLETE as ATTR_COMPLETE
from cache_schema.spec import ATTR_CONFIG as ATTR_CONFIG
from cache_schema.spec import ATTR_COUNTS as ATTR_COUNTS
from cache_schema.spec import ATTR_CREATED as ATTR_CREATED
from cache_schema.spec import ATTR_DIGEST as ATTR_DIGEST
from cache_schema.spec import ATTR_EOS as ATTR_EOS
from cache_schema.spec import ATTR_LAYOUT as ATTR_LAYOUT
from cache_schema.spec import ATTR_MERGED as ATTR_MERGED
from cache_schema.spec import ATTR_MIXTURE as ATTR_MIXTURE
from cache_schema.spec import ATTR_MIXTURE_FP as ATTR_MIXTURE_FP
from cache_schema.spec import ATTR_SCHEMA as ATTR_SCHEMA
from cache_schema.spec import ATTR_TEACHER as ATTR_TEACHER
from cache_schema.spec import ATTR_TEMPERATURE as ATTR_TEMPERATURE
from cache_schema.spec import ATTR_TEXT as ATTR_TEXT
from cache_schema.spec import ATTR_TOKENIZER_FP as ATTR_TOKENIZER_FP
from cache_schema.spec import ATTR_TOOL_VERSION as ATTR_TOOL_VERSION
from cache_schema.spec import ATTR_TOP_K as ATTR_TOP_K
from cache_schema.spec import ATTR_VERSION as ATTR_VERSION
from cache_schema.spec import ATTR_VOCAB as ATTR_VOCAB
from cache_schema.spec import ATTR_WORKER as ATTR_WORKER
from cache_schema.spec import DEFAULT_CHUNK_ROWS as DEFAULT_CHUNK_ROWS
from cache_schema.spec import DEFAULT_SHARD_ROWS as DEFAULT_SHARD_ROWS
from cache_schema.spec import EXAMPLE_COLUMNS as EXAMPLE_COLUMNS
from cache_schema.spec import EXAMPLE_COLUMNS_V1 as EXAMPLE_COLUMNS_V1
from cache_schema.spec import EXAMPLES_FILE as EXAMPLES_FILE
from cache_schema.spec import GROUP_META_FILE as GROUP_META_FILE
from cache_schema.spec import IDENTITY_ATTRS as IDENTITY_ATTRS
from cache_schema.spec import LABEL_PROBS as LABEL_PROBS
from cache_schema.spec import MAX_CHUNK_BYTES as MAX_CHUNK_BYTES
from cache_schema.spec import MAX_CHUNKS_PER_SHARD as MAX_CHUNKS_PER_SHARD
from cache_schema.spec import MAX_EXAMPLES as MAX_EXAMPLES
from cache_schema.spec import MAX_METADATA_BYTES as MAX_METADATA_BYTES
from cache_schema.spec import MAX_METADATA_DEPTH as MAX_METADATA_DEPTH
from cache_schema.spec import MAX_METADATA_ITEMS as MAX_METADATA_ITEMS
from cache_schema.spec import MAX_ROWS_PER_EXAMPLE as MAX_ROWS_PER_EXAMPLE
from cache_schema.spec import MAX_TOP_K as MAX_TOP_K
from cache_schema.spec import MAX_VOCAB as MAX_VOCAB
from cache_schema.spec import MAX_VOCAB_BYTES as MAX_VOCAB_BYTES
from cache_schema.spec import MERGED_CACHE as MERGED_CACHE
from cache_schema.spec import PARTS_DIR as PARTS_DIR
from cache_schema.spec import PROB_SCALE as PROB_SCALE
from cache_schema.spec import PROBS as PROBS
from cache_schema.spec import READABLE_VERSIONS as READABLE_VERSIONS
from cache_schema.spec import SCHEMA_NAME as SCHEMA_NAME
from cache_schema.spec import SCHEMA_VERSION as SCHEMA_VERSION
from cache_schema.spec import SOURCE_ID as SOURCE_ID
from cache_schema.spec import SPANS as SPANS
from cache_schema.spec import TAIL as TAIL
from cache_schema.spec import TOKEN_ARRAYS as TOKEN_ARRAYS
from cache_schema.spec import TOKEN_IDS as TOKEN_IDS
from cache_schema.spec import TOPK_IDS as TOPK_IDS
from cache_schema.spec import UNKNOWN_ID as UNKNOWN_ID
from cache_schema.spec import VOCAB_ARRAYS as VOCAB_ARRAYS
from cache_schema.spec import VOCAB_BYTES as VOCAB_BYTES
from cache_schema.spec import VOCAB_OFFSETS as VOCAB_OFFSETS
from cache_schema.spec import WORKER_PART as WORKER_PART
from cache_schema.spec import CachedExample as CachedExample
from cache_schema.spec import CacheError as CacheError
from cache_schema.spec import CacheIncomplete as CacheIncomplete
from cache_schema.spec import attrs_digest as attrs_digest
from cache_schema.spec import byte_exact_spans as byte_exact_spans
from cache_schema.spec import changed_files as changed_files
from cache_schema.spec import counts_attrs as counts_attrs
from cache_schema.spec import decode_probs as decode_probs
from cache_schema.spec import decode_spans as decode_spans
from cache_schema.spec import decode_tolerance as decode_tolerance
from cache_schema.spec import decode_vocab as decode_vocab
from cache_schema.spec import encode_probs as encode_probs
from cache_schema.spec import encode_spans as encode_spans
from cache_schema.spec import encode_vocab as encode_vocab
from cache_schema.spec import example_columns as example_columns
from cache_schema.spec import example_key as example_key
from cache_schema.spec import fingerprint as fingerprint
from cache_schema.spec import identity_attrs as identity_attrs
from cache_schema.spec import ids_width as ids_width
from cache_schema.spec import mask_zero_ids as mask_zero_ids
from cache_schema.spec import merged_path as merged_path
from cache_schema.spec import pad_ids as pad_ids
from cache_schema.spec import text_spec as text_spec
from cache_schema.spec import worker_attrs as worker_attrs
from cache_schema.spec import worker_part as worker_part
from cache_schema.writer import CacheComplete as CacheComplete
from cache_schema.writer import CacheWriter as CacheWriter
