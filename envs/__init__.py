"""Environments: the tool-use env contract, tools, tool-call parsing, conformance checks and interop.

The built-in environments themselves ship as packs (the repository's ``packs/`` folder).
"""

from __future__ import annotations

from toolgym.envs.base import EpisodeState, ToolEnv
from toolgym.envs.parsing import ParsedTurn, ToolCall, parse_action, parse_hermes, parse_llama3, parse_openai
from toolgym.envs.spaces import AssistantTurn, Chat
from toolgym.envs.task import ListTasks, Task, TaskSource
from toolgym.envs.text_env import TextEnv, make_text_env, register_text_env
from toolgym.envs.tools import Tool, ToolResult, as_tool, tool
from toolgym.envs.vector import StepResult, ToolEnvBatch

__all__ = [
    "AssistantTurn", "Chat", "EpisodeState", "ListTasks", "ParsedTurn", "StepResult", "Task", "TaskSource", "Tool",
    "ToolCall", "ToolEnv", "ToolEnvBatch", "ToolResult", "as_tool", "parse_action", "parse_hermes", "parse_llama3",
    "parse_openai", "TextEnv", "make_text_env", "register_text_env", "tool",
]
