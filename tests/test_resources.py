"""Explicit resources: sandbox pools, the math worker and search backends a user holds and closes.

Each holder is independent of the process-wide default behind the module functions
(``shared_pool``, ``math_equivalent``, ``make_backend``): closing one leaves the others working,
and a closed one refuses use with a clear error instead of hanging or reopening silently.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from toolgym.errors import EnvError, SandboxError
from toolgym.sandboxes import (
    DEFAULT_POOLS,
    SandboxConfig,
    SandboxPools,
    close_shared_pools,
    open_sandbox_pool,
    shared_pool,
)
from toolgym.sandboxes.testing import require_docker, small_config
from toolgym.search import (
    DEFAULT_BACKENDS,
    SearchBackends,
    SearchConfig,
    SearchError,
    build_index,
    make_backend,
)
from toolgym.verifiers import DEFAULT_MATH_VERIFIER, MathVerifier, Rubric, math_equivalent

NO_HOSTS = SandboxConfig(backend="local", pool_size=0)  # a pool that starts no host before an acquire


def _config(backend: str = "local") -> SandboxConfig:
    # one host per pool keeps four pools cheap on a busy 2-core machine
    return small_config(backend, pool_size=1, max_hosts=2)


def _runs(pool) -> str:
    with pool.acquire() as sb:
        return sb.run("print(6 * 7)").stdout


def in_thread(fn, *args):
    """Run ``fn`` in a worker thread: math checks outside the main thread go to the worker process."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


@pytest.fixture
def default_pools() -> Iterator[None]:
    yield
    close_shared_pools()


# ---------------------------------------------------------------- sandbox pools


def test_holders_are_independent_of_each_other_and_of_the_default(default_pools):
    config = _config()
    first, second = SandboxPools(), SandboxPools()
    try:
        a, b = first.get(config), second.get(config)
        assert a is not b and first.get(config) is a and len(first) == 1
        first.close()
        assert a.closed and not b.closed and len(first) == 0
        assert _runs(b) == "42\n"
        assert _runs(shared_pool(config)) == "42\n"  # the default holder is untouched too
        assert shared_pool(config) is not b
    finally:
        first.close()
        second.close()


def test_a_closed_holder_refuses_get_with_a_clear_error():
    with SandboxPools() as pools:
        pass
    assert pools.closed
    with pytest.raises(SandboxError, match="closed"):
        pools.get(_config())
    pools.close()  # idempotent


def test_clear_closes_the_pools_and_keeps_the_holder_usable():
    config = NO_HOSTS
    with SandboxPools() as pools:
        pool = pools.get(config)
        pools.clear()
        assert pool.closed and len(pools) == 0
        fresh = pools.get(config)
        assert fresh is not pool and not fresh.closed


def test_close_shared_pools_reopens_on_next_use(default_pools):
    pool = shared_pool(NO_HOSTS)
    close_shared_pools()
    assert pool.closed and not DEFAULT_POOLS.closed
    assert shared_pool(NO_HOSTS) is not pool


def test_an_env_takes_its_sandboxes_from_the_holder_it_was_given():
    from toolgym_python_code import PythonCodeEnv

    config = _config()
    before = len(DEFAULT_POOLS)
    with SandboxPools() as pools:
        env = PythonCodeEnv(split="train", sandbox_config=config, sandbox_pools=pools)
        env.reset(options={"task_index": 0})
        call = json.dumps({"name": "python", "arguments": {"code": "print(6 * 7)"}})
        obs, *_ = env.step(f"<tool_call>\n{call}\n</tool_call>")
        assert obs[-1]["content"] == "42\n"
        assert len(pools) == 1 and len(DEFAULT_POOLS) == before
        assert pickle.loads(pickle.dumps(env)).sandbox_pools is None  # a copy cannot carry live pools
        env.close()
    assert pools.closed
    with pytest.raises(SandboxError, match="closed"):
        env.reset(options={"task_index": 0})  # a clear error, not a hang or a silently reopened pool


def _call_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("sandbox-call")}


def test_call_threads_belong_to_their_pool():
    baseline = _call_threads()
    first, second = open_sandbox_pool(_config()), open_sandbox_pool(_config())
    try:
        assert _call_threads() == baseline  # made on the first async call, not at import or open

        async def run(pool) -> str:
            sb = await pool.aacquire()
            try:
                return (await sb.arun("print(1)")).stdout
            finally:
                await sb.aclose()

        assert asyncio.run(run(first)) == "1\n" and asyncio.run(run(second)) == "1\n"
        assert _call_threads() - baseline
        first.close()
        assert asyncio.run(run(second)) == "1\n"  # closing one pool leaves the other's threads alone
        second.close()
        deadline = time.monotonic() + 10
        while _call_threads() - baseline and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _call_threads() - baseline  # closed pools leave no threads behind
    finally:
        first.close()
        second.close()


def test_async_calls_on_a_closed_pool_return_instead_of_raising():
    pool = open_sandbox_pool(_config())

    async def main() -> None:
        sb = await pool.aacquire()
        pool.close()
        result = await sb.arun("print(1)")
        assert not result.ok
        await sb.aclose()
        with pytest.raises(SandboxError, match="closed"):
            await pool.aacquire()

    try:
        asyncio.run(main())
    finally:
        pool.close()


@pytest.mark.docker
def test_holders_are_independent_on_docker():
    require_docker()
    with SandboxPools() as first, SandboxPools() as second:
        a, b = first.get(_config("docker")), second.get(_config("docker"))
        first.close()
        assert a.closed and _runs(b) == "42\n"


# ---------------------------------------------------------------- math verifier


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_held_math_verifier_ends_its_process_on_close():
    verifier = MathVerifier()
    assert verifier.pid is None  # nothing starts before a check needs it
    assert in_thread(verifier.math_equivalent, "1/2", "0.5") == 1.0
    pid = verifier.pid
    assert pid is not None and _alive(pid) and pid != DEFAULT_MATH_VERIFIER.pid
    verifier.close()
    assert verifier.closed and verifier.pid is None and not _alive(pid)  # killed and reaped
    with pytest.raises(EnvError, match="closed"):
        in_thread(verifier.math_equivalent, "1/2", "0.5")
    score = Rubric([verifier.math_equivalent]).score(answer="1/2", reference="0.5")
    assert score.reward == 0.0 and "closed" in (score.error or "")
    # The default verifier behind math_equivalent is another process, still serving.
    assert in_thread(math_equivalent, "3", r"\frac{6}{2}") == 1.0
    assert DEFAULT_MATH_VERIFIER.pid is not None and not DEFAULT_MATH_VERIFIER.closed


def test_a_math_verifier_as_context_manager_and_in_a_rubric():
    with MathVerifier() as verifier:
        rubric = Rubric([verifier.math_equivalent])
        assert in_thread(lambda: rubric.score(answer="0.25", reference=r"\frac14").breakdown) == {
            "math_equivalent": 1.0}
        pid = verifier.pid
    assert pid is not None and not _alive(pid)


def test_a_pickled_math_verifier_starts_its_own_process():
    with MathVerifier() as verifier:
        assert in_thread(verifier.math_equivalent, "2", "2") == 1.0
        copy = pickle.loads(pickle.dumps(verifier))
        try:
            assert copy.pid is None and not copy.closed
            assert in_thread(copy.math_equivalent, "2", "2") == 1.0 and copy.pid != verifier.pid
        finally:
            copy.close()
    assert pickle.loads(pickle.dumps(verifier)).closed


# ---------------------------------------------------------------- search backends


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("resources") / "idx")
    build_index([{"id": "a", "title": "Alpha", "text": "first letter"}], out, engines=["fts5"])
    return out


def test_search_holders_are_independent_of_each_other_and_of_the_default(index):
    config = SearchConfig(index=index)
    with SearchBackends() as first, SearchBackends() as second:
        a, b = first.backend(config), second.backend(config)
        assert a is not b and first.backend(config) is a and len(first) == 1
        first.close()
        with pytest.raises(SearchError, match="closed"):
            first.session(config)
        assert [h.doc_id for h in second.session(config).search_sync("letter")] == ["a"]
        assert make_backend(config) is not b  # the default holder is another one
        assert [h.doc_id for h in make_backend(config).search_batch(["letter"], 1)[0]] == ["a"]


def test_a_search_env_takes_its_index_from_the_holder_it_was_given(index, tmp_path):
    from toolgym_search_qa import SearchQAEnv

    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question": "Which letter?", "answer": "Alpha", "split": "train"}) + "\n")
    before = len(DEFAULT_BACKENDS)
    with SearchBackends() as backends:
        env = SearchQAEnv(index=index, questions=str(questions), search_backends=backends, split="train")
        env.reset()
        assert [h.doc_id for h in env.state.resources["search_client"].search_sync("letter")] == ["a"]
        assert len(backends) == 1 and len(DEFAULT_BACKENDS) == before
        assert pickle.loads(pickle.dumps(env)).search_backends is None
        env.close()
    with pytest.raises(SearchError, match="closed"):
        env.reset()
