"""Checkpoints: bit-identical resume, LoRA adapters, atomicity under SIGKILL, pointer recovery."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from toolgym.errors import ConfigError
from toolgym.trainers.checkpoint import (
    LATEST_POINTER,
    checkpoint_name,
    find_latest,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)

DATA = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))  # a fixed "dataset"


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(8, 16)
        self.drop = torch.nn.Dropout(0.3)  # consumes the torch RNG every step
        self.down = torch.nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.drop(torch.relu(self.up(x))))


def make_run(model: torch.nn.Module):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 4))
    return model, opt, sched


def train(model, opt, sched, steps: int, data_state: dict, sampler: torch.Generator) -> None:
    """Every step draws from all four RNG sources, so a missed one breaks the equality."""
    for _ in range(steps):
        idx = torch.randint(0, len(DATA), (4,), generator=sampler)  # data order: own generator
        x = DATA[idx] + torch.from_numpy(np.random.randn(4, 8)).float() * 0.1  # numpy augmentation
        target = x.sum(-1, keepdim=True) * random.uniform(0.5, 1.5)  # python RNG
        loss = torch.nn.functional.mse_loss(model(x), target)  # dropout: torch RNG
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        data_state["index"] += 4


def test_resume_is_bit_identical(tmp_path):
    seed_all(0)
    sampler = torch.Generator().manual_seed(123)
    model, opt, sched = make_run(Net())
    data_state = {"epoch": 0, "index": 0}
    train(model, opt, sched, 3, data_state, sampler)
    saved = save_checkpoint(tmp_path, 3, model, opt, sched, data_state=data_state,
                            generators={"sampler": sampler}, extra={"best": torch.tensor(0.5)})
    train(model, opt, sched, 5, data_state, sampler)
    straight = {k: v.clone() for k, v in model.state_dict().items()}

    seed_all(99)  # a fresh process would start from a different RNG state and init
    sampler2 = torch.Generator().manual_seed(7)
    model2, opt2, sched2 = make_run(Net())
    loaded = load_checkpoint(tmp_path, model2, opt2, sched2, generators={"sampler": sampler2})
    assert loaded.path == saved and loaded.step == 3
    assert loaded.data_state == {"epoch": 0, "index": 12}
    assert torch.equal(loaded.extra["best"], torch.tensor(0.5))
    resumed_state = dict(loaded.data_state)
    train(model2, opt2, sched2, 5, resumed_state, sampler2)
    assert resumed_state == data_state
    for name, value in model2.state_dict().items():
        assert torch.equal(value, straight[name]), name
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_resume_without_rng_restore_diverges(tmp_path):
    """The RNG states matter: skipping their restore changes the continuation."""
    seed_all(0)
    sampler = torch.Generator().manual_seed(123)
    model, opt, sched = make_run(Net())
    state = {"index": 0}
    train(model, opt, sched, 2, state, sampler)
    save_checkpoint(tmp_path, 2, model, opt, sched, generators={"sampler": sampler})
    train(model, opt, sched, 2, state, sampler)
    seed_all(5)
    model2, opt2, sched2 = make_run(Net())
    sampler2 = torch.Generator().manual_seed(123)
    load_checkpoint(tmp_path, model2, opt2, sched2, generators={"sampler": sampler2}, restore_rng=False)
    train(model2, opt2, sched2, 2, {"index": 0}, sampler2)
    assert not torch.equal(model2.up.weight, model.up.weight)


def test_peft_model_saves_only_the_adapter(tmp_path):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["up", "down"], lora_dropout=0.0)
    seed_all(0)
    model = peft.get_peft_model(Net(), config)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    for _ in range(2):
        opt.zero_grad()
        model(DATA[:8]).pow(2).mean().backward()
        opt.step()
    folder = save_checkpoint(tmp_path, 2, model, opt)
    assert (folder / "adapter" / "adapter_model.safetensors").is_file()
    assert not (folder / "model.pt").exists()

    seed_all(0)  # same base weights (they are not in the checkpoint), fresh adapter
    model2 = peft.get_peft_model(Net(), config)
    opt2 = torch.optim.SGD([p for p in model2.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    assert not torch.equal(model2.base_model.model.up.lora_B.default.weight,
                           model.base_model.model.up.lora_B.default.weight)
    load_checkpoint(folder, model2, opt2)
    for m, o in ((model, opt), (model2, opt2)):  # one more step uses the restored momentum
        torch.manual_seed(3)  # same dropout masks for both
        o.zero_grad()
        m(DATA[8:16]).pow(2).mean().backward()
        o.step()
    for (name, a), (_, b) in zip(model.named_parameters(), model2.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(ConfigError, match="PeftModel"):
        load_checkpoint(folder, Net())


def test_latest_pointer_and_fallback(tmp_path):
    model = torch.nn.Linear(2, 2)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == [checkpoint_name(2), checkpoint_name(3)]
    assert find_latest(tmp_path) == tmp_path / checkpoint_name(3)
    (tmp_path / checkpoint_name(3) / "meta.json").unlink()  # an incomplete folder is not a checkpoint
    assert find_latest(tmp_path) == tmp_path / checkpoint_name(2)
    (tmp_path / LATEST_POINTER).write_text("garbage\n")
    assert find_latest(tmp_path) == tmp_path / checkpoint_name(2)
    assert find_latest(tmp_path / "missing") is None
    with pytest.raises(ConfigError):
        load_checkpoint(tmp_path / "missing", model)


def test_saving_a_step_again_replaces_it(tmp_path):
    model = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path, 1, model)
    with torch.no_grad():
        model.weight.fill_(3.0)
    save_checkpoint(tmp_path, 1, model)
    fresh = torch.nn.Linear(2, 2)
    load_checkpoint(tmp_path, fresh)
    assert torch.all(fresh.weight == 3.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([checkpoint_name(1), LATEST_POINTER])


CHILD = textwrap.dedent("""
    import sys, time, pathlib, torch
    from toolgym.trainers.checkpoint import save_checkpoint
    run_dir, marker = sys.argv[1], pathlib.Path(sys.argv[2])
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(run_dir, 1, model, opt, data_state={"index": 1})
    with torch.no_grad():
        model.weight.add_(1.0)
    real_save = torch.save
    def stalled_save(obj, f, *args, **kwargs):  # the second save hangs after its first file
        real_save(obj, f, *args, **kwargs)
        marker.touch()
        time.sleep(120)
    torch.save = stalled_save
    save_checkpoint(run_dir, 2, model, opt, data_state={"index": 2})
""")


def test_sigkill_mid_save_keeps_previous_checkpoint(tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "mid-save"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(run_dir), str(marker)])
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.poll() is None, "child exited before reaching the second save"
            assert time.monotonic() < deadline, "child never reached the second save"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
    assert any(p.name.startswith(".tmp-") for p in run_dir.iterdir())  # the interrupted save's debris
    assert find_latest(run_dir) == run_dir / checkpoint_name(1)
    torch.manual_seed(0)
    expected = torch.nn.Linear(4, 4)
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loaded = load_checkpoint(run_dir, model, opt)
    assert loaded.step == 1 and loaded.data_state == {"index": 1}
    assert torch.equal(model.weight, expected.weight)
    save_checkpoint(run_dir, 2, model, opt)  # the next save clears the debris
    assert not any(p.name.startswith(".tmp-") for p in run_dir.iterdir())


def test_docstring_examples_run():
    import doctest

    import toolgym.trainers.checkpoint as checkpoint_module

    result = doctest.testmod(checkpoint_module)
    assert result.attempted > 0 and result.failed == 0
