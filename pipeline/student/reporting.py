"""Training logs people read: the rows of metrics.jsonl, also sent to TensorBoard or Weights & Biases.

``metrics.jsonl`` stays the record distill resumes from and tests read; ``--report-to`` adds a live view of the
same rows, with the run's config. TensorBoard writes event files under ``<out>/tensorboard`` (``tensorboard
--logdir <out>/tensorboard``), through torch's own ``SummaryWriter``; W&B logs to its project ``kdpipe`` and honours
``WANDB_MODE=offline`` (and every other ``WANDB_*`` setting) as ``wandb.init`` does. A resumed run appends the steps
it trains to the same TensorBoard folder.
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path

from pipeline.config import ConfigError

TENSORBOARD_DIR = "tensorboard"


class Reporter:
    """Sends metrics rows somewhere; the base class sends them nowhere (``--report-to none``)."""

    def log(self, row: dict) -> None:
        """One metrics.jsonl row: every finite number in it, at its ``step``."""

    def close(self) -> None:
        pass


class _TensorBoard(Reporter):
    def __init__(self, out: Path, config: dict):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's writer needs the tensorboard package
            raise ConfigError(
                "--report-to tensorboard: the tensorboard package is not installed (pip install 'kdpipe[report]')"
            ) from None
        self.writer = SummaryWriter(log_dir=str(out / TENSORBOARD_DIR))
        self.writer.add_text("config", "```json\n" + json.dumps(config, indent=2, default=str) + "\n```")

    def log(self, row: dict) -> None:
        for key, value in _scalars(row):
            self.writer.add_scalar(f"train/{key}", value, global_step=row["step"])

    def close(self) -> None:
        self.writer.close()


class _WandB(Reporter):
    def __init__(self, out: Path, config: dict):
        try:
            import wandb
        except ImportError:
            raise ConfigError("--report-to wandb: the wandb package is not installed (pip install wandb)") from None
        self.run = wandb.init(project="kdpipe", name=out.name, dir=str(out), config=config, resume="allow")

    def log(self, row: dict) -> None:
        self.run.log({f"train/{k}": v for k, v in _scalars(row)}, step=row["step"])

    def close(self) -> None:
        self.run.finish()


def _scalars(row: dict):
    for key, value in row.items():
        if key != "step" and isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value:
            yield key, float(value)


def open_reporter(kind: str, out: Path, config: dict) -> Reporter:
    """The reporter ``--report-to`` names, writing for the run in ``out`` with its ``config``."""
    if kind == "tensorboard":
        return _TensorBoard(out, config)
    if kind == "wandb":
        return _WandB(out, config)
    return Reporter()
