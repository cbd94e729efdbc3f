"""Packing trajectories into padded tensors and computing the policy's token log-probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class TokenBatch:
    """Right-padded token arrays of several sequences (all ``[B, L]``).

    ``mask`` marks trainable (model-sampled) tokens; ``sampler_logprobs`` are the rollout engine's
    log-probabilities of those tokens (0 elsewhere); ``advantages`` is per token.
    """

    ids: Tensor  # [B, L] long
    attention: Tensor  # [B, L] long
    mask: Tensor  # [B, L] float
    sampler_logprobs: Tensor  # [B, L] float
    advantages: Tensor  # [B, L] float

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def slice(self, start: int, end: int) -> TokenBatch:
        return TokenBatch(*(t[start:end] for t in (self.ids, self.attention, self.mask, self.sampler_logprobs,
                                                    self.advantages)))

    def to(self, device: torch.device) -> TokenBatch:
        return TokenBatch(*(t.to(device) for t in (self.ids, self.attention, self.mask, self.sampler_logprobs,
                                                    self.advantages)))


def pad_batch(token_ids: Sequence[Sequence[int]], masks: Sequence[Sequence[int]],
              logprobs: Sequence[Sequence[float]] | None = None,
              advantages: Sequence[Sequence[float]] | None = None, pad_id: int = 0) -> TokenBatch:
    """Right-pad sequences into a :class:`TokenBatch`.

    Example:
        >>> b = pad_batch([[5, 6, 7], [8]], [[0, 1, 1], [0]])
        >>> b.ids.tolist(), b.mask.tolist()
        ([[5, 6, 7], [8, 0, 0]], [[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    """
    n, width = len(token_ids), max(len(t) for t in token_ids)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros(n, width, dtype=torch.long)
    mask = torch.zeros(n, width)
    lps = torch.zeros(n, width)
    adv = torch.zeros(n, width)
    for i, seq in enumerate(token_ids):
        k = len(seq)
        ids[i, :k] = torch.tensor(seq, dtype=torch.long)
        attention[i, :k] = 1
        mask[i, :k] = torch.tensor(masks[i], dtype=torch.float)
        if logprobs is not None:
            lps[i, :k] = torch.tensor(logprobs[i], dtype=torch.float)
        if advantages is not None:
            adv[i, :k] = torch.tensor(advantages[i], dtype=torch.float)
    return TokenBatch(ids, attention, mask, lps, adv)


def token_logprobs(model: torch.nn.Module, ids: Tensor, attention: Tensor, temperature: float = 1.0) -> Tensor:
    """Log-probability of each token given the ones before it, aligned with ``ids``.

    Position 0 has no prediction and gets 0. Logits are divided by the sampling temperature so the
    values are comparable with the sampler's processed log-probabilities.

    Returns:
        ``[B, L]`` float32 log-probabilities.
    """
    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()  # [B, L-1, V]
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    lp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # [B, L-1]
    return torch.nn.functional.pad(lp, (1, 0))  # [B, L]
