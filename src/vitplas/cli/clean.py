"""`vitplas clean SPEC|FOLDER`: free the disk that finished runs no longer need.

A finished run (DONE) never reads its resumable state again: the train state step folders of
a finetuning run (checkpoints/step_*, optimizer and RNG included) and the saved statistics of
a plasticity run. Results, records, curves, tables and best.safetensors stay. Unfinished runs
(they resume from that state) and runs another process owns are left alone.
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


def prune_run(folder: Path, dry_run: bool = False) -> int | None:
    """Bytes of resumable state under the finished run `folder` (deleted unless dry_run);
    None when another process owns the folder."""
    import shutil

    from vitplas.analysis.job import STATE_FILE
    from vitplas.analysis.pair_file import PARTS_DIR
    from vitplas.locks import RunLockedError, run_lock
    from vitplas.training.checkpoint import prune_state

    try:
        with run_lock(folder, command="clean"):
            ckpts = folder / "checkpoints"
            state = [*ckpts.glob("step_*"), *ckpts.glob(".tmp-step_*"), folder / STATE_FILE]
            state += [folder / PARTS_DIR] if (folder / PARTS_DIR).is_dir() else []
            size = sum(f.stat().st_size for p in state for f in [p, *p.rglob("*")] if f.is_file())
            if not dry_run:
                prune_state(ckpts)
                (folder / STATE_FILE).unlink(missing_ok=True)
                shutil.rmtree(folder / PARTS_DIR, ignore_errors=True)  # pairs.parquet's parts
            return size
    except RunLockedError:
        return None


@app.command()
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
    freed, busy = 0, []
    for folder in runs:
        size = prune_run(folder, dry_run)
        if size is None:
            busy.append(folder)
        else:
            freed += size
    verb = "would free" if dry_run else "freed"
    typer.echo(f"{len(runs)} finished run(s): {verb} {freed / 2**20:.1f} MiB")
    for folder in busy:
        typer.echo(f"skipped {folder}: another process owns it", err=True)
