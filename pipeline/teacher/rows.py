"""The teacher's side of a cache batch: (optionally) greedy answers, then softmax(logits / T) top-k per answer row.

Everything heavy happens on the teacher's device; only k values per row travel to the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Rows:
    answers: list[list[int]]  # the answer token ids each example's rows predict (EOS last unless cut)
    probs: np.ndarray  # float32 [R, k], sorted descending
    tail: np.ndarray  # float32 [R], 1 - sum of the top-k
    token_ids: np.ndarray  # [R] the answer token of each row
    topk_ids: np.ndarray | None  # [R, k] teacher vocabulary ids of the probabilities, when asked for
    label_probs: np.ndarray | None = None  # float32 [R] probability of each row's own answer token


def pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    """Right-pad ``seqs`` with ``value`` into a [B, T] long tensor."""
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (width - len(s)) for s in seqs], dtype=torch.long)


def mask(seqs: list[list[int]]) -> torch.Tensor:
    """Attention mask [B, T] of right-padded ``seqs``."""
    width = max(len(s) for s in seqs)
    return torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], dtype=torch.long)


@torch.inference_mode()
def teacher_rows(
    model,
    pad_id: int,
    eos: int,
    prompts: list[list[int]],
    answers: list[list[int]] | None,
    *,
    top_k: int,
    temperature: float,
    max_answer_tokens: int,
    store_ids: bool,
    device: torch.device,
) -> Rows:
    """Rows of one batch; ``answers=None`` generates the teacher's own greedy answers first.

    ``eos`` ends every answer (the chat template's end-of-turn token for a chat layout); a greedy answer that
    does not end within ``max_answer_tokens`` is cut with its EOS kept, as the text contract cuts answers.
    """
    if answers is None:
        answers = generate_answers(model, prompts, pad_id, eos, max_answer_tokens, device)
    if model.config.is_encoder_decoder:
        labels = pad(answers, -100).to(device)  # [B, Ta]
        logits = model(
            input_ids=pad(prompts, pad_id).to(device), attention_mask=mask(prompts).to(device), labels=labels
        ).logits  # [B, Ta, V]
        answer_mask = labels != -100  # [B, Ta]
        token_ids, logits = labels[answer_mask], logits[answer_mask]  # [R], [R, V]
    else:
        # Left-padded: every answer ends at the right edge, so only the last L + 1 positions need the output layer
        # (a 49k-256k vocabulary over the whole prompt would cost more than the rest of the forward).
        seqs = [p + a for p, a in zip(prompts, answers, strict=True)]
        width, longest = max(len(s) for s in seqs), max(len(a) for a in answers)
        ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in seqs], device=device)  # [B, T]
        attention = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)  # [B, T]
        positions = (attention.cumsum(-1) - 1).clamp(min=0)  # [B, T]: each sequence counts from 0
        out = model(
            input_ids=ids, attention_mask=attention, position_ids=positions, logits_to_keep=longest + 1
        ).logits  # [B, L+1, V]
        # kept row i is position T - L - 1 + i; the row predicting answer token j of b is T - len(a_b) - 1 + j
        logits = torch.cat([out[b, longest - len(a) : longest] for b, a in enumerate(answers)])  # [R, V]
        token_ids = torch.tensor([t for a in answers for t in a], device=device)
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # [R, V], float32
    k = min(top_k, probs.shape[-1])
    top = probs.topk(k, dim=-1)  # sorted descending
    tail = (1.0 - top.values.sum(-1)).clamp_min(0.0)  # [R]
    label = probs.gather(1, token_ids[:, None].to(probs.device))[:, 0]  # [R] the row's own token (cache v1.1)
    values, indices = top.values, top.indices
    if k < top_k:  # a vocabulary smaller than k: the missing ranks hold zero mass
        values = torch.nn.functional.pad(values, (0, top_k - k))
        indices = torch.nn.functional.pad(indices, (0, top_k - k))
    return Rows(
        answers,
        values.cpu().numpy(),
        tail.cpu().numpy(),
        token_ids.cpu().numpy(),
        indices.cpu().numpy() if store_ids else None,
        label.cpu().numpy(),
    )


def generate_answers(
    model, prompts: list[list[int]], pad_id: int, eos: int, max_new_tokens: int, device: torch.device
) -> list[list[int]]:
    """The teacher's greedy answers, each cut after its first EOS."""
    if model.config.is_encoder_decoder:
        out = model.generate(
            input_ids=pad(prompts, pad_id).to(device),
            attention_mask=mask(prompts).to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=eos,
            pad_token_id=pad_id,
        )[:, 1:]  # drop the decoder start token
    else:  # left-pad prompts for a decoder-only teacher
        width = max(len(p) for p in prompts)
        out = model.generate(
            input_ids=torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts]).to(device),
            attention_mask=torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts]).to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=eos,
            pad_token_id=pad_id,
        )[:, width:]
    # cut after the first EOS; an answer that never ends keeps its first max_new_tokens - 1 tokens, then EOS
    return [row[: row.index(eos) + 1] if eos in row else [*row[: max_new_tokens - 1], eos] for row in out.tolist()]
