"""A real OpenEnv server (in-process, over its WebSocket protocol) run as a toolgym env."""

from __future__ import annotations

import random
import socket
import threading
import time

import pytest

import toolgym
from toolgym.envs.conformance import run_checks
from toolgym.envs.openenv_adapter import register_openenv

pytest.importorskip("openenv", reason="openenv-core is not installed (it pins pillow<13 through gradio)")
uvicorn = pytest.importorskip("uvicorn")

from openenv.core.env_server.http_server import create_fastapi_app  # noqa: E402
from openenv.core.env_server.interfaces import Environment  # noqa: E402
from openenv.core.env_server.types import Action, Observation, State  # noqa: E402


class GuessAction(Action):
    guess: int


class GuessObservation(Observation):
    feedback: str = ""


class GuessEnvironment(Environment):
    """Guess a number in 1..20: the reward is 1 for the right number."""

    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self):
        super().__init__()
        self._state = State(episode_id=None, step_count=0)
        self.target = 0

    def reset(self, seed=None, episode_id=None, **kwargs):
        self.target = random.Random(seed).randint(1, 20)
        self._state = State(episode_id=episode_id, step_count=0)
        return GuessObservation(feedback="Guess a number from 1 to 20.")

    def step(self, action, timeout_s=None, **kwargs):
        self._state.step_count += 1
        if action.guess == self.target:
            return GuessObservation(feedback="correct", done=True, reward=1.0)
        hint = "higher" if action.guess < self.target else "lower"
        return GuessObservation(feedback=f"{action.guess} is wrong, go {hint}", reward=0.0)

    @property
    def state(self):
        return self._state


@pytest.fixture(scope="module")
def server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_fastapi_app(GuessEnvironment, GuessAction, GuessObservation, max_concurrent_envs=64)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "the OpenEnv server did not start"
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    register_openenv("test/OpenEnvGuess-v0", url, max_turns=8)
    register_openenv("test/OpenEnvGuessFinal-v0", url, max_turns=8, reward_mode="final")
    yield url
    srv.should_exit = True
    thread.join(timeout=10)


def bisect(messages) -> str:
    import re

    low, high = 1, 20
    for m in messages:
        for n, hint in re.findall(r"(\d+) is wrong, go (higher|lower)", m.get("content") or ""):
            low, high = (int(n) + 1, high) if hint == "higher" else (low, int(n) - 1)
    return f'{{"guess": {(low + high) // 2}}}'


def test_episodes_reach_the_server_and_rewards_come_back(server):
    env = toolgym.make("test/OpenEnvGuess-v0").unwrapped
    try:
        obs, _ = env.reset(options={"task_index": 0})
        assert '"feedback": "Guess a number from 1 to 20."' in obs[-1]["content"] and '"guess"' in obs[-1]["content"]
        obs, reward, term, trunc, info = env.step("I think it is seven.")
        assert obs[-1]["content"].startswith("Invalid action") and info["env_info"]["invalid_action"]
        obs, reward, term, trunc, info = env.step('{"guess": "many"}')
        assert "VALIDATION_ERROR" in obs[-1]["content"] and not (term or trunc)
        while not (term or trunc):
            obs, reward, term, trunc, info = env.step(bisect(obs))
        assert term and reward == 1.0 and info["rubric"]["episode_return"] == 1.0
    finally:
        env.close()


@pytest.mark.parametrize("env_id", ["test/OpenEnvGuess-v0", "test/OpenEnvGuessFinal-v0"])
def test_conformance_checks_pass(server, env_id):
    report = run_checks(env_id)
    assert report.passed, {r.name: r.detail for r in report.results if not r.passed}


def test_rollout_worker_runs_server_episodes(server):
    from transformers import AutoTokenizer

    from toolgym.rollouts.engines.fake import ScriptedEngine
    from toolgym.rollouts.tiny import tiny_model_path
    from toolgym.rollouts.worker import RolloutConfig, RolloutRequest, RolloutWorker

    tok = AutoTokenizer.from_pretrained(tiny_model_path())
    worker = RolloutWorker(ScriptedEngine(tok, lambda ids, chat, i: bisect(chat.messages)),
                           lambda: toolgym.make("test/OpenEnvGuess-v0"), RolloutConfig(max_new_tokens=16))
    try:
        trajs = worker.run_sync([RolloutRequest({"task_index": i}, group_size=2) for i in range(3)])
    finally:
        worker.close()
    assert len(trajs) == 6 and all(t.error is None and t.reward == 1.0 and t.terminated for t in trajs)
