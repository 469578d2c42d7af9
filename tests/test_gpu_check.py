import json

import pytest
import torch
from click.testing import CliRunner

from pipeline import gpu_check
from pipeline.cli import main
from pipeline.config import GpuCheckConfig
from tests.helpers import one_line_error


def test_without_cuda_it_stops_at_once_with_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # what this CPU machine says anyway
    result = CliRunner().invoke(main, ["gpu-check", "--out", str(tmp_path / "check")])
    one_line_error(result, "gpu-check needs a CUDA device and this machine has none")
    assert not (tmp_path / "check").exists()


def test_the_same_measurements_run_on_the_cpu_and_give_one_json_summary(demo_models, tmp_path):
    """The CUDA path with the CPU swapped in (no NF4, fp32) and small sizes: every figure is produced."""
    cfg = GpuCheckConfig(
        out=str(tmp_path / "check"),
        teacher=str(demo_models["teacher"]),
        student=str(demo_models["student"]),
        examples=48,
        distill_steps=3,
        data_rows=3000,
        bench_vocab=1024,
        bench_medium=False,
        bench_rounds=1,
    )
    summary = gpu_check.measure(cfg, torch.device("cpu"), quantize="none", precision="fp32")
    assert json.loads((tmp_path / "check" / gpu_check.SUMMARY_FILE).read_text()) == summary
    assert summary["device"] == "cpu" and summary["peak_gpu_memory_gib"] is None
    assert summary["teacher_rows_s"] > 0 and summary["distill_tokens_s"] > 0
    assert 0 <= summary["uld_share_of_step"] < 1 and 0 <= summary["data_wait_fraction"] <= 1
    details = summary["details"]
    # the same unquantized teacher twice: identical rows, so the NF4 comparison reads 0 and 1 on a GPU's bf16 twin
    assert (
        details["teacher_cache"]["l1_vs_unquantized"] == 0
        and details["teacher_cache"]["top1_agreement_vs_unquantized"] == 1
    )
    assert details["distill"]["steps"] == 3 and details["uld"]["speedup"] > 0
    assert details["data_path"]["rows"] >= 3000 and details["data_path"]["delivered_rows_s"] > 0
    assert not (tmp_path / "check" / "data").exists()  # the synthetic cache is removed


def test_a_checkout_without_the_benchmarks_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_check, "BENCHMARKS", tmp_path)
    with pytest.raises(gpu_check.GpuCheckError, match="run it from a source checkout"):
        gpu_check.measure(
            GpuCheckConfig(out=str(tmp_path / "o")), torch.device("cpu"), quantize="none", precision="fp32"
        )
