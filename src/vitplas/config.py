"""Strict configs: dataclass defaults, merged with YAML, then with `key=value` overrides.

An unknown key anywhere is an error naming the known keys; so is a key given twice on one
command line (check_repeated), a float that is not finite (nan, inf), and an integer out of
range (a seed, a key named `seed` or `*_seed`: [0, 2**32 - 1], numpy's; any other: int64).
Nested dataclasses are merged field by field. A config class may define `validate(self)` for
cross-field checks (`check_range`: one message per key out of range); it runs once after the
merge.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that cannot be built: unknown key, wrong type, failed validation."""


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build `cls` from its defaults, the YAML file at `path`, then `key=value` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml(path)
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(data, key, value)
    return config_from_dict(cls, data)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file '{path}' is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping, not {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=3` -> ("a.b", 3); the value is parsed as YAML (`[mha, fc1]` is a list)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def check_repeated(overrides: Sequence[str]) -> None:
    """A ConfigError naming the first key given twice among the `key=value` items of one
    command line (the last would win silently; vitplas.cli.keys.merge_flags calls it). Python
    callers may still override a list of defaults, later items winning (load_config)."""
    seen: dict[str, str] = {}
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in seen:
            raise ConfigError(f"'{key}' is given twice, as {seen[key]} and as {item}; give it once")
        seen[key] = item


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set `data["a"]["b"] = value` for key "a.b", creating mappings on the way."""
    *parents, last = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{key}': '{part}' is not a section")
    node[last] = value


def config_from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from `data`, strictly; runs `validate()` on the result."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(where + k for k in unknown)}; "
            f"known keys{' in ' + where.rstrip('.') if where else ''}: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, where + name)
    try:
        cfg = cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{cls.__name__}: {err}") from err
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Check/convert `value` against a type hint; nested dataclasses are built strictly."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{where}' must be a mapping")
        return config_from_dict(hint, value, where + ".")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"'{where}' has an invalid value {value!r}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"'{where}' must be a list, got {value!r}")
        (item,) = typing.get_args(hint)[:1] or (Any,)
        items = [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{where}' must be a mapping")
        return dict(value)
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"'{where}' is {value!r}; choose one of {list(choices)}")
        return value
    return _coerce_scalar(hint, value, where)


INT64 = (-(2**63), 2**63 - 1)  # what torch and numpy take as an integer
SEED_RANGE = (0, 2**32 - 1)  # what every seed must fit: numpy's seed, the narrowest taker


def _coerce_scalar(hint: Any, value: Any, where: str) -> Any:
    if hint is Any:
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"'{where}' is {value}; give a finite number")
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return _in_int_range(value, where)
    if hint is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if hint is Path and isinstance(value, str):
        return Path(value)
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(f"'{where}' must be {hint.__name__}, got {value!r}")
    return value


def _in_int_range(value: int, where: str) -> int:
    """`value` when it fits its key: a seed (a key named `seed` or `*_seed`) SEED_RANGE, any
    other integer INT64."""
    name = where.rsplit(".", 1)[-1]
    low, high = SEED_RANGE if name == "seed" or name.endswith("_seed") else INT64
    if not low <= value <= high:
        what = "a seed" if (low, high) == SEED_RANGE else "an integer"
        raise ConfigError(f"'{where}' is {value}; {what} must be in [{low}, {high}]")
    return value


def check_range(key: str, value: Any, ok: bool, rule: str) -> None:
    """A ConfigError naming `key` alone (its own message) when `ok` is false:
    "select.budget must be in (0, 1], got 1.5"."""
    if not ok:
        raise ConfigError(f"{key} must be {rule}, got {value!r}")


def at_least(cfg: Any, low: int | float, *keys: str, prefix: str = "") -> None:
    """check_range of each of `keys` of `cfg` (None passes: 'no limit') against `low`."""
    for key in keys:
        value = getattr(cfg, key)
        check_range(prefix + key, value, value is None or value >= low, f">= {low}")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, YAML-safe dict of a (nested) dataclass config."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, Path):
            return str(value)
        return value

    return plain(cfg)


def dump_config(cfg: Any) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def check_same_config(
    folder: Path,
    cfg: Any,
    runtime_keys: frozenset[str] | set[str] = frozenset(),
    old: Any = None,
):
    """A ConfigError when `old`, the config `folder` holds (its config.yaml parsed, read by the
    run-folder layer: vitplas.runs; None: none yet), has other settings than `cfg` (keys in
    `runtime_keys`, hardware and display only, aside): a run folder never mixes two configs.
    A key the stored config lacks (added to vitplas since) counts as its default value."""
    path = Path(folder) / "config.yaml"
    if old is None:
        return
    if not isinstance(old, dict):
        raise ConfigError(f"{path} holds no mapping; restore it, or delete {folder}")
    new = config_to_dict(cfg)
    default = config_to_dict(type(cfg)())  # a key added since the run started: its default
    diff = sorted(
        k
        for k in set(old) | set(new)
        if k not in runtime_keys and old.get(k, default.get(k)) != new.get(k)
    )
    if diff:
        details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
        raise ConfigError(
            f"{folder} holds a run with a different config ({details}); "
            "use another run folder (--out) for these settings, rerun with the original "
            f"config, or delete {folder} to replace that run"
        )
