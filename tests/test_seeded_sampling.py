"""Seeded requests sample the same tokens whatever they are batched with (exact, resumable rollouts)."""

from __future__ import annotations

import asyncio

import torch

from toolgym.rollouts.engines.base import SamplingParams
from toolgym.rollouts.engines.hf import HFEngine, SeededSampler
from toolgym.rollouts.tiny import tiny_model_path


def test_same_seed_same_tokens_in_any_batch():
    engine = HFEngine.from_pretrained(tiny_model_path())
    try:
        prompt = [5, 6, 7, 8]

        async def run(extra: int) -> list[list[int]]:
            reqs = [engine.generate(prompt, SamplingParams(max_tokens=12, temperature=1.0, ignore_eos=True, seed=42))]
            reqs += [engine.generate([9] * (3 + i), SamplingParams(max_tokens=12, temperature=1.0, ignore_eos=True,
                                                                    seed=100 + i)) for i in range(extra)]
            return [c.token_ids for c in await asyncio.gather(*reqs)]

        alone = asyncio.run(run(0))[0]
        crowded = asyncio.run(run(5))
        assert crowded[0] == alone
        assert len({tuple(t) for t in crowded[1:]}) > 1  # different seeds, different samples
        other = asyncio.run(engine.generate(prompt, SamplingParams(max_tokens=12, temperature=1.0, ignore_eos=True,
                                                                   seed=43)))
        assert other.token_ids != alone
    finally:
        engine.close()


def test_seeded_sampler_draws_from_the_processed_distribution():
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    counts = torch.zeros(4)
    for seed in range(3000):
        sampler = SeededSampler([seed], temperature=0.5, top_k=3)
        counts[int(sampler(None, logits).argmax())] += 1
    expected = torch.softmax(torch.tensor([2.0, 1.0, 0.0]) / 0.5, dim=-1)
    assert counts[3] == 0  # cut by top-k
    torch.testing.assert_close(counts[:3] / counts.sum(), expected, atol=0.03, rtol=0)
    torch.testing.assert_close(sampler.processed[0][0, :3].exp(), expected)
