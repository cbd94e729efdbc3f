"""SearchQA-v0: generated encyclopedia, oracle demonstrations, rewards, and episodes through a server."""

from __future__ import annotations

import asyncio
import json

import pytest
from toolgym_search_qa import SearchQAEnv

from toolgym.errors import ConfigError
from toolgym.search import SearchServer, build_index, open_index
from toolgym.search.client import close_backends
from toolgym.search.errors import IndexNotFoundError
from toolgym.search.world import articles, cached_world, questions
from toolgym.search.world_index import world_index

SEED, SIZE = 3, 120


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    yield tmp_path_factory.mktemp("cache")
    close_backends()


@pytest.fixture(scope="module")
def env(cache_dir):
    return SearchQAEnv(seed=SEED, num_entities=SIZE, cache_dir=str(cache_dir))


def replay(env, demo, task_id):
    """Play a demonstration's assistant turns through the env; returns (final reward, info, tool messages)."""
    obs, _ = env.reset(options={"task_id": task_id})
    start = len(obs)
    reward, info = 0.0, {}
    for msg in demo[start:]:
        if msg["role"] == "assistant":
            obs, reward, terminated, truncated, info = env.step(msg["content"])
    assert terminated and not truncated
    return reward, info, obs[start:]


def test_world_is_seeded_and_fictional():
    a, b = articles(cached_world(SEED, SIZE)), articles(cached_world(SEED, SIZE))
    assert a == b and articles(cached_world(SEED + 1, SIZE)) != a
    qs = questions(SEED, SIZE)
    assert {q.hops for q in qs} == {1, 2, 3}
    titles = [r["title"] for r in a]
    assert len(set(titles)) == len(titles)


@pytest.mark.parametrize("split", ["train", "eval"])
def test_every_demonstration_scores_one(env, cache_dir, split):
    env = env if split == "train" else SearchQAEnv(seed=SEED, num_entities=SIZE, cache_dir=str(cache_dir), split=split)
    assert len(env.tasks) > 0
    for i in range(len(env.tasks)):
        task = env.tasks[i]
        demo = env.demonstration(task)
        assert demo is not None, task.prompt
        reward, info, transcript = replay(env, demo, task.id)
        assert reward == 1.0 and info["rubric"]["exact_match"] == 1.0, (task.prompt, info)
        assert transcript == demo[len(demo) - len(transcript):]  # the env shows exactly what the oracle saw
        assert sum(m["role"] == "tool" for m in demo) == 2 * task.metadata["hops"]


def test_wrong_or_missing_answers_score_zero(env):
    task = env.tasks[0]
    env.reset(options={"task_id": task.id})
    _, reward, terminated, _, info = env.step("Answer: Atlantis")
    assert terminated and reward == 0.0 and info["rubric"]["used_search"] == 0.0
    env.reset(options={"task_id": task.id})
    _, reward, _, _, info = env.step("I do not know.")
    assert reward == 0.0 and info["answer"] is None


def test_tool_errors_keep_the_episode_going(env):
    task = env.tasks[0]
    env.reset(options={"task_id": task.id})
    bad = ['<tool_call>{"name": "search", "arguments": {"query": ""}}</tool_call>',
           '<tool_call>{"name": "open", "arguments": {"doc_id": "nope"}}</tool_call>',
           '<tool_call>{"name": "search", "arguments": {"query": "' + "x" * 3000 + '"}}</tool_call>']
    for action in bad:
        obs, reward, terminated, truncated, info = env.step(action)
        assert not terminated and obs[-1]["role"] == "tool" and obs[-1]["content"].startswith("Error:")
    obs, *_ = env.step('<tool_call>{"name": "search", "arguments": {"query": "\\"AND OR (* NEAR("}}</tool_call>')
    assert obs[-1]["content"].startswith("No results")  # query syntax is just words, never a parser error
    _, reward, terminated, _, info = env.step(f"Answer: {task.answer}")
    assert terminated and reward == 1.0 and info["rubric"]["used_search"] == 1.0


def test_index_is_built_once_and_cached(cache_dir):
    path = world_index(SEED, SIZE, cache_dir)
    stamp = (path / "manifest.json").stat().st_mtime_ns
    SearchQAEnv(seed=SEED, num_entities=SIZE, cache_dir=str(cache_dir))
    assert (path / "manifest.json").stat().st_mtime_ns == stamp
    assert world_index(SEED + 1, SIZE, cache_dir) != path


def test_user_corpus_and_questions(tmp_path):
    corpus = [{"id": "x1", "title": "Zorblat", "text": "Zorblat is a moon of the planet Quaxe, discovered in 2031."},
              {"id": "x2", "title": "Quaxe", "text": "Quaxe is a gas giant with nine moons."}]
    build_index(corpus, tmp_path / "idx")
    qfile = tmp_path / "q.jsonl"
    qfile.write_text(json.dumps({"question": "When was Zorblat discovered?", "answers": ["2031"]}) + "\n")
    env = SearchQAEnv(index=str(tmp_path / "idx"), questions=str(qfile))
    task = env.tasks[0]
    assert env.demonstration(task) is None
    env.reset(options={"task_id": task.id})
    obs, *_ = env.step('<tool_call>{"name": "search", "arguments": {"query": "Zorblat discovered"}}</tool_call>')
    assert "[x1] Zorblat" in obs[-1]["content"]
    _, reward, *_ = env.step("Answer: 2031")
    assert reward == 1.0
    with pytest.raises(ConfigError, match="needs questions"):
        SearchQAEnv(index=str(tmp_path / "idx"))
    with pytest.raises(IndexNotFoundError):
        SearchQAEnv(index=str(tmp_path / "missing"), questions=str(qfile))
    with pytest.raises(ConfigError, match="questions file not found"):
        SearchQAEnv(index=str(tmp_path / "idx"), questions=str(tmp_path / "nope.jsonl"))


def test_32_concurrent_episodes_through_the_server(env, cache_dir):
    index = open_index(world_index(SEED, SIZE, cache_dir))
    server = SearchServer(index, host="127.0.0.1", port=0).start()
    try:
        config = {"backend": "server", "url": server.url}
        envs = [SearchQAEnv(seed=SEED, num_entities=SIZE, cache_dir=str(cache_dir), search=config)
                for _ in range(32)]
        demos = [(e.tasks[i], e.demonstration(e.tasks[i])) for i, e in enumerate(envs)]
        assert all(d is not None for _, d in demos)
        before = server.stats()["queries"]

        async def episode(e, task, demo):
            obs, _ = e.reset(options={"task_id": task.id})
            reward = 0.0
            for msg in demo[len(obs):]:
                if msg["role"] == "assistant":
                    obs, reward, *_ = await e.astep(msg["content"])
            return reward

        async def all_episodes():
            return await asyncio.gather(*(episode(e, t, d) for e, (t, d) in zip(envs, demos, strict=True)))

        rewards = asyncio.run(all_episodes())
        assert rewards == [1.0] * 32
        stats = server.stats()
        searches = sum(t.metadata["hops"] for t, _ in demos)
        assert stats["queries"] - before == searches and stats["batches"] <= stats["queries"]
    finally:
        server.stop()
        index.close()


def test_server_down_mid_episode(env, cache_dir):
    index = open_index(world_index(SEED, SIZE, cache_dir))
    server = SearchServer(index, port=0).start()
    qa = SearchQAEnv(seed=SEED, num_entities=SIZE, cache_dir=str(cache_dir),
                     search={"backend": "server", "url": server.url, "retries": 1, "timeout_s": 2})
    task = qa.tasks[0]
    qa.reset(options={"task_id": task.id})
    obs, *_ = qa.step('<tool_call>{"name": "search", "arguments": {"query": "capital"}}</tool_call>')
    assert not obs[-1]["content"].startswith("Error")
    server.stop()
    index.close()
    obs, _, terminated, _, info = qa.step('<tool_call>{"name": "search", "arguments": {"query": "city"}}</tool_call>')
    assert not terminated and "unreachable" in obs[-1]["content"] and info["tool_errors"] == 1
    _, reward, terminated, _, _ = qa.step(f"Answer: {task.answer}")
    assert terminated and reward == 1.0


def test_record_then_replay_without_any_backend(env, cache_dir, tmp_path):
    results = str(tmp_path / "results.sqlite")
    recorder = SearchQAEnv(seed=SEED, num_entities=SIZE, cache_dir=str(cache_dir),
                           search={"cache_mode": "record", "cache_path": results})
    tasks = [recorder.tasks[i] for i in range(5)]
    recorded = []
    for task in tasks:
        demo = recorder.demonstration(task)
        reward, _, transcript = replay(recorder, demo, task.id)
        assert reward == 1.0
        recorded.append((task, demo, transcript))
    # Nothing listens on this port: every result must come from the recording.
    offline = SearchQAEnv(seed=SEED, num_entities=SIZE, cache_dir=str(cache_dir),
                          search={"backend": "server", "url": "http://127.0.0.1:9", "retries": 0,
                                  "cache_mode": "replay", "cache_path": results})
    for task, demo, transcript in recorded:
        reward, _, again = replay(offline, demo, task.id)
        assert reward == 1.0 and again == transcript
    offline.reset(options={"task_id": tasks[0].id})
    obs, *_ = offline.step('<tool_call>{"name": "search", "arguments": {"query": "never recorded"}}</tool_call>')
    assert "ReplayMissError" in obs[-1]["content"]


def test_conformance_checks_pass(cache_dir):
    import toolgym
    from toolgym.envs.conformance import run_checks

    toolgym.register("test/SearchQA-v0", entry_point="toolgym_search_qa:SearchQAEnv", seed=SEED,
                     num_entities=SIZE, cache_dir=str(cache_dir))
    report = run_checks("test/SearchQA-v0")
    failed = [(r.name, r.detail) for r in report.results if not r.passed]
    assert not failed and len(report.results) >= 6


def test_bad_search_options_are_config_errors(cache_dir):
    with pytest.raises(ConfigError, match="unknown search option"):
        SearchQAEnv(seed=SEED, num_entities=SIZE, cache_dir=str(cache_dir), search={"bakend": "server"})
    with pytest.raises(ConfigError, match="url"):
        SearchQAEnv(seed=SEED, num_entities=SIZE, cache_dir=str(cache_dir), search={"backend": "server"})
