"""ResearchCode-v0: generated questions, oracle demonstrations on both sandbox backends, rewards, checks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from fractions import Fraction

import pytest
from toolgym_research import register
from toolgym_research.env import ResearchCodeEnv, numeric_exact, oracle_code
from toolgym_research.tasks import TEMPLATES, research_questions

import toolgym
from toolgym.envs.conformance import probe_turns, replay, run_checks
from toolgym.errors import ConfigError
from toolgym.sandboxes import ExecutorPool, SandboxConfig, open_sandbox_pool
from toolgym.sandboxes import testing as sandbox_testing
from toolgym.search.client import close_backends
from toolgym.search.world import cached_world

SEED, SIZE = 3, 120
ENV_ID = "toolgym/ResearchCode-v0"


def small_config(backend: str) -> SandboxConfig:
    return sandbox_testing.small_config(backend, pool_size=1, max_hosts=6, workdir_mb=16, file_size_mb=4)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield str(tmp_path_factory.mktemp("research-cache"))
    close_backends()


@pytest.fixture(scope="module")
def local_pool() -> Iterator[ExecutorPool]:
    pool = open_sandbox_pool(small_config("local"))
    yield pool
    pool.close()


def make_env(cache_dir: str, pool: ExecutorPool, **kwargs: object) -> ResearchCodeEnv:
    options = dict(seed=SEED, num_entities=SIZE, num_train_tasks=60, num_eval_tasks=20, cache_dir=cache_dir,
                   engine="fts5", sandbox_pool=pool)
    return ResearchCodeEnv(**{**options, **kwargs})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def env(cache_dir: str, local_pool: ExecutorPool) -> Iterator[ResearchCodeEnv]:
    e = make_env(cache_dir, local_pool)
    yield e
    e.close()


def call(name: str, **arguments: object) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def final_reward(env: ResearchCodeEnv, task_id: str, turns: list[str]) -> dict:
    env.reset(options={"task_id": task_id})
    for turn in turns:
        _, _, terminated, truncated, info = env.step(turn)
        if terminated or truncated:
            return info
    raise AssertionError("episode did not end")


# ---- questions ---------------------------------------------------------------------------------

def _population(world, ids):
    return [world.entities[i].attrs["population"] for i in ids]


def independent_answer(world, q) -> Fraction:
    """Each kind's answer recomputed from the world, without the question's own expression."""
    e = world.entities
    a = q.path
    if q.kind == "year_gap":
        return Fraction(e[a[1]].attrs["born"] - e[a[0]].attrs["founded"])
    if q.kind == "founder_age":
        assert e[a[0]].attrs["founder"] == a[1]
        return Fraction(e[a[0]].attrs["founded"] - e[a[1]].attrs["born"])
    if q.kind == "population_sum":
        return Fraction(sum(_population(world, a)))
    if q.kind == "population_range":
        return Fraction(max(_population(world, a)) - min(_population(world, a)))
    if q.kind == "mean_birth_year":
        return Fraction(sum(e[i].attrs["born"] for i in a), 4)
    if q.kind == "capital_gap":
        assert e[a[0]].attrs["capital"] == a[1] and e[a[2]].attrs["capital"] == a[3]
        return Fraction(e[a[1]].attrs["population"] - e[a[3]].attrs["population"])
    if q.kind == "hq_product":
        assert e[a[0]].attrs["headquarters"] == a[1]
        return Fraction(e[a[1]].attrs["population"] * e[a[0]].attrs["founded"])
    if q.kind == "filtered_sum":
        threshold = int(q.text.split("before the year ")[1].split(".")[0])
        chosen = [e[i].attrs["population"] for i in a if e[i].attrs["founded"] < threshold]
        assert 0 < len(chosen) < len(a)
        return Fraction(sum(chosen))
    assert q.kind == "rank_lookup"
    rank = 1 if "second most" in q.text else 2
    ranked = sorted(a, key=lambda i: -e[i].attrs["population"])
    return Fraction(e[ranked[rank]].attrs["founded"])


def test_questions_are_deterministic_disjoint_and_correct():
    qs = research_questions(SEED, SIZE, 20, 200)
    assert qs == research_questions.__wrapped__(SEED, SIZE, 20, 200)  # not just the lru_cache
    assert qs["eval"] == research_questions(SEED, SIZE, 20, 50)["eval"]  # eval does not depend on the train size
    assert qs["eval"] != research_questions(SEED + 1, SIZE, 20, 200)["eval"]
    assert len(qs["eval"]) == 20 and len(qs["train"]) == 200
    keys = [q.key for q in qs["eval"] + qs["train"]]
    texts = [q.text for q in qs["eval"] + qs["train"]]
    assert len(set(keys)) == len(keys) and len(set(texts)) == len(texts)
    assert {q.kind for q in qs["train"]} == set(TEMPLATES)
    world = cached_world(SEED, SIZE)
    for q in qs["eval"] + qs["train"]:
        assert Fraction(q.answer) == independent_answer(world, q), q
        for f in q.facts:
            assert world.entities[f.entity_id].attrs[f.attr] == f.value and f.entity_id in q.path


def test_env_splits_are_disjoint_and_stable(env, cache_dir, local_pool):
    evals = make_env(cache_dir, local_pool, split="eval")
    again = make_env(cache_dir, local_pool)
    train = [env.tasks[i] for i in range(len(env.tasks))]
    assert train == [again.tasks[i] for i in range(len(again.tasks))]
    eval_prompts = {evals.tasks[i].prompt for i in range(len(evals.tasks))}
    assert len(train) == 60 and len(eval_prompts) == 20
    assert not eval_prompts & {t.prompt for t in train}
    assert len(make_env(cache_dir, local_pool, size=7).tasks) == 7  # no episode: holds no sandbox
    evals.close()
    again.close()


def test_big_numbers_make_mental_arithmetic_unreliable():
    qs = research_questions(0, 1000, 200, 1)["eval"]
    big = [q for q in qs if abs(Fraction(q.answer)) >= 100_000 or Fraction(q.answer).denominator > 1]
    assert len(big) >= len(qs) // 2  # most answers are six-plus digits or exact fractions
    assert max(len(q.facts) for q in qs) == 8


# ---- demonstrations and rewards ----------------------------------------------------------------

@pytest.mark.parametrize("split", ["train", "eval"])
def test_every_demonstration_scores_max_with_the_local_sandbox(env, cache_dir, local_pool, split):
    env = env if split == "train" else make_env(cache_dir, local_pool, split="eval")
    try:
        check_every_demonstration(env)
    finally:
        if split == "eval":
            env.close()  # an env holds its last episode's sandbox until closed


def check_every_demonstration(env: ResearchCodeEnv) -> None:
    for i in range(len(env.tasks)):
        task = env.tasks[i]
        demo = env.demonstration(task)
        assert demo is not None, task.prompt
        assert [m["name"] for m in demo if m["role"] == "tool"][-1] == "python"
        reward, info = replay(env, demo, task.id)
        assert reward == env.reward_bounds[1] == 1.0, (task.id, info)
        assert info["rubric"] == {"numeric_exact": 1.0, "used_search": 1.0, "used_python": 1.0}
        # the env's own tools give the chat the demonstration recorded
        start = len(env.initial_messages(task))
        assert [m["content"] for m in env.state.messages[start:] if m["role"] == "tool"] == \
               [m["content"] for m in demo[start:] if m["role"] == "tool"]


@pytest.mark.docker
def test_demonstrations_score_max_with_docker(cache_dir):
    sandbox_testing.require_docker()
    pool = open_sandbox_pool(small_config("docker"))
    try:
        assert pool.backend == "docker"
        env = make_env(cache_dir, pool)
        for i in range(4):
            task = env.tasks[i]
            demo = env.demonstration(task)
            assert demo is not None, task.prompt
            reward, info = replay(env, demo, task.id)
            assert reward == 1.0 and info["rubric"]["used_python"] == 1.0, (task.id, info)
        env.close()
    finally:
        pool.close()


def test_no_demonstration_for_a_fact_the_articles_do_not_state(env):
    task = env.tasks[0]
    facts = [{**f, "value": f["value"] + 1} for f in task.metadata["facts"]]
    forged = replace(task, metadata={**task.metadata, "facts": facts})
    assert env.demonstration(task) is not None and env.demonstration(forged) is None


def test_wrong_missing_and_approximate_answers_score_zero(env):
    task = next(env.tasks[i] for i in range(len(env.tasks)) if env.tasks[i].metadata["kind"] == "hq_product")
    value = int(task.answer)
    assert final_reward(env, task.id, [f"Answer: {value:,}"])["final_reward"] == 1.0  # formatting is free
    for wrong in (f"Answer: {value + 1}", f"Answer: {value * 10}", f"Answer: {round(value, -3) + 1000}",
                  f"Answer: {value * (1 + 1e-7):.1f}", "Answer: unknown", "I could not find it.", ""):
        info = final_reward(env, task.id, [wrong])
        assert info["final_reward"] == 0.0 and info["rubric"]["used_search"] == 0.0, wrong
    for name, turns in probe_turns(env, task).items():
        assert final_reward(env, task.id, [*turns, *[""] * env.max_turns])["final_reward"] == 0.0, name


def test_numeric_exact_reads_formats_but_not_estimates():
    assert numeric_exact("1821.25", "1821.25") == numeric_exact("1,821.250", "1821.25") == 1.0
    assert numeric_exact("1821", "1821.25") == numeric_exact("1821.3", "1821.25") == 0.0
    assert numeric_exact(None, "5") == 0.0


def test_tools_work_together_in_one_episode(env):
    task = env.tasks[0]
    first = task.metadata["path"][0]
    env.reset(options={"task_id": task.id})
    obs, *_ = env.step(call("open", doc_id=first))
    assert obs[-1]["content"].startswith(f"[{first}]")
    obs, *_ = env.step(call("python", code="x = 10 ** 12 + 7"))
    obs, *_ = env.step(call("python", code="print(x * 3)"))
    assert obs[-1]["content"] == "3000000000021\n"  # the session persists across calls
    obs, *_ = env.step(call("python", code="1 / 0"))
    assert "ZeroDivisionError" in obs[-1]["content"]
    obs, _, terminated, _, info = env.step(call("search", query=""))
    assert not terminated and obs[-1]["content"].startswith("Error")
    _, _, terminated, _, info = env.step(f"Answer: {task.answer}")
    assert terminated and info["rubric"] == {"numeric_exact": 1.0, "used_search": 1.0, "used_python": 1.0}
    env.reset(options={"task_id": task.id})  # a new episode gets a fresh session
    obs, *_ = env.step(call("python", code="print('x' in globals())"))
    assert obs[-1]["content"] == "False\n"


def test_oracle_code_prints_the_answer(env):
    task = env.tasks[0]
    code = oracle_code(task)
    assert code.count("\n") == len(task.metadata["facts"]) and code.endswith(f"print({task.metadata['expression']})")


def test_bad_options_are_config_errors(cache_dir, local_pool):
    with pytest.raises(ConfigError, match="splits"):
        make_env(cache_dir, local_pool, split="test")
    with pytest.raises(ConfigError, match="unknown search option"):
        make_env(cache_dir, local_pool, search={"bakend": "server"})
    with pytest.raises(ConfigError, match="at least 1"):
        make_env(cache_dir, local_pool, num_eval_tasks=0)
    with pytest.raises(ConfigError, match="sandbox_config"):
        make_env(cache_dir, None, sandbox_config={"backnd": "local"})
    env = make_env(cache_dir, None, sandbox_config={"backend": "local", "pool_size": 1})
    assert env.sandbox_config == SandboxConfig(backend="local", pool_size=1)
    env.close()


# ---- registry, conformance, rollouts -----------------------------------------------------------

def test_registered_and_passes_conformance(cache_dir):
    register()
    spec = toolgym.registered()[ENV_ID]
    assert spec.pack == "toolgym-research" and spec.entry_point == "toolgym_research.env:ResearchCodeEnv"
    report = run_checks(ENV_ID, seed=SEED, num_entities=SIZE, num_train_tasks=60, num_eval_tasks=20,
                        cache_dir=cache_dir, engine="fts5", sandbox_config=small_config("local"))
    failed = [(r.name, r.detail) for r in report.results if not r.passed]
    assert not failed and len(report.results) >= 7
    assert "5 demonstrations scored the maximum" in next(r.detail for r in report.results
                                                         if r.name == "oracle_demonstrations")


def test_scripted_rollout_through_the_worker(env, cache_dir, local_pool):
    from transformers import AutoTokenizer

    from toolgym.rollouts.engines.fake import ScriptedEngine
    from toolgym.rollouts.tiny import tiny_model_path
    from toolgym.rollouts.worker import RolloutConfig, RolloutRequest, RolloutWorker

    tasks = [env.tasks[i] for i in range(2)]
    demos = {t.prompt: [m["content"] for m in env.demonstration(t) if m["role"] == "assistant"] for t in tasks}

    def oracle(prompt_ids, chat, index):
        user = next(m["content"] for m in chat.messages if m["role"] == "user")
        turn = sum(m["role"] == "assistant" for m in chat.messages)
        return demos[user][turn]

    engine = ScriptedEngine(AutoTokenizer.from_pretrained(tiny_model_path()), oracle)
    worker = RolloutWorker(engine, lambda: make_env(cache_dir, local_pool),
                           RolloutConfig(max_total_tokens=16_384, max_new_tokens=512))
    try:
        trajs = worker.run_sync([RolloutRequest({"task_id": t.id}) for t in tasks])
    finally:
        worker.close()  # pooled envs hold their last episode's sandbox
    assert [t.task_id for t in trajs] == [t.id for t in tasks]
    for traj, task in zip(trajs, tasks, strict=True):
        assert traj.error is None and traj.reward == 1.0 and traj.terminated, (traj.error, traj.rubric)
        assert traj.rubric["used_python"] == 1.0 and len(traj.turns) == len(demos[task.prompt])


def test_tiny_model_rollouts_end_cleanly(cache_dir, local_pool):
    from toolgym.rollouts.engines.hf import HFEngine
    from toolgym.rollouts.tiny import tiny_model_path
    from toolgym.rollouts.worker import RolloutConfig, RolloutRequest, RolloutWorker

    engine = HFEngine.from_pretrained(tiny_model_path(), device="cpu")
    # the untrained model writes noise: each episode must still end with a reward in range, not an error
    cfg = RolloutConfig(max_new_tokens=16, max_turns=2, max_total_tokens=4096)
    worker = RolloutWorker(engine, lambda: make_env(cache_dir, local_pool), cfg)
    try:
        trajs = worker.run_sync([RolloutRequest({"task_index": 0}, group_size=2)])
    finally:
        worker.close()
        engine.close()
    assert len(trajs) == 2
    for t in trajs:
        assert t.error is None, t.error
        assert 0.0 <= t.reward <= 1.0 and set(t.rubric) == {"numeric_exact", "used_search", "used_python"}
