"""The report of a sweep: figures (PNG + PDF) and a Markdown + HTML page with the tables.

Reads only the tidy tables of <root>/tables (written by aggregate); the tables of an incomplete
study (their `coverage` table, experiments.coverage) are refused unless a partial report is
asked for, which then says so on its first line. For the paper's studies
(`study: paper`) our numbers stand beside the published ones (PAPER.md section 5). The report
is a pure function of the tables: when they have not changed, nothing is redrawn.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd

from vitplas.experiments import evidence, stats
from vitplas.experiments.aggregate import CELLS, check_jobs_apart, read_tables
from vitplas.experiments.coverage import check_complete
from vitplas.experiments.published import published_accuracy, published_plasticity
from vitplas.experiments.spec import SweepSpec
from vitplas.models.components import THEORETICAL_RANK
from vitplas.plots import report as figs
from vitplas.plots.report import component_order
from vitplas.runs import atomic_write_text

DIGEST_FILE = "tables.sha256"


def tables_digest(root: Path) -> str:
    """sha256 over the CSV text of every table and over vitplas's own source (what the report
    is a function of: a new vitplas redraws the figures of unchanged tables)."""
    digest = hashlib.sha256()
    for path in sorted((root / "tables").glob("*.csv")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    package = Path(__file__).resolve().parents[1]
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _fmt(value: float, std: float | None = None) -> str:
    if pd.isna(value):
        return "-"
    return f"{value:.2f}" if std is None or pd.isna(std) else f"{value:.2f} ± {std:.2f}"


def markdown_table(frame: pd.DataFrame) -> str:
    """A DataFrame as a GitHub Markdown table (cells as given; floats with 4 significant)."""
    cells = frame.map(lambda v: f"{v:.4g}" if isinstance(v, float) else str(v))
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(row) + " |" for row in cells.astype(str).to_numpy().tolist()]
    return "\n".join([head, rule, *body])


def _trained_note(row: pd.Series) -> str:
    """' [mha+fc1]' when the cell's runs trained other than its label says (train=[auto:...]),
    else ''."""
    trained = row.get("trained")
    return f" [{trained}]" if isinstance(trained, str) and trained != row["train"] else ""


def accuracy_table(best: pd.DataFrame, published: pd.DataFrame | None) -> pd.DataFrame:
    """Dataset x train set: 'ours ± std' (%) at the best lr, with '(paper x)' when published
    and '[what it trained]' where that is not the label (train=[auto:fisher] -> [mha+fc1])."""
    order = component_order(best["train"])
    paper = {}
    if published is not None:
        paper = {(r.dataset, r.train): r.test_acc for r in published.itertuples()}
    rows = []
    for dataset, part in best.groupby("dataset", sort=False):
        row = {"dataset": dataset}
        for train in order:
            sel = part[part["train"] == train]
            cell = "-"
            if len(sel):
                cell = _fmt(sel["mean"].iloc[0], sel["std"].iloc[0]) + _trained_note(sel.iloc[0])
            if (dataset, train) in paper:
                cell += f" (paper {paper[(dataset, train)]:.2f})"
            row[figs.style.label(train)] = cell
        rows.append(row)
    means = best.groupby("train")["mean"].mean()
    average = {"dataset": "average"}
    for train in order:
        average[figs.style.label(train)] = _fmt(means[train])
        if ("average", train) in paper:
            average[figs.style.label(train)] += f" (paper {paper[('average', train)]:.2f})"
    return pd.DataFrame([*rows, average])


def _published_for(spec: SweepSpec, best: pd.DataFrame) -> pd.DataFrame | None:
    if spec.study != "paper" or "model" not in best:
        return None
    pub = published_accuracy()
    pub = pub[pub["model"].isin(best["model"].unique())]
    return pub if len(pub) else None


def _section(title: str, body: str) -> list[str]:
    return [f"## {title}", "", body, ""]


PLASTICITY_NOTE = (
    "Per component, the median over every (dataset, layer) of its mean plasticity over the"
    " pairs, ranked from the most plastic; `theory rank` is the rank the paper's bounds give"
    " (1 = least smooth)."
)


def plasticity_summary(plasticity: pd.DataFrame, study: str) -> pd.DataFrame:
    """Per component, ranked by it: the median over (targets, layers) of the per-layer mean
    plasticity, and its theoretical rank ('-' where the theory ranks none)."""
    med = plasticity.groupby("component")["mean"].median().sort_values(ascending=False)
    out = pd.DataFrame({
        "rank": range(1, len(med) + 1),
        "component": [figs.style.label(c) for c in med.index],
        "median plasticity": med.to_numpy(),
        "theory rank": [str(THEORETICAL_RANK.get(c, "-")) for c in med.index],
    })  # fmt: skip
    if study == "paper":
        pub = published_plasticity().set_index("component")["median"]
        out["paper's median (approx.)"] = [pub.get(c, float("nan")) for c in med.index]
    return out


COMPONENT_COLUMNS = {  # the per-train-set table: column -> header
    "train": "train set",
    "mean_acc": "test accuracy (%)",
    "n_datasets": "datasets",
    "mean_gap": "lr sensitivity (points)",
    "mean_gain": "gain over the probe (%)",
    "trained": "trained",
}
COMPONENT_NOTE = (
    "Means over datasets. Test accuracy: at each dataset's best lr, the seed mean."
    " Lr sensitivity: the best minus the worst seed-mean test accuracy over the swept lrs."
    " Gain over the probe: finetuned minus linear-probe accuracy, over the probe's."
)


def components_table(components: pd.DataFrame) -> pd.DataFrame:
    """The per-train-set table with readable headers, gains in %."""
    comp = components.copy()
    if "mean_gain" in comp:
        comp["mean_gain"] = comp["mean_gain"] * 100  # a ratio, shown in %
    comp["train"] = [figs.style.label(t) for t in comp["train"]]
    return comp.rename(columns=COMPONENT_COLUMNS)


def figure_context(spec: SweepSpec, tables: dict[str, pd.DataFrame]) -> str:
    """What every figure's title names: model(s), datasets, study protocol and lr rule."""
    runs = tables.get("runs", pd.DataFrame())
    models = ", ".join(map(str, dict.fromkeys(runs["model"]))) if "model" in runs else ""
    data = list(dict.fromkeys(runs["dataset"])) if "dataset" in runs else []
    shown = ", ".join(map(str, data[:4])) + (f" +{len(data) - 4}" if len(data) > 4 else "")
    count = f"{len(data)} dataset{'s' if len(data) > 1 else ''}"
    parts = [models, f"{count} ({shown})" if data else ""]
    parts.append(f"study {spec.study}, lr chosen by {spec.select_by}")
    return " · ".join(p for p in parts if p)


def render_figures(
    tables: dict[str, pd.DataFrame], out: Path, context: str = ""
) -> dict[str, list[Path]]:
    """Every figure the tables allow; returns {name: [png, pdf]}. `context` ends each title."""
    made: dict[str, list[Path]] = {}
    best = tables.get("best")
    if "components" in tables:
        made["accuracy_by_component"] = figs.accuracy_by_component(
            tables["components"], out / "accuracy_by_component", best=best, context=context
        )
        if "mean_gain" in tables["components"]:
            made["gain_by_component"] = figs.gain_by_component(
                tables["components"], out / "gain_by_component", context=context
            )
    if "runs" in tables and len(tables["runs"]):
        made["accuracy_over_lrs"] = figs.accuracy_over_lrs(
            tables["runs"], out / "accuracy_over_lrs", context=context
        )
    curves = tables.get("curves")
    if curves is not None and len(curves) and best is not None:
        for metric in ("grad_norm", "val_loss"):
            if (curves["metric"] == metric).any():
                made[f"curves_{metric}"] = figs.curves(
                    curves, best, metric, out / f"curves_{metric}", context=context
                )
        if curves["metric"].str.startswith("grad_norm/").any():
            made["grad_norm_per_component"] = figs.component_grads(
                curves, best, out / "grad_norm_per_component", context=context
            )
    made.update(analysis_figures(tables, out))
    made.update(evidence.evidence_figures(tables, out))
    return made


def analysis_figures(tables: dict[str, pd.DataFrame], out: Path) -> dict[str, list[Path]]:
    """Plasticity and bounds figures, drawn by the analysis area's own plot module."""
    if "plasticity" not in tables and "bounds" not in tables:
        return {}
    from vitplas.plots import plasticity as plots  # the analysis area's figures

    made: dict[str, list[Path]] = {}
    if "plasticity" in tables:
        frame = tables["plasticity"]
        made["plasticity_by_rank"] = plots.plasticity_box(frame, out / "plasticity_by_rank")
        made["plasticity_vs_depth"] = plots.plasticity_depth(frame, out / "plasticity_vs_depth")
    if "bounds" in tables:
        made["bounds_per_layer"] = plots.bounds_per_layer(
            tables["bounds"], out / "bounds_per_layer"
        )
    if "bound_ratio" in tables:
        made["bound_ratio"] = plots.bound_ratio(tables["bound_ratio"], out / "bound_ratio")
    return made


ITEMS = {"image": "images", "text": "texts"}  # what a run's throughput counts, by modality


def _items(runs: pd.DataFrame) -> str:
    """'images' or 'texts' for the runs' datasets (`images_per_s` counts either), else
    'examples' (a study of both modalities, or of datasets no registry entry names)."""
    from vitplas.data import DataError, dataset_info

    kinds = set()
    for name in runs["dataset"].unique():
        try:
            kinds.add(ITEMS[dataset_info(name).modality])
        except DataError:
            kinds.add("examples")
    return kinds.pop() if len(kinds) == 1 else "examples"


def build_markdown(
    spec: SweepSpec, tables: dict[str, pd.DataFrame], figures: dict[str, list[Path]], out: Path
) -> str:
    """The report page: what ran, the paper's tables, the figures."""
    runs = tables.get("runs", pd.DataFrame())
    lines = [f"# {spec.name}", "", spec.description or "", ""]
    lines += [f"Study: `{spec.study}`; spec: `{spec.source}`; finished runs: {len(runs)}.", ""]
    if len(runs) and "wall_time_s" in runs:
        lines += [
            f"Total training wall time {runs['wall_time_s'].sum() / 60:.1f} min; "
            f"median throughput {runs['images_per_s'].median():.1f} {_items(runs)}/s.",
            "",
        ]
    if "best" in tables:
        best = tables["best"]
        lines += [selection_rule(spec), ""]
        for key, part in _by_model(best):
            acc = accuracy_table(part, _published_for(spec, part))
            title = "Test accuracy at the best lr, in %: seed mean ± std" + key
            lines += _section(title, markdown_table(acc))
    if "components" in tables:
        table = markdown_table(components_table(tables["components"]))
        lines += _section("Per train set, over datasets", f"{COMPONENT_NOTE}\n\n{table}")
    if "tests" in tables and len(tables["tests"]):
        lines += _section(
            "MHA against each train set across datasets: paired t-test, two-sided; Wilcoxon,"
            " one-sided",
            markdown_table(tables["tests"]),
        )
    if "bound_ratio" in tables:  # every bound, exceeded or not, with the paper's beside
        from vitplas.analysis.tables import bound_lines

        checked = "\n".join(f"- {line}" for line in bound_lines(tables["bound_ratio"]))
        if checked:
            lines += _section("Bounds: pairs above each, assumptions checked on the pairs", checked)
    exceeded = _exceedances(tables)
    if exceeded:
        lines += _section("Bounds exceeded (their assumption fails for those pairs)", exceeded)
    for title, frame in evidence.report_sections(tables):
        lines += _section(title, markdown_table(frame))
    if "plasticity" in tables:
        table = markdown_table(plasticity_summary(tables["plasticity"], spec.study))
        lines += _section("Plasticity per component", f"{PLASTICITY_NOTE}\n\n{table}")
    lines += ["## Figures", ""]
    for name, paths in figures.items():
        png = paths[0].relative_to(out)
        lines += [f"### {name.replace('_', ' ')}", "", f"![{name}]({png})", ""]
    return "\n".join(lines).rstrip() + "\n"


SELECT_BY = {
    "test_acc": "the test accuracy, as in the paper; optimistic, since the test set picks the lr",
    "best_val_acc": "the best validation accuracy; the test set stays unseen",
}


def selection_rule(spec: SweepSpec) -> str:
    """The sentence that says how the best lr was picked (the spec's `select_by`)."""
    what = SELECT_BY.get(spec.select_by, f"`{spec.select_by}`")
    return (
        f"Best lr per cell: the highest seed-mean of `{spec.select_by}`, {what}. A tie goes "
        "to the smallest lr. Std over seeds is the population std; the tables' `ci95` is a "
        f"95% CI half-width with Student's t quantile below {stats.T_UNTIL} seeds."
    )


def _exceedances(tables: dict[str, pd.DataFrame]) -> str:
    """A Markdown list of the bounds some pairs exceed, with their assumptions ('' if none)."""
    from vitplas.analysis.tables import exceedance_lines

    if "bound_ratio" not in tables or "exceed_frac" not in tables["bound_ratio"]:
        return ""
    return "\n".join(f"- {line}" for line in exceedance_lines(tables["bound_ratio"]))


def _by_model(best: pd.DataFrame):
    groups = [k for k in ("model", "optimizer") if k in best]
    if not groups:
        yield "", best
        return
    for key, part in best.groupby(groups, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        yield " — " + ", ".join(map(str, key)), part


def to_html(markdown_text: str, title: str) -> str:
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables"])
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
    )
    style += "td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{style}</style></head><body>{body}</body></html>\n"
    )


def write_report(
    spec: SweepSpec, root: str | Path | None = None, force: bool = False, partial: bool = False
) -> Path:
    """Figures + report.md + report.html under <root>/report; returns report.md's path.

    The tables of an incomplete study (their `coverage` table) are an IncompleteStudyError
    unless `partial`, and the report of such tables says so on its first line. Skips all work
    when the tables are unchanged since the last report (unless `force`).
    """
    root = Path(root) if root is not None else spec.root_path
    out = root / "report"
    tables = read_tables(root)
    for name in CELLS.keys() & tables.keys():  # as read: a table made elsewhere may mix jobs
        check_jobs_apart(tables[name], name, where=root / "analysis")
    note = check_complete(tables, partial, root / "tables")  # refused unless complete/partial
    digest = tables_digest(root) + ("+partial" if note else "")
    marker = out / DIGEST_FILE
    if not force and marker.exists() and marker.read_text().strip() == digest:
        return out / "report.md"
    os.environ.setdefault("SOURCE_DATE_EPOCH", "0")  # PDFs without a creation date: reproducible
    figures = render_figures(tables, out / "figures", figure_context(spec, tables))
    text = build_markdown(spec, tables, figures, out)
    if note:
        text = f"**{note}**\n\n{text}"
    atomic_write_text(out / "report.md", text)
    atomic_write_text(out / "report.html", to_html(text, spec.name))
    atomic_write_text(marker, digest + "\n")
    return out / "report.md"
