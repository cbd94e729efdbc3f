"""The tiny model's tokenizer is the same on every machine, whatever packs or services it has."""

from __future__ import annotations

import json

import toolgym
from toolgym.rollouts import tiny


def test_the_tokenizer_corpus_does_not_depend_on_the_installed_packs(monkeypatch):
    before = (tiny.corpus_digest(0), [t for t in tiny._corpus(0)][:50])
    # as if no pack were installed: nothing registered, no env can be built
    monkeypatch.setattr(toolgym, "registered", lambda: {})
    monkeypatch.setattr(toolgym, "make", lambda *a, **k: (_ for _ in ()).throw(AssertionError("env built")))
    after = (tiny.corpus_digest(0), [t for t in tiny._corpus(0)][:50])
    assert before == after
    assert len(tiny._env_chats()) > 100


def test_the_shipped_corpus_is_what_the_built_in_packs_say_now():
    # Fails when a built-in pack's prompts, tools or demonstrations change: regenerate the file with
    # toolgym.rollouts.tiny.write_corpus() and bump TINY_BUILD_VERSION.
    shipped = tiny._env_chats()
    live = [(json.loads(json.dumps(m)), json.loads(json.dumps(t))) for m, t in tiny.collect_env_chats(0)]
    assert shipped == live
    names = {tuple(t["function"]["name"] for t in tools) for _, tools in shipped}
    assert names == {("calculator",), ("search", "open"), ("python", "shell")}
