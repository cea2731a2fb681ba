"""The `vitplas` command: a thin face over the library.

Every job's command is built from its record in the job table (vitplas.cli.factory); the
commands of studies (sweep, status, aggregate, report, reproduce), catalogs, clean, export and
`config show` are the other modules' own.
"""

from vitplas.cli import catalog, clean, experiments, export  # noqa: F401  (register commands)
from vitplas.cli.app import app
from vitplas.cli.config_cmd import attach_key_help
from vitplas.cli.factory import register_all

register_all()  # plasticity, bounds, radius, finetune, evaluate, probe, select, landscape
attach_key_help(app)  # every command's --help lists its config keys and ends with examples


def main() -> None:
    app()


__all__ = ["app", "main"]
