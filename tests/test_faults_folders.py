"""Commands stay inside their folder, and what they write the group can read.

Every path that deletes in a run folder (`vitplas clean`, the train state pruned once a run is
DONE, --repair's clear, a failed start's removal) is tried with symlinks out of the folder:
what they point to is never deleted. And records get the mode a plain open() gives (the
umask's), not a temp file's 0600.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
from test_train_support import toy_config, toy_sources
from typer.testing import CliRunner

from vitplas.cli import app
from vitplas.jobs.lifecycle import removed_if_unused, run_job
from vitplas.jobs.runners import run_finetune
from vitplas.runs import RunDir

MIB = b"\0" * 2**20


def _outside(tmp_path: Path) -> Path:
    """A folder outside every run folder, holding a 1 MiB train-state-like step folder."""
    other = tmp_path / "elsewhere"
    (other / "step_00000004").mkdir(parents=True)
    (other / "step_00000004" / "state.pt").write_bytes(MIB)
    (other / "keep.txt").write_text("not a run's")
    return other


def _tree(folder: Path) -> dict[str, int]:
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()
    }


def _finished_run(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "result.json").write_text("{}")
    RunDir(folder).mark_done()
    return folder


def test_clean_never_follows_a_symlinked_checkpoints_folder(tmp_path):
    """Case 10: `vitplas clean RUN` with checkpoints/ a symlink out of the run folder."""
    other = _outside(tmp_path)
    before = _tree(other)
    run = _finished_run(tmp_path / "run")
    (run / "checkpoints").symlink_to(other, target_is_directory=True)
    result = CliRunner().invoke(app, ["clean", str(run)])
    assert result.exit_code == 0, result.output
    assert _tree(other) == before  # nothing outside the run folder deleted
    assert "1 finished run(s): freed 0.0 MiB" in result.output
    assert f"kept what {run / 'checkpoints'} holds: it is a symlink out of the run folder" in (
        result.output
    )
    assert (run / "checkpoints").is_symlink()


def test_clean_removes_a_symlinked_step_folder_as_a_link_only(tmp_path):
    other = _outside(tmp_path)
    run = _finished_run(tmp_path / "run")
    own = run / "checkpoints" / "step_00000008"
    own.mkdir(parents=True)
    (own / "state.pt").write_bytes(MIB)
    (run / "checkpoints" / "step_00000004").symlink_to(other / "step_00000004")
    (run / "estimate_state.pt").symlink_to(other / "keep.txt")
    result = CliRunner().invoke(app, ["clean", str(run)])
    assert "freed 1.0 MiB" in result.output  # its own state; the links count nothing
    assert not (run / "checkpoints" / "step_00000004").exists()
    assert not own.exists() and not (run / "estimate_state.pt").is_symlink()
    assert _tree(other) == {"step_00000004/state.pt": 2**20, "keep.txt": 11}


def test_a_finished_run_prunes_no_train_state_outside_its_folder(tmp_path):
    """The train state pruned once DONE: through a symlinked checkpoints/, nothing is deleted
    (and a warning says so)."""
    other = tmp_path / "scratch"
    other.mkdir()
    (other / "step_00000099").mkdir()
    (other / "step_00000099" / "state.pt").write_bytes(b"another run's")
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").symlink_to(other, target_is_directory=True)
    with pytest.warns(UserWarning, match="the train state was not pruned: kept what"):
        run_finetune(toy_config("steps=4", "eval_every=2"), run, sources=toy_sources())
    assert (run / "DONE").exists()
    assert (other / "step_00000099" / "state.pt").read_bytes() == b"another run's"
    assert sorted(p.name for p in other.iterdir()) == [
        "best.safetensors", "step_00000002", "step_00000004", "step_00000099"
    ]  # fmt: skip


def test_a_finished_run_prunes_its_own_train_state(tmp_path):
    run = tmp_path / "run"
    run_finetune(toy_config("steps=4", "eval_every=2"), run, sources=toy_sources())
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.safetensors"]


def test_repair_clears_links_not_what_they_point_to(tmp_path):
    other = _outside(tmp_path)
    before = _tree(other)
    run = tmp_path / "run"
    cfg = toy_config("steps=4", "eval_every=2")
    first = run_finetune(cfg, run, sources=toy_sources())
    (run / "extra").symlink_to(other, target_is_directory=True)
    (run / "note.txt").symlink_to(other / "keep.txt")
    (run / "result.json").write_text("{}")  # damaged: --repair clears the folder
    repaired = run_finetune(cfg, run, sources=toy_sources(), repair=True)
    assert repaired["test_acc"] == first["test_acc"]
    assert _tree(other) == before
    assert not (run / "extra").exists() and not (run / "note.txt").exists()


def test_a_failed_start_removes_links_not_what_they_point_to(tmp_path):
    other = _outside(tmp_path)
    before = _tree(other)
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="start failed"), removed_if_unused(run):
        run.mkdir()
        (run / "config.yaml").symlink_to(other / "keep.txt")  # a file by is_file()
        raise RuntimeError("start failed")
    assert not run.exists()
    assert _tree(other) == before
    with pytest.raises(RuntimeError), removed_if_unused(run):
        run.mkdir()
        (run / "checkpoints").symlink_to(other, target_is_directory=True)
        raise RuntimeError("start failed")
    assert (run / "checkpoints").is_symlink()  # not a start's file: the folder stays
    assert _tree(other) == before


def test_a_pairs_resume_deletes_no_parts_outside_its_folder(tmp_path):
    """A resume deletes the parts past its resume point: never through a symlinked pairs/."""
    from test_jobs_contract import _cfg

    from vitplas.jobs.table import get

    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "part-00000.parquet").write_bytes(b"another run's part")
    run = tmp_path / "run"
    run.mkdir()
    (run / "pairs").symlink_to(other, target_is_directory=True)
    with pytest.raises(ValueError, match=rf"{run / 'pairs'} is a symlink out of the run folder"):
        run_job(get("plasticity"), _cfg("plasticity", save_pairs=True), run)
    assert (other / "part-00000.parquet").read_bytes() == b"another run's part"


# ---- modes -----------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    """Set the process umask for one test (restored after)."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_records_get_the_umask_mode_as_a_plain_open_would(tmp_path, umask, mask):
    """Case 16: records were 0600 (the temp file's mode) whatever the umask."""
    from vitplas.analysis.pair_file import PairWriter
    from vitplas.runs import atomic_write_json, write_table

    umask(mask)
    expected = 0o666 & ~mask
    run = RunDir(tmp_path / "run")
    atomic_write_json(run / "result.json", {"a": 1})
    import pandas as pd

    write_table(pd.DataFrame({"x": [1]}), run / "table")
    writer = PairWriter(run / "pairs.parquet", ["mha"], run / "pairs")
    writer.add(torch.ones(2, 1, 1))
    writer.finish()
    run.mark_done()
    with open(run / "plain.txt", "w") as handle:  # the reference: a plain open
        handle.write("x")
    names = ["result.json", "table.csv", "table.parquet", "pairs.parquet", "checksums.json"]
    modes = {name: oct(_mode(run / name)) for name in [*names, "DONE", "plain.txt"]}
    assert modes == dict.fromkeys(modes, oct(expected))
    assert not list(run.path.glob(".*.tmp"))  # no temp file left


def test_a_finished_finetune_is_readable_by_the_group(tmp_path, umask):
    umask(0o027)
    run = tmp_path / "run"
    run_finetune(toy_config("steps=4", "eval_every=2"), run, sources=toy_sources())
    files = [p for p in run.rglob("*") if p.is_file() and p.name != ".lock"]
    assert len(files) >= 7
    assert {p.relative_to(run).as_posix(): oct(_mode(p) & 0o040) for p in files} == {
        p.relative_to(run).as_posix(): oct(0o040) for p in files
    }
