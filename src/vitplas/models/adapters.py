"""peft adapters on a timm model: the one rule for where LoRA and LN tuning go, and their merge.

`inject_adapters` puts peft's adapters in place (the model stays a timm model): LoRA on every
Linear of each block's attention (mha; GPT-2's Conv1D c_attn and c_proj too, with peft's
fan_in_fan_out for their (in, out) weights), LN tuning on ln1 and ln2. Training calls it to build
the rivals; a finished run's loader (models.finetuned) calls it again to rebuild the same
adapters, loads the trained tensors, then `merge_adapters` folds them into plain Linear and
LayerNorm modules, so the component map sees an ordinary model.
"""

from __future__ import annotations

import warnings

from torch import nn

from vitplas.models.components import component_map
from vitplas.models.hooks import is_hf_conv1d
from vitplas.models.options import LoraOptions

ADAPTERS = ("lora", "lntuning")  # the train tokens that inject peft adapters
_COMPONENTS = {"lora": ("mha",), "lntuning": ("ln1", "ln2")}
_WANTED = {"lora": "Linear", "lntuning": "LayerNorm"}  # what `_adapted` accepts, by kind
_ADAPTED = {"Linear": (nn.Linear,), "LayerNorm": (nn.LayerNorm,)}


def _adapted(module: nn.Module, wanted: str) -> bool:
    if wanted == "Linear" and is_hf_conv1d(module):  # GPT-2: a Linear with weight (in, out)
        return True
    return isinstance(module, _ADAPTED[wanted])


_MARKER = {"lora": "lora_", "lntuning": "ln_tuning_layers"}  # in adapter parameter names


def adapter_targets(model: nn.Module, kind: str) -> list[str]:
    """Module paths peft adapts for `kind` (lora: the mha Linears; lntuning: ln1/ln2 norms)."""
    cmap = component_map(model)
    prefix, wanted = cmap.family.blocks_path, _WANTED[kind]
    targets = []
    for layer in range(cmap.depth):
        for comp in _COMPONENTS[kind]:
            for path in cmap.paths[layer][comp]:
                root = f"{prefix}.{layer}.{path}"
                module = model.get_submodule(root)
                targets += [f"{root}.{n}".rstrip(".") for n, m in module.named_modules()
                            if _adapted(m, wanted)]  # fmt: skip
    if not targets:
        raise ValueError(f"train=[{kind}]: this {cmap.family.name} model has no {wanted} to adapt")
    return targets


def inject_adapters(model: nn.Module, kind: str, lora: LoraOptions | None = None) -> list[str]:
    """Inject peft's `kind` adapters into `model` in place, keeping every existing parameter's
    requires_grad; returns the names of the new adapter parameters."""
    from peft import LNTuningConfig, LoraConfig, inject_adapter_in_model

    targets = adapter_targets(model, kind)
    if kind == "lora":
        opts = lora or LoraOptions()
        conv1d = any(is_hf_conv1d(model.get_submodule(t)) for t in targets)
        config = LoraConfig(
            r=opts.r, lora_alpha=opts.alpha, lora_dropout=opts.dropout, target_modules=targets,
            fan_in_fan_out=conv1d,
        )  # fmt: skip
    else:
        config = LNTuningConfig(target_modules=targets)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    with warnings.catch_warnings():  # timm's LayerNorm subclasses nn.LayerNorm: supported
        warnings.filterwarnings("ignore", message="Unsupported layer type")
        inject_adapter_in_model(config, model)
    for n, p in model.named_parameters():  # peft may change flags: restore what we had set
        if n in flags:
            p.requires_grad_(flags[n])
    # peft renames the wrapped originals (base_layer); only the adapters are new parameters
    return [n for n, _ in model.named_parameters() if n not in flags and _MARKER[kind] in n]


def merge_adapters(model: nn.Module) -> int:
    """Fold every peft adapter layer of `model` into its base module and put that plain module
    back in its place (peft's merge_and_unload, without a PeftModel); returns how many."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    wrapped = [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in wrapped:
        layer.merge()
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, layer.get_base_layer())
    return len(wrapped)
