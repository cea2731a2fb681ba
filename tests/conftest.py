"""Test session guards: no network (here and in child processes), deterministic small threads,
GPU/SLURM markers skip cleanly."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# the network guard lives in tests/netguard/sitecustomize.py: Python children of the tests
# (CLI subprocesses, sweep workers) import it at start-up through PYTHONPATH
GUARD_DIR = Path(__file__).resolve().parent / "netguard"
_spec = importlib.util.spec_from_file_location("vitplas_netguard", GUARD_DIR / "sitecustomize.py")
netguard = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(netguard)
os.environ[netguard.ENV] = "1"
# test-only jobs (tests/plugins/vitplas_testjobs: the fake runner), registered as a `vitplas.jobs`
# entry point of their own distribution: here and in the tests' child processes
PLUGINS_DIR = Path(__file__).resolve().parent / "plugins"
sys.path.insert(0, str(PLUGINS_DIR))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [
        str(GUARD_DIR),
        str(PLUGINS_DIR),
        *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)),
    ]
)


@pytest.fixture(autouse=True, scope="session")
def _no_network():
    netguard.install()
    yield
    netguard.uninstall()


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="no CUDA device on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
