"""Tests import the installed toolgym, never the checkout's folders as top-level packages.

``python -m pytest`` puts the current directory first on ``sys.path``; from the checkout root that
would let its ``verifiers/`` folder (``toolgym.verifiers`` once installed) shadow the ``verifiers``
distribution. The checkout root is dropped from ``sys.path`` here, before any test module is
imported; pytest itself adds nothing (``--import-mode=importlib`` in pyproject.toml).
"""

from __future__ import annotations

import os
import sys

_ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _ROOT]
