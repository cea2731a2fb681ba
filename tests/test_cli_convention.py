"""One CLI convention: [CONFIG.yaml] key=value + flags on one dataclass; help from its comments."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from typer.testing import CliRunner

from vitplas.cli import app
from vitplas.cli.config_cmd import COMMAND_KIND, KINDS, config_class
from vitplas.cli.keys import config_keys, field_comments, merge_flags, split_args
from vitplas.config import ConfigError, config_from_dict, config_to_dict, load_config
from vitplas.training.config import FinetuneConfig, load_finetune_config

runner = CliRunner()


@dataclasses.dataclass
class _Demo:
    a: int = 1  # the a
    b: list[str] = dataclasses.field(default_factory=lambda: ["x"])  # the b,
    # over two lines

    # a heading after a blank line belongs to no key
    c: str | None = None


def test_field_comments_follow_the_rule():
    assert field_comments(_Demo) == {"a": "the a", "b": "the b, over two lines"}
    keys = {k.name: k for k in config_keys(_Demo)}
    assert keys["b"].default == ["x"] and keys["b"].type == "list of str"
    assert keys["c"].type == "str or null" and keys["c"].help == ""


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_key_has_help(kind):
    missing = [k.name for k in config_keys(config_class(kind)) if not k.help]
    assert missing == [], f"{kind}: add a # comment on the field's line for {missing}"


@pytest.mark.parametrize("kind", list(KINDS))
def test_config_show_is_yaml_that_loads_back_to_the_defaults(kind, tmp_path):
    result = runner.invoke(app, ["config", "show", kind])
    assert result.exit_code == 0, result.output
    path = tmp_path / f"{kind}.yaml"
    path.write_text(result.output)
    data = yaml.safe_load(result.output)
    cls = config_class(kind)
    assert set(data) == {f.name for f in dataclasses.fields(cls)}
    if kind == "sweep":  # a spec needs a name and a dataset to validate
        data |= {"name": "demo", "base": {"dataset": "digits"}}
        path.write_text(yaml.safe_dump(data))
    loaded = load_config(cls, path)
    expected = config_from_dict(
        cls, {k: data[k] for k in ("name", "base")} if kind == "sweep" else {}
    )
    assert config_to_dict(loaded) == config_to_dict(expected)
    assert "# " in result.output  # commented


def test_config_show_unknown_kind_names_the_known_ones():
    result = runner.invoke(app, ["config", "show", "nope"])
    assert result.exit_code == 2
    assert "config kind 'nope' is unknown; choose plasticity, bounds" in result.output


@pytest.mark.parametrize("command", sorted(COMMAND_KIND))
def test_help_lists_every_key_with_its_default(command):
    result = runner.invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for key in config_keys(config_class(COMMAND_KIND[command])):
        assert f"  {key.name}=" in result.output, f"{command} --help lacks {key.name}"
    assert "[--" in result.output or command in ("status", "aggregate", "report")


def test_plasticity_help_shows_default_type_help_and_flag():
    out = runner.invoke(app, ["plasticity", "--help"], terminal_width=200).output
    line = next(s for s in out.splitlines() if s.startswith("  num_workers="))
    assert line.split() == [
        "num_workers=0",
        "(int)",
        "DataLoader",
        "worker",
        "processes",
        "[--workers]",
    ]


def test_split_args_and_merge_flags():
    assert split_args(["a.yaml", "x=1", "y=[1, 2]"]) == ("a.yaml", ["x=1", "y=[1, 2]"])
    with pytest.raises(ConfigError, match=r"argument 'oops' is neither key=value nor a \.yaml"):
        split_args(["oops"])
    assert merge_flags(["lr=0.1"], {"seed": 3, "train": "mha,fc1", "steps": None}) == [
        "lr=0.1",
        "seed=3",
        "train=mha,fc1",
    ]
    with pytest.raises(ConfigError, match=r"'lr' is given twice, as --lr and as lr=0\.1"):
        merge_flags(["lr=0.1"], {"lr": 0.2})
    names = {"num_workers": "--workers"}
    with pytest.raises(ConfigError, match="as --workers and as num_workers=2"):
        merge_flags(["num_workers=2"], {"num_workers": 1}, names)


def test_flag_and_key_set_the_same_field(monkeypatch):
    """plasticity: --pairs and pairs= reach PlasticityConfig.pairs; both at once exit 2."""
    import vitplas.jobs.lifecycle as lifecycle

    seen = []
    monkeypatch.setattr(lifecycle, "run_job", lambda job, cfg, *a, **k: seen.append(cfg) or {})
    monkeypatch.setattr("vitplas.jobs.render.plasticity", lambda result, cfg: None)
    for args in (["--pairs", "7"], ["pairs=7"]):
        assert runner.invoke(app, ["plasticity", *args, "--out", "x"]).exit_code == 0
    assert [c.pairs for c in seen] == [7, 7]
    result = runner.invoke(app, ["plasticity", "pairs=7", "--pairs", "8"])
    assert result.exit_code == 2
    assert "'pairs' is given twice, as --pairs and as pairs=7; give it once" in result.output
    result = runner.invoke(app, ["plasticity", "pairz=7"])
    assert result.exit_code == 2 and "unknown config key(s) pairz" in result.output


def test_finetune_flags_conflict_with_keys():
    result = runner.invoke(app, ["finetune", "lr=0.1", "--lr", "0.2"])
    assert result.exit_code == 2
    assert "'lr' is given twice, as --lr and as lr=0.1; give it once" in result.output


def test_augmentation_keys_default_to_the_previous_behaviour():
    cfg = load_finetune_config(None, [])
    assert (cfg.crop_scale, cfg.crop_ratio, cfg.hflip) == ([0.08, 1.0], [3 / 4, 4 / 3], True)
    cfg = load_finetune_config(None, ["crop_scale=[0.5, 1]", "hflip=false"])
    assert cfg.crop_scale == [0.5, 1.0] and cfg.hflip is False
    with pytest.raises(ConfigError, match=r"crop_scale must be \[min, max\] with 0 < min"):
        load_finetune_config(None, ["crop_scale=[0.9, 0.5]"])
    with pytest.raises(ConfigError, match="crop_ratio must be"):
        load_finetune_config(None, ["crop_ratio=[0, 1]"])
    assert isinstance(cfg, FinetuneConfig)


@pytest.mark.parametrize("command", sorted(COMMAND_KIND))
def test_every_option_has_help(command):
    """Options without a hand-written help text get their key's help from the dataclass."""
    import typer.main

    cmd = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    cmd._fill_option_help()
    bare = [p.opts[0] for p in cmd.params if p.param_type_name == "option" and not p.help]
    assert bare == [], f"{command}: give {bare} a help text (or a config key with a comment)"


def test_augmentation_keys_reach_the_transforms():
    import torch
    from torchvision import transforms as T

    from vitplas.data.transforms import build_transform
    from vitplas.training.stream import device_augment

    mean, std = (0.5,) * 3, (0.5,) * 3
    default = build_transform(mean, std, 32, train=True)
    crop = default.transforms[1]
    assert (crop.scale, crop.ratio) == ((0.08, 1.0), (3 / 4, 4 / 3))
    assert isinstance(default.transforms[2], T.RandomHorizontalFlip)
    custom = build_transform(mean, std, 32, train=True, scale=[0.5, 1], ratio=[1, 1], flip=False)
    assert (custom.transforms[1].scale, custom.transforms[1].ratio) == ((0.5, 1), (1, 1))
    assert not any(isinstance(t, T.RandomHorizontalFlip) for t in custom.transforms)
    # on the device: the full image, no flip, is the identity up to normalisation
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    out = device_augment(images, 8, mean, std, gen, (1.0, 1.0), (1.0, 1.0), flip=False)
    torch.testing.assert_close(out, (images.float() / 255 - 0.5) / 0.5, atol=1e-5, rtol=0)


def test_default_finetune_dir_hashes_only_changed_keys():
    from vitplas.jobs.folders import default_finetune_dir

    base = load_finetune_config(None, ["dataset=digits"])
    same = load_finetune_config(None, ["dataset=digits", "hflip=true", "num_workers=0"])
    other = load_finetune_config(None, ["dataset=digits", "hflip=false"])
    assert default_finetune_dir(base) == default_finetune_dir(same)
    assert default_finetune_dir(base) != default_finetune_dir(other)
    assert default_finetune_dir(base).name.startswith("digits-mha-lr0.01-s0-")
