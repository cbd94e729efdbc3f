"""The search index of a generated encyclopedia, built once per (seed, size, engine) and cached.

Environments that search the fictional world of :mod:`toolgym.search.world` share these
indexes: many workers may ask for the same one at once, so one builds it under a file lock and
the others wait and reuse it.
"""

from __future__ import annotations

import fcntl
from pathlib import Path

from toolgym.paths import cache_path
from toolgym.search.engines import available_engine
from toolgym.search.index import build_index
from toolgym.search.world import WORLD_VERSION, articles, cached_world


def world_index(seed: int, num_entities: int, cache_dir: Path | None = None, engine: str | None = None) -> Path:
    """The index of a generated encyclopedia, built once and reused (safe across processes).

    Args:
        seed: World seed.
        num_entities: World size.
        cache_dir: Cache root (default ``$TOOLGYM_CACHE`` or ``~/.cache/toolgym``).
        engine: Search engine (default: the best installed one).

    Example:
        >>> import tempfile
        >>> path = world_index(0, 40, Path(tempfile.mkdtemp()), engine="fts5")
        >>> (path / "manifest.json").is_file()
        True
    """
    engine = engine or available_engine()
    root = (cache_dir or cache_path()) / "search_qa"
    path = root / f"world-v{WORLD_VERSION}-seed{seed}-n{num_entities}-{engine}"
    if (path / "manifest.json").is_file():
        return path
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # many workers may start at once: one builds, the rest wait
        if not (path / "manifest.json").is_file():
            build_index(articles(cached_world(seed, num_entities)), path, engines=[engine], overwrite=True)
    return path
