"""Issue 26: no cache metadata, however mutated, ends in a traceback.

Each attribute of a small token-layout cache (a worker's part, so the merge attributes are there too) and each
field of its arrays' zarr.json is replaced in turn by values of the wrong type, sign or size, with the attrs
digest forged to match, and ``kdpipe cache info``, ``verify`` and ``merge`` run on the result in-process: each
either succeeds or prints one ``Error:`` line and exits 1."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import cache_schema as cs
from pipeline.cli import main
from tests.helpers import write_known_rows_cache

# what a hostile teammate puts in place of a value: other types, signs and sizes, nesting, an empty record
MUTATIONS = [None, -1, 0, 2**63, 1.5, True, "x", "", [], {}, [[1, 2]], {"a": {}}, [0] * 5, -(2**40)]


@pytest.fixture(scope="module")
def part(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / "worker-0-of-1"
    write_known_rows_cache(path, lengths=(3, 1, 5, 2, 4, 2), store_ids=True, token_layout=True)
    group = zarr.open_group(zarr.storage.LocalStore(path), mode="r+")
    attrs = group.attrs.asdict()
    attrs.update(cs.worker_attrs(0, 1, 3))
    attrs[cs.ATTR_BATCH_EXAMPLES] = [2, 2, 2]
    attrs[cs.ATTR_DIGEST] = cs.attrs_digest(attrs)
    group.attrs.put(attrs)
    return path


def _paths(value, prefix=()):
    """Every (key path) of a JSON value, containers and leaves, the root left out."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield (*prefix, key)
        if len(prefix) < 3:
            yield from _paths(child, (*prefix, key))


def _replace(value, path, new):
    value = json.loads(json.dumps(value))
    target = value
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new
    return value


def _run(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"kdpipe {' '.join(args)}: a traceback") from result.exception
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    if result.exit_code:
        assert result.exit_code == 1 and len(lines) == 1 and len(lines[0]) < 2000, result.output[-2000:]
    return result.exit_code, result.output


def _cases(part: Path, rng: np.random.Generator, per_path: int):
    """(file: "attrs" or an array, key path, new value): ``per_path`` mutations of each field, drawn by ``rng``."""
    attrs = json.loads((part / cs.GROUP_META_FILE).read_text())["attributes"]
    files = [("attrs", attrs)]
    files += [
        (a, json.loads((part / a / cs.GROUP_META_FILE).read_text())) for a in (cs.PROBS, cs.SPANS, cs.VOCAB_OFFSETS)
    ]
    for where, meta in files:
        for path in _paths(meta):
            if path[0] != cs.ATTR_DIGEST:
                for i in rng.choice(len(MUTATIONS), per_path, replace=False):
                    yield where, path, MUTATIONS[i]


@pytest.mark.parametrize(
    "per_path",
    [pytest.param(1, id="one-per-field"), pytest.param(len(MUTATIONS), id="every-mutation", marks=pytest.mark.slow)],
)
def test_mutated_metadata_never_ends_in_a_traceback(part, tmp_path, per_path):
    cases = list(_cases(part, np.random.default_rng(26), per_path))
    assert len(cases) >= 150 * per_path
    outcomes = {0: 0, 1: 0}
    for n, (where, path, new) in enumerate(cases):
        cache = Path(shutil.copytree(part, tmp_path / f"c{n}" / "worker-0-of-1"))
        if where == "attrs":
            group_meta = json.loads((cache / cs.GROUP_META_FILE).read_text())
            attrs = _replace(group_meta["attributes"], path, new)
            attrs[cs.ATTR_DIGEST] = cs.attrs_digest(attrs)  # forged: the digest alone would catch every edit
            group_meta["attributes"] = attrs
            (cache / cs.GROUP_META_FILE).write_text(json.dumps(group_meta))
        else:
            file = cache / where / cs.GROUP_META_FILE
            file.write_text(json.dumps(_replace(json.loads(file.read_text()), path, new)))
        for args in (["cache", "info", str(cache)], ["cache", "verify", str(cache)]):
            code, _ = _run(args)
            outcomes[code] += 1
        if where == "attrs" and path[0] in (cs.ATTR_WORKER, cs.ATTR_BATCH_EXAMPLES, cs.ATTR_LAYOUT, cs.ATTR_COUNTS):
            _run(["cache", "merge", str(cache), str(tmp_path / f"c{n}" / "merged")])
        shutil.rmtree(tmp_path / f"c{n}")
    assert outcomes[1] > 0 and outcomes[0] > 0  # some edits are harmless (a teacher id), most are refused
