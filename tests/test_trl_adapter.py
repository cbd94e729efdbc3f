"""TRL interop: toolgym envs under TRL's GRPOTrainer through environment_factory and rollout_func."""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

import pytest
import torch

pytest.importorskip("trl")

from toolgym_arithmetic import calculator  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from transformers.utils import get_json_schema  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from toolgym.errors import ConfigError  # noqa: E402
from toolgym.rollouts.engines.fake import ScriptedEngine  # noqa: E402
from toolgym.rollouts.tiny import tiny_model_path  # noqa: E402
from toolgym.trainers.trl_adapter import (  # noqa: E402
    environment_factory,
    make_rollout_func,
    prepare_tokenizer,
    toolgym_dataset,
    toolgym_reward,
)

ENV_ID = "toolgym/Arithmetic-v0"
ENV_KWARGS = {"difficulty": 1}
WRONG = "100000"  # no difficulty-1 problem has this answer (at most 99 * 99)


class Oracle:
    """Solves "Compute a op b." with the calculator; every second answer to the same tool result is wrong.

    Both rollouts of a group see the same tool result, so each group gets one right and one wrong
    answer whatever order they arrive in: rewards differ, advantages are non-zero.
    """

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()

    def reply(self, text: str) -> str:
        results = re.findall(r"<tool_response>\n(.*?)\n</tool_response>", text)
        if results:
            n = self.seen[text]
            self.seen[text] += 1
            return f"Answer: {results[-1] if n % 2 == 0 else WRONG}"
        expression = re.findall(r"Compute (.+?)\.", text)[-1]
        return f'<tool_call>\n{{"name": "calculator", "arguments": {{"expression": "{expression}"}}}}\n</tool_call>'


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return prepare_tokenizer(AutoTokenizer.from_pretrained(tiny_model_path()))


@pytest.fixture
def model() -> Any:
    return AutoModelForCausalLM.from_pretrained(tiny_model_path(), dtype=torch.float32)


@pytest.fixture(autouse=True)
def _quiet_trl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")


def grpo_args(tmp_path: Any) -> GRPOConfig:
    return GRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=96, max_steps=2, logging_steps=1, learning_rate=1e-2, report_to="none",
                      use_cpu=True, save_strategy="no", loss_type="dapo", seed=0)


def snapshot(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def check_trained(trainer: GRPOTrainer, before: dict[str, torch.Tensor]) -> list[dict[str, float]]:
    """Two optimizer steps ran with finite losses and moved the weights; returns the per-step logs."""
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert trainer.state.global_step == 2 and len(logs) == 2
    assert all(math.isfinite(h["loss"]) for h in logs)
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[k], after[k].detach()) for k in before)
    return logs


def test_dataset_rows_match_env_tasks() -> None:
    ds = toolgym_dataset(ENV_ID, "eval", 3, env_kwargs=ENV_KWARGS)
    assert len(ds) == 3 and ds["task_id"] == ["arith-eval-0", "arith-eval-1", "arith-eval-2"]
    assert [m["role"] for m in ds[0]["prompt"]] == ["system", "user"]
    assert ds[1]["prompt"][-1]["content"].startswith("Compute ")


def test_factory_exposes_env_tools_with_their_schema() -> None:
    env = environment_factory(ENV_ID, **ENV_KWARGS)()
    schema = get_json_schema(env.calculator)["function"]
    assert schema["parameters"]["properties"] == calculator.parameters["properties"]
    assert schema["description"] == calculator.description
    assert env.reset(task_id="arith-train-3") is None
    assert env.calculator(expression="2 +").startswith("Error:")  # the tool's own error text
    assert env.calculator(expression="6 * 7") == "42"
    state = env.env.state
    assert state.task.id == "arith-train-3" and len(state.tool_calls) == 2 and state.tool_errors == 1


def test_reset_without_task_id_returns_the_task_text() -> None:
    env = environment_factory(ENV_ID, **ENV_KWARGS)()
    text = env.reset(prompt=[{"role": "user", "content": ""}])
    assert text is not None and env.env.state.task.prompt in text


@pytest.mark.slow
def test_environment_factory_path_trains_on_rubric_rewards(tmp_path: Any, tokenizer: Any, model: Any) -> None:
    oracle = Oracle()

    def scripted_generate(input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> torch.Tensor:
        # Stands in for sampling so the episodes call the tool; TRL's tool loop does the rest.
        eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
        rows = [tokenizer.encode(oracle.reply(tokenizer.decode(ids[mask.bool()])), add_special_tokens=False) + [eot]
                for ids, mask in zip(input_ids, attention_mask, strict=True)]
        out = torch.full((len(rows), max(map(len, rows))), tokenizer.pad_token_id)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r)
        return torch.cat([input_ids, out], dim=1)

    seen: list[tuple[float | None, float]] = []

    def reward(completions: list[Any], environments: list[Any], **kwargs: Any) -> list[float | None]:
        rewards = toolgym_reward(completions, environments, **kwargs)
        for env, value in zip(environments, rewards, strict=True):
            state = env.env.state
            assert [c.name for c in state.calls] == ["calculator"]  # the tool ran inside the toolgym episode
            assert state.calls[0].arguments == {"expression": state.task.metadata["expression"]}
            seen.append((value, float(f"Answer: {state.task.answer}" in state.messages[-1]["content"])))
        return rewards

    model.generate = scripted_generate
    before = snapshot(model)
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=grpo_args(tmp_path), processing_class=tokenizer,
                          train_dataset=toolgym_dataset(ENV_ID, "train", 8, env_kwargs=ENV_KWARGS),
                          environment_factory=environment_factory(ENV_ID, **ENV_KWARGS))
    trainer.train()

    logs = check_trained(trainer, before)
    assert all(h["tools/call_frequency"] == 1.0 for h in logs)
    assert len(seen) == 8 and all(value == expected for value, expected in seen)  # the rubric's numeric_close
    assert {value for value, _ in seen} == {0.0, 1.0}
    assert all(h["toolgym/used_calculator"] == 1.0 for h in logs)


@pytest.mark.slow
def test_rollout_func_path_masks_tool_tokens(tmp_path: Any, tokenizer: Any, model: Any) -> None:
    oracle = Oracle()
    engine = ScriptedEngine(tokenizer, lambda ids, chat, i: oracle.reply(tokenizer.decode(ids)))
    rollouts = make_rollout_func(ENV_ID, env_kwargs=ENV_KWARGS, engine=engine)
    outputs: list[dict[str, Any]] = []

    def rollout_func(prompts: list[Any], trainer: GRPOTrainer) -> dict[str, Any]:
        outputs.append(rollouts(prompts, trainer))
        return outputs[-1]

    before = snapshot(model)
    trainer = GRPOTrainer(model=model, reward_funcs=[toolgym_reward], args=grpo_args(tmp_path),
                          processing_class=tokenizer, rollout_func=rollout_func,
                          train_dataset=toolgym_dataset(ENV_ID, "train", 8, env_kwargs=ENV_KWARGS))
    trainer.train()
    rollouts.close()

    logs = check_trained(trainer, before)
    for out, log in zip(outputs, logs, strict=True):
        for ids, mask, reward in zip(out["completion_ids"], out["env_mask"], out["episode_reward"], strict=True):
            sampled = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
            env_text = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if not m])
            assert sampled.startswith("<tool_call>") and "Answer: " in sampled and "tool_response" not in sampled
            assert "<tool_response>" in env_text and "calculator" not in env_text
            assert reward == float(WRONG not in sampled)
        # TRL counts only env_mask=1 tokens as completion length: it took our mask.
        assert log["completions/mean_length"] == pytest.approx(sum(map(sum, out["env_mask"])) / 4)
        assert {r for r in out["episode_reward"]} == {0.0, 1.0}
        assert log["rewards/toolgym_reward/mean"] == pytest.approx(sum(out["episode_reward"]) / 4)


@pytest.mark.slow
def test_rollout_func_default_engine_samples_from_the_trainers_model(tmp_path: Any, tokenizer: Any,
                                                                     model: Any) -> None:
    rollouts = make_rollout_func(ENV_ID, env_kwargs=ENV_KWARGS)
    args = grpo_args(tmp_path)
    args.max_completion_length = 16
    trainer = GRPOTrainer(model=model, reward_funcs=[toolgym_reward], args=args, processing_class=tokenizer,
                          rollout_func=rollouts, train_dataset=toolgym_dataset(ENV_ID, "train", 8,
                                                                               env_kwargs=ENV_KWARGS))
    trainer.train()
    try:
        assert rollouts._worker is not None and rollouts._worker.engine.model is model
        assert trainer.state.global_step == 2
        assert all(math.isfinite(h["loss"]) for h in trainer.state.log_history if "loss" in h)
        for t in rollouts.last_trajectories:
            assert t.error is None and t.prompt_len > 0
            assert 0 < t.turns[0].end - t.turns[0].start <= 16  # max_completion_length new tokens per turn
    finally:
        rollouts.close()


def test_rollout_func_rejects_prompts_it_cannot_match(tokenizer: Any) -> None:
    class Trainer:  # the two attributes the task lookup reads
        train_dataset = toolgym_dataset(ENV_ID, "train", 2, env_kwargs=ENV_KWARGS)
        eval_dataset = None

    rollouts = make_rollout_func(ENV_ID, env_kwargs=ENV_KWARGS, engine=ScriptedEngine(tokenizer, ["Answer: 1"]))
    with pytest.raises(ConfigError, match="toolgym_dataset"):
        rollouts([[{"role": "user", "content": "not a task"}]], Trainer())
