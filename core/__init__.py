"""toolgym: reinforcement-learning post-training of small language models on agentic tool use.

Example:
    >>> import toolgym
    >>> env = toolgym.make("toolgym/Arithmetic-v0")
    >>> obs, info = env.reset(seed=0)
    >>> obs[-1]["role"], info["tools"][0]["function"]["name"]
    ('user', 'calculator')
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from toolgym.errors import (
    ConfigError,
    EnvError,
    ErrorRecord,
    ModelError,
    SandboxError,
    ToolError,
    ToolgymError,
)
from toolgym.registry import (
    EnvSpec,
    declare_installed,
    env_class,
    load_packs,
    make,
    register,
    registered,
    spec,
)

declare_installed()  # gymnasium.make(id) works after `import toolgym`; packs load when made

try:
    __version__ = version("toolgym")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

__all__ = [
    "ConfigError", "EnvError", "EnvSpec", "ErrorRecord", "ModelError", "SandboxError", "ToolError", "ToolgymError",
    "__version__", "declare_installed", "env_class", "load_packs", "make", "register", "registered", "spec",
]
