"""The typer application that every command module registers on, and its error policy.

Every error a command raises ends as one line on stderr: `error: <what was wrong, what to do>`
(exit 2 for a mistake in the input: config, spec, path, data; exit 1 for anything else, named
as an internal error). `vitplas --debug CMD ...` (or VITPLAS_DEBUG=1) shows the traceback.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from vitplas.device import check_device as check_device  # re-exported

# errors a user causes (input, paths, data): exit 2 and the message alone
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


def _debug(ctx: Any) -> bool:
    return bool(ctx.params.get("debug")) or os.environ.get("VITPLAS_DEBUG", "") not in ("", "0")


def _user_error_types() -> tuple[type[BaseException], ...]:
    """USER_ERRORS plus the optional libraries' error types that mean a damaged input file."""
    types = list(USER_ERRORS)
    try:
        from safetensors import SafetensorError

        types.append(SafetensorError)
    except ImportError:
        pass
    return tuple(types)


def one_line(err: BaseException) -> str:
    """The message of `err` on one line; OSErrors as 'PATH: reason'."""
    if isinstance(err, OSError) and err.strerror:
        where = err.filename if err.filename is not None else ""
        text = f"{where}: {err.strerror}" if where else err.strerror
    else:
        text = str(err) or type(err).__name__
    return re.sub(r"\s*\n\s*", " ", text.strip())


LOCKED_EXIT = 3  # the run folder is owned by another process (vitplas.locks)
STOPPED_EXIT = 1  # a run stopped on purpose (diverged): not the user's input, not a bug


def error_line(err: BaseException) -> tuple[str, int]:
    """(the line to print, exit code) for an exception that reached the CLI: the one place
    where errors become exit codes (2: the input; 3: a folder another process owns; 1: a run
    that stopped as diverged, or an internal error)."""
    from vitplas.locks import RunLockedError

    if isinstance(err, RunLockedError):
        return f"error: {one_line(err)}", LOCKED_EXIT
    if type(err).__name__ == "TrainingDivergedError":  # training's; not imported for --help
        return f"error: {one_line(err)}", STOPPED_EXIT
    if isinstance(err, OSError) and (full := _disk_full(err)) is not None:
        return f"error: {full}", 2
    if isinstance(err, _user_error_types()):
        return f"error: {one_line(err)}", 2
    name = type(err).__name__
    return (
        f"error: {name}: {one_line(err)} (an internal error of vitplas: rerun with --debug for "
        "the traceback and report it)",
        1,
    )


def _disk_full(err: OSError) -> str | None:
    from vitplas.runs import disk_full

    return disk_full(err)


class ErrorsAsLines(TyperGroup):
    """The root group: turns an exception of any command into one line and an exit code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):  # usage errors, deliberate exits
            raise
        except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM/SIGHUP of a sweep launcher
            number = getattr(err, "signal", 2)
            typer.echo(f"stopped by signal {number}; rerun the same command to resume", err=True)
            raise typer.Exit(128 + number) from None
        except Exception as err:
            if _debug(ctx):
                raise
            line, code = error_line(err)
            typer.echo(line, err=True)
            raise typer.Exit(code) from None


app = typer.Typer(
    name="vitplas",
    cls=ErrorsAsLines,
    help="Plasticity of vision transformer components, and component-wise finetuning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,  # plain help: no `<bool>` placeholders, no boxes cut at 80 columns
)


@app.callback()
def _root(
    debug: bool = typer.Option(
        False, "--debug", help="show the full traceback of an error (also VITPLAS_DEBUG=1)"
    ),
) -> None:
    """Plasticity of vision transformer components, and component-wise finetuning."""


def check_out_folder(path: Path) -> Path:
    """`path` as a run folder: a ValueError when it names an existing file."""
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"--out {path} is a file, not a folder; give a new folder or an existing run folder"
        )
    return path
