"""Strict config merging: defaults < YAML < key=value; unknown keys are errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from vitplas.config import ConfigError, config_to_dict, dump_config, load_config


@dataclass
class Optim:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 1e-3
    betas: tuple[float, ...] = (0.9, 0.999)


@dataclass
class Job:
    model: str = "tiny-random"
    train: list[str] = field(default_factory=lambda: ["mha"])
    steps: int = 10
    seed: int | None = None
    optim: Optim = field(default_factory=Optim)

    def validate(self) -> None:
        if self.steps <= 0:
            raise ConfigError(f"steps must be positive, got {self.steps}")


def test_defaults_then_yaml_then_overrides(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("steps: 20\noptim:\n  lr: 0.01\n")
    cfg = load_config(Job, path, ["optim.name=adamw", "train=[mha, fc1]", "seed=3"])
    assert cfg.steps == 20
    assert cfg.optim.lr == pytest.approx(0.01)
    assert cfg.optim.name == "adamw"
    assert cfg.optim.betas == (0.9, 0.999)
    assert cfg.train == ["mha", "fc1"]
    assert cfg.seed == 3


def test_int_is_accepted_for_float_and_string_becomes_list():
    cfg = load_config(Job, None, ["optim.lr=1", "train=mha"])
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == 1.0
    assert cfg.train == ["mha"]


def test_unknown_key_names_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) stpes.*known keys: model"):
        load_config(Job, None, ["stpes=3"])
    with pytest.raises(ConfigError, match=r"optim\.momentum.*known keys in optim: betas, lr, name"):
        load_config(Job, None, ["optim.momentum=0.9"])


def test_wrong_type_literal_and_validate_errors(tmp_path):
    with pytest.raises(ConfigError, match="'steps' must be int"):
        load_config(Job, None, ["steps=many"])
    with pytest.raises(ConfigError, match=r"choose one of \['sgd', 'adamw'\]"):
        load_config(Job, None, ["optim.name=lion"])
    with pytest.raises(ConfigError, match="steps must be positive, got 0"):
        load_config(Job, None, ["steps=0"])
    with pytest.raises(ConfigError, match="must look like key=value"):
        load_config(Job, None, ["steps"])


def test_missing_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Job, tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(Job, bad)


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(Job, None, ["optim.lr=0.5", "seed=7"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    again = load_config(Job, path)
    assert config_to_dict(again) == config_to_dict(cfg)


def test_same_config_check_ignores_runtime_keys_and_new_keys_at_default(tmp_path):
    import yaml

    from vitplas.config import check_same_config

    stored = config_to_dict(Job(steps=5))
    del stored["seed"]  # a key added to the dataclass after this run started
    stored = yaml.safe_load(yaml.safe_dump(stored))  # as the run folder's config.yaml holds it
    check_same_config(tmp_path, Job(steps=5), old=stored)  # seed=None is the default: same
    check_same_config(tmp_path, Job(steps=5, model="other"), {"model"}, stored)
    check_same_config(tmp_path, Job(steps=6, seed=3), old=None)  # no config yet: nothing to check
    with pytest.raises(ConfigError, match=r"different config \(seed: None -> 3, steps: 5 -> 6\)"):
        check_same_config(tmp_path, Job(steps=6, seed=3), old=stored)
