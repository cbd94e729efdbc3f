"""Engine for any OpenAI-compatible server (vLLM, SGLang, TGI, a hosted API).

The preferred path is ``/v1/completions`` with the prompt given as token ids, asking the server
for the sampled ids and their log-probabilities (vLLM's ``return_token_ids`` and
``return_tokens_as_token_ids`` extensions): the trajectory is then token-exact. Servers that
refuse the extensions are asked again with standard fields only; servers that refuse token
prompts altogether are used through ``/v1/chat/completions`` with the conversation's messages.
On those paths the returned text is re-tokenised locally and the completion is marked
``exact=False`` (its log-probabilities are 0.0 unless the server gave one per token).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from toolgym.errors import ConfigError, ModelError
from toolgym.rollouts.engines.base import ChatPrompt, Completion, EngineBase, SamplingParams

MODES = ("auto", "completions", "chat")


class BadRequestError(ModelError):
    """The server rejected the request itself: sending it again cannot help."""

    retryable = False


class OpenAIEngine(EngineBase):
    """Talk to an OpenAI-compatible server.

    Args:
        base_url: API root, e.g. ``http://127.0.0.1:8000/v1``.
        model: Model name the server serves.
        tokenizer: The model's tokenizer (for stop ids and the text fallbacks).
        api_key: Bearer token; defaults to ``$OPENAI_API_KEY`` (optional for local servers).
        mode: ``"auto"`` (token completions, falling back to chat), ``"completions"`` or ``"chat"``.
        timeout_s: Per-request timeout.
        max_connections: Concurrent HTTP requests.
    """

    def __init__(self, base_url: str, model: str, tokenizer: Any, *, api_key: str | None = None,
                 mode: str = "auto", timeout_s: float = 600.0, max_connections: int = 64):
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.tokenizer = tokenizer
        self.mode = mode
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.weights_version = 0
        self._api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self._extensions = True  # vLLM-style extra fields; dropped after the server rejects them
        self._clients: dict[int, Any] = {}

    # ---- Engine API --------------------------------------------------------------------------
    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       chat: ChatPrompt | None = None) -> Completion:
        if self.mode != "chat":
            try:
                return await self._complete_tokens(list(prompt_ids), params)
            except BadRequestError:
                if self.mode == "completions" or chat is None:
                    raise
                self.mode = "chat"  # this server does not take token prompts: stop asking
        if chat is None:
            raise BadRequestError("chat mode needs the conversation (ChatPrompt) with each request")
        return await self._complete_chat(chat, params)

    def close(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            try:
                asyncio.run(client.aclose())
            except Exception:  # its loop is gone or running: dropping the client is enough
                pass

    # ---- requests ----------------------------------------------------------------------------
    def _client(self) -> Any:
        import httpx

        # An AsyncClient belongs to the loop that made it; each loop gets its own.
        key = id(asyncio.get_running_loop())
        if key not in self._clients:
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            limits = httpx.Limits(max_connections=self.max_connections,
                                  max_keepalive_connections=self.max_connections)
            self._clients[key] = httpx.AsyncClient(base_url=self.base_url, headers=headers, limits=limits,
                                                   timeout=self.timeout_s)
        return self._clients[key]

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        try:
            resp = await self._client().post(path, json=body)
        except httpx.HTTPError as exc:
            raise ModelError(f"request to {self.base_url}{path} failed: {type(exc).__name__}: {exc}") from exc
        if 400 <= resp.status_code < 500 and resp.status_code not in (408, 429):
            raise BadRequestError(f"{path} answered {resp.status_code}: {resp.text[:500]}")
        if resp.status_code >= 400:
            raise ModelError(f"{path} answered {resp.status_code}: {resp.text[:500]}")
        try:
            return resp.json()
        except json.JSONDecodeError as exc:
            raise ModelError(f"{path} answered with invalid JSON: {resp.text[:200]}") from exc

    def _sampling_fields(self, params: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": params.max_tokens,
                                "temperature": params.temperature, "top_p": params.top_p}
        if params.seed is not None:
            body["seed"] = params.seed
        if self._extensions:
            body.update(skip_special_tokens=False, include_stop_str_in_output=True,
                        stop_token_ids=list(self.stop_ids(params)), ignore_eos=params.ignore_eos)
            if params.top_k > 0:
                body["top_k"] = params.top_k
        return body

    async def _complete_tokens(self, prompt_ids: list[int], params: SamplingParams) -> Completion:
        body = {**self._sampling_fields(params), "prompt": prompt_ids, "logprobs": 1}
        if self._extensions:
            body.update(return_token_ids=True, return_tokens_as_token_ids=True)
        try:
            data = await self._post("/completions", body)
        except BadRequestError:
            if not self._extensions:
                raise
            self._extensions = False  # try once more with standard fields only
            return await self._complete_tokens(prompt_ids, params)
        choice = _first_choice(data)
        return self._from_completion_choice(choice, params)

    def _from_completion_choice(self, choice: dict[str, Any], params: SamplingParams) -> Completion:
        text = choice.get("text") or ""
        lp = choice.get("logprobs") or {}
        tokens, token_lps = lp.get("tokens"), lp.get("token_logprobs")
        ids = choice.get("token_ids")
        if ids is None and tokens and all(isinstance(t, str) and t.startswith("token_id:") for t in tokens):
            ids = [int(t.split(":", 1)[1]) for t in tokens]
        reason = "length" if choice.get("finish_reason") == "length" else "stop"
        if ids is None:
            ids = self._retokenize(text, reason, params)
            return Completion(ids, [0.0] * len(ids), reason, exact=False, text=text)
        ids = [int(i) for i in ids]
        if token_lps is not None and len(token_lps) == len(ids) and all(x is not None for x in token_lps):
            return Completion(ids, [float(x) for x in token_lps], reason, exact=True, text=text)
        return Completion(ids, [0.0] * len(ids), reason, exact=False, text=text)

    async def _complete_chat(self, chat: ChatPrompt, params: SamplingParams) -> Completion:
        body: dict[str, Any] = {**self._sampling_fields(params), "messages": chat.messages}
        if chat.tools:
            body["tools"] = chat.tools
        data = await self._post("/chat/completions", body)
        choice = _first_choice(data)
        message = choice.get("message") or {}
        text = _message_text(message)
        reason = "length" if choice.get("finish_reason") == "length" else "stop"
        ids = self._retokenize(text, reason, params)
        return Completion(ids, [0.0] * len(ids), reason, exact=False, text=text)

    def _retokenize(self, text: str, reason: str, params: SamplingParams) -> list[int]:
        ids = list(self.tokenizer.encode(text, add_special_tokens=False))
        stops = self.stop_ids(params)
        if reason == "stop" and stops and (not ids or ids[-1] not in stops):
            ids.append(stops[0])  # the server dropped the end-of-turn token from the text
        return ids


def _first_choice(data: dict[str, Any]) -> dict[str, Any]:
    choices = data.get("choices") if isinstance(data, dict) else None
    if not choices or not isinstance(choices[0], dict):
        raise ModelError(f"response has no choices: {str(data)[:200]}")
    return choices[0]


def _message_text(message: dict[str, Any]) -> str:
    """An assistant message as the text a Hermes-style model would have written."""
    text = message.get("content") or ""
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                pass
        payload = json.dumps({"name": fn.get("name"), "arguments": args}, ensure_ascii=False)
        text += ("\n" if text else "") + f"<tool_call>\n{payload}\n</tool_call>"
    return text
