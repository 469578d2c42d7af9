import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.config import GpuCheckConfig
from pipeline.devtools import gpu_check
from tests.helpers import one_line_error, write_known_rows_cache


def test_without_cuda_it_stops_at_once_with_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # what this CPU machine says anyway
    result = CliRunner().invoke(main, ["gpu-check", "--out", str(tmp_path / "check")])
    one_line_error(result, "gpu-check needs a CUDA device and this machine has none")
    assert not (tmp_path / "check").exists()


@pytest.mark.slow
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
        online_examples=24,
        online_steps=1,
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
    online = details["offline_online"]  # 24 examples in batches of 16
    assert online["steps_per_epoch"] == 2 and summary["online_over_offline_step"] == online["ratio"] > 0


def test_the_benchmarks_gpu_check_runs_ship_inside_the_package():
    """An installed kdpipe (a wheel, no source checkout) has every module gpu-check imports."""
    import pipeline
    from pipeline.devtools.benchmarks import data_path, offline_online, step, uld

    package = Path(pipeline.__file__).resolve().parent
    for module in (data_path, offline_online, step, uld):
        assert Path(module.__file__).resolve().is_relative_to(package), module.__file__


def test_the_cache_comparison_measures_how_far_two_caches_differ(tmp_path):
    """The NF4-vs-bf16 figures: 0 and 1 for equal caches, the true L1 and top-1 agreement for different ones."""
    same_a = write_known_rows_cache(tmp_path / "a", store_ids=True, seed=0)
    write_known_rows_cache(tmp_path / "a_again", store_ids=True, seed=0)
    other = write_known_rows_cache(tmp_path / "b", store_ids=True, seed=1)  # same row count, other rows and ids
    assert gpu_check._compare_caches(tmp_path / "a", tmp_path / "a_again") == (0.0, 1.0)

    l1, top1 = gpu_check._compare_caches(tmp_path / "a", tmp_path / "b")
    expected_l1 = np.abs(same_a["probs"] - other["probs"]).sum(axis=1).mean()  # from the rows as written
    expected_top1 = (same_a["topk"][:, 0] == other["topk"][:, 0]).mean()
    assert expected_l1 > 0.05 and expected_top1 < 1
    assert l1 == pytest.approx(expected_l1, abs=1e-3)  # the cache stores probabilities to 1/65535
    assert top1 == pytest.approx(expected_top1)

    write_known_rows_cache(tmp_path / "longer", lengths=(3, 1, 5, 3), store_ids=True)
    with pytest.raises(gpu_check.GpuCheckError, match="11 rows"):
        gpu_check._compare_caches(tmp_path / "a", tmp_path / "longer")
