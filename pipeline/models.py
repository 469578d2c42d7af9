"""Loading teachers and students: hub ids or local directories, quantization, devices, fingerprints."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from pipeline.errors import ModelError

log = logging.getLogger(__name__)


class _UntiedHeadFilter(logging.Filter):
    """Drop transformers' "will NOT tie" warning: T5 v1.1-style checkpoints (the demo teacher, FLAN-T5) keep an
    output head of their own while T5Config asks for tied embeddings; transformers then keeps both, which is what
    these checkpoints need, and would say so on every load, in front of kdpipe's own one-line messages."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "so we will NOT tie" not in record.getMessage()


logging.getLogger("transformers.modeling_utils").addFilter(_UntiedHeadFilter())


def pick_device(device: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU; ``cuda`` without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(device)


def _quantization_config(quantize: str, device: torch.device):
    if quantize == "none":
        return None
    if device.type != "cuda":
        raise ModelError(
            f"--quantize {quantize}: bitsandbytes {quantize} needs a CUDA GPU and none is in use "
            "(use --quantize none on the CPU)"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelError(
            f"--quantize {quantize}: bitsandbytes is not installed (pip install 'kdpipe[quant]')"
        ) from None
    from transformers import BitsAndBytesConfig

    if quantize == "nf4":
        # bf16 compute: FLAN-T5 overflows in fp16 (https://github.com/huggingface/transformers/pull/22095).
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


GGUF_MAGIC = b"GGUF"


def context_limit(config) -> int | None:
    """Positions a causal model attends to, in training and scoring (None: unbounded, e.g. T5's relative positions)."""
    if config.is_encoder_decoder:
        return None
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def source_kwargs(name: str, role: str) -> tuple[str, dict]:
    """(what ``from_pretrained`` takes, extra keywords): a ``.gguf`` file loads from its folder with ``gguf_file``.

    transformers reads GGUF (llama.cpp's single-file format, often 4-bit) through the ``gguf`` package and
    de-quantizes it into a regular model: https://huggingface.co/docs/transformers/gguf
    """
    if not name.lower().endswith(".gguf"):
        return name, {}
    path = Path(name)
    if not path.is_file():
        raise ModelError(f"{role} {name!r}: no such GGUF file")
    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ModelError(f"{role} {name!r}: not a GGUF file (it does not start with the GGUF magic bytes)")
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ModelError(
            f"{role} {name!r}: reading GGUF needs the gguf package (pip install 'kdpipe[gguf]')"
        ) from None
    return str(path.parent), {"gguf_file": path.name}


def file_sha256(path: str) -> str:
    """sha256 of a file, read in blocks: the revision a GGUF teacher records."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_config_and_tokenizer(name: str, revision: str | None, role: str):
    """A model's config and tokenizer from a local directory, a GGUF file or the hub, or a one-line ModelError."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bars report progress; a per-load bar is noise in logs
    source, extra = source_kwargs(name, role)
    try:
        return AutoConfig.from_pretrained(source, revision=revision, **extra), AutoTokenizer.from_pretrained(
            source, revision=revision, **extra
        )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{role} {name!r}: cannot load it from a local directory or the hub ({first})") from None


def load_model(
    name: str, *, revision: str | None = None, quantize: str = "none", device: torch.device, role: str = "model"
):
    """Load a seq2seq or causal LM and its tokenizer; returns (model, tokenizer, provenance dict)."""
    config, tokenizer = load_config_and_tokenizer(name, revision, role)
    quantization = _quantization_config(quantize, device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    source, extra = source_kwargs(name, role)
    kwargs = {"revision": revision, "dtype": dtype, **extra}
    if quantization is not None:
        kwargs.update(quantization_config=quantization, device_map={"": device.index or 0})
    try:
        model = cls.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelError(f"{role} {name!r}: cannot load the weights ({str(e).splitlines()[0]})") from None
    if quantization is None:
        model.to(device)
    model.eval()
    keep_untied_head(model)
    info = {
        "id": name,
        "revision": revision or (file_sha256(name) if extra else getattr(config, "_commit_hash", None)),
        "quantization": quantize,
        "compute_dtype": str(dtype).removeprefix("torch."),
        "architecture": (config.architectures or [cls.__name__])[0],
    }
    return model, tokenizer, info


def keep_untied_head(model) -> bool:
    """Make ``model.tie_weights()`` leave an output head of its own alone; True when the model has one.

    T5 v1.1 checkpoints (FLAN-T5, the demo teacher) hold an ``lm_head`` that is not the input embedding, but
    transformers 5 sets ``tie_word_embeddings=True`` on every T5 config it reads (``T5Config.__post_init__``).
    Loading keeps the two apart (both are in the checkpoint), yet any later ``tie_weights()`` recomputes the ties
    from that config and overwrites the head with the embeddings: lm-evaluation-harness calls it on every model it
    loads, and so does ``resize_token_embeddings``. Telling the loaded config the truth makes it a no-op.
    """
    head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or embeddings is None or head.weight is embeddings.weight:
        return False
    if getattr(model.config, "tie_word_embeddings", False):
        model.config.tie_word_embeddings = False
    return True


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 over the vocabulary and special tokens: two tokenizers with the same ids get the same value."""
    payload = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": tokenizer.special_tokens_map,
        "class": type(tokenizer).__name__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
