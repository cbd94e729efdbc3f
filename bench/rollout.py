"""Rollout throughput: worker overhead and the gain over a lock-step tool loop.

    python bench/rollout.py --json                                 # hf engine, the tiny model
    python bench/rollout.py --engine vllm --model smollm2 --json   # vLLM (the CPU build works too)

(a) ``overhead_ratio``: sampled tokens/s through the :class:`RolloutWorker` (multi-turn episodes
    whose tool answers instantly) divided by tokens/s of the bare engine generating the very same
    prompts, turn by turn, as whole batches. 1.0 means the worker adds no cost.
(b) ``vs_lockstep``: trajectories/s of the worker with 100 ms tools divided by a lock-step loop
    that generates for the whole batch, then runs every episode's tools one episode after another
    (the tool loop of TRL's GRPO trainer), then generates again. ``vs_lockstep_concurrent_tools``
    is the same against a lock-step loop that at least runs the tools of all episodes
    concurrently.

Every ratio compares two measurements taken in the same run on the same machine, from
``--repeats`` interleaved runs of each side; the ratio uses each side's best run (the least
disturbed by other load on a shared machine), and ``*_median`` keys give the medians too. Completions ignore the end-of-turn token so both
sides sample exactly the same number of tokens.

With ``--engine vllm`` the bare engine is ``AsyncLLM`` itself: each turn's prompts go to
``AsyncLLM.generate`` concurrently with the same vLLM sampling parameters, skipping toolgym
entirely. vLLM's prefix cache is emptied before every timed run of either side, so neither
replays KV the other computed. Defaults shrink for vLLM (fewer episodes and tokens) so a run on
two CPU cores takes a few minutes; on a CPU, generation dwarfs 100 ms tools and ``vs_lockstep``
is bounded accordingly (the lock-step loop loses only the tools' serial time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

import torch
from toolgym_arithmetic import ArithmeticTasks

from toolgym.envs.base import ToolEnv
from toolgym.envs.parsing import ToolCall
from toolgym.envs.tools import tool
from toolgym.rollouts.engines import EngineConfig, make_engine
from toolgym.rollouts.engines.base import SamplingParams
from toolgym.rollouts.engines.hf import HFEngine
from toolgym.rollouts.records import Trajectory
from toolgym.rollouts.tokens import ChatFormat, TokenTrajectory
from toolgym.rollouts.worker import RolloutConfig, RolloutRequest, RolloutWorker


def make_env_class(latency_s: float, turns: int) -> type[ToolEnv]:
    """Arithmetic prompts; every turn but the last calls a tool that takes ``latency_s``."""

    @tool(timeout=30)
    async def wait() -> str:
        """Wait for the service."""
        if latency_s:
            await asyncio.sleep(latency_s)
        return "ready"

    class BenchEnv(ToolEnv):
        default_max_turns = turns

        def load_tasks(self, split: str) -> ArithmeticTasks:
            return ArithmeticTasks("train", 1000)

        def make_tools(self) -> list[Any]:
            return [wait]

        def _begin_turn(self, action: Any) -> Any:
            # The untrained model writes noise: the tool call is forced so every episode has `turns` turns.
            parsed, _ = super()._begin_turn(action)
            assert self.state is not None
            calls = [ToolCall("wait", {}, "call_0")] if self.state.turn < turns - 1 else []
            return parsed, calls

    return BenchEnv


def run_worker(worker: RolloutWorker, n: int) -> tuple[float, int, list[Trajectory]]:
    t = time.perf_counter()
    trajs = worker.run_sync([RolloutRequest({"task_index": i}) for i in range(n)])
    wall = time.perf_counter() - t
    bad = [tr.error for tr in trajs if tr.error]
    if bad:
        raise RuntimeError(f"benchmark episodes failed: {bad[:3]}")
    return wall, sum(tr.num_sampled for tr in trajs), trajs


def run_bare(engine: Any, prompts_by_turn: list[list[list[int]]], params: SamplingParams) -> tuple[float, int]:
    """The bare engine on the same prompts, turn by turn as whole batches: (wall seconds, tokens)."""
    if not isinstance(engine, HFEngine):
        return run_bare_vllm(engine, prompts_by_turn, params)
    t = time.perf_counter()
    tokens = 0
    for prompts in prompts_by_turn:
        tokens += sum(len(c.token_ids) for c in engine.generate_batch_sync(prompts, params))
    return time.perf_counter() - t, tokens


def run_bare_vllm(engine: Any, prompts_by_turn: list[list[list[int]]], params: SamplingParams) -> tuple[float, int]:
    """``AsyncLLM.generate`` itself, all of a turn's prompts at once, on the loop that owns it."""
    from vllm.inputs import TokensPrompt

    async def one(prompt: list[int], request_id: str) -> int:
        final = None
        async for out in engine.llm.generate(TokensPrompt(prompt_token_ids=prompt),
                                             engine.sampling_params(len(prompt), params), request_id):
            final = out
        return len(final.outputs[0].token_ids)

    async def batch(prompts: list[list[int]], turn: int) -> int:
        counts = await asyncio.gather(*(one(p, f"bare-{time.monotonic_ns()}-{turn}-{i}") for i, p in enumerate(prompts)))
        return sum(counts)

    t = time.perf_counter()
    tokens = sum(engine.call(batch(prompts, k)) for k, prompts in enumerate(prompts_by_turn))
    return time.perf_counter() - t, tokens


def clear_cache(engine: Any) -> None:
    """Empty vLLM's prefix cache so a timed run cannot reuse KV from an earlier one (hf has none)."""
    if not isinstance(engine, HFEngine):
        engine.call(engine.llm.reset_prefix_cache())


async def lockstep(engine: Any, envs: list[ToolEnv], params: SamplingParams, concurrent_tools: bool) -> float:
    """Generate for all, then run all tools, then generate again; returns wall seconds."""
    t = time.perf_counter()
    builders = []
    for i, env in enumerate(envs):
        obs, info = env.reset(options={"task_index": i})
        builders.append(TokenTrajectory(ChatFormat(engine.tokenizer, info["tools"]), obs))
    active = list(range(len(envs)))
    while active:
        completions = await engine.generate_batch([builders[i].token_ids for i in active], params)
        texts = [builders[i].add_completion(c) for i, c in zip(active, completions, strict=True)]
        if concurrent_tools:
            steps = await asyncio.gather(*(envs[i].astep(x) for i, x in zip(active, texts, strict=True)))
        else:  # one episode's tools after another's
            steps = [await envs[i].astep(x) for i, x in zip(active, texts, strict=True)]
        still = []
        for i, (obs, _r, term, trunc, _info) in zip(active, steps, strict=True):
            if not (term or trunc):
                builders[i].add_env_reply(obs)
                still.append(i)
        active = still
    return time.perf_counter() - t


def prompts_by_turn(trajectories: list[Trajectory]) -> list[list[list[int]]]:
    """The worker's prompts as the batches a lock-step loop sends: turn k of every episode together."""
    turns = max(len(t.turns) for t in trajectories)
    return [[t.token_ids[:t.turns[k].start] for t in trajectories if len(t.turns) > k] for k in range(turns)]


# (episodes, max_new_tokens, repeats) when not given: vLLM on a CPU is far slower than the tiny model
DEFAULTS = {"hf": (32, 32, 7), "vllm": (8, 16, 2)}


def build_engine(kind: str, model: str, episodes: int) -> Any:
    # vLLM: float32 and eager as in conf/rollout/vllm_cpu.yaml (on a GPU vLLM picks its own dtype)
    extra = {} if kind == "hf" else {"max_model_len": 2048, "enforce_eager": True, "kv_cache_memory_bytes": 1 << 30,
                                     "max_num_seqs": max(episodes, 8)}
    return make_engine(EngineConfig(kind=kind, model=model, device="cpu", dtype="float32" if kind == "vllm" else None,
                                    max_batch_size=episodes, extra=extra))


def measure(engine: Any, args: argparse.Namespace) -> dict[str, Any]:
    n, turns = args.episodes, args.turns
    cfg = RolloutConfig(max_new_tokens=args.max_new_tokens, ignore_eos=True, max_concurrency=n, max_turns=turns)
    params = cfg.sampling(args.max_new_tokens)
    instant, slow = make_env_class(0.0, turns), make_env_class(args.tool_latency, turns)

    # One worker per env kind, kept across runs as a trainer keeps it (its env pool is reused).
    fast_worker, slow_worker = RolloutWorker(engine, instant, cfg), RolloutWorker(engine, slow, cfg)
    _, _, warm = run_worker(fast_worker, n)  # warm-up; its prompts are what the bare engine replays
    run_worker(slow_worker, n)
    lock_envs = [slow() for _ in range(n)]
    batches = prompts_by_turn(warm)
    run_bare(engine, batches, params)
    w_rates, b_rates = [], []
    for _ in range(args.repeats):
        clear_cache(engine)
        wall, tokens, _ = run_worker(fast_worker, n)
        w_rates.append(tokens / wall)
        clear_cache(engine)
        wall, tokens = run_bare(engine, batches, params)
        b_rates.append(tokens / wall)

    w_tps, ls_tps, lc_tps = [], [], []
    for _ in range(max(1, args.repeats // 2)):
        clear_cache(engine)
        wall, _, _ = run_worker(slow_worker, n)
        w_tps.append(n / wall)
        clear_cache(engine)
        ls_tps.append(n / asyncio.run(lockstep(engine, lock_envs, params, concurrent_tools=False)))
        clear_cache(engine)
        lc_tps.append(n / asyncio.run(lockstep(engine, lock_envs, params, concurrent_tools=True)))
    med = statistics.median
    return {
        "overhead_ratio": round(max(w_rates) / max(b_rates), 3),
        "overhead_ratio_median": round(med(w_rates) / med(b_rates), 3),
        "worker_tokens_per_s": round(max(w_rates), 1),
        "engine_tokens_per_s": round(max(b_rates), 1),
        "vs_lockstep": round(max(w_tps) / max(ls_tps), 2),
        "vs_lockstep_median": round(med(w_tps) / med(ls_tps), 2),
        "vs_lockstep_concurrent_tools": round(max(w_tps) / max(lc_tps), 2),
        "worker_trajectories_per_s": round(max(w_tps), 2),
        "lockstep_trajectories_per_s": round(max(ls_tps), 2),
        "lockstep_concurrent_trajectories_per_s": round(max(lc_tps), 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=sorted(DEFAULTS), default="hf")
    ap.add_argument("--model", default="tiny", help="checkpoint path or a name resolve_model knows (tiny, smollm2)")
    ap.add_argument("--episodes", type=int, default=None)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--tool-latency", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    defaults = DEFAULTS[args.engine]
    args.episodes = args.episodes or defaults[0]
    args.max_new_tokens = args.max_new_tokens or defaults[1]
    args.repeats = args.repeats or defaults[2]
    torch.manual_seed(0)
    t_all = time.perf_counter()
    engine = build_engine(args.engine, args.model, args.episodes)
    start_s = time.perf_counter() - t_all
    try:
        result = measure(engine, args)
    finally:
        engine.close()
    result.update({
        "engine": args.engine, "model": args.model, "episodes": args.episodes, "turns": args.turns,
        "max_new_tokens": args.max_new_tokens, "tool_latency_s": args.tool_latency,
        "torch_threads": torch.get_num_threads(), "engine_start_s": round(start_s, 1),
        "wall_s": round(time.perf_counter() - t_all, 1)})
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:40s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
