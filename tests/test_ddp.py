"""DDP: two gloo processes on CPU train exactly like one process with the same global batch."""

from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file as load_weights
from test_train_support import toy_config, toy_sources, without_timing

from vitplas.jobs.runners import run_finetune
from vitplas.records import read_json, read_metrics
from vitplas.training.checkpoint import BEST_FILE

CFG = ("steps=4", "warmup_steps=1", "eval_every=4", "batch_size=16", "train=[mha,ln2]")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str, micro: int) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    run_finetune(toy_config(*CFG, f"micro_batch_size={micro}"), out, sources=toy_sources())


def test_two_gloo_processes_match_one_process(tmp_path):
    single = tmp_path / "single"
    run_finetune(toy_config(*CFG), single, sources=toy_sources())
    ddp = tmp_path / "ddp"
    # 2 processes x 2 micro-batches of 4 = the same global batch of 16
    mp.spawn(_worker, args=(2, _free_port(), str(ddp), 4), nprocs=2, join=True)
    a = load_weights(single / "checkpoints" / BEST_FILE)
    b = load_weights(ddp / "checkpoints" / BEST_FILE)
    assert set(a) == set(b) and a
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5, rtol=0), name
    ma = without_timing(read_metrics(single, unfinished=True))
    mb = without_timing(read_metrics(ddp, unfinished=True))
    assert [r["step"] for r in ma] == [r["step"] for r in mb]
    for ra, rb in zip(ma, mb, strict=True):
        for key, value in ra.items():
            if isinstance(value, float):
                assert abs(value - rb[key]) <= 1e-5 * max(1.0, abs(value)), (key, ra, rb)
    assert read_json(ddp, "manifest.json", unfinished=True)["world_size"] == 2
    # the per-image test record, gathered over the two processes' shards, is one process's
    single_pred, ddp_pred = ((d / "test_predictions.csv").read_text() for d in (single, ddp))
    assert ddp_pred == single_pred and len(single_pred.splitlines()) == 1 + 32
