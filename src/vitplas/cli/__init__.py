"""The `vitplas` command: a thin face over the library. Each submodule adds its commands."""

from vitplas.cli import analysis, catalog, experiments, select, training  # noqa: F401
from vitplas.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
