"""distill --loss uld-aligned | hybrid from a v1.1 cache, and the one-line refusals of caches that lack the layout."""

import json
import math

import pytest

from stages import distill
from tests.test_cache_schema import write_cache as write_schema_cache
from tests.test_distill import cache, cli, metrics, one_line_error, small_config  # noqa: F401 (cache: a fixture)


@pytest.mark.parametrize("loss", ["uld-aligned", "hybrid"])
def test_token_aware_losses_train_from_a_v1_1_cache(loss, cache, demo_models, tmp_path):  # noqa: F811
    cfg = small_config(demo_models["student"], loss=loss, steps=6, checkpoint_every=0, keep_checkpoint=False)
    result = distill.run(cfg, cache, tmp_path / "student")
    rows = metrics(tmp_path / "student")
    assert len(rows) == 6 and all(math.isfinite(r["loss"]) and r["uld"] > 0 for r in rows)
    assert result.final["loss"] == pytest.approx(result.final["ce"] + cfg.uld_weight * result.final["uld"], abs=1e-5)
    record = json.loads((tmp_path / "student" / distill.RUN_FILE).read_text())
    assert record["config"]["loss"] == loss and record["align_seconds"] > 0


def test_a_cache_without_the_token_layout_is_refused_in_one_line(demo_models, tmp_path):
    student = ["--student", str(demo_models["student"])]
    write_schema_cache(tmp_path / "v1", store_ids=True)
    result = cli("--cache", str(tmp_path / "v1"), "--out", str(tmp_path / "o1"), "--loss", "uld-aligned", *student)
    one_line_error(result, "--loss uld-aligned")
    assert "has no token spans" in result.output and "--loss uld" in result.output
    write_schema_cache(tmp_path / "no-ids", token_layout=True)
    result = cli("--cache", str(tmp_path / "no-ids"), "--out", str(tmp_path / "o2"), "--loss", "hybrid", *student)
    one_line_error(result, "--loss hybrid")
    assert "stores no teacher top-k ids" in result.output
