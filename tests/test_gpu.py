"""CUDA-only checks (skipped without a GPU; `make test` is CPU-only): the 4-bit teacher and a bf16 distill."""

from dataclasses import replace

import numpy as np
import pytest
import torch

import cache_schema as cs
from pipeline.config import DistillConfig
from stages import distill, teacher_cache
from tests.helpers import small_teacher_cache_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_nf4_teacher_cache_stays_close_to_bf16_and_trains_a_bf16_student(demo_models, tmp_path):
    cfg = small_teacher_cache_config(demo_models["teacher"], device="cuda")
    teacher_cache.run(replace(cfg, quantize="nf4", out=str(tmp_path / "nf4")))
    teacher_cache.run(replace(cfg, out=str(tmp_path / "bf16")))
    nf4, bf16 = cs.open_cache(tmp_path / "nf4"), cs.open_cache(tmp_path / "bf16")
    assert nf4.meta[cs.ATTR_TEACHER]["quantization"] == "nf4" and nf4.keys == bf16.keys
    a, b = nf4.read_rows(0, nf4.total_rows)[0], bf16.read_rows(0, bf16.total_rows)[0]
    assert np.mean(np.abs(a - b).sum(1)) < 0.5  # 4-bit weights move the distributions, not replace them
    assert cs.verify_cache(tmp_path / "nf4")["examples"] == len(nf4)
    student = DistillConfig(
        student=str(demo_models["student"]),
        steps=5,
        batch_size=4,
        lanes=4,
        device="cuda",
        precision="bf16",
        checkpoint_every=0,
    )
    result = distill.run(replace(student, cache=str(tmp_path / "nf4"), out=str(tmp_path / "student")))
    assert result.steps == 5 and np.isfinite(result.final["loss"])
