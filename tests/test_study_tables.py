"""A study's tables say what ran: train=[auto:...] runs keep their grid label and show the set
they trained; analysis jobs with the same labels but other settings are never mixed."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from vitplas.experiments.aggregate import run_table, summarize
from vitplas.experiments.report import accuracy_table
from vitplas.experiments.spec import Run, SweepSpec, trained_label
from vitplas.experiments.store import RunState
from vitplas.runs import RunDir, atomic_write_json

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
