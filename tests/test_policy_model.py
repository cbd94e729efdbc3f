"""Loading the policy: LoRA on every layer or on the top layers only, and the backward pass that follows."""

from __future__ import annotations

import pytest
import torch

from toolgym.errors import ConfigError
from toolgym.trainers.model import LoraConfig, ModelConfig, load_policy


def _lora_layers(model) -> set[int]:
    return {int(name.split("layers.")[1].split(".")[0]) for name, p in model.named_parameters()
            if p.requires_grad and "lora_" in name}


# The warning says what the test checks: the top layer's inputs need no gradient.
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_top_layers_adapts_only_the_last_layers_and_backward_stops_there():
    everywhere, _ = load_policy(ModelConfig(tiny_size="mini", lora=LoraConfig(enabled=True, r=2)))
    top, _ = load_policy(ModelConfig(tiny_size="mini", lora=LoraConfig(enabled=True, r=2, top_layers=1)))
    layers = everywhere.config.num_hidden_layers
    assert _lora_layers(everywhere) == set(range(layers)) and _lora_layers(top) == {layers - 1}
    ids = torch.randint(0, top.config.vocab_size, (2, 12))
    for model in (everywhere, top):
        for p in model.parameters():  # the adapter's B starts at zero: give every one a gradient path
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.02)
    reached: list[int] = []
    hooks = [layer.register_full_backward_hook(lambda m, gi, go, i=i: reached.append(i))
             for i, layer in enumerate(top.get_base_model().model.layers)]
    top(input_ids=ids).logits.sum().backward()
    for h in hooks:
        h.remove()
    assert set(reached) == {layers - 1}  # no backward work in the frozen layers below


def test_top_layers_beyond_the_model_is_a_config_error():
    with pytest.raises(ConfigError, match="top_layers"):
        load_policy(ModelConfig(tiny_size="mini", lora=LoraConfig(enabled=True, top_layers=99)))
