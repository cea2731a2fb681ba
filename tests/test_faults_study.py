"""A study after faults: a run stopped by a full disk is resumed by a plain rerun of the sweep,
a rerun that launches nothing says which runs failed and how to retry them, and `aggregate` and
`report` refuse an incomplete study unless asked for a partial one (which the report states on
its first line). A full disk while aggregating, reporting or exporting names the file and says
to rerun. The runs are the fake runner's (tests/plugins/vitplas_testjobs)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from vitplas.cli import app

FAKE = {"function": "vitplas_testjobs.fake:fake_finetune", "config": None}


def write_spec(tmp_path: Path, root: Path | None = None, **seed1) -> str:
    """Two fake runs (seeds 0 and 1); `seed1`: keys of the run of seed 1 only."""
    data = {
        "name": "faults",
        "root": str(root or tmp_path / "study"),
        "base": {"model": "tiny-random", "steps": 5, "lr": 0.01, "train": ["mha"]},
        "grid": {"dataset": ["a"], "seed": [0, 1]},
        "runner": FAKE,
        "executor": {"max_parallel": 2, "folder": str(tmp_path / "submitit")},
    }
    if seed1:
        data["base_by"] = {"seed": {1: seed1}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def _run_folders(path: str) -> list[Path]:
    root = Path(yaml.safe_load(Path(path).read_text())["root"])
    return sorted((root / "runs").iterdir())


# ---- sweeps after faults ---------------------------------------------------------------------


def test_a_run_stopped_by_a_full_disk_is_resumed_by_a_plain_rerun(tmp_path):
    """Case 11: after space was freed, `vitplas sweep SPEC` printed 'launched 0' and exited 1
    with no hint; only --retry-failed finished it."""
    flag = tmp_path / "disk-is-full"
    flag.touch()
    path = write_spec(tmp_path, disk_full_while=str(flag))
    first = invoke("sweep", path)
    assert first.exit_code == 1
    assert "launched 2; done 1, running 0, failed 0, damaged 0, missing 1, total 2" in first.output
    assert "stopped by a full disk (writing " in first.output
    assert "rerun the sweep to resume it" in first.output
    flag.unlink()  # space freed
    again = invoke("sweep", path)
    assert again.exit_code == 0, again.output
    assert "launched 1; done 2, running 0, failed 0, damaged 0, missing 0, total 2" in again.output


def test_a_rerun_that_launches_nothing_says_which_failed_and_how_to_retry(tmp_path):
    path = write_spec(tmp_path, fail=True)
    assert invoke("sweep", path).exit_code == 1
    again = invoke("sweep", path)
    assert again.exit_code == 1
    assert "launched 0; done 1, running 0, failed 1, damaged 0, missing 0, total 2" in again.output
    assert "FAILED a_1_" in again.output and "fake run asked to fail" in again.output
    assert (
        "1 failed run(s), listed above, are not rerun by a plain `vitplas sweep`: their failure "
        "is their own (diverged, an error in their config or data, a bug), not one a rerun "
        "resumes (killed, a full disk); fix the cause, then rerun with --retry-failed"
    ) in " ".join(again.output.split())


def _tmpfs(path: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("a full disk needs a small tmpfs, which only root can mount here")
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)])
    if mounted.returncode:
        pytest.skip("mount -t tmpfs failed (no privilege in this container)")


def _fill(disk: Path, leave: int) -> Path:
    """A ballast file that leaves about `leave` bytes free on `disk`."""
    stats = os.statvfs(disk)
    ballast = disk / "ballast"
    ballast.write_bytes(b"\0" * max(0, stats.f_bavail * stats.f_frsize - leave))
    return ballast


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "disk"
    _tmpfs(path, "8m")
    yield path
    subprocess.run(["umount", str(path)])


def test_a_real_full_disk_during_a_sweep_then_space_freed_finishes_with_a_plain_rerun(
    tmp_path, disk
):
    path = write_spec(tmp_path, root=disk / "study", write_mib=2)
    ballast = _fill(disk, 2**20)  # 1 MiB free: the 2 MiB record of the run of seed 1 does not fit
    first = invoke("sweep", path)
    assert first.exit_code == 1
    assert "done 1, running 0, failed 0, damaged 0, missing 1, total 2" in first.output
    assert "stopped by a full disk (writing " in first.output
    ballast.unlink()
    again = invoke("sweep", path)
    assert again.exit_code == 0, again.output
    assert "launched 1; done 2" in again.output


# ---- incomplete studies ----------------------------------------------------------------------


def test_aggregate_and_report_refuse_an_incomplete_study_unless_partial(tmp_path):
    """Case 14: both exited 0 on a study with a missing run folder."""
    path = write_spec(tmp_path)
    assert invoke("sweep", path).exit_code == 0
    assert invoke("aggregate", path).exit_code == 0
    complete = invoke("report", path)
    assert complete.exit_code == 0, complete.output
    report = tmp_path / "study" / "report" / "report.md"
    assert report.read_text().splitlines()[0] == "# faults"
    gone = _run_folders(path)[1]
    shutil.rmtree(gone)  # a run folder deleted
    aggregate = invoke("aggregate", path)
    assert aggregate.exit_code == 1
    what = f"1 of 2 runs done (missing: {gone.name})"
    assert f"the study is incomplete: {what}; the tables cover what is done only" in (
        " ".join(aggregate.output.split())
    )
    refused = invoke("report", path)
    assert refused.exit_code == 1
    assert f"error: the study is incomplete: {what}; finish it" in " ".join(refused.output.split())
    assert report.read_text().splitlines()[0] == "# faults"  # the old report is left as it was
    assert invoke("aggregate", path, "--partial").exit_code == 0
    partial = invoke("report", path, "--partial")
    assert partial.exit_code == 0, partial.output
    first = report.read_text().splitlines()[0]
    assert first == f"**Partial report: {what}; the tables cover what is done only.**"


def test_an_analysis_job_not_done_makes_the_study_incomplete(tmp_path):
    from vitplas.experiments.coverage import coverage_table
    from vitplas.experiments.spec import expand, load_spec
    from vitplas.experiments.store import scan

    path = write_spec(tmp_path)
    data = yaml.safe_load(Path(path).read_text())
    data["analysis"] = {"probes": [{"model": "tiny-random", "dataset": "digits"}]}
    Path(path).write_text(yaml.safe_dump(data))
    spec = load_spec(path)
    table = coverage_table(spec, scan(spec, expand(spec)), spec.root_path)
    assert table[["kind", "state"]].values.tolist() == [
        ["run", "missing"], ["run", "missing"], ["analysis", "missing"]
    ]  # fmt: skip
    assert table["name"].iloc[2].startswith("probes/")


# ---- a full disk names the file --------------------------------------------------------------


def _full_disk_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("error: ")]
    return line


def test_a_full_disk_in_aggregate_report_and_export_names_the_file(tmp_path, disk):
    path = write_spec(tmp_path, root=disk / "study")
    assert invoke("sweep", path).exit_code == 0
    advice = "and rerun the same command: it resumes where it stopped"
    ballast = _fill(disk, 2**10)
    line = _full_disk_line(invoke("aggregate", path))
    assert line.startswith(f"error: no space left on device writing {disk / 'study' / 'tables'}/")
    assert line.endswith(advice)
    ballast.unlink()
    assert invoke("aggregate", path).exit_code == 0
    ballast = _fill(disk, 2**10)
    line = _full_disk_line(invoke("report", path))
    assert line.startswith(f"error: no space left on device writing {disk / 'study' / 'report'}/")
    assert line.endswith(advice)
    line = _full_disk_line(invoke("export", "tiny-random", "--out", str(disk / "m.safetensors")))
    assert line.startswith(f"error: no space left on device writing {disk / 'm.safetensors'}; ")
    assert line.endswith(advice)
    assert not list(disk.rglob(".*.tmp"))  # no temp file left behind
    ballast.unlink()
    assert invoke("report", path).exit_code == 0
