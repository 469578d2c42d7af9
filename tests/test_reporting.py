"""distill --report-to tensorboard: the event file holds the metrics.jsonl rows and the run's config."""

from __future__ import annotations

import json

import pytest

from pipeline.config import DistillConfig, to_dict
from pipeline.student import reporting
from stages import distill, teacher_cache
from tests.helpers import small_teacher_cache_config, step_metrics


def test_tensorboard_event_file_holds_every_metrics_row(demo_models, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cache = small_teacher_cache_config(demo_models["teacher"], tasks={"demo_yesno": 8}, out=str(tmp_path / "cache"))
    teacher_cache.run(cache)
    cfg = DistillConfig(
        student=str(demo_models["student"]),
        cache=cache.out,
        out=str(tmp_path / "student"),
        steps=3,
        batch_size=4,
        device="cpu",
        lanes=2,
        checkpoint_every=0,
        report_to="tensorboard",
    )
    distill.run(cfg)
    rows = step_metrics(tmp_path / "student")
    events = EventAccumulator(str(tmp_path / "student" / reporting.TENSORBOARD_DIR), size_guidance={"tensors": 0})
    events.Reload()
    for key in ("loss", "ce", "uld", "lr", "grad_norm"):
        logged = events.Scalars(f"train/{key}")
        assert [e.step for e in logged] == [r["step"] for r in rows]
        assert [e.value for e in logged] == pytest.approx([r[key] for r in rows], rel=1e-6)
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(config.strip("`\njson")) == json.loads(json.dumps(to_dict(cfg)))


def test_an_unavailable_reporter_is_one_line(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(reporting.ConfigError, match="--report-to wandb: the wandb package is not installed"):
        reporting.open_reporter("wandb", tmp_path, {})
    assert type(reporting.open_reporter("none", tmp_path, {})) is reporting.Reporter
