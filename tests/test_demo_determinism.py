"""The demo is reproducible: two fresh runs of a shortened demo (build, cache, KD, FT, eval) agree bit for bit.

Each run is a fresh process with the settings the Makefile's demo targets pin (one torch thread, AVX2 kernels in
torch and MKL; the model build sets its own DEMO_THREADS), from an empty folder and without the machine's kept
builds: the same weights, the same cache and the same results.md.
"""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PINNED = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}

SHORT_DEMO = textwrap.dedent(
    """
    import sys
    from dataclasses import replace
    from pathlib import Path

    from pipeline.devtools import demo_models
    from pipeline.config import DistillConfig, EvalConfig, TeacherCacheConfig
    from stages import distill, eval as evaluate, teacher_cache

    out = Path(sys.argv[1])
    built = demo_models.build(out / "models", steps=12, pretrain_steps=12)
    tasks = {"demo_yesno": 8, "demo_mc4": 8, "demo_qa": 8, "demo_summary": 8}
    cache = out / "cache"
    teacher_cache.run(
        TeacherCacheConfig(teacher=built["teacher"], tasks=tasks, top_k=8, batch_size=8, device="cpu", out=str(cache))
    )
    base = DistillConfig(
        student=built["student"], epochs=2, batch_size=8, lr=2e-3, device="cpu", checkpoint_every=0, seed=0,
        cache=str(cache),
    )
    kd = distill.run(replace(base, out=str(out / "kd"))).path
    ft = distill.run(replace(base, uld_weight=0.0, out=str(out / "ft"))).path
    evaluate.run(
        EvalConfig(
            models=(built["teacher"], kd, ft),
            names=("teacher", "kd", "ft"),
            tasks=tuple(tasks),
            limit=6,
            max_new_tokens=8,
            device="cpu",
            out=str(out / "eval"),
        )
    )
    """
)


def _run(folder: Path) -> dict[str, str]:
    env = {**os.environ, **PINNED, "PYTHONPATH": str(REPO), "KDPIPE_DEMO_MODELS": "off"}  # each run builds
    done = subprocess.run(
        [sys.executable, "-c", SHORT_DEMO, str(folder)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    wanted = [
        "models/tiny-t5-teacher/model.safetensors",
        "models/tiny-gpt2-student/model.safetensors",
        "kd/model.safetensors",
        "ft/model.safetensors",
    ]
    digests = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in wanted}
    cache_files = sorted(p for p in (folder / "cache").rglob("*") if p.is_file() and p.suffix != ".json")
    digests["cache"] = hashlib.sha256(b"".join(p.read_bytes() for p in cache_files)).hexdigest()
    digests["results.md"] = (folder / "eval" / "results.md").read_text().replace(str(folder), "<run>")
    rows = [json.loads(line) for line in (folder / "kd" / "metrics.jsonl").read_text().splitlines()]
    digests["kd losses"] = json.dumps([{k: r[k] for k in ("step", "loss", "ce", "uld", "grad_norm")} for r in rows])
    return digests


@pytest.mark.slow
def test_two_fresh_short_demo_runs_are_identical(tmp_path):
    first, second = _run(tmp_path / "a"), _run(tmp_path / "b")
    for name in first:
        assert first[name] == second[name], name
