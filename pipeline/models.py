"""Loading teachers and students: hub ids or local directories, quantization, devices, fingerprints."""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import logging
import os
import sys
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


class _BitsAndBytesNoiseFilter(logging.Filter):
    """Drop two bitsandbytes messages that say nothing a kdpipe user can act on, in front of its one-line output:
    LLM.int8 casting each layer's input to fp16 (it always does, on CUDA too: that is the int8 algorithm), logged on
    every forward of every layer; and, on a CPU with AVX512-BF16, failing to fetch an optional faster 4-bit kernel
    from the hub at import (no hub is reachable here; bitsandbytes' own CPU kernel runs instead). The ``kernels``
    package's offline note about that same fetch goes too."""

    DROP = ("inputs will be cast from", "Failed to load CPU gemm_4bit_forward", "Skipping publisher trust check")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.DROP)


for _name in ("bitsandbytes.autograd._functions", "bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub"):
    logging.getLogger(_name).addFilter(_BitsAndBytesNoiseFilter())


def pick_device(device: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU; ``cuda`` without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(device)


def _quantization_config(quantize: str, device: torch.device):
    """The BitsAndBytesConfig of ``--quantize`` on ``device``, or a one-line ModelError naming what is missing."""
    if quantize == "none":
        return None
    try:
        import bitsandbytes
    except ImportError:
        raise ModelError(
            f"--quantize {quantize}: bitsandbytes is not installed (pip install 'kdpipe[quant]')"
        ) from None
    if device.type == "cpu":
        missing = _bitsandbytes_cpu_missing(quantize)
        if missing:
            raise ModelError(
                f"--quantize {quantize}: bitsandbytes {bitsandbytes.__version__} cannot run {quantize} layers on the "
                f"CPU ({missing}); install a bitsandbytes with its CPU backend, or use --quantize none"
            )
    elif device.type != "cuda":
        raise ModelError(f"--quantize {quantize}: bitsandbytes runs on CUDA or the CPU, not on {device.type}")
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


@functools.cache
def _bitsandbytes_cpu_missing(quantize: str) -> str | None:
    """None when the installed bitsandbytes quantizes and runs a ``quantize`` layer on the CPU, else why not.

    Asked of the library itself (one 64 x 64 layer, quantized and run), not of its version: the CPU backend came
    in over several releases and also depends on the platform's native library.
    """
    import bitsandbytes as bnb

    try:
        if quantize == "nf4":
            layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
        else:
            layer = bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False)
        layer = layer.to("cpu").eval()  # quantizes the weight
        quantized = getattr(layer.weight, "bnb_quantized", False) or layer.weight.dtype == torch.int8
        with torch.inference_mode():  # the teacher's own path (bitsandbytes takes other kernels under autograd)
            out = layer(torch.ones(2, 64, dtype=torch.bfloat16))
    except Exception as e:  # whatever the library raises where a kernel is missing
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if not quantized:
        return "its layer kept unquantized weights"
    if out.shape != (2, 64) or not torch.isfinite(out).all():
        return "its layer's forward gave no finite output"
    return None


def _cpu_4bit_layers_fit(model) -> int:
    """Keep bitsandbytes' AVX512-BF16 CPU kernel away from 4-bit layers it cannot hold; returns how many.

    On a CPU with AVX512-BF16, bitsandbytes 0.50 repacks a ``Linear4bit`` weight for its fused kernel at the first
    inference forward, which needs in_features divisible by the quantization block (64) and out_features by 32;
    any other layer (the demo teacher's 96-wide ones) fails there with "shape '[96, 1]' is invalid". Those layers
    take bitsandbytes' portable path instead (de-quantize, then matmul): the same 4-bit weights, the same result.
    """
    bnb = sys.modules.get("bitsandbytes")
    moved = 0
    for module in model.modules() if bnb is not None else ():
        if isinstance(module, bnb.nn.Linear4bit) and getattr(module, "support_avx512bf16_for_cpu", False):
            blocksize = module.weight.quant_state.blocksize
            if module.in_features % blocksize or module.out_features % 32:
                module.support_avx512bf16_for_cpu = False
                moved += 1
    if moved:
        log.info(
            "%d 4-bit layers take bitsandbytes' portable CPU path (their shape does not fit its AVX512 one)", moved
        )
    return moved


def quantization_in(model) -> str:
    """The quantization the loaded weights really have: ``nf4``/``fp4``, ``int8`` or ``none`` (no bitsandbytes layer).

    What a cache records, read from the model rather than from the flag, so a load that fell back to full precision
    cannot be recorded as 4-bit.
    """
    bnb = sys.modules.get("bitsandbytes")  # a model with bitsandbytes layers has imported it
    if bnb is None:
        return "none"
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            return module.weight.quant_type
        if isinstance(module, bnb.nn.Linear8bitLt):
            return "int8"
    return "none"


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
    """A model's config and tokenizer from a local directory, a GGUF file or the hub, or a one-line ModelError.

    A GGUF file's are read once per process (``_gguf_parsed``); each call gets its own copies to change.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bars report progress; a per-load bar is noise in logs
    source, extra = source_kwargs(name, role)
    try:
        if extra:
            config, tokenizer = _gguf_config_and_tokenizer(*_file_key(name))
            return copy.deepcopy(config), copy.deepcopy(tokenizer)
        return AutoConfig.from_pretrained(source, revision=revision, **extra), AutoTokenizer.from_pretrained(
            source, revision=revision, **extra
        )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{role} {name!r}: cannot load it from a local directory or the hub ({first})") from None


def _file_key(path: str) -> tuple[str, int, int]:
    """(real path, size, mtime): a file replaced on disk is read again."""
    stat = os.stat(path)
    return os.path.realpath(path), stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=2)
def _gguf_config_and_tokenizer(path: str, size: int, mtime_ns: int):
    with _gguf_parsed(path):
        folder, file = str(Path(path).parent), Path(path).name
        return AutoConfig.from_pretrained(folder, gguf_file=file), AutoTokenizer.from_pretrained(
            folder, gguf_file=file
        )


_GGUF_READERS: dict[tuple, object] = {}  # the last GGUF file parsed: (path, size, mtime) -> gguf.GGUFReader


@contextlib.contextmanager
def _gguf_parsed(path: str):
    """Within this block, transformers' GGUF loaders share one parsed ``gguf.GGUFReader`` of ``path`` per process.

    The config, tokenizer and weight loaders each build a reader of their own, a full parse of the metadata
    (SmolLM2's 49k-token vocabulary and merges: ~880k field reads, 3-4 s on the CPU), so a teacher-cache run parsed
    the file six times. The reader is read-only (a memory map and the parsed fields, ~160 MB for SmolLM2) and kept
    for the process, so a second load of the same file (a quantized beside an unquantized teacher) parses nothing.
    The weight loader also builds one ``gguf.get_tensor_name_map`` per submodule (~400 for SmolLM2, ~5 s): a pure
    function of (architecture, blocks), cached here.
    """
    import gguf

    key, real_reader, real_name_map = _file_key(path), gguf.GGUFReader, gguf.get_tensor_name_map

    def reader(file, *args, **kwargs):
        if args or kwargs or _file_key(file) != key:
            return real_reader(file, *args, **kwargs)
        if key not in _GGUF_READERS:
            _GGUF_READERS.clear()
            _GGUF_READERS[key] = real_reader(file)
        return _GGUF_READERS[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.cache(real_name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = real_reader, real_name_map


def load_model(
    name: str, *, revision: str | None = None, quantize: str = "none", device: torch.device, role: str = "model"
):
    """Load a seq2seq or causal LM and its tokenizer; returns (model, tokenizer, provenance dict).

    ``quantize`` (nf4, int8) runs bitsandbytes layers with bf16 compute on CUDA and on the CPU alike. A GGUF file
    with ``quantize`` is de-quantized first, then quantized from those weights (transformers loads no
    ``quantization_config`` with ``gguf_file``). The provenance records the quantization the loaded layers have.
    """
    config, tokenizer = load_config_and_tokenizer(name, revision, role)
    quantization = _quantization_config(quantize, device)
    # bf16 beside bitsandbytes layers, as their compute; float32 for a full-precision model on the CPU
    dtype = torch.bfloat16 if device.type == "cuda" or quantization is not None else torch.float32
    cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    source, extra = source_kwargs(name, role)
    try:
        if extra:
            with _gguf_parsed(name):  # de-quantized: in float32 where bitsandbytes quantizes it next
                first = torch.float32 if quantization is not None else dtype
                model = cls.from_pretrained(source, revision=revision, config=config, dtype=first, **extra)
            if quantization is not None:
                model = _quantized_from(model, quantization, dtype, device)
        else:
            kwargs = {"revision": revision, "dtype": dtype}
            if quantization is not None:
                kwargs.update(quantization_config=quantization, device_map={"": _device_map_target(device)})
            model = cls.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelError(f"{role} {name!r}: cannot load the weights ({str(e).splitlines()[0]})") from None
    if quantization is None:
        model.to(device)
    elif device.type == "cpu":
        _cpu_4bit_layers_fit(model)
    used = quantization_in(model)
    if used != quantize:  # never a silent full-precision teacher recorded as quantized
        raise ModelError(f"{role} {name!r}: --quantize {quantize} asked, but the loaded layers are {used}")
    model.eval()
    keep_untied_head(model)
    info = {
        "id": name,
        "revision": revision or (file_sha256(name) if extra else getattr(config, "_commit_hash", None)),
        "quantization": used,
        "compute_dtype": str(dtype).removeprefix("torch."),
        "architecture": (config.architectures or [cls.__name__])[0],
    }
    return model, tokenizer, info


def _device_map_target(device: torch.device):
    """Where ``device_map={"": ...}`` puts a quantized model: a CUDA index, or the CPU."""
    return (device.index or 0) if device.type == "cuda" else "cpu"


def _quantized_from(model, quantization, dtype: torch.dtype, device: torch.device):
    """``model``'s weights loaded again into bitsandbytes layers: the full-precision model is freed afterwards."""
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):  # the GGUF marker: these weights are plain floats now
        del config.quantization_config
    model_class, state = type(model), model.state_dict()
    del model
    return model_class.from_pretrained(
        None,
        config=config,
        state_dict=state,
        quantization_config=quantization,
        device_map={"": _device_map_target(device)},
        dtype=dtype,
    )


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
