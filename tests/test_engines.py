"""Engines: HF micro-batching and sampler logprobs, the OpenAI-compatible client and its fallbacks."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest
import torch

from toolgym.errors import ConfigError, ModelError, OverlongPromptError
from toolgym.rollouts.engines import EngineConfig, SamplingParams, make_engine
from toolgym.rollouts.engines.base import ChatPrompt, Engine
from toolgym.rollouts.engines.hf import HFEngine
from toolgym.rollouts.engines.openai import BadRequestError, OpenAIEngine
from toolgym.rollouts.engines.server import OpenAICompatServer
from toolgym.rollouts.tiny import tiny_model_path


@pytest.fixture(scope="module")
def engine():
    eng = HFEngine.from_pretrained(tiny_model_path(), device="cpu")
    yield eng
    eng.close()


class Recording:
    """Wraps an engine and keeps every completion it returned (what the server sampled)."""

    def __init__(self, inner):
        self.inner, self.tokenizer, self.log = inner, inner.tokenizer, []

    async def generate(self, prompt_ids, params, chat=None):
        c = await self.inner.generate(prompt_ids, params)
        self.log.append((list(prompt_ids), c))
        return c


def _recompute_logprobs(model, prompt, completion, temperature):
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1:-1].float() / temperature  # [T, V]
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(completion)[:, None]).squeeze(1)


def test_hf_engine_satisfies_protocol_and_logprobs_match_the_sampler(engine):
    assert isinstance(engine, Engine)
    prompt = engine.tokenizer.encode("<|im_start|>user\nBo has 12 coins.<|im_end|>\n", add_special_tokens=False)
    c = asyncio.run(engine.generate(prompt, SamplingParams(max_tokens=12, temperature=0.7, ignore_eos=True)))
    assert len(c.token_ids) == len(c.logprobs) == 12 and c.finish_reason == "length"
    expected = _recompute_logprobs(engine.model, prompt, c.token_ids, 0.7)
    assert torch.allclose(torch.tensor(c.logprobs), expected, atol=1e-4)


def test_hf_engine_batches_concurrent_requests_with_left_padding(engine):
    prompts = [[5] * (3 + i) for i in range(6)]
    params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    before = engine.batches_run

    async def many():
        return await asyncio.gather(*(engine.generate(p, params) for p in prompts))

    batched = asyncio.run(many())
    assert engine.batches_run - before < len(prompts)  # requests were gathered into shared batches
    # greedy results in a padded batch equal each prompt run alone
    for p, c in zip(prompts, batched, strict=True):
        alone = engine.generate_batch_sync([p], params)[0]
        assert c.token_ids == alone.token_ids
        assert c.logprobs == pytest.approx(alone.logprobs, abs=1e-4)


def test_hf_engine_stops_on_stop_token_and_keeps_it(engine):
    prompt = [5, 6, 7]
    greedy = engine.generate_batch_sync([prompt], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))[0]
    stop = greedy.token_ids[2]
    c = engine.generate_batch_sync([prompt], SamplingParams(max_tokens=8, temperature=0, stop_token_ids=(stop,)))[0]
    first = greedy.token_ids.index(stop)
    assert c.token_ids == greedy.token_ids[: first + 1] and c.finish_reason == "stop"


def test_hf_engine_errors_are_typed(engine, tmp_path):
    too_long = [5] * (engine.max_context + 1)
    with pytest.raises(OverlongPromptError):
        asyncio.run(engine.generate(too_long, SamplingParams(max_tokens=2)))
    with pytest.raises(ModelError):
        asyncio.run(engine.generate([], SamplingParams(max_tokens=2)))
    with pytest.raises(ModelError, match="unknown parameter"):
        engine.update_weights([("no.such.weight", torch.zeros(1))])
    closed = HFEngine(engine.model, engine.tokenizer)
    closed.close()
    with pytest.raises(ModelError, match="closed"):
        asyncio.run(closed.generate([1], SamplingParams(max_tokens=1)))


def test_hf_update_weights_changes_generation(tmp_path):
    eng = HFEngine.from_pretrained(tiny_model_path(), device="cpu")
    try:
        params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
        before = eng.generate_batch_sync([[5, 6]], params)[0]
        head = eng.model.lm_head.weight
        new = torch.zeros_like(head)
        new[7] = 1.0
        eng.update_weights([("lm_head.weight", new)])
        after = eng.generate_batch_sync([[5, 6]], params)[0]
        assert eng.weights_version == 1 and after.token_ids != before.token_ids
    finally:
        eng.close()


def test_make_engine_and_missing_vllm():
    with pytest.raises(ConfigError, match="unknown engine"):
        make_engine(EngineConfig(kind="tgi"))
    with pytest.raises(ConfigError, match="base_url"):
        make_engine(EngineConfig(kind="openai", model="tiny"))
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ConfigError, match="pip install"):
            make_engine(EngineConfig(kind="vllm", model="tiny"))


@pytest.fixture(scope="module")
def served(engine):
    rec = Recording(engine)
    with OpenAICompatServer(rec, model_name="tiny") as server:
        yield server, rec


def test_openai_token_completions_are_exact(served, engine):
    server, rec = served
    client = OpenAIEngine(server.url, "tiny", engine.tokenizer, api_key="test-key")
    prompt = engine.tokenizer.encode("<|im_start|>user\nhi<|im_end|>\n", add_special_tokens=False)

    async def go():
        return await asyncio.gather(*(client.generate(prompt, SamplingParams(max_tokens=8)) for _ in range(3)))

    out = asyncio.run(go())
    served_log = {tuple(c.token_ids): c for p, c in rec.log[-3:] if p == prompt}
    for c in out:
        assert c.exact and tuple(c.token_ids) in served_log
        assert c.logprobs == pytest.approx(served_log[tuple(c.token_ids)].logprobs)
    client.close()


def test_openai_strict_server_falls_back_to_standard_fields(engine):
    with OpenAICompatServer(engine, extensions=False) as server:
        client = OpenAIEngine(server.url, "m", engine.tokenizer, mode="completions")
        c = asyncio.run(client.generate([5, 6, 7], SamplingParams(max_tokens=5)))
        assert not client._extensions and len(c.token_ids) >= 1
        assert not c.exact  # ids were recovered from text


def test_openai_chat_fallback_when_token_prompts_are_refused(engine):
    with OpenAICompatServer(engine, token_prompts=False) as server:
        client = OpenAIEngine(server.url, "m", engine.tokenizer)
        chat = ChatPrompt([{"role": "user", "content": "What is 2 + 2?"}])
        c = asyncio.run(client.generate([5, 6], SamplingParams(max_tokens=5), chat))
        assert client.mode == "chat" and not c.exact and c.token_ids
        with pytest.raises(BadRequestError):
            asyncio.run(client.generate([5, 6], SamplingParams(max_tokens=5)))  # chat needs the messages


def test_openai_unreachable_server_is_retryable_model_error(engine):
    client = OpenAIEngine("http://127.0.0.1:9/v1", "m", engine.tokenizer, timeout_s=2)
    with pytest.raises(ModelError) as info:
        asyncio.run(client.generate([1], SamplingParams(max_tokens=1)))
    assert info.value.retryable


def test_hf_one_bad_prompt_does_not_fail_its_batch(engine):
    too_long = [5] * (engine.max_context + 1)

    async def go():
        return await asyncio.gather(engine.generate(too_long, SamplingParams(max_tokens=2)),
                                    engine.generate([5, 6], SamplingParams(max_tokens=2)), return_exceptions=True)

    bad, good = asyncio.run(go())
    assert isinstance(bad, OverlongPromptError) and len(good.token_ids) >= 1


def test_worker_through_openai_engine_is_token_exact(served, engine):
    import toolgym
    from toolgym.rollouts.worker import RolloutConfig, RolloutRequest, RolloutWorker

    server, rec = served
    client = make_engine(EngineConfig(kind="openai", model="tiny", base_url=server.url))
    before = len(rec.log)
    worker = RolloutWorker(client, lambda: toolgym.make("toolgym/Arithmetic-v0").unwrapped,
                           RolloutConfig(max_new_tokens=8, max_turns=2))
    trajs = worker.run_sync([RolloutRequest({"task_index": 0}, group_size=2)])
    served_log = rec.log[before:]
    for t in trajs:
        t.check()
        assert t.exact and t.error is None
        for turn in t.turns:
            ids = t.token_ids[turn.start:turn.end]
            assert any(p == t.token_ids[:turn.start] and c.token_ids == ids and c.logprobs == pytest.approx(
                t.logprobs[turn.start:turn.end]) for p, c in served_log)
