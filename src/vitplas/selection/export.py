"""Picks that leave vitplas: a chosen train set written for the tools people train with.

The parameters a train set trains are what vitplas's finetuning trains for it
(training.trainsets.build_trainable: the picked block components plus the new head and the
final norm), so an export can never drift from a vitplas run. Three formats (FORMATS):

    names   names.json: the parameter names, per group (component or `name@layers`, head,
            norm); plain PyTorch sets requires_grad from it.
    timm    timm.json: `unfreeze`, the module names that hold exactly those parameters, for
            `timm.utils.freeze(model); timm.utils.unfreeze(model, unfreeze)`, and
            `param_groups` (names per group) for `timm.optim.create_optimizer_v2`, so each
            group can take its own learning rate.
    peft    peft/adapter_config.json: peft's LNTuningConfig, the peft tuner that trains a full
            copy of each target module (any module type, not only norms); `target_modules` is
            a regular expression peft matches in full against each module name, so nothing
            else matches. `modules_to_save` holds the head (and the final norm) only when
            peft's plain suffix match of its name finds that module alone: timm's final `norm`
            would also catch `patch_embed.norm` and every `attn.norm`, so it goes in the
            expression instead. peft/vitplas_export.json records the pick beside it.

export_run is the select job's `extend` step (vitplas.jobs.lifecycle): `vitplas select --export
peft,timm` writes them under OUT/export/<criterion>/, sealed with the run; a rerun into a
finished selection adds the formats it lacks without scoring again.

peft's `layers_to_transform` is a LoRA-family option (LNTuningConfig has none): a per-layer
pick is spelled in the expression (`blocks\\.(?:8|9)\\.attn`). A pick that trains part of a
module's own parameters cannot be named by modules: the timm and peft exports refuse it and
say to use names.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from vitplas.runs import atomic_write_json
from vitplas.selection.config import FORMATS, parse_formats

HEAD_GROUPS = ("head", "norm")  # trained besides the pick, as in every finetuning run


def trained_groups(model: nn.Module, train: Sequence[str]) -> dict[str, list[str]]:
    """{group: parameter names} that vitplas's finetuning trains for `train` (plus the head and
    the final norm); the model's requires_grad flags are left as they were."""
    from vitplas.training.trainsets import RIVALS, build_trainable

    rivals = [t for t in train if t in RIVALS]
    if rivals:
        raise ValueError(f"train=[{rivals[0]}] is a rival method, not a pick; nothing to export")
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        return build_trainable(model, list(train), head=True, norm=True)
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])


def module_cover(model: nn.Module, names: Sequence[str]) -> list[str]:
    """The fewest modules whose parameters are exactly `names` (each module taken whole, the
    largest first); a ValueError when `names` hold part of a module's own parameters."""
    wanted, out = set(names), []

    def visit(prefix: str, module: nn.Module) -> None:
        inside = [prefix + n for n, _ in module.named_parameters()]
        hits = [n for n in inside if n in wanted]
        if not hits:
            return
        if prefix and len(hits) == len(inside):
            out.append(prefix[:-1])
            return
        own = [prefix + n for n, _ in module.named_parameters(recurse=False)]
        if any(n in wanted for n in own):
            where = prefix[:-1] or "the model"
            raise ValueError(
                f"the pick trains {next(n for n in own if n in wanted)} but not all of "
                f"{where}'s parameters, which no module list can say; use --export names"
            )
        for child, sub in module.named_children():
            visit(f"{prefix}{child}.", sub)

    visit("", model)
    return out


def names_record(groups: dict[str, list[str]]) -> dict[str, Any]:
    return {"parameters": [n for ns in groups.values() for n in ns], "groups": groups}


def timm_record(model: nn.Module, groups: dict[str, list[str]]) -> dict[str, Any]:
    names = [n for ns in groups.values() for n in ns]
    return {
        "unfreeze": module_cover(model, names),
        "param_groups": [{"name": g, "params": ns} for g, ns in groups.items()],
        "usage": "timm.utils.freeze(model); timm.utils.unfreeze(model, record['unfreeze']); "
        "or timm.optim.create_optimizer_v2([{'params': [dict(model.named_parameters())[n] "
        "for n in g['params']]} for g in record['param_groups']], opt=..., lr=...)",
    }


def peft_config(model: nn.Module, groups: dict[str, list[str]], blocks_path: str):
    """peft's LNTuningConfig that trains exactly `groups` (module docstring)."""
    from peft import LNTuningConfig

    modules = module_cover(model, [n for ns in groups.values() for n in ns])
    heads = {m for g in HEAD_GROUPS for m in module_cover(model, groups.get(g, []))}
    every = [n for n, _ in model.named_modules()]
    saved = [m for m in modules if m in heads and [k for k in every if k.endswith(m)] == [m]]
    targets = [m for m in modules if m not in saved]
    return LNTuningConfig(
        target_modules=module_pattern(targets, blocks_path), modules_to_save=saved or None
    )


def module_pattern(modules: Sequence[str], blocks_path: str) -> str:
    """A regular expression matching exactly `modules` in full: block modules that differ only
    by their layer share one alternative (`blocks\\.(?:0|1)\\.attn`)."""
    by_rest: dict[str, list[str]] = {}
    plain = []
    block = re.compile(rf"{re.escape(blocks_path)}\.(\d+)\.(.+)")
    for name in modules:
        match = block.fullmatch(name)
        if match:
            by_rest.setdefault(match.group(2), []).append(match.group(1))
        else:
            plain.append(re.escape(name))
    parts = [
        rf"{re.escape(blocks_path)}\.(?:{'|'.join(layers)})\.{re.escape(rest)}"
        for rest, layers in by_rest.items()
    ]
    return "|".join([*parts, *plain])  # peft matches it with re.fullmatch: whole names only


def write_export(
    model: nn.Module, train: Sequence[str], fmt: str, out: Path, meta: dict[str, Any]
) -> Path:
    """Write train set `train` of `model` in format `fmt` under folder `out`; returns the path
    written (a file, or peft's folder). `meta` (criterion, model, ...) goes in every record."""
    from vitplas.models.components import component_map

    if fmt not in FORMATS:
        raise ValueError(f"export format '{fmt}' is unknown; choose {', '.join(FORMATS)}")
    groups = trained_groups(model, train)
    record = {**meta, "train": list(train)}
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "names":
        return atomic_write_json(out / "names.json", {**record, **names_record(groups)})
    if fmt == "timm":
        return atomic_write_json(out / "timm.json", {**record, **timm_record(model, groups)})
    config = peft_config(model, groups, component_map(model).family.blocks_path)
    folder = out / "peft"
    config.save_pretrained(str(folder))
    atomic_write_json(folder / "vitplas_export.json", {**record, **names_record(groups)})
    return folder


FILES = {  # the records each format writes in a criterion's folder; the path a user is shown
    "names": (("names.json",), "names.json"),
    "timm": (("timm.json",), "timm.json"),
    "peft": (("peft/adapter_config.json", "peft/vitplas_export.json"), "peft"),
}
EXPORT_DIR = "export"


def export_picks(
    model: nn.Module, chosen: dict[str, list[str]], formats: Sequence[str], out: Path,
    meta: dict[str, Any],
) -> dict[str, list[Path]]:  # fmt: skip
    """Every criterion's pick in every format, under out/<criterion>/; a criterion that picks
    nothing has no export. {criterion: [paths]}."""
    written: dict[str, list[Path]] = {}
    for criterion, train in chosen.items():
        if train:
            folder = out / criterion
            written[criterion] = [
                write_export(model, train, f, folder, {**meta, "criterion": criterion})
                for f in formats
            ]
    return written


def export_run(cfg, run, result: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The select job's `extend` (vitplas.jobs.table): each pick in every format of cfg.export
    under run/export/<criterion>/, after a new selection and a read-back alike. An export the
    run's seal already holds is verified, not rewritten; the model is loaded only when one is
    missing (the read-back verified every sealed record). Returns ({"exported": {criterion:
    [paths]}}, the records written)."""
    formats = parse_formats(cfg.export)
    sealed = run.checksums()
    shown: dict[str, list[Path]] = {}
    missing: dict[str, list[str]] = {}
    for criterion, train in result["picks"].items():
        for fmt in formats if train else ():  # a criterion that picks nothing: no export
            names = [f"{EXPORT_DIR}/{criterion}/{f}" for f in FILES[fmt][0]]
            if not all(n in sealed for n in names):
                missing.setdefault(criterion, []).append(fmt)
            path = run.path / EXPORT_DIR / criterion / FILES[fmt][1]
            shown.setdefault(criterion, []).append(path)
    written: list[str] = []
    if missing:
        from vitplas.selection.select import load_for

        model = load_for(cfg).model
        meta = {"model": cfg.model, "target": cfg.target, "budget": cfg.budget, "rule": cfg.rule}
        for criterion, fmts in missing.items():
            pick = {criterion: result["picks"][criterion]}
            export_picks(model, pick, fmts, run.path / EXPORT_DIR, meta)
            written += [f"{EXPORT_DIR}/{criterion}/{f}" for fmt in fmts for f in FILES[fmt][0]]
    return ({"exported": shown} if shown else {}), written
