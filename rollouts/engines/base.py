"""The engine contract: token ids in, sampled token ids and their log-probabilities out.

Every backend (Hugging Face ``generate``, vLLM, any OpenAI-compatible server, the scripted fake
used in tests) implements :class:`Engine`. The rollout worker only ever hands an engine token
ids and keeps the ids it gets back verbatim, so what a trainer learns from is exactly what was
sampled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one completion.

    Args:
        max_tokens: New tokens at most.
        temperature: 0 means greedy.
        top_p: Nucleus sampling mass (1.0 = off).
        top_k: Keep the k most likely tokens (0 = off).
        stop_token_ids: Tokens that end the completion (kept as its last token). ``None``: the
            engine's defaults (the chat template's end-of-turn token and the tokenizer's eos).
        ignore_eos: Never stop early (benchmarks): every completion is ``max_tokens`` long.
        seed: Seeds the sampler for this call where the backend supports per-request seeds.
    """

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop_token_ids: tuple[int, ...] | None = None
    ignore_eos: bool = False
    seed: int | None = None

    def batch_key(self) -> tuple[Any, ...]:
        """Requests with equal keys can share one batched forward pass."""
        return (self.temperature, self.top_p, self.top_k, self.stop_token_ids, self.ignore_eos)


@dataclass
class Completion:
    """What an engine sampled.

    ``token_ids`` are the sampled ids, including the stop token when the completion stopped on
    one; ``logprobs[i]`` is the sampler's (processed) log-probability of ``token_ids[i]``;
    ``finish_reason`` is ``"stop"`` or ``"length"``. ``exact`` is False when the backend returned
    only text and the ids were re-tokenised (their logprobs are then 0.0).
    """

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str = "stop"
    exact: bool = True
    text: str | None = None


@dataclass
class ChatPrompt:
    """The conversation behind a prompt, for backends that can only speak chat."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None


@runtime_checkable
class Engine(Protocol):
    """An inference backend. ``generate`` may be called concurrently from many coroutines."""

    tokenizer: Any

    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       chat: ChatPrompt | None = None) -> Completion:
        """Sample one completion of ``prompt_ids``."""
        ...

    async def generate_batch(self, prompts: Sequence[list[int]], params: SamplingParams) -> list[Completion]:
        """Sample one completion per prompt (one batch where the backend can)."""
        ...

    def update_weights(self, weights: Iterable[tuple[str, Any]] | None = None) -> None:
        """Make the next generations use new weights (``None``: the shared model object changed)."""
        ...

    def close(self) -> None:
        """Release the backend's resources."""
        ...


class EngineBase:
    """Shared helpers: default stop ids and a ``generate_batch`` made of concurrent ``generate`` calls."""

    tokenizer: Any
    weights_version: int = 0

    def default_stop_ids(self) -> tuple[int, ...]:
        return default_stop_ids(self.tokenizer)

    def stop_ids(self, params: SamplingParams) -> tuple[int, ...]:
        if params.ignore_eos:
            return ()
        return params.stop_token_ids if params.stop_token_ids is not None else self.default_stop_ids()

    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       chat: ChatPrompt | None = None) -> Completion:
        raise NotImplementedError

    async def generate_batch(self, prompts: Sequence[list[int]], params: SamplingParams) -> list[Completion]:
        return list(await asyncio.gather(*(self.generate(list(p), params) for p in prompts)))

    def update_weights(self, weights: Iterable[tuple[str, Any]] | None = None) -> None:
        self.weights_version += 1

    def close(self) -> None:
        pass


def default_stop_ids(tokenizer: Any) -> tuple[int, ...]:
    """The end-of-turn token of chat templates we know plus the tokenizer's eos, as ids.

    Example:
        >>> class Tok:
        ...     eos_token_id = 2
        ...     def convert_tokens_to_ids(self, t):
        ...         return {"<|im_end|>": 7}.get(t)
        ...     unk_token_id = None
        >>> default_stop_ids(Tok())
        (7, 2)
    """
    out: list[int] = []
    for tok in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"):
        tid = _token_id(tokenizer, tok)
        if tid is not None:
            out.append(tid)
    eos = getattr(tokenizer, "eos_token_id", None)
    for tid in eos if isinstance(eos, list) else [eos]:
        if tid is not None and tid not in out:
            out.append(int(tid))
    return tuple(out)


def _token_id(tokenizer: Any, token: str) -> int | None:
    try:
        tid = tokenizer.convert_tokens_to_ids(token)
    except Exception:
        return None
    if tid is None or tid == getattr(tokenizer, "unk_token_id", None):
        return None
    return int(tid)


@dataclass
class EngineConfig:
    """Which engine to build and how (see :func:`toolgym.rollouts.engines.make_engine`).

    Args:
        kind: ``"hf"``, ``"vllm"`` or ``"openai"``.
        model: Checkpoint path or hub id; ``"tiny"`` builds the offline tiny model.
        device: ``"cpu"``, ``"cuda"``... (hf); ``None`` picks CUDA when available.
        dtype: Torch dtype name (``"float32"``, ``"bfloat16"``); ``None``: float32 on CPU, bf16 on GPU.
        max_batch_size: Most sequences in one forward batch (hf).
        base_url: Server root for ``openai`` (e.g. ``http://127.0.0.1:8000/v1``).
        api_key_env: Environment variable holding the server's API key (never stored in configs).
        served_model: Model name the server knows (defaults to ``model``).
        tokenizer: Tokenizer path when it differs from ``model``.
        gpu_memory_utilization: vLLM's KV-cache budget.
        enable_sleep_mode: vLLM sleep/wake between rollout phases.
        extra: Backend-specific keyword arguments.
    """

    kind: str = "hf"
    model: str = "tiny"
    device: str | None = None
    dtype: str | None = None
    max_batch_size: int = 64
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    served_model: str | None = None
    tokenizer: str | None = None
    gpu_memory_utilization: float = 0.5
    enable_sleep_mode: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
