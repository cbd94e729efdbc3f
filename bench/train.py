"""One GRPO update step: toolgym's trainer against TRL's ``GRPOTrainer``, same model, same batch.

    python bench/train.py --json                  # the tiny random model
    python bench/train.py --model smollm2 --json  # SmolLM2-135M-Instruct (49k vocabulary, 30 layers)

What is timed: the training step of each trainer on the very same batch of multi-turn tool-use
episodes, generated once up front (tasks x group of ``toolgym/Arithmetic-v0`` episodes: a tool call,
the calculator's reply, an answer; half the answers wrong, so rewards differ within each group).
Both sides train the same model (two copies with identical initial weights; ``--model``: the tiny
random model, ``smollm2`` or a local checkpoint, in float32) with the same
loss (``dapo``, clip 0.2, no KL, no sampler importance correction: TRL without vLLM has none),
group-normalised advantages, AdamW, gradient clipping at 1.0, and the whole batch in one
micro-batch.

* ours: ``build_batch`` (advantages, padding) plus :func:`toolgym.trainers.grpo.policy_update`
  (log-probabilities, loss, backward, optimizer step);
* TRL: one ``GRPOTrainer`` optimizer step, from ``on_step_begin`` to ``on_step_end``, fed the same
  episodes through a ``rollout_func`` that replays them (prompt ids, completion ids and
  ``env_mask``, as toolgym's TRL adapter returns them), so its step is rewards, advantages,
  padding, forward, loss, backward, optimizer step and its own bookkeeping.

Why not generation too: the two trainers sample through different backends (TRL's batched
``generate`` vs. toolgym's rollout worker), and a random tiny model's episode lengths vary from
run to run, so a full-step timing would mostly compare samplers and luck; the rollout side has its
own benchmark (bench/rollout.py). Replaying identical tokens isolates the trainer.

The two sides alternate step by step in one process (ours runs inside TRL's ``on_step_end``), so
machine load drifts hit both alike; each side reports the median of ``--repeats`` steps after
``--warmup`` discarded ones. ``step_time_ratio_vs_trl`` is ours / TRL (below 1: ours is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from collections import Counter, defaultdict
from typing import Any

import torch

import toolgym
from toolgym.rollouts.engines.base import ChatPrompt
from toolgym.rollouts.engines.fake import ScriptedEngine
from toolgym.rollouts.records import Trajectory
from toolgym.rollouts.tiny import tiny_model_path
from toolgym.rollouts.worker import RolloutConfig, RolloutRequest, RolloutWorker
from toolgym.trainers import grpo
from toolgym.trainers.losses import LossConfig
from toolgym.trainers.trl_adapter import toolgym_dataset, toolgym_reward, trajectory_outputs

ENV_ID = "toolgym/Arithmetic-v0"
ENV_KWARGS = {"difficulty": 1}
LR = 1e-4


class Oracle:
    """Calls the calculator on the task's expression, then answers; every second answer is wrong."""

    def __init__(self, tokenizer: Any, think_words: int):
        self.tokenizer = tokenizer
        self.thought = " ".join(["the answer needs the calculator"] * max(think_words // 5, 0))
        self.seen: Counter[str] = Counter()

    def __call__(self, prompt_ids: list[int], chat: ChatPrompt | None, index: int) -> str:
        assert chat is not None
        last = chat.messages[-1]
        if last["role"] == "tool":
            key = self.tokenizer.decode(prompt_ids)
            self.seen[key] += 1
            return f"{self.thought}\nAnswer: {last['content'] if self.seen[key] % 2 else '100000'}"
        expression = re.findall(r"Compute (.+?)\.", last["content"])[-1]
        call = json.dumps({"name": "calculator", "arguments": {"expression": expression}})
        return f"{self.thought}\n<tool_call>\n{call}\n</tool_call>"


def pregenerate(tokenizer: Any, tasks: list[str], group_size: int, think_words: int) -> list[Trajectory]:
    """The benchmark batch: ``group_size`` episodes of each task, token-exact, from the rollout worker."""
    engine = ScriptedEngine(tokenizer, Oracle(tokenizer, think_words))
    worker = RolloutWorker(engine, lambda: toolgym.make(ENV_ID, **ENV_KWARGS).unwrapped, RolloutConfig(max_new_tokens=512))
    requests = [RolloutRequest({"task_id": t}, group_size=group_size, group_id=t) for t in tasks]
    trajectories = worker.run_sync(requests)
    worker.close()
    if any(t.error is not None for t in trajectories):
        raise RuntimeError(f"pre-generation failed: {next(t.error for t in trajectories if t.error)}")
    return trajectories


class Replay:
    """A TRL ``rollout_func`` that returns the stored episodes of the prompts it is asked for."""

    def __init__(self, trajectories: list[Trajectory], dataset: Any, end_id: int):
        by_task: dict[str, list[Trajectory]] = defaultdict(list)
        for t in trajectories:
            by_task[t.task_id].append(t)
        self.by_prompt = {json.dumps(p, sort_keys=True): by_task[tid]
                          for p, tid in zip(dataset["prompt"], dataset["task_id"], strict=True)}
        self.end_id = end_id

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, list[Any]]:
        used: Counter[str] = Counter()
        picked = []
        for p in prompts:  # TRL repeats each prompt group_size times: hand out the group's episodes in turn
            key = json.dumps(p, sort_keys=True)
            group = self.by_prompt[key]
            picked.append(group[used[key] % len(group)])
            used[key] += 1
        return trajectory_outputs(picked, self.end_id)


def ours_config(batch_size: int, group_size: int) -> grpo.TrainerConfig:
    return grpo.TrainerConfig(tasks_per_step=batch_size // group_size, group_size=group_size, lr=LR,
                              micro_batch_size=batch_size, advantage="grpo", grad_clip=1.0,
                              loss=LossConfig(loss_type="dapo", epsilon_low=0.2, beta=0.0, sampler_is_mode=None))


def trl_trainer(model: Any, tokenizer: Any, dataset: Any, replay: Replay, steps: int, batch_size: int,
                group_size: int, out_dir: str, callback: Any) -> Any:
    from transformers import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(output_dir=out_dir, per_device_train_batch_size=batch_size, num_generations=group_size,
                      max_steps=steps, learning_rate=LR, lr_scheduler_type="constant", weight_decay=0.0,
                      max_grad_norm=1.0, loss_type="dapo", epsilon=0.2, beta=0.0, scale_rewards="group",
                      optim="adamw_torch", logging_steps=1, report_to="none", save_strategy="no",
                      use_cpu=True, disable_tqdm=True, seed=0,
                      # GRPOConfig defaults to bf16 autocast and gradient checkpointing; ours trains in
                      # float32 without checkpointing, so both are off here (on a CPU they made TRL's step ~6x slower)
                      bf16=False, gradient_checkpointing=False)
    trainer = GRPOTrainer(model=model, reward_funcs=[toolgym_reward], args=args, train_dataset=dataset,
                          processing_class=tokenizer, rollout_func=replay, callbacks=[callback])
    trainer.remove_callback(PrinterCallback)  # keep stdout for the result
    return trainer


def make_interleaver(ours_step: Any) -> Any:
    from transformers import TrainerCallback

    class Interleave(TrainerCallback):
        """Times each TRL step, then runs (and times) one of ours before TRL's next step begins."""

        def __init__(self) -> None:
            self.trl: list[float] = []
            self.ours: list[float] = []
            self._t0 = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._t0 = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.trl.append(time.perf_counter() - self._t0)
            t0 = time.perf_counter()
            ours_step()
            self.ours.append(time.perf_counter() - t0)

    return Interleave()


def model_path(args: argparse.Namespace) -> str:
    """A local checkpoint for ``--model``: the tiny model of ``--size``, or any name the engines resolve."""
    if args.model == "tiny":
        return str(tiny_model_path(size=args.size))
    from toolgym.rollouts.engines import resolve_model

    return resolve_model(args.model)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    torch.manual_seed(0)
    path = model_path(args)
    tokenizer = AutoTokenizer.from_pretrained(path)
    dataset = toolgym_dataset(ENV_ID, "train", args.tasks, env_kwargs=ENV_KWARGS)
    trajectories = pregenerate(tokenizer, list(dataset["task_id"]), args.group_size, args.think_words)
    batch_size = len(trajectories)

    ours_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    trl_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    cfg = ours_config(batch_size, args.group_size)
    optimizer = torch.optim.AdamW(ours_model.parameters(), lr=LR, weight_decay=0.0)
    groups = grpo.grouped(trajectories)
    pad_id = tokenizer.pad_token_id

    ours_losses: list[float] = []

    def ours_step() -> None:
        batch = grpo.build_batch(groups, cfg, pad_id)
        ours_losses.append(grpo.policy_update(ours_model, optimizer, batch, cfg, temperature=1.0)["loss"])

    timer = make_interleaver(ours_step)
    replay = Replay(trajectories, dataset, tokenizer.eos_token_id)
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = trl_trainer(trl_model, tokenizer, dataset, replay, args.warmup + args.repeats, batch_size,
                              args.group_size, out_dir, timer)
        trainer.train()
        trl_losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    ours = timer.ours[args.warmup:]
    trl = timer.trl[args.warmup:]
    ours_s, trl_s = statistics.median(ours), statistics.median(trl)
    return {"step_time_ratio_vs_trl": ours_s / trl_s, "ours_step_s": ours_s, "trl_step_s": trl_s,
            "batch_size": batch_size, "tasks": args.tasks, "group_size": args.group_size,
            "tokens": sum(len(t.token_ids) for t in trajectories),
            "trainable_tokens": sum(sum(t.loss_mask) for t in trajectories),
            "max_sequence_tokens": max(len(t.token_ids) for t in trajectories),
            "loss_type": "dapo", "model": args.size if args.model == "tiny" else args.model, "repeats": args.repeats, "warmup": args.warmup,
            "torch_threads": torch.get_num_threads(),
            # Same weights, same batch, same loss: the first step's losses agree if both did the same work.
            "first_step_loss": {"ours": ours_losses[0], "trl": trl_losses[0]},
            "ours_step_s_all": [round(x, 4) for x in ours], "trl_step_s_all": [round(x, 4) for x in trl]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--tasks", type=int, default=8, help="distinct tasks in the batch")
    ap.add_argument("--group-size", type=int, default=4, help="episodes per task (G)")
    ap.add_argument("--think-words", type=int, default=40, help="words of text before each tool call and answer")
    ap.add_argument("--model", default="tiny", help="tiny, smollm2 or a local checkpoint directory")
    ap.add_argument("--size", default="tiny", help="tiny model size with --model tiny (tiny, mini, small)")
    ap.add_argument("--repeats", type=int, default=8, help="timed steps per side")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per side")
    args = ap.parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"ours {result['ours_step_s'] * 1e3:.1f} ms/step, TRL {result['trl_step_s'] * 1e3:.1f} ms/step, "
              f"ratio {result['step_time_ratio_vs_trl']:.3f} (batch {result['batch_size']} episodes, "
              f"{result['tokens']} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
