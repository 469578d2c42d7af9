import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

import cache_schema as cs
from pipeline.student.cache_stream import IGNORE_INDEX, BatchStream, StudentEncoder, chunk_groups, epoch_order
from pipeline.text import TextEncoder, TextSpec
from tests.helpers import TEXT_CACHE_CHUNK_ROWS as CHUNK_ROWS
from tests.helpers import TEXT_CACHE_K as K
from tests.helpers import write_text_cache


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> cs.Cache:
    return cs.open_cache(write_text_cache(tmp_path_factory.mktemp("reader") / "cache"))


@pytest.fixture(scope="module")
def encoder(demo_models) -> StudentEncoder:
    tokenizer = AutoTokenizer.from_pretrained(demo_models["student"])
    return StudentEncoder(TextEncoder(tokenizer, TextSpec("causal", 64, 16, "cut")))


def take(cache, encoder, n_batches: int, **kwargs) -> list:
    options = {"batch_size": 7, "seed": 0, "shuffle_chunks": 2, **kwargs}
    with BatchStream(cache, encoder, **options) as stream:
        return [next(stream) for _ in range(n_batches)]


def test_every_example_is_delivered_once_per_epoch_and_epochs_are_reshuffled(cache, encoder):
    n = len(cache)
    batches = take(cache, encoder, n_batches=(3 * n) // 7 + 1)  # batches of 7 run across epoch boundaries
    stream = np.concatenate([b.indices for b in batches])
    epochs = [stream[e * n : (e + 1) * n] for e in range(3)]
    for order in epochs:
        assert sorted(order.tolist()) == list(range(n))
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    assert [b.step for b in batches] == list(range(len(batches)))  # one lane, a micro-batch per step


def test_order_is_a_pure_function_of_the_seed(cache, encoder):
    first = np.concatenate([b.indices for b in take(cache, encoder, 9, seed=3)])
    again = np.concatenate([b.indices for b in take(cache, encoder, 9, seed=3)])
    other = np.concatenate([b.indices for b in take(cache, encoder, 9, seed=4)])
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert not np.array_equal(first, np.sort(first))  # shuffled, not cache order


def test_starting_at_a_step_gives_the_same_batches_without_reading_what_comes_before(cache, encoder):
    full = take(cache, encoder, 20)
    with BatchStream(cache, encoder, batch_size=7, seed=0, shuffle_chunks=2, start_step=12) as stream:
        resumed = [next(stream) for _ in range(8)]
        reads = stream.stats.rows_read
    for a, b in zip(full[12:], resumed, strict=True):
        np.testing.assert_array_equal(a.indices, b.indices)
        for name in ("input_ids", "attention_mask", "labels", "teacher_probs", "teacher_lengths"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert reads < 2 * cache.total_rows  # started in the second epoch without reading the first


def test_reads_are_one_sequential_range_per_chunk_group(cache, encoder, monkeypatch):
    calls = []
    original = cache.read_rows

    def recording(start, stop):
        calls.append((start, stop))
        return original(start, stop)

    monkeypatch.setattr(cache, "read_rows", recording)
    groups = chunk_groups(cache, 2)
    take(cache, encoder, n_batches=2 * len(cache) // 7)  # two epochs
    span = 2 * CHUNK_ROWS
    for epoch in (calls[: len(groups)], calls[len(groups) : 2 * len(groups)]):
        # one read per group per epoch; together they tile the row axis, each one contiguous range
        assert sorted(epoch)[0][0] == 0 and sorted(epoch)[-1][1] == cache.total_rows
        assert all(a[1] == b[0] for a, b in zip(sorted(epoch), sorted(epoch)[1:], strict=False))
        for start, stop in epoch:
            assert stop - start <= span + int(cache.n_rows.max())
            starting = cache.row_start[(cache.row_start >= start) & (cache.row_start < stop)]
            assert starting[0] == start and (starting // span == start // span).all()  # one group's examples
    assert calls[: len(groups)] != calls[len(groups) : 2 * len(groups)]  # groups visited in a new order


def test_teacher_rows_are_the_cached_rows_of_each_example(cache, encoder):
    for batch in take(cache, encoder, 6):
        assert batch.teacher_probs.dtype == torch.float32 and batch.teacher_probs.shape[2] == K
        for b, i in enumerate(batch.indices):
            item = cache[int(i)]
            n = len(item.probs)
            assert int(batch.teacher_lengths[b]) == n == cache.n_rows[i]
            np.testing.assert_array_equal(batch.teacher_probs[b, :n].numpy(), item.probs)
            assert not batch.teacher_probs[b, n:].any()


def test_student_tokens_mask_the_prompt_and_end_the_answer_with_eos(cache, encoder):
    tok = encoder.tokenizer
    batch = take(cache, encoder, 1)[0]
    for b, i in enumerate(batch.indices):
        prompt = cache.examples.column("prompt")[int(i)].as_py()
        answer = cache.examples.column("answer")[int(i)].as_py()
        length = int(batch.attention_mask[b].sum())
        assert batch.attention_mask[b, :length].all() and not batch.attention_mask[b, length:].any()
        # the llm-recipes layout written out: BOS + prompt, then " " + answer + EOS (cut to 16 with EOS kept)
        answer_ids = tok(" " + answer, add_special_tokens=False).input_ids[:15] + [tok.eos_token_id]
        labels = batch.labels[b]
        assert labels[labels != IGNORE_INDEX].tolist() == answer_ids
        n_prompt = length - len(answer_ids)
        assert (labels[:n_prompt] == IGNORE_INDEX).all() and (labels[length:] == IGNORE_INDEX).all()
        assert batch.input_ids[b, 0] == tok.bos_token_id
        assert tok.decode(batch.input_ids[b, 1:n_prompt]) == prompt
        assert batch.input_ids[b, n_prompt:length].tolist() == answer_ids
        assert (batch.input_ids[b, length:] == tok.eos_token_id).all()  # pad under the mask, no new token


def test_prefetch_and_decoded_rows_stay_bounded(cache, encoder):
    with BatchStream(cache, encoder, batch_size=4, seed=0, shuffle_chunks=2, prefetch=3) as stream:
        time.sleep(0.5)  # nobody consumes: the producer must stop at the queue bound
        assert stream.stats.batches == 3
        for _ in range(40):
            next(stream)
        assert stream.stats.max_group_rows <= 2 * CHUNK_ROWS + int(cache.n_rows.max())
    assert not any(t.name == "cache-reader" for t in threading.enumerate())  # closed with the context


def test_epoch_order_depends_on_nothing_but_seed_and_epoch(cache):
    groups = chunk_groups(cache, 2)
    a, b = epoch_order(groups, 5, 2), epoch_order(groups, 5, 2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert sorted(np.concatenate(a).tolist()) == list(range(len(cache)))
    assert not all(np.array_equal(x, y) for x, y in zip(a, epoch_order(groups, 5, 3), strict=True))


def test_an_incomplete_cache_is_refused(tmp_path):
    write_text_cache(tmp_path / "partial", finalize=False)
    with pytest.raises(cs.CacheError, match="incomplete"):
        cs.open_cache(tmp_path / "partial")


def test_a_zipped_cache_streams_the_same_batches(cache, encoder, tmp_path):
    zipped = tmp_path / "cache.zip"
    with zipfile.ZipFile(zipped, "w", compression=zipfile.ZIP_STORED) as z:
        for file in sorted(Path(cache.path).rglob("*")):
            if file.is_file():
                z.write(file, file.relative_to(cache.path).as_posix())
    for a, b in zip(take(cache, encoder, 12), take(cs.open_cache(str(zipped)), encoder, 12), strict=True):
        np.testing.assert_array_equal(a.indices, b.indices)
        assert torch.equal(a.teacher_probs, b.teacher_probs) and torch.equal(a.input_ids, b.input_ids)


def step_indices(stream: BatchStream, steps: int) -> list[list[int]]:
    return [[int(i) for b in stream.next_step() for i in b.indices] for _ in range(steps)]


def lane_streams(cache, seed: int, shuffle_chunks: int, lanes: int, length: int) -> list[list[list[int]]]:
    """The documented order, written out: group visits of all epochs dealt round-robin to lanes.

    Returns, per lane, its visits (each the visited group's examples in delivery order) until ``length`` examples.
    """
    groups = chunk_groups(cache, shuffle_chunks)
    out = []
    for lane in range(lanes):
        visits, visit = [], lane
        while sum(map(len, visits)) < length:
            visits.append(epoch_order(groups, seed, visit // len(groups))[visit % len(groups)].tolist())
            visit += lanes
        out.append(visits)
    return out


def test_steps_draw_equally_from_lanes_and_ranks_share_them_without_changing_them(cache, encoder, monkeypatch):
    lanes, per_lane, steps = 4, 3, 2 * len(cache) // 12  # 12 examples a step, about two epochs
    options = {"batch_size": 3, "seed": 1, "shuffle_chunks": 2, "step_examples": lanes * per_lane, "lanes": lanes}
    visits = lane_streams(cache, 1, 2, lanes, (steps + 4) * per_lane)  # and what a reader may read ahead
    flat = [[i for visit in lane for i in visit] for lane in visits]
    expected = [[i for lane in flat for i in lane[s * per_lane : (s + 1) * per_lane]] for s in range(steps)]
    with BatchStream(cache, encoder, **options) as stream:
        assert stream.micro_batches == 4
        assert step_indices(stream, steps) == expected
    for rank in (0, 1):
        reads = []
        original = cache.read_rows
        monkeypatch.setattr(cache, "read_rows", lambda a, b, r=reads, o=original: r.append((a, b)) or o(a, b))
        with BatchStream(cache, encoder, **options, rank=rank, world_size=2, prefetch=1) as stream:
            assert stream.micro_batches == 2  # its 6 examples of each step, in micro-batches of at most 3
            mine = [lane for lane in range(lanes) if lane % 2 == rank]
            share = [[i for lane in mine for i in flat[lane][s * per_lane : (s + 1) * per_lane]] for s in range(steps)]
            assert step_indices(stream, steps) == share
        monkeypatch.undo()
        # It read its own lanes' visits, each once, in the order its steps need them, and nothing else.
        needed = []
        for position, lane in enumerate(mine):
            first = 0  # a visit is read when the lane needs its first example
            for k, visit in enumerate(visits[lane]):
                needed.append((first // per_lane, position, k, (int(min(visit)), int(max(visit)))))
                first += len(visit)
        needed.sort()
        ranges = [(int(cache.row_start[a]), int(cache.row_start[b] + cache.n_rows[b])) for *_, (a, b) in needed]
        assert len(reads) >= sum(step < steps for step, *_ in needed) and reads == ranges[: len(reads)]
        assert sum(b - a for a, b in reads) < 0.75 * 2 * cache.total_rows  # about half of two epochs


def test_the_global_batch_does_not_depend_on_the_micro_batch_size(cache, encoder):
    """--batch-size only cuts a step into micro-batches: the step's examples are those of the config's order."""
    options = {"seed": 2, "shuffle_chunks": 2, "step_examples": 8, "lanes": 2}
    with (
        BatchStream(cache, encoder, batch_size=8, **options) as a,
        BatchStream(cache, encoder, batch_size=3, **options) as b,
    ):
        assert (a.micro_batches, b.micro_batches) == (1, 3)
        assert step_indices(a, 10) == step_indices(b, 10)
    with pytest.raises(ValueError, match="lanes"):
        BatchStream(cache, encoder, batch_size=2, seed=0, shuffle_chunks=2, step_examples=8, lanes=4, world_size=3)
