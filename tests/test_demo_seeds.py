"""`make demo-seeds` (benchmarks/demo_seeds.py) end to end, shortened: two seeds, two tasks, a few steps."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from stages import teacher_cache
from tests.conftest import REPO
from tests.helpers import small_teacher_cache_config

TASKS = {"demo_yesno": 8, "demo_qa": 8}


@pytest.mark.slow
def test_demo_seeds_trains_ft_and_kd_per_seed_and_prints_mean_and_sd(demo_models, tmp_path):
    cache = tmp_path / "cache"
    teacher_cache.run(small_teacher_cache_config(demo_models["teacher"], tasks=TASKS, out=str(cache)))
    config = tmp_path / "seeds.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "teacher_cache": {"teacher": str(demo_models["teacher"]), "tasks": TASKS},
                "distill": {
                    "student": str(demo_models["student"]),
                    "steps": 2,
                    "batch_size": 8,
                    "device": "cpu",
                    "checkpoint_every": 0,
                },
                "eval": {"tasks": list(TASKS), "limit": 4, "max_new_tokens": 4, "device": "cpu"},
            }
        )
    )
    out = tmp_path / "seeds"
    proc = subprocess.run(
        [sys.executable, "benchmarks/demo_seeds.py", "--config", str(config), "--cache", str(cache)]
        + ["--seeds", "0,1", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "seeds.json").read_text())
    for name in ("student-ft", "student-kd"):
        assert set(data["runs"][name]) == {"0", "1"}
        assert all(set(values) == set(TASKS) for values in data["runs"][name].values())
    assert set(data["teacher"]) == set(TASKS)
    assert {"demo_yesno", "demo_qa", "all"} <= set(data["pairing"])
    text = (out / "seeds.md").read_text()
    assert "| student-kd |" in text and "| KD − FT (paired) |" in text and "±" in text
    assert (out / "seed1" / "student-kd" / "kdpipe_distill_config.json").is_file()
