"""Commands of the experiments area: sweep, status, aggregate, report, reproduce."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from vitplas.cli.app import app

console = Console()

SpecArg = typer.Argument(..., exists=True, dir_okay=False, help="sweep spec YAML")
OverridesArg = typer.Argument(None, help="spec overrides key=value, e.g. base.steps=5")
RootOpt = typer.Option(None, "--root", help="study folder (default: the spec's root)")
# spec key -> the flag that sets it too (given both ways: an error)
SPEC_FLAGS = {"executor.kind": "--executor", "executor.max_parallel": "--max-parallel"}
SPEC_FLAGS |= {f"executor.slurm.{k}": f"--{k}" for k in ("partition", "account")}
SPEC_FLAGS |= {"executor.slurm.time_min": "--time-min", "executor.slurm.gpus_per_node": "--gpus"}


def _load(spec_path: Path, overrides: list[str] | None, cli: dict[str, object] | None = None):
    from vitplas.cli.keys import merge_flags
    from vitplas.experiments.spec import load_spec

    return load_spec(spec_path, merge_flags(overrides or [], cli or {}, SPEC_FLAGS))


def _print_failed(states, verbose: bool) -> None:
    from vitplas.experiments.store import traceback_of

    for item in (s for s in states if s.state == "failed"):
        console.print(f"[red]FAILED[/red] {item.run.run_id}: {item.detail}  ({item.folder})")
        if verbose:
            console.print(traceback_of(item.folder), markup=False, highlight=False)


@app.command()
def sweep(
    spec_path: Path = SpecArg,
    overrides: list[str] = OverridesArg,
    executor: str = typer.Option(None, help="local (default) or slurm"),
    max_parallel: int = typer.Option(None, help="runs at once (SLURM: array parallelism)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list the runs and their count"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="rerun failed runs"),
    wait: bool = typer.Option(True, help="wait for the runs (--no-wait: submit and return)"),
    partition: str = typer.Option(None, help="SLURM partition"),
    time_min: int = typer.Option(None, help="SLURM time limit per run (minutes)"),
    gpus: int = typer.Option(None, help="SLURM GPUs per run"),
    account: str = typer.Option(None, help="SLURM account"),
    root: Path = RootOpt,
) -> None:
    """Launch every run of a sweep that is not finished (local processes or SLURM arrays)."""
    from vitplas.experiments.launch import run_sweep
    from vitplas.experiments.spec import expand
    from vitplas.experiments.store import scan

    slurm = {"executor.slurm.partition": partition, "executor.slurm.time_min": time_min}
    slurm |= {"executor.slurm.gpus_per_node": gpus, "executor.slurm.account": account}
    slurm |= {"executor.kind": executor, "executor.max_parallel": max_parallel}
    spec = _load(spec_path, overrides, slurm)
    runs = expand(spec)
    if dry_run:
        states = {s.run.run_id: s.state for s in scan(spec, runs, root)}
        for run in runs:
            console.print(f"{run.run_id}  [{states[run.run_id]}]", markup=False, highlight=False)
        console.print(f"{len(runs)} runs", highlight=False)
        return
    from vitplas.cli.progress import progress_view

    with progress_view(console) as update:

        def progress(c: dict[str, int]) -> None:
            update("runs", c["done"] + c["failed"], c["total"])

        outcome = run_sweep(
            spec, runs, executor=executor, max_parallel=max_parallel, retry_failed=retry_failed,  # type: ignore[arg-type]
            wait=wait, root=root, progress=progress,
        )  # fmt: skip
    console.print(f"launched {len(outcome.launched)}; {_counts_line(outcome.counts)}")
    _print_failed(outcome.states, verbose=True)
    if outcome.failed:
        console.print("rerun the failed runs with --retry-failed")
        raise typer.Exit(1)


def _counts_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {counts[k]}" for k in ("done", "running", "failed", "missing", "total"))


@app.command()
def status(
    spec_path: Path = SpecArg,
    overrides: list[str] = OverridesArg,
    verbose: bool = typer.Option(False, "-v", "--verbose", help="print full tracebacks"),
    root: Path = RootOpt,
) -> None:
    """Counts of done / running / failed / missing runs of a sweep; failed runs listed."""
    from vitplas.experiments.spec import expand
    from vitplas.experiments.store import counts, scan

    spec = _load(spec_path, overrides)
    states = scan(spec, expand(spec), root)
    console.print(_counts_line(counts(states)), highlight=False)
    _print_failed(states, verbose)


@app.command()
def aggregate(
    spec_path: Path = SpecArg, overrides: list[str] = OverridesArg, root: Path = RootOpt
) -> None:
    """Tidy table of all runs + the paper's summaries, written to <root>/tables."""
    from vitplas.experiments.aggregate import aggregate as run_aggregate
    from vitplas.experiments.report import accuracy_table, markdown_table
    from vitplas.experiments.spec import expand

    spec = _load(spec_path, overrides)
    tables = run_aggregate(spec, expand(spec), root)
    folder = (root or spec.root_path) / "tables"
    console.print(f"{len(tables['runs'])} finished runs; tables in {folder}: {', '.join(tables)}")
    if "best" in tables:
        console.print(markdown_table(accuracy_table(tables["best"], None)), markup=False)


@app.command()
def report(
    spec_path: Path = SpecArg,
    overrides: list[str] = OverridesArg,
    force: bool = typer.Option(False, help="redraw even if the tables did not change"),
    root: Path = RootOpt,
) -> None:
    """Figures (PNG + PDF) and report.md / report.html from the aggregated tables."""
    from vitplas.experiments.report import write_report

    path = write_report(_load(spec_path, overrides), root, force=force)
    console.print(f"report: {path} (and {path.with_suffix('.html')})")


@app.command()
def reproduce(
    spec_path: Path = SpecArg,
    overrides: list[str] = OverridesArg,
    executor: str = typer.Option(None, help="local (default) or slurm"),
    max_parallel: int = typer.Option(None, help="runs at once"),
    root: Path = RootOpt,
) -> None:
    """Plasticity + bounds + probes + sweep + aggregate + report, resumable, one progress view."""
    from vitplas.cli.progress import progress_view
    from vitplas.experiments.reproduce import reproduce as run_reproduce

    spec = _load(
        spec_path, overrides, {"executor.kind": executor, "executor.max_parallel": max_parallel}
    )
    with progress_view(console) as on_stage:
        summary = run_reproduce(
            spec, executor=executor, max_parallel=max_parallel, root=root, on_stage=on_stage
        )
    console.print(f"sweep: {_counts_line(summary['sweep'])}; launched {summary['launched']}")
    for rid, detail in summary["failed_runs"]:
        console.print(f"[red]FAILED[/red] {rid}: {detail}")
    for job in summary["analysis_failed"]:
        console.print(f"[red]FAILED analysis[/red] {job}")
    console.print(f"report: {summary['report']}")
    if summary["failed_runs"] or summary["analysis_failed"]:
        raise typer.Exit(1)
