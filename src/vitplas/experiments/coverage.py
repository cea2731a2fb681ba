"""What a study's tables cover: every run and analysis job of its spec, and whether it was done.

`vitplas aggregate` writes the table `coverage` beside the others (one row per run and analysis
job: kind, name, state, detail), so that the tables say themselves whether they are those of
the whole study. An incomplete study (a run missing, failed or damaged, an analysis job not
done) is refused by `aggregate` and `report` (exit 1) unless the caller asks for a partial one
(`--partial`); a partial report says so on its first line.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from vitplas.experiments.analysis_plan import job_folder, state_of
from vitplas.experiments.spec import SweepSpec, analysis_jobs
from vitplas.experiments.store import RunState

COVERAGE = "coverage"  # its table's name under <root>/tables
COLUMNS = ["kind", "name", "state", "detail"]


class IncompleteStudyError(RuntimeError):
    """The tables are not those of the whole study and no partial one was asked for."""


def coverage_table(spec: SweepSpec, states: list[RunState], root: Path) -> pd.DataFrame:
    """One row per run (kind 'run', its run id) and analysis job ('analysis', kind/id) of the
    spec: its state (store.STATES) and why it is not done."""
    rows = [["run", s.run.run_id, s.state, s.detail] for s in states]
    for job in analysis_jobs(spec):
        state, detail = state_of(job_folder(root, job))
        rows.append(["analysis", f"{job.kind}/{job.job_id}", state, detail])
    return pd.DataFrame(rows, columns=COLUMNS)


def summary(coverage: pd.DataFrame) -> str:
    """'3 of 4 runs and 1 of 1 analysis jobs done (missing: a, b; failed: c)'."""
    parts = []
    for kind, noun in (("run", "runs"), ("analysis", "analysis jobs")):
        rows = coverage[coverage["kind"] == kind]
        if len(rows):
            parts.append(f"{int((rows['state'] == 'done').sum())} of {len(rows)} {noun}")
    undone = coverage[coverage["state"] != "done"]
    named = [
        f"{state}: {', '.join(group['name'].head(3))}{' ...' if len(group) > 3 else ''}"
        for state, group in undone.groupby("state", sort=True)
    ]
    return " and ".join(parts) + " done" + (f" ({'; '.join(named)})" if named else "")


def is_complete(coverage: pd.DataFrame) -> bool:
    return bool((coverage["state"] == "done").all())


def check_complete(tables: dict[str, pd.DataFrame], partial: bool, where: Path) -> str | None:
    """None for the tables of a whole study; with `partial`, the line that says what they
    cover; else an IncompleteStudyError saying what is missing and what to do."""
    coverage = tables.get(COVERAGE)
    if coverage is None:
        problem = f"{where / COVERAGE}.parquet is missing (not written by `vitplas aggregate`)"
        if not partial:
            raise IncompleteStudyError(f"{problem}; run `vitplas aggregate SPEC` first")
        return f"Partial report: {problem}, so what they cover is unknown."
    if is_complete(coverage):
        return None
    if not partial:
        raise IncompleteStudyError(
            f"the study is incomplete: {summary(coverage)}; finish it (`vitplas sweep SPEC` "
            "or `vitplas reproduce SPEC`, then `vitplas aggregate SPEC`), or pass --partial for a "
            "report of what is done, marked partial"
        )
    return f"Partial report: {summary(coverage)}; the tables cover what is done only."
