"""Run folders: atomic writes, manifests, metrics that survive a torn line, tidy tables."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from vitplas.records import read_json, read_metrics
from vitplas.runs import RunDir, atomic_write_json, atomic_write_text, file_sha256, write_table


def test_atomic_write_leaves_no_temp_and_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "first")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "second")
    assert path.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_manifest_metrics_and_done(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_manifest({"seed": 3})
    manifest = read_json(run.path, "manifest.json", unfinished=True)
    assert manifest["seed"] == 3
    assert {"torch", "vitplas", "python"} <= set(manifest["versions"])
    run.append_metrics({"step": 1, "loss": 0.5})
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 2, "lo')  # a line torn by a kill
    assert read_metrics(run.path, unfinished=True) == [{"step": 1, "loss": 0.5}]
    assert not run.is_done()
    run.mark_done()
    assert run.is_done()


def test_write_table_csv_and_parquet_agree(tmp_path):
    frame = pd.DataFrame({"component": ["mha", "ln1"], "mean": [7.5, 0.25]})
    csv_path, parquet_path = write_table(frame, tmp_path / "table")
    pd.testing.assert_frame_equal(pd.read_csv(csv_path), frame)
    pd.testing.assert_frame_equal(pd.read_parquet(parquet_path), frame)
    digest = file_sha256(csv_path)
    assert len(digest) == 64 and digest == file_sha256(csv_path)
    json.dumps({"digest": digest})


def test_seal_and_verify_name_the_damaged_file(tmp_path):
    from vitplas.runs import DamagedRecordError, read_verified

    run = RunDir(tmp_path / "run")
    atomic_write_text(run / "result.json", '{"acc": 91.5}')
    write_table(pd.DataFrame({"a": [1, 2]}), run / "table")
    (run / "checkpoints" / "step_00000002").mkdir(parents=True)
    (run / "checkpoints" / "step_00000002" / "state.pt").write_bytes(b"state")
    run.mark_done()
    assert set(run.checksums()) == {"result.json", "table.csv", "table.parquet"}
    assert read_verified(run.path) == {"acc": 91.5}
    (run / "table.csv").write_text("a\n1\n3\n")
    with pytest.raises(DamagedRecordError, match=r"table\.csv is damaged: its content was changed"):
        run.verify()
    (run / "result.json").unlink()
    with pytest.raises(DamagedRecordError, match=r"result\.json is damaged: the file is missing"):
        read_verified(run.path)


def test_lock_names_its_holder_is_reentrant_and_released(tmp_path):
    from vitplas.locks import holder, run_lock

    assert holder(tmp_path) is None
    # the same process again: re-entrant
    with run_lock(tmp_path, command="finetune test"), run_lock(tmp_path):
        info = holder(tmp_path)
    assert info["pid"] == os.getpid() and info["command"] == "finetune test"
    assert holder(tmp_path) is None


def test_other_process_is_refused_or_waits(tmp_path):
    import subprocess
    import sys

    from vitplas.locks import run_lock

    code = (
        "import sys; from vitplas.locks import run_lock, RunLockedError\n"
        "try:\n"
        "    with run_lock(sys.argv[1], wait=sys.argv[2] == '1'): print('got it', flush=True)\n"
        "except RunLockedError as err: print(err, flush=True)\n"
    )
    with run_lock(tmp_path, command="holder"):
        refused = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path), "0"], capture_output=True, text=True
        )
        assert f"is in use by pid {os.getpid()}" in refused.stdout
        assert "(holder, since" in refused.stdout
        waiter = subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path), "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert waiter.stderr.readline().startswith(f"waiting for {tmp_path}: held by pid")
    assert waiter.communicate(timeout=60)[0] == "got it\n"


def test_keys_added_since_leave_the_default_run_folder_name_unchanged():
    from vitplas.jobs.folders import default_finetune_dir
    from vitplas.training.config import load_finetune_config

    # keys at their defaults do not enter the name: a run started before they existed keeps it
    base = default_finetune_dir(load_finetune_config(None, []))
    same = ["keep_state=false", "diverge_factor=10", "diverge_window=100"]
    assert default_finetune_dir(load_finetune_config(None, same)) == base
    assert default_finetune_dir(load_finetune_config(None, ["diverge_factor=20"])) != base


def test_a_file_system_without_locks_warns_and_goes_on(tmp_path, monkeypatch):
    import errno

    from vitplas import locks

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(locks.fcntl, "flock", no_flock)
    with (
        pytest.warns(UserWarning, match=r"\.lock: this file system has no locks \(\[Errno"),
        locks.run_lock(tmp_path, command="on nfs"),
    ):
        assert locks.holder(tmp_path)["command"] == "on nfs"
    assert locks.holder(tmp_path) is None  # nobody can be seen holding a lock there


def _sealed_run(folder):
    run = RunDir(folder)
    atomic_write_json(run / "result.json", {"test_acc": 91.5, "best_val_acc": 90.0})
    atomic_write_text(run / "config.yaml", "lr: 0.1\n")
    run.mark_done()
    return run


def test_done_records_the_seal_so_a_deleted_seal_is_damage(tmp_path):
    from vitplas.experiments.store import run_state
    from vitplas.runs import CHECKSUMS, DamagedRecordError, read_verified

    run = _sealed_run(tmp_path / "run")
    assert run.done_record()["checksums_sha256"] == file_sha256(run / CHECKSUMS)
    (run / CHECKSUMS).unlink()
    message = rf"{run / CHECKSUMS} is damaged: the file is missing \(the seal of a finished run\)"
    with pytest.raises(DamagedRecordError, match=message + r"; rerun the same command with --re"):
        read_verified(run.path)
    with pytest.raises(DamagedRecordError, match=message):
        run.verify()
    with pytest.raises(DamagedRecordError, match=message):
        run.begin({"lr": 0.1})
    state, detail = run_state(run.path)  # what `vitplas status` and the aggregator count
    assert state == "damaged" and f"{run / CHECKSUMS} is damaged: the file is missing" in detail
    assert "delete the run folder" in detail
    assert run.begin({"lr": 0.1}, repair=True) is False  # --repair: recomputed from zero
    assert sorted(p.name for p in run.path.iterdir()) == []


def test_a_seal_rewritten_to_match_an_edited_record_is_damage(tmp_path):
    from vitplas.runs import CHECKSUMS, DamagedRecordError, read_verified

    run = _sealed_run(tmp_path / "run")
    atomic_write_json(run / "result.json", {"test_acc": 99.9, "best_val_acc": 90.0})
    sums = json.loads((run / CHECKSUMS).read_text())
    sums["result.json"]["sha256"] = file_sha256(run / "result.json")
    (run / CHECKSUMS).write_text(json.dumps(sums))
    with pytest.raises(DamagedRecordError, match=r"checksums\.json is damaged: its content was "):
        read_verified(run.path)


@pytest.mark.parametrize(
    "done",
    [b"", b"2026-11-01T10:00:00+00:00\n", b'{"finished_at": "now"}', b"\xff\xfe"],
    ids=["empty", "a timestamp line", "no seal named", "not text"],
)
def test_a_done_that_names_no_seal_is_damage_never_a_run_without_checks(tmp_path, done):
    from vitplas.experiments.store import run_state
    from vitplas.runs import DONE_MARKER, DamagedRecordError, read_verified

    run = _sealed_run(tmp_path / "run")
    (run / "result.json").write_text('{"test_acc": 99.9, "best_val_acc": 90.0}')  # edited
    (run / DONE_MARKER).write_bytes(done)
    message = rf"{run / DONE_MARKER} is damaged: .*it names no seal \(checksums_sha256\)"
    with pytest.raises(DamagedRecordError, match=message):
        read_verified(run.path)
    with pytest.raises(DamagedRecordError, match=message):
        run.begin({"lr": 0.1})
    state, detail = run_state(run.path)
    assert state == "damaged" and f"{run / DONE_MARKER} is damaged" in detail
    assert run.begin({"lr": 0.1}, repair=True) is False  # --repair recomputes from zero
    assert sorted(p.name for p in run.path.iterdir()) == []


def test_a_finished_run_reads_only_the_records_it_sealed(tmp_path):
    from vitplas.records import read_table
    from vitplas.runs import DamagedRecordError, RunNotFinishedError, read_record

    run = _sealed_run(tmp_path / "run")
    atomic_write_text(run / "extra.csv", "a\n1\n")  # written after DONE
    with pytest.raises(DamagedRecordError, match=r"extra\.csv is damaged: the run's seal does"):
        read_table(run.path, "extra.csv")
    atomic_write_text(tmp_path / "going" / "plasticity.csv", "a\n1\n")
    with pytest.raises(RunNotFinishedError, match=r"going is not a finished run \(no DONE"):
        read_table(tmp_path / "going", "plasticity.csv")
    assert read_record(tmp_path / "going", "plasticity.csv", unfinished=True) == b"a\n1\n"


def test_extending_a_finished_seal_survives_a_kill_between_its_writes(tmp_path, monkeypatch):
    from vitplas import runs
    from vitplas.runs import CHECKSUMS, read_verified

    run = _sealed_run(tmp_path / "run")
    before = file_sha256(run / CHECKSUMS)
    atomic_write_text(run / "evaluation.csv", "dataset,acc\ndigits,88.0\n")

    def killed(name):
        if name == "before_reseal":
            raise KeyboardInterrupt  # stands for the SIGKILL of VITPLAS_FAULT

    monkeypatch.setattr(runs, "fault_point", killed)
    with pytest.raises(KeyboardInterrupt):
        run.seal(["evaluation.csv"])
    assert file_sha256(run / CHECKSUMS) == before  # the old seal, which DONE still accepts
    assert read_verified(run.path)["test_acc"] == 91.5
    monkeypatch.undo()
    digest = run.seal(["evaluation.csv"])  # the rerun completes it
    assert set(run.done_record()) == {"finished_at", "checksums_sha256"}
    assert run.done_record()["checksums_sha256"] == digest == file_sha256(run / CHECKSUMS)
    assert set(run.checksums()) == {"config.yaml", "result.json", "evaluation.csv"}
    (run / "evaluation.csv").write_text("dataset,acc\ndigits,99.0\n")
    with pytest.raises(runs.DamagedRecordError, match=r"evaluation\.csv is damaged"):
        run.verify()


def test_a_reader_that_meets_a_seal_being_extended_reads_it_again(tmp_path, monkeypatch):
    run = _sealed_run(tmp_path / "run")
    old = run.done_record()
    atomic_write_text(run / "evaluation.csv", "dataset,acc\ndigits,88.0\n")
    run.seal(["evaluation.csv"])  # between the reader's look at DONE and at checksums.json
    records = iter([old])
    real = RunDir.done_record
    monkeypatch.setattr(RunDir, "done_record", lambda self: next(records, None) or real(self))
    assert "evaluation.csv" in run.checksums()
