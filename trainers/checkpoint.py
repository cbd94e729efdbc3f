"""Atomic training checkpoints that resume bit-identically.

A checkpoint holds everything the next step depends on: model weights (only the LoRA adapter for a
``peft.PeftModel``), optimizer and LR-scheduler state, the Python/NumPy/torch (and CUDA) RNG
states, any extra ``torch.Generator`` s, the data position and the step.

Layout under ``run_dir``::

    step_00000040/        one complete checkpoint
        model.pt | adapter/   optimizer.pt  scheduler.pt  rng.pt  extra.pt
        meta.json         written last: a folder without it is not a checkpoint
    latest                text file naming the newest complete checkpoint folder

Atomicity: a checkpoint is written into a hidden ``.tmp-*`` folder, flushed to disk, and only
then renamed to ``step_*`` (a rename within one filesystem is atomic); the ``latest`` pointer is
replaced the same way. A process killed at any moment leaves the previous checkpoint intact and
findable; leftovers of an interrupted save are removed by the next save. One writer per
``run_dir`` is assumed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from toolgym.errors import ConfigError

CHECKPOINT_SCHEMA_VERSION = 1
LATEST_POINTER = "latest"
STEP_PREFIX = "step_"
TMP_PREFIX = ".tmp-"


@dataclass
class CheckpointMeta:
    """What a checkpoint's ``meta.json`` records (JSON-serialisable).

    Attributes:
        step: Optimizer steps completed when the checkpoint was taken.
        data_state: The data position (e.g. ``{"epoch": 1, "index": 96}``); JSON values only.
        model_format: ``"state_dict"`` (``model.pt``) or ``"peft_adapter"`` (``adapter/``).
        created_unix: Wall-clock time of the save.
        schema_version: Layout version of the checkpoint folder.
    """

    step: int
    data_state: dict[str, Any] = field(default_factory=dict)
    model_format: str = "state_dict"
    created_unix: float = 0.0
    schema_version: int = CHECKPOINT_SCHEMA_VERSION


@dataclass
class LoadedCheckpoint:
    """Result of :func:`load_checkpoint`: the metadata, the folder, and the extra objects saved."""

    meta: CheckpointMeta
    path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def step(self) -> int:
        return self.meta.step

    @property
    def data_state(self) -> dict[str, Any]:
        return self.meta.data_state


# --------------------------------------------------------------------------------------------
# RNG state
# --------------------------------------------------------------------------------------------


def capture_rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """The global RNG states (and those of named generators) in a ``weights_only``-loadable form."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
    }
    return state


def restore_rng_state(state: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None,
                      include_global: bool = True) -> None:
    """Inverse of :func:`capture_rng_state`; ``include_global=False`` restores only ``generators``."""
    if include_global:
        random.setstate(_as_tuples(state["python"]))
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
    for key, gen in (generators or {}).items():
        if key not in state["generators"]:
            raise ConfigError(f"checkpoint has no state for generator {key!r}")
        gen.set_state(state["generators"][key])


def _as_tuples(x: Any) -> Any:
    # random.setstate insists on tuples; serialisers may hand back lists.
    return tuple(_as_tuples(v) for v in x) if isinstance(x, list | tuple) else x


# --------------------------------------------------------------------------------------------
# Model weights: full state dict, or only the adapter of a PEFT model
# --------------------------------------------------------------------------------------------


def _is_peft(model: torch.nn.Module) -> bool:
    # peft is optional and slow to import: a model can only be a PeftModel if peft is loaded.
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def _save_model(model: torch.nn.Module, folder: Path) -> str:
    if _is_peft(model):
        adapter = model.active_adapter
        model.save_pretrained(str(folder / "adapter"), selected_adapters=[adapter])
        return "peft_adapter"
    _save_tensor_file(model.state_dict(), folder / "model.pt")
    return "state_dict"


def _load_model(model: torch.nn.Module, folder: Path, fmt: str, map_location: Any) -> None:
    if fmt == "peft_adapter":
        if not _is_peft(model):
            raise ConfigError(f"{folder} holds a LoRA adapter; load it into a peft.PeftModel")
        from peft.utils import load_peft_weights, set_peft_model_state_dict

        adapter = model.active_adapter
        path = folder / "adapter" if adapter == "default" else folder / "adapter" / adapter
        weights = load_peft_weights(str(path), device=str(map_location))
        result = set_peft_model_state_dict(model, weights, adapter_name=adapter)
        if result.unexpected_keys:
            raise ConfigError(f"adapter in {folder} does not fit the model: {result.unexpected_keys[:3]}")
        return
    if _is_peft(model):
        raise ConfigError(f"{folder} holds a full state dict, but the model is a PeftModel")
    model.load_state_dict(torch.load(folder / "model.pt", map_location=map_location, weights_only=True))


# --------------------------------------------------------------------------------------------
# Durable, atomic file system steps
# --------------------------------------------------------------------------------------------


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_tensor_file(obj: Any, path: Path) -> None:
    torch.save(obj, path)
    _fsync(path)


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_tree(folder: Path) -> None:
    # Files written by libraries (peft's save_pretrained) were not flushed by us.
    for root, _dirs, files in os.walk(folder):
        for name in files:
            _fsync(Path(root) / name)
        _fsync(Path(root))


def _replace_pointer(run_dir: Path, name: str) -> None:
    tmp = run_dir / f"{TMP_PREFIX}{LATEST_POINTER}-{uuid.uuid4().hex}"
    _write_text(tmp, name + "\n")
    os.replace(tmp, run_dir / LATEST_POINTER)
    _fsync(run_dir)


def _remove_leftovers(run_dir: Path) -> None:
    for stale in run_dir.glob(f"{TMP_PREFIX}*"):
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def checkpoint_name(step: int) -> str:
    """Folder name of the checkpoint at ``step`` (zero-padded so names sort by step).

    Example:
        >>> checkpoint_name(40)
        'step_00000040'
    """
    return f"{STEP_PREFIX}{step:08d}"


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    data_state: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
    keep_last: int | None = None,
) -> Path:
    """Atomically write a checkpoint of the training state and point ``latest`` at it.

    Args:
        run_dir: Folder holding this run's checkpoints (created if missing).
        step: Optimizer steps completed.
        model: The model; for a ``peft.PeftModel`` only its active adapter is saved.
        optimizer: Optimizer whose ``state_dict`` to save.
        scheduler: LR scheduler (anything with ``state_dict``/``load_state_dict``).
        data_state: JSON-serialisable data position.
        extra: Further ``torch.save``-able state (tensors, dicts, numbers), e.g. a GradScaler's.
        generators: Named ``torch.Generator`` s (a sampler's, a dropout generator's) to restore.
        keep_last: Delete all but this many newest checkpoints after a successful save.

    Returns:
        The checkpoint folder.
    """
    if keep_last is not None and keep_last < 1:
        raise ConfigError(f"keep_last must be at least 1, got {keep_last}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(run_dir)
    tmp = run_dir / f"{TMP_PREFIX}{checkpoint_name(step)}-{uuid.uuid4().hex}"
    tmp.mkdir()
    meta = CheckpointMeta(step=step, data_state=dict(data_state or {}), created_unix=time.time())
    meta.model_format = _save_model(model, tmp)
    _save_tensor_file(optimizer.state_dict() if optimizer else None, tmp / "optimizer.pt")
    _save_tensor_file(scheduler.state_dict() if scheduler else None, tmp / "scheduler.pt")
    _save_tensor_file(capture_rng_state(generators), tmp / "rng.pt")
    _save_tensor_file(dict(extra or {}), tmp / "extra.pt")
    _write_text(tmp / "meta.json", json.dumps(asdict(meta), indent=2))  # last: marks completeness
    _fsync_tree(tmp)
    final = run_dir / checkpoint_name(step)
    if final.exists():  # saving a step again (e.g. after resuming): move the old copy aside first
        final.rename(run_dir / f"{TMP_PREFIX}old-{uuid.uuid4().hex}")
    tmp.rename(final)
    _fsync(run_dir)
    _replace_pointer(run_dir, final.name)
    _remove_leftovers(run_dir)
    if keep_last is not None:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old)
    return final


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoint folders of ``run_dir``, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.glob(f"{STEP_PREFIX}*") if (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def find_latest(run_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint of ``run_dir``, or None if there is none.

    Trusts the ``latest`` pointer when it names a complete checkpoint, else falls back to the
    highest-numbered complete folder (a pointer can be stale if a save died between steps).
    """
    run_dir = Path(run_dir)
    pointer = run_dir / LATEST_POINTER
    if pointer.is_file():
        target = run_dir / pointer.read_text(encoding="utf-8").strip()
        if target.name.startswith(STEP_PREFIX) and (target / "meta.json").is_file():
            return target
    complete = list_checkpoints(run_dir)
    return complete[-1] if complete else None


def load_checkpoint(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
    restore_rng: bool = True,
    map_location: str | torch.device = "cpu",
) -> LoadedCheckpoint:
    """Restore training state in place from a checkpoint folder (or a run folder: its latest).

    Args:
        path: A ``step_*`` folder, or a run folder whose latest checkpoint to load.
        model: Receives the weights (a PeftModel receives the adapter).
        optimizer: Receives the optimizer state, if given (it must have been saved).
        scheduler: Receives the scheduler state, if given.
        generators: Named generators to restore, as passed to :func:`save_checkpoint`.
        restore_rng: Also restore the global Python/NumPy/torch/CUDA RNG states.
        map_location: Where to load tensors (optimizer state follows its parameters anyway).

    Returns:
        Metadata (step, data position) and the ``extra`` objects.
    """
    folder = Path(path)
    if not (folder / "meta.json").is_file():
        latest = find_latest(folder)
        if latest is None:
            raise ConfigError(f"no complete checkpoint in {folder}")
        folder = latest
    raw = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    if raw.get("schema_version") != CHECKPOINT_SCHEMA_VERSION:
        raise ConfigError(f"{folder}: checkpoint schema {raw.get('schema_version')}, "
                          f"expected {CHECKPOINT_SCHEMA_VERSION}")
    meta = CheckpointMeta(**raw)
    _load_model(model, folder, meta.model_format, map_location)
    for obj, name in ((optimizer, "optimizer.pt"), (scheduler, "scheduler.pt")):
        if obj is not None:
            state = torch.load(folder / name, map_location=map_location, weights_only=True)
            if state is None:
                raise ConfigError(f"{folder} has no {name.removesuffix('.pt')} state")
            obj.load_state_dict(state)
    restore_rng_state(torch.load(folder / "rng.pt", weights_only=True), generators, include_global=restore_rng)
    extra = torch.load(folder / "extra.pt", map_location=map_location, weights_only=True)
    return LoadedCheckpoint(meta=meta, path=folder, extra=extra)

