"""Environments: the tool-use env contract, tools, tool-call parsing, conformance checks and interop.

The built-in environments themselves ship as packs (the repository's ``packs/`` folder).
"""

from __future__ import annotations

from toolgym.envs.base import EpisodeState, ToolEnv
from toolgym.envs.parsing import ParsedTurn, ToolCall, parse_action, parse_hermes, parse_llama3, parse_openai
from toolgym.envs.report import ToolOutcome, TurnReport
from toolgym.envs.spaces import AssistantTurn, Chat
from toolgym.envs.task import ListTasks, Task, TaskSource
from toolgym.envs.text_env import TextEnv, make_text_env, register_text_env
from toolgym.envs.tools import Tool, ToolResult, as_tool, tool
from toolgym.envs.vector import StepResult, ToolEnvBatch

__all__ = [
    "AssistantTurn", "Chat", "EpisodeState", "ListTasks", "ParsedTurn", "StepResult", "Task", "TaskSource", "Tool",
    "ToolCall", "ToolEnv", "ToolEnvBatch", "ToolOutcome", "ToolResult", "TurnReport", "as_tool", "parse_action", "parse_hermes", "parse_llama3",
    "parse_openai", "TextEnv", "make_text_env", "register_text_env", "tool",
]

# Env-facing tools over the components below envs (sandboxes, search), imported on first use so
# that ``import toolgym.envs`` loads neither: the ``python``/``shell`` and ``search``/``open`` tools
# themselves are in toolgym.envs.sandbox_tools and toolgym.envs.search_tools.
_LAZY = {"SANDBOX_TOOLS": "toolgym.envs.sandbox_tools", "SandboxResources": "toolgym.envs.sandbox_tools",
         "used_python": "toolgym.envs.sandbox_tools", "SEARCH_TOOLS": "toolgym.envs.search_tools",
         "used_search": "toolgym.envs.search_tools"}
__all__ += list(_LAZY)


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
