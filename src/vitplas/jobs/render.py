"""The command line's printout of each job's result (a Job record's `render`): stdout holds the
results, one line per fact; progress and notes go to stderr.

Output that is not a terminal (a pipe, a file) is printed at a fixed wide width, so that rich
never wraps a name in the middle of a word there.
"""

from __future__ import annotations

import json
import sys
from typing import Any

PIPE_WIDTH = 160  # columns of output that is not a terminal


def console(stderr: bool = False):
    """A rich Console: the terminal's width on a terminal, PIPE_WIDTH elsewhere."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else PIPE_WIDTH
    return Console(stderr=stderr, width=width, soft_wrap=width is not None)


def _read_back_note(result: dict[str, Any]) -> None:
    if result.get("skipped"):
        console(stderr=True).print(
            f"finished run of these settings read back from {result['run_dir']} (not recomputed)",
            markup=False,
        )


def plasticity(result: dict[str, Any], cfg: Any) -> None:
    """Ranking table, its CIs (and their units), the bounds' lines, exceedances and the run
    folder; a note (stderr) where a stream has few independent units."""
    import pandas as pd
    from rich.table import Table

    out = console()
    table = Table(title=f"Plasticity of {result['model']}, pooled over layers (ranked)")
    for column in ("rank", "component", "mean", "95% CI", "std", "n", "units", "theory rank"):
        table.add_column(column, justify="right" if column != "component" else "left")
    for row in result["pooled"].itertuples(index=False):
        theory = "-" if pd.isna(row.theory_rank) else str(int(row.theory_rank))
        units = str(getattr(row, "units", row.n))  # the independent units the CI rests on
        table.add_row(str(row.rank), row.component, f"{row.mean:.4g}", f"± {row.ci95:.2g}",
                      f"{row.std:.3g}", str(row.n), units, theory)  # fmt: skip
    out.print(f"model: {result['model_description']}", markup=False)
    out.print(f"reference: {result['reference_label']}", markup=False)
    out.print(f"target: {result['target_label']}", markup=False)
    out.print(table)
    settled = "yes" if result["settled"] else "no: neighbouring CIs overlap (raise --pairs)"
    out.print(f"ranking settled by the 95% CIs: {settled}")
    for note in result.get("notes") or []:  # once per run: few independent units
        console(stderr=True).print(f"note: {note}", markup=False)
    if result.get("bound_lines"):
        out.print("bounds (pairs above each; assumptions checked on the measured data):")
        for line in result["bound_lines"]:
            out.print(f"  {line}", markup=False)
    if result.get("exceedances"):
        out.print("bounds exceeded (the bound's assumption does not hold for those pairs):")
        for line in result["exceedances"]:
            out.print(f"  {line}", markup=False)
    for line in result.get("invariance", {}).get("summary", []):
        out.print(line, markup=False, highlight=False)
    stop = " (stopped early: CIs narrow enough)" if result["stopped_early"] else ""
    out.print(f"{result['pairs']} pairs in {result['timings']['total_s']:.1f} s{stop}")
    figures = f"  (figures in {result['run_dir']}/figures)" if cfg.figures else "  (figures=false)"
    out.print(f"run folder: {result['run_dir']}{figures}")
    if result.get("skipped"):
        out.print("(a finished run of these settings: read back from its folder, not recomputed)")


def comparison(result: dict[str, Any], cfg: Any) -> None:
    """Base against finetuned, per component, pooled over layers; the ratio with the digits
    that tell a change from none (vitplas.numbers.ratio_text)."""
    from rich.table import Table

    from vitplas.numbers import ratio_text

    out = console()
    table = Table(title=f"Plasticity before and after finetuning ({cfg.model}), pooled over layers")
    for column in ("component", "base", "finetuned", "finetuned / base"):
        table.add_column(column, justify="left" if column == "component" else "right")
    for row in result["pooled"].itertuples(index=False):
        base = f"{row.base_mean:.4g} ± {row.base_ci95:.2g}"
        tuned = f"{row.finetuned_mean:.4g} ± {row.finetuned_ci95:.2g}"
        table.add_row(row.component, base, tuned, ratio_text(row.ratio))
    out.print(f"model: {result['model_description']}", markup=False)
    out.print(table)
    out.print(
        f"run folder: {result['run_dir']}  (base/, finetuned/, compare_base[_pooled].csv, "
        "figures/compare_base.png)",
        markup=False,
    )


def bounds(result: dict[str, Any], cfg: Any) -> None:
    """r, each component's bound range over layers, and why a bound is undefined."""
    from vitplas.analysis.bounds import DATA_UNDEFINED, ONCE_MEASURED

    out = console()
    frame = result["bounds"]
    summary = frame.groupby("component", sort=False)["bound"].agg(["min", "median", "max"])
    out.print(f"radius r = {result['radius']} ({result['radius_source']})", markup=False)
    out.print(summary.to_string(float_format=lambda v: f"{v:.4g}"), markup=False)
    undefined = frame[frame["bound"].isna()].drop_duplicates(["component", "definition"])
    for name, definition in undefined[["component", "definition"]].itertuples(index=False):
        why = definition.split(ONCE_MEASURED)[0]  # the data bound: why, not the formula
        if why.endswith(DATA_UNDEFINED):  # the table names config keys; the command its flags
            why += " (here: --plasticity RUN, or --ln-bound abs|signed)"
        out.print(f"{name}: {why}", markup=False)
    out.print(f"run folder: {result['run_dir']}", markup=False)
    _read_back_note(result)


def radius(result: dict[str, Any], cfg: Any) -> None:
    """r (one per layer with inputs hidden or insitu), on the images it was measured on."""
    from vitplas.analysis.setup import RADIUS_AT

    images = result.get("images_measured", cfg.images)  # a record from before: cfg.images
    for layer, value in enumerate(result["values"]):
        where = RADIUS_AT[cfg.inputs].format(layer=layer)
        print(f"r = {value:.6g}  ({where}, {cfg.dataset}/{cfg.split}, {images} images)")
    print(f"run folder: {result['run_dir']}")
    _read_back_note(result)


def finetune(result: dict[str, Any], cfg: Any) -> None:
    keys = ("best_val_acc", "test_acc", "best_step", "wall_time_s")
    print(json.dumps({"run_dir": result["run_dir"], **{k: result[k] for k in keys}}))


def evaluation(result: dict[str, Any], cfg: Any) -> None:
    print(result["table"][["dataset", "split", "n", "acc", "loss"]].to_string(index=False))


def probe(result: dict[str, Any], cfg: Any) -> None:
    console(stderr=True).print(f"run folder: {result['run_dir']}", markup=False)
    table = result["table"][["layer", "component", "acc", "rel_to_baseline"]]
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


def selection(result: dict[str, Any], cfg: Any) -> None:
    from vitplas.selection.select import summary

    print(summary(result["frame"], result["picks"], cfg.budget, cfg.granularity, cfg.rule))
    for criterion, paths in result.get("exported", {}).items():
        print(f"exported {criterion}: {', '.join(str(p) for p in paths)}")
    print(f"wrote {result['run_dir']}/selection.csv")
    _read_back_note(result)


def landscape(result: dict[str, Any], cfg: Any) -> None:
    print(f"{len(result['grid'])} grid points in {result['timings']['total_s']:.1f} s")
    print(f"run folder: {result['run_dir']}  (figures/landscape.png, landscape.csv)")
    _read_back_note(result)
