"""`vitplas landscape`: loss surface and rate-of-change surface of one block's components."""

from __future__ import annotations

from pathlib import Path

import typer

from vitplas.cli.app import app


@app.command("landscape")
def landscape_command(
    overrides: list[str] = typer.Argument(None, help="Config keys as key=value."),
    preset: str = typer.Option("offline", "--preset", help="offline (CPU, minutes) or paper."),
    model: str = typer.Option(None, "--model", help="Preset, timm name, HF id or ARCH@FILE."),
    out: Path = typer.Option(None, "--out", help="Run folder (default runs/landscape/...)."),
) -> None:
    """Loss on the plane of the top two PCA directions of a short SGD trajectory of each
    component of one block, beside that component's rate of change (plasticity).

    A --preset sets some keys first (paper: the original's setup); key=value and flags win.
    """
    from vitplas.cli.keys import merge_flags, split_args
    from vitplas.config import config_from_dict, parse_override
    from vitplas.experiments.landscape import PRESETS, LandscapeConfig, run_landscape
    from vitplas.runs import default_run_dir

    try:
        if preset not in PRESETS:
            raise ValueError(f"preset '{preset}' is unknown; choose {', '.join(PRESETS)}")
        data = dict(PRESETS[preset])
        _, items = split_args(overrides)
        data.update(parse_override(item) for item in merge_flags(items, {"model": model}))
        if isinstance(data.get("components"), str):
            data["components"] = data["components"].split(",")
        cfg = config_from_dict(LandscapeConfig, data)
        run_dir = out or default_run_dir("landscape", cfg.model.replace("/", "_"))

        def progress(name: str, done: int, total: int) -> None:
            typer.echo(f"[{done}/{total}] {name}: trajectory, plane and surfaces done", err=True)

        result = run_landscape(cfg, run_dir, progress=progress)
    except (ValueError, FileNotFoundError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{len(result['grid'])} grid points in {result['timings']['total_s']:.1f} s")
    typer.echo(f"run folder: {result['run_dir']}  (figures/landscape.png, landscape.csv)")
