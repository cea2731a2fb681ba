"""Config keys on the command line, and their help, from the config dataclasses (written once).

The convention of every command with a config dataclass:

    vitplas COMMAND [CONFIG.yaml] [key=value ...] [--flag value ...]

defaults < the YAML file < key=value and flags; a flag and a `key=value` set the same field,
and a key given both ways is an error. Nested keys are dotted (`executor.slurm.gpus_per_node=2`).

A key's help is the `#` comment on its line in the dataclass, continued by the comment lines
directly below it; a comment after a blank line (a section heading) belongs to no key. So the
dataclass source is the one place where a key, its type, its default and its meaning are
written; `--help` and `vitplas config show KIND` read them from there.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import textwrap
import tokenize
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from vitplas.config import ConfigError, check_repeated


@dataclass(frozen=True)
class Key:
    """One config key: dotted name, type as text, default value, help text."""

    name: str
    type: str
    default: Any
    help: str


def field_comments(cls: type) -> dict[str, str]:
    """{field name: its help comment} of dataclass `cls` (module docstring's rule)."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments: dict[int, tuple[str, bool]] = {}  # line -> (text, comment-only line)
    code_lines: set[int] = set()
    skip = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            row = tok.start[0]
            comments[row] = (tok.string.lstrip("#").strip(), row not in code_lines)
        elif tok.type not in skip:
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    lines = source.splitlines()
    result = {}
    for row, name in _field_rows(source):
        text, own_line = comments.get(row, ("", True))
        if own_line:
            continue  # no comment on the field's line
        parts = [text]
        nxt = row + 1
        while nxt in comments and comments[nxt][1] and lines[nxt - 1].strip():
            parts.append(comments[nxt][0])
            nxt += 1
        result[name] = " ".join(p for p in parts if p)
    return result


def _field_rows(source: str) -> Iterable[tuple[int, str]]:
    """(last line, name) of each annotated assignment in the class body."""
    import ast

    (node,) = ast.parse(source).body
    for stmt in node.body:  # type: ignore[attr-defined]
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            yield stmt.end_lineno, stmt.target.id


def type_text(hint: Any) -> str:
    """A short readable type: `int or null`, `list of str`, `one of: abs, signed`."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return "one of: " + ", ".join(str(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        text = " or ".join(type_text(a) for a in args)
        return text + " or null" if len(args) < len(typing.get_args(hint)) else text
    if origin in (list, tuple):
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return f"list of {type_text(item)}"
    if origin is dict:
        return "mapping"
    return getattr(hint, "__name__", str(hint))


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def config_keys(cls: type, prefix: str = "") -> list[Key]:
    """Every key of dataclass `cls`, nested dataclasses flattened to dotted names."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    keys: list[Key] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            keys += config_keys(hint, f"{prefix}{f.name}.")  # type: ignore[arg-type]
            continue
        keys.append(Key(prefix + f.name, type_text(hint), _default(f), comments.get(f.name, "")))
    return keys


def value_text(value: Any) -> str:
    """A value as it is written on the command line (`key=value`) or in YAML (flow style)."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)  # type: ignore[arg-type]
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()


def keys_help(cls: type, flags: Mapping[str, str] = {}, width: int = 96) -> str:
    """Plain text listing every key of `cls`: `key=DEFAULT (type) help [--flag]`."""
    out = []
    for key in config_keys(cls):
        head = f"  {key.name}={value_text(key.default)}"
        flag = f" [{flags[key.name]}]" if key.name in flags else ""
        body = f"({key.type}) {key.help}{flag}".strip()
        out += textwrap.wrap(
            body,
            width,
            initial_indent=f"{head}  ",
            subsequent_indent=" " * 6,
            break_on_hyphens=False,
            break_long_words=False,
        ) or [head]
    return "\n".join(out)


def commented_yaml(cls: type, header: str = "") -> str:
    """All keys of `cls` with their defaults, each preceded by `# help (type)`: valid YAML
    that the strict loader reads back to the defaults."""
    lines = [f"# {line}" for line in header.splitlines()]
    _yaml_lines(cls, "", lines)
    return "\n".join(lines) + "\n"


def _yaml_lines(cls: type, indent: str, lines: list[str]) -> None:
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        hint = hints[f.name]
        text = f"{comments.get(f.name, '')} ({type_text(hint)})".strip()
        lines += textwrap.wrap(
            text, 92, initial_indent=f"{indent}# ", subsequent_indent=indent + "#   "
        )
        if dataclasses.is_dataclass(hint):
            lines.append(f"{indent}{f.name}:")
            _yaml_lines(hint, indent + "  ", lines)  # type: ignore[arg-type]
        else:
            lines.append(f"{indent}{f.name}: {value_text(_default(f))}")


def split_args(args: Sequence[str] | None) -> tuple[str | None, list[str]]:
    """[CONFIG.yaml] key=value ... -> (YAML path or None, the key=value items).

    Anything else is an error saying what the command takes."""
    config, overrides = None, []
    for item in args or []:
        if "=" in item:
            overrides.append(item)
        elif item.endswith((".yaml", ".yml")) and config is None:
            config = item
        else:
            raise ConfigError(
                f"argument '{item}' is neither key=value nor a .yaml config file; "
                "config keys are given as key=value (see --help)"
            )
    return config, overrides


def merge_flags(
    overrides: Sequence[str], flags: Mapping[str, Any], names: Mapping[str, str] = {}
) -> list[str]:
    """key=value overrides plus the flags given (value not None) as more key=value items.

    `flags` maps config keys to flag values; `names` maps a key to its flag's spelling, for
    messages (default --key-with-dashes). A key given both ways, or twice as key=value, is a
    ConfigError."""
    check_repeated(overrides)
    given = {item.split("=", 1)[0].strip(): item for item in overrides}
    merged = list(overrides)
    for key, value in flags.items():
        if value is None:
            continue
        flag = names.get(key, "--" + key.replace("_", "-"))
        if key in given:
            raise ConfigError(
                f"'{key}' is given twice, as {flag} and as {given[key]}; give it once"
            )
        merged.append(f"{key}={value_text(value)}")
    return merged
