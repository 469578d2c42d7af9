"""The token layout (spans, label probabilities, teacher vocabulary; schema v1.1, byte-exact spans from v1.3) beside
v1 caches."""

import numpy as np
import pytest
from click.testing import CliRunner

import cache_schema as cs
from pipeline.cli import main
from pipeline.devtools.synthetic_cache import TEACHER_VOCAB, cache_identity, forge_attrs, peaked_rows
from tests.helpers import as_older_version, edit_array_meta, write_known_rows_cache


def _token_writer(path, **overrides) -> cs.CacheWriter:
    """A writer of a small cache with every id and the token layout (or ``overrides``)."""
    options = {"max_rows": 5, "store_ids": True, "chunk_rows": 4, "shard_rows": 8, "vocab": TEACHER_VOCAB}
    return cs.CacheWriter(path, cache_identity(), **{**options, **overrides})


def test_token_layout_reads_back(tmp_path):
    written = write_known_rows_cache(tmp_path / "c", store_ids=True, token_layout=True)
    cache = cs.open_cache(tmp_path / "c")
    assert cache.meta[cs.ATTR_VERSION] == cs.SCHEMA_VERSION == "1.3"  # every new cache has source_id (v1.3)
    assert cache.has_token_spans and cache.has_topk_ids
    assert cache.teacher_vocab() == TEACHER_VOCAB
    start = 0
    for i, n in enumerate((3, 1, 5, 2)):
        ex = cache[i]
        np.testing.assert_array_equal(ex.spans, written["spans"][start : start + n])
        assert ex.spans.dtype == np.int32 and ex.label_probs.dtype == np.float32
        # float16 storage: relative error at most 2^-11
        np.testing.assert_allclose(ex.label_probs, written["label"][start : start + n], rtol=2**-11)
        start += n
    report = cs.verify_cache(tmp_path / "c")
    assert report["token_layout"] and report["teacher_vocab"] == len(TEACHER_VOCAB)
    text = cs.describe(cache)
    assert "token layout yes (schema v1.3)" in text and f"teacher vocabulary {len(TEACHER_VOCAB)} tokens" in text
    assert "top-k ids    stored" in text


def test_a_v1_cache_still_opens_verifies_and_says_it_has_no_token_layout(tmp_path):
    write_known_rows_cache(tmp_path / "c", store_ids=True)
    as_older_version(tmp_path / "c", 1)  # what kdpipe's v1 writer left: no token_spans flag, no source_id
    cache = cs.open_cache(tmp_path / "c")
    assert not cache.has_token_spans and cache[0].spans is None and cache[0].label_probs is None
    assert cs.verify_cache(tmp_path / "c")["token_layout"] is False
    cs.check_provenance(cache, None)
    assert "token layout no" in cs.describe(cache)
    with pytest.raises(cs.CacheError, match="no teacher vocabulary"):
        cache.teacher_vocab()


def test_ids_of_entries_stored_as_zero_are_stored_as_zero(tmp_path):
    probs = np.array([[0.9, 0.1, 1e-7, 0.0], [1.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    ids = np.array([[5, 6, 7, 8], [9, 10, 11, 12]], dtype=np.int32)
    writer = cs.CacheWriter(tmp_path / "c", cache_identity(4), max_rows=2, store_ids=True, chunk_rows=4, shard_rows=8)
    record = {"key": "a", "task": "t", "template_id": 0, "prompt": "p", "answer": "ab", "n_rows": 2}
    writer.commit(0, 1, [record], probs, np.zeros(2, np.float32), np.array([5, 9]), ids)
    writer.finalize(cs.counts_attrs(1, 2, {}, {}, {}))
    np.testing.assert_array_equal(cs.open_cache(tmp_path / "c")[0].topk_ids, [[5, 6, 0, 0], [9, 0, 0, 0]])


def test_ids_of_the_first_entries_only_are_kept_in_the_layout(tmp_path):
    written = write_known_rows_cache(tmp_path / "c", store_ids=True, token_layout=True, ids_k=3)
    cache = cs.open_cache(tmp_path / "c")
    assert cache.meta[cs.ATTR_VERSION] == cs.SCHEMA_VERSION
    assert cache.meta[cs.ATTR_LAYOUT]["ids_k"] == 3 and cache.ids_k == 3
    _, _, _, topk = cache.read_rows(0, cache.total_rows)
    full = cs.mask_zero_ids(cs.encode_probs(written["probs"]), written["topk"])
    np.testing.assert_array_equal(topk[:, :3], full[:, :3])
    assert topk.shape == full.shape and (topk[:, 3:] == cs.UNKNOWN_ID).all()
    assert cs.verify_cache(tmp_path / "c")["token_layout"]
    assert "top-k ids    stored for the first 3 of the 8 entries" in cs.describe(cache)
    with pytest.raises(cs.CacheError, match="stores other top-k ids"):
        _token_writer(tmp_path / "c")


@pytest.mark.parametrize(
    "layout, version",
    [({"ids_k": 0}, "1.2"), ({"ids_k": 8}, "1.2"), ({"ids_k": "3"}, "1.2"), ({"ids_k": 3}, "1.1")],
)
def test_a_forged_ids_k_is_refused(tmp_path, layout, version):
    write_known_rows_cache(tmp_path / "c", store_ids=True, token_layout=True, ids_k=3)
    meta = cs.open_cache(tmp_path / "c").meta
    forge_attrs(tmp_path / "c", **{cs.ATTR_LAYOUT: {**meta[cs.ATTR_LAYOUT], **layout}, cs.ATTR_VERSION: version})
    with pytest.raises(cs.CacheError, match="ids_k"):
        cs.open_cache(tmp_path / "c")


def test_an_ids_k_that_disagrees_with_the_array_is_refused(tmp_path):
    write_known_rows_cache(tmp_path / "c", store_ids=True, token_layout=True, ids_k=3)
    meta = cs.open_cache(tmp_path / "c").meta
    forge_attrs(tmp_path / "c", **{cs.ATTR_LAYOUT: {**meta[cs.ATTR_LAYOUT], "ids_k": 2}})
    with pytest.raises(cs.CacheError, match=cs.TOPK_IDS):
        cs.open_cache(tmp_path / "c")


def test_a_token_layout_commit_without_spans_is_refused(tmp_path):
    writer = _token_writer(tmp_path / "c")
    probs, tail = peaked_rows(np.random.default_rng(0), 2, 8)
    record = {"key": "a", "task": "t", "template_id": 0, "prompt": "p", "answer": "ab", "n_rows": 2}
    with pytest.raises(cs.CacheError, match="needs a span and a label probability per row"):
        writer.commit(0, 1, [record], probs, tail, np.zeros(2, np.int32), np.ones((2, 8), np.int32))
    with pytest.raises(cs.CacheError, match="0 <= start <= end"):
        cs.encode_spans(np.array([[3, 2]]))


def test_resuming_with_or_without_the_token_layout_is_refused(tmp_path):
    _token_writer(tmp_path / "c", vocab=None)
    with pytest.raises(cs.CacheError, match="without the token layout"):
        _token_writer(tmp_path / "c")


def _write_with(path, spans=None, label=None) -> None:
    probs, tail = peaked_rows(np.random.default_rng(0), 3, 8)
    topk = np.arange(1, 25, dtype=np.int32).reshape(3, 8)
    writer = cs.CacheWriter(
        path, cache_identity(), max_rows=3, store_ids=True, chunk_rows=4, shard_rows=8, vocab=TEACHER_VOCAB
    )
    key = cs.example_key("t", 0, "p", "abc")  # verify recomputes keys from the text
    record = {"key": key, "task": "t", "template_id": 0, "prompt": "p", "answer": "abc", "n_rows": 3}
    spans = np.array([[0, 1], [1, 2], [2, 3]]) if spans is None else spans
    label = probs[:, 0] if label is None else label
    writer.commit(0, 1, [record], probs, tail, topk[:, 0], topk, spans=spans, label_probs=label)
    writer.finalize(cs.counts_attrs(1, 3, {}, {}, {}))


@pytest.mark.parametrize(
    "spans, label, message",
    [
        (np.array([[0, 1], [1, 2], [2, 4]]), None, "spans outside their answer's bytes"),
        (np.array([[0, 2], [1, 1], [2, 3]]), None, "spans that end before the previous one"),
        (np.array([[0, 2], [1, 2], [2, 3]]), None, "spans that start before the previous one ends"),
        (None, np.array([0.5, 0.5, 0.5]), "disagree with the top-k probability of the same token"),
        (None, np.array([0.5, np.nan, 0.5]), r"label probability outside \[0, 1\]"),
    ],
)
def test_verify_names_inconsistent_token_rows(tmp_path, spans, label, message):
    _write_with(tmp_path / "c", spans, label)
    with pytest.raises(cs.CacheError, match=message):
        cs.verify_cache(tmp_path / "c")
    result = CliRunner().invoke(main, ["cache", "verify", str(tmp_path / "c")])
    assert result.exit_code == 1 and result.output.strip().count("\n") == 0, result.output


def test_a_cache_before_v1_3_may_share_a_span_over_the_rows_of_a_character(tmp_path):
    """v1.1 / v1.2 gave every byte token of a split character the character's span; verify accepts that there only."""
    _write_with(tmp_path / "c", np.array([[0, 2], [0, 2], [2, 3]]))
    with pytest.raises(cs.CacheError, match="start before the previous one ends"):
        cs.verify_cache(tmp_path / "c")
    as_older_version(tmp_path / "c", "1.2")
    cache = cs.open_cache(tmp_path / "c")
    assert not cs.byte_exact_spans(cache.meta) and cs.verify_cache(tmp_path / "c")["token_layout"]
    assert "token layout yes (schema v1.1)" in cs.describe(cache)


def test_hostile_vocabulary_sizes_are_refused_before_reading(tmp_path):
    write_known_rows_cache(tmp_path / "c", store_ids=True, token_layout=True)
    forge_attrs(tmp_path / "c", **{cs.ATTR_VOCAB: {"size": 1 << 40, "bytes": 10}})
    with pytest.raises(cs.CacheError, match="teacher vocabulary .* is not a size in"):
        cs.open_cache(tmp_path / "c")


def test_vocabulary_offsets_that_do_not_cut_the_bytes_are_refused(tmp_path):
    write_known_rows_cache(tmp_path / "c", store_ids=True, token_layout=True)
    cache = cs.open_cache(tmp_path / "c")
    import zarr

    offsets = zarr.open_array(zarr.storage.LocalStore(tmp_path / "c"), path=cs.VOCAB_OFFSETS, mode="r+")
    values = offsets[:]
    values[3] = values[5]  # out of order
    offsets[:] = values
    with pytest.raises(cs.CacheError, match="offsets do not cut"):
        cache.teacher_vocab()


def test_vocabulary_array_of_another_shape_is_refused(tmp_path):
    write_known_rows_cache(tmp_path / "c", store_ids=True, token_layout=True)
    edit_array_meta(tmp_path / "c", cs.VOCAB_OFFSETS, lambda m: m.update(shape=[3]))
    with pytest.raises(cs.CacheError, match="vocab_offsets/zarr.json: shape"):
        cs.open_cache(tmp_path / "c")
