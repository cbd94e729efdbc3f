"""``toolgym train`` end to end on the tiny model: a short run, its artefacts, kill and resume."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from toolgym.cli import main

SMALL = ["trainer.steps=2", "trainer.sft.steps=8", "trainer.sft.demonstrations=64", "trainer.tasks_per_step=2",
         "trainer.group_size=4", "trainer.eval_episodes=8", "trainer.eval_every=1", "trainer.checkpoint_every=1",
         "tensorboard=false"]


@pytest.mark.slow
def test_two_step_run_writes_its_artefacts(tmp_path):
    assert main(["train", *SMALL, f"hydra.run.dir={tmp_path}"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("eval_reward_before", "eval_reward_after", "wall_s", "recipe"):
        assert key in summary
    assert summary["recipe"] == "arithmetic_tiny_cpu" and summary["steps"] == 2
    for when in ("before", "after_sft", "after"):  # the curve a recipe is judged by: reward and pass rate
        assert 0.0 <= summary[f"eval_pass_rate_{when}"] <= 1.0 and isinstance(summary[f"eval_reward_{when}"], float)
    assert summary["eval_temperature"] == 0.0 and summary["sft_final_loss"] > 0
    phases = summary["phase_s"]
    assert set(phases) == {"setup", "eval_before", "sft", "eval_after_sft", "grpo", "eval_after"}
    assert all(v >= 0 for v in phases.values()) and sum(phases.values()) <= summary["wall_s"] + 1.0
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    for key in ("reward_mean", "reward_std", "pass_rate", "grad_norm", "tokens_per_s", "generate_s", "train_s"):
        assert key in train[0]
    assert train[0]["episodes"] == 8  # 2 tasks x 4 samples
    assert (tmp_path / "reward_curve.png").stat().st_size > 1000
    assert (tmp_path / ".hydra" / "config.yaml").exists()
    assert (tmp_path / "checkpoints" / "latest").exists()
    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(tmp_path / "final")  # loadable by any HF tool
    assert sum(p.numel() for p in final.parameters()) > 0


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from toolgym.trainers.checkpoint import find_latest

    latest = find_latest(run_dir / "checkpoints")
    return torch.load(latest / "model.pt", weights_only=True)


def _train_rows(run_dir: Path) -> list[dict]:
    # neg_logprob depends on every sampled token and on the weights: equal rows mean equal rollouts.
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keys = ("step", "reward_mean", "loss", "neg_logprob", "episodes", "tool_calls")
    return [{k: r[k] for k in keys} for r in rows if r["kind"] == "train"]


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    args = ["trainer.steps=4", "trainer.sft.steps=4", "trainer.sft.demonstrations=32", "trainer.tasks_per_step=2",
            "trainer.group_size=4", "trainer.eval_episodes=4", "trainer.checkpoint_every=1", "tensorboard=false",
            "trainer.curriculum.kind=pass_rate"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    # Both runs in fresh processes: the same program, interrupted or not.
    base = [sys.executable, "-m", "toolgym.cli", "train", *args]
    subprocess.run([*base, f"hydra.run.dir={straight}"], check=True, capture_output=True)
    cmd = [*base, f"hydra.run.dir={killed}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step_00000002").exists() and time.time() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()
    subprocess.run([*cmd, "resume=true"], check=True, capture_output=True)
    resumed = json.loads((killed / "summary.json").read_text())
    assert resumed["resumed"] is True
    # The phases before the kill come from the checkpoint: the resumed run reports the whole run's.
    assert {"eval_before", "sft", "eval_after_sft", "grpo"} <= set(resumed["phase_s"])
    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    rows_a, rows_b = _train_rows(straight), _train_rows(killed)
    assert [r["step"] for r in rows_b][-2:] == [3, 4]
    assert rows_b[-2:] == rows_a[-2:]


@pytest.mark.slow
def test_lora_run_trains_only_the_adapter(tmp_path):
    args = [*SMALL, "trainer.steps=1", "model.lora.enabled=true", "model.lora.r=4",
            "model.gradient_checkpointing=true", f"hydra.run.dir={tmp_path}"]
    assert main(["train", *args]) == 0
    from toolgym.trainers.checkpoint import find_latest

    latest = find_latest(tmp_path / "checkpoints")
    adapter = list((latest / "adapter").rglob("adapter_model.safetensors"))
    assert adapter, "a LoRA run checkpoints its adapter, not the full model"
    assert not (latest / "model.pt").exists()
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 1


class _CopyEngine:
    """A rollout engine with weights of its own (like vLLM) and a sleep mode; records what the loop asks of it."""

    enable_sleep_mode = True

    def __init__(self, policy: Any, tokenizer: Any):
        from toolgym.rollouts.engines.hf import HFEngine

        plain = copy.deepcopy(policy)
        plain = plain.merge_and_unload() if hasattr(plain, "peft_config") else plain
        tokenizer.padding_side = "left"
        self.inner, self.events, self.asleep = HFEngine(plain, tokenizer), [], False
        self.tokenizer, self.weights_version = tokenizer, 0

    async def generate(self, prompt_ids, params, chat=None):
        assert not self.asleep, "generated while asleep"
        self.events.append(("generate", self.weights_version))
        return await self.inner.generate(prompt_ids, params, chat)

    def sleep(self, level: int = 1) -> None:
        self.asleep = True
        self.events.append(("sleep", level))

    def wake_up(self) -> None:
        self.asleep = False
        self.events.append(("wake", None))

    def update_weights(self, named) -> None:
        assert not self.asleep, "weights sent to a sleeping engine"
        self.inner.update_weights(named)
        self.events.append(("sync", None))

    def close(self) -> None:
        self.inner.close()


def _steps_of(events: list[tuple[str, Any]]) -> list[list[str]]:
    """The event kinds between consecutive sleeps: one list per GRPO step."""
    starts = [i for i, (kind, _) in enumerate(events) if kind == "sleep"]
    return [[kind for kind, _ in events[a:b]] for a, b in zip(starts, [*starts[1:], len(events)], strict=True)]


@pytest.mark.slow
def test_colocated_loop_sleeps_for_the_update_and_syncs_the_weights(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from toolgym.trainers import loop
    from toolgym.trainers.config import register_configs

    register_configs()
    with initialize_config_module(config_module="toolgym.conf", version_base="1.3"):
        # Enough SFT that groups have mixed rewards (an all-equal group is skipped, nothing to sync).
        cfg = compose(config_name="train", overrides=[*SMALL, "trainer.steps=3", "trainer.sft.steps=800",
                                                      "trainer.sft.demonstrations=3000", "trainer.group_size=8",
                                                      "trainer.tasks_per_step=4"])
    cfg.run_dir = str(tmp_path)
    made: list[_CopyEngine] = []
    policy: dict[str, Any] = {}

    def make_engine(cfg: Any, model: Any, tokenizer: Any) -> _CopyEngine:
        policy["model"] = model
        made.append(_CopyEngine(model, tokenizer))
        return made[0]

    monkeypatch.setattr(loop, "make_engine", make_engine)
    loop.train(OmegaConf.to_object(cfg), tmp_path)
    engine = made[0]
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    skipped = [bool(r.get("skipped")) for r in rows if r["kind"] == "train"]
    assert len(skipped) == 3 and not all(skipped), "the test needs at least one update that moved the weights"
    # Per step: sleep for the update, wake, sync (unless the update was skipped), then the next rollouts.
    first = engine.events.index(("sleep", 1))
    assert [k for k, _ in engine.events[:first]].count("sync") == 1  # after the SFT warm start
    for kinds, was_skipped in zip(_steps_of(engine.events), skipped, strict=True):
        head = ["sleep", "wake"] + ([] if was_skipped else ["sync"])
        assert kinds[:len(head)] == head and set(kinds[len(head):]) == {"generate"}
    # Rollouts of step k (and the final eval, after step 3) ran on the weights of step k - 1.
    versions = [v for k, v in engine.events[first:] if k == "generate"]
    assert versions == sorted(versions) and set(versions) == {1, 2, 3}
    assert {v for k, v in engine.events[:first] if k == "generate"} == {0}  # before training, after SFT, step 1
    assert engine.weights_version == 3
    # The engine's own copy now holds the trained policy's weights (LoRA merging: tests/test_vllm_engine.py).
    trained = policy["model"].state_dict()
    served = engine.inner.model.state_dict()
    assert trained.keys() == served.keys()
    for name, tensor in trained.items():
        torch.testing.assert_close(served[name], tensor, rtol=0, atol=0, msg=name)
