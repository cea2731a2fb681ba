"""Every example printed by a command's --help runs as written (offline, from a folder that
holds the repository's configs/), and exits 0."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vitplas.cli import app
from vitplas.cli.config_cmd import EXAMPLES

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
SLOW = {  # over ~20 s on a shared 2-core CPU: the real DINOv2; a training run
    "vitplas plasticity --pairs 32 bounds=false",
    EXAMPLES["finetune"][0],
    *EXAMPLES["clean"],
    *EXAMPLES["export"],
    *EXAMPLES["evaluate"],
}


def _help(argv: list[str]) -> str:
    result = runner.invoke(app, [*argv, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def printed_examples(argv: list[str]) -> list[str]:
    """The lines under 'Examples:' of `vitplas ARGV --help`."""
    lines = _help(argv).splitlines()
    if "Examples:" not in lines:
        return []
    start = lines.index("Examples:") + 1
    out = []
    for line in lines[start:]:
        if not line.startswith("  vitplas "):
            break
        out.append(line.strip())
    return out


def _commands() -> list[list[str]]:
    return [["config", "show"] if name == "show" else [name] for name in EXAMPLES]


def test_every_example_is_printed_by_its_help():
    for argv in _commands():
        assert printed_examples(argv) == EXAMPLES[argv[-1]], argv


CASES = [
    pytest.param(e, marks=pytest.mark.slow, id=e) if e in SLOW else pytest.param(e, id=e)
    for argv in _commands()
    for e in EXAMPLES[argv[-1]]
]


@pytest.mark.parametrize("example", CASES)
def test_help_example_runs_as_written(example, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(REPO / "configs")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for part in example.split(" && "):  # an example may first make the run it needs
        argv = shlex.split(part)
        assert argv[0] == "vitplas"
        result = runner.invoke(app, argv[1:])
        assert result.exit_code == 0, f"{part}\n{result.output}"


def test_every_command_has_examples():
    """Every command of the app ends its --help with examples (jobs: from their records)."""
    from typer.main import get_command

    names = set(get_command(app).commands) - {"config"}
    assert names <= set(EXAMPLES), sorted(names - set(EXAMPLES))


HELP_CHECK = """
import sys
from vitplas.cli import main
sys.argv = ["vitplas", *sys.argv[1:]]
try:
    main()
except SystemExit as stop:
    heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "timm", "matplotlib"})
    print("HEAVY", heavy, stop.code)
"""


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["plasticity", "--help"], ["finetune", "--help"], ["sweep", "--help"],
     ["probe", "bad_key=1"], ["select", "--pairs"], ["config", "show", "bounds"]],
)  # fmt: skip
def test_help_and_argument_errors_import_no_torch(argv):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", HELP_CHECK, *argv], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    line = [x for x in out.stdout.splitlines() if x.startswith("HEAVY")]
    assert line and line[0].startswith("HEAVY []"), (out.stdout[-400:], out.stderr[-400:])


def test_config_show_help_lists_every_kind_of_the_job_table():
    """`config show --help` names every job kind that is a command of its own (the table's,
    not a hand list) and sweep; the kind of a flag (compare-base) is its command's."""
    import re

    from vitplas.jobs.table import JOBS

    listed = re.search(
        r"every key of KIND \(([^)]*)\)", " ".join(_help(["config", "show"]).split())
    )
    assert listed, _help(["config", "show"])
    expected = [job.kind for job in JOBS if job.flag_of is None] + ["sweep"]
    assert [k.strip() for k in listed.group(1).split(",")] == expected
    assert {"plasticity", "bounds", "radius", "finetune", "evaluate", "probe", "select",
            "landscape"} <= set(expected)  # fmt: skip
    assert "compare-base" not in expected and {job.kind for job in JOBS} - set(expected) == {
        "compare-base"
    }
    refused = runner.invoke(app, ["config", "show", "compare-base"])
    assert refused.exit_code == 2 and "config kind 'compare-base' is unknown" in refused.output


def test_every_command_says_what_it_does_in_one_uncut_line_at_80_columns():
    result = runner.invoke(app, ["--help"], terminal_width=80)
    listed = result.output.split("Commands:")[1].splitlines()[1:]
    commands = [line for line in listed if line.startswith("  ") and line.strip()]
    assert len(commands) >= 18
    cut = [line.strip() for line in commands if line.rstrip().endswith("...")]
    assert cut == []
