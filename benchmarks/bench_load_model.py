"""Seconds to load a teacher as teacher-cache does: its config and tokenizer (the --top-k check), then the model.

    .venv/bin/python benchmarks/bench_load_model.py [--teacher models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf]
        [--quantize none|nf4|int8] [--device cpu]

A GGUF file is one file holding config, tokenizer and weights; each of transformers' loaders parses it on its
own, so this is where a per-process parse shows.
"""

from __future__ import annotations

import argparse
import os
import time

from pipeline.models import load_config_and_tokenizer, load_model, pick_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--quantize", default="none", choices=("none", "nf4", "int8"))
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args()
    device = pick_device(args.device)
    start = time.perf_counter()
    load_config_and_tokenizer(args.teacher, None, "teacher")
    checked = time.perf_counter()
    load_model(args.teacher, quantize=args.quantize, device=device, role="teacher")
    done = time.perf_counter()
    print(
        f"teacher {args.teacher} ({args.quantize}, {device}); load average {os.getloadavg()[0]:.2f}: "
        f"config + tokenizer {checked - start:.1f} s, load_model {done - checked:.1f} s, total {done - start:.1f} s"
    )


if __name__ == "__main__":
    main()
