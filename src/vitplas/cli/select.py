"""`vitplas select`: rank the components by every criterion and pick a train set per criterion.

Options left out keep vitplas.selection.select.SelectConfig's defaults (the embedded offline
default: DINOv2 ViT-S/14, Fashion-MNIST target).
"""

from __future__ import annotations

from pathlib import Path

import typer

from vitplas.cli.analysis import (
    ARGS,
    CONFIG,
    DEVICE,
    IMG,
    LOCKED_EXIT,
    MODEL,
    OUT,
    RANDOM,
    REPAIR,
    SEED,
    WAIT,
    _config,
    _fail,
    _run_dir,
)
from vitplas.cli.app import app


@app.command("select")
def select_command(
    model: str = MODEL,
    random_init: bool = RANDOM,
    img_size: int = IMG,
    target: str = typer.Option(None, "--target", help="Target dataset (default fashion-mnist)."),
    data_root: str = typer.Option(None, "--data-root"),
    criteria: str = typer.Option(None, "--criteria", help="Comma list (default: all)."),
    budget: float = typer.Option(None, "--budget", help="Fraction of the block parameters."),
    granularity: str = typer.Option(None, "--granularity", help="component or layer."),
    inputs: str = typer.Option(None, "--inputs", help="Plasticity inputs: embedding or hidden."),
    pairs: int = typer.Option(None, "--pairs", help="Plasticity pairs (default 128)."),
    grad_batches: int = typer.Option(None, "--grad-batches", help="Target batches for gradients."),
    batch_size: int = typer.Option(None, "--batch-size"),
    seed: int = SEED,
    device: str = DEVICE,
    out: Path = OUT,
    config: Path = CONFIG,
    wait: bool = WAIT,
    repair: bool = REPAIR,
    args: list[str] = ARGS,
) -> None:
    """Score plasticity, gradient norms (absolute, relative), Fisher, weight spectra and the
    controls per component; print each criterion's ranking and the train set it picks."""
    import time

    from vitplas.locks import RunLockedError
    from vitplas.selection.select import SelectConfig, run_select, summary

    options = {
        "model": model,
        "random_init": random_init,
        "img_size": img_size,
        "target": target,
        "data_root": data_root,
        "criteria": [c for c in criteria.split(",") if c.strip()] if criteria else None,
        "budget": budget,
        "granularity": granularity,
        "inputs": inputs,
        "pairs": pairs,
        "grad_batches": grad_batches,
        "batch_size": batch_size,
        "seed": seed,
        "device": device,
    }
    start = time.perf_counter()
    try:
        cfg = _config(SelectConfig, config, options, args)
        run_dir = _run_dir(out, "select", cfg.model)
        frame, chosen = run_select(cfg, run_dir, repair=repair, wait=wait)
    except RunLockedError as err:
        _fail(err, LOCKED_EXIT)
    except (ValueError, FileNotFoundError) as err:
        _fail(err)
    typer.echo(summary(frame, chosen, cfg.budget, cfg.granularity))
    typer.echo(f"wrote {run_dir / 'selection.csv'} in {time.perf_counter() - start:.0f} s")
