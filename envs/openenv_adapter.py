"""OpenEnv environment servers as toolgym environments.

An OpenEnv environment is a server: a client opens a WebSocket session (``/ws``), sends
``reset`` (with ``seed``) and ``step`` (an action object validated against the server's action
schema, published at ``/schema``) and gets back ``{observation, reward, done}``.
:class:`OpenEnvText` is a GEM-style text env over one such session, so
:class:`~toolgym.envs.text_env.TextEnv` turns it into a toolgym env:

- the observation (a JSON object) is shown as JSON text; the first one also shows the action
  schema, so the model knows what to reply;
- the assistant's reply becomes the action: a JSON object (optionally in a fenced block), or,
  when the schema has a single required field (Wordle's ``guess``), the raw text as that field;
- a reply that is not an action (or that the server rejects as invalid) is answered with an
  explanation and reward 0, and the episode goes on; server failures end the episode as an
  ``EnvError`` (recorded by ``TextEnv``).

Each ``TextEnv`` holds its own session. The OpenEnv client (``openenv-core``) is imported
when an env is built::

    register_openenv("me/Echo-v0", base_url="http://localhost:8000", max_turns=4)
"""

from __future__ import annotations

import json
import re
from typing import Any

from toolgym.envs.text_env import register_text_env
from toolgym.errors import ConfigError, EnvError
from toolgym.registry import EnvSpec

_FENCED = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
_VALIDATION = "(code: VALIDATION_ERROR)"


def parse_action(text: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The action object a reply stands for; raises ``ValueError`` when it stands for none.

    Example:
        >>> schema = {"required": ["guess"], "properties": {"guess": {"type": "string"}}}
        >>> parse_action('{"guess": "crane"}', schema), parse_action("crane", schema)
        ({'guess': 'crane'}, {'guess': 'crane'})
        >>> parse_action("```json\\n{\\"guess\\": \\"slate\\"}\\n```", schema)
        {'guess': 'slate'}
    """
    text = text.strip()
    blocks = _FENCED.findall(text)
    candidate = blocks[-1].strip() if blocks else text
    try:
        value: Any = json.loads(candidate)
    except ValueError:
        value = candidate
    if isinstance(value, dict):
        return value
    required = [f for f in schema.get("required", []) if f != "metadata"]
    if len(required) == 1 and candidate:
        return {required[0]: value}
    raise ValueError("reply with one JSON object matching the action schema")


def _import_client() -> Any:
    try:
        from openenv import GenericEnvClient
    except ImportError as exc:
        raise ConfigError(f"the OpenEnv adapter needs 'openenv-core' (pip install openenv-core): {exc}") from exc
    return GenericEnvClient


class OpenEnvText:
    """One OpenEnv session as a text env: ``reset(seed=) -> (str, info)``, ``step(str) -> 5-tuple``.

    Args:
        base_url: The server (``http://host:port`` or ``ws://host:port``).
        reset_kwargs: Extra arguments for every ``reset`` (besides ``seed``).
        message_timeout_s: How long to wait for one server reply.
    """

    def __init__(self, base_url: str, reset_kwargs: dict[str, Any] | None = None, message_timeout_s: float = 60.0):
        client_cls = _import_client()
        self.base_url = base_url
        self.reset_kwargs = dict(reset_kwargs or {})
        self.client = client_cls(base_url=base_url, message_timeout_s=message_timeout_s).sync()
        self.schema = self._action_schema()

    def _action_schema(self) -> dict[str, Any]:
        import httpx

        url = re.sub(r"^ws", "http", self.base_url.rstrip("/")) + "/schema"
        try:
            response = httpx.get(url, timeout=10)
            response.raise_for_status()
            return dict(response.json()["action"])
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            raise EnvError(f"cannot read the OpenEnv action schema from {url}: {exc}") from exc

    def reset(self, *, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        result = self.client.reset(seed=seed, **self.reset_kwargs)
        observation = json.dumps(result.observation, ensure_ascii=False)
        schema = json.dumps(self.schema, ensure_ascii=False)
        return (f"Observation: {observation}\n\nEach reply is one action: a JSON object matching this schema: "
                f"{schema}"), {"observation": result.observation}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        try:
            result = self.client.step(parse_action(action, self.schema))
        except ValueError as exc:
            return f"Invalid action: {exc}.", 0.0, False, False, {"invalid_action": True}
        except RuntimeError as exc:
            if _VALIDATION not in str(exc):
                raise
            return f"Invalid action: {exc}", 0.0, False, False, {"invalid_action": True}
        observation = json.dumps(result.observation, ensure_ascii=False)
        return (f"Observation: {observation}", float(result.reward or 0.0), bool(result.done), False,
                {"observation": result.observation})

    def close(self) -> None:
        self.client.close()


def register_openenv(env_id: str, base_url: str, *, reset_kwargs: dict[str, Any] | None = None,
                     **kwargs: Any) -> EnvSpec:
    """Register the OpenEnv server at ``base_url`` as toolgym env ``env_id`` (``TextEnv`` arguments in ``kwargs``).

    Steps run on a worker thread by default (``threaded_step=True``): a step waits on the network
    and the client keeps no process-global state, so other episodes generate meanwhile.
    """
    kwargs.setdefault("threaded_step", True)
    return register_text_env(env_id, "toolgym.envs.openenv_adapter:OpenEnvText",
                             text_env_kwargs={"base_url": base_url, "reset_kwargs": dict(reset_kwargs or {})},
                             **kwargs)
