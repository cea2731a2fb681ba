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

# config kind -> its dataclass ("module:Class")
KINDS = {
    "plasticity": "vitplas.analysis.job:PlasticityConfig",
    "bounds": "vitplas.analysis.bounds_job:BoundsConfig",
    "finetune": "vitplas.training.config:FinetuneConfig",
    "evaluate": "vitplas.training.evaluate:EvaluateConfig",
    "probe": "vitplas.training.probe:ProbeConfig",
    "landscape": "vitplas.experiments.landscape:LandscapeConfig",
    "radius": "vitplas.cli.analysis:RadiusRun",
    "select": "vitplas.selection.select:SelectConfig",
    "sweep": "vitplas.experiments.spec:SweepSpec",
}
# command -> the kind whose keys it takes
COMMAND_KIND = {
    "plasticity": "plasticity",
    "bounds": "bounds",
    "finetune": "finetune",
    "evaluate": "evaluate",
    "probe": "probe",
    "landscape": "landscape",
    "radius": "radius",
    "select": "select",
    **dict.fromkeys(("sweep", "status", "aggregate", "report", "reproduce"), "sweep"),
}
# a flag whose name differs from its config key: flag parameter name -> key
FLAG_KEYS = {"workers": "num_workers", "images": "radius_images"}
FLAG_KEYS |= {flag[2:].replace("-", "_"): key for key, flag in SPEC_FLAGS.items()}
TINY = "--model tiny-random --random-init"
EXAMPLES = {
    "plasticity": [
        f"vitplas plasticity {TINY} --target digits --pairs 64 components=[mha,fc1]",
        "vitplas plasticity --pairs 32 bounds=false",
    ],
    "bounds": [f"vitplas bounds {TINY} --dataset digits radius_images=32"],
    "radius": [f"vitplas radius {TINY} --dataset digits --images 32 batch_size=16"],
    "select": [f"vitplas select {TINY} --target digits --pairs 16 grad_batches=1 batch_size=8"],
    "finetune": [
        "vitplas finetune configs/finetune/smoke-digits.yaml steps=10 eval_every=5 "
        "warmup_steps=2 --train mha,fc1 --lr 0.05"
    ],
    "probe": [
        "vitplas probe --model tiny-random --dataset digits random_init=true img_size=32 "
        "layers=[-1] components=[mha,block] max_train=200 max_test=100 num_workers=0 device=cpu"
    ],
    "landscape": [
        "vitplas landscape --model tiny-random random_init=true img_size=32 dataset=digits "
        "grid=5 steps=4"
    ],
    "sweep": ["vitplas sweep configs/offline/mini.yaml --dry-run grid.seed=[0]"],
    "status": ["vitplas status configs/offline/mini.yaml grid.seed=[0]"],
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


config_app = typer.Typer(help="Config files: print every key with its default and help.")
app.add_typer(config_app, name="config")


@config_app.command("show", cls=KeysCommand)
def show_command(
    kind: str = typer.Argument(..., help="plasticity, bounds, finetune, probe, landscape, sweep"),
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
