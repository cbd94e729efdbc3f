"""vLLM engine (``AsyncLLM``): continuous batching, prefix caching, sleep/wake, in-place weight updates.

vLLM is an optional dependency (``pip install toolgym[vllm]``) imported only when this engine is
built. The engine runs vLLM on its own event-loop thread, so ``generate`` can be awaited from any
loop and ``update_weights``/``sleep``/``wake_up`` can be called from plain synchronous trainer code.

* prompts go in as ``TokensPrompt`` (token-in/token-out), outputs come back as token ids;
* ``logprobs_mode="processed_logprobs"`` makes the returned log-probabilities those of the
  distribution the token was sampled from (after temperature, top-k, top-p);
* prefix caching is on: every turn of an episode re-sends the growing prefix;
* ``sleep``/``wake_up`` free and restore GPU memory between rollout and training phases
  (needs ``enable_sleep_mode``);
* ``update_weights`` hands ``(name, tensor)`` pairs to vLLM's weight-transfer API (CUDA IPC, for a
  trainer on the same GPU) and resets the prefix cache (cached KV was computed with the old weights).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import pickle
import threading
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any

from toolgym.errors import ConfigError, ModelError, OverlongPromptError
from toolgym.rollouts.engines.base import ChatPrompt, Completion, EngineBase, SamplingParams

INSTALL_HINT = "the vllm engine needs vLLM: pip install 'toolgym[vllm]' (vllm==0.31.0, Linux with a CUDA GPU)"


def import_vllm() -> Any:
    """Import vLLM or raise a ``ConfigError`` that says how to install it."""
    try:
        import vllm
    except ImportError as exc:
        raise ConfigError(f"{INSTALL_HINT} ({exc})") from None
    return vllm


def _load_weights_on_worker(worker: Any, weights: list[tuple[str, Any]]) -> int:
    """Runs inside each vLLM worker process (sent by ``collective_rpc``)."""
    device = worker.device if hasattr(worker, "device") else None
    moved = [(n, t.to(device) if device is not None else t) for n, t in weights]
    worker.model_runner.model.load_weights(weights=moved)
    return len(moved)


class VLLMEngine(EngineBase):
    """Serve a checkpoint with vLLM's ``AsyncLLM``.

    Args:
        model: Checkpoint path or hub id.
        tokenizer: Tokenizer path (defaults to ``model``).
        gpu_memory_utilization: Fraction of GPU memory for weights and KV cache.
        enable_sleep_mode: Allow :meth:`sleep`/:meth:`wake_up`.
        dtype: ``"auto"``, ``"bfloat16"``...
        max_model_len: Context length (``None``: the model's).
        seed: vLLM's global seed.
        **engine_kwargs: Further ``AsyncEngineArgs`` fields.
    """

    def __init__(self, model: str, *, tokenizer: str | None = None, gpu_memory_utilization: float = 0.5,
                 enable_sleep_mode: bool = False, dtype: str = "auto", max_model_len: int | None = None,
                 seed: int = 0, **engine_kwargs: Any):
        import_vllm()
        from transformers import AutoTokenizer

        self.model_name = model
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model)
        self.weights_version = 0
        self._transfer_ready = False
        # IPC weight handles reach the workers pickled; vLLM accepts that only when told to.
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        self._ids = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="toolgym-vllm", daemon=True)
        self._thread.start()
        args = dict(model=model, tokenizer=tokenizer or model, gpu_memory_utilization=gpu_memory_utilization,
                    enable_sleep_mode=enable_sleep_mode, dtype=dtype, max_model_len=max_model_len, seed=seed,
                    enable_prefix_caching=True, logprobs_mode="processed_logprobs",
                    weight_transfer_config={"backend": "ipc"}, **engine_kwargs)
        self._llm = self._call(self._start(args))

    async def _start(self, args: dict[str, Any]) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        # Created on the engine's own loop: AsyncLLM's output handler lives on the loop that made it.
        return AsyncLLM.from_engine_args(AsyncEngineArgs(**args))

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    # ---- Engine API --------------------------------------------------------------------------
    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       chat: ChatPrompt | None = None) -> Completion:
        fut = asyncio.run_coroutine_threadsafe(self._generate(list(prompt_ids), params), self._loop)
        return await asyncio.wrap_future(fut)

    async def generate_batch(self, prompts: Sequence[list[int]], params: SamplingParams) -> list[Completion]:
        # vLLM batches concurrent requests itself (continuous batching).
        return list(await asyncio.gather(*(self.generate(p, params) for p in prompts)))

    async def _generate(self, prompt_ids: list[int], params: SamplingParams) -> Completion:
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        sp = VllmSamplingParams(
            n=1, max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
            top_k=params.top_k, seed=params.seed, ignore_eos=params.ignore_eos,
            stop_token_ids=list(self.stop_ids(params)), logprobs=0, skip_special_tokens=False,
            detokenize=False, output_kind=RequestOutputKind.FINAL_ONLY)
        request_id = f"toolgym-{next(self._ids)}"
        final = None
        try:
            async for out in self._llm.generate(TokensPrompt(prompt_token_ids=prompt_ids), sp, request_id):
                final = out
        except ValueError as exc:  # vLLM rejects prompts longer than max_model_len with ValueError
            if "longer than" in str(exc) or "max_model_len" in str(exc):
                raise OverlongPromptError(str(exc)) from exc
            raise ModelError(f"vLLM rejected the request: {exc}") from exc
        except Exception as exc:
            raise ModelError(f"vLLM generation failed: {type(exc).__name__}: {exc}") from exc
        if final is None or not final.outputs:
            raise ModelError("vLLM returned no output")
        o = final.outputs[0]
        ids = [int(t) for t in o.token_ids]
        logprobs = [float(o.logprobs[i][t].logprob) for i, t in enumerate(ids)] if o.logprobs else [0.0] * len(ids)
        reason = "length" if o.finish_reason == "length" else "stop"
        return Completion(ids, logprobs, reason, exact=o.logprobs is not None)

    def update_weights(self, weights: Iterable[tuple[str, Any]] | None = None) -> None:
        """Load ``(name, tensor)`` pairs into vLLM's model (``None`` is an error: vLLM holds its own copy).

        Uses vLLM's weight-transfer API with the CUDA-IPC backend (trainer and vLLM on the same GPU):
        the tensors are shared by handle, not copied through the engine process. Older vLLM without
        that API gets the weights through ``collective_rpc``. The prefix cache is reset afterwards:
        its KV entries were computed with the old weights.
        """
        if weights is None:
            raise ConfigError("VLLMEngine.update_weights needs the (name, tensor) pairs to load")
        pairs = [(name, t.detach()) for name, t in weights]
        if hasattr(self._llm, "init_weight_transfer_engine"):
            self._call(self._transfer_ipc(pairs))
        else:
            cpu = [(n, t.to("cpu")) for n, t in pairs]
            self._call(self._llm.collective_rpc(_load_weights_on_worker, args=(cpu,)))
        self._call(self._llm.reset_prefix_cache())
        self.weights_version += 1

    async def _transfer_ipc(self, pairs: list[tuple[str, Any]]) -> None:
        import torch
        from torch.multiprocessing.reductions import reduce_tensor
        from vllm.distributed.weight_transfer.base import (
            WeightTransferInitRequest,
            WeightTransferUpdateRequest,
        )

        if not self._transfer_ready:
            await self._llm.init_weight_transfer_engine(WeightTransferInitRequest(init_info={}))
            self._transfer_ready = True
        gpu = str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)
        shared = [t.to("cuda").contiguous() for _, t in pairs]  # must stay alive until the workers copied them
        info = {"names": [n for n, _ in pairs], "dtype_names": [str(t.dtype).split(".")[-1] for t in shared],
                "shapes": [list(t.shape) for t in shared],
                # handles hold a function reference, so they travel pickled (the HTTP form of the API)
                "ipc_handles_pickled": base64.b64encode(pickle.dumps([{gpu: reduce_tensor(t)} for t in shared]))
                .decode()}
        await self._llm.start_weight_update()
        await self._llm.update_weights(WeightTransferUpdateRequest(update_info=info))
        await self._llm.finish_weight_update()
        del shared

    def sleep(self, level: int = 1) -> None:
        """Free GPU memory (level 1 keeps weights in CPU memory, level 2 drops them)."""
        self._call(self._llm.sleep(level))

    def wake_up(self) -> None:
        self._call(self._llm.wake_up())

    def close(self) -> None:
        if getattr(self, "_llm", None) is not None:
            self._llm.shutdown()
            self._llm = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
