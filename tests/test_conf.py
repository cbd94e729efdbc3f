"""Every YAML in conf/ composes into the typed TrainConfig and says how it is run."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from toolgym.trainers.config import TrainConfig, register_configs
from toolgym.trainers.losses import LOSSES

CONF = Path(__file__).resolve().parents[1] / "conf"
EXTRA = {"model/hf.yaml": ["model.name_or_path=some/model"]}


def all_yaml() -> list[str]:
    return sorted(str(p.relative_to(CONF)) for p in CONF.rglob("*.yaml"))


@pytest.mark.parametrize("rel", all_yaml())
def test_yaml_opens_with_its_command(rel):
    lines = [ln for ln in (CONF / rel).read_text().splitlines() if not ln.startswith("# @package")]
    assert lines[0].startswith("# toolgym train"), f"{rel} must open with the command that runs it"


@pytest.mark.parametrize("rel", all_yaml())
def test_every_config_composes(rel):
    register_configs()
    group, _, name = rel.removesuffix(".yaml").rpartition("/")
    overrides = [f"{group}={name}"] if group else []
    overrides += EXTRA.get(rel, [])
    with initialize_config_module(config_module="toolgym.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=False)
    cfg.run_dir = "runs/test"  # ${hydra:runtime.output_dir} only resolves inside a Hydra run
    typed = OmegaConf.to_object(cfg)
    assert isinstance(typed, TrainConfig)
    assert typed.trainer.loss.loss_type in LOSSES


def test_bad_override_is_a_clear_error():
    register_configs()
    with initialize_config_module(config_module="toolgym.conf", version_base="1.3"):
        with pytest.raises(Exception, match="steps"):
            compose(config_name="train", overrides=["trainer.steps=not_a_number"])


def test_another_env_id_on_the_command_line_gets_no_kwargs_of_the_default_env(caplog):
    register_configs()
    with initialize_config_module(config_module="toolgym.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["env.id=toolgym/SearchQA-v0"])
        kept = compose(config_name="train", overrides=["env=arithmetic"])
        opted = compose(config_name="train", overrides=["env.id=toolgym/SearchQA-v0",
                                                        "env.kwargs_for=toolgym/SearchQA-v0"])
    assert dict(cfg.env.kwargs) and cfg.env.kwargs_for == "toolgym/Arithmetic-v0"
    env = OmegaConf.to_object(cfg.env)
    assert env.env_kwargs() == {} and "dropping env.kwargs" in caplog.text
    assert OmegaConf.to_object(kept.env).env_kwargs() == {"difficulty": 2}
    assert OmegaConf.to_object(opted.env).env_kwargs() == dict(opted.env.kwargs)
