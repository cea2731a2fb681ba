"""The README against the program: every command it shows exists with the flags and config keys
it uses, every repository file it names exists (a test it cites is defined), and the API calls
of its Python block exist with their keyword arguments. A sentence made false by a change to
the program fails here.

What is read: fenced bash blocks (whole commands, `\\` continuations joined) and inline code
spans in the prose: `vitplas ...` commands, `--flags`, `key=value` / `key: value` settings and
paths under the repository's folders. Placeholders in capitals (CONFIG.yaml, SPEC, RUN) and
output folders (runs/...) are not checked. The keys of a command are those its `--help` lists
(what a user reads), its flags those its parser takes.
"""

from __future__ import annotations

import ast
import inspect
import re
import shlex
from functools import cache
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import vitplas
from vitplas.cli import app

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
FOLDERS = ("configs/", "examples/", "scripts/", "benchmarks/", "tests/", "src/", ".ci/")
# README sections whose settings belong to one command (else: to any command)
SECTION_COMMAND = {
    "Training augmentation": "finetune",
    "Training metrics and TensorBoard": "finetune",
    "Loss landscape (`vitplas landscape`)": "landscape",
}
KEY_LINE = re.compile(r"^  ([a-z_][\w.]*)=")  # a key line of a command's help
SETTING = re.compile(r"^([a-z_][\w.]*)(=(?!=)|: )\S")  # key=value or key: value (not pip's ==)
runner = CliRunner()


def fenced(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def prose_sections(text: str) -> dict[str, str]:
    """Section title -> its text without fenced blocks."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    parts = re.split(r"^#+ (.+)$", text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)} | {"": parts[0]}


def spans(text: str) -> list[str]:
    """Inline code spans of prose (a span may wrap: its line breaks read as spaces)."""
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", text)]


def shell_commands(block: str) -> list[list[str]]:
    """The vitplas command lines of a bash block, as argv lists from `vitplas` on (shell
    operators and what follows them dropped)."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        if argv and argv[0].endswith("vitplas"):
            out.append(_cut(argv))
    return out


def _cut(argv: list[str]) -> list[str]:
    for i, token in enumerate(argv):
        if token in (">", "|", "&&", ";", "2>&1"):
            return argv[:i]
    return argv


def placeholder(token: str) -> bool:
    return token[:1].isupper() or token in ("...", "key=value") or token.startswith("runs/")


@cache
def root() -> object:
    return typer.main.get_command(app)


def resolve(argv: list[str]) -> tuple[list[str], object, list[str]]:
    """(command path, its command, the remaining tokens) of `vitplas ARGV...`; a root option
    or command the program lacks is a LookupError."""
    tokens, command, path = argv[1:], root(), []
    while is_group(command) and tokens and not placeholder(tokens[0]):
        if tokens[0].startswith("-"):
            if tokens[0] not in flags_of(command):
                raise LookupError(f"vitplas has no option {tokens[0]}")
            tokens = tokens[1:]
            continue
        if tokens[0] not in command.commands:
            raise LookupError(f"'vitplas {' '.join([*path, tokens[0]])}': no such command")
        path.append(tokens[0])
        command, tokens = command.commands[tokens[0]], tokens[1:]
    return path, command, tokens


def is_group(command) -> bool:
    return hasattr(command, "commands")  # typer's own click: duck-typed


def flags_of(command: object) -> set[str]:
    opts = {o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}
    return opts | {"--help"}


@cache
def keys_of(path: tuple[str, ...]) -> tuple[frozenset[str], frozenset[str]]:
    """(keys, mapping keys) listed by `vitplas PATH --help` (a mapping key takes sub-keys)."""
    result = runner.invoke(app, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    keys, mappings = set(), set()
    for line in result.output.splitlines():
        if match := KEY_LINE.match(line):
            keys.add(match.group(1))
            if "(mapping)" in line or "(dict)" in line:
                mappings.add(match.group(1))
    return frozenset(keys), frozenset(mappings)


def known_key(key: str, path: tuple[str, ...]) -> bool:
    keys, mappings = keys_of(path)
    parents = [".".join(key.split(".")[:i]) for i in range(1, key.count(".") + 1)]
    return key in keys or any(p in mappings for p in parents)


def commands_with_keys() -> list[tuple[str, ...]]:
    """Every command path whose help lists config keys."""
    paths = []

    def walk(command: object, path: tuple[str, ...]) -> None:
        if is_group(command):
            for name, sub in command.commands.items():
                walk(sub, (*path, name))
        elif keys_of(path)[0]:
            paths.append(path)

    walk(root(), ())
    return paths


def check_command(argv: list[str]) -> list[str]:
    """Problems of one README command line ([] when it matches the program)."""
    problems = []
    try:
        path, command, tokens = resolve(argv)
    except LookupError as err:
        return [str(err)]
    if is_group(command):
        return []  # `vitplas COMMAND ...`: a placeholder stands for the command
    name = "vitplas " + " ".join(path)
    for token in tokens:
        if placeholder(token):
            continue
        if token.startswith("--"):
            if token.split("=")[0] not in flags_of(command):
                problems.append(f"'{name}' has no option {token}")
        elif "=" in token and not token.startswith(("-", "/")):
            if not known_key(token.split("=")[0], tuple(path)):
                problems.append(f"'{name}' has no config key {token.split('=')[0]}")
        elif token.startswith(FOLDERS) and not (REPO / token).exists():
            problems.append(f"'{name}': {token} does not exist")
    return problems


def readme_commands() -> list[list[str]]:
    found = [argv for block in fenced(README, "bash") for argv in shell_commands(block)]
    for span in spans("\n".join(prose_sections(README).values())):
        if re.match(r"^(\.venv/bin/)?vitplas( |$)", span):
            found.append(_cut(shlex.split(span.replace("|", " | "))))
    return found


def test_every_readme_command_exists_with_its_flags_keys_and_files():
    found = readme_commands()
    assert len(found) > 40  # the blocks and the prose were read
    problems = [p for argv in found for p in check_command(argv)]
    assert not problems, "\n".join(problems)


def test_every_flag_and_setting_in_the_prose_exists():
    every_flag = set().union(*(flags_of(c) for c in _all_commands()))
    problems = []
    for section, text in prose_sections(README).items():
        command = SECTION_COMMAND.get(section)
        paths = [(command,)] if command else commands_with_keys()
        for span in spans(text):
            if span.startswith("--") and span.split()[0] not in every_flag:
                problems.append(f"{section}: no command has {span.split()[0]}")
            match = SETTING.match(span)
            if not match or placeholder(span) or span.startswith(("error:", "model=")):
                continue
            if not any(known_key(match.group(1), p) for p in paths):
                where = f"vitplas {command}" if command else "any command"
                problems.append(f"{section}: `{span}` is no config key of {where}")
    assert not problems, "\n".join(problems)


def _all_commands() -> list[object]:
    out, todo = [], [root()]
    while todo:
        command = todo.pop()
        out.append(command)
        if is_group(command):
            todo.extend(command.commands.values())
    return out


def test_every_repository_file_and_test_it_names_exists():
    problems, last_file = [], None
    prose = "\n".join(prose_sections(README).values())
    for span in spans(prose) + [t for b in fenced(README, "bash") for t in b.split()]:
        span = span.strip()
        file, _, test = span.partition("::")
        if re.fullmatch(r"(tests/)?test_\w+\.py", file):
            last_file = REPO / "tests" / Path(file).name
        elif not file and test and last_file is not None:
            file = str(last_file)  # `::test_name` continues the file named before
        elif file.startswith(FOLDERS) and " " not in file and "*" not in file:
            if not (REPO / file).exists():
                problems.append(f"{file} does not exist")
            continue
        else:
            continue
        path = last_file
        if not path.is_file():
            problems.append(f"{path.relative_to(REPO)} does not exist")
        elif test and not re.search(rf"^def {re.escape(test)}\(", path.read_text(), re.M):
            problems.append(f"{path.name} defines no {test}")
    assert not problems, "\n".join(problems)


def test_the_python_block_calls_api_functions_that_take_its_keywords():
    calls = [
        node
        for block in fenced(README, "python")
        for node in ast.walk(ast.parse(block))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "vitplas"
    ]
    assert len(calls) >= 8
    problems = []
    for call in calls:
        function = getattr(vitplas, call.func.attr, None)
        if function is None:
            problems.append(f"vitplas.{call.func.attr} does not exist")
            continue
        params = inspect.signature(function).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            continue
        problems += [
            f"vitplas.{call.func.attr} takes no {k.arg}="
            for k in call.keywords
            if k.arg is not None and k.arg not in params
        ]
    assert not problems, "\n".join(problems)


def test_the_config_show_kinds_the_readme_lists_are_the_programs():
    listed = re.search(r"every config key of KIND \(([^)]*)\)", README)
    assert listed, "the README's `vitplas config show KIND` row is gone"
    kinds = {k.strip() for k in listed.group(1).rpartition(":")[2].split(",")}  # after a lead-in
    refused = runner.invoke(app, ["config", "show", "no-such-kind"])
    known = re.search(r"choose (.*)$", refused.output.strip(), re.M)
    assert refused.exit_code != 0 and known, refused.output
    assert kinds == {k.strip() for k in known.group(1).split(",")}


@pytest.mark.parametrize(
    "sentence",
    [
        "vitplas finetune configs/finetune/no-such.yaml",
        "vitplas finetune CONFIG.yaml normalization=paper",
        "vitplas landscape --no-such-flag 1",
        "vitplas no-such-command",
    ],
)
def test_the_checker_catches_a_false_command(sentence):
    """A check that cannot fail proves nothing: a wrong key, flag or file is reported."""
    assert check_command(shlex.split(sentence))
