"""protocol: paper reproduces the original release item by item (PAPER.md section 7)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T

from vitplas.data.splits import SplitPlan, paper_test_split, seeded_val_split, select
from vitplas.data.transforms import IMAGENET_MEAN, IMAGENET_STD, preprocessing, transform_for
from vitplas.training.config import FinetuneConfig
from vitplas.training.optim import lr_at
from vitplas.training.sources import load_model_for, preprocessing_for, reset_head


def test_paper_warmup_starts_at_zero_and_ahead_one_step_early():
    at = {k: lr_at(k, base_lr=0.01, warmup_steps=2000, total_steps=10_000, warmup="paper")
          for k in (0, 1, 1999, 2000)}  # fmt: skip
    assert at[0] == 0.0
    assert at[1] == pytest.approx(5e-6, abs=1e-15)
    assert at[1999] == pytest.approx(0.009995, abs=1e-15)
    assert at[2000] == pytest.approx(0.01, abs=1e-15)
    assert lr_at(0, base_lr=0.01, warmup_steps=2000, total_steps=10_000) == pytest.approx(5e-6)
    with pytest.raises(ValueError, match="warmup 'late' is unknown"):
        lr_at(0, base_lr=0.01, warmup_steps=2, total_steps=4, warmup="late")


def test_config_protocol_resolves_warmup_amp_and_splits():
    paper = FinetuneConfig(protocol="paper", seed=7)
    paper.validate()
    assert (paper.warmup, paper.amp, paper.val_split) == ("paper", "none", "seeded")
    assert paper.split_plan() == SplitPlan(test="paper", val="seeded", seed=7)
    model = FinetuneConfig(protocol="model")
    model.validate()
    assert (model.warmup, model.amp, model.val_split) == ("ahead", "auto", "fixed")
    assert model.split_plan() == SplitPlan()
    fixed = FinetuneConfig(protocol="paper", val_split="fixed", amp="bf16")
    fixed.validate()
    assert (fixed.amp, fixed.split_plan().val, fixed.split_plan().test) == (
        "bf16",
        "fixed",
        "paper",
    )


def test_cifar10c_paper_split_on_a_synthetic_array():
    """Severity s reads images (s-1)*10000..s*10000; the split is the original's rule."""
    severity = 5
    published = np.arange(50_000)  # image ids of the 5 severities, as read from the .npy
    images = published[(severity - 1) * 10_000 : severity * 10_000]
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    train, test = paper_test_split(len(images))
    assert np.array_equal(np.random.get_state()[1], before)  # global state given back
    order = np.random.RandomState(42).permutation(10_000)  # the rule, written out
    assert np.array_equal(images[train], images[np.sort(order[:8000])])
    assert np.array_equal(images[test], images[np.sort(order[8000:])])
    assert len(train) == 8000 and len(test) == 2000
    plan = SplitPlan(test="paper", val="fixed")
    assert np.array_equal(select("from-all", "test", 10_000, plan=plan), test)
    tr, va = (
        select("from-all", "train", 10_000, plan=plan),
        select("from-all", "val", 10_000, plan=plan),
    )
    assert (len(tr), len(va)) == (6400, 1600)
    assert np.array_equal(np.sort(np.concatenate([tr, va])), train)
    assert not np.array_equal(select("from-all", "test", 10_000), test)  # ours differs


def test_seeded_val_split_is_torch_random_split_with_the_run_seed():
    n = 1000
    torch.manual_seed(3407)
    sub_train, sub_val = torch.utils.data.random_split(range(n), [int(0.8 * n), n - int(0.8 * n)])
    train, val = seeded_val_split(n, 3407)
    assert np.array_equal(train, np.sort(sub_train.indices))
    assert np.array_equal(val, np.sort(sub_val.indices))
    plan = SplitPlan(val="seeded", seed=3407)
    assert np.array_equal(select("val-from-train", "val", n, plan=plan), val)
    other = select("val-from-train", "val", n, plan=SplitPlan(val="seeded", seed=0))
    assert not np.array_equal(other, val)  # moves with the seed, as the original's
    with pytest.raises(ValueError, match="val is fixed or seeded"):
        SplitPlan(val="random")


def _photo(width: int = 300, height: int = 250) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_paper_eval_transform_equals_torchvision_resize_centercrop():
    image = _photo()
    ours = preprocessing("paper", (0.5,) * 3, (0.5,) * 3)
    assert ours == {
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
    }

    class Loaded:
        mean, std, input_size = (0.5,) * 3, (0.5,) * 3, (3, 224, 224)

    reference = T.Compose(
        [T.Resize(224), T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
    out = transform_for(Loaded(), train=False, protocol="paper")(image)
    assert torch.equal(out, reference(image))


def test_paper_train_transform_equals_torchvision_defaults():
    image = _photo()

    class Loaded:
        mean, std, input_size = (0.5,) * 3, (0.5,) * 3, (3, 224, 224)

    reference = T.Compose(
        [
            T.RandomResizedCrop(224),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    ours = transform_for(Loaded(), train=True, protocol="paper")
    for seed in range(3):
        torch.manual_seed(seed)
        a = ours(image)
        torch.manual_seed(seed)
        assert torch.equal(a, reference(image))


def test_model_protocol_follows_the_checkpoint_config():
    prep = preprocessing(
        "model", (0.5,) * 3, (0.25,) * 3, {"interpolation": "bicubic", "crop_pct": 0.9}
    )
    assert prep == {
        "mean": (0.5,) * 3,
        "std": (0.25,) * 3,
        "crop_pct": 0.9,
        "interpolation": "bicubic",
    }
    assert preprocessing("model", (0.5,) * 3, (0.5,) * 3)["crop_pct"] == 0.875
    described = {"model_mean": [0.5] * 3, "model_std": [0.5] * 3, "model_crop_pct": 1.0,
                 "model_interpolation": "bilinear"}  # fmt: skip
    assert preprocessing_for("model", described)["crop_pct"] == 1.0
    with pytest.raises(ValueError, match="protocol 'timm' is unknown; known: paper, model"):
        preprocessing("timm", (0.5,) * 3, (0.5,) * 3)


def test_paper_head_is_torch_linear_default_init():
    cfg = FinetuneConfig(model="tiny-random", random_init=True, img_size=32, protocol="paper")
    model, info = load_model_for(cfg, num_classes=10)
    head = model.get_classifier()
    reference = nn.Linear(head.in_features, 10)
    torch.manual_seed(cfg.seed)
    reference.reset_parameters()
    assert torch.equal(head.weight, reference.weight) and torch.equal(head.bias, reference.bias)
    bound = 1 / head.in_features**0.5
    assert head.bias.abs().max() > 0 and head.weight.abs().max() <= bound
    timm_head = load_model_for(
        FinetuneConfig(model="tiny-random", random_init=True, img_size=32, protocol="model"), 10
    )[0].get_classifier()
    assert torch.count_nonzero(timm_head.bias) == 0  # timm: zero bias, trunc normal 0.02
    assert {"model_interpolation", "model_crop_pct"} <= set(info)
    with pytest.raises(ValueError, match="not a Linear"):
        reset_head(nn.Sequential())


def test_analysis_commands_take_the_protocol(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from vitplas.analysis.setup import open_stream, resolve_device, setup_model
    from vitplas.cli import app

    runner = CliRunner()
    tiny = ["--model", "tiny-random", "--random-init", "--device", "cpu", "--protocol", "paper"]
    out = tmp_path / "plasticity"
    args = ["plasticity", *tiny, "--target", "digits", "--pairs", "8", "--batch-size", "8"]
    result = runner.invoke(app, [*args, "--no-bounds", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((out / "config.yaml").read_text())["protocol"] == "paper"
    bounds = ["bounds", *tiny, "--dataset", "digits", "--radius-images", "8", "--plasticity"]
    result = runner.invoke(app, [*bounds, str(out), "--out", str(tmp_path / "b")])
    assert result.exit_code != 0  # --no-bounds: no token scales for the default data LN bound
    assert "has no bounds.csv (run with --no-bounds)" in result.output
    kinds = ["--ln-bound", "abs", "--mha-bound", "paper"]  # bounds that need no pairs
    result = runner.invoke(app, [*bounds, str(out), *kinds, "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    radius = ["radius", *tiny[:3], "--dataset", "digits", "--images", "8"]
    result = runner.invoke(app, [*radius, "--protocol", "paper", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    r_line = next(line for line in result.output.splitlines() if line.startswith("r = "))
    assert float(r_line.split()[2]) > 0  # progress lines come before it
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["protocol"] == "paper"
    result = runner.invoke(app, [*args, "--protocol", "timm", "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and "protocol" in result.output
    # paper: the original's test carving of a one-pool dataset and its eval transform
    setup = setup_model(
        "tiny-random", random_init=True, img_size=None, device=resolve_device("cpu")
    )
    stream = open_stream("digits", "test", setup.transform("paper"), None, False, "paper")
    assert np.array_equal(stream.indices, paper_test_split(1797)[1])
    steps = setup.transform("paper").transforms
    resize = next(t for t in steps if isinstance(t, T.Resize))
    assert resize.size == 32 and resize.interpolation == T.InterpolationMode.BILINEAR


def test_paper_sweep_lists_924_runs_of_the_seven_train_sets():
    from pathlib import Path

    from typer.testing import CliRunner

    from vitplas.cli import app
    from vitplas.experiments.spec import check_analysis, load_spec
    from vitplas.models.components import PAPER_TRAIN_SETS

    spec_path = Path(__file__).parents[1] / "configs" / "paper" / "main.yaml"
    result = CliRunner().invoke(app, ["sweep", str(spec_path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "924 runs (--runs lists each)" in result.output.splitlines()  # then the cost table
    spec = load_spec(spec_path)
    assert tuple(spec.grid["train"]) == PAPER_TRAIN_SETS
    assert PAPER_TRAIN_SETS == ("all", "emb", "ln1", "mha", "ln2", "fc1", "fc2")
    jobs = check_analysis(spec)  # every analysis entry is a valid config
    assert {job.config.get("protocol") for job in jobs} == {"paper"}


def test_cifar10c_paper_split_through_the_registry(tmp_path):
    """A synthetic CIFAR-10-C of 5 x 10,000 images: severity 5's test split is the rule's."""
    from vitplas.data import get_dataset

    n = 10_000
    base = tmp_path / "CIFAR-10-C"
    base.mkdir()
    images = np.zeros((5 * n, 2, 2, 3), dtype=np.uint8)
    rows = np.tile(np.arange(n), 5)
    images[:, 0, 0, 0] = rows // 256  # the row within its severity, in two bytes
    images[:, 0, 0, 1] = rows % 256
    images[:, 0, 0, 2] = np.repeat(np.arange(1, 6), n)  # the severity
    np.save(base / "snow.npy", images)
    np.save(base / "labels.npy", (rows % 10).astype(np.uint8))
    plan = SplitPlan(test="paper", val="seeded", seed=0)
    test = get_dataset("cifar10-c/snow/5", "test", root=tmp_path, plan=plan)
    order = np.random.RandomState(42).permutation(n)
    assert np.array_equal(test.indices, np.sort(order[8000:]))
    pixels = np.asarray(test[0][0]).astype(np.int64)
    assert pixels[0, 0, 2] == 5 and pixels[0, 0, 0] * 256 + pixels[0, 0, 1] == order[8000:].min()
    train = get_dataset("cifar10-c/snow/5", "train", root=tmp_path, plan=plan)
    val = get_dataset("cifar10-c/snow/5", "val", root=tmp_path, plan=plan)
    assert (len(train), len(val), len(test)) == (6400, 1600, 2000)
    assert np.array_equal(np.union1d(train.indices, val.indices), np.sort(order[:8000]))


def test_paper_run_trains_and_evaluates_on_the_original_splits(tmp_path):
    from vitplas.jobs.runners import run_evaluate, run_finetune
    from vitplas.training.config import EvaluateConfig, load_finetune_config

    overrides = ["protocol=paper", "steps=4", "warmup_steps=2", "eval_every=2", "batch_size=16"]
    overrides += ["tensorboard=false", "num_workers=0", "device=cpu", "max_eval_samples=64"]
    from pathlib import Path

    preset = Path(__file__).parents[1] / "configs" / "finetune" / "smoke-digits.yaml"
    cfg = load_finetune_config(preset, overrides)
    assert (cfg.amp, cfg.val_split) == ("none", "seeded")
    result = run_finetune(cfg, tmp_path / "run")
    assert result["test_n"] == 64
    table = run_evaluate(EvaluateConfig(run=str(tmp_path / "run"), device="cpu", num_workers=0))
    assert table["n"].tolist() == [len(paper_test_split(1797)[1])]  # the original's test split
