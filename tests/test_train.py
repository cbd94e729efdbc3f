"""``toolgym train`` end to end on the tiny model: a short run, its artefacts, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
    assert json.loads((killed / "summary.json").read_text())["resumed"] is True
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
