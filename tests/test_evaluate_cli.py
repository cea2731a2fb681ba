"""`vitplas evaluate`: RUN_DIR [CONFIG.yaml] key=value + flags on EvaluateConfig, and a run's
evaluation equal to the test score its training computed (one model-loading path)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from vitplas.cli import app
from vitplas.cli.factory import build_config, config_class
from vitplas.config import ConfigError
from vitplas.jobs.table import get


def evaluate_config(args, flags):
    """EvaluateConfig from `vitplas evaluate`'s arguments and flags (the command factory)."""
    job = get("evaluate")
    return build_config(job, config_class(job), args, flags)


runner = CliRunner()
SMOKE = "configs/finetune/smoke-digits.yaml"


def test_run_dir_keys_and_flags_fill_one_config(tmp_path):
    cfg = evaluate_config(["runs/a", "split=val"], {"batch_size": 8, "datasets": ["mnist-5k"]})
    assert (cfg.run, cfg.split, cfg.batch_size, cfg.datasets) == ("runs/a", "val", 8, ["mnist-5k"])
    from vitplas.device import default_workers

    # EvaluateConfig's defaults: workers as many as this machine's CPUs feed (at most 4)
    assert (cfg.device, cfg.num_workers) == ("auto", default_workers())
    (tmp_path / "e.yaml").write_text("run: runs/b\nnum_workers: 0\n")
    cfg = evaluate_config([str(tmp_path / "e.yaml"), "datasets=[cifar10-c/*/5]"], {})
    assert (cfg.run, cfg.num_workers, cfg.datasets) == ("runs/b", 0, ["cifar10-c/*/5"])


@pytest.mark.parametrize(
    "args,flags,message",
    [
        (["runs/a", "runs/b"], {}, "evaluate takes one RUN_DIR, got 2: runs/a, runs/b"),
        (["split=val"], {}, r"no run folder given: vitplas evaluate RUN_DIR \(or run=RUN_DIR\)"),
        (["runs/a", "run=runs/b"], {}, "'run' is given twice, as RUN_DIR and as run=runs/b"),
        (["runs/a", "split=val"], {"split": "test"}, "'split' is given twice, as --split"),
        (["runs/a", "batch_size=0"], {}, "batch_size must be positive"),
        (["runs/a", "splitt=val"], {}, "unknown config key"),
    ],
)
def test_config_errors_say_what_to_change(args, flags, message):
    with pytest.raises(ConfigError, match=message):
        evaluate_config(args, flags)


def test_cli_errors_exit_2_with_one_line():
    result = runner.invoke(app, ["evaluate", "split=val"])
    assert result.exit_code == 2
    assert "error: no run folder given: vitplas evaluate RUN_DIR" in result.output


def test_evaluate_equals_the_training_test_score_under_protocol_paper(tmp_path):
    """A paper run whose new head (torch.nn.Linear's init) stayed untrained: evaluate, through
    load_model(RUN), scores its test split exactly as training did (full split, no cap)."""
    from vitplas.jobs.runners import run_finetune
    from vitplas.training.config import load_finetune_config

    overrides = ["steps=4", "eval_every=2", "warmup_steps=1", "tensorboard=false"]
    overrides += ["protocol=paper", "train_head=false"]
    run = tmp_path / "run"
    result = run_finetune(load_finetune_config(SMOKE, overrides), run)
    args = ["evaluate", str(run), "batch_size=64", "--num-workers", "0", "--device", "cpu"]
    evaluated = runner.invoke(app, args)
    assert evaluated.exit_code == 0, evaluated.output
    table = pd.read_csv(run / "evaluation.csv")
    assert table["dataset"].tolist() == ["digits"] and table.loc[0, "n"] == result["test_n"]
    assert table.loc[0, "acc"] == result["test_acc"]
    assert table.loc[0, "loss"] == pytest.approx(result["test_loss"], rel=1e-5)
    assert json.loads((run / "result.json").read_text())["test_acc"] == result["test_acc"]
