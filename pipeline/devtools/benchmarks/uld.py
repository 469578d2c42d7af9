"""Forward + backward time of `uld_loss` (student top-k) against the same loss with a full vocabulary sort.

    python -m benchmarks.bench_uld                     # B=8, T=256, Vs=50,257, k=64 on the CPU
    python -m benchmarks.bench_uld --device cuda --dtype bfloat16

Both sides gather the same answer rows and upcast to float32; they differ only in how the sorted student
distribution is compared with the teacher's top-k, so the ratio is the cost of the full sort.

Then the token-aware losses on the same batch (``--token-aware``, on by default): student and teacher tokens of
1-6 and 1-8 bytes over the same answers, grouped by bytes; prints the CPU cost of forming the groups (what the
reader thread does per batch) and the forward + backward time of uld-aligned and hybrid against uld.

Then the KL family (``--kl``, on by default): the same rows, the teacher's top-k given distinct student ids, and the
forward + backward time of kl, rkl and jsd against uld, interleaved.
"""

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.alignment import TeacherRows, align_batch, vocab_map
from pipeline.losses import IGNORE_INDEX
from pipeline.losses.kl import kl_family_loss
from pipeline.losses.token_aware import hybrid_loss, uld_aligned_loss
from pipeline.losses.uld import uld_loss


def full_sort_uld(logits, labels, teacher_probs, teacher_lengths, temperature=1.0, skip_student_eos=True):
    """ULD with every student row sorted over its whole vocabulary and the teacher zero-padded to match."""
    answer = labels[:, 1:] != IGNORE_INDEX  # [B, T-1]
    rank = answer.cumsum(1)  # [B, T-1]
    n_rows = torch.minimum(answer.sum(1) - int(skip_student_eos), teacher_lengths).clamp(min=0)  # [B]
    b_idx, t_idx = (answer & (rank <= n_rows[:, None])).nonzero(as_tuple=True)  # [N]
    student = torch.softmax(logits[b_idx, t_idx].float() / temperature, dim=-1)  # [N, Vs]
    student = student.sort(dim=-1, descending=True).values  # [N, Vs]
    teacher = teacher_probs[b_idx, rank[b_idx, t_idx] - 1].float()  # [N, k]
    width = max(student.shape[-1], teacher.shape[-1])
    student = F.pad(student, (0, width - student.shape[-1]))  # [N, W]
    teacher = F.pad(teacher, (0, width - teacher.shape[-1]))  # [N, W]
    distance = (student - teacher).abs().sum(-1)  # [N]
    per_example = torch.zeros(labels.shape[0], device=logits.device).index_add(0, b_idx, distance)
    return (per_example / n_rows.clamp(min=1)).sum() / (n_rows > 0).sum()


def make_batch(args, device, dtype):
    gen = torch.Generator().manual_seed(args.seed)
    logits = torch.randn(args.batch, args.seq_len, args.vocab, generator=gen) * 2.0
    labels = torch.full((args.batch, args.seq_len), IGNORE_INDEX)
    prompt = args.seq_len - args.answer_rows - 1 - 16  # 16 padding positions after the answer
    # answer_rows + 1 labels: the last is EOS, whose row skip_student_eos drops.
    labels[:, prompt : prompt + args.answer_rows + 1] = torch.randint(
        3, args.vocab, (args.answer_rows + 1,), generator=gen
    )
    dense = torch.softmax(torch.randn(args.batch, args.answer_rows, 4 * args.top_k, generator=gen) * 3, -1)
    teacher = dense.topk(args.top_k, dim=-1).values  # [B, Tt, k], tail mass > 0
    lengths = torch.full((args.batch,), args.answer_rows)
    return logits.to(device, dtype).requires_grad_(True), labels.to(device), teacher.to(device), lengths.to(device)


def forward_backward(loss_fn, inputs, device):
    """One timed call: the loss and its gradient wrt the student logits; returns (value, milliseconds)."""
    logits = inputs[0]
    logits.grad = None
    start = time.perf_counter()
    loss = loss_fn(*inputs)
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return loss.item(), (time.perf_counter() - start) * 1e3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=50_257, help="student vocabulary size")
    parser.add_argument("--top-k", type=int, default=64, help="teacher probabilities cached per row")
    parser.add_argument("--answer-rows", type=int, default=128, help="paired answer rows per example")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-token-aware", dest="token_aware", action="store_false", help="skip uld-aligned/hybrid")
    parser.add_argument("--no-kl", dest="kl", action="store_false", help="skip kl/rkl/jsd")
    parser.add_argument("--teacher-vocab", type=int, default=32_128, help="teacher vocabulary (token-aware part)")
    return parser


def measure(args: argparse.Namespace) -> dict:
    """Median milliseconds per forward + backward call and the loss value of each implementation."""
    device = torch.device(args.device)
    inputs = make_batch(args, device, getattr(torch, args.dtype))
    implementations = {"top-k uld_loss": uld_loss, "full-sort": full_sort_uld}
    for _ in range(args.warmup):
        for loss_fn in implementations.values():
            forward_backward(loss_fn, inputs, device)
    # Interleaved, so that both sides see the same machine load.
    values, times = {}, {name: [] for name in implementations}
    for _ in range(args.repeats):
        for name, loss_fn in implementations.items():
            values[name], ms = forward_backward(loss_fn, inputs, device)
            times[name].append(ms)
    return {"times": times, "values": values}


def main():
    parser = build_parser()
    args = parser.parse_args()
    if args.answer_rows + 17 > args.seq_len:
        parser.error(f"--answer-rows {args.answer_rows} needs --seq-len >= {args.answer_rows + 17}")
    print(
        f"B={args.batch} T={args.seq_len} Vs={args.vocab} k={args.top_k} answer rows/example={args.answer_rows} "
        f"dtype={args.dtype} device={args.device} threads={torch.get_num_threads()} torch={torch.__version__}"
    )
    result = measure(args)
    times, values = result["times"], result["values"]
    for name, ms in times.items():
        print(f"{name:>15}: {statistics.median(ms):9.1f} ms/call (median of {args.repeats}, min {min(ms):.1f})")
    fast, slow = (statistics.median(ms) for ms in times.values())
    print(f"speedup: {slow / fast:.1f}x")
    top_k_value, full_sort_value = values.values()
    print(f"values: top-k {top_k_value:.8f}  full-sort {full_sort_value:.8f}  ", end="")
    print(f"|diff| {abs(top_k_value - full_sort_value):.2e}")
    if args.token_aware:
        inputs = make_batch(args, torch.device(args.device), getattr(torch, args.dtype))
        token = measure_token_aware(args, inputs)
        base = statistics.median(token["times"]["uld"])
        print(f"token-aware ({token['groups']} groups in the batch; teacher vocabulary {args.teacher_vocab}):")
        print(f"  reader thread, align_batch with the id map: {token['align_ms']:.1f} ms/batch (CPU)")
        for name, ms in token["times"].items():
            print(f"{name:>15}: {statistics.median(ms):9.1f} ms/call  ({statistics.median(ms) / base:.2f}x uld)")
    if args.kl:
        times = measure_kl(args, make_batch(args, torch.device(args.device), getattr(torch, args.dtype)))
        base = statistics.median(times["uld"])
        print("KL family (the teacher's top-k ids mapped to distinct student ids):")
        for name, ms in times.items():
            print(f"{name:>15}: {statistics.median(ms):9.1f} ms/call  ({statistics.median(ms) / base:.2f}x uld)")


def token_aware_inputs(args, inputs):
    """The reader thread's groups for the batch of ``make_batch``: random byte lengths on each side, same answers."""
    logits, labels, teacher, _ = inputs
    rng = np.random.default_rng(args.seed)
    first = (labels[0, 1:] != -100).nonzero()[0, 0].item()  # row predicting the first answer label
    answers, s_spans, rows = [], [], []
    for b in range(args.batch):
        s_len = rng.integers(1, 7, args.answer_rows + 1)
        total = int(s_len.sum())
        t_ends = np.unique(np.concatenate([np.cumsum(rng.integers(1, 9, total))[: total // 2], [total]]))
        t_ends = t_ends[t_ends <= total]
        t_spans = np.stack([np.concatenate([[0], t_ends[:-1]]), t_ends], axis=1)
        n_t = min(len(t_spans), teacher.shape[1])
        t_spans = t_spans[:n_t]
        s_end = np.cumsum(s_len)
        s_spans.append(np.stack([s_end - s_len, s_end], axis=1))
        answers.append(labels[b, first + 1 : first + 2 + args.answer_rows].tolist())
        probs = teacher[b, :n_t].cpu().numpy()
        ids = rng.integers(0, args.teacher_vocab, probs.shape).astype(np.int32)
        rows.append(TeacherRows(probs, ids, t_spans.astype(np.int32), probs[:, 0].copy()))
    teacher_vocab = [f"t{i}".encode() for i in range(args.teacher_vocab)]
    student_vocab = [f"t{i}".encode() if i % 3 else f"s{i}".encode() for i in range(args.vocab)]  # 2/3 shared
    vmap = vocab_map(teacher_vocab, student_vocab)
    start = time.perf_counter()
    for _ in range(args.repeats):
        aligned = align_batch([first] * args.batch, answers, s_spans, rows, vocab=vmap)
    align_ms = (time.perf_counter() - start) * 1e3 / args.repeats
    return aligned, vmap, align_ms


def measure_token_aware(args: argparse.Namespace, inputs) -> dict:
    device = torch.device(args.device)
    aligned, vmap, align_ms = token_aware_inputs(args, inputs)
    aligned = aligned.to(device)
    matched = torch.from_numpy(vmap.student_matched).to(device)
    implementations = {
        "uld": lambda logits, labels, t, lengths: uld_loss(logits, labels, t, lengths),
        "uld-aligned": lambda logits, *_: uld_aligned_loss(logits, aligned),
        "hybrid": lambda logits, *_: hybrid_loss(logits, aligned, matched, vmap.matched_share),
    }
    for _ in range(args.warmup):
        for loss_fn in implementations.values():
            forward_backward(loss_fn, inputs, device)
    times = {name: [] for name in implementations}
    for _ in range(args.repeats):
        for name, loss_fn in implementations.items():
            times[name].append(forward_backward(loss_fn, inputs, device)[1])
    return {"times": times, "align_ms": align_ms, "groups": int(aligned.example.numel())}


if __name__ == "__main__":
    main()


def measure_kl(args: argparse.Namespace, inputs) -> dict:
    """Median ms per forward + backward of uld and of each KL-family loss on the same rows, interleaved."""
    device = torch.device(args.device)
    logits, labels, teacher, lengths = inputs
    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.rand(teacher.shape[0], teacher.shape[1], args.vocab, generator=gen).topk(args.top_k).indices
    ids = ids.to(device)  # [B, Tt, k] distinct student ids per row
    implementations = {
        "uld": lambda *x: uld_loss(*x),
        **{
            name: (
                lambda logits, labels, t, lengths, name=name: kl_family_loss(
                    logits, labels, t, ids, lengths, divergence=name
                )
            )
            for name in ("kl", "rkl", "jsd")
        },
    }
    for _ in range(args.warmup):
        for loss_fn in implementations.values():
            forward_backward(loss_fn, inputs, device)
    times = {name: [] for name in implementations}
    for _ in range(args.repeats):
        for name, loss_fn in implementations.items():
            times[name].append(forward_backward(loss_fn, inputs, device)[1])
    return times
