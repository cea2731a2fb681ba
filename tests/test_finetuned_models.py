"""A finished finetuning run is a model spec; `export` writes a file timm loads back exactly."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open

from vitplas.models import ModelError, load_model
from vitplas.models.export import export_model
from vitplas.runs import RunDir, atomic_write_json, file_sha256

IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
SMOKE = "configs/finetune/smoke-digits.yaml"
SHORT = ["steps=4", "eval_every=2", "warmup_steps=1", "tensorboard=false", "max_eval_samples=64"]


def finetuned(folder, *overrides):
    from vitplas.jobs.runners import run_finetune
    from vitplas.training.config import load_finetune_config

    run = folder / "run"
    run_finetune(load_finetune_config(SMOKE, [*SHORT, *overrides]), run)
    return run


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny-random MHA finetune on digits (seconds, offline), protocol model (the default)."""
    return finetuned(tmp_path_factory.mktemp("ft"))


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    """The same under protocol paper, its new head (torch.nn.Linear's init) left untrained."""
    return finetuned(tmp_path_factory.mktemp("paper"), "protocol=paper", "train_head=false")


@pytest.fixture
def run_copy(finished_run, tmp_path):
    return shutil.copytree(finished_run, tmp_path / "run")


def outputs(model):
    with torch.no_grad():
        return model.eval()(IMAGES)


def test_run_folder_and_best_file_are_models(run_copy):
    from vitplas.training.evaluate import load_best_model

    best = run_copy / "checkpoints" / "best.safetensors"
    loaded = load_model(str(run_copy))
    reference = load_best_model(run_copy)[0].model
    assert torch.equal(outputs(loaded.model), outputs(reference))
    assert loaded.num_classes == 10 and loaded.input_size == (3, 32, 32)
    assert loaded.checksum == file_sha256(best)
    assert loaded.description.startswith(f"finetuned run {run_copy} (train=mha on digits)")
    assert loaded.mean == loaded.std == (0.5, 0.5, 0.5)  # protocol model: tiny-random's own
    sealed = json.loads((run_copy / "checksums.json").read_text())["checkpoints/best.safetensors"]
    assert sealed["sha256"] == file_sha256(best)  # the run's seal is what is checked
    assert not (best.parent / "best.safetensors.sha256").exists()  # so no sidecar is written
    again = load_model(str(best))
    assert torch.equal(outputs(again.model), outputs(reference))


def test_arch_at_a_runs_best_file_is_refused_naming_the_run(run_copy):
    """best.safetensors holds only the trained parameters: ARCH@ it is one line saying to name
    the run (which rebuilds the base), not 'missing keys'."""
    best = run_copy / "checkpoints" / "best.safetensors"
    with pytest.raises(ModelError) as err:
        load_model(f"vit_tiny_patch16_224@{best}")
    message = str(err.value)
    assert message.startswith(f"{best} holds only the parameters that run {run_copy} trained")
    assert f"name the run instead ('{run_copy}' or '{best}')" in message
    assert "missing keys" not in message and "\n" not in message


def test_trained_weights_differ_from_base(run_copy):
    torch.manual_seed(0)  # the run's seed: the same random base and new head
    base = load_model("tiny-random", num_classes=10, img_size=32)
    tuned = load_model(str(run_copy))
    changed = {
        n
        for n, p in tuned.model.named_parameters()
        if not torch.equal(p, dict(base.model.named_parameters())[n])
    }
    assert changed and all(".attn." in n or n.startswith(("head.", "norm.")) for n in changed)


def reseal(run):
    """Seal `run` again as it is now (a hand-made change that is no damage)."""
    (run / "DONE").unlink()
    RunDir(run).mark_done()


def test_changed_weights_are_refused_naming_the_file(run_copy):
    best = run_copy / "checkpoints" / "best.safetensors"
    load_model(str(run_copy))
    data = bytearray(best.read_bytes())
    data[-1] ^= 0xFF
    best.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=rf"{best} is damaged \(corrupt or changed: its conten"):
        load_model(str(run_copy))
    assert not (best.parent / "best.safetensors.sha256").exists()  # the seal is what is checked


def test_an_unreadable_seal_is_one_line_naming_it(run_copy):
    (run_copy / "checksums.json").write_text("{not json")
    with pytest.raises(ModelError, match=rf"{run_copy / 'checksums.json'} is damaged \(its cont"):
        load_model(str(run_copy))
    (run_copy / "checksums.json").unlink()  # a finished run's seal is never optional
    with pytest.raises(ModelError, match=r"checksums\.json is damaged \(the file is missing"):
        load_model(str(run_copy))


def test_sealed_checksum_is_used(run_copy):
    sums = json.loads((run_copy / "checksums.json").read_text())
    sums["checkpoints/best.safetensors"]["sha256"] = "0" * 64
    atomic_write_json(run_copy / "checksums.json", sums)  # a seal that DONE names
    done = {"finished_at": "now", "checksums_sha256": file_sha256(run_copy / "checksums.json")}
    atomic_write_json(run_copy / "DONE", done)
    with pytest.raises(ModelError, match=r"best\.safetensors is damaged \(corrupt or changed"):
        load_model(str(run_copy))


def test_missing_or_unreadable_weights_are_one_line_errors(run_copy):
    best = run_copy / "checkpoints" / "best.safetensors"
    best.write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match=rf"{best} is damaged \(corrupt or truncated"):
        load_model(str(run_copy))  # the seal catches it before the file is parsed
    (run_copy / "checksums.json").unlink()  # unfinished, unsealed: parsed as it is
    (run_copy / "DONE").unlink()
    with pytest.raises(ModelError, match=rf"{best} is damaged \(not a safetensors file \(Error"):
        load_model(str(run_copy), allow_unfinished=True)
    best.unlink()
    with pytest.raises(ModelError, match=rf"{best} does not exist: {run_copy} wrote no best"):
        load_model(str(run_copy), allow_unfinished=True)


def test_random_init_of_a_run_is_refused(run_copy):
    with pytest.raises(ModelError, match=r"is a finetuned run: .* drop random_init"):
        load_model(str(run_copy), random_init=True)


def test_export_round_trips_through_timm(run_copy, tmp_path):
    import timm

    out = tmp_path / "model.safetensors"
    exported = export_model(str(run_copy), out)
    with safe_open(str(out), "pt") as handle:
        meta = handle.metadata()
    cfg, kwargs = json.loads(meta["pretrained_cfg"]), json.loads(meta["timm_kwargs"])
    assert meta["arch"] == exported.arch == "vit_tiny_patch16_224"
    assert kwargs == {
        "patch_size": 8,
        "embed_dim": 48,
        "depth": 2,
        "num_heads": 3,
        "mlp_ratio": 3.0,
    }
    assert cfg["num_classes"] == 10 and cfg["input_size"] == [3, 32, 32]
    assert (cfg["interpolation"], cfg["crop_pct"]) == ("bicubic", 0.875)
    model = timm.create_model(
        meta["arch"], pretrained=True, pretrained_cfg_overlay=dict(cfg, file=str(out)), **kwargs
    )
    assert torch.equal(outputs(model), outputs(load_model(str(run_copy)).model))
    assert f"file='{out}'" in exported.timm_call()


def test_export_of_a_timm_name_and_refusals(tmp_path):
    import timm

    out = tmp_path / "vit.safetensors"
    loaded = load_model("vit_tiny_patch16_224.augreg_in21k", random_init=True, img_size=32)
    torch.save(loaded.model.state_dict(), tmp_path / "w.pth")
    exported = export_model(f"vit_tiny_patch16_224.augreg_in21k@{tmp_path / 'w.pth'}", out)
    assert exported.timm_kwargs == {} and exported.pretrained_cfg["input_size"] == [3, 32, 32]
    overlay = dict(exported.pretrained_cfg, file=str(out))
    model = timm.create_model(exported.arch, pretrained=True, pretrained_cfg_overlay=overlay)
    assert torch.equal(outputs(model), outputs(loaded.model))
    with pytest.raises(ModelError, match=r"must end in \.safetensors"):
        export_model("tiny-random", tmp_path / "x.pt")


def test_plasticity_compare_base_side_by_side(run_copy, tmp_path):
    import pandas as pd
    from typer.testing import CliRunner

    from vitplas.cli import app

    out = tmp_path / "cmp"
    args = ["plasticity", "--model", str(run_copy), "--target", "digits", "--pairs", "32"]
    args += ["--batch-size", "16", "--no-bounds", "--out", str(out), "--compare-base"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Plasticity before and after finetuning" in result.output
    pooled = pd.read_csv(out / "compare_base_pooled.csv").set_index("component")
    layers = pd.read_csv(out / "compare_base.csv")
    assert sorted(pooled.index) == ["fc1", "fc2", "ln1", "ln2", "mha"]
    assert len(layers) == 2 * 5 and (out / "base" / "DONE").is_file()
    assert (pooled.drop(index="mha")["ratio"] == 1.0).all()  # only MHA was trained
    assert pooled.loc["mha", "ratio"] != 1.0
    base = pd.read_csv(out / "base" / "plasticity_pooled.csv").set_index("component")
    assert pooled.loc["mha", "base_mean"] == base.loc["mha", "mean"]
    assert (out / "figures" / "compare_base.png").stat().st_size > 10_000
    assert "figures/compare_base.png" in result.output
    sealed = json.loads((out / "checksums.json").read_text())  # the figure is a sealed record
    assert {"figures/compare_base.png", "figures/compare_base.pdf"} <= set(sealed)
    again = CliRunner().invoke(app, args, catch_exceptions=False)  # read back, not recomputed
    assert again.exit_code == 0 and "figures/compare_base.png" in again.output, again.output
    refused = CliRunner().invoke(app, ["plasticity", "--model", "tiny-random", "--compare-base"])
    assert refused.exit_code == 2
    assert "--compare-base needs a finished finetuning run folder" in refused.output


def test_base_spec_is_the_run_base_without_trained_weights(run_copy):
    base = load_model(f"{run_copy}#base")
    assert base.description.startswith(f"base model of finetuned run {run_copy}: RANDOM INIT")
    torch.manual_seed(0)
    fresh = load_model("tiny-random", num_classes=10, img_size=32)
    assert torch.equal(outputs(base.model), outputs(fresh.model))


def test_export_command_prints_the_timm_call(run_copy, tmp_path):
    from typer.testing import CliRunner

    from vitplas.cli import app

    out = tmp_path / "cli.safetensors"
    result = CliRunner().invoke(app, ["export", str(run_copy), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "timm.create_model('vit_tiny_patch16_224', pretrained=True" in result.stdout
    assert out.is_file()
    missing = CliRunner().invoke(app, ["export", str(tmp_path / "nope"), "--out", str(out)])
    assert missing.exit_code == 2 and f"model '{tmp_path / 'nope'}' is unknown" in missing.output


def hand_made_run(tmp_path, trained: dict):
    """A run folder whose base is a local timm file (what a finished run records, no training)."""
    import yaml
    from safetensors.torch import save_file

    base = load_model("vit_tiny_patch16_224.augreg_in21k", random_init=True, img_size=32)
    weights = tmp_path / "base.pth"
    torch.save(base.model.state_dict(), weights)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    spec = f"vit_tiny_patch16_224.augreg_in21k@{weights}"
    config = {"model": spec, "dataset": "digits", "img_size": 32, "seed": 0, "train": ["mha"]}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    save_file(trained, run / "checkpoints" / "best.safetensors")
    manifest = {
        "model_checksum": file_sha256(weights),
        "model_mean": [0.5] * 3,
        "model_std": [0.5] * 3,
    }
    (run / "manifest.json").write_text(json.dumps(manifest))
    RunDir(run).mark_done()
    return run


def test_base_checksum_and_trained_keys_are_checked(tmp_path):
    head = {"head.weight": torch.ones(10, 192), "head.bias": torch.zeros(10)}
    run = hand_made_run(tmp_path, head)
    tuned = load_model(str(run))
    assert torch.equal(tuned.model.head.weight, torch.ones(10, 192)) and tuned.num_classes == 10
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "model_checksum": "f" * 64}))
    reseal(run)
    with pytest.raises(ModelError, match=r"other than those run .* trained from \(ffffffffffff"):
        load_model(str(run))


def test_trained_keys_the_base_lacks_are_refused(tmp_path):
    extra = {"blocks.99.attn.qkv.weight": torch.zeros(3), "head.weight": torch.zeros(10, 7)}
    run = hand_made_run(tmp_path, extra)
    with pytest.raises(ModelError) as info:
        load_model(str(run))
    assert "parameters the model lacks: blocks.99.attn.qkv.weight" in str(info.value)
    assert "wrong shapes: head.weight (10, 7) (model: (10, 192))" in str(info.value)


# (protocol, mean, std, eval resize of 32 px, interpolation): what each protocol trains with
PREPROCESSING = {
    "model": ((0.5,) * 3, (0.5,) * 3, 37, "bicubic"),  # tiny-random's own; crop 0.875
    "paper": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 32, "bilinear"),  # crop 1
}


@pytest.mark.parametrize("protocol", ["model", "paper"])
def test_a_loaded_run_gets_its_own_preprocessing_and_outputs(protocol, request):
    """load_model(RUN) and transform_for(it) give the logits training's own model and eval
    transform (training.sources.load_sources) give on the run's test images."""
    from safetensors.torch import load_file as load_weights

    from vitplas.data import get_dataset, transform_for
    from vitplas.training.config import load_finetune_config
    from vitplas.training.sources import load_sources

    run = request.getfixturevalue("finished_run" if protocol == "model" else "paper_run")
    mean, std, resize, interpolation = PREPROCESSING[protocol]
    for spec in (str(run), f"{run}#base"):
        loaded = load_model(spec)
        assert (loaded.mean, loaded.std) == (mean, std)
        steps = transform_for(loaded, train=False).transforms
        assert (steps[1].size, steps[1].interpolation.value) == (resize, interpolation)
        assert (tuple(steps[-1].mean), tuple(steps[-1].std)) == (mean, std)
    cfg = load_finetune_config(run / "config.yaml")
    assert cfg.protocol == protocol
    sources = load_sources(cfg, splits=("test",))
    sources.model.load_state_dict(load_weights(run / "checkpoints" / "best.safetensors"), False)
    raw = get_dataset(cfg.dataset, "test", plan=cfg.split_plan())
    own = torch.stack([sources.test[i][0] for i in range(4)])
    mine = torch.stack([transform_for(loaded, train=False)(raw[i][0]) for i in range(4)])
    assert torch.equal(own, mine)
    assert torch.equal(outputs_of(sources.model, own), outputs_of(load_model(str(run)).model, own))


def outputs_of(model, images):
    with torch.no_grad():
        return model.eval()(images)


def test_a_model_run_without_its_statistics_is_refused_naming_the_manifest(run_copy):
    manifest = json.loads((run_copy / "manifest.json").read_text())
    del manifest["model_mean"]
    (run_copy / "manifest.json").write_text(json.dumps(manifest))
    reseal(run_copy)  # as it is now: not a damaged record
    with pytest.raises(ModelError, match=r"manifest\.json records no model_mean/model_std"):
        load_model(str(run_copy))


def test_a_damaged_manifest_is_refused_naming_it(run_copy):
    path = run_copy / "manifest.json"
    path.write_text(path.read_text().replace("0.5", "0.25"))
    with pytest.raises(ModelError, match=rf"{path} is damaged \(its content was changed"):
        load_model(str(run_copy))
    path.unlink()  # a sealed record that is gone: its base-model check is not skipped
    with pytest.raises(ModelError, match=rf"{path} is damaged \(the file is missing"):
        load_model(str(run_copy))


def test_a_legacy_normalization_key_names_the_protocol(tmp_path):
    import yaml

    run = hand_made_run(
        tmp_path, {"head.weight": torch.ones(10, 192), "head.bias": torch.zeros(10)}
    )
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert load_model(str(run)).mean == (0.5, 0.5, 0.5)  # no key: FinetuneConfig's default
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "normalization": "paper"}))
    reseal(run)
    assert load_model(str(run)).mean == (0.485, 0.456, 0.406)
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "protocol": "imagenet"}))
    reseal(run)
    with pytest.raises(ModelError, match=r"config\.yaml names protocol 'imagenet'; known: paper"):
        load_model(str(run))


def test_export_of_a_paper_run_states_its_preprocessing(paper_run, tmp_path):
    exported = export_model(str(paper_run), tmp_path / "paper.safetensors")
    cfg = exported.pretrained_cfg
    assert (cfg["interpolation"], cfg["crop_pct"]) == ("bilinear", 1.0)
    assert cfg["mean"] == [0.485, 0.456, 0.406] and cfg["std"] == [0.229, 0.224, 0.225]
