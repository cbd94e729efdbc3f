"""Env step overhead per turn: parse + dispatch + observation, excluding the tool's own time.

    python bench/env_step.py --json

Runs 4-turn episodes of a small env with an instant tool and times each ``step``; the tool's
own run time (measured inside the call) is subtracted, so what remains is toolgym's overhead.
Also times a bare baseline (json.loads of the same call + a dict append) in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from toolgym.envs import ListTasks, Task, ToolEnv, tool
from toolgym.verifiers import Rubric

_tool_time = [0.0]


@tool(timeout=None)
def noop(x: int) -> str:
    """Return immediately.

    Args:
        x: Anything.
    """
    t = time.perf_counter()
    out = str(x)
    _tool_time[0] += time.perf_counter() - t
    return out


def exact(answer, reference) -> float:
    return float(answer == reference)


class BenchEnv(ToolEnv):
    system_prompt = "bench"
    default_max_turns = 100

    def load_tasks(self, split):
        return ListTasks([Task(id=str(i), prompt=f"task {i}", answer=str(i)) for i in range(16)])

    def make_tools(self):
        return [noop]

    def make_rubric(self):
        return Rubric([exact])


ACTION = 'Let me check. <tool_call>{"name": "noop", "arguments": {"x": 3}}</tool_call>'


def measure(episodes: int, turns: int) -> list[float]:
    env = BenchEnv()
    samples = []
    for ep in range(episodes):
        env.reset(seed=ep)
        for turn in range(turns):
            action = ACTION if turn < turns - 1 else "Answer: 3"
            _tool_time[0] = 0.0
            t = time.perf_counter()
            env.step(action)
            samples.append((time.perf_counter() - t - _tool_time[0]) * 1e6)
    return samples


def baseline(n: int) -> float:
    payload = ACTION.split("<tool_call>")[1].split("</tool_call>")[0]
    msgs: list[dict] = []
    t = time.perf_counter()
    for _ in range(n):
        call = json.loads(payload)
        msgs.append({"role": "tool", "content": str(call["arguments"]["x"])})
    return (time.perf_counter() - t) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--episodes", type=int, default=2000)
    ap.add_argument("--turns", type=int, default=4)
    args = ap.parse_args()
    measure(50, args.turns)  # warm up
    samples = sorted(measure(args.episodes, args.turns))
    base = baseline(20_000)
    out = {"step_overhead_us": round(statistics.median(samples), 2),
           "step_overhead_mean_us": round(statistics.fmean(samples), 2),
           "step_overhead_p99_us": round(samples[int(0.99 * len(samples))], 2),
           "baseline_parse_append_us": round(base, 2),
           "ratio_vs_baseline": round(statistics.median(samples) / base, 1),
           "goal_us": 100, "turns_measured": len(samples)}
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
