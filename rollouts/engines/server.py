"""A minimal OpenAI-compatible HTTP server in front of any engine (local testing and demos).

It speaks ``/v1/models``, ``/v1/completions`` (string or token-id prompts, with vLLM's
``return_token_ids`` / ``return_tokens_as_token_ids`` extensions) and ``/v1/chat/completions``.
It binds to 127.0.0.1 by default and serves one process's engine; it is not a production server.

Example:
    >>> import httpx
    >>> from toolgym.rollouts.tiny import tiny_model_path
    >>> from toolgym.rollouts.engines.hf import HFEngine
    >>> engine = HFEngine.from_pretrained(tiny_model_path())
    >>> with OpenAICompatServer(engine, model_name="tiny") as server:
    ...     r = httpx.post(server.url + "/completions", json={"model": "tiny", "prompt": [1, 2], "max_tokens": 3,
    ...                    "ignore_eos": True, "return_token_ids": True})
    >>> len(r.json()["choices"][0]["token_ids"])
    3
    >>> engine.close()
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from toolgym.rollouts.engines.base import Completion, Engine, SamplingParams


class OpenAICompatServer:
    """Serve ``engine`` over HTTP on a background thread.

    Args:
        engine: Any engine; its ``tokenizer`` renders chats and decodes text.
        host: Interface to bind (keep the loopback default for tests).
        port: 0 picks a free port; read it back from :attr:`url`.
        model_name: The name ``/v1/models`` lists.
        token_prompts: Accept token-id prompts on ``/v1/completions`` (False imitates servers that don't).
        extensions: Accept vLLM's extra request fields (False imitates strict servers, which answer 400).
    """

    def __init__(self, engine: Engine, *, host: str = "127.0.0.1", port: int = 0, model_name: str = "model",
                 token_prompts: bool = True, extensions: bool = True):
        self.engine = engine
        self.model_name = model_name
        self.token_prompts = token_prompts
        self.extensions = extensions
        self.requests = 0
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._loop_thread.start()
        self._httpd = ThreadingHTTPServer((host, port), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> Completion:
        fut = asyncio.run_coroutine_threadsafe(self.engine.generate(prompt_ids, params), self._loop)
        return fut.result()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join(timeout=10)

    def __enter__(self) -> OpenAICompatServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_EXTENSIONS = {"return_token_ids", "return_tokens_as_token_ids", "skip_special_tokens", "stop_token_ids",
               "ignore_eos", "top_k", "include_stop_str_in_output"}


def _params(body: dict[str, Any]) -> SamplingParams:
    stops = body.get("stop_token_ids")
    return SamplingParams(max_tokens=int(body.get("max_tokens") or 16), temperature=float(body.get("temperature", 1.0)),
                          top_p=float(body.get("top_p", 1.0)), top_k=int(body.get("top_k") or 0),
                          stop_token_ids=tuple(stops) if stops else None, ignore_eos=bool(body.get("ignore_eos")),
                          seed=body.get("seed"))


def _completions(server: OpenAICompatServer, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    tok = server.engine.tokenizer
    prompt = body.get("prompt")
    if isinstance(prompt, list) and all(isinstance(x, int) for x in prompt):
        if not server.token_prompts:
            return 400, {"error": {"message": "prompt must be a string"}}
        ids = prompt
    elif isinstance(prompt, str):
        ids = tok.encode(prompt, add_special_tokens=False)
    else:
        return 400, {"error": {"message": "prompt must be a string or a list of token ids"}}
    c = server.generate(list(ids), _params(body))
    choice: dict[str, Any] = {"index": 0, "text": tok.decode(c.token_ids, skip_special_tokens=False),
                              "finish_reason": c.finish_reason}
    if body.get("return_token_ids"):
        choice["token_ids"] = c.token_ids
    if body.get("logprobs") is not None:
        names = [f"token_id:{t}" for t in c.token_ids] if body.get("return_tokens_as_token_ids") \
            else tok.convert_ids_to_tokens(c.token_ids)
        choice["logprobs"] = {"tokens": names, "token_logprobs": c.logprobs}
    return 200, {"id": f"cmpl-{server.requests}", "object": "text_completion", "created": int(time.time()),
                 "model": server.model_name, "choices": [choice],
                 "usage": {"prompt_tokens": len(ids), "completion_tokens": len(c.token_ids)}}


def _chat(server: OpenAICompatServer, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    from toolgym.rollouts.tokens import ChatFormat

    tok = server.engine.tokenizer
    # The rollout worker's own rendering: a template that drops ``tools=`` (SmolLM2's) gets them in
    # its family's system-message tool prompt, so clients over HTTP see the prompt toolgym trains with.
    text = ChatFormat(tok, body.get("tools")).render(body.get("messages") or [], True)
    c = server.generate(tok.encode(text, add_special_tokens=False), _params(body))
    content_ids = c.token_ids[:-1] if c.finish_reason == "stop" else c.token_ids
    text = tok.decode(content_ids, skip_special_tokens=False)
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": c.finish_reason}
    return 200, {"id": f"chatcmpl-{server.requests}", "object": "chat.completion", "created": int(time.time()),
                 "model": server.model_name, "choices": [choice]}


def _handler(server: OpenAICompatServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read their own output
            pass

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": server.model_name, "object": "model"}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:  # noqa: N802
            server.requests += 1
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            except json.JSONDecodeError:
                return self._send(400, {"error": {"message": "invalid JSON"}})
            if not server.extensions and _EXTENSIONS & set(body):
                return self._send(400, {"error": {"message": f"unknown fields {sorted(_EXTENSIONS & set(body))}"}})
            route = {"/v1/completions": _completions, "/v1/chat/completions": _chat}.get(self.path.rstrip("/"))
            if route is None:
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            try:
                status, payload = route(server, body)
            except Exception as exc:  # the client gets a 500 with the reason, the server keeps serving
                status, payload = 500, {"error": {"message": f"{type(exc).__name__}: {exc}"}}
            self._send(status, payload)

    return Handler
