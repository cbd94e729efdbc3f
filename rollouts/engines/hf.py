"""Hugging Face ``transformers`` engine: batched ``generate`` on CPU or GPU.

Concurrent ``generate`` calls are queued and gathered into micro-batches by one generation thread:
the first request opens a batch, which keeps collecting while requests keep arriving (a short gap
timer, capped), then runs as one left-padded ``model.generate`` call. The thread owns the model
while it generates, so the asyncio loop stays free for tools. Log-probabilities are taken from the
processed scores (after temperature/top-k/top-p), i.e. the distribution the token was sampled from.
Weight sync is trivial: a trainer in the same process updates the same model object.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from transformers import LogitsProcessorList

from toolgym.errors import ModelError, OverlongPromptError
from toolgym.rollouts.engines.base import ChatPrompt, Completion, EngineBase, SamplingParams


class SeededSampler:
    """Sampling with one seeded random stream per batch row (the Gumbel-max trick).

    Applied as the last logits processor of a greedy ``generate``: it applies temperature, top-k
    and top-p, keeps the resulting log-probabilities (the distribution sampled from) in
    ``processed``, and adds Gumbel noise drawn from the row's own generator, so the greedy argmax
    is an exact sample from that distribution.
    """

    def __init__(self, seeds: Sequence[int | None], temperature: float, top_k: int = 0, top_p: float = 1.0):
        import torch

        self.generators = [torch.Generator().manual_seed(int(s) if s is not None else int(torch.randint(2**62, ())))
                           for s in seeds]
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.processed: list[Any] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        logits = scores.float() / self.temperature  # [B, V]
        if self.top_k and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1.0:
            ordered, index = torch.sort(logits, descending=True, dim=-1)
            cumulative = torch.softmax(ordered, dim=-1).cumsum(-1)
            drop = cumulative - torch.softmax(ordered, dim=-1) > self.top_p  # keep the first token past p
            logits = logits.masked_fill(drop.scatter(1, index, drop), float("-inf"))
        logp = torch.log_softmax(logits, dim=-1)
        self.processed.append(logp.cpu())
        uniform = torch.stack([torch.rand(logp.shape[-1], generator=g) for g in self.generators])  # [B, V]
        gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-20)))
        return logp + gumbel.to(logp.device)


@dataclass
class _Request:
    prompt: list[int]
    params: SamplingParams
    future: concurrent.futures.Future[Completion]


class HFEngine(EngineBase):
    """Serve a ``PreTrainedModel`` through the :class:`~toolgym.rollouts.engines.base.Engine` API.

    Args:
        model: A causal LM (its weights are shared with whoever else holds it, e.g. a trainer).
        tokenizer: Its tokenizer.
        max_batch_size: Most sequences per forward batch.
        batch_gap_s: Close a forming batch when no request arrived for this long.
        batch_max_wait_s: Never hold the first request of a batch longer than this.

    Example:
        >>> import asyncio
        >>> from toolgym.rollouts.tiny import tiny_model_path
        >>> eng = HFEngine.from_pretrained(tiny_model_path())
        >>> c = asyncio.run(eng.generate([1, 2, 3], SamplingParams(max_tokens=4, ignore_eos=True)))
        >>> len(c.token_ids), len(c.logprobs), c.finish_reason
        (4, 4, 'length')
        >>> eng.close()
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_batch_size: int = 64, batch_gap_s: float = 0.004,
                 batch_max_wait_s: float = 0.05):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.batch_gap_s = batch_gap_s
        self.batch_max_wait_s = batch_max_wait_s
        self.weights_version = 0
        self.max_context = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
        self._pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._model_lock = threading.Lock()  # generation vs weight updates
        self._closed = False
        self.batches_run = 0
        self._last_batch = 1
        self._thread = threading.Thread(target=self._serve, name="toolgym-hf-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_pretrained(cls, path: str | Any, *, device: str | None = None, dtype: str | None = None,
                        **kwargs: Any) -> HFEngine:
        """Load a checkpoint directory (or hub id) and its tokenizer."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if device.startswith("cuda") else torch.float32)
        from toolgym.rollouts.pretrained import check_tokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path))
        check_tokenizer(tokenizer, where=str(path))
        tokenizer.padding_side = "left"
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype).to(device).eval()
        return cls(model, tokenizer, **kwargs)

    # ---- Engine API --------------------------------------------------------------------------
    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       chat: ChatPrompt | None = None) -> Completion:
        return await asyncio.wrap_future(self.submit(prompt_ids, params))

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> concurrent.futures.Future[Completion]:
        """Queue one request from any thread; the future resolves to its :class:`Completion`."""
        fut: concurrent.futures.Future[Completion] = concurrent.futures.Future()
        if self._closed:
            fut.set_exception(ModelError("engine is closed"))
            return fut
        self._queue.put(_Request(list(prompt_ids), params, fut))
        return fut

    async def generate_batch(self, prompts: Sequence[list[int]], params: SamplingParams) -> list[Completion]:
        """Run the prompts as batches of ``max_batch_size`` directly (no queueing delay)."""
        return await asyncio.to_thread(self.generate_batch_sync, prompts, params)

    def generate_batch_sync(self, prompts: Sequence[list[int]], params: SamplingParams) -> list[Completion]:
        out: list[Completion] = []
        for i in range(0, len(prompts), self.max_batch_size):
            chunk = [list(p) for p in prompts[i:i + self.max_batch_size]]
            out.extend(self._run_batch(chunk, [params] * len(chunk)))
        return out

    def update_weights(self, weights: Iterable[tuple[str, Any]] | None = None) -> None:
        """Load ``(name, tensor)`` pairs into the model, or (``None``) note that it changed in place."""
        with self._model_lock:
            if weights is not None:
                state = dict(weights)
                missing = set(state) - set(self.model.state_dict())
                if missing:
                    raise ModelError(f"unknown parameter names: {sorted(missing)[:5]}")
                self.model.load_state_dict(state, strict=False)
            self.weights_version += 1

    def exclusive(self) -> threading.Lock:
        """Hold this while changing the shared model in place (``with engine.exclusive(): opt.step()``)."""
        return self._model_lock

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join(timeout=30)

    # ---- generation thread -------------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                break
            pending = self._collect(first)
            stop = pending[-1] is None
            requests = [r for r in pending if r is not None]
            self._last_batch = len(requests)
            groups: dict[tuple[Any, ...], list[_Request]] = {}
            for r in requests:
                groups.setdefault(r.params.batch_key(), []).append(r)
            for group in groups.values():
                self._run_group(group)
            if stop:
                break
        self._fail_pending(ModelError("engine is closed"))

    def _collect(self, first: _Request) -> list[_Request | None]:
        """Gather requests that arrive close together (a batch forms while episodes finish their turns)."""
        batch: list[_Request | None] = [first]
        deadline = time.monotonic() + self.batch_max_wait_s
        while len(batch) < self.max_batch_size:
            # Until the batch is as large as the last one, allow longer pauses between arrivals: the
            # episodes that shared the last batch come back one by one after their env steps.
            gap = self.batch_gap_s if len(batch) >= self._last_batch else 4 * self.batch_gap_s
            timeout = min(gap, deadline - time.monotonic())
            if timeout <= 0:
                break
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                break
            batch.append(item)
            if item is None:
                break
        return batch

    def _run_group(self, group: list[_Request]) -> None:
        live = []
        for r in group:
            if not r.future.set_running_or_notify_cancel():
                continue
            problem = self._prompt_problem(r.prompt)
            if problem is not None:  # one bad prompt must not fail its batch-mates
                r.future.set_exception(problem)
            else:
                live.append(r)
        if not live:
            return
        try:
            results = self._run_batch([r.prompt for r in live], [r.params for r in live])
        except Exception as exc:  # the whole micro-batch failed: each caller gets a typed error
            err = exc if isinstance(exc, ModelError) else ModelError(f"generation failed: {type(exc).__name__}: {exc}")
            for r in live:
                r.future.set_exception(err)
            return
        for r, c in zip(live, results, strict=True):
            r.future.set_result(c)

    def _fail_pending(self, exc: Exception) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None and item.future.set_running_or_notify_cancel():
                item.future.set_exception(exc)

    # ---- one batched generate call -----------------------------------------------------------
    def _run_batch(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[Completion]:
        import torch

        p0 = params[0]
        max_new = max(p.max_tokens for p in params)
        longest = max(len(p) for p in prompts)
        for p in prompts:
            problem = self._prompt_problem(p)
            if problem is not None:
                raise problem
        if self.max_context is not None:
            max_new = min(max_new, self.max_context - longest)
        device = self.model.device
        ids = torch.full((len(prompts), longest), self._pad, dtype=torch.long)  # [B, L] left padded
        mask = torch.zeros((len(prompts), longest), dtype=torch.long)  # [B, L]
        for i, p in enumerate(prompts):
            ids[i, longest - len(p):] = torch.tensor(p)
            mask[i, longest - len(p):] = 1
        stops = list(self.stop_ids(p0))
        gen_kwargs = self._sampling_kwargs(p0)
        seeded = None
        if p0.temperature > 0 and any(p.seed is not None for p in params):
            # Each seeded request draws from its own stream: what it samples does not depend on
            # which requests it was batched with (reproducible rollouts, exact resume).
            seeded = SeededSampler([p.seed for p in params], p0.temperature, p0.top_k, p0.top_p)
            gen_kwargs = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None,
                          "logits_processor": LogitsProcessorList([seeded])}
        with self._model_lock, torch.inference_mode():
            was_training = self.model.training
            self.model.eval()  # a trainer sharing the model may have left it in train mode (dropout)
            try:
                out = self._generate(ids.to(device), mask.to(device), max_new, stops, gen_kwargs)
            finally:
                self.model.train(was_training)
            self.batches_run += 1
            new = out.sequences[:, longest:].cpu()  # [B, T]
            scores = seeded.processed if seeded is not None else out.scores
            logprobs = torch.stack([torch.log_softmax(s.float(), dim=-1).gather(1, new[:, t:t + 1].to(s.device))
                                    .squeeze(1).cpu() for t, s in enumerate(scores)], dim=1)  # [B, T]
        return [self._completion(new[i].tolist(), logprobs[i].tolist(), params[i], set(stops))
                for i in range(len(prompts))]

    def _generate(self, ids: Any, mask: Any, max_new: int, stops: list[int], gen_kwargs: dict[str, Any]) -> Any:
        return self.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new,
            # ignore_eos: suppress the end tokens so every completion runs to max_new_tokens
            min_new_tokens=max_new if not stops else 0, eos_token_id=stops or None,
            pad_token_id=self._pad, output_scores=True, return_dict_in_generate=True, **gen_kwargs)

    def _prompt_problem(self, prompt: list[int]) -> ModelError | None:
        if not prompt:
            return ModelError("empty prompt")
        if self.max_context is not None and len(prompt) + 1 > self.max_context:
            return OverlongPromptError(f"prompt of {len(prompt)} tokens does not fit the {self.max_context}-token "
                                       "context")
        return None

    @staticmethod
    def _sampling_kwargs(p: SamplingParams) -> dict[str, Any]:
        if p.temperature <= 0:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {"do_sample": True, "temperature": p.temperature, "top_p": p.top_p,
                "top_k": p.top_k if p.top_k > 0 else None}

    @staticmethod
    def _completion(tokens: list[int], logprobs: list[float], p: SamplingParams, stops: set[int]) -> Completion:
        n = min(len(tokens), p.max_tokens)
        reason = "length"
        for i in range(n):
            if tokens[i] in stops:
                n, reason = i + 1, "stop"
                break
        return Completion(token_ids=tokens[:n], logprobs=[float(x) for x in logprobs[:n]], finish_reason=reason)
