"""Fault injection on `vitplas plasticity`: a SIGKILL mid-stream resumes from the saved
streaming statistics to tables identical to an unbroken run's; a finished run of the same
settings is read back, not recomputed; `vitplas clean` frees the state of finished runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vitplas.analysis.job import SAVE_EVERY, STATE_FILE
from vitplas.analysis.ratio_stats import RatioStats
from vitplas.cli import app

ARGS = ["--model", "tiny-random", "--random-init", "--target", "digits", "--device", "cpu"]
ARGS += ["--pairs", "64", "--batch-size", "4", "--no-bounds"]  # 16 batches, saved at 8 and 16
CLI = [sys.executable, "-c", "from vitplas.cli import main; main()"]
TABLES = ("plasticity.csv", "plasticity_pooled.csv", "result.json")


def invoke(*args: str):
    return CliRunner().invoke(app, ["plasticity", *ARGS, *args], catch_exceptions=False)


def killed_run(out: Path, fault: str) -> int:
    env = {**os.environ, "VITPLAS_FAULT": fault}
    command = [*CLI, "plasticity", *ARGS, "--out", str(out)]
    return subprocess.run(command, env=env, capture_output=True, timeout=300).returncode


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plain") / "run"
    assert invoke("--out", str(out)).exit_code == 0
    return out


def _tables(folder: Path) -> dict[str, str]:
    import json

    out = {name: (folder / name).read_text() for name in TABLES[:2]}
    result = json.loads((folder / "result.json").read_text())
    result.pop("timings")
    return {**out, "result": result}


def test_ratio_stats_state_round_trip_continues_bit_identically():
    gen = torch.Generator().manual_seed(0)
    batches = [torch.rand(5, 3, 2, generator=gen, dtype=torch.float64) for _ in range(6)]
    bounds = torch.full((3, 2), 0.5)
    whole = RatioStats((3, 2), bounds=bounds)
    first = RatioStats((3, 2), bounds=bounds)
    for b in batches:
        whole.update(b)
    for b in batches[:3]:
        first.update(b)
    second = RatioStats((3, 2), bounds=bounds)
    second.load_state_dict(first.state_dict())
    for b in batches[3:]:
        second.update(b)
    for key, value in whole.to_host().items():
        assert torch.equal(value, second.to_host()[key]), key
    with pytest.raises(ValueError, match=r"saved statistics have shape \(3, 2\), these \(2, 2\)"):
        RatioStats((2, 2)).load_state_dict(first.state_dict())


def test_killed_mid_stream_resumes_from_saved_statistics_to_identical_tables(tmp_path, plain):
    from vitplas.analysis.job import PlasticityConfig
    from vitplas.jobs.runners import run_plasticity

    out = tmp_path / "run"
    assert killed_run(out, f"plasticity_batch:{SAVE_EVERY + 3}") == -9
    assert not (out / "DONE").exists()
    saved = torch.load(out / STATE_FILE, weights_only=True)
    assert saved["batches"] == SAVE_EVERY and saved["pairs"] == 4 * SAVE_EVERY
    cfg = PlasticityConfig(model="tiny-random", random_init=True, target="digits", device="cpu")
    cfg.pairs, cfg.batch_size, cfg.bounds = 64, 4, False
    seen = []
    run_plasticity(cfg, out, progress=lambda batches, _pairs: seen.append(batches))
    assert seen == list(range(SAVE_EVERY + 1, 17))  # only the batches not yet counted
    assert _tables(out) == _tables(plain)
    assert not (out / STATE_FILE).exists()


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["plasticity_saved:1", "before_done:1"])
def test_killed_plasticity_resumes_to_identical_tables(tmp_path, plain, fault):
    out = tmp_path / "run"
    assert killed_run(out, fault) == -9
    assert not (out / "DONE").exists()
    result = invoke("--out", str(out))
    assert result.exit_code == 0, result.output
    assert _tables(out) == _tables(plain)
    assert not (out / STATE_FILE).exists()


def test_finished_identical_run_is_read_back_and_another_refused(plain):
    before = (plain / "plasticity.csv").stat().st_mtime_ns
    again = invoke("--out", str(plain))
    assert again.exit_code == 0
    assert "read back from its folder, not recomputed" in again.output
    assert (plain / "plasticity.csv").stat().st_mtime_ns == before
    other = invoke("--out", str(plain), "--seed", "3")
    assert other.exit_code == 2
    assert "different config (seed: 0 -> 3)" in other.output


def test_clean_frees_the_train_state_of_finished_runs_only(tmp_path):
    from vitplas.runs import RunDir

    done, busy = tmp_path / "a", tmp_path / "b"
    for folder in (done, busy):
        step = folder / "checkpoints" / "step_00000004"
        step.mkdir(parents=True)
        (step / "state.pt").write_bytes(b"\0" * 2**20)
        (folder / "checkpoints" / "best.safetensors").write_bytes(b"w")
        (folder / "result.json").write_text("{}")
    RunDir(done).mark_done()
    runner = CliRunner()
    dry = runner.invoke(app, ["clean", str(tmp_path), "--dry-run"])
    assert "1 finished run(s): would free 1.0 MiB" in dry.output
    assert (done / "checkpoints" / "step_00000004").exists()
    result = runner.invoke(app, ["clean", str(tmp_path)])
    assert result.exit_code == 0 and "freed 1.0 MiB" in result.output
    assert sorted(p.name for p in (done / "checkpoints").iterdir()) == ["best.safetensors"]
    assert (busy / "checkpoints" / "step_00000004").exists()  # unfinished: it resumes from it
    RunDir(done).verify()  # the records stay intact
    missing = runner.invoke(app, ["clean", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "neither a run folder nor a sweep spec" in missing.output


def test_resumed_estimate_keeps_the_smallest_token_scale_of_the_counted_pairs():
    """The data-scale norm bound divides by the smallest token scale over every pair: a resume
    must carry the minimum of the batches it skips, or the bound could miss their pairs."""
    from timm.models.vision_transformer import VisionTransformer

    from vitplas.analysis.estimate import estimate
    from vitplas.models.components import component_map

    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)
    with torch.no_grad():  # patch tokens, not the image-independent class token, set the minimum
        model.pos_embed.zero_()
        model.cls_token.normal_(0, 5)
        model.patch_embed.proj.bias.zero_()
    cmap = component_map(model.eval())
    names = ["ln1", "ln2", "fc1"]
    gains = torch.full((cmap.depth, len(names)), float("nan"))
    gains[:, :2] = 1.0
    # the smallest-scale pairs come first, inside the batches a resume skips
    batches = [(torch.randn(4, 3, 32, 32) * s, torch.randn(4, 3, 32, 32)) for s in (0.05, 1, 1, 1)]
    states = []
    plain = estimate(cmap, batches, components=names, norm_gains=gains)
    estimate(cmap, batches, components=names, norm_gains=gains, save=states.append, save_every=2)
    resumed = estimate(cmap, batches, components=names, norm_gains=gains, resume=states[0])
    assert torch.allclose(resumed.norm_scale, plain.norm_scale, equal_nan=True, rtol=0, atol=0)
    for key in ("mean", "exceed_frac", "n"):
        assert torch.equal(resumed.summary[key], plain.summary[key]), key
