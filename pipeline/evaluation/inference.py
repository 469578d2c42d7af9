"""Model-side evaluation: option log-likelihoods (rank classification) and greedy generation, batched.

Text is encoded exactly as training saw it, by the one text contract (``pipeline.text``): a seq2seq model gets
prompt + ``</s>`` and scores option + ``</s>``; a causal model gets BOS + prompt (or its chat template) and scores
``" " + option`` + EOS, the very ids teacher-cache and distill train on; generation stops at that EOS.

An option is scored with the EOS that ends it in training, in one forward pass, and :class:`OptionScore` keeps
the two parts apart: ``logprob_sum`` is the log-likelihood of the option's own tokens, what lm-evaluation-harness
scores (its continuation is the option after the target delimiter, with no end token, for causal and seq2seq
models alike), and ``eos_logprob`` that of the EOS after them, which kdpipe's ``acc_eos`` adds so that an option
that is a prefix of another ("No" vs "No way") is not favoured by stopping early. Batches are left-padded for
causal models (the answers then line up at the right edge, and ``generate`` continues every row from the same
position) with explicit position ids; seq2seq batches are right-padded as usual.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm
from transformers import GenerationConfig

from pipeline.models import context_limit
from pipeline.text import TextEncoder, TextSpec, layout_for


@dataclass(frozen=True)
class OptionScore:
    logprob_sum: float  # Σ log p(token) over the option's own tokens, EOS left out (lm-eval's log-likelihood)
    eos_logprob: float  # log p(EOS | prompt, option): the end token training puts after it
    n_tokens: int  # the option's own tokens

    @property
    def with_eos(self) -> float:
        """The option's log-likelihood with its EOS: the whole answer as training shows it (``acc_eos``)."""
        return self.logprob_sum + self.eos_logprob


class EvalModel:
    """A loaded model and its tokenizer, with the encoding its training used (module doc)."""

    def __init__(self, model, tokenizer, *, max_prompt_tokens: int, batch_size: int, chat_template: bool = False):
        self.model, self.tokenizer = model, tokenizer
        self.seq2seq = bool(model.config.is_encoder_decoder)
        # eval scores whole answers (answer_ids never cuts); the spec's answer limit is not used here
        spec = TextSpec(layout_for(model.config, chat_template), max_prompt_tokens, max_prompt_tokens, "cut")
        self.text = TextEncoder(tokenizer, spec, context_limit(model.config))
        self.eos, self.pad = self.text.eos, self.text.pad
        self.batch_size = batch_size
        self.device = model.device
        self.truncated = 0  # prompts cut so far
        self.cut: list[bool] = []  # per prompt of the latest call: was it cut

    # ---- encoding ----------------------------------------------------------------------------------------

    def prompt_ids(self, prompts: Sequence[str], reserve: int = 0) -> list[list[int]]:
        """Prompt token ids under the text contract; a prompt over the limit loses its MIDDLE (``pipeline.text``).

        ``reserve`` positions are left free for the answer in a causal model's context window.
        """
        out, self.cut = [], []
        for prompt in prompts:
            ids, cut = self.text.encode_prompt(prompt, reserve=reserve)
            self.cut.append(cut > 0)
            out.append(ids)
        self.truncated += sum(self.cut)
        return out

    def answer_ids(self, answers: Sequence[str]) -> list[list[int]]:
        return [self.text.answer_ids(a) for a in answers]

    def _left_pad(self, rows: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.tensor([[self.pad] * (width - len(r)) + r for r in rows], device=self.device)  # [B, T]
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)  # [B, T]
        return {"input_ids": ids, "attention_mask": mask}

    def _right_pad(self, rows: Sequence[list[int]], fill: int) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [fill] * (width - len(r)) for r in rows], device=self.device)  # [B, T]
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=self.device)  # [B, T]
        return ids, mask

    # ---- rank classification -----------------------------------------------------------------------------

    @torch.inference_mode()
    def score_options(
        self, prompts: Sequence[str], options: Sequence[Sequence[str]], desc: str = "score"
    ) -> list[list[OptionScore]]:
        """Log-likelihood of every option of every prompt; ``result[i][j]`` scores ``options[i][j]``."""
        answers = [self.answer_ids(opts) for opts in options]
        longest = max(len(a) for opts in answers for a in opts)
        prompt_ids = self.prompt_ids(prompts, reserve=longest)
        pairs = [(i, j) for i, opts in enumerate(answers) for j in range(len(opts))]
        # Longest first: similar lengths share a batch (less padding), and an out-of-memory shows up at once.
        pairs.sort(key=lambda ij: -(len(prompt_ids[ij[0]]) + len(answers[ij[0]][ij[1]])))
        scores: list[list[OptionScore | None]] = [[None] * len(opts) for opts in answers]
        bar = tqdm(total=len(pairs), desc=desc, unit="option", mininterval=1.0, leave=False)
        start, tokens = time.monotonic(), 0
        for b in range(0, len(pairs), self.batch_size):
            batch = pairs[b : b + self.batch_size]
            prompt_batch = [prompt_ids[i] for i, _ in batch]
            answer_batch = [answers[i][j] for i, j in batch]
            score = self._seq2seq_logprobs if self.seq2seq else self._causal_logprobs
            logprobs, mask = score(prompt_batch, answer_batch)  # [B, L], [B, L]
            logprobs = logprobs.masked_fill(~mask, 0.0)
            last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(-1)  # [B]: each row's EOS
            eos = logprobs.gather(1, last[:, None])[:, 0]  # [B]
            totals, eos, counts = (logprobs.sum(-1) - eos).tolist(), eos.tolist(), mask.sum(-1).tolist()
            for (i, j), total, end, n in zip(batch, totals, eos, counts, strict=True):
                scores[i][j] = OptionScore(total, end, int(n) - 1)
            tokens += sum(len(p) + len(a) for p, a in zip(prompt_batch, answer_batch, strict=True))
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{tokens / max(time.monotonic() - start, 1e-9):.0f}")
        bar.close()
        return scores  # type: ignore[return-value]

    def _causal_logprobs(self, prompts: list[list[int]], answers: list[list[int]]) -> tuple[torch.Tensor, ...]:
        """Left-padded prompt+answer rows: every answer ends at the right edge, so its tokens are the last L."""
        batch = self._left_pad([p + a for p, a in zip(prompts, answers, strict=True)])
        positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # [B, T]: real tokens count from 0
        width = max(len(a) for a in answers)
        logits = self.model(**batch, position_ids=positions, logits_to_keep=width + 1).logits  # [B, L+1, V]
        targets = batch["input_ids"][:, -width:]  # [B, L]
        logprobs = logits[:, :-1].float().log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, L]
        lengths = torch.tensor([len(a) for a in answers], device=self.device)  # [B]
        mask = torch.arange(width, device=self.device) >= (width - lengths)[:, None]  # [B, L]: the last len(a)
        return logprobs, mask

    def _seq2seq_logprobs(self, prompts: list[list[int]], answers: list[list[int]]) -> tuple[torch.Tensor, ...]:
        input_ids, attention_mask = self._right_pad(prompts, self.pad)  # [B, S]
        labels, mask = self._right_pad(answers, -100)  # [B, L]
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).logits  # [B, L, V]
        logprobs = logits.float().log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return logprobs, mask.bool()  # [B, L], [B, L]

    # ---- greedy generation -------------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(
        self, prompts: Sequence[str], max_new_tokens: int, desc: str = "generate", with_eos: bool = False
    ) -> list[str] | tuple[list[str], list[bool]]:
        """Greedy completion of every prompt, up to ``max_new_tokens`` tokens or EOS.

        ``with_eos``: also return, per prompt, whether the model ended it with EOS (False: cut at the budget).
        """
        prompt_ids = self.prompt_ids(prompts, reserve=max_new_tokens)
        order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
        outputs: list[str] = [""] * len(prompt_ids)
        ended = [False] * len(prompt_ids)
        config = self._generation_config(max_new_tokens)
        bar = tqdm(total=len(order), desc=desc, unit="ex", mininterval=1.0, leave=False, disable=len(order) < 2)
        start, new_tokens = time.monotonic(), 0
        for b in range(0, len(order), self.batch_size):
            index = order[b : b + self.batch_size]
            rows = [prompt_ids[i] for i in index]
            if self.seq2seq:
                input_ids, attention_mask = self._right_pad(rows, self.pad)
                batch = {"input_ids": input_ids, "attention_mask": attention_mask}
            else:
                batch = self._left_pad(rows)
            out = self.model.generate(**batch, generation_config=config)  # [B, (T +) N]
            generated = out[:, 1:] if self.seq2seq else out[:, batch["input_ids"].shape[1] :]  # drop start / prompt
            for i, ids in zip(index, generated.tolist(), strict=True):
                ended[i] = self.eos in ids
                ids = ids[: ids.index(self.eos)] if ended[i] else ids
                new_tokens += len(ids)
                outputs[i] = self.text.decode_answer(ids)
            bar.update(len(index))
            bar.set_postfix(new_tok_s=f"{new_tokens / max(time.monotonic() - start, 1e-9):.0f}")
        bar.close()
        return (outputs, ended) if with_eos else outputs

    def _generation_config(self, max_new_tokens: int) -> GenerationConfig:
        # Greedy whatever the checkpoint's own generation defaults say (sampling, beams, length penalties).
        start = None
        if self.seq2seq:
            start = getattr(self.model.generation_config, "decoder_start_token_id", None)
            start = start if start is not None else getattr(self.model.config, "decoder_start_token_id", None)
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=self.eos,
            pad_token_id=self.pad,
            decoder_start_token_id=start,
        )
