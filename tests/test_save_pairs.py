"""`--save-pairs`: pairs.parquet holds every (pair, layer, component) ratio of a plasticity run;
its means are the table's, it is sealed, and a killed-and-resumed run writes the same file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from vitplas.analysis.job import SAVE_EVERY, STATE_FILE
from vitplas.analysis.pair_file import PAIRS_FILE, PARTS_DIR
from vitplas.cli import app

PAIRS, BATCH = 64, 4  # 16 batches: saves at 8 and 16
ARGS = ["--model", "tiny-random", "--random-init", "--target", "digits", "--device", "cpu"]
ARGS += ["--pairs", str(PAIRS), "--batch-size", str(BATCH), "--no-bounds", "--save-pairs"]
CLI = [sys.executable, "-c", "from vitplas.cli import main; main()"]


def invoke(out: Path):
    result = CliRunner().invoke(app, ["plasticity", *ARGS, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return result


def killed_run(out: Path, fault: str) -> int:
    env = {**os.environ, "VITPLAS_FAULT": fault}
    command = [*CLI, "plasticity", *ARGS, "--out", str(out)]
    return subprocess.run(command, env=env, capture_output=True, timeout=300).returncode


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plain") / "run"
    invoke(out)
    return out


def test_pairs_file_rows_means_and_seal(plain):
    pairs = pd.read_parquet(plain / PAIRS_FILE)
    table = pd.read_csv(plain / "plasticity.csv")
    layers, components = table["layer"].nunique(), table["component"].nunique()
    assert len(pairs) == PAIRS * layers * components
    assert list(pairs.columns) == [
        "pair", "reference_index", "target_index", "layer", "component", "ratio"
    ]  # fmt: skip
    assert sorted(pairs["pair"].unique()) == list(range(PAIRS))
    per_pair = pairs.groupby("pair")[["reference_index", "target_index"]].nunique()
    assert (per_pair == 1).all().all()  # one image pair per pair index
    means = pairs.groupby(["layer", "component"])["ratio"].mean()
    for row in table.itertuples():
        assert means[(row.layer, row.component)] == pytest.approx(row.mean, rel=0, abs=1e-9)
    sums = json.loads((plain / "checksums.json").read_text())
    assert PAIRS_FILE in sums
    assert not (plain / PARTS_DIR).exists() and not (plain / STATE_FILE).exists()
    assert PAIRS_FILE in json.loads((plain / "result.json").read_text())["files"]


def test_pairs_indices_are_the_stream_images():
    """The indices name the images the stream gave, in its order."""
    import torch

    from vitplas.analysis.pairs import pair_batches

    ref = [(torch.full((1,), float(i)), 0) for i in range(10)]
    tgt = [(torch.full((1,), 100.0 + i), 0) for i in range(7)]
    batches = list(pair_batches(ref, tgt, pairs=9, batch_size=3, seed=1, with_indices=True))
    plain = list(pair_batches(ref, tgt, pairs=9, batch_size=3, seed=1))
    for (x, y, ix, iy), (px, py) in zip(batches, plain, strict=True):
        assert torch.equal(x, px) and torch.equal(y, py)
        assert torch.equal(x[:, 0], ix.double()) and torch.equal(y[:, 0] - 100, iy.double())


@pytest.mark.parametrize(
    "fault",
    [
        "plasticity_pairs_saved:2",
        pytest.param(f"plasticity_batch:{SAVE_EVERY + 3}", marks=pytest.mark.slow),
        pytest.param("before_done:1", marks=pytest.mark.slow),
    ],
)
def test_killed_and_resumed_run_writes_the_same_pairs(tmp_path, plain, fault):
    out = tmp_path / "run"
    assert killed_run(out, fault) == -9
    assert not (out / "DONE").exists()
    if fault.startswith("plasticity_pairs_saved"):  # the 2nd part is past the saved state
        parts = sorted(p.name for p in (out / PARTS_DIR).iterdir())
        assert parts == ["part-00000.parquet", f"part-{SAVE_EVERY:05d}.parquet"]
    invoke(out)
    assert pq.read_table(out / PAIRS_FILE).equals(pq.read_table(plain / PAIRS_FILE))
    assert not (out / PARTS_DIR).exists()


def test_resume_drops_parts_at_or_past_the_resume_point(tmp_path):
    import torch

    from vitplas.analysis.pair_file import PairWriter

    path, parts = tmp_path / "p.parquet", tmp_path / "parts"
    writer = PairWriter(path, ["mha", "fc1"], parts)
    for _ in range(3):  # parts starting at batches 0, 2 and 4
        writer.add(torch.rand(2, 3, 2))
        writer.add(torch.rand(2, 3, 2))
        writer.flush()
    (parts / ".part-00006.parquet.x.tmp").write_bytes(b"torn")
    again = PairWriter(path, ["mha", "fc1"], parts)
    again.resume(batches=2, pairs=4, parts=writer.written[:1])
    assert [p.name for p in parts.iterdir()] == ["part-00000.parquet"]
    again.add(torch.rand(3, 3, 2))
    frame = pd.read_parquet(again.finish())
    assert list(frame["pair"].unique()) == list(range(7))
    assert len(frame) == 7 * 3 * 2
    assert list(frame["layer"][:6]) == [0, 0, 1, 1, 2, 2]
    assert list(frame["component"][:4]) == ["mha", "fc1", "mha", "fc1"]


def test_api_save_pairs_writes_the_same_columns_and_means(tmp_path):
    import vitplas

    path = tmp_path / "sub" / "mine.parquet"
    res = vitplas.plasticity(
        "tiny-random", "photos", "digits", pairs=12, batch_size=4, random_init=True,
        device="cpu", save_pairs=path,
    )  # fmt: skip
    pairs = pd.read_parquet(path)
    assert list(pairs.columns) == [
        "pair", "reference_index", "target_index", "layer", "component", "ratio"
    ]  # fmt: skip
    assert len(pairs) == 12 * len(res.table)
    means = pairs.groupby(["layer", "component"])["ratio"].mean()
    for row in res.table.itertuples():
        assert means[(row.layer, row.component)] == pytest.approx(row.mean, rel=0, abs=1e-9)
    assert [p.name for p in path.parent.iterdir()] == ["mine.parquet"]  # no parts left


def test_clean_frees_pair_parts_left_by_a_kill_after_done(tmp_path):
    from vitplas.runs import RunDir

    run = tmp_path / "run"
    (run / PARTS_DIR).mkdir(parents=True)
    (run / PARTS_DIR / "part-00000.parquet").write_bytes(b"\0" * 2**20)
    (run / PAIRS_FILE).write_bytes(b"kept")
    RunDir(run).mark_done()
    result = CliRunner().invoke(app, ["clean", str(tmp_path)])
    assert result.exit_code == 0 and "freed 1.0 MiB" in result.output
    assert not (run / PARTS_DIR).exists()
    RunDir(run).verify()  # pairs.parquet stays, sealed
