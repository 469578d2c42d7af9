"""Training-step cost of the ULD term: ms/step for CE alone, CE + top-k ULD (what distill runs), CE + full-sort ULD.

A GPT-2-shaped student with GPT-2's vocabulary (50257) does forward, backward and an AdamW step on random
tokens; the teacher side is k = 64 random sorted rows per answer token. The full-sort variant sorts the
student's whole softmax per row, as a naive ULD would; the top-k one is ``pipeline.losses.uld_loss``.

    PYTHONPATH=. python benchmarks/bench_step.py                      # CPU, a small GPT-2 (2 layers, 128 wide)
    PYTHONPATH=. python benchmarks/bench_step.py --device cuda --medium  # GPT-2-medium shapes, bf16 autocast
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from pipeline.losses import IGNORE_INDEX
from pipeline.losses.ce import causal_lm_ce
from pipeline.losses.uld import uld_loss


def full_sort_uld(logits: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """ULD with a full descending sort of the student distribution; the last Tt logits rows predict the answer."""
    answer = teacher.shape[1]
    rows = logits[:, -answer - 1 : -1].float()  # [B, Tt, V] the rows predicting the answer tokens
    student = torch.softmax(rows, dim=-1).sort(dim=-1, descending=True).values  # [B, Tt, V]
    padded = torch.nn.functional.pad(teacher, (0, student.shape[-1] - teacher.shape[-1]))  # [B, Tt, V]
    return (student - padded).abs().sum(-1).mean()


def make_batch(batch: int, seq: int, answer: int, vocab: int, k: int, device: torch.device):
    input_ids = torch.randint(0, vocab, (batch, seq), device=device)  # [B, T]
    labels = input_ids.clone()
    labels[:, : seq - answer] = IGNORE_INDEX  # prompt masked, the last `answer` tokens are the answer
    teacher = torch.rand(batch, answer, k, device=device).sort(dim=-1, descending=True).values  # [B, Tt, k]
    teacher = teacher / teacher.sum(-1, keepdim=True) * 0.9
    lengths = torch.full((batch,), answer, device=device)
    return input_ids, labels, teacher, lengths


VARIANTS = (("ce", "CE alone"), ("topk", "CE + top-k ULD"), ("fullsort", "CE + full-sort ULD"))


def time_variant(model, optimizer, batch, variant: str, steps: int, bf16: bool) -> float:
    input_ids, labels, teacher, lengths = batch
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    sync = torch.cuda.synchronize if input_ids.is_cuda else (lambda: None)
    times = []
    for i in range(steps + 2):  # two warm-up steps
        sync()
        start = time.perf_counter()
        with autocast:
            logits = model(input_ids=input_ids, use_cache=False).logits  # [B, T, V]
        loss = causal_lm_ce(logits, labels)
        if variant == "topk":
            loss = loss + 1.5 * uld_loss(logits, labels, teacher, lengths, skip_student_eos=False)
        elif variant == "fullsort":
            loss = loss + 1.5 * full_sort_uld(logits, teacher)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def measure(
    device: torch.device, config: GPT2Config, batch: int, seq: int, answer: int, k: int, steps: int, rounds: int
) -> dict[str, float]:
    """Best-of-rounds median ms/step of each variant ("ce", "topk", "fullsort") on a fresh GPT-2 of ``config``."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    data = make_batch(batch, seq, answer, config.vocab_size, k, device)
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    times: dict[str, list[float]] = {v: [] for v, _ in VARIANTS}
    for _ in range(rounds):  # rounds interleave the variants, so load on the machine hits them alike
        for variant, _ in VARIANTS:
            times[variant].append(time_variant(model, optimizer, data, variant, steps, bf16))
    return {variant: min(ms) for variant, ms in times.items()}


def shapes(medium: bool) -> tuple[GPT2Config, int, int, int]:
    """(config, batch, sequence, answer tokens): GPT-2-medium shapes, or a small GPT-2 for the CPU."""
    if medium:
        return GPT2Config(n_layer=24, n_embd=1024, n_head=16), 8, 512, 128
    return GPT2Config(n_layer=2, n_embd=128, n_head=4), 4, 128, 48


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--medium", action="store_true", help="GPT-2-medium shapes (24 layers, 1024 wide).")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--answer", type=int, default=None, help="Answer tokens per example (ULD rows).")
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="Timed steps per round (median taken).")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds over the variants (best median kept).")
    args = parser.parse_args()
    device = torch.device(args.device)
    config, batch, seq, answer = shapes(args.medium)
    batch, seq, answer = args.batch_size or batch, args.seq or seq, args.answer or answer
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    print(
        f"GPT-2 {config.n_layer}x{config.n_embd}, vocab {config.vocab_size}, batch {batch} x {seq} tokens, "
        f"{answer} answer rows each, k={args.k}, {device}{' bf16 autocast' if bf16 else ' fp32'}, "
        f"best of {args.rounds} rounds of the median of {args.steps} steps"
    )
    times = measure(device, config, batch, seq, answer, args.k, args.steps, args.rounds)
    for variant, label in VARIANTS:
        print(f"  {label:<20} {times[variant]:9.1f} ms/step   ({times[variant] / times['ce']:.2f}x CE)")


if __name__ == "__main__":
    main()
