"""Chunked token log-probabilities equal the full-logits ones, in values and gradients.

Tolerances: float64 models agree to 1e-10 (the two paths compute the same thing). In float32 the
paths round differently (``gather - logsumexp`` per chunk vs ``log_softmax`` over ``[B, L, V]``):
on the tiny model values agree to 1e-5 and gradients to 1e-4 of their norm; on SmolLM2 (49k
vocabulary, log-probs down to -30) values to 2e-4 and gradients to 1e-3 of their norm. Measured
against a float64 reference, the chunked path is as close as the full one (both ~5e-5).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from toolgym.errors import ConfigError
from toolgym.rollouts.tiny import tiny_model_path
from toolgym.trainers import batch as batch_mod
from toolgym.trainers.batch import HEAD_LOGITS, split_head, token_logprobs


@pytest.fixture(scope="module")
def tiny():
    return str(tiny_model_path())


@pytest.fixture(scope="module")
def smollm2():
    from toolgym.rollouts.pretrained import resolve_pretrained

    try:
        return str(resolve_pretrained("smollm2"))
    except ConfigError as exc:
        pytest.skip(str(exc))


def _inputs(vocab: int, seed: int = 0, batch: int = 3, length: int = 24):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length), generator=g)  # [B, L]
    attention = torch.ones_like(ids)
    attention[1, length - 6:] = 0  # right padding
    attention[2, length // 2:] = 0
    mask = attention.float()
    mask[:, :4] = 0  # a "prompt" that is not scored
    return ids, attention, mask


def _run(model, ids, attention, mask, chunk_tokens, temperature=0.7):
    model.zero_grad(set_to_none=True)
    lp = token_logprobs(model, ids, attention, temperature, score_mask=mask, chunk_tokens=chunk_tokens)  # [B, L]
    (lp * mask).sum().backward()
    grads = torch.cat([p.grad.flatten().double() for p in model.parameters() if p.grad is not None])
    return lp.detach().double(), grads


def _assert_close(model, ids, attention, mask, chunk_tokens, atol, grad_rtol):
    ref, ref_g = _run(model, ids, attention, mask, 0)
    got, got_g = _run(model, ids, attention, mask, chunk_tokens)
    assert ref_g.numel() == got_g.numel() > 0
    assert (got - ref).abs().max() <= atol
    assert (got_g - ref_g).norm() <= grad_rtol * ref_g.norm()
    assert (got[mask == 0] == 0).all()


@pytest.mark.parametrize("chunk_tokens", [1, 7, 4096])
def test_tiny_chunked_equals_full_float64(tiny, chunk_tokens):
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float64)
    assert split_head(model) is not None
    _assert_close(model, *_inputs(model.config.vocab_size), chunk_tokens, atol=1e-10, grad_rtol=1e-10)


def test_tiny_chunked_equals_full_float32_temperature_one(tiny):
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    ids, attention, mask = _inputs(model.config.vocab_size)
    ref, _ = _run(model, ids, attention, mask, 0, temperature=1.0)
    got, _ = _run(model, ids, attention, mask, 5, temperature=1.0)
    assert (got - ref).abs().max() <= 1e-5
    _assert_close(model, ids, attention, mask, 5, atol=1e-5, grad_rtol=1e-4)


def test_tiny_with_gradient_checkpointing_and_lora(tiny):
    from peft import LoraConfig, get_peft_model

    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float64)
    model.gradient_checkpointing_enable()
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                             task_type="CAUSAL_LM"))
    with torch.no_grad():  # LoRA B starts at zero: make the adapter matter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    model.train()
    split = split_head(model)
    assert split is not None and split.head is model.get_base_model().lm_head
    ids, attention, mask = _inputs(model.config.vocab_size)
    _assert_close(model, ids, attention, mask, 6, atol=1e-10, grad_rtol=1e-10)
    assert all("lora_" in n for n, p in model.named_parameters() if p.grad is not None)


def test_head_only_ever_sees_one_chunk(tiny):
    model = AutoModelForCausalLM.from_pretrained(tiny)
    ids, attention, mask = _inputs(model.config.vocab_size)
    rows: list[int] = []
    hook = model.get_output_embeddings().register_forward_hook(lambda mod, inp, out: rows.append(inp[0].shape[0]))
    lp = token_logprobs(model, ids, attention, score_mask=mask, chunk_tokens=8)
    scored = int(mask[:, 1:].sum())
    forward_calls = list(rows)
    lp.sum().backward()  # each chunk's logits are recomputed here, one chunk at a time
    hook.remove()
    assert sum(forward_calls) == scored and max(forward_calls) <= 8
    assert len(rows) == 2 * len(forward_calls) and max(rows) <= 8


def test_nothing_scored_is_zeros_without_a_forward(tiny):
    model = AutoModelForCausalLM.from_pretrained(tiny)
    ids, attention, _ = _inputs(model.config.vocab_size)
    calls: list[int] = []
    hook = model.get_decoder().register_forward_hook(lambda *a: calls.append(1))
    lp = token_logprobs(model, ids, attention, score_mask=torch.zeros(ids.shape))
    hook.remove()
    assert not calls and lp.shape == ids.shape and not lp.any()


def test_no_grad_path_and_default_score_mask(tiny):
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float64)
    ids, attention, _ = _inputs(model.config.vocab_size)
    with torch.no_grad():
        full = token_logprobs(model, ids, attention, chunk_tokens=0)  # [B, L]
        chunked = token_logprobs(model, ids, attention, chunk_tokens=3)
    assert not chunked.requires_grad
    assert torch.allclose(full, chunked, atol=1e-10, rtol=0)
    assert (chunked[attention == 0] == 0).all() and (chunked[:, 0] == 0).all()
    assert (chunked[:, 1:][attention[:, 1:] == 1] < 0).all()


def _small_config(model_type: str):
    kwargs = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                  eos_token_id=2, tie_word_embeddings=False)
    extra = {"gemma2": {"final_logit_softcapping": 3.0}, "gemma3_text": {"final_logit_softcapping": 3.0},
             "cohere": {"logit_scale": 0.5}, "granite": {"logits_scaling": 4.0}}
    return AutoConfig.for_model(model_type, **kwargs, **extra.get(model_type, {}))


@pytest.mark.parametrize("model_type", sorted(HEAD_LOGITS))
def test_every_listed_architecture_matches_its_own_forward(model_type, monkeypatch):
    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_small_config(model_type)).double()
    with torch.no_grad():  # large logits, so a missing soft-cap or scale would show
        model.get_output_embeddings().weight.mul_(30)
    ids, attention, mask = _inputs(97, length=12)
    _assert_close(model, ids, attention, mask, 5, atol=1e-10, grad_rtol=1e-10)
    if HEAD_LOGITS[model_type] is not batch_mod._identity:  # the table's post-processing is what makes it match
        monkeypatch.setitem(HEAD_LOGITS, model_type, batch_mod._identity)
        assert (_run(model, ids, attention, mask, 5)[0] - _run(model, ids, attention, mask, 0)[0]).abs().max() > 1e-3


def test_unknown_architectures_and_wrappers_fall_back_to_the_full_forward(tiny):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=97, n_embd=32, n_layer=1, n_head=2, n_positions=64)).double().eval()
    assert split_head(gpt2) is None
    ids, attention, mask = _inputs(97, length=12)
    assert torch.equal(_run(gpt2, ids, attention, mask, 4)[0], _run(gpt2, ids, attention, mask, 0)[0])

    class Wrapper(torch.nn.Module):  # e.g. DistributedDataParallel: its own forward must run
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kwargs):
            return self.inner(**kwargs)

    assert split_head(Wrapper(AutoModelForCausalLM.from_pretrained(tiny))) is None


def test_prompt_learning_peft_falls_back(tiny):
    from peft import PromptTuningConfig, get_peft_model

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny),
                           PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    assert split_head(model) is None


def test_smollm2_chunked_equals_full(smollm2):
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    assert model.config.vocab_size == 49152 and split_head(model) is not None
    ids, attention, mask = _inputs(model.config.vocab_size, length=12)
    _assert_close(model, ids, attention, mask, 7, atol=2e-4, grad_rtol=1e-3)


def test_smollm2_lora_chunked_equals_full(smollm2):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    ids, attention, mask = _inputs(model.config.vocab_size, length=12)
    _assert_close(model, ids, attention, mask, 7, atol=2e-4, grad_rtol=1e-3)
