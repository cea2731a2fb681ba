"""Commands of the experiments area: sweep, status, aggregate, report, reproduce."""

from __future__ import annotations

import signal
from pathlib import Path

import typer
from rich.console import Console

from vitplas.cli.app import app

console = Console(soft_wrap=True)  # one line per message, whatever the terminal width

SpecArg = typer.Argument(..., exists=True, dir_okay=False, help="sweep spec YAML")
OverridesArg = typer.Argument(None, help="spec overrides key=value, e.g. base.steps=5")
RootOpt = typer.Option(None, "--root", help="study folder (default: the spec's root)")
PeakOpt = typer.Option(
    None, "--device-peak-tflops", help="dry run: the device, h100 (default), h200, a100, l40s "
    "(their fp32/tf32/bf16 peaks), cpu (measured), or one dense peak in TFLOP/s",
)  # fmt: skip
MfuOpt = typer.Option(None, "--mfu", help="dry run: assumed utilisation of the peak (0.4)")
JsonOpt = typer.Option(None, "--json", help="dry run: also write the estimate as JSON here")
# spec key -> the flag that sets it too (given both ways: an error)
SPEC_FLAGS = {"executor.kind": "--executor", "executor.max_parallel": "--max-parallel"}
SPEC_FLAGS |= {f"executor.slurm.{k}": f"--{k}" for k in ("partition", "account")}
SPEC_FLAGS |= {"executor.slurm.time_min": "--time-min", "executor.slurm.gpus_per_node": "--gpus"}


def _load(spec_path: Path, overrides: list[str] | None, cli: dict[str, object] | None = None):
    from vitplas.cli.keys import merge_flags
    from vitplas.experiments.spec import load_spec

    return load_spec(spec_path, merge_flags(overrides or [], cli or {}, SPEC_FLAGS))


def _estimate(spec, runs, peak: str | None, mfu: float | None):
    """The study's cost before it runs (experiments/cost.py), or None when there is none."""
    from vitplas.experiments.cost import declared_device, study_cost

    try:
        device = declared_device(peak, mfu)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    try:
        cost = study_cost(spec, device, runs)
    except ValueError as err:  # ConfigError included: the runs would fail the same way
        console.print(f"[red]no cost estimate[/red]: {err}")
        return None
    return cost if cost.jobs else None  # a custom runner and no analysis: nothing to count


def _print_cost(cost, json_path: Path | None) -> None:
    """The estimate's table, and its JSON form if asked."""
    import json

    from vitplas.experiments.cost_text import format_table

    if cost is None:
        return
    console.print(format_table(cost), markup=False, highlight=False, soft_wrap=True)
    if json_path is not None:
        json_path.write_text(json.dumps(cost.to_dict(), indent=1) + "\n")
        console.print(f"estimate written to {json_path}", highlight=False)


def _print_failed(states, verbose: bool) -> None:
    """Failed and damaged runs, always; with `verbose`, tracebacks and why each missing run is
    missing (killed by signal N, interrupted, not launched yet)."""
    from vitplas.experiments.store import NOT_LAUNCHED, traceback_of

    for item in states:
        if item.state == "failed":
            console.print(f"[red]FAILED[/red] {item.run.run_id}: {item.detail}  ({item.folder})")
            if verbose:
                console.print(traceback_of(item.folder), markup=False, highlight=False)
        elif item.state == "damaged":
            console.print(f"[red]DAMAGED[/red] {item.run.run_id}: {item.detail}")
        elif item.state == "missing" and (verbose or item.detail != NOT_LAUNCHED):
            console.print(f"MISSING {item.run.run_id}: {item.detail}", highlight=False)


@app.command(short_help="Launch a sweep's unfinished runs (local or SLURM).")
def sweep(
    spec_path: Path = SpecArg,
    overrides: list[str] = OverridesArg,
    executor: str = typer.Option(None, help="local (default) or slurm"),
    max_parallel: int = typer.Option(None, help="runs at once (SLURM: array parallelism)"),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="list the runs, their count and the study's estimated cost"
    ),
    peak: str = PeakOpt,
    mfu: float = MfuOpt,
    json_path: Path = JsonOpt,
    per_run: bool = typer.Option(False, "--runs", help="dry run: also list every run"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="rerun failed runs"),
    wait: bool = typer.Option(True, help="wait for the runs (--no-wait: submit and return)"),
    partition: str = typer.Option(None, help="SLURM partition"),
    time_min: int = typer.Option(None, help="SLURM time limit per run (minutes)"),
    gpus: int = typer.Option(None, help="SLURM GPUs per run"),
    account: str = typer.Option(None, help="SLURM account"),
    root: Path = RootOpt,
) -> None:
    """Launch every run of a sweep that is not finished (local processes or SLURM arrays)."""
    from vitplas.experiments.launch import LauncherStopped, run_sweep
    from vitplas.experiments.spec import check_runs, expand
    from vitplas.experiments.store import scan, signal_name

    slurm = {"executor.slurm.partition": partition, "executor.slurm.time_min": time_min}
    slurm |= {"executor.slurm.gpus_per_node": gpus, "executor.slurm.account": account}
    slurm |= {"executor.kind": executor, "executor.max_parallel": max_parallel}
    spec = _load(spec_path, overrides, slurm)
    runs = expand(spec)
    bad = check_runs(spec, runs)
    if dry_run:
        states = {s.run.run_id: s.state for s in scan(spec, runs, root)}
        cost = None if bad else _estimate(spec, runs, peak, mfu)
        per_run_text = cost.per_run_text() if cost else {}
        shown = runs if per_run else [r for r in runs if r.run_id in bad]
        for run in shown:
            state = f"invalid: {bad[run.run_id]}" if run.run_id in bad else states[run.run_id]
            line = f"{run.run_id}  [{state}]{per_run_text.get(run.run_id, '')}"
            console.print(line, markup=False, highlight=False)
        hint = "" if per_run else " (--runs lists each)"
        console.print(f"{len(runs)} runs{hint}", highlight=False)
        from vitplas.experiments.axes import grid_by_lines

        for line in grid_by_lines(spec):  # axes whose values depend on another's (lr per set)
            console.print(line, markup=False, highlight=False)
        if cost is not None:
            _print_cost(cost, json_path)
    elif bad:
        for rid, error in bad.items():
            console.print(f"INVALID {rid}: {error}", markup=False, highlight=False)
    if bad:
        console.print(
            f"error: {len(bad)} of {len(runs)} runs have an invalid config (each listed above); "
            "fix the spec: nothing was launched",
            markup=False, highlight=False,
        )  # fmt: skip
        raise typer.Exit(2)
    if dry_run:
        return
    from vitplas.cli.progress import progress_view

    with progress_view(console) as update:

        def progress(c: dict[str, int]) -> None:
            update("runs", c["done"] + c["failed"], c["total"])

        try:
            outcome = run_sweep(
                spec, runs, executor=executor, max_parallel=max_parallel,  # type: ignore[arg-type]
                retry_failed=retry_failed, wait=wait, root=root, progress=progress,
            )  # fmt: skip
        except (LauncherStopped, KeyboardInterrupt) as err:
            number = err.signal if isinstance(err, LauncherStopped) else signal.SIGINT
            name = signal_name(number)
            console.print(f"sweep stopped by signal {number} ({name}); rerun it to resume")
            raise typer.Exit(1) from None
    if outcome.busy:
        console.print(
            f"another sweep of this study is launching its runs ({outcome.busy}); nothing "
            f"launched; {_counts_line(outcome.counts)}",
            highlight=False,
        )
        return
    console.print(f"launched {len(outcome.launched)}; {_counts_line(outcome.counts)}")
    _print_failed(outcome.states, verbose=True)
    _exit_unless_complete(outcome.counts, wait)


def _exit_unless_complete(counts: dict[str, int], waited: bool) -> None:
    """Exit 1 while a run is failed or damaged, or (after waiting) missing."""
    if counts["failed"]:
        console.print(
            f"{counts['failed']} failed run(s), listed above, are not rerun by a plain `vitplas "
            "sweep`: their failure is their own (diverged, an error in their config or data, a "
            "bug), not one a rerun resumes (killed, a full disk); fix the cause, then rerun with "
            "--retry-failed",
            markup=False, highlight=False,
        )  # fmt: skip
    if counts["failed"] or counts["damaged"] or (waited and counts["missing"]):
        raise typer.Exit(1)


def _counts_line(counts: dict[str, int]) -> str:
    keys = ("done", "running", "failed", "damaged", "missing", "total")
    return ", ".join(f"{k} {counts[k]}" for k in keys)


@app.command(short_help="Count a study's runs: done, running, failed, damaged.")
def status(
    spec_path: Path = SpecArg,
    overrides: list[str] = OverridesArg,
    verbose: bool = typer.Option(
        False, "-v", "--verbose", help="full tracebacks, and why each missing run is missing"
    ),
    root: Path = RootOpt,
) -> None:
    """Counts of done / running / failed / damaged / missing runs; failed and damaged listed."""
    from vitplas.experiments.spec import expand
    from vitplas.experiments.store import counts, scan

    spec = _load(spec_path, overrides)
    states = scan(spec, expand(spec), root)
    console.print(_counts_line(counts(states)), highlight=False)
    _print_failed(states, verbose)


PartialOpt = typer.Option(
    False, "--partial", help="accept an incomplete study (runs or analysis jobs not done): "
    "exit 0, and the report says it is partial on its first line",
)  # fmt: skip


@app.command(short_help="Tidy tables of a study's runs, the paper's summaries.")
def aggregate(
    spec_path: Path = SpecArg,
    overrides: list[str] = OverridesArg,
    root: Path = RootOpt,
    partial: bool = PartialOpt,
) -> None:
    """Tidy table of all runs + the paper's summaries, written to <root>/tables (exit 1 for an
    incomplete study, unless --partial)."""
    from vitplas.experiments.aggregate import aggregate as run_aggregate
    from vitplas.experiments.coverage import COVERAGE, is_complete, summary
    from vitplas.experiments.report import accuracy_table, markdown_table
    from vitplas.experiments.spec import expand
    from vitplas.experiments.store import scan

    spec = _load(spec_path, overrides)
    runs = expand(spec)
    tables = run_aggregate(spec, runs, root)
    folder = (root or spec.root_path) / "tables"
    console.print(f"{len(tables['runs'])} finished runs; tables in {folder}: {', '.join(tables)}")
    if "best" in tables:
        console.print(markdown_table(accuracy_table(tables["best"], None)), markup=False)
    damaged = [s for s in scan(spec, runs, root) if s.state == "damaged"]
    if damaged:
        _print_failed(damaged, verbose=False)
        console.print(f"{len(damaged)} damaged runs are not in the tables", highlight=False)
    if is_complete(tables[COVERAGE]):
        return
    what = summary(tables[COVERAGE])
    if partial:
        console.print(f"partial: {what}", markup=False, highlight=False)
        return
    console.print(
        f"the study is incomplete: {what}; the tables cover what is done only; finish it "
        "(`vitplas sweep SPEC`, `vitplas status SPEC -v` says why a run is not done), or pass "
        "--partial to accept a partial study",
        markup=False, highlight=False,
    )  # fmt: skip
    raise typer.Exit(1)


@app.command(short_help="Figures and report.md/html from a study's tables.")
def report(
    spec_path: Path = SpecArg,
    overrides: list[str] = OverridesArg,
    force: bool = typer.Option(False, help="redraw even if the tables did not change"),
    root: Path = RootOpt,
    partial: bool = PartialOpt,
) -> None:
    """Figures (PNG + PDF) and report.md / report.html from the aggregated tables (exit 1
    for an incomplete study, unless --partial)."""
    from vitplas.experiments.coverage import IncompleteStudyError
    from vitplas.experiments.report import write_report

    try:
        path = write_report(_load(spec_path, overrides), root, force=force, partial=partial)
    except IncompleteStudyError as err:
        console.print(f"error: {err}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    console.print(f"report: {path} (and {path.with_suffix('.html')})")


@app.command(short_help="A whole study, resumable: analyses, sweep, report.")
def reproduce(
    spec_path: Path = SpecArg,
    overrides: list[str] = OverridesArg,
    executor: str = typer.Option(None, help="local (default) or slurm"),
    max_parallel: int = typer.Option(None, help="runs at once"),
    root: Path = RootOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="print the estimated cost, run nothing"),
    peak: str = PeakOpt,
    mfu: float = MfuOpt,
    json_path: Path = JsonOpt,
    per_run: bool = typer.Option(False, "--runs", help="dry run: also list every run"),
) -> None:
    """Plasticity + bounds + probes + sweep + aggregate + report, resumable, one progress view."""
    from vitplas.cli.progress import progress_view
    from vitplas.experiments.reproduce import reproduce as run_reproduce

    spec = _load(
        spec_path, overrides, {"executor.kind": executor, "executor.max_parallel": max_parallel}
    )
    if dry_run:
        from vitplas.experiments.axes import grid_by_lines
        from vitplas.experiments.spec import expand

        runs = expand(spec)
        cost = _estimate(spec, runs, peak, mfu)
        per_run_text = cost.per_run_text() if cost else {}
        for run in runs if per_run else []:
            console.print(f"{run.run_id}{per_run_text.get(run.run_id, '')}", markup=False)
        console.print(f"{len(runs)} runs{'' if per_run else ' (--runs lists each)'}")
        for line in grid_by_lines(spec):  # as the sweep's dry run
            console.print(line, markup=False, highlight=False)
        _print_cost(cost, json_path)
        return
    with progress_view(console) as on_stage:
        summary = run_reproduce(
            spec, executor=executor, max_parallel=max_parallel, root=root, on_stage=on_stage
        )
    console.print(f"sweep: {_counts_line(summary['sweep'])}; launched {summary['launched']}")
    for rid, detail in summary["failed_runs"]:
        console.print(f"[red]FAILED[/red] {rid}: {detail}")
    for job in summary["analysis_failed"]:
        console.print(f"[red]FAILED analysis[/red] {job}")
    if summary["incomplete"]:
        console.print(f"partial report: {summary['incomplete']}", markup=False, highlight=False)
    console.print(f"report: {summary['report']}")
    if summary["failed_runs"] or summary["analysis_failed"] or summary["incomplete"]:
        raise typer.Exit(1)
