"""A finished LoRA or LN-tuning run loads as a plain timm model (adapters rebuilt from the run's
options, trained tensors loaded, merged) whose outputs are the trained model's."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from vitplas.models import load_model
from vitplas.models.components import component_map

IMAGES = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
SMOKE = "configs/finetune/smoke-digits.yaml"
SHORT = ["steps=4", "eval_every=2", "warmup_steps=1", "tensorboard=false"]
# alpha/r = 4, not the default 2: a loader ignoring the run's options would not fit or differ
RIVALS = {
    "lora": ["train=[lora]", "lora.r=2", "lora.alpha=8", "lr=0.5"],
    "lntuning": ["train=[lntuning]", "lr=0.5"],
}


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(IMAGES)


@pytest.fixture(scope="module", params=sorted(RIVALS))
def adapter_run(request, tmp_path_factory):
    """(run folder, result, logits of the in-process trained model) of a few-step finetune."""
    from vitplas.jobs.runners import run_finetune
    from vitplas.training.config import load_finetune_config
    from vitplas.training.sources import load_sources

    cfg = load_finetune_config(SMOKE, [*SHORT, *RIVALS[request.param]])
    sources = load_sources(cfg)
    run = tmp_path_factory.mktemp(request.param) / "run"
    result = run_finetune(cfg, run, sources=sources)
    return run, result, logits(sources.model)


def test_a_loaded_adapter_run_is_plain_and_gives_the_trained_logits(adapter_run):
    from peft.tuners.tuners_utils import BaseTunerLayer

    run, _, trained = adapter_run
    loaded = load_model(str(run)).model
    base = load_model(f"{run}#base").model
    assert torch.allclose(logits(loaded), trained, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits(base), trained, atol=1e-3)  # the adapters mattered
    assert not any(isinstance(m, BaseTunerLayer) for m in loaded.modules())
    assert set(loaded.state_dict()) == set(base.state_dict())  # timm's own names, no adapters
    assert component_map(loaded).depth == component_map(base).depth == 2


def test_evaluate_of_an_adapter_run_equals_its_test_score(adapter_run):
    from vitplas.cli import app

    run, result, _ = adapter_run
    args = ["evaluate", str(run), "batch_size=64", "--num-workers", "0", "--device", "cpu"]
    evaluated = CliRunner().invoke(app, args)
    assert evaluated.exit_code == 0, evaluated.output
    table = pd.read_csv(run / "evaluation.csv")
    assert table.loc[0, "n"] == result["test_n"]
    assert table.loc[0, "acc"] == result["test_acc"]
