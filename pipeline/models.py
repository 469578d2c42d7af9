"""Loading teachers and students: hub ids or local directories, quantization, devices, fingerprints."""

from __future__ import annotations

import hashlib
import json
import logging

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

log = logging.getLogger(__name__)


class ModelError(RuntimeError):
    """A model that cannot be loaded as asked; the message names it and says what to do."""


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


def load_config_and_tokenizer(name: str, revision: str | None, role: str):
    """A model's config and tokenizer from a local directory or the hub, or a one-line ModelError naming it."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bars report progress; a per-load bar is noise in logs
    try:
        return AutoConfig.from_pretrained(name, revision=revision), AutoTokenizer.from_pretrained(
            name, revision=revision
        )
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{role} {name!r}: cannot load it from a local directory or the hub ({first})") from None


def context_limit(config) -> int | None:
    """Positions a causal model attends to, in training and scoring (None: unbounded, e.g. T5's relative positions)."""
    if config.is_encoder_decoder:
        return None
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_model(
    name: str, *, revision: str | None = None, quantize: str = "none", device: torch.device, role: str = "model"
):
    """Load a seq2seq or causal LM and its tokenizer; returns (model, tokenizer, provenance dict)."""
    config, tokenizer = load_config_and_tokenizer(name, revision, role)
    quantization = _quantization_config(quantize, device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    kwargs = {"revision": revision, "dtype": dtype}
    if quantization is not None:
        kwargs.update(quantization_config=quantization, device_map={"": device.index or 0})
    try:
        model = cls.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelError(f"{role} {name!r}: cannot load the weights ({str(e).splitlines()[0]})") from None
    if quantization is None:
        model.to(device)
    model.eval()
    info = {
        "id": name,
        "revision": revision or getattr(config, "_commit_hash", None),
        "quantization": quantize,
        "compute_dtype": str(dtype).removeprefix("torch."),
        "architecture": (config.architectures or [cls.__name__])[0],
    }
    return model, tokenizer, info


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 over the vocabulary and special tokens: two tokenizers with the same ids get the same value."""
    payload = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": tokenizer.special_tokens_map,
        "class": type(tokenizer).__name__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
