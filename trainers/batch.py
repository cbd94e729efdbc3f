"""Packing trajectories into padded tensors and computing the policy's token log-probabilities."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils.checkpoint
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


# ---- log-probabilities -----------------------------------------------------------------------
DEFAULT_CHUNK_TOKENS = 1024
"""Rows (sequence positions) the output head turns into logits at a time in :func:`token_logprobs`."""


def _identity(logits: Tensor, config: Any) -> Tensor:
    return logits


def _softcap(logits: Tensor, config: Any) -> Tensor:
    # Gemma 2/3: tanh soft-capping of the final logits.
    cap = getattr(config, "final_logit_softcapping", None)
    return logits if cap is None else torch.tanh(logits / cap) * cap


def _scale(logits: Tensor, config: Any) -> Tensor:
    return logits * config.logit_scale  # Cohere


def _divide(logits: Tensor, config: Any) -> Tensor:
    return logits / config.logits_scaling  # Granite


HEAD_LOGITS: dict[str, Callable[[Tensor, Any], Tensor]] = {
    **dict.fromkeys(("llama", "qwen2", "qwen3", "mistral", "smollm3", "olmo2", "phi3", "gemma"), _identity),
    "gemma2": _softcap, "gemma3_text": _softcap, "cohere": _scale, "granite": _divide,
}
"""Architectures (``config.model_type``) whose causal-LM logits are ``f(head(decoder(ids)))``, with ``f``.

Only these take the chunked path of :func:`token_logprobs`; any other model (or a wrapper that is
not a Hugging Face ``PreTrainedModel``, e.g. DDP) is scored through its own full forward. Each
entry is checked against the model's own forward in tests/test_batch_logprobs.py.
"""


@dataclass(frozen=True)
class SplitHead:
    """A causal LM taken apart: the decoder body, the output head, and what follows the head."""

    decoder: torch.nn.Module
    head: torch.nn.Module
    post: Callable[[Tensor], Tensor]


def split_head(model: torch.nn.Module) -> SplitHead | None:
    """The decoder and output head of ``model`` (peft LoRA unwrapped), or None for the full-forward fallback.

    None unless the model (under any peft wrapper) is a Hugging Face ``PreTrainedModel`` whose
    ``model_type`` is in :data:`HEAD_LOGITS`.
    Peft prompt-learning methods (prefix/prompt tuning) are None: their forward adds virtual tokens
    that calling the decoder directly would skip. LoRA layers live inside the base model's modules,
    so the decoder and head found here already include them.
    """
    from transformers import PreTrainedModel

    base = model
    if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
        if getattr(model.active_peft_config, "is_prompt_learning", False):
            return None
        base = model.get_base_model()
    if not isinstance(base, PreTrainedModel):
        return None
    post = HEAD_LOGITS.get(getattr(base.config, "model_type", ""))
    head = base.get_output_embeddings()
    decoder = base.get_decoder()
    if post is None or head is None or decoder is base:
        return None
    config = base.config
    return SplitHead(decoder, head, lambda logits: post(logits, config))


def token_logprobs(model: torch.nn.Module, ids: Tensor, attention: Tensor, temperature: float = 1.0, *,
                   score_mask: Tensor | None = None, chunk_tokens: int | None = DEFAULT_CHUNK_TOKENS) -> Tensor:
    """Log-probability of each token given the ones before it, aligned with ``ids``.

    Position 0 has no prediction and gets 0, as does every position ``score_mask`` leaves out.
    Logits are divided by the sampling temperature so the values are comparable with the
    sampler's processed log-probabilities.

    Memory: the decoder runs once; the output head then makes logits for at most ``chunk_tokens``
    scored positions at a time, and under autograd each chunk is checkpointed, so neither forward
    nor backward ever holds ``[B, L, V]`` logits (a 49k vocabulary at ``B*L = 4096`` is 800 MB in
    float32 per copy). Architectures outside :data:`HEAD_LOGITS` fall back to the model's own
    full forward (full logits), as does ``chunk_tokens=None`` or ``0``.

    Args:
        model: A Hugging Face causal LM, optionally peft-wrapped.
        ids: ``[B, L]`` token ids (right-padded).
        attention: ``[B, L]`` attention mask.
        temperature: Sampling temperature the logits are divided by (``<= 0`` or 1: none).
        score_mask: ``[B, L]`` non-zero where a log-probability is wanted (e.g. the trainable-token
            mask); skipping the others skips their share of the head. Default: ``attention``.
        chunk_tokens: Positions per head chunk; None or 0 computes full logits (the reference path).

    Returns:
        ``[B, L]`` log-probabilities in float32 (float64 for a float64 model); constant zeros (no
        graph) when nothing is scored.
    """
    want = (attention if score_mask is None else score_mask).bool()  # [B, L]
    want = torch.nn.functional.pad(want[:, 1:], (1, 0), value=False)  # [B, L]: position 0 predicts nothing
    split = split_head(model) if chunk_tokens else None
    if split is None:
        return _full_logprobs(model, ids, attention, want, temperature)
    flat = want.flatten().nonzero().squeeze(1)  # [N] indices into B*L
    if flat.numel() == 0:
        return torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
    hidden = split.decoder(input_ids=ids, attention_mask=attention, use_cache=False).last_hidden_state  # [B, L, H]
    out = torch.zeros(ids.numel(), dtype=torch.promote_types(hidden.dtype, torch.float32), device=ids.device)  # [B*L]
    # Token t is predicted from the hidden state at t-1, in the same row (no scored token is at column 0).
    rows = hidden.flatten(0, 1).index_select(0, flat - 1)  # [N, H]
    targets = ids.flatten().index_select(0, flat)  # [N]
    scale = temperature if temperature > 0 and temperature != 1.0 else None
    checkpointed = torch.is_grad_enabled()
    parts = []
    for i in range(0, rows.shape[0], chunk_tokens):
        args = (split, rows[i:i + chunk_tokens], targets[i:i + chunk_tokens], scale)
        if checkpointed:
            # Keep nothing of the chunk's [c, V] logits for backward: it recomputes them one chunk at a time.
            parts.append(torch.utils.checkpoint.checkpoint(_chunk_logprobs, *args, use_reentrant=False))
        else:
            parts.append(_chunk_logprobs(*args))
    return out.index_put((flat,), torch.cat(parts)).view_as(ids)  # [B, L]


def _chunk_logprobs(split: SplitHead, rows: Tensor, targets: Tensor, temperature: float | None) -> Tensor:
    logits = _upcast(split.post(split.head(rows)))  # [c, V]
    if temperature is not None:
        logits = logits / temperature
    # gather - logsumexp rather than log_softmax: no second [c, V] tensor is materialised.
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)  # [c]


def _full_logprobs(model: torch.nn.Module, ids: Tensor, attention: Tensor, want: Tensor, temperature: float) -> Tensor:
    logits = _upcast(model(input_ids=ids, attention_mask=attention).logits[:, :-1])  # [B, L-1, V]
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    lp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # [B, L-1]
    lp = torch.nn.functional.pad(lp, (1, 0))  # [B, L]
    return torch.where(want, lp, torch.zeros_like(lp))


def _upcast(logits: Tensor) -> Tensor:
    # Softmax over a large vocabulary in half precision loses whole digits; float64 stays float64.
    return logits.to(torch.promote_types(logits.dtype, torch.float32))
