"""The `vitplas` command: a thin face over the library. Each submodule adds its commands."""

from vitplas.cli import (  # noqa: F401  (each module registers its commands)
    analysis,
    catalog,
    clean,
    experiments,
    export,
    landscape,
    select,
    training,
)
from vitplas.cli.app import app
from vitplas.cli.config_cmd import attach_key_help

attach_key_help(app)  # every command's --help lists its config keys and examples


def main() -> None:
    app()


__all__ = ["app", "main"]
