"""Component-wise finetuning of text models for sequence classification, offline: every train
set kind on a tiny random BERT and GPT-2 (local folders with their tokenizers) trains exactly
the set's parameters plus the head (and GPT-2's final norm); the run's records as for images;
the one-line refusals; one step of each component on the real MiniLM-L6 with the real Rotten
Tomatoes texts (skipped when either asset is absent)."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from test_families_text import minilm_folder
from text_fixtures import text_world

from vitplas.config import ConfigError
from vitplas.models.components import component_map
from vitplas.training.config import load_finetune_config

SHORT = ["steps=2", "eval_every=2", "warmup_steps=0", "batch_size=6", "max_length=12"]
SHORT += ["tensorboard=false", "num_workers=0", "device=cpu", "dataset=rotten-tomatoes"]
EXTRAS = {"bert": ("head",), "gpt2": ("head", "norm")}  # train_head / train_norm: what exists
LORA = {"bert": ("query", "key", "value", "attention.output.dense"), "gpt2": ("c_attn", "c_proj")}
SETS = ["mha", "fc1", "ln2", "mha+fc1", "mha@1", "all", "lora", "lntuning", "bitfit", "few-shot"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return text_world(tmp_path_factory.mktemp("text"))


def _config(world, family: str, *more: str):
    return load_finetune_config(
        None, [*SHORT, f"model={world[family]}", f"data_root={world['data']}", *more]
    )


def _expected(model, family: str, train: str) -> set[str]:
    """The parameter names train=[train] must train (`lora`: those of the base model)."""
    cmap = component_map(model)
    names = {n for e in EXTRAS[family] for n, _ in cmap.named_parameters(e)}
    if train in ("lora", "lntuning"):
        return names
    if train == "bitfit":
        return names | {n for n in cmap.owner if n.endswith("bias") and n not in names}
    if train == "all":
        return set(cmap.owner)
    for token in train.split("+"):
        comp, _, layer = token.partition("@")
        prefix = f"{cmap.family.blocks_path}.{layer}." if layer else ""
        names |= {n for n, _ in cmap.named_parameters(comp) if n.startswith(prefix)}
    return names


def _train(world, family: str, train: str, tmp_path):
    """(trained parameter names, names whose values moved, the run's result, run folder)."""
    from vitplas.jobs.runners import run_finetune
    from vitplas.training.sources import load_sources

    few = train == "few-shot"
    cfg = _config(world, family, f"train=[{'mha' if few else train}]", "lr=0.5",
                  *(["train_per_class=2"] if few else []))  # fmt: skip
    sources = load_sources(cfg)
    before = {n: p.detach().clone() for n, p in sources.model.named_parameters()}
    seen = {}
    run = tmp_path / "run"
    result = run_finetune(cfg, run, sources=sources, callbacks=[lambda t, _: seen.update(t=t)])
    after = dict(sources.model.named_parameters())
    moved = {n for n, p in before.items() if n in after and not torch.equal(p, after[n])}
    if few:
        assert len(seen["t"].sources.train) == 6  # 2 per class
    return set(seen["t"].trained_names), moved, result, run


@pytest.mark.parametrize("family", sorted(EXTRAS))
@pytest.mark.parametrize("train", SETS)
def test_each_train_set_trains_exactly_its_parameters_and_the_head(world, family, train, tmp_path):
    trained, moved, result, run = _train(world, family, train, tmp_path)
    from vitplas.models import load_model

    base = load_model(str(world[family]), num_classes=3).model
    expected = _expected(base, family, "mha" if train == "few-shot" else train)
    adapters = trained - set(base.state_dict())
    assert trained - adapters == expected
    assert moved <= expected  # nothing outside the set moved
    if train == "lora":
        assert adapters and all("lora_" in n and any(t in n for t in LORA[family])
                                for n in adapters)  # fmt: skip
    elif train == "lntuning":
        assert adapters and all("ln_tuning_layers" in n for n in adapters)
    else:
        assert not adapters
    if train not in ("all", "bitfit"):  # every trained tensor got a gradient in two steps
        assert moved == expected
    head = "classifier" if family == "bert" else "score"
    assert any(n.startswith(head) for n in trained)
    predictions = pd.read_csv(run / "test_predictions.csv")
    assert list(predictions.columns) == ["index", "label", "pred"]
    assert len(predictions) == result["test_n"] == 6  # 20% of each class's 10, stratified
    assert result["test_acc"] == pytest.approx(100 * (predictions.label == predictions.pred).mean())
    assert result["train"] == ("mha" if train == "few-shot" else train).split("+")


def test_the_new_head_is_the_family_classifier_on_the_base_weights(world):
    from vitplas.models import load_model

    base = load_model(str(world["bert"])).model
    loaded = load_model(str(world["bert"]), num_classes=3)
    assert type(loaded.model).__name__ == "BertForSequenceClassification"
    assert loaded.num_classes == 3 and loaded.model.classifier.out_features == 3
    own = loaded.model.bert.state_dict()
    assert all(torch.equal(own[k], v) for k, v in base.state_dict().items())
    gpt2 = load_model(str(world["gpt2"]), num_classes=3).model
    assert type(gpt2).__name__ == "GPT2ForSequenceClassification"


def test_gpt2_classifies_the_last_real_token_whatever_the_padding(world):
    """GPT-2's pad is its eos: a text's logits do not move with max_length."""
    from vitplas.data import TokenizedTexts, get_dataset
    from vitplas.models import load_model
    from vitplas.models.hf_text import load_tokenizer
    from vitplas.models.text import forward_logits

    loaded = load_model(str(world["gpt2"]), num_classes=3)
    tokenizer = load_tokenizer(loaded.tokenizer, loaded.model)
    assert tokenizer.pad_token == "<|endoftext|>" and loaded.model.config.pad_token_id == 0
    texts = get_dataset("rotten-tomatoes", "test", root=world["data"])
    logits = [
        forward_logits(loaded.model.eval(), TokenizedTexts(texts, tokenizer, n).tokens)
        for n in (10, 16)
    ]
    assert torch.allclose(*logits, atol=1e-5)


@pytest.mark.parametrize(
    ("more", "message"),
    [
        (["protocol=paper"], "protocol=paper is the original's ViT recipe; rotten-tomatoes is a"),
        (["augment=device"], "augment=device crops images; rotten-tomatoes is a text set"),
        (["max_length=0"], "max_length must be positive, got 0"),
    ],
)
def test_image_only_options_on_a_text_set_are_refused_in_one_line(world, more, message):
    from vitplas.training.sources import load_sources

    with pytest.raises(ConfigError, match=message) as err:
        cfg = _config(world, "bert", *more)
        cfg.validate()
        load_sources(cfg)
    assert "\n" not in str(err.value)


def test_an_image_model_on_a_text_set_and_back_are_refused(world):
    from vitplas.training.sources import load_sources

    cfg = _config(world, "bert", "model=tiny-random", "random_init=true")
    with pytest.raises(ConfigError, match="is a text set; model tiny-random reads images"):
        load_sources(cfg)
    cfg = _config(world, "bert", "model=minilm-l6", "random_init=true", "dataset=digits")
    with pytest.raises(ConfigError, match="minilm-l6 is a text model; dataset digits holds"):
        load_sources(cfg)


def test_one_step_of_each_component_on_the_real_minilm(tmp_path):
    from vitplas.data import is_available
    from vitplas.jobs.runners import run_finetune
    from vitplas.training.sources import load_sources

    minilm_folder()
    if not is_available("rotten-tomatoes")[0]:
        pytest.skip("rotten-tomatoes is absent; run `bash scripts/offline-assets`")
    real = ["model=minilm-l6", "max_length=32", "train_per_class=2", "max_eval_samples=6"]
    cfg = load_finetune_config(None, [*SHORT, *real, "steps=1"])
    sources = load_sources(cfg)
    cmap = component_map(sources.model)
    assert cmap.family.name == "bert-classifier"
    for comp in ("emb", "mha", "ln1", "fc1", "fc2", "ln2"):
        mine = copy.deepcopy(sources)
        before = {n: p.detach().clone() for n, p in mine.model.named_parameters()}
        cfg.train = [comp]
        result = run_finetune(cfg, tmp_path / comp, sources=mine)
        moved = {n for n, p in mine.model.named_parameters() if not torch.equal(p, before[n])}
        want = {n for c in (comp, "head") for n, _ in cmap.named_parameters(c)}
        assert moved <= want and {cmap.owner[n] for n in moved} == {comp, "head"}
        assert result["test_n"] == 6


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_a_max_length_beyond_the_models_positions_is_one_line(world, family, tmp_path):
    from vitplas.jobs.runners import run_finetune
    from vitplas.models.errors import ModelError

    cfg = _config(world, family, "train=[mha]", "max_length=1000")
    with pytest.raises(ModelError, match=r"max_length 1000: .* reads sequences of 1 to \d+") as e:
        run_finetune(cfg, tmp_path / "run")
    assert "\n" not in str(e.value)
