"""`vitplas config show KIND`, and the keys + examples section of each command's `--help`.

The config classes are imported only when a help or a config is printed, so `vitplas --help`
stays fast. Every example below runs offline as written (tests/test_help_examples.py runs them
from a folder holding the repository's configs/).
"""

from __future__ import annotations

import importlib

import typer
from typer.core import TyperCommand

from vitplas.cli.app import app
from vitplas.cli.experiments import SPEC_FLAGS
from vitplas.jobs.table import JOBS

# config kind -> its dataclass ("module:Class"): every job of the table that is a command of its
# own (a flag's job, Job.flag_of, takes its command's config), and the sweep spec
KINDS = {job.kind: job.config for job in JOBS if job.flag_of is None}
KINDS["sweep"] = "vitplas.experiments.spec:SweepSpec"
# command -> the kind whose keys it takes
COMMAND_KIND = {kind: kind for kind in KINDS if kind != "sweep"}
COMMAND_KIND |= dict.fromkeys(("sweep", "status", "aggregate", "report", "reproduce"), "sweep")
# a flag whose name differs from its config key: flag parameter name -> key
FLAG_KEYS = {f"flag_{key}": key for job in JOBS for key in job.flags}
FLAG_KEYS |= {flag[2:].replace("-", "_"): key for key, flag in SPEC_FLAGS.items()}
MINI = "configs/offline/mini.yaml grid.seed=[0]"
_FT = "vitplas finetune configs/finetune/smoke-digits.yaml steps=4 eval_every=2 warmup_steps=1"
# every command's examples, run offline as written by tests/test_help_examples.py: the jobs'
# from their records, the others' here
EXAMPLES = {job.kind: list(job.examples) for job in JOBS if job.examples}
EXAMPLES |= {
    "sweep": [f"vitplas sweep {MINI} --dry-run"],
    "status": [f"vitplas status {MINI}"],
    "aggregate": [f"vitplas aggregate {MINI} --partial"],  # --partial: a study not yet run
    "report": [f"vitplas report {MINI} --partial"],
    "reproduce": [f"vitplas reproduce {MINI} --dry-run"],
    "clean": [f"{_FT} --out runs/ex-clean && vitplas clean runs/ex-clean --dry-run"],
    "export": [f"{_FT} --out runs/ex-export && vitplas export runs/ex-export --out ex.safetensors"],
    "models": ["vitplas models", "vitplas models --families --json"],
    "datasets": ["vitplas datasets --json"],
    "show": ["vitplas config show finetune", "vitplas config show plasticity"],
}


def config_class(kind: str) -> type:
    """The dataclass of config `kind`; an unknown kind is an error naming the known ones."""
    if kind not in KINDS:
        raise typer.BadParameter(f"config kind '{kind}' is unknown; choose {', '.join(KINDS)}")
    module, name = KINDS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def help_section(command: str, option_names: dict[str, str]) -> str:
    """The plain-text section appended to `vitplas COMMAND --help`: keys, then examples."""
    from vitplas.cli.keys import keys_help

    parts = []
    kind = COMMAND_KIND.get(command)
    if kind is not None:
        cls = config_class(kind)
        flags = {FLAG_KEYS.get(p, p): opt for p, opt in option_names.items()}
        usage = "key=value" if kind != "sweep" else "key=value overrides of the spec"
        parts.append(
            f"Config keys ({usage}; default shown; [--flag] sets the same key; "
            f"`vitplas config show {kind}` prints them as YAML):\n" + keys_help(cls, flags)
        )
    if command in EXAMPLES:
        parts.append("Examples:\n" + "\n".join(f"  {e}" for e in EXAMPLES[command]))
    return "\n\n".join(parts)


class KeysCommand(TyperCommand):
    """A typer command whose --help ends with its config keys and examples (help_section)."""

    def format_help(self, ctx, formatter) -> None:
        options = {
            p.name: p.opts[0]
            for p in self.params
            if p.name and p.param_type_name == "option" and p.opts[0].startswith("--")
        }
        self._fill_option_help()
        super().format_help(ctx, formatter)
        section = help_section(self.name or "", options)
        if section:
            formatter.write("\n" + section + "\n") if not _rich(self) else typer.echo(section)

    def _fill_option_help(self) -> None:
        """An option without a help text gets its config key's (the dataclass comment)."""
        kind = COMMAND_KIND.get(self.name or "")
        if kind is None:
            return
        from vitplas.cli.keys import config_keys

        helps = {k.name: k.help for k in config_keys(config_class(kind))}
        for param in self.params:
            key = FLAG_KEYS.get(param.name or "", param.name)
            if param.param_type_name == "option" and not getattr(param, "help", None):
                param.help = helps.get(key) or None  # type: ignore[attr-defined]


def _rich(command: TyperCommand) -> bool:
    from typer.core import HAS_RICH

    return HAS_RICH and command.rich_markup_mode is not None


def attach_key_help(application: typer.Typer) -> None:
    """Make every command of `application` that has keys or examples a KeysCommand."""
    for info in application.registered_commands:
        name = info.name or (info.callback.__name__ if info.callback else "")
        if name in COMMAND_KIND or name in EXAMPLES:
            info.cls = KeysCommand
    for group in application.registered_groups:
        if group.typer_instance is not None:
            attach_key_help(group.typer_instance)


config_app = typer.Typer(
    help="Config files: print every key with its default and help.",
    rich_markup_mode=None,  # plain help, as the root app
)
app.add_typer(config_app, name="config")


@config_app.command(
    "show", cls=KeysCommand, short_help="Every key of a config KIND with its default, as YAML."
)
def show_command(
    kind: str = typer.Argument(
        ..., help="a job kind (vitplas.jobs.table) or sweep", metavar="KIND"
    ),
) -> None:
    """Print a commented YAML of every key of KIND with its default: a config to edit."""
    from vitplas.cli.keys import commented_yaml

    try:
        cls = config_class(kind)
    except typer.BadParameter as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    header = f"vitplas {kind} config: every key with its default ({KINDS[kind]})"
    typer.echo(commented_yaml(cls, header), nl=False)


show_command.__doc__ = (  # the kinds, from the job table
    f"Print a commented YAML of every key of KIND ({', '.join(KINDS)}) with its default: a "
    "config to edit."
)
