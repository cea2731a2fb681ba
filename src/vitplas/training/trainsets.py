"""What a run trains, beyond whole components: the `train` list's grammar and the rivals.

    mha, fc1, all          whole components (vitplas.models.components)
    mha+fc1                a joint set: the same as train=[mha, fc1]
    mha@8-11, fc1@3        a component in some blocks only (0-based, inclusive ranges)
    lora                   LoRA on every linear of the attention (peft; `lora:` options)
    lntuning               LayerNorm tuning of ln1 and ln2 (peft's LNTuningConfig)
                           (both injected by vitplas.models.adapters, which also merges them
                           when a finished run is loaded)
    bitfit                 every bias of the blocks and the embedding (plain requires_grad)
    auto, auto:fisher      a criterion's choice (select.criterion, or the one named) under
                           select.budget: resolved by vitplas.selection.auto before a run

A rival (lora, lntuning, bitfit) stands alone. The new head and the final norm are trained as
train_head / train_norm say, whatever the set. `build_trainable` is finetuning's one hook: it
freezes the model, applies the set (peft injects its adapters in place: the model stays a timm
model) and returns {group: [parameter names]}.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from vitplas.models.adapters import LoraOptions, inject_adapters
from vitplas.models.components import ALL_COMPONENTS, component_map, parse_components, set_trainable
from vitplas.training.options import SelectOptions as SelectOptions  # re-exported

RIVALS = ("lora", "lntuning", "bitfit")
AUTO = "auto"
_LAYERS = re.compile(r"^([a-z0-9_]+)@(\d+)(?:-(\d+))?$")
FEW_SHOT_SEED = 20_240_601  # the few-shot subset does not move with the training seed


def parse_train(train: Iterable[str] | str) -> list[str]:
    """Normalise a train list: split joint sets, check names, layer ranges and rivals."""
    items = [train] if isinstance(train, str) else list(train)
    tokens = [t.strip().lower() for raw in items for part in str(raw).split(",")
              for t in part.split("+") if t.strip()]  # fmt: skip
    out: list[str] = []
    for token in tokens:
        match = _LAYERS.match(token)
        if match:
            name, a, b = match.group(1), int(match.group(2)), match.group(3)
            parse_components([name])
            if b is not None and int(b) < a:
                raise ValueError(f"layer range '{token}' runs backwards; write {name}@{b}-{a}")
        elif token not in (*RIVALS, AUTO) and not token.startswith(AUTO + ":"):
            parse_components([token], allowed=("all", *ALL_COMPONENTS, *RIVALS, AUTO))
        if token not in out:
            out.append(token)
    special = [t for t in out if t in RIVALS or is_auto(t)]
    if special and len(out) > 1:
        raise ValueError(
            f"train=[{special[0]}] stands alone (head and final norm follow train_head and "
            f"train_norm); got {out}"
        )
    return out


def canonical_train(tokens: Iterable[str]) -> list[str]:
    """A train list in one order, so that equal sets are equal runs (the parameter order of
    the optimizer, hence the float sums, follows it): components in models.components order,
    then by first layer; duplicates dropped. `[fc1, mha@8-11]` -> `[mha@8-11, fc1]`."""

    def order(token: str) -> tuple[int, str, int]:
        name, _, layers = token.partition("@")
        rank = ALL_COMPONENTS.index(name) if name in ALL_COMPONENTS else len(ALL_COMPONENTS)
        first = layers.split("-")[0]
        return rank, name, int(first) if first.isdigit() else -1

    return sorted(dict.fromkeys(map(str, tokens)), key=order)


def is_auto(token: str) -> bool:
    return token == AUTO or token.startswith(AUTO + ":")


def _layered(cmap, token: str) -> tuple[str, range]:
    match = _LAYERS.match(token)
    name, a = match.group(1), int(match.group(2))
    b = int(match.group(3)) if match.group(3) is not None else a
    if b >= cmap.depth:
        raise ValueError(f"'{token}': this model has blocks 0-{cmap.depth - 1}")
    return name, range(a, b + 1)


def _block_layer(cmap, name: str) -> int | None:
    prefix = cmap.family.blocks_path + "."
    return int(name[len(prefix) :].split(".")[0]) if name.startswith(prefix) else None


def build_trainable(
    model: nn.Module, train: list[str], *, head: bool, norm: bool, lora: LoraOptions | None = None
) -> dict[str, list[str]]:
    """Freeze `model`, then make `train` trainable (see the module docstring); returns
    {group: [parameter names]} of what is trained."""
    if any(is_auto(t) for t in train):
        raise ValueError(
            "train=[auto] is resolved before finetuning by vitplas.selection.auto.resolve_auto "
            "(the CLI and the sweeps do it); call it first"
        )
    if not any(t in RIVALS or "@" in t for t in train):
        return set_trainable(model, train, head=head, norm=norm)
    cmap = component_map(model)
    extras = [n for n, w in (("head", head), ("norm", norm)) if w and n in cmap.components]
    extra_names = {n: [p for p, _ in cmap.named_parameters(n)] for n in extras}
    plain = [t for t in train if "@" not in t and t not in RIVALS]
    if plain:
        groups = set_trainable(model, plain, head=head, norm=norm)
    else:
        _only(model, [n for e in extras for n in extra_names[e]])
        groups = {e: extra_names[e] for e in extras}
    params = dict(model.named_parameters())
    for token in train:
        if "@" in token:
            name, layers = _layered(cmap, token)
            names = [n for n, _ in cmap.named_parameters(name) if _block_layer(cmap, n) in layers]
            groups[token] = names
        elif token == "bitfit":
            skip = set(extra_names.get("head", [])) | set(extra_names.get("norm", []))
            groups["bitfit"] = [n for n in params if n.endswith("bias") and n not in skip]
        elif token in ("lora", "lntuning"):
            groups[token] = inject_adapters(model, token, lora)
            params = dict(model.named_parameters())
    for names in groups.values():
        for n in names:
            params[n].requires_grad_(True)
    return groups


def _only(model: nn.Module, names: list[str]) -> None:
    keep = set(names)
    for n, p in model.named_parameters():
        p.requires_grad_(n in keep)


def few_shot(dataset: Dataset, k: int) -> Subset:
    """k examples per class, drawn by a generator fixed across seeds (FEW_SHOT_SEED)."""
    labels = _labels(dataset)
    gen = torch.Generator().manual_seed(FEW_SHOT_SEED)
    order = torch.randperm(len(labels), generator=gen)
    picked: dict[int, list[int]] = {}
    for i in order.tolist():
        bucket = picked.setdefault(int(labels[i]), [])
        if len(bucket) < k:
            bucket.append(i)
    short = {c: len(v) for c, v in picked.items() if len(v) < k}
    if short:
        raise ValueError(f"train_per_class={k}: classes {short} have fewer examples; lower it")
    return Subset(dataset, sorted(i for v in picked.values() for i in v))


def _labels(dataset: Dataset) -> list[int]:
    for attr in ("targets", "labels"):
        found = getattr(dataset, attr, None)
        if found is not None:
            return [int(v) for v in found]
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None:
        return [int(v) for v in tensors[1]]
    return [int(dataset[i][1]) for i in range(len(dataset))]
