"""``toolgym train``: the Hydra application that runs a recipe end to end.

    toolgym train                                   # the default recipe (tiny model, CPU, minutes)
    toolgym train trainer.steps=40 seed=1           # override anything
    toolgym train -m trainer.loss.loss_type=grpo,dapo seed=0,1   # a sweep (multirun)
    toolgym train resume=true                       # continue the last run of this run_dir

A run directory holds the resolved config (``.hydra/``), ``metrics.jsonl``, TensorBoard events,
``reward_curve.png``, ``checkpoints/`` and ``summary.json`` (held-out reward before and after).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import logging
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from rich.console import Console

import toolgym
from toolgym.rollouts.engines.base import EngineConfig
from toolgym.rollouts.worker import RolloutConfig, RolloutWorker
from toolgym.sandboxes.config import SandboxConfig
from toolgym.trainers import grpo
from toolgym.trainers.checkpoint import find_latest, load_checkpoint, save_checkpoint
from toolgym.trainers.curriculum import TaskSampler, make_sampler
from toolgym.trainers.model import ModelConfig, load_policy, resolve_path
from toolgym.trainers.sft import demonstration_samples, sft, trajectory_samples

log = logging.getLogger("toolgym.train")
console = Console()


@dataclass
class EnvConfig:
    """Which environment to train on, its constructor arguments, and its splits."""

    id: str = "toolgym/Arithmetic-v0"
    kwargs: dict[str, Any] = field(default_factory=dict)
    train_split: str = "train"
    eval_split: str = "eval"


@dataclass
class TrainConfig:
    """Everything ``toolgym train`` needs; YAML under conf/ fills it in."""

    recipe: str = "custom"
    seed: int = 0
    run_dir: str = "runs/custom"
    resume: bool = False
    env: EnvConfig = field(default_factory=EnvConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    eval_rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(temperature=0.0))
    trainer: grpo.TrainerConfig = field(default_factory=grpo.TrainerConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)  # used by envs that run code
    tensorboard: bool = True
    cpu_threads: int | None = None  # torch threads on a CPU (None: the physical cores this process may use)


def register_configs() -> None:
    """Put the schema in Hydra's ConfigStore; YAML files extend ``train_schema``."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)


# ---- set-up ----------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_engine(cfg: TrainConfig, model: Any, tokenizer: Any) -> Any:
    """The rollout engine, sharing weights with the policy where it can.

    ``hf`` generates with the policy object itself. Any other engine (vLLM) serves the policy's
    checkpoint and gets the trainer's weights after every update (:func:`sync_weights`).
    """
    if cfg.engine.kind == "hf":
        from toolgym.rollouts.engines.hf import HFEngine

        tokenizer.padding_side = "left"
        return HFEngine(model, tokenizer, max_batch_size=cfg.engine.max_batch_size)
    from toolgym.rollouts.engines import make_engine as build

    return build(dataclasses.replace(cfg.engine, model=resolve_path(cfg.model, cfg.seed)))


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
    kwargs = dict(cfg.env.kwargs)
    if "sandbox_config" in inspect.signature(toolgym.env_class(cfg.env.id)).parameters:
        kwargs.setdefault("sandbox_config", cfg.sandbox)

    def env_fn(split: str) -> Any:
        return toolgym.make(cfg.env.id, split=split, **kwargs).unwrapped

    train_env, eval_env = env_fn(cfg.env.train_split), env_fn(cfg.env.eval_split)
    train = RolloutWorker(engine, lambda: env_fn(cfg.env.train_split), cfg.rollout, env_id=cfg.env.id)
    held_out = RolloutWorker(engine, lambda: env_fn(cfg.env.eval_split), cfg.eval_rollout, env_id=cfg.env.id)
    return train, held_out, train_env, eval_env


class RunLog:
    """metrics.jsonl, TensorBoard and the console line, in one place."""

    def __init__(self, run_dir: Path, tensorboard: bool):
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except Exception as exc:  # TensorBoard missing or broken: keep training
                log.warning("TensorBoard disabled: %s", exc)

    def write(self, kind: str, step: int, metrics: dict[str, float]) -> None:
        grpo.write_jsonl(self.path, {"kind": kind, "step": step, **metrics})
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(f"{kind}/{k}", v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_curve(run_dir: Path) -> Path | None:
    """reward_curve.png from metrics.jsonl: train reward per step and held-out evaluations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [(r["step"], r["reward_mean"]) for r in rows if r["kind"] == "train"]
    evals = [(r["step"], r["reward"]) for r in rows if r["kind"] == "eval"]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if train:
        ax.plot(*zip(*train, strict=True), label="train reward (sampled)")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="held-out reward (greedy)")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("reward")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = run_dir / "reward_curve.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


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
    return grpo.evaluate(held_out, len(eval_env.tasks), cfg.trainer.eval_episodes)


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
        state = dict(loaded.data_state)
        console.print(f"resumed from {latest.name} (step {state['step']})")
        sync_weights(engine, model, state["step"])
    else:
        state = {"step": 0, "phase_s": {"setup": round(time.perf_counter() - started, 1)}}
        before_grpo(cfg, run_dir, run_log, model, engine, held_out, train_env, eval_env, pad_id, state)
        save_checkpoint(run_dir / "checkpoints", 0, model, optimizer, scheduler, data_state=state,
                        keep_last=tcfg.keep_checkpoints)
    phases = state.setdefault("phase_s", {})
    ref_model = reference_model(model, run_dir, resumed=latest is not None) if tcfg.loss.beta > 0 else None
    sampler = make_sampler(tcfg.curriculum, train_env.tasks)
    sampler.load_state_dict(state.get("curriculum", {}))
    for step in range(state["step"] + 1, tcfg.steps + 1):
        t0 = time.perf_counter()
        state["step"] = step
        metrics = one_step(cfg, step, model, optimizer, scheduler, engine, worker, sampler, pad_id, ref_model)
        state["curriculum"] = sampler.state_dict()
        run_log.write("train", step, metrics)
        console.print(f"step {step:3d}  reward {metrics['reward_mean']:.3f}±{metrics['reward_std']:.3f}  "
                      f"pass {metrics['pass_rate']:.2f}  kl {metrics.get('kl', 0.0):.4f}  "
                      f"clip {metrics.get('clip_ratio/region_mean', 0.0):.3f}  "
                      f"tok/s {metrics['tokens_per_s']:.0f}  gen {metrics['generate_s']:.1f}s "
                      f"train {metrics['train_s']:.1f}s")
        if tcfg.eval_every and step % tcfg.eval_every == 0 and step != tcfg.steps:
            run_log.write("eval", step, evaluate(cfg, model, held_out, eval_env))
        # Phase times live in the checkpointed state, so a resumed run still reports the whole run's.
        phases["grpo"] = round(phases.get("grpo", 0.0) + time.perf_counter() - t0, 1)
        if step % tcfg.checkpoint_every == 0 or step == tcfg.steps:
            save_checkpoint(run_dir / "checkpoints", step, model, optimizer, scheduler, data_state=state,
                            keep_last=tcfg.keep_checkpoints)
    t0 = time.perf_counter()
    after = evaluate(cfg, model, held_out, eval_env)
    phases["eval_after"] = round(time.perf_counter() - t0, 1)
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


def before_grpo(cfg: TrainConfig, run_dir: Path, run_log: RunLog, model: Any, engine: Any, held_out: RolloutWorker,
                train_env: Any, eval_env: Any, pad_id: int, state: dict[str, Any]) -> None:
    """A fresh run's first phases, each timed into ``state["phase_s"]``: eval, SFT warm start, eval again."""
    phases = state["phase_s"]
    if (run_dir / "checkpoints").exists():
        shutil.rmtree(run_dir / "checkpoints")
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    t0 = time.perf_counter()
    state["eval_before"] = evaluate(cfg, model, held_out, eval_env)
    phases["eval_before"] = round(time.perf_counter() - t0, 1)
    console.print(f"held-out reward before training: {state['eval_before']['reward']:.3f}  "
                  f"pass rate {state['eval_before']['pass_rate']:.3f}")
    run_log.write("eval", 0, {**state["eval_before"], "phase_before": 1.0})
    t0 = time.perf_counter()
    sft_losses = warm_start(cfg, model, engine, train_env, pad_id)
    state["sft_final_loss"] = sft_losses[-1] if sft_losses else None
    if not sft_losses:
        return
    sync_weights(engine, model, 0)
    phases["sft"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    state["eval_after_sft"] = evaluate(cfg, model, held_out, eval_env)
    phases["eval_after_sft"] = round(time.perf_counter() - t0, 1)
    console.print(f"held-out reward after SFT warm start: {state['eval_after_sft']['reward']:.3f}  "
                  f"pass rate {state['eval_after_sft']['pass_rate']:.3f}")
    run_log.write("eval", 0, state["eval_after_sft"])


def run_summary(cfg: TrainConfig, state: dict[str, Any], after: dict[str, float], resumed: bool, run_dir: Path,
                wall_s: float) -> dict[str, Any]:
    """``summary.json``: held-out reward and pass rate before training, after SFT and after GRPO, with phase times."""
    sft_eval = state.get("eval_after_sft", {})
    return {"recipe": cfg.recipe, "env": cfg.env.id, "model": cfg.model.name_or_path, "seed": cfg.seed,
            "loss": cfg.trainer.loss.loss_type, "steps": cfg.trainer.steps,
            "eval_reward_before": state["eval_before"]["reward"],
            "eval_pass_rate_before": state["eval_before"]["pass_rate"],
            "eval_reward_after_sft": sft_eval.get("reward"), "eval_pass_rate_after_sft": sft_eval.get("pass_rate"),
            "eval_reward_after": after["reward"], "eval_pass_rate_after": after["pass_rate"],
            "eval_episodes": cfg.trainer.eval_episodes, "eval_temperature": cfg.eval_rollout.temperature,
            "sft_final_loss": state.get("sft_final_loss"), "phase_s": state.get("phase_s", {}),
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
             worker: RolloutWorker, sampler: TaskSampler, pad_id: int, ref_model: Any = None) -> dict[str, float]:
    """Rollouts, advantages and one update; seeded by (seed, step) so a resumed run repeats it."""
    tcfg = cfg.trainer
    rng = random.Random(cfg.seed * 1_000_003 + step)
    torch.manual_seed(cfg.seed * 1_000_003 + step)
    worker.config = dataclasses.replace(cfg.rollout, sampling_seed=cfg.seed * 1_000_003 + step)
    model.eval()
    (groups, sample_stats), generate_s = grpo.timed(lambda: grpo.collect(worker, tcfg, sampler, rng))
    batch = grpo.build_batch(groups, tcfg, pad_id)
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
    return grpo.step_metrics(groups, {**update, **sample_stats}, {"generate_s": generate_s, "train_s": train_s})


def _hydra_main(cfg: Any) -> float:
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    typed: TrainConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    summary = train(typed, run_dir)
    console.print_json(json.dumps(summary))
    console.print(f"run directory: {run_dir}")
    return float(summary["eval_reward_after"])  # the objective sweepers (Optuna) maximise


def main(argv: list[str]) -> int:
    """Entry point for ``toolgym train ARGS``: hands the arguments to Hydra."""
    import hydra

    register_configs()
    app = hydra.main(config_path="pkg://toolgym.conf", config_name="train", version_base="1.3")(_hydra_main)
    saved = sys.argv
    sys.argv = ["toolgym train", *argv]
    try:
        app()
    finally:
        sys.argv = saved
    return 0
