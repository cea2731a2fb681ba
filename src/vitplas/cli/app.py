"""The typer application that every command module registers on."""

import typer

app = typer.Typer(
    name="vitplas",
    help="Plasticity of vision transformer components, and component-wise finetuning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _root() -> None:
    """Plasticity of vision transformer components, and component-wise finetuning."""
