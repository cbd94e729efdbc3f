"""The offline tiny model: loads with Auto classes, tokenises compactly, templates round-trip."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import toolgym
from toolgym.rollouts.tiny import THINKING_CHAT_TEMPLATE, build_tiny_model, tiny_model_path


@pytest.fixture(scope="module")
def path():
    return tiny_model_path()


@pytest.fixture(scope="module")
def tok(path):
    return AutoTokenizer.from_pretrained(path)


def test_checkpoint_loads_with_auto_classes_and_runs(path, tok):
    model = AutoModelForCausalLM.from_pretrained(path)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in path.iterdir()}
    ids = torch.tensor([tok.encode("Bo has 12 coins.", add_special_tokens=False)])
    logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert model.config.vocab_size >= len(tok)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"


def test_digits_are_single_tokens_and_prompt_words_are_whole(tok):
    assert tok.convert_ids_to_tokens(tok.encode("4096", add_special_tokens=False)) == ["4", "0", "9", "6"]
    env = toolgym.make("toolgym/Arithmetic-v0", split="eval").unwrapped
    prompt = env.tasks[7].prompt
    for word in prompt.replace(".", " ").replace("?", " ").split():
        if word.isalpha():
            assert len(tok.encode(" " + word, add_special_tokens=False)) == 1, word
    # one token per digit, per word and per punctuation mark at most
    assert len(tok.encode(prompt, add_special_tokens=False)) <= len(prompt.split()) + sum(c.isdigit() for c in prompt) + 12


def test_special_and_markup_tokens_are_atomic(tok):
    for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool_call>", "</tool_call>", "<think>", "</think>"):
        ids = tok.encode(t, add_special_tokens=False)
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids) == [t]


def test_chat_template_round_trips_hermes_tool_calls(tok):
    env = toolgym.make("toolgym/Arithmetic-v0").unwrapped
    _, info = env.reset(options={"task_index": 3})
    demo = env.demonstration(env.state.task)
    text = tok.apply_chat_template(demo, tools=info["tools"], tokenize=False)
    assert demo[2]["content"] in text  # the assistant's <tool_call> text verbatim
    assert "<tool_response>\n" + demo[3]["content"] + "\n</tool_response>" in text
    assert json.dumps(info["tools"][0]) in text
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    structured = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "1 + 2"}}}]}]
    rendered = tok.apply_chat_template(structured, tokenize=False)
    assert '<tool_call>\n{"name": "calculator", "arguments": {"expression": "1 + 2"}}\n</tool_call>' in rendered


def test_thinking_template_drops_only_past_think_blocks(tok):
    msgs = [{"role": "user", "content": "q"},
            {"role": "assistant", "content": "<think>\nplan\n</think>\n\nfirst"},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": "<think>\nmore\n</think>\n\nsecond"}]
    text = tok.apply_chat_template(msgs, tokenize=False, chat_template=THINKING_CHAT_TEMPLATE)
    assert "plan" not in text and "first" in text
    assert "<think>\nmore\n</think>" in text  # the last assistant turn keeps its reasoning
    plain = tok.apply_chat_template(msgs, tokenize=False)
    assert "plan" in plain


def test_build_is_cached_by_seed_and_size(tmp_path):
    a = build_tiny_model(tmp_path / "a", seed=1)
    stamp = (a / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model(tmp_path / "a", seed=1) == a
    assert (a / "model.safetensors").stat().st_mtime_ns == stamp
    b = build_tiny_model(tmp_path / "b", seed=2)
    wa = AutoModelForCausalLM.from_pretrained(a).model.embed_tokens.weight
    wb = AutoModelForCausalLM.from_pretrained(b).model.embed_tokens.weight
    assert not torch.equal(wa, wb)


def test_refuses_to_overwrite_a_foreign_directory(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(toolgym.ConfigError):
        build_tiny_model(tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_unknown_size_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="small"):
        build_tiny_model(tmp_path, size="huge")
