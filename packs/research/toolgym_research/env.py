"""``toolgym/ResearchCode-v0``: find facts by searching, then compute the answer with Python.

Questions (see :mod:`toolgym_research.tasks`) ask for a number computed from facts spread over a
generated fictional encyclopedia: the combined population of three cities, a population times a
founding year, the mean birth year of four people. The model has three tools: ``search`` and
``open`` over the encyclopedia's index (built on first use and cached, shared with other envs
over the same world) and ``python``, a persistent Python session in a sandbox acquired per
episode. It finishes with ``Answer: X``.

The reward is exact numeric match of that answer (``1,234`` and ``1234.0`` both match ``1234``;
a close-but-wrong estimate does not). Whether the episode searched and whether it ran Python are
logged as weight-0 metrics.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from toolgym.envs.base import EpisodeState, ToolEnv
from toolgym.envs.sandbox_tools import SandboxResources, python, used_python
from toolgym.envs.search_tools import open_document, search, used_search
from toolgym.envs.task import ListTasks, Task
from toolgym.errors import ConfigError, SandboxError
from toolgym.sandboxes.config import SandboxConfig
from toolgym.sandboxes.pool import ExecutorPool
from toolgym.sandboxes.shared import SandboxPools
from toolgym.search.client import DEFAULT_BACKENDS, SearchBackends, SearchConfig, SearchSession
from toolgym.search.world import cached_world
from toolgym.search.world_index import world_index
from toolgym.verifiers.checks import numeric_close
from toolgym.verifiers.rubric import Rubric
from toolgym_research.tasks import research_questions

SYSTEM_PROMPT = (
    "Answer the question using the document collection and Python. Call search to find documents (results show "
    "[doc_id], title and a snippet) and open to read one; a fact may sit in an article you only find through "
    "another. Do the arithmetic with the python tool (a persistent Python session: print() what you need). "
    "When you know the answer, reply with a final line 'Answer: X', where X is a number, and no tool call."
)


def numeric_exact(answer: str | None, reference: Any) -> float | None:
    """Reward: 1.0 when the answer states exactly the reference number (formatting aside).

    Example:
        >>> numeric_exact("1,234,500", "1234500"), numeric_exact("1234.0", "1234"), numeric_exact("1234501", "1234500")
        (1.0, 1.0, 0.0)
    """
    # No relative tolerance: on a nine-digit product, 1e-6 would accept an estimate off by hundreds.
    return numeric_close(answer, reference, rel_tol=0.0, abs_tol=1e-9)


def search_config(options: SearchConfig | dict[str, Any] | None) -> SearchConfig:
    """A copy of ``options`` as a :class:`SearchConfig`; unknown option names are a ``ConfigError``."""
    if isinstance(options, SearchConfig):
        return replace(options)
    known = {f.name for f in fields(SearchConfig)}
    unknown = sorted(set(options or {}) - known)
    if unknown:
        raise ConfigError(f"unknown search option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return SearchConfig(**dict(options or {}))


def _sandbox_config(options: SandboxConfig | Mapping[str, Any] | None) -> SandboxConfig | None:
    if options is None or isinstance(options, SandboxConfig):
        return options
    try:
        return SandboxConfig(**dict(options))  # a dict, or a Hydra DictConfig
    except TypeError as exc:
        raise ConfigError(f"bad sandbox_config: {exc}") from None


def oracle_code(task: Task) -> str:
    """The Python an oracle runs for a task: each fact as a variable, then the answer printed.

    Example:
        >>> t = Task(id="t", prompt="?", metadata={"expression": "a + b", "facts": [
        ...     {"name": "a", "entity_name": "Vorlex", "attr": "population", "value": 120000},
        ...     {"name": "b", "entity_name": "Brath", "attr": "population", "value": 3000}]})
        >>> print(oracle_code(t))
        a = 120000  # population of Vorlex
        b = 3000  # population of Brath
        print(a + b)
    """
    lines = [f"{f['name']} = {f['value']}  # {f['attr']} of {f['entity_name']}" for f in task.metadata["facts"]]
    return "\n".join([*lines, f"print({task.metadata['expression']})"])


def _stated(value: int, text: str) -> bool:
    return str(value) in text or f"{value:,}" in text  # populations are written with thousands commas


class ResearchCodeEnv(SandboxResources, ToolEnv):
    """Search a generated encyclopedia for numeric facts and compute the answer with a Python sandbox.

    Args:
        seed: Seed of the generated world (and of its questions).
        num_entities: Size of the world.
        num_train_tasks: Train questions to generate (fewer if a small world runs out).
        num_eval_tasks: Eval questions to generate (disjoint from the train questions).
        size: Use only the first ``size`` tasks of the split.
        search: :class:`SearchConfig` or its fields as a dict (default: the world's embedded index).
        cache_dir: Where the world's index is built and cached (default ``$TOOLGYM_CACHE``).
        engine: Lexical search engine for the index (default: the best installed).
        sandbox_config: :class:`SandboxConfig` (or its fields) of the shared sandbox pool.
        sandbox_pool: An open pool to take episode sandboxes from instead.
        sandbox_pools: The :class:`SandboxPools` to take the ``sandbox_config`` pool from
            (default: the process-wide ones); closing it closes the env's pool.
        search_backends: The :class:`SearchBackends` that opens the index (default: the
            process-wide one).
        **kwargs: :class:`ToolEnv` options (``split``, ``max_turns`` ...).
    """

    system_prompt = SYSTEM_PROMPT
    default_max_turns = 14  # the longest oracle takes 10 turns; leave room for a retry or two

    def __init__(self, *, seed: int = 0, num_entities: int = 1000, num_train_tasks: int = 2000,
                 num_eval_tasks: int = 200, size: int | None = None,
                 search: SearchConfig | dict[str, Any] | None = None, cache_dir: str | None = None,
                 engine: str | None = None, sandbox_config: SandboxConfig | Mapping[str, Any] | None = None,
                 sandbox_pool: ExecutorPool | None = None, sandbox_pools: SandboxPools | None = None,
                 search_backends: SearchBackends | None = None, **kwargs: Any):
        if min(num_train_tasks, num_eval_tasks) < 1:
            raise ConfigError("num_train_tasks and num_eval_tasks must be at least 1")
        self.world_seed, self.num_entities, self._size = seed, num_entities, size
        self.num_train_tasks, self.num_eval_tasks = num_train_tasks, num_eval_tasks
        self.sandbox_config = _sandbox_config(sandbox_config)
        self.sandbox_pool, self.sandbox_pools, self.search_backends = sandbox_pool, sandbox_pools, search_backends
        config = search_config(search)
        if config.backend == "embedded" and config.index is None:
            config.index = str(world_index(seed, num_entities, Path(cache_dir) if cache_dir else None, engine))
        self.search_config = config.validate()
        if config.backend == "embedded" and config.cache_mode != "replay":
            self._backends().backend(config)  # a missing or corrupt index fails here, not in the first episode
        super().__init__(**kwargs)

    def _backends(self) -> SearchBackends:
        return DEFAULT_BACKENDS if self.search_backends is None else self.search_backends

    def __getstate__(self) -> dict[str, Any]:
        # Open indexes are files and connections of this process: a copy uses the process-wide ones.
        return {**super().__getstate__(), "search_backends": None}

    # ---- hooks -------------------------------------------------------------------------------
    def load_tasks(self, split: str) -> ListTasks:
        if split not in ("train", "eval"):
            raise ConfigError(f"ResearchCode-v0 has splits 'train' and 'eval', not {split!r}")
        qs = research_questions(self.world_seed, self.num_entities, self.num_eval_tasks, self.num_train_tasks)[split]
        if self._size is not None:
            qs = qs[: self._size]
        return ListTasks([Task(id=f"research-{self.world_seed}-{split}-{i}", prompt=q.text, answer=q.answer,
                               split=split, metadata=q.metadata()) for i, q in enumerate(qs)])

    def make_tools(self) -> list[Any]:
        return [search, open_document, python]

    def make_rubric(self) -> Rubric:
        return Rubric([numeric_exact, (used_search, 0.0), (used_python, 0.0)])

    def new_session(self) -> SearchSession:
        """A fresh per-episode search client over the shared backend of ``search_backends``."""
        backends = self._backends()
        return SearchSession(backends.backend(self.search_config), self.search_config,
                             cache=backends.cache(self.search_config))

    def setup_episode(self, state: EpisodeState) -> None:
        super().setup_episode(state)  # the episode's sandbox
        state.resources["search_client"] = self.new_session()

    # ---- oracle ------------------------------------------------------------------------------
    def demonstration(self, task: Task) -> list[dict[str, Any]] | None:
        """Search and open every article on the task's path, compute with the python tool, answer.

        The tools run for real (search in a fresh session, Python in a fresh sandbox), so the chat
        shows what the env would return. ``None`` when no honest demonstration exists: an article
        the search does not surface, a fact its article does not state, or a sandbox that fails.
        """
        facts = task.metadata.get("facts")
        if not facts:
            return None
        session = self.new_session()
        messages = self.initial_messages(task)
        read: dict[str, str] = {}
        for entity_id in task.metadata["path"]:
            name = next((f["entity_name"] for f in facts if f["entity_id"] == entity_id), None)
            name = name or self._entity_name(entity_id)
            found = self._demo_call(messages, "search", {"query": name}, {"search_client": session})
            if f"[{entity_id}]" not in found:
                return None
            read[entity_id] = self._demo_call(messages, "open", {"doc_id": entity_id}, {"search_client": session})
        if not all(_stated(f["value"], read.get(f["entity_id"], "")) for f in facts):
            return None
        try:
            sandbox = self._pool().acquire()
        except SandboxError:
            return None
        try:
            output = self._demo_call(messages, "python", {"code": oracle_code(task)}, {"sandbox": sandbox})
        finally:
            sandbox.close()
        if numeric_exact(output.strip(), task.answer) != 1.0:
            return None
        messages.append({"role": "assistant", "content": f"Answer: {output.strip()}"})
        return messages

    def _demo_call(self, messages: list[dict[str, Any]], name: str, arguments: dict[str, Any],
                   context: dict[str, Any]) -> str:
        """Run one tool call for a demonstration and append the call and its result to ``messages``."""
        call = json.dumps({"name": name, "arguments": arguments})
        result = self._run_coroutine(self.tools[name].call(arguments, context))
        call_id = f"call_{sum(m['role'] == 'tool' for m in messages)}"
        messages += [{"role": "assistant", "content": f"<tool_call>\n{call}\n</tool_call>"},
                     {"role": "tool", "tool_call_id": call_id, "name": name, "content": result.content}]
        return result.content

    def _entity_name(self, entity_id: str) -> str:
        return cached_world(self.world_seed, self.num_entities).entities[entity_id].name
