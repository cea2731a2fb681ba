"""One tidy table of a sweep's runs, and the paper's summaries of it, written to <root>/tables.

Tables (CSV + Parquet):
    runs        one row per finished run: run_id, model, dataset, optimizer, grid values
                (train as the grid's label, e.g. 'mha' or 'auto:fisher'), trained (what the
                run trained: 'mha@8-11+fc1'), best_val_acc, test_acc, steps, wall_time_s, ...
    best        per (study keys): best lr by seed-mean, mean and std at that lr, n seeds,
                trained (the sets the cell's runs trained, ' | '-joined)
    gap         per (study keys): max - min over lrs of the seed-mean
    gain        best joined with the linear-probe baseline: relative gain
    components  per train set: mean over datasets of best accuracy (and of gain)
    tests       reference (MHA) vs each train set across datasets: paired t-test, Wilcoxon
    curves      training/validation curves (step, loss, grad_norm, val_loss, val_acc) per run
    coverage    every run and analysis job of the spec and its state (experiments.coverage):
                whether the tables are those of the whole study
plus the analysis tables (plasticity, bounds, probe, ...) found in the study's analysis runs,
each row naming its job (`job`: '<kind>/<job id>'); two jobs that would give one number (the
same labels, other settings) are refused (check_jobs_apart).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from vitplas import records
from vitplas.experiments import stats
from vitplas.experiments.axes import train_label
from vitplas.experiments.evidence import study_evidence
from vitplas.experiments.spec import Run, SweepSpec
from vitplas.experiments.store import RunState, key_values, result_rows, scan
from vitplas.jobs.table import aggregate_cells
from vitplas.runs import write_table

REFERENCE = "mha"  # the component the paper compares every other one with
CURVE_KEYS = ("loss", "grad_norm", "val_loss", "val_acc")


def run_table(states: list[RunState]) -> pd.DataFrame:
    """The tidy table of finished runs (train sets as labels, e.g. 'mha' or 'mha+fc1')."""
    rows = result_rows(states)
    for row in rows:
        if "train" in row:
            row["train"] = train_label(row["train"])
    return pd.DataFrame(rows)


def study_keys(table: pd.DataFrame, spec: SweepSpec) -> list[str]:
    """Columns that define one cell of the study: model/optimizer + grid axes but lr, seed,
    + dataset and train when they are set in `base` rather than being axes."""
    keys = [k for k in ("model", "optimizer") if k in table]
    keys += [a for a in spec.axes if a not in ("lr", "seed") and a not in keys and a in table]
    keys += [k for k in ("dataset", "train") if k in table and k not in keys]
    return keys


def curve_table(states: list[RunState]) -> pd.DataFrame:
    """Long table of curves: run_id, grid values, step, metric, value (from metrics.jsonl)."""
    rows = []
    for item in states:
        if item.state != "done":
            continue
        params = {**key_values(item), **item.run.params}  # lr is a column even off the grid
        params = {k: train_label(v) if k == "train" else v for k, v in params.items()}
        for record in records.read_metrics(item.folder):  # verified against the run's seal
            if not isinstance(record, dict) or "step" not in record:
                continue
            keys = [*CURVE_KEYS, *(k for k in record if k.startswith("grad_norm/"))]
            for key in keys:
                if isinstance(record.get(key), int | float):
                    rows.append(
                        {"run_id": item.run.run_id, **params, "step": record["step"],
                         "metric": key, "value": float(record[key])}
                    )  # fmt: skip
    return pd.DataFrame(rows)


def probe_baseline(probes: pd.DataFrame, layer: int, component: str) -> pd.DataFrame:
    """Linear-probe accuracy used as baseline, per (model, dataset): columns + probe_acc.

    `probes` is the probe area's tidy table (model, dataset, layer, component, acc);
    layer -1 means the last layer of each model. Accuracies come out in percent, like the runs'.
    Two probe jobs (JOB column) giving the baseline of one (model, dataset) are a ValueError.
    """
    if probes.empty:
        return pd.DataFrame(columns=["dataset", "probe_acc"])
    part = probes[probes["component"] == component].copy()
    if layer < 0:
        last = part.groupby("model")["layer"].transform("max")
        part = part[part["layer"] == last + 1 + layer]
    else:
        part = part[part["layer"] == layer]
    keys = [k for k in ("model", "dataset") if k in part]
    check_jobs_apart(part, "probe baseline", keys)  # one baseline per (model, dataset)
    acc = "acc" if "acc" in part else "test_acc"  # training.probe writes `acc`
    out = part[[*keys, acc]].rename(columns={acc: "probe_acc"})
    if len(out) and out["probe_acc"].max() <= 1.0:  # a probe table in fractions: to percent
        out["probe_acc"] = out["probe_acc"] * 100
    return out


def summarize(
    table: pd.DataFrame, spec: SweepSpec, probes: pd.DataFrame | None = None
) -> dict[str, pd.DataFrame]:
    """The paper's summaries of the run table (see the module docstring)."""
    metric = "test_acc"
    out = {"runs": table}
    if table.empty:
        return out
    if "lr" not in table or "train" not in table:  # runners that record neither (fake runs)
        table = table.assign(**{k: table.get(k, "unknown") for k in ("lr", "train")})
    keys = study_keys(table, spec)
    out["best"] = stats.best_lr(table, keys, metric=metric, select_by=spec.select_by)
    out["best"] = stats.with_trained(out["best"], table, keys)
    out["gap"] = stats.lr_gap(table, keys, metric=metric)
    groups = [k for k in keys if k not in ("dataset", "train")]
    component_cols = [*groups, "train"]
    comp = out["best"].groupby(component_cols, sort=False)["mean"].agg(["mean", "count"])
    comp = comp.rename(columns={"mean": "mean_acc", "count": "n_datasets"}).reset_index()
    gap_mean = out["gap"].groupby(component_cols, sort=False)["gap"].mean().rename("mean_gap")
    comp = comp.merge(gap_mean.reset_index(), on=component_cols)
    if probes is not None and not probes.empty:
        base = probe_baseline(
            probes, spec.analysis.baseline.layer, spec.analysis.baseline.component
        )
        on = [k for k in ("model", "dataset") if k in base and k in out["best"]]
        out["gain"] = stats.relative_gain(out["best"], base, on=on)
        gains = out["gain"].groupby(component_cols, sort=False)["gain"].mean().rename("mean_gain")
        comp = comp.merge(gains.reset_index(), on=component_cols, how="left")
    out["components"] = stats.with_trained(comp, table, component_cols)
    if "train" in keys and "dataset" in keys:
        out["tests"] = stats.paired_tests(out["best"], reference=REFERENCE, groups=groups)
    return out


JOB = "job"  # the analysis job a row of an analysis table comes from: '<kind>/<job id>'
# per analysis table: the columns that name one number, and that number's column. Two jobs
# giving one cell other values (equal labels, other settings: pairs, img_size, protocol ...)
# would be mixed into one number by the summaries and figures made from the table: refused.
CELLS = aggregate_cells()  # derived from the job table (each Job record's `tables`)


def analysis_tables(root: Path, jobs: set[str] | None = None) -> dict[str, pd.DataFrame]:
    """The tidy tables of the study's finished analysis runs (<root>/analysis/<kind>/<job>/;
    only `jobs`, '<kind>/<job id>', when given: the spec's own, not those of its earlier
    versions),
    concatenated by table name (plasticity, bounds, probe, ...) with a JOB column naming each
    row's job. A cell (CELLS) that two jobs gave the same value is kept once (bounds and their
    ratios written by both a plasticity and a bounds job: _one_row_per_cell); other values are
    a ValueError naming two of the jobs (check_jobs_apart), the plasticity tables checked
    first. Each table is read verified against the run's seal (a damaged one is a
    DamagedRecordError naming it); per-pair files are left out."""
    frames: dict[str, list[pd.DataFrame]] = {}
    for folder in sorted((root / "analysis").glob("*/*")):
        if jobs is not None and f"{folder.parent.name}/{folder.name}" not in jobs:
            continue
        for name, data in _job_tables(folder).items():
            frames.setdefault(name, []).append(data)
    out = {}
    for name in sorted(frames, key=lambda n: list(CELLS).index(n) if n in CELLS else len(CELLS)):
        table = pd.concat(frames[name], ignore_index=True)
        if name not in CELLS:  # tables of no known cells: rows equal but for their job, once
            table = table.drop_duplicates(subset=[c for c in table if c != JOB], ignore_index=True)
        check_jobs_apart(table, name, where=root / "analysis")
        out[name] = _one_row_per_cell(table, name)
    return out


def _job_tables(folder: Path) -> dict[str, pd.DataFrame]:
    """{table name: table with its JOB column} of one finished analysis job ({} if not done)."""
    if not (folder / "DONE").exists():
        return {}
    job = f"{folder.parent.name}/{folder.name}"
    out = {}
    for path in sorted(folder.glob("*.parquet")):
        if path.stem == "pairs":  # --save-pairs: per pair, not a summary table
            continue
        data = records.read_table(folder, path.name)
        out[path.stem] = data.assign(**{JOB: job})
    return out


def _cell_keys(table: pd.DataFrame, name: str, keys: list[str] | None) -> list[str]:
    return [k for k in (CELLS.get(name, ([], ""))[0] if keys is None else keys) if k in table]


def _one_row_per_cell(table: pd.DataFrame, name: str) -> pd.DataFrame:
    """`table` with one row per cell that several jobs gave (the same value, check_jobs_apart):
    their rows merged, the first job's fields first and the others filling its gaps (a bounds
    job's ratios lack the per-pair exceedances of its plasticity run's); JOB names them all."""
    keys = _cell_keys(table, name, None)
    if not keys or table.empty:
        return table
    table = table.assign(_row=range(len(table)))
    shared = table.groupby(keys, sort=False, dropna=False)[JOB].transform("nunique") > 1
    if not shared.any():
        return table.drop(columns="_row")
    cells = table[shared].groupby(keys, sort=False, dropna=False, as_index=False)
    merged = cells.first()
    merged[JOB] = cells[JOB].agg(lambda v: " + ".join(sorted(set(v))))[JOB].to_numpy()
    out = pd.concat([table[~shared], merged], ignore_index=True).sort_values("_row")
    return out[[c for c in table.columns if c != "_row"]].reset_index(drop=True)


def check_jobs_apart(
    table: pd.DataFrame, name: str, keys: list[str] | None = None, where: Path | str | None = None
) -> None:
    """A ValueError when two analysis jobs (JOB column) gave `table` (named `name`) rows of one
    cell (`keys`, default CELLS[name]) with other values (any rows, when `keys` are given):
    whatever is computed from the table would merge them into one number."""
    keys = _cell_keys(table, name, keys)
    if JOB not in table or not keys or table.empty:
        return
    value = CELLS[name][1] if name in CELLS and CELLS[name][1] in table else None
    cells = table.groupby(keys, sort=False, dropna=False)
    jobs = cells[JOB].nunique()
    if value is not None:  # the same value from two jobs is one number, kept once (to 12
        # significant digits: one bound computed on two devices differs in its last bits)
        same = table[value].map(lambda v: float(f"{v:.12g}") if isinstance(v, float) else v)
        differ = same.groupby(cells.ngroup().to_numpy()).nunique(dropna=False) > 1
        jobs = jobs.where(differ.to_numpy(), 1)
    clash = (jobs > 1).to_numpy()
    if not clash.any():
        return
    rows = table[cells.ngroup().to_numpy() == clash.argmax()]  # the first clashing cell's
    if value is not None:  # two jobs that disagree, not two that agree
        rows = rows.drop_duplicates(subset=[value])
    both = " and ".join(sorted(rows[JOB].unique()[:2]))
    shown = [k for k in keys if k not in ("layer", "component", "radius", "norm_scale")]
    what = ", ".join(f"{k}={rows[k].iloc[0]}" for k in shown) or "the same cells"
    folder = where or "<root>/analysis"
    raise ValueError(
        f"analysis jobs {both} both wrote {name} rows for {what} with other settings, which the "
        f"study's tables would merge into one number; keep one: delete the other's folder under "
        f"{folder} (and its entry in the spec's analysis, if it has one), then aggregate again"
    )


def aggregate(
    spec: SweepSpec, runs: list[Run], root: str | Path | None = None
) -> dict[str, pd.DataFrame]:
    """Scan the store, summarise, write every table to <root>/tables; returns the tables."""
    root = Path(root) if root is not None else spec.root_path
    from vitplas.experiments.coverage import COVERAGE, coverage_table
    from vitplas.experiments.spec import analysis_jobs

    states = scan(spec, runs, root)
    extra = analysis_tables(root, {f"{j.kind}/{j.job_id}" for j in analysis_jobs(spec)})
    tables: dict[str, Any] = summarize(run_table(states), spec, extra.get("probe"))
    tables["curves"] = curve_table(states)
    tables.update(study_evidence(states, spec, tables))  # selection studies (train=[auto])
    tables.update(extra)
    tables[COVERAGE] = coverage_table(spec, states, root)  # what the tables cover
    for name, frame in tables.items():
        write_table(frame, root / "tables" / name)
    return tables


def read_tables(root: str | Path) -> dict[str, pd.DataFrame]:
    """The tables written by `aggregate` (Parquet), by name."""
    folder = Path(root) / "tables"
    return {p.stem: pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))}
