"""A study's tables say what ran: train=[auto:...] runs keep their grid label and show the set
they trained; analysis jobs with the same labels but other settings are never mixed."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from vitplas.experiments.aggregate import analysis_tables, probe_baseline, run_table, summarize
from vitplas.experiments.report import accuracy_table
from vitplas.experiments.spec import Run, SweepSpec, trained_label
from vitplas.experiments.store import RunState
from vitplas.runs import RunDir, atomic_write_json, write_table

# grid label -> what its run resolved and recorded in config.yaml (None: no config.yaml)
RESOLVED = {
    "auto:plasticity": ["fc1", "mha"],
    "auto:fisher": ["mha", "fc1"],  # the same set, recorded in another order
    "auto:condition": ["mha@8-11", "ln1"],
    "mha": ["mha"],
    "auto:random": None,
}
ACC = {"auto:plasticity": 91.0, "auto:fisher": 91.5, "auto:condition": 80.0, "mha": 90.0,
       "auto:random": 70.0}  # fmt: skip


def _finished(root, label: str) -> RunState:
    """A finished run of train=[label] whose runner resolved it to RESOLVED[label]."""
    grid = {"model": "m", "dataset": "d", "train": [label], "lr": 0.01}
    run = Run(f"run-{label.replace(':', '-')}", {"train": [label], "seed": 0}, grid)
    folder = root / "runs" / run.run_id
    folder.mkdir(parents=True)
    atomic_write_json(folder / "sweep.json", {"run_id": run.run_id, "config": grid})
    if RESOLVED[label] is not None:
        resolved = {**grid, "train": RESOLVED[label], "select": {"resolved": True}}
        (folder / "config.yaml").write_text(yaml.safe_dump(resolved))
    atomic_write_json(folder / "result.json", {"test_acc": ACC[label], "best_val_acc": 1.0})
    RunDir(folder).mark_done()
    return RunState(run, folder, "done")


@pytest.fixture
def auto_table(tmp_path) -> pd.DataFrame:
    return run_table([_finished(tmp_path, label) for label in RESOLVED])


def test_trained_label_is_canonical():
    assert trained_label(["fc1", "mha"]) == trained_label(["mha", "fc1"]) == "mha+fc1"
    assert trained_label(["fc1@3", "mha@8-11", "mha@0-1"]) == "mha@0-1+mha@8-11+fc1@3"
    assert trained_label(["lora"]) == "lora" and trained_label("mha+fc1") == "mha+fc1"


def test_auto_run_rows_keep_the_label_and_show_the_resolved_set(auto_table):
    rows = auto_table.set_index("train")
    assert list(rows.index) == list(RESOLVED)  # the grid label stays the row's identity
    # two criteria that picked the same set read the same
    assert rows.loc["auto:plasticity", "trained"] == rows.loc["auto:fisher", "trained"]
    assert rows.loc["auto:fisher", "trained"] == "mha+fc1"
    assert rows.loc["auto:condition", "trained"] == "ln1+mha@8-11"
    assert rows.loc["mha", "trained"] == "mha"
    assert pd.isna(rows.loc["auto:random", "trained"])  # no resolved config: unknown, not 'auto'


def test_best_and_accuracy_table_say_what_each_auto_label_trained(auto_table):
    spec = SweepSpec(name="t", grid={"dataset": ["d"], "seed": [0], "lr": [0.01],
                                     "train": [[t] for t in RESOLVED]})  # fmt: skip
    out = summarize(auto_table, spec)
    best = out["best"].set_index("train")
    assert best.loc["auto:fisher", "trained"] == "mha+fc1"
    assert best.loc["auto:fisher", "mean"] == pytest.approx(91.5)
    assert out["components"].set_index("train").loc["auto:condition", "trained"] == "ln1+mha@8-11"
    cells = accuracy_table(out["best"], None).set_index("dataset").loc["d"]
    assert cells.filter(like="auto:fisher").iloc[0] == "91.50 ± 0.00 [mha+fc1]"
    assert cells.filter(like="auto:plasticity").iloc[0] == "91.00 ± 0.00 [mha+fc1]"
    assert "[" not in cells.filter(regex="^MHA$|^mha$").iloc[0]


def _job(root, kind: str, job: str, tables: dict[str, pd.DataFrame]) -> None:
    """A finished analysis job folder <root>/analysis/<kind>/<job> holding `tables`, sealed."""
    folder = root / "analysis" / kind / job
    run = RunDir(folder)
    for name, frame in tables.items():
        write_table(frame, folder / name)
    run.mark_done()


def _plasticity(target: str, means: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"model": "m", "reference": "photos", "target": target,
                         "inputs": "images", "layer": [0, 0], "component": ["mha", "fc1"],
                         "mean": means, "std": 0.1, "n": 64, "ci95": 0.01})  # fmt: skip


BOUNDS = pd.DataFrame({"model": "m", "layer": [0, 0], "component": ["mha", "fc1"],
                       "bound": [3.0, 2.0], "radius": 5.0, "norm_scale": float("nan")})  # fmt: skip


def test_analysis_rows_name_their_job_and_equal_bounds_are_kept_once(tmp_path):
    ratio = _plasticity("a", [2.0, 1.0]).assign(bound=[3.0, 2.0], ratio=[2 / 3, 0.5])
    first = {"plasticity": _plasticity("a", [2.0, 1.0]), "bounds": BOUNDS,
             "bound_ratio": ratio.assign(exceed_frac=0.0)}  # fmt: skip
    _job(tmp_path, "plasticity", "m_a_1", first)
    _job(tmp_path, "plasticity", "m_b_2", {"plasticity": _plasticity("b", [4.0, 3.0])})
    # a bounds job over the first plasticity run: the same bounds, the same ratios (fewer
    # columns: it has no per-pair exceedances)
    _job(tmp_path, "bounds", "m_3", {"bounds": BOUNDS, "bound_ratio": ratio})
    tables = analysis_tables(tmp_path)
    plast = tables["plasticity"].set_index(["target", "component"])
    assert plast.loc[("a", "mha"), "job"] == "plasticity/m_a_1"
    assert plast.loc[("b", "mha"), "mean"] == 4.0 and len(plast) == 4
    both = {"bounds/m_3 + plasticity/m_a_1"}  # one row per cell, naming the jobs that gave it
    assert len(tables["bounds"]) == 2 and set(tables["bounds"]["job"]) == both
    ratios = tables["bound_ratio"]
    assert len(ratios) == 2 and set(ratios["job"]) == both
    assert list(ratios["exceed_frac"]) == [0.0, 0.0]  # the plasticity run's column kept


def test_two_plasticity_jobs_with_equal_labels_are_never_averaged(tmp_path):
    _job(tmp_path, "plasticity", "m_a_1", {"plasticity": _plasticity("a", [2.0, 1.0])})
    # the same labels (model, reference, target, inputs), other settings (pairs, img_size ...)
    _job(tmp_path, "plasticity", "m_a_2", {"plasticity": _plasticity("a", [2.5, 1.0])})
    with pytest.raises(ValueError) as err:
        analysis_tables(tmp_path)
    message = str(err.value)
    assert "plasticity/m_a_1 and plasticity/m_a_2 both wrote plasticity rows for model=m, " in (
        message
    )
    assert "reference=photos, target=a, inputs=images with other settings" in message
    assert str(tmp_path / "analysis") in message and "\n" not in message
    # aggregate reads the spec's own jobs only: an earlier version's job folder is left out
    only = analysis_tables(tmp_path, {"plasticity/m_a_2"})["plasticity"]
    assert set(only["job"]) == {"plasticity/m_a_2"} and list(only["mean"]) == [2.5, 1.0]


def test_bounds_of_two_jobs_at_one_radius_are_refused(tmp_path):
    _job(tmp_path, "bounds", "m_1", {"bounds": BOUNDS})
    _job(tmp_path, "bounds", "m_2", {"bounds": BOUNDS.assign(bound=[3.5, 2.0])})
    with pytest.raises(ValueError, match=r"bounds/m_1 and bounds/m_2 both wrote bounds rows for "
                       r"model=m with other settings"):  # fmt: skip
        analysis_tables(tmp_path)
    # at another radius they are two series, not one number
    _job(tmp_path, "bounds", "m_2", {"bounds": BOUNDS.assign(bound=[3.5, 2.0], radius=6.0)})
    assert len(analysis_tables(tmp_path)["bounds"]) == 4
    # the same bound from another device, equal but for its last bits: one number, kept once
    _job(tmp_path, "bounds", "m_2", {"bounds": BOUNDS.assign(bound=[3.0 * (1 + 1e-15), 2.0])})
    assert len(analysis_tables(tmp_path)["bounds"]) == 2


def _probe(dataset: str, acc: float, job: str, pool: str = "token") -> pd.DataFrame:
    return pd.DataFrame({"model": ["m"], "dataset": dataset, "pool": pool, "backend": "torch",
                         "layer": [11], "component": "block", "acc": acc, "job": job})  # fmt: skip


def test_probe_baseline_of_two_jobs_for_one_dataset_is_refused():
    probes = pd.concat([_probe("a", 0.8, "probes/a_1"), _probe("b", 0.6, "probes/b_1")])
    base = probe_baseline(probes, layer=-1, component="block").set_index("dataset")
    assert base["probe_acc"].to_dict() == pytest.approx({"a": 80.0, "b": 60.0})
    two = pd.concat([probes, _probe("a", 0.7, "probes/a_2", pool="mean")])
    with pytest.raises(ValueError, match=r"probes/a_1 and probes/a_2 both wrote probe baseline "
                       r"rows for model=m, dataset=a"):  # fmt: skip
        probe_baseline(two, layer=-1, component="block")


def test_report_refuses_a_table_that_mixes_jobs(tmp_path):
    from vitplas.experiments.report import write_report

    mixed = pd.concat([_plasticity("a", [2.0, 1.0]).assign(job="plasticity/m_a_1"),
                       _plasticity("a", [2.5, 1.0]).assign(job="plasticity/m_a_2")])  # fmt: skip
    write_table(mixed, tmp_path / "tables" / "plasticity")
    with pytest.raises(ValueError, match=r"m_a_1 and plasticity/m_a_2 both wrote plasticity"):
        write_report(SweepSpec(name="t"), tmp_path)
    assert not (tmp_path / "report" / "report.md").exists()
