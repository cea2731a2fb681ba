"""Every input is checked before work starts, and data that cannot be used is the user's error.

An image size off the patch grid (every command), a float that is not finite (every float key
of every job), each key out of range in its own message, a seed out of range, a batch larger
than its split, a key given twice on one command line: each is one line, exit 2, before any
work. Unusable data (every checkpoint corrupt, a truncated pairs part) is exit 2 naming the file
and what to do, never "an internal error". And a run that ends far above its first loss is
never sealed DONE, however short.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from test_errors import FINETUNE, one_error_line, run
from test_jobs_contract import OWN_FOLDER, _cfg

from vitplas.cli.factory import build_config, config_class
from vitplas.cli.keys import config_keys
from vitplas.config import ConfigError
from vitplas.jobs.lifecycle import run_job
from vitplas.jobs.table import JOBS, get

# ---- the patch grid --------------------------------------------------------------------------


def test_finetune_off_the_patch_grid_is_refused_before_training(tmp_path):
    """Case 7: img_size=30 with 8-pixel patches trained on a 3x3 grid, 36% of every image
    dropped, silently."""
    args = [a for a in FINETUNE if not a.startswith("img_size=")]
    out = tmp_path / "r"
    line = one_error_line(run("finetune", *args, "img_size=30", "--out", str(out)))
    assert line == (
        "error: img_size=30 is not a multiple of this model's 8-pixel patches: its 3x3 patch "
        "grid would drop 36% of every image; use img_size=24 or 32"
    )
    assert not out.exists()  # refused before any work: no run folder


@pytest.mark.parametrize("kind", OWN_FOLDER)
def test_every_command_refuses_an_image_size_off_the_patch_grid(kind, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"img_size=30 is not a multiple of this model's 8-pix"):
        run_job(get(kind), _cfg(kind, img_size=30), out)
    assert not out.exists()


# ---- numbers ---------------------------------------------------------------------------------


def _float_keys() -> list[tuple[str, str, str]]:
    """(job kind, dotted key, its value as text) for every float key of every job's config."""
    out = []
    for job in JOBS:
        for key in config_keys(config_class(job)):
            if key.type in ("float", "float or null", "list of float"):
                value = "[.nan, 1.0]" if key.type.startswith("list") else ".nan"
                out.append((job.kind, key.name, value))
    return out


FLOAT_KEYS = _float_keys()


def test_every_job_has_float_keys_to_try():
    kinds = {kind for kind, _, _ in FLOAT_KEYS}
    assert {"finetune", "plasticity", "bounds", "landscape", "probe", "select"} <= kinds
    assert len(FLOAT_KEYS) >= 20


@pytest.mark.parametrize("kind,key,value", FLOAT_KEYS, ids=[f"{k}-{n}" for k, n, _ in FLOAT_KEYS])
def test_a_non_finite_float_is_refused_naming_its_key(kind, key, value):
    job = get(kind)
    with pytest.raises(ConfigError, match=rf"'{key}(\[0\])?' is nan; give a finite number"):
        build_config(job, config_class(job), [f"{key}={value}"], {})


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "nan", "inf"])
def test_lr_nan_or_inf_is_one_line_before_any_work(tmp_path, value):
    out = tmp_path / "r"
    line = one_error_line(run("finetune", *FINETUNE, f"lr={value}", "--out", str(out)))
    assert line.startswith("error: 'lr' is ") and line.endswith("; give a finite number")
    assert not out.exists()


@pytest.mark.parametrize(
    "item,message",
    [
        ("select.budget=1.5", "select.budget must be a fraction in (0, 1], got 1.5"),
        ("select.budget=0", "select.budget must be a fraction in (0, 1], got 0.0"),
        ("lora.r=0", "lora.r must be >= 1, got 0"),
        ("lora.alpha=0", "lora.alpha must be >= 1, got 0"),
        ("lora.dropout=1", "lora.dropout must be a probability in [0, 1), got 1.0"),
    ],
)
def test_each_key_out_of_range_has_its_own_message(item, message):
    job = get("finetune")
    with pytest.raises(ConfigError) as info:
        build_config(job, config_class(job), [item], {})
    assert str(info.value) == message


@pytest.mark.parametrize(
    "kind,item,message",
    [
        ("select", "grad_batches=0", "grad_batches must be >= 1, got 0"),
        ("plasticity", "check_every=0", "check_every must be >= 1, got 0"),
        ("bounds", "radius_images=0", "radius_images must be >= 1, got 0"),
        ("probe", "C=0", "C must be > 0, got 0.0"),
        ("probe", "max_iter=0", "max_iter must be >= 1, got 0"),
        ("landscape", "span=0", "span must be > 0, got 0.0"),
        ("landscape", "steps=1", "steps must be >= 2, got 1"),
        ("evaluate", "num_workers=-1", "num_workers must be >= 0, got -1"),
    ],
)
def test_other_commands_name_each_key_out_of_range(kind, item, message):
    job = get(kind)
    with pytest.raises(ConfigError) as info:
        build_config(job, config_class(job), [item], {})
    assert str(info.value) == message


SEEDED = [job.kind for job in JOBS if "seed" in {k.name for k in config_keys(config_class(job))}]


@pytest.mark.parametrize("kind", SEEDED)
@pytest.mark.parametrize("seed", [2**70, 2**32, -1])
def test_a_seed_out_of_range_is_refused_at_config_time(kind, seed):
    job = get(kind)
    with pytest.raises(ConfigError) as info:
        build_config(job, config_class(job), [f"seed={seed}"], {})
    assert str(info.value) == f"'seed' is {seed}; a seed must be in [0, 4294967295]"


def test_seed_2_pow_70_is_one_line_not_an_overflow(tmp_path):
    line = one_error_line(run("finetune", *FINETUNE, f"seed={2**70}", "--out", str(tmp_path / "r")))
    assert line == f"error: 'seed' is {2**70}; a seed must be in [0, 4294967295]"
    assert build_config(get("finetune"), config_class(get("finetune")), ["seed=4294967295"], {})


def test_an_integer_beyond_int64_is_refused_naming_its_key():
    job = get("finetune")
    with pytest.raises(ConfigError, match=r"'steps' is 9223372036854775808; an integer must be in"):
        build_config(job, config_class(job), [f"steps={2**63}"], {})


def test_a_batch_larger_than_the_train_split_is_refused_before_training(tmp_path):
    """batch_size=5000 on digits (1,437 train images, 1,150 once val is carved out) printed
    nothing for minutes."""
    args = [a for a in FINETUNE if not a.startswith("batch_size=")]
    out = tmp_path / "r"
    line = one_error_line(run("finetune", *args, "batch_size=5000", "--out", str(out)))
    assert line == (
        "error: batch_size=5000 is larger than the train split of digits (1150 images): every "
        "update would hold each image 4.3 times; use batch_size=1150 or less"
    )
    assert not out.exists()


# ---- a key given twice -----------------------------------------------------------------------


def test_a_key_given_twice_on_one_command_line_is_an_error_naming_it(tmp_path):
    """Case 9: the last one won silently."""
    out = tmp_path / "r"
    line = one_error_line(run("finetune", *FINETUNE, "lr=0.1", "lr=0.2", "--out", str(out)))
    assert line == "error: 'lr' is given twice, as lr=0.1 and as lr=0.2; give it once"
    assert not out.exists()
    line = one_error_line(run("plasticity", "seed=1", "seed=2", "--out", str(out)))
    assert line == "error: 'seed' is given twice, as seed=1 and as seed=2; give it once"


def test_a_spec_key_given_twice_is_an_error_naming_it(tmp_path):
    from test_errors import spec

    path = spec(tmp_path)
    line = one_error_line(run("sweep", path, "base.steps=1", "base.steps=2", "--dry-run"))
    assert line == (
        "error: 'base.steps' is given twice, as base.steps=1 and as base.steps=2; give it once"
    )


# ---- unusable data: exit 2, the file named ---------------------------------------------------


def test_every_checkpoint_corrupt_is_exit_2_naming_them(tmp_path):
    """Case 12: exit 1, 'an internal error of vitplas'."""
    out = tmp_path / "r"
    args = [*FINETUNE, "keep_state=true", "eval_every=1", "--out", str(out)]
    assert run("finetune", *args).exit_code == 0
    (out / "DONE").unlink()  # unfinished again: a rerun resumes from its checkpoints
    steps = sorted((out / "checkpoints").glob("step_*"))
    assert [p.name for p in steps] == ["step_00000001", "step_00000002"]
    for step in steps:
        (step / "state.pt").write_bytes(b"garbage")
    line = one_error_line(run("finetune", *args))
    assert "internal error" not in line
    assert line.startswith(
        f"error: no checkpoint under {out / 'checkpoints'} can be resumed from "
        "(step_00000001, step_00000002): checkpoint "
    )
    assert line.endswith(
        f"delete their step folders ({out / 'checkpoints'}/step_*) to restart the run from step 0"
    )


def test_a_truncated_pairs_part_is_exit_2_naming_it(tmp_path):
    """Case 12: 'Parquet magic bytes not found in footer', naming no file."""
    from vitplas.analysis.job import SAVE_EVERY
    from vitplas.analysis.pair_file import PARTS_DIR

    out = tmp_path / "r"
    cfg = _cfg("plasticity", pairs=16 * 4, batch_size=4, save_pairs=True, bounds=False)
    job = get("plasticity")

    def stop(batches: int, _pairs: int) -> None:
        if batches == SAVE_EVERY + 2:
            raise KeyboardInterrupt  # a Ctrl-C after the first save

    with pytest.raises(KeyboardInterrupt):
        run_job(job, cfg, out, hooks={"progress": stop})
    part = out / PARTS_DIR / "part-00000.parquet"
    part.write_bytes(part.read_bytes()[:-100])
    args = ["--model", "tiny-random", "--random-init", "--target", "digits", "--pairs", "64",
            "--batch-size", "4", "--no-bounds", "--save-pairs", "figures=false"]  # fmt: skip
    line = one_error_line(run("plasticity", *args, "--out", str(out)))
    assert line.startswith(f"error: {part} is damaged: its content changed since it was written")
    assert f"delete {out / 'estimate_state.pt'} to compute the statistics from the first pair" in (
        line
    )
    assert not (out / "DONE").exists()


# ---- divergence in every run length ----------------------------------------------------------


def test_a_short_run_that_diverges_is_not_sealed_done(tmp_path):
    """Case 15: lr=1e6 for 40 steps ended at a loss of 2.9e11 with exit 0 (the window, 100 steps,
    was longer than the run)."""
    args = [a for a in FINETUNE if not a.startswith(("steps=", "warmup_steps="))]
    out = tmp_path / "r"
    result = run("finetune", *args, "steps=40", "warmup_steps=2", "lr=1e6", "--out", str(out))
    line = one_error_line(result, code=1)
    assert line.startswith("error: training diverged: the loss ended at ")
    assert "at the last step (40), above 10 x its first value" in line
    assert not (out / "DONE").exists()
    failed = json.loads((out / "failed.json").read_text())
    assert failed["reason"] == "diverged" and failed["step"] == 40 and failed["loss"] > 1e3


def test_a_run_that_ends_far_above_its_first_loss_stops_at_its_last_step():
    from vitplas.training.divergence import TrainingDivergedError, watch_divergence

    cfg = _Watch(steps=10, warmup_steps=2, diverge_factor=10.0, diverge_window=100)
    state = {"start_loss": None, "above": 0}
    losses = [2.0] * 9 + [50.0]  # only the last step is far above: no window catches it
    with pytest.raises(TrainingDivergedError, match=r"the loss ended at 50 at the last step"):
        for step, loss in enumerate(losses, start=1):
            watch_divergence(state, step, loss, cfg)
    state = {"start_loss": None, "above": 0}
    for step, loss in enumerate([2.0] * 10, start=1):  # a healthy run is never stopped
        watch_divergence(state, step, loss, cfg)


@dataclasses.dataclass
class _Watch:
    steps: int
    warmup_steps: int
    diverge_factor: float | None
    diverge_window: int


def test_the_float_key_list_is_read_from_the_configs():
    """The parametrisation above covers nested and list keys too (select.budget, crop_scale)."""
    names = {key for kind, key, _ in FLOAT_KEYS if kind == "finetune"}
    assert {"lr", "select.budget", "lora.dropout", "crop_scale", "diverge_factor"} <= names
