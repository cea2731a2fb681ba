"""A study's analysis jobs go through its executor: child processes locally, SLURM jobs with
dependencies on a cluster (checked here through a stand-in `sbatch` that records what submitit
submits), each after what it needs; failures reported, done jobs never launched again."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_slurm import cluster  # noqa: F401  (the one-node SLURM cluster; skips without one)

from vitplas.config import ConfigError
from vitplas.experiments.analysis_launch import submit_slurm
from vitplas.experiments.analysis_plan import plan
from vitplas.experiments.launch import run_sweep
from vitplas.experiments.reproduce import reproduce, run_analysis
from vitplas.experiments.spec import expand, load_spec
from vitplas.experiments.store import run_dir

FAKE_RUN = {"function": "vitplas_testjobs.fake:fake_finetune", "config": None}
FAKE = {"function": "vitplas_testjobs.analysis:fake_analysis", "config": None}


def write_spec(tmp_path: Path, analysis: dict, seeds: int = 1, **executor) -> Path:
    data = {
        "name": "jobs",
        "root": str(tmp_path / "study"),
        "base": {"model": "tiny-random", "steps": 4},
        "grid": {"dataset": ["a"], "seed": list(range(seeds)), "lr": [0.01], "train": ["mha"]},
        "runner": FAKE_RUN,
        "executor": {"max_parallel": 2, "folder": str(tmp_path / "submitit"), **executor},
        "analysis": analysis,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def folders(spec) -> dict[str, Path]:
    """{kind: folder} of the spec's analysis jobs (one per kind in these tests)."""
    root = spec.root_path
    return {p.job.kind: p.folder for p in plan(spec, root, expand(spec))}


def result(folder: Path) -> dict:
    return json.loads((folder / "result.json").read_text())


def executions(folder: Path) -> int:
    log = folder / "executions.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_local_jobs_run_in_child_processes_failures_reported_done_never_relaunched(tmp_path):
    analysis = {"plasticity": [{**FAKE, "model": "m"}],
                "probes": [{**FAKE, "model": "m", "fail": True}]}  # fmt: skip
    spec = load_spec(write_spec(tmp_path, analysis))
    where = folders(spec)
    failed = run_analysis(spec, spec.root_path)
    assert failed == [f"probes/{where['probes'].name}: RuntimeError: fake analysis asked to fail"]
    done = result(where["plasticity"])
    assert done["pid"] != os.getpid()  # a process of its own (the reaper's child)
    assert done["ppid"] != os.getpid()
    status = json.loads((where["plasticity"] / "status.json").read_text())
    assert status["executor"] == "local" and status["state"] == "done"
    assert status["pid"] == done["pid"]
    again = run_analysis(spec, spec.root_path)
    assert again == failed  # the failed job is launched again, and fails again
    assert executions(where["plasticity"]) == 1  # the done one is not launched again
    assert executions(where["probes"]) == 2


def test_jobs_start_after_the_jobs_and_runs_they_need(tmp_path):
    root = tmp_path / "study"
    spec = load_spec(write_spec(tmp_path, {}))
    run_folder = run_dir(root, expand(spec)[0].run_id)
    analysis = {"plasticity": [{**FAKE, "model": "m", "sleep_s": 1.0}]}
    first = folders(load_spec(write_spec(tmp_path, analysis)))["plasticity"]
    analysis["bounds"] = [{**FAKE, "model": "m", "plasticity": str(first), "needs": [str(first)]}]
    analysis["probes"] = [{**FAKE, "model": f"vit@{run_folder}/best.safetensors",
                           "needs": [str(run_folder)]}]  # fmt: skip
    spec = load_spec(write_spec(tmp_path, analysis))
    planned = {p.job.kind: p for p in plan(spec, root, expand(spec))}
    assert planned["bounds"].needs_jobs == [f"plasticity/{first.name}"]
    assert planned["probes"].needs_runs == [run_folder.name]
    stages = []
    summary = reproduce(spec, on_stage=lambda *update: stages.append(update), poll_s=0.1)
    assert summary["analysis_failed"] == [] and summary["sweep"]["done"] == 1
    where = {kind: p.folder for kind, p in planned.items()}
    assert result(where["bounds"])["started"] >= result(where["plasticity"])["ended"]
    assert result(where["probes"])["pid"] != os.getpid()  # it found its run done (`needs`)
    analysis_stage = [s for s in stages if s[0] == "analysis"]
    assert analysis_stage[-1] == ("analysis", 3, 3)
    assert ("analysis", 2, 3) in analysis_stage  # two before the sweep, the probe after it


def test_a_job_that_needs_a_failed_one_is_blocked_and_says_why(tmp_path):
    analysis = {"plasticity": [{**FAKE, "model": "m", "fail": True}]}
    first = folders(load_spec(write_spec(tmp_path, analysis)))["plasticity"]
    analysis["bounds"] = [{**FAKE, "model": "m", "plasticity": str(first)}]
    spec = load_spec(write_spec(tmp_path, analysis))
    failed = run_analysis(spec, spec.root_path)
    blocked = folders(spec)["bounds"]
    assert failed[1] == (
        f"bounds/{blocked.name}: needs analysis job plasticity/{first.name}, which failed: "
        "RuntimeError: fake analysis asked to fail"
    )
    assert not blocked.exists()  # never launched


def test_jobs_that_need_each_other_are_refused():
    from vitplas.experiments.analysis_plan import Planned, _in_order
    from vitplas.experiments.spec import AnalysisJob

    a, b = (Planned(AnalysisJob(k, "x", "f", None), Path(k)) for k in ("plasticity", "bounds"))
    a.needs_jobs, b.needs_jobs = ["bounds/x"], ["plasticity/x"]
    with pytest.raises(ConfigError, match="in a circle: plasticity/x -> bounds/x -> plasticity"):
        _in_order([a, b])


@pytest.mark.slow
def test_a_bounds_job_divides_the_study_plasticity_job_run_before_it(tmp_path):
    tiny = {"model": "tiny-random", "random_init": True, "device": "cpu", "figures": False}
    measure = {**tiny, "target": "digits", "pairs": 8, "batch_size": 4, "radius_images": 8}
    analysis = {"plasticity": [measure]}
    first = folders(load_spec(write_spec(tmp_path, analysis)))["plasticity"]
    bounds = {**tiny, "dataset": "digits", "radius_images": 8, "plasticity": str(first)}
    spec = load_spec(write_spec(tmp_path, {**analysis, "bounds": [bounds]}))
    # the plasticity folder does not exist yet: the key naming it is checked when the job starts
    assert run_analysis(spec, spec.root_path) == []
    ratio = pd.read_csv(folders(spec)["bounds"] / "bound_ratio.csv")
    assert len(ratio) == 2 * 5  # a row per (layer, component) of the tiny model
    assert ratio["ratio"].notna().all()  # the data LayerNorm bound too: from the run's scales
    bad = {**bounds, "nonsense": 1}
    spec = load_spec(write_spec(tmp_path, {**analysis, "bounds": [bad]}))
    with pytest.raises(ConfigError, match="unknown config key"):
        run_analysis(spec, spec.root_path)  # the other keys are checked before anything runs


@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch) -> Path:
    """A stand-in `sbatch` on PATH that keeps each submitted script and answers job ids
    101, 102, ... as SLURM does (and an `srun`, never run); the folder holding the scripts."""
    scripts = tmp_path / "sbatch"
    scripts.mkdir()
    tool = tmp_path / "bin" / "sbatch"
    tool.parent.mkdir()
    tool.write_text(
        "#!/bin/sh\n"
        f'n=$(( $(ls "{scripts}" | wc -l) + 101 ))\n'
        f'cp "$1" "{scripts}/$n.sh"\n'
        'echo "Submitted batch job $n"\n'
    )
    srun = tool.parent / "srun"  # submitit looks for it to tell that SLURM is there
    srun.write_text("#!/bin/sh\nexit 1\n")
    for path in (tool, srun):
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tool.parent}{os.pathsep}{os.environ['PATH']}")
    return scripts


def sbatch_flags(script: Path) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", script.read_text(), re.M))


def test_slurm_jobs_are_submitted_with_dependencies_on_what_they_need(tmp_path, fake_sbatch):
    root = tmp_path / "study"
    slurm = {"kind": "slurm", "slurm": {"gpus_per_node": 0, "cpus_per_task": 2, "time_min": 7}}
    runs = expand(load_spec(write_spec(tmp_path, {}, seeds=2)))
    needed = run_dir(root, runs[1].run_id)
    analysis = {"plasticity": [{**FAKE, "model": "m"}]}
    first = folders(load_spec(write_spec(tmp_path, analysis)))["plasticity"]
    analysis["bounds"] = [{**FAKE, "model": "m", "plasticity": str(first)}]
    analysis["probes"] = [{**FAKE, "model": str(needed)}]
    spec = load_spec(write_spec(tmp_path, analysis, seeds=2, **slurm))
    planned = plan(spec, root, runs)
    before = [p for p in planned if p.job.kind != "probes"]
    submitted, blocked = submit_slurm(spec, before, root)
    assert blocked == {} and list(submitted.values()) == ["101", "102"]
    outcome = run_sweep(spec, runs, root=root, wait=False)  # the runs: one job array, 103
    assert outcome.job_ids == ["103_0", "103_1"]
    after = [p for p in planned if p.job.kind == "probes"]
    assert submit_slurm(spec, after, root, submitted)[0] == {f"probes/{after[0].job.job_id}": "104"}
    scripts = {n: sbatch_flags(fake_sbatch / f"{n}.sh") for n in (101, 102, 103, 104)}
    assert "dependency" not in scripts[101]  # plasticity needs nothing
    assert scripts[102]["dependency"] == "afterok:101"  # bounds after the plasticity job
    assert scripts[102]["kill-on-invalid-dep"] == "yes"  # dropped if the plasticity job fails
    assert scripts[104]["dependency"] == f"afterok:{outcome.job_ids[1]}"  # after its run
    assert scripts[103]["array"] == "0-1%2"  # the runs' array, parallelism max_parallel
    for flags in scripts.values():  # the spec's SLURM settings, for runs and analysis alike
        assert flags["cpus-per-task"] == "2" and flags["time"] == "7"
        assert flags["job-name"] == "vitplas-jobs"
    status = json.loads((first / "status.json").read_text())
    assert status == {**status, "state": "queued", "executor": "slurm", "job_id": "101"}
    assert submit_slurm(spec, before, root, submitted) == ({}, {})  # in flight: not again


def test_on_a_slurm_cluster_analysis_jobs_wait_for_their_runs(cluster, tmp_path):  # noqa: F811
    root = tmp_path / "study"
    slurm = {"kind": "slurm", "slurm": {"gpus_per_node": 0, "cpus_per_task": 1, "time_min": 5}}
    runs = expand(load_spec(write_spec(tmp_path, {})))
    needed = run_dir(root, runs[0].run_id)
    analysis = {"probes": [{**FAKE, "model": str(needed), "needs": [str(needed)]}]}
    spec = load_spec(write_spec(tmp_path, analysis, **slurm))
    summary = reproduce(spec, poll_s=0.5)
    assert summary["analysis_failed"] == [] and summary["sweep"]["done"] == 1
    status = json.loads((folders(spec)["probes"] / "status.json").read_text())
    assert status["executor"] == "slurm" and status["state"] == "done"
