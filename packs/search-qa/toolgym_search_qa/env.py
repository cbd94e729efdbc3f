"""``toolgym/SearchQA-v0``: answer questions by searching a document collection.

By default the collection is a generated fictional encyclopedia (see
:mod:`toolgym.search.world`): names and facts are invented from a seed, so answers cannot
come from pretraining, and questions need one to three hops. Its index is built on first use and
cached on disk, keyed by seed and size. Any corpus indexed with ``toolgym search build`` works
too: pass ``index=PATH`` and ``questions=FILE`` (JSONL with ``question`` and ``answer``).
Search goes to the embedded index or to a shared server (``search={"backend": "server", "url": ...}``).

The reward is normalised exact match of the final ``Answer: ...`` line; token F1 and whether the
model searched at all are logged as metrics.
"""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from toolgym.envs.base import EpisodeState, ToolEnv
from toolgym.envs.search_tools import open_document, search, used_search
from toolgym.envs.task import ListTasks, Task
from toolgym.errors import ConfigError
from toolgym.search.client import DEFAULT_BACKENDS, SearchBackends, SearchConfig, SearchSession
from toolgym.search.world import cached_world, questions
from toolgym.search.world_index import world_index
from toolgym.verifiers.checks import exact_match, token_f1
from toolgym.verifiers.rubric import Rubric

EVAL_FRACTION = 0.1


def _config(options: dict[str, Any]) -> SearchConfig:
    known = {f.name for f in fields(SearchConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown search option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return SearchConfig(**options)


def _load_questions(path: str, split: str) -> ListTasks:
    if not Path(path).is_file():
        raise ConfigError(f"questions file not found: {path}")
    tasks = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                question, answer = rec["question"], rec.get("answers", rec.get("answer"))
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{path}:{n + 1}: need a JSON object with question and answer ({exc})") from None
            if rec.get("split", split) == split:
                tasks.append(Task(id=str(rec.get("id", f"q{n}")), prompt=question, answer=answer, split=split))
    return ListTasks(tasks)


class SearchQAEnv(ToolEnv):
    """Answer a question with ``search`` and ``open``; finish with ``Answer: ...``.

    ``search_backends`` is the :class:`SearchBackends` that opens the index (or server client):
    one the caller holds and closes, or by default the process-wide one.
    """

    system_prompt = ("Answer the question using the document collection. Call search to find documents (results "
                     "show [doc_id], title and a snippet) and open to read one. Facts may need several searches. "
                     "When you know the answer, reply with a final line 'Answer: X' and no tool call.")
    default_max_turns = 10

    def __init__(self, *, seed: int = 0, num_entities: int = 1000, index: str | None = None,
                 questions: str | None = None, search: SearchConfig | dict[str, Any] | None = None,
                 cache_dir: str | None = None, engine: str | None = None, size: int | None = None,
                 search_backends: SearchBackends | None = None, **kwargs: Any):
        self.world_seed, self.num_entities, self._size = seed, num_entities, size
        self.search_backends = search_backends
        self._questions_path = questions
        if index is not None and questions is None:
            raise ConfigError("index=PATH needs questions=FILE (JSONL with question and answer per line)")
        self.generated = index is None
        config = replace(search) if isinstance(search, SearchConfig) else _config(dict(search or {}))
        if config.backend == "embedded" and config.index is None:
            config.index = str(index or world_index(seed, num_entities, Path(cache_dir) if cache_dir else None,
                                                    engine))
        self.search_config = config.validate()
        if config.backend == "embedded" and config.cache_mode != "replay":
            self._backends().backend(config)  # a missing or corrupt index fails here, not in the first episode
        super().__init__(**kwargs)

    def _backends(self) -> SearchBackends:
        return DEFAULT_BACKENDS if self.search_backends is None else self.search_backends

    def __getstate__(self) -> dict[str, Any]:
        # Open indexes are files and connections of this process: a copy uses the process-wide ones.
        return {**super().__getstate__(), "search_backends": None}

    def load_tasks(self, split: str) -> ListTasks:
        if self._questions_path is not None:
            return _load_questions(self._questions_path, split)
        qs = questions(self.world_seed, self.num_entities)
        n_eval = max(1, int(len(qs) * EVAL_FRACTION))
        chosen = list(enumerate(qs))[:n_eval] if split == "eval" else list(enumerate(qs))[n_eval:]
        if self._size is not None:
            chosen = chosen[: self._size]
        return ListTasks([Task(id=f"sqa-{self.world_seed}-{i}", prompt=q.text, answer=q.answer, split=split,
                               metadata={"path": list(q.path), "hops": q.hops}) for i, q in chosen])

    def make_tools(self) -> list[Any]:
        return [search, open_document]

    def make_rubric(self) -> Rubric:
        return Rubric([exact_match, (token_f1, 0.0), (used_search, 0.0)])

    def new_session(self) -> SearchSession:
        """A fresh per-episode search client over the shared backend of ``search_backends``."""
        backends = self._backends()
        return SearchSession(backends.backend(self.search_config), self.search_config,
                             cache=backends.cache(self.search_config))

    def setup_episode(self, state: EpisodeState) -> None:
        state.resources["search_client"] = self.new_session()

    def demonstration(self, task: Task) -> list[dict[str, Any]] | None:
        """Search each entity on the question's path, open its article, and answer."""
        path = task.metadata.get("path")
        if not self.generated or not path:
            return None
        world = cached_world(self.world_seed, self.num_entities)
        session = self.new_session()
        messages = self.initial_messages(task)
        for entity_id in path:
            name = world.entities[entity_id].name
            for tool_name, args in (("search", {"query": name}), ("open", {"doc_id": entity_id})):
                call = json.dumps({"name": tool_name, "arguments": args})
                result = self._run_coroutine(self.tools[tool_name].call(args, {"search_client": session}))
                if tool_name == "search" and f"[{entity_id}]" not in result.content:
                    return None  # the article is not in the results: no honest demonstration exists
                messages += [{"role": "assistant", "content": f"<tool_call>\n{call}\n</tool_call>"},
                             {"role": "tool", "tool_call_id": "call_0", "name": tool_name, "content": result.content}]
        messages.append({"role": "assistant", "content": f"Answer: {task.answer}"})
        return messages
