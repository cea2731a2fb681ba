"""`vitplas clean SPEC|FOLDER`: free the disk that finished runs no longer need.

A finished run (DONE) never reads its resumable state again: the train state step folders of
a finetuning run (checkpoints/step_*, optimizer and RNG included) and the saved statistics of
a plasticity run. Results, records, curves, tables and best.safetensors stay. Unfinished runs
(they resume from that state) and runs another process owns are left alone, and so is
anything a symlink in a run folder leads to outside it (vitplas.deletion; said on stderr).
"""

from __future__ import annotations

from pathlib import Path

import typer

from vitplas.cli.app import app


def finished_runs(target: Path) -> list[Path]:
    """Finished run folders at or under `target` (a sweep spec YAML: under its study root)."""
    if target.is_file() and target.suffix in (".yaml", ".yml"):
        from vitplas.experiments.spec import load_spec

        root = load_spec(target).root_path
        if not root.is_dir():
            raise FileNotFoundError(f"the sweep in '{target}' has no runs yet (no {root})")
        target = root
    if not target.is_dir():
        raise FileNotFoundError(f"'{target}' is neither a run folder nor a sweep spec")
    from vitplas.runs import DONE_MARKER

    return sorted(p.parent for p in target.rglob(DONE_MARKER) if p.is_file())


def prune_run(folder: Path, dry_run: bool = False):
    """The vitplas.deletion.Removal of the resumable state under the finished run `folder`
    (deleted unless dry_run; never through a symlink out of the folder); None when another
    process owns the folder."""
    from vitplas.analysis.job import STATE_FILE
    from vitplas.analysis.pair_file import PARTS_DIR
    from vitplas.deletion import remove_within
    from vitplas.locks import RunLockedError, run_lock
    from vitplas.training.checkpoint import state_paths

    try:
        with run_lock(folder, command="clean"):
            state = [*state_paths(folder / "checkpoints"), folder / STATE_FILE]
            state.append(folder / PARTS_DIR)  # pairs.parquet's parts
            return remove_within(folder, state, dry_run)
    except RunLockedError:
        return None


@app.command(short_help="Delete finished runs' resumable train state.")
def clean(
    target: Path = typer.Argument(..., help="a run folder, a folder of runs, or a sweep spec"),
    dry_run: bool = typer.Option(False, "--dry-run", help="only say what would be freed"),
) -> None:
    """Delete the resumable train state of finished runs (keeps results and best weights)."""
    try:
        runs = finished_runs(target)
    except (FileNotFoundError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    freed, busy, kept = 0, [], []
    for folder in runs:
        removal = prune_run(folder, dry_run)
        if removal is None:
            busy.append(folder)
        else:
            freed += removal.freed
            kept += removal.lines()
    verb = "would free" if dry_run else "freed"
    typer.echo(f"{len(runs)} finished run(s): {verb} {freed / 2**20:.1f} MiB")
    for folder in busy:
        typer.echo(f"skipped {folder}: another process owns it", err=True)
    for line in kept:
        typer.echo(line, err=True)
