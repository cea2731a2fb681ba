"""Security: specs name only registered job functions, names cannot escape the study folder,
dataset pickles hold data only, and the tests' network guard covers DNS, UDP and children."""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from vitplas.cli import app
from vitplas.config import ConfigError
from vitplas.data import get_dataset
from vitplas.data.registry import DataError
from vitplas.experiments.spec import load_spec
from vitplas.experiments.store import run_dir
from vitplas.jobs import registry as jobs

FAKE = {"function": "vitplas_testjobs.fake:fake_finetune", "config": None}


def write_spec(tmp_path, **changes):
    data = {"name": "t", "root": str(tmp_path / "study"), "base": {"steps": 1},
            "grid": {"dataset": ["a"], "seed": [0]}, "runner": FAKE}  # fmt: skip
    data.update(changes)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_spec_cannot_name_any_importable_callable(tmp_path):
    evil = write_spec(tmp_path, runner={"function": "builtins:print", "config": None})
    with pytest.raises(ConfigError, match="runner: function 'builtins:print' is not a registered"):
        load_spec(evil)
    result = CliRunner().invoke(app, ["sweep", str(evil)])
    assert result.exit_code == 2 and not (tmp_path / "study").exists()
    assert result.output.startswith("error: runner: function 'builtins:print' is not a registered")
    config = write_spec(tmp_path, runner={"function": FAKE["function"], "config": "os:system"})
    with pytest.raises(ConfigError, match="config 'os:system' is not a registered job config"):
        load_spec(config)


def test_analysis_entries_cannot_name_any_callable_and_users_register_their_own(tmp_path):
    from vitplas.experiments.spec import analysis_jobs

    entry = {"model": "tiny-random", "function": "os:system", "config": None}
    spec = load_spec(write_spec(tmp_path, analysis={"plasticity": [entry]}))
    with pytest.raises(ConfigError, match=r"analysis\.plasticity entry: function 'os:system'"):
        analysis_jobs(spec)
    mine = write_spec(tmp_path, runner={"function": "json:dumps", "config": None})
    with pytest.raises(ConfigError, match="register_job"):
        load_spec(mine)
    jobs.register_job("json:dumps")
    try:
        assert load_spec(mine).runner.function == "json:dumps"
    finally:
        jobs._user_functions.discard("json:dumps")


def test_spec_names_and_run_ids_cannot_escape_the_study_folder(tmp_path):
    for name in ("../outside", "a/b", ".hidden", ".."):
        with pytest.raises(ConfigError, match="must be one folder name"):
            load_spec(write_spec(tmp_path, name=name))
    for run_id in ("..", "../x", "a/b", ""):
        with pytest.raises(ValueError, match="is not a plain folder name"):
            run_dir(tmp_path, run_id)
    assert run_dir(tmp_path, "a_0.01_mha+fc1_1234abcd") == tmp_path / "runs/a_0.01_mha+fc1_1234abcd"


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_pickles_are_read_as_data_only(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    payload = _Payload()
    payload.marker = tmp_path / "pwned"
    rows = np.zeros((2, 3072), dtype=np.uint8)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"):
        batch = {b"labels": [0, 1], b"data": rows}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps({b"labels": [0], b"x": payload}, protocol=2))
    meta = {b"label_names": [f"c{i}".encode() for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    assert len(get_dataset("cifar10", "train", root=tmp_path)) == 8  # arrays, lists, bytes: fine
    with pytest.raises(DataError, match=r"test_batch: not a CIFAR batch \(refused to load 'posix"):
        get_dataset("cifar10", "test", root=tmp_path)
    assert not payload.marker.exists()


def test_network_guard_covers_dns_udp_and_child_processes():
    with pytest.raises(RuntimeError, match=r"tried to look up 'example\.com'"):
        socket.getaddrinfo("example.com", 443)
    with pytest.raises(RuntimeError, match=r"tried to look up 'example\.com'"):
        socket.gethostbyname("example.com")
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with udp, pytest.raises(RuntimeError, match=r"send a datagram to \('192\.0\.2\.1', 53\)"):
        udp.sendto(b"x", ("192.0.2.1", 53))
    assert socket.getaddrinfo("localhost", 80)  # this machine stays reachable
    code = "import socket; socket.getaddrinfo('example.com', 443)"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert child.returncode == 1
    assert "tests must not reach the network (tried to look up 'example.com')" in child.stderr
