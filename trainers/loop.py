"""The GRPO run, top to bottom: set up, evaluate, warm start, then generate -> update -> sync each step.

:func:`train` is the whole run a recipe describes::

    policy, engine  = load_policy(cfg.model), make_engine(cfg, policy)   # the engine shares or copies it
    before_grpo:      eval (held out) -> SFT on demonstrations -> eval
    for step in 1..N: one_step = collect groups (engine) -> advantages -> policy_update -> sync_weights
    after:            eval -> final/ checkpoint -> summary.json

The pieces each step uses (rollout collection, advantages, the update) are pure functions in
:mod:`toolgym.trainers.grpo`; the Hydra command line that calls :func:`train` is
:mod:`toolgym.trainers.app`. Everything a resumed run needs besides weights and optimizer is one
:class:`RunState`, saved in every checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

import toolgym
from toolgym.rollouts.metrics import success_threshold
from toolgym.rollouts.worker import RolloutWorker
from toolgym.trainers import grpo
from toolgym.trainers.checkpoint import find_latest, load_checkpoint, save_checkpoint
from toolgym.trainers.config import TrainConfig
from toolgym.trainers.curriculum import TaskSampler, make_sampler
from toolgym.trainers.model import load_policy, resolve_path
from toolgym.trainers.runlog import RunLog, plot_curve
from toolgym.trainers.sft import demonstration_samples, sft, trajectory_samples

console = Console()


@dataclass
class RunState:
    """What a checkpoint keeps besides weights, optimizer and scheduler.

    Phase times and the early evaluations live here, so a resumed run still reports the whole run.

    Example:
        >>> s = RunState.from_dict({"step": 3, "phase_s": {"sft": 1.5}, "unknown_key": 1})
        >>> s.step, s.phase_s, RunState.from_dict(s.to_dict()) == s
        (3, {'sft': 1.5}, True)
    """

    step: int = 0
    phase_s: dict[str, float] = field(default_factory=dict)
    step_phase_s: dict[str, float] = field(default_factory=dict)  # STEP_PHASES summed over GRPO steps
    eval_before: dict[str, float] = field(default_factory=dict)
    eval_after_sft: dict[str, float] = field(default_factory=dict)
    sft_final_loss: float | None = None
    curriculum: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunState:
        """From a checkpoint's saved state; keys this version does not know are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def add_time(self, phase: str, seconds: float) -> None:
        self.phase_s[phase] = round(self.phase_s.get(phase, 0.0) + seconds, 1)

    def add_step_phases(self, metrics: dict[str, float]) -> None:
        """Add one step's ``time/<phase>_s`` metrics to the run's totals.

        Kept unrounded (rounded in ``summary.json``): tool calls take milliseconds, and rounding each
        step's sum would drop them.
        """
        for phase in STEP_PHASES:
            self.step_phase_s[phase] = self.step_phase_s.get(phase, 0.0) + metrics.get(f"time/{phase}_s", 0.0)


# What each GRPO step's time goes to, logged per step as ``time/<phase>_s`` and summed in
# summary.json's ``step_phase_s``:
#   generation  the rollouts' wall time (engine calls, and the env steps that run between them)
#   tools       seconds inside tool calls, summed over the step's episodes; episodes run
#               concurrently, so this overlaps generation and can exceed it
#   scoring     advantages from the rewards (and, with the KL in the reward, the policy and
#               reference log-probs); the rubric's reward itself is computed inside env steps
#   update      the optimizer step(s), the scheduler and the weight sync to the engine
#   eval        held-out evaluation inside the step (``trainer.eval_every``), else 0
STEP_PHASES = ("generation", "tools", "scoring", "update", "eval")


# ---- set-up ----------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_engine(cfg: TrainConfig, model: Any, tokenizer: Any) -> Any:
    """The rollout engine, sharing weights with the policy where it can.

    An engine kind that can (``hf``) generates with the policy object itself. Any other (vLLM) serves the policy's
    checkpoint and gets the trainer's weights after every update (:func:`sync_weights`).
    """
    from toolgym.rollouts.engines import engine_kind

    kind = engine_kind(cfg.engine.kind)
    if kind.from_policy is not None:
        return kind.from_policy(cfg.engine, model, tokenizer)
    return kind.build(dataclasses.replace(cfg.engine, model=resolve_path(cfg.model, cfg.seed)))


def sync_weights(engine: Any, model: Any, version: int) -> None:
    """Make the engine generate with the policy's current weights, recorded as ``version``.

    ``version`` is the GRPO step that produced the weights (0: the initial or warm-started
    policy); trajectories carry it in ``versions["weights"]``, and a resumed run numbers them the
    same way.

    The ``hf`` engine shares the model object: it only bumps its weights version. Other engines
    get ``(name, tensor)`` pairs under the base model's parameter names; a LoRA policy is merged
    for the copy and unmerged again, so the trainer keeps training the adapter.
    """
    from toolgym.rollouts.engines.hf import HFEngine

    if isinstance(engine, HFEngine):
        engine.update_weights()
    else:
        engine.update_weights(list(policy_weights(model)))
    engine.weights_version = version


def policy_weights(model: Any) -> Any:
    """The policy's full weights as ``(name, tensor)`` pairs with the base model's names."""
    if not hasattr(model, "merge_adapter"):
        yield from ((n, p.detach()) for n, p in model.state_dict().items())
        return
    model.merge_adapter()
    try:
        for name, t in model.get_base_model().state_dict().items():
            if "lora_" in name:
                continue
            yield name.replace(".base_layer.", "."), t.detach().clone()
    finally:
        model.unmerge_adapter()


def make_workers(cfg: TrainConfig, engine: Any) -> tuple[RolloutWorker, RolloutWorker, Any, Any]:
    kwargs = cfg.env.env_kwargs()
    if "sandbox_config" in inspect.signature(toolgym.env_class(cfg.env.id)).parameters:
        kwargs.setdefault("sandbox_config", cfg.sandbox)

    def env_fn(split: str) -> Any:
        return toolgym.make(cfg.env.id, split=split, **kwargs).unwrapped

    train_env, eval_env = env_fn(cfg.env.train_split), env_fn(cfg.env.eval_split)
    train = RolloutWorker(engine, lambda: env_fn(cfg.env.train_split), cfg.rollout, env_id=cfg.env.id)
    held_out = RolloutWorker(engine, lambda: env_fn(cfg.env.eval_split), cfg.eval_rollout, env_id=cfg.env.id)
    return train, held_out, train_env, eval_env


# ---- the run ---------------------------------------------------------------------------------
def warm_start(cfg: TrainConfig, model: Any, engine: Any, train_env: Any, pad_id: int) -> list[float]:
    from toolgym.rollouts.records import read_trajectories
    from toolgym.rollouts.tokens import ChatFormat

    scfg = cfg.trainer.sft
    if scfg.steps <= 0:
        return []
    if scfg.jsonl:
        samples = trajectory_samples(read_trajectories(scfg.jsonl))
    else:
        fmt = ChatFormat(engine.tokenizer, [t.schema for t in train_env.tools.values()],
                         chat_template=cfg.rollout.chat_template)
        samples = demonstration_samples(train_env, scfg.demonstrations, fmt)
    every = max(1, scfg.steps // 5)

    def show(step: int, loss: float) -> None:
        if step % every == 0 or step == scfg.steps - 1:
            console.print(f"sft step {step:4d}  loss {loss:.4f}")

    return sft(model, samples, scfg, pad_id=pad_id, seed=cfg.seed, log=show)


def evaluate(cfg: TrainConfig, model: Any, held_out: RolloutWorker, eval_env: Any) -> dict[str, float]:
    model.eval()
    return grpo.evaluate(held_out, len(eval_env.tasks), cfg.trainer.eval_episodes, success_threshold(eval_env))


def train(cfg: TrainConfig, run_dir: Path) -> dict[str, Any]:
    """Run a recipe; returns (and writes) the summary."""
    started = time.perf_counter()
    tcfg = cfg.trainer
    seed_everything(cfg.seed)
    if not torch.cuda.is_available() or cfg.model.device == "cpu":
        # Deliberate: more OpenMP threads than free cores made HF decode steps ~3x slower here.
        grpo.configure_cpu_threads(cfg.cpu_threads)
    model, tokenizer = load_policy(cfg.model, seed=cfg.seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    engine = make_engine(cfg, model, tokenizer)
    worker, held_out, train_env, eval_env = make_workers(cfg, engine)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tcfg.lr,
                                  weight_decay=tcfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, grpo.learning_rate_lambda(tcfg))
    run_log = RunLog(run_dir, cfg.tensorboard)
    latest = find_latest(run_dir / "checkpoints") if cfg.resume else None
    if latest is not None:
        loaded = load_checkpoint(latest, model, optimizer, scheduler)
        state = RunState.from_dict(loaded.data_state)
        console.print(f"resumed from {latest.name} (step {state.step})")
        sync_weights(engine, model, state.step)
    else:
        state = RunState(phase_s={"setup": round(time.perf_counter() - started, 1)})
        before_grpo(cfg, run_dir, run_log, model, engine, held_out, train_env, eval_env, pad_id, state)
        save_checkpoint(run_dir / "checkpoints", 0, model, optimizer, scheduler, data_state=state.to_dict(),
                        keep_last=tcfg.keep_checkpoints)
    ref_model = reference_model(model, run_dir, resumed=latest is not None) if tcfg.loss.beta > 0 else None
    sampler = make_sampler(tcfg.curriculum, train_env.tasks, success_threshold(train_env))
    sampler.load_state_dict(state.curriculum)
    for step in range(state.step + 1, tcfg.steps + 1):
        t0 = time.perf_counter()
        state.step = step
        metrics = one_step(cfg, step, model, optimizer, scheduler, engine, worker, sampler, pad_id, ref_model,
                           success_threshold(train_env))
        state.curriculum = sampler.state_dict()
        held_out_eval, eval_s = None, 0.0
        if tcfg.eval_every and step % tcfg.eval_every == 0 and step != tcfg.steps:
            held_out_eval, eval_s = grpo.timed(lambda: evaluate(cfg, model, held_out, eval_env))
        metrics["time/eval_s"] = eval_s
        state.add_step_phases(metrics)
        run_log.write("train", step, metrics)
        console.print(step_line(step, metrics))
        if held_out_eval is not None:
            run_log.write("eval", step, held_out_eval)
        state.add_time("grpo", time.perf_counter() - t0)
        if (tcfg.checkpoint_every and step % tcfg.checkpoint_every == 0) or step == tcfg.steps:  # 0: at the end only
            save_checkpoint(run_dir / "checkpoints", step, model, optimizer, scheduler, data_state=state.to_dict(),
                            keep_last=tcfg.keep_checkpoints)
    t0 = time.perf_counter()
    after = evaluate(cfg, model, held_out, eval_env)
    state.add_time("eval_after", time.perf_counter() - t0)
    console.print(f"held-out reward after GRPO: {after['reward']:.3f}  pass rate {after['pass_rate']:.3f}")
    run_log.write("eval", tcfg.steps, after)
    # An ordinary Hugging Face checkpoint (or LoRA adapter) that eval, vLLM or transformers load.
    model.save_pretrained(run_dir / "final")
    tokenizer.save_pretrained(run_dir / "final")
    run_log.close()
    engine.close()
    summary = run_summary(cfg, state, after, latest is not None, run_dir, time.perf_counter() - started)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_curve(run_dir)
    return summary


def step_line(step: int, metrics: dict[str, float]) -> str:
    """The console line of one GRPO step: reward, pass rate, KL, clipping, throughput and phase times."""
    phases = "  ".join(f"{phase} {metrics.get(f'time/{phase}_s', 0.0):.2f}s" for phase in STEP_PHASES)
    return (f"step {step:3d}  reward {metrics['reward_mean']:.3f}±{metrics['reward_std']:.3f}  "
            f"pass {metrics['pass_rate']:.2f}  kl {metrics.get('kl', 0.0):.4f}  "
            f"clip {metrics.get('clip_ratio/region_mean', 0.0):.3f}  tok/s {metrics['tokens_per_s']:.0f}  {phases}")


def tool_seconds(groups: list[list[Any]]) -> float:
    """Seconds the step's tool calls took, from the worker's per-call ``elapsed_s`` on each turn.

    Each segment of a split episode holds its own turns, so no call is counted twice (the
    episode-level ``timings.env_s`` is repeated on every segment, and also includes the rubric).
    """
    return sum(r.elapsed_s for g in groups for t in g for turn in t.turns for r in turn.tool_results)


def before_grpo(cfg: TrainConfig, run_dir: Path, run_log: RunLog, model: Any, engine: Any, held_out: RolloutWorker,
                train_env: Any, eval_env: Any, pad_id: int, state: RunState) -> None:
    """A fresh run's first phases, each timed into ``state.phase_s``: eval, SFT warm start, eval again."""
    if (run_dir / "checkpoints").exists():
        shutil.rmtree(run_dir / "checkpoints")
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    t0 = time.perf_counter()
    state.eval_before = evaluate(cfg, model, held_out, eval_env)
    state.add_time("eval_before", time.perf_counter() - t0)
    console.print(f"held-out reward before training: {state.eval_before['reward']:.3f}  "
                  f"pass rate {state.eval_before['pass_rate']:.3f}")
    run_log.write("eval", 0, {**state.eval_before, "phase_before": 1.0})
    t0 = time.perf_counter()
    sft_losses = warm_start(cfg, model, engine, train_env, pad_id)
    state.sft_final_loss = sft_losses[-1] if sft_losses else None
    if not sft_losses:
        return
    sync_weights(engine, model, 0)
    state.add_time("sft", time.perf_counter() - t0)
    t0 = time.perf_counter()
    state.eval_after_sft = evaluate(cfg, model, held_out, eval_env)
    state.add_time("eval_after_sft", time.perf_counter() - t0)
    console.print(f"held-out reward after SFT warm start: {state.eval_after_sft['reward']:.3f}  "
                  f"pass rate {state.eval_after_sft['pass_rate']:.3f}")
    run_log.write("eval", 0, state.eval_after_sft)


def run_summary(cfg: TrainConfig, state: RunState, after: dict[str, float], resumed: bool, run_dir: Path,
                wall_s: float) -> dict[str, Any]:
    """``summary.json``: held-out reward and pass rate before training, after SFT and after GRPO, with phase times.

    ``phase_s`` splits the run's wall time (setup, evaluations, SFT, the GRPO steps); ``step_phase_s``
    splits the GRPO steps' time by :data:`STEP_PHASES`, summed over steps (of a resumed run too).
    """
    sft_eval = state.eval_after_sft
    return {"recipe": cfg.recipe, "env": cfg.env.id, "model": cfg.model.name_or_path, "seed": cfg.seed,
            "loss": cfg.trainer.loss.loss_type, "steps": cfg.trainer.steps,
            "eval_reward_before": state.eval_before["reward"],
            "eval_pass_rate_before": state.eval_before["pass_rate"],
            "eval_reward_after_sft": sft_eval.get("reward"), "eval_pass_rate_after_sft": sft_eval.get("pass_rate"),
            "eval_reward_after": after["reward"], "eval_pass_rate_after": after["pass_rate"],
            "eval_episodes": cfg.trainer.eval_episodes, "eval_temperature": cfg.eval_rollout.temperature,
            "sft_final_loss": state.sft_final_loss, "phase_s": state.phase_s,
            "step_phase_s": {phase: round(state.step_phase_s.get(phase, 0.0), 3) for phase in STEP_PHASES},
            "wall_s": round(wall_s, 1), "resumed": resumed, "final_model": str(run_dir / "final"),
            "toolgym_version": toolgym.__version__}


def reference_model(model: Any, run_dir: Path, resumed: bool) -> Any:
    """A frozen copy of the policy as GRPO starts (after the warm start), for the KL term.

    Its weights are kept in ``reference.pt`` so a resumed run uses the same reference.
    """
    ref = copy.deepcopy(model).eval()
    path = run_dir / "reference.pt"
    if resumed and path.exists():
        ref.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        torch.save(ref.state_dict(), path)
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def one_step(cfg: TrainConfig, step: int, model: Any, optimizer: Any, scheduler: Any, engine: Any,
             worker: RolloutWorker, sampler: TaskSampler, pad_id: int, ref_model: Any = None,
             threshold: float = 1.0) -> dict[str, float]:
    """Rollouts, advantages and one update; seeded by (seed, step) so a resumed run repeats it.

    ``threshold`` is the reward that counts as solved in the step's pass rate (the env's top reward).
    The metrics include the step's ``time/<phase>_s`` for each of :data:`STEP_PHASES` but ``eval``
    (the caller times the held-out evaluation).
    """
    tcfg = cfg.trainer
    rng = random.Random(cfg.seed * 1_000_003 + step)
    torch.manual_seed(cfg.seed * 1_000_003 + step)
    worker.config = dataclasses.replace(cfg.rollout, sampling_seed=cfg.seed * 1_000_003 + step)
    model.eval()
    (groups, sample_stats), generate_s = grpo.timed(lambda: grpo.collect(worker, tcfg, sampler, rng))
    batch, scoring_s = grpo.timed(lambda: grpo.build_batch(groups, tcfg, pad_id, model=model, ref_model=ref_model,
                                                           temperature=cfg.rollout.temperature))
    update_started = time.perf_counter()
    # One device for both: a sleeping engine hands its KV cache and weights' memory to the update.
    sleeps = bool(getattr(engine, "enable_sleep_mode", False))
    if sleeps:
        engine.sleep(1)
    update, train_s = grpo.timed(lambda: grpo.policy_update(model, optimizer, batch, tcfg, cfg.rollout.temperature,
                                                            ref_model))
    scheduler.step()
    if sleeps:
        engine.wake_up()
    if update.get("skipped"):  # the weights did not move: the engine keeps them, under the new version
        engine.weights_version = step
    else:
        sync_weights(engine, model, step)
    # generate_s / train_s stay as they were (older runs and tools read them); time/* are the phases
    timing = {"generate_s": generate_s, "train_s": train_s, "time/generation_s": generate_s,
              "time/tools_s": tool_seconds(groups), "time/scoring_s": scoring_s,
              "time/update_s": time.perf_counter() - update_started}
    return grpo.step_metrics(groups, {**update, **sample_stats}, timing, threshold)
