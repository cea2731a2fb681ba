"""Errors a user can cause end as one line (`error: ...`), never a traceback; --debug shows it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from vitplas.cli import app
from vitplas.cli.app import error_line
from vitplas.runs import RunDir

FAKE = {"function": "vitplas_testjobs.fake:fake_finetune", "config": None}
FINETUNE = ["model=tiny-random", "random_init=true", "dataset=digits", "steps=2",
            "warmup_steps=0", "img_size=32", "batch_size=8", "num_workers=0"]  # fmt: skip


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def one_error_line(result, code: int = 2) -> str:
    """The single `error:` line of a failed command (its only line but the run-folder note)."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if not line.startswith("run folder:")]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    return errors[0]


def spec(tmp_path, **data) -> str:
    base = {"name": "t", "root": str(tmp_path / "study"), "base": {"steps": 1},
            "grid": {"dataset": ["a"], "seed": [0]}, "runner": FAKE}  # fmt: skip
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**base, **data}))
    return str(path)


def test_spec_typo_and_spec_without_dataset(tmp_path):
    typo = yaml.safe_load(Path(spec(tmp_path)).read_text())
    typo["grdi"] = typo.pop("grid")
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(typo))
    line = one_error_line(run("sweep", str(tmp_path / "typo.yaml"), "--dry-run"))
    assert line.startswith("error: unknown config key(s) grdi; known keys: analysis, base")
    line = one_error_line(run("status", spec(tmp_path, grid={"seed": [0]})))
    assert line == "error: a sweep spec needs `dataset` in `grid` or in `base`"


def test_dry_run_lists_each_run_with_a_bad_config_and_nothing_launches(tmp_path):
    base = {"model": "tiny-random", "steps": "many"}
    grid = {"dataset": ["digits"], "seed": [0, 1]}
    path = spec(tmp_path, runner={}, base=base, base_by={"seed": {1: {"stepz": 3}}}, grid=grid)
    result = run("sweep", path, "--dry-run")
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert lines[0].endswith("[invalid: 'steps' must be int, got 'many']")
    assert "[invalid: unknown config key(s) stepz; known keys:" in lines[1]
    assert lines[-1].startswith("error: 2 of 2 runs have an invalid config")
    result = run("sweep", path)
    assert result.exit_code == 2 and "nothing was launched" in result.output
    assert not (tmp_path / "study" / "runs").exists()


def test_out_pointing_at_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    out = str(tmp_path / "afile")
    expected = (
        f"error: --out {out} is a file, not a folder; give a new folder or an existing run folder"
    )
    assert one_error_line(run("finetune", *FINETUNE, "--out", out)) == expected
    assert one_error_line(run("plasticity", "--random-init", "--out", out)) == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(tmp_path):
    line = one_error_line(run("finetune", *FINETUNE, "device=cuda", "--out", str(tmp_path / "r")))
    assert line.startswith("error: device=cuda but no CUDA device is visible to torch")
    assert not (tmp_path / "r").exists()


def test_probe_max_train_zero(tmp_path):
    result = run("probe", "--model", "tiny-random", "--dataset", "digits", "max_train=0",
                 "--out", str(tmp_path / "p"))  # fmt: skip
    assert one_error_line(result) == "error: max_train=0: use 1 or more (or null for all)"


def test_unreadable_image_in_a_folder_dataset_is_named_before_training(tmp_path):
    from PIL import Image

    for name in ("cat", "dog"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / name / f"{i}.png")
    bad = tmp_path / "imgs" / "dog" / "broken.jpg"
    bad.write_bytes(b"not an image")
    args = [a for a in FINETUNE if not a.startswith("dataset=")]
    result = run(
        "finetune", *args, f"dataset=folder:{tmp_path / 'imgs'}", "--out", str(tmp_path / "r")
    )
    line = one_error_line(result)
    assert line.startswith(f"error: 1 of 7 images cannot be read: {bad} (UnidentifiedImageError")
    assert not (tmp_path / "r").exists()  # a failed start leaves no empty run folder


def test_offline_hub_fails_fast_with_advice_that_fits(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from vitplas.models import sources

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(sources, "hub_reachable", lambda: False)  # as on a machine offline
    args = [a for a in FINETUNE if not a.startswith(("model=", "random_init="))]
    result = run("finetune", *args, "model=vit_tiny_patch16_224.augreg_in21k",
                 "--out", str(tmp_path / "r"))  # fmt: skip
    line = one_error_line(result)
    assert (
        "the Hugging Face Hub (https://huggingface.co) cannot be reached from this machine" in line
    )
    assert "unset HF_HUB_OFFLINE" not in line and "CLI: --random-init" not in line
    assert "random_init=true to use random weights on purpose" in line
    assert constants.HF_HUB_OFFLINE is False  # offline mode only while loading
    assert not (tmp_path / "r").exists()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = run("finetune", *args, "model=vit_tiny_patch16_224.augreg_in21k",
                 "--out", str(tmp_path / "r2"))  # fmt: skip
    assert "HF_HUB_OFFLINE is set, so only the hub cache" in one_error_line(result)
    assert not (tmp_path / "r2").exists()


def test_debug_shows_the_traceback_and_internal_errors_say_so(tmp_path, monkeypatch):
    path = spec(tmp_path, grid={"seed": [0]})
    result = run("--debug", "status", path)
    assert result.exit_code == 1 and type(result.exception).__name__ == "ConfigError"

    def broken(*args, **kwargs):
        raise RuntimeError("something vitplas did not expect")

    monkeypatch.setattr("vitplas.experiments.store.scan", broken)
    line = one_error_line(run("status", spec(tmp_path)), code=1)
    assert line == (
        "error: RuntimeError: something vitplas did not expect (an internal error of vitplas: "
        "rerun with --debug for the traceback and report it)"
    )


def test_damaged_weights_and_os_errors_are_user_errors():
    from safetensors import SafetensorError

    assert error_line(SafetensorError("Error while deserializing header")) == (
        "error: Error while deserializing header",
        2,
    )
    denied = OSError(13, "Permission denied", "/runs/x/state.pt")
    assert error_line(denied) == ("error: /runs/x/state.pt: Permission denied", 2)
    # a full disk: the one line of every command (vitplas.runs.disk_full), in the one place
    full = OSError(28, "No space left on device", "/runs/x/state.pt")
    line, code = error_line(full)
    assert code == 2 and line.startswith("error: no space left on device writing /runs/x/state.pt")
    assert line.endswith("rerun the same command: it resumes where it stopped")


def test_a_metrics_line_that_is_json_but_not_a_record_is_skipped_by_aggregate(tmp_path):
    path = spec(tmp_path, base={"steps": 5}, grid={"dataset": ["a"], "seed": [0, 1]})
    assert run("sweep", path).exit_code == 0
    for metrics in (tmp_path / "study" / "runs").glob("*/metrics.jsonl"):
        metrics.write_text("[1, 2]\n5\n" + metrics.read_text())
        (metrics.parent / "DONE").unlink()  # as the runner would have sealed them
        RunDir(metrics.parent).mark_done()
    result = run("aggregate", path)
    assert result.exit_code == 0, result.output
    assert "2 finished runs" in result.output


def test_evaluate_on_damaged_best_weights_names_the_file(tmp_path):
    out = tmp_path / "r"
    assert (
        run("finetune", *FINETUNE, "eval_every=2", "--no-progress", "--out", str(out)).exit_code
        == 0
    )
    weights = out / "checkpoints" / "best.safetensors"
    data = bytearray(weights.read_bytes())
    data[:8] = b"\xff" * 8  # a header length no file has
    weights.write_bytes(bytes(data))
    line = one_error_line(run("evaluate", str(out), "--num-workers", "0"))
    assert line.startswith(f"error: {weights} is damaged: its content was changed")  # sealed
    assert line.endswith(f"`--out {out} --repair`, or rerun the finetuning into a new folder")
    (out / "checksums.json").unlink()  # DONE records the seal: it is never optional
    line = one_error_line(run("evaluate", str(out), "--num-workers", "0"))
    assert line.startswith(f"error: {out / 'checksums.json'} is damaged: the file is missing")
    RunDir(out).seal()  # sealed as it is now: the bytes themselves are refused on reading
    line = one_error_line(run("evaluate", str(out), "--num-workers", "0"))
    assert line.startswith(f"error: {weights} is damaged (not a safetensors file (Error while")


def test_a_failed_start_leaves_no_folder_that_would_refuse_the_corrected_command(tmp_path):
    out = tmp_path / "typo"
    base = ["plasticity", "--model", "tiny-random", "--random-init", "--pairs", "8"]
    line = one_error_line(run(*base, "--target", "cifar11", "--out", str(out)))
    assert line.startswith("error: dataset 'cifar11' is unknown")
    assert not out.exists()  # neither the lock nor the config of the failed start is left
    assert run(*base, "--target", "digits", "--out", str(out)).exit_code == 0
