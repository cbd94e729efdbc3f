"""A scripted engine for tests and demos: replies are given as text, sampled ids are recorded.

``ScriptedEngine`` turns each scripted reply into token ids with the real tokenizer, appends the
end-of-turn token (unless the reply is marked as cut), invents log-probabilities, and keeps a log
of every completion it returned, so tests can check that a trajectory holds exactly the ids that
were "sampled". A script item can also be an exception (raised from ``generate``) to inject
engine failures.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from toolgym.rollouts.engines.base import ChatPrompt, Completion, EngineBase, SamplingParams


@dataclass(frozen=True)
class Cut:
    """A scripted reply that ends without the end-of-turn token (as if it hit the token limit)."""

    text: str


Reply = str | Cut | BaseException
Script = Sequence[Reply] | Callable[[list[int], ChatPrompt | None, int], Reply]


@dataclass
class Sampled:
    """One logged call: the prompt and the completion returned for it."""

    prompt_ids: list[int]
    completion: Completion


class ScriptedEngine(EngineBase):
    """Reply from a script instead of a model.

    Args:
        tokenizer: Encodes the scripted text (the real tokenizer of the model under test).
        script: A list of replies used in turn (cycled), or ``fn(prompt_ids, chat, call_index)``.
        delay_s: Simulated generation time per call.
        seed: Seeds the invented log-probabilities.

    Example:
        >>> import asyncio
        >>> from transformers import AutoTokenizer
        >>> from toolgym.rollouts.tiny import tiny_model_path
        >>> tok = AutoTokenizer.from_pretrained(tiny_model_path())
        >>> eng = ScriptedEngine(tok, ["Answer: 4"])
        >>> c = asyncio.run(eng.generate([1, 2], SamplingParams()))
        >>> tok.decode(c.token_ids), eng.log[0].completion is c
        ('Answer: 4<|im_end|>', True)
    """

    def __init__(self, tokenizer: Any, script: Script, *, delay_s: float = 0.0, seed: int = 0,
                 eot_token: str = "<|im_end|>"):
        self.tokenizer = tokenizer
        self.script = script
        self.delay_s = delay_s
        self.eot_id = int(tokenizer.convert_tokens_to_ids(eot_token))
        self.log: list[Sampled] = []
        self.calls = 0
        self._rng = random.Random(seed)

    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       chat: ChatPrompt | None = None) -> Completion:
        index = self.calls
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        reply = self.script(list(prompt_ids), chat, index) if callable(self.script) else \
            self.script[index % len(self.script)]
        if isinstance(reply, BaseException):
            raise reply
        cut = isinstance(reply, Cut)
        text = reply.text if isinstance(reply, Cut) else reply
        ids = list(self.tokenizer.encode(text, add_special_tokens=False))
        if not cut:
            ids.append(self.eot_id)
        reason = "length" if cut else "stop"
        if len(ids) > params.max_tokens:
            ids, reason = ids[: params.max_tokens], "length"
        logprobs = [-self._rng.random() * 3 for _ in ids]
        completion = Completion(token_ids=ids, logprobs=logprobs, finish_reason=reason)
        self.log.append(Sampled(list(prompt_ids), completion))
        return completion
