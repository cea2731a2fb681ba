"""`vitplas export`: a model (a finetuned run above all) as one timm-loadable safetensors file."""

from __future__ import annotations

from pathlib import Path

import typer

from vitplas.cli.app import app


@app.command("export", short_help="A model as a full timm checkpoint (and its config).")
def export_command(
    model: str = typer.Argument(..., help="a finished finetuning run folder (or any model spec)"),
    out: Path = typer.Option(..., "--out", help="the .safetensors file to write"),
) -> None:
    """Write the full model (timm layout, timm name and pretrained config in the metadata).

    Prints the timm.create_model call that loads it back.
    """
    from vitplas.models.export import export_model

    exported = export_model(model, out)  # errors: one line, exit 2 (vitplas.cli.app)
    typer.echo(f"wrote {exported.path} (timm {exported.arch})", err=True)
    typer.echo(exported.timm_call())
