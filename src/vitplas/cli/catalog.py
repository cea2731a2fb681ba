"""Commands of the catalog area (registered on vitplas.cli.app.app)."""

import json

import typer

from vitplas.cli.app import app


@app.command("models", short_help="Model presets, and whether their weights are here.")
def models_command(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
    families: bool = typer.Option(
        False, "--families", help="List the supported model families and what each supports."
    ),
) -> None:
    """List the model presets and whether their weights are on this machine (no network)."""
    if families:
        _print_families(as_json)
        return
    from vitplas.models.presence import preset_catalog, searched_places

    rows = preset_catalog()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="vitplas model presets (a timm ViT name, HF id, folder or ARCH@FILE works too)",
        caption=f"weights looked for in: {searched_places()}. Missing weights: go online once, "
        "or put a timm-layout safetensors at <weights folder>/<preset>.safetensors",
    )
    for column in ("preset", "modality", "arch", "source", "description", "weights here"):
        table.add_column(column, overflow="fold")
    marks = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "n/a"}
    for row in rows:
        weights = f"{marks[row['weights_present']]}: {row['weights_where']}"
        cells = (row["name"], row["modality"], row["arch"], row["source"], row["description"])
        table.add_row(*cells, weights)
    Console(width=max(Console().width, 140)).print(table)


def _print_families(as_json: bool) -> None:
    from vitplas.models.families import family_rows

    rows = family_rows()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="vitplas model families (any timm or transformers model of these classes works)",
        caption="components in brackets: where the model has them. bounds: NaN with the "
        "reason where the formula does not hold (also non-LayerNorm norms, q/k norms). "
        "--json: classes and examples. README: 'How to add a model family'",
    )
    columns = ("family", "supported", "components", "layerscale", "bounds", "input modes")
    for column in (*columns, "covers / why not"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(row.get(c, "") for c in columns), row["notes"])
    Console(width=max(Console().width, 160)).print(table)


@app.command("datasets", short_help="Datasets: classes, splits, source, files present.")
def datasets_command(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
    root: str | None = typer.Option(
        None, "--root", help="Data root (default: $VITPLAS_DATA, then <VITPLAS_HOME>/data)."
    ),
) -> None:
    """List every dataset: classes, splits, source, and whether its files are here (no network)."""
    from vitplas.data.catalog import data_root_text, dataset_catalog, describe_choices

    rows = dataset_catalog(root)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="vitplas datasets (splits: val = 20% of the official train, fixed split seed)",
        caption=f"data root: {data_root_text(root)}. Missing files: see `vitplas datasets "
        "--json` (layout, how_to_get), or pass download=True where a download exists",
    )
    for column in ("dataset", "modality", "classes", "splits", "source", "here", "description"):
        table.add_column(column, overflow="fold")
    for row in rows:
        name = row["name"]
        if row["choices"]:
            name += f"\n[dim]{describe_choices(row['choices'])}[/dim]"
        here = f"{'[green]yes[/green]' if row['present'] else '[red]no[/red]'}: {row['where']}"
        classes = "unlabelled" if not row["labelled"] else str(row["num_classes"] or "folders")
        splits = f"{'/'.join(row['splits'])} ({row['split_rule']})"
        table.add_row(
            name, row["modality"], classes, splits, row["source"], here, row["description"]
        )
    Console(width=max(Console().width, 160)).print(table)
