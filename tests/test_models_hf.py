"""Hugging Face checkpoints -> timm.

ViT: written here in HF's key layout and checked against `hf_forward`, HF's ViT by hand
(transformers not needed). DeiT, DINOv2, BEiT: tiny random transformers models saved with
save_pretrained into tmp_path and compared with the converted timm model (offline).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub import constants
from safetensors.torch import save_file

from vitplas.models import ModelError, component_map, load_model
from vitplas.runs import file_sha256

CONFIG = {
    "model_type": "vit",
    "hidden_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 3,
    "intermediate_size": 144,  # MLP ratio 3
    "image_size": 32,
    "patch_size": 8,
    "num_channels": 3,
    "qkv_bias": True,
    "layer_norm_eps": 1e-12,
    "hidden_act": "gelu",
}


@pytest.fixture(autouse=True)
def offline_caches(tmp_path, monkeypatch):
    """Empty HF hub cache and VITPLAS_HOME under tmp_path; hub offline."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("VITPLAS_HOME", str(tmp_path / "home"))


def hf_state(num_labels: int = 0, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under HF ViT names (ViTModel with pooler, or +classifier with `vit.`)."""
    g = torch.Generator().manual_seed(seed)
    d, mlp, p = CONFIG["hidden_size"], CONFIG["intermediate_size"], CONFIG["patch_size"]
    tokens = 1 + (CONFIG["image_size"] // p) ** 2
    shapes = {
        "embeddings.cls_token": (1, 1, d),
        "embeddings.position_embeddings": (1, tokens, d),
        "embeddings.patch_embeddings.projection.weight": (d, 3, p, p),
        "embeddings.patch_embeddings.projection.bias": (d,),
        "layernorm.weight": (d,),
        "layernorm.bias": (d,),
    }
    for i in range(CONFIG["num_hidden_layers"]):
        layer = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            shapes[f"{layer}attention.attention.{name}.weight"] = (d, d)
            shapes[f"{layer}attention.attention.{name}.bias"] = (d,)
        for name, shape in (
            ("attention.output.dense", (d, d)),
            ("intermediate.dense", (mlp, d)),
            ("output.dense", (d, mlp)),
        ):
            shapes[f"{layer}{name}.weight"] = shape
            shapes[f"{layer}{name}.bias"] = shape[:1]
        for norm in ("layernorm_before", "layernorm_after"):
            shapes[f"{layer}{norm}.weight"] = (d,)
            shapes[f"{layer}{norm}.bias"] = (d,)
    state = {k: 0.1 * torch.randn(s, generator=g) for k, s in shapes.items()}
    for k in state:
        if "layernorm" in k and k.endswith("weight"):
            state[k] += 1.0
    if num_labels:  # ViTForImageClassification: no pooler, everything under "vit."
        state = {f"vit.{k}": v for k, v in state.items()}
        state["classifier.weight"] = 0.1 * torch.randn(num_labels, d, generator=g)
        state["classifier.bias"] = 0.1 * torch.randn(num_labels, generator=g)
    else:
        state["pooler.dense.weight"] = 0.1 * torch.randn(d, d, generator=g)
        state["pooler.dense.bias"] = 0.1 * torch.randn(d, generator=g)
    return state


def write_folder(folder, state, config=CONFIG, weights="model.safetensors", preprocessor=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    if weights.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, folder / weights)
    else:
        torch.save(state, folder / weights)
    if preprocessor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return folder


def hf_forward(state: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """HF ViT's encoder output (B, N, D) by hand, straight from the HF tensors."""
    sd = {k.removeprefix("vit."): v for k, v in state.items()}
    d, heads, eps = CONFIG["hidden_size"], CONFIG["num_attention_heads"], CONFIG["layer_norm_eps"]
    dh = d // heads
    x = F.conv2d(
        images,
        sd["embeddings.patch_embeddings.projection.weight"],
        sd["embeddings.patch_embeddings.projection.bias"],
        stride=CONFIG["patch_size"],
    )
    x = x.flatten(2).transpose(1, 2)  # (B, 16, D)
    b = x.shape[0]
    x = torch.cat([sd["embeddings.cls_token"].expand(b, -1, -1), x], 1)
    x = x + sd["embeddings.position_embeddings"]  # (B, N, D)
    n = x.shape[1]

    def lin(t, name):
        return F.linear(t, sd[f"{name}.weight"], sd[f"{name}.bias"])

    def norm(t, name):
        return F.layer_norm(t, (d,), sd[f"{name}.weight"], sd[f"{name}.bias"], eps)

    for i in range(CONFIG["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        h = norm(x, p + "layernorm_before")
        q, k, v = (
            lin(h, f"{p}attention.attention.{name}").view(b, n, heads, dh).transpose(1, 2)
            for name in ("query", "key", "value")
        )  # (B, heads, N, dh)
        att = torch.softmax(q @ k.transpose(-1, -2) / dh**0.5, dim=-1) @ v
        x = x + lin(att.transpose(1, 2).reshape(b, n, d), p + "attention.output.dense")
        h = norm(x, p + "layernorm_after")
        x = x + lin(F.gelu(lin(h, p + "intermediate.dense")), p + "output.dense")
    return norm(x, "layernorm")


def timm_to_hf(timm_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse mapping, written independently of vitplas.models.hf."""
    out = {}
    for key, t in timm_state.items():
        parts = key.split(".")
        if key == "cls_token":
            out["embeddings.cls_token"] = t
        elif key == "pos_embed":
            out["embeddings.position_embeddings"] = t
        elif key.startswith("patch_embed.proj."):
            out[f"embeddings.patch_embeddings.projection.{parts[-1]}"] = t
        elif key.startswith("norm."):
            out[f"layernorm.{parts[-1]}"] = t
        elif key.startswith("head."):
            out[f"classifier.{parts[-1]}"] = t
        else:
            i, kind = parts[1], parts[-1]
            layer = f"encoder.layer.{i}."
            inner = ".".join(parts[2:-1])
            if inner == "attn.qkv":
                for name, chunk in zip(("query", "key", "value"), t.chunk(3, dim=0), strict=True):
                    out[f"{layer}attention.attention.{name}.{kind}"] = chunk
                continue
            hf_name = {
                "norm1": "layernorm_before",
                "norm2": "layernorm_after",
                "attn.proj": "attention.output.dense",
                "mlp.fc1": "intermediate.dense",
                "mlp.fc2": "output.dense",
            }[inner]
            out[f"{layer}{hf_name}.{kind}"] = t
    return out


IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def test_hf_folder_matches_hand_forward_and_round_trips(tmp_path):
    state = hf_state()
    pre = {"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]}
    folder = write_folder(tmp_path / "vit", state, preprocessor=pre)
    loaded = load_model(str(folder))
    with torch.no_grad():
        features = loaded.model.forward_features(IMAGES)
    assert torch.allclose(features, hf_forward(state, IMAGES), atol=1e-5)
    back = timm_to_hf(loaded.model.state_dict())
    expected = {k: v for k, v in state.items() if not k.startswith("pooler.")}
    assert sorted(back) == sorted(expected)
    assert max((back[k] - expected[k]).abs().max().item() for k in expected) <= 1e-6
    assert loaded.num_classes == 0 and loaded.input_size == (3, 32, 32)
    assert loaded.model.blocks[0].norm1.eps == 1e-12  # HF's eps, not timm's 1e-6
    assert (loaded.mean, loaded.std) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert loaded.checksum == file_sha256(folder / "model.safetensors")
    assert not loaded.random_init and "RANDOM INIT" not in loaded.description
    assert str(folder) in loaded.description


def test_hf_image_classification_bin_keeps_classifier_as_head(tmp_path):
    state = hf_state(num_labels=5, seed=1)
    folder = write_folder(tmp_path / "cls", state, weights="pytorch_model.bin")
    loaded = load_model(str(folder))
    assert loaded.num_classes == 5 and loaded.mean == (0.5, 0.5, 0.5)
    with torch.no_grad():
        logits = loaded.model(IMAGES)
    cls_token = hf_forward(state, IMAGES)[:, 0]
    expected = F.linear(cls_token, state["classifier.weight"], state["classifier.bias"])
    assert torch.allclose(logits, expected, atol=1e-5)
    renamed = load_model(str(folder), num_classes=3)  # a new head replaces the classifier
    assert renamed.model.head.weight.shape == (3, 48)
    assert torch.equal(renamed.model.head.bias, torch.zeros(3))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("leftover", r"no timm counterpart: encoder\.layer\.0\.attention\.attention\.extra"),
        ("missing", r"missing keys: blocks\.1\.mlp\.fc2\.bias"),
        ("no_key", r"layer 0 weight: has \['query', 'value'\], needs query, key, value"),
    ],
)
def test_hf_key_problems_fail_listing_keys(tmp_path, edit, message):
    state = hf_state()
    if edit == "leftover":
        state["encoder.layer.0.attention.attention.extra.weight"] = torch.zeros(2)
    elif edit == "missing":
        del state["encoder.layer.1.output.dense.bias"]
    else:
        del state["encoder.layer.0.attention.attention.key.weight"]
    folder = write_folder(tmp_path / edit, state)
    with pytest.raises(ModelError, match=message):
        load_model(str(folder))


def test_hf_shape_mismatch_lists_keys_and_shapes(tmp_path):
    folder = write_folder(tmp_path / "vit", hf_state(), config={**CONFIG, "intermediate_size": 96})
    with pytest.raises(ModelError, match=r"wrong shapes: blocks\.0\.mlp\.fc1\.bias \(144,\)"):
        load_model(str(folder))


def test_hf_unknown_model_type_is_refused(tmp_path):
    folder = write_folder(tmp_path / "d", hf_state(), config={**CONFIG, "model_type": "swin"})
    with pytest.raises(
        ModelError, match="'swin' model; vitplas converts Hugging Face 'vit', 'deit'"
    ):
        load_model(str(folder))


def put_in_hub_cache(repo: str, files: dict[str, bytes]) -> None:
    """Lay files out as huggingface_hub's cache does (refs/main -> snapshots/<commit>)."""
    folder = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    commit = "c" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)


def test_hf_id_from_hub_cache_offline_and_missing(tmp_path):
    with pytest.raises(ModelError) as info:
        load_model("org/tiny-vit")
    text = str(info.value)
    assert "'org/tiny-vit'" in text and str(tmp_path / "hub") in text
    assert "random_init=true" in text and "folder" in text
    folder = write_folder(tmp_path / "src", hf_state(seed=3))
    put_in_hub_cache(
        "org/tiny-vit",
        {n: (folder / n).read_bytes() for n in ("config.json", "model.safetensors")},
    )
    loaded = load_model("org/tiny-vit", img_size=48)
    assert loaded.input_size == (3, 48, 48)
    assert loaded.model.pos_embed.shape == (1, 1 + 36, 48)  # resampled to the 6x6 grid
    assert loaded.checksum == file_sha256(folder / "model.safetensors")


def test_hf_id_random_init_needs_only_cached_config(tmp_path):
    put_in_hub_cache("org/config-only", {"config.json": json.dumps(CONFIG).encode()})
    loaded = load_model("org/config-only", random_init=True, num_classes=4)
    assert "RANDOM INIT" in loaded.description and loaded.random_init
    assert loaded.checksum is None and loaded.num_classes == 4
    assert loaded.model.blocks[0].mlp.fc1.out_features == 144
    with pytest.raises(ModelError, match="cannot get Hugging Face model 'org/config-only'"):
        load_model("org/config-only")  # no weights file in the cache


# ---- DeiT, DINOv2, BEiT: tiny random transformers models saved locally, loaded as timm ----

TINY = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=144)


def saved_transformers_model(folder, make):
    """`make()` (a transformers model) with every parameter perturbed, saved to `folder`."""
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = make().eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(folder)
    return model


def _deit_teacher():
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    return DeiTForImageClassificationWithTeacher(
        DeiTConfig(**TINY, image_size=32, patch_size=8, num_labels=5)
    )


def _deit_backbone():
    from transformers import DeiTConfig, DeiTModel

    return DeiTModel(DeiTConfig(**TINY, image_size=32, patch_size=8))


def _dinov2():
    from transformers import Dinov2Config, Dinov2Model

    return Dinov2Model(Dinov2Config(**TINY, mlp_ratio=3, image_size=28, patch_size=7))


def _dinov2_registers():
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    config = Dinov2WithRegistersConfig(**TINY, mlp_ratio=3, image_size=28, patch_size=7)
    return Dinov2WithRegistersModel(config)


def _beit_classifier():
    from transformers import BeitConfig, BeitForImageClassification

    config = BeitConfig(**TINY, image_size=32, patch_size=8, num_labels=5)
    config.use_relative_position_bias = True  # per layer, as BEiT's finetuned models
    return BeitForImageClassification(config)


def _beit_shared_bias():
    from transformers import BeitConfig, BeitModel

    config = BeitConfig(**TINY, image_size=32, patch_size=8, use_mean_pooling=False)
    config.use_shared_relative_position_bias = True  # as BEiT's pretrained models
    config.use_absolute_position_embeddings = True
    return BeitModel(config)


@pytest.mark.parametrize(
    ("make", "size", "output", "classes"),
    [
        (_deit_teacher, 32, "logits", 5),
        (_deit_backbone, 32, "features", 0),
        (_dinov2, 28, "features", 0),
        (_dinov2_registers, 28, "features", 0),
        (_beit_classifier, 32, "logits", 5),
        (_beit_shared_bias, 32, "features", 0),
    ],
)
def test_transformers_models_match_timm(tmp_path, make, size, output, classes):
    hf_model = saved_transformers_model(tmp_path / "hf", make)
    loaded = load_model(str(tmp_path / "hf"))
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hf_out = hf_model(pixel_values=images)
        if output == "logits":
            expected, actual = hf_out.logits, loaded.model(images)
        else:
            expected, actual = hf_out.last_hidden_state, loaded.model.forward_features(images)
    assert actual.shape == expected.shape
    assert torch.allclose(actual, expected, atol=1e-5), (actual - expected).abs().max()
    assert loaded.num_classes == classes and loaded.input_size == (3, size, size)
    assert component_map(loaded.model).depth == 2  # a family vitplas analyses
    kind = hf_model.config.model_type
    assert f"Hugging Face {kind} {tmp_path / 'hf'} converted" in loaded.description


def test_transformers_key_problems_name_keys(tmp_path):
    from safetensors.torch import load_file

    saved_transformers_model(tmp_path / "hf", _dinov2)
    weights = tmp_path / "hf" / "model.safetensors"
    state = load_file(weights)
    del state["encoder.layer.1.layer_scale2.lambda1"]
    save_file(state, weights)
    with pytest.raises(ModelError, match=r"missing keys: blocks\.1\.ls2\.gamma"):
        load_model(str(tmp_path / "hf"))
    state["encoder.layer.1.layer_scale2.lambda1"] = torch.zeros(7)
    save_file(state, weights)
    with pytest.raises(ModelError, match=r"wrong shapes: blocks\.1\.ls2\.gamma \(7,\)"):
        load_model(str(tmp_path / "hf"))


@pytest.mark.parametrize(
    ("make", "cls"), [(_deit_teacher, "Distilled"), (_beit_classifier, "Beit")]
)
def test_transformers_config_only_builds_random_timm_model(tmp_path, make, cls):
    pytest.importorskip("transformers")
    make().config.save_pretrained(tmp_path / "cfg")  # config.json alone, no weights
    loaded = load_model(str(tmp_path / "cfg"), random_init=True)
    assert cls in type(loaded.model).__name__ and loaded.random_init
    assert loaded.description.startswith("RANDOM INIT Hugging Face")
