"""The SLURM executor on a real one-node cluster (scripts/slurm-local-cluster), compared with
the local executor. Skipped, with the reason, where SLURM cannot start."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from vitplas.experiments.launch import run_sweep
from vitplas.experiments.spec import expand, load_spec

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm-local-cluster"
pytestmark = pytest.mark.slurm


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if shutil.which("sbatch") is None:
        pytest.skip("SLURM is not installed (apt-get install slurmctld slurmd slurm-client munge)")
    ports = [str(_free_port()) for _ in range(2)]  # never clash with another cluster here
    env = dict(os.environ, VITPLAS_SLURM_DIR=str(tmp_path_factory.mktemp("slurm")),
               VITPLAS_SLURMCTLD_PORT=ports[0], VITPLAS_SLURMD_PORT=ports[1])  # fmt: skip
    start = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True)
    if start.returncode != 0:
        pytest.skip(f"the one-node SLURM cluster did not start: {start.stderr.strip()}")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(Path(env["VITPLAS_SLURM_DIR"]) / "slurm.conf")
    yield env
    subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True)
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


def _spec(tmp_path: Path, root: str):
    path = tmp_path / f"{root}.yaml"
    path.write_text(
        f"""# vitplas sweep {path.name}
name: slurm-test
root: {tmp_path / root}
base: {{model: tiny-random, steps: 6, sleep_s: 0.5}}
grid: {{dataset: [a, b], seed: [0], lr: [0.01, 0.03], train: [mha]}}
runner: {{function: "vitplas_testjobs.fake:fake_finetune", config: null}}
executor:
  max_parallel: 2
  folder: {tmp_path / root / "submitit"}
  slurm: {{gpus_per_node: 0, cpus_per_task: 1, time_min: 5}}
"""
    )
    return load_spec(path)


def _results(outcome) -> dict[str, dict]:
    out = {}
    for item in outcome.states:
        result = json.loads((item.folder / "result.json").read_text())
        out[item.run.run_id] = {k: v for k, v in result.items() if k != "wall_time_s"}
    return out


def test_slurm_sweep_equals_local_sweep(cluster, tmp_path):
    slurm_spec, local_spec = _spec(tmp_path, "slurm"), _spec(tmp_path, "local")
    runs = expand(slurm_spec)
    assert len(runs) == 4
    on_slurm = run_sweep(slurm_spec, runs, executor="slurm", poll_s=0.5)
    assert on_slurm.counts["done"] == 4, [
        (s.run.run_id, s.state, s.detail) for s in on_slurm.states
    ]
    assert all("_" in job for job in on_slurm.job_ids)  # one job array: <array id>_<task>
    assert len({job.split("_")[0] for job in on_slurm.job_ids}) == 1
    status = json.loads((on_slurm.states[0].folder / "status.json").read_text())
    assert status["executor"] == "slurm" and status["state"] == "done"
    on_local = run_sweep(local_spec, expand(local_spec), executor="local", poll_s=0.2)
    assert on_local.counts["done"] == 4
    assert _results(on_slurm) == _results(on_local)
    again = run_sweep(slurm_spec, runs, executor="slurm")
    assert again.launched == [] and again.job_ids == []
