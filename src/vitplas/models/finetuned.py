"""A finished finetuning run used as a model: the base model rebuilt, the trained weights on top.

A run spec is a run folder (with config.yaml and checkpoints/best.safetensors) or the path of
that best.safetensors. The base model is rebuilt from the run's resolved config exactly as
training built it (models.build.start_model: model spec, random_init, img_size, a new head of
the dataset's class count drawn from the run's seed as its protocol says), then the trained
parameters are applied (models.build.from_run puts these records together; this module reads
and checks them). A base checkpoint other than the one the run trained on is refused, and so
is an unfinished run (no DONE: still training, or stopped) unless allow_unfinished says
otherwise: its description then says UNFINISHED, and so does the manifest of every job that
uses it. The model's mean/std, interpolation and crop fraction are the run's own
(`run_preprocessing`: its protocol and its manifest), so every consumer's `transform_for(loaded)`
feeds it what it trained and was evaluated on.
`RUN#base` names the run's base alone, rebuilt the same way (same random init, same new head,
the run's preprocessing), so that before/after comparisons differ only in the trained weights.
Every record is read through the run folder's reader (vitplas.runs.read_record): checked
against the run's seal.
A LoRA or LN-tuning run's adapters are rebuilt as training injected them (its `lora` options),
given the trained tensors, then merged (models.adapters): the model is a plain timm model.
A run on a text set (`is_text_run`) is rebuilt the same way as its text model's transformers
sequence classifier (no image size, no mean/std: its tokenizer instead, read from the base).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vitplas import protocol as protocols
from vitplas.data.transforms import preprocessing_for
from vitplas.models.adapters import ADAPTERS, LoraOptions, inject_adapters, merge_adapters
from vitplas.models.errors import ModelError, short_list
from vitplas.runs import DamagedRecordError, RunNotFinishedError, read_record

CONFIG_FILE = "config.yaml"
MANIFEST = "manifest.json"
PREP_KEYS = ("mean", "std", "interpolation", "crop_pct")  # what run_preprocessing gives
BEST = Path("checkpoints") / "best.safetensors"
BASE_SUFFIX = "#base"  # RUN#base: the run's base model, without the trained weights


def run_folder(spec: str | Path) -> Path | None:
    """The run folder a spec names (the folder or its checkpoints/best.safetensors, either
    optionally with #base), else None."""
    path = Path(str(spec).removesuffix(BASE_SUFFIX)).expanduser()
    if path.name == BEST.name and path.parent.name == BEST.parent.name:
        path = path.parent.parent
    if path.is_dir() and (path / CONFIG_FILE).is_file() and (path / BEST.parent).is_dir():
        return path
    return None


def run_record(run: Path, name: str, unfinished: bool = False) -> bytes | None:
    """Record `name` of `run` through the run folder's reader (vitplas.runs.read_record):
    checked against the seal of a finished run (a damaged one, or one the seal does not cover,
    is a ModelError naming it); of an unfinished run only when `unfinished` (allow_unfinished),
    then as it is, None when absent."""
    try:
        return read_record(run, name, unfinished=unfinished)
    except RunNotFinishedError:
        raise unfinished_error(run) from None
    except DamagedRecordError as err:
        raise ModelError(
            f"{err.run / err.name} is damaged ({err.problem}); restore it or rerun the finetuning"
        ) from None
    except FileNotFoundError:
        return None


def unfinished_error(run: Path) -> ModelError:
    return ModelError(
        f"{run} is not a finished finetuning run (no DONE: still training, or stopped), so its "
        "weights may not be its best ones; finish it (rerun its finetune command), or set "
        "allow_unfinished=true to use the weights it holds now (the manifest then says so)"
    )


def read_run_config(run: Path, unfinished: bool = False) -> dict[str, Any]:
    """The run's resolved config.yaml as a dict (the keys a model needs are checked)."""
    import yaml

    try:
        cfg = yaml.safe_load(run_record(run, CONFIG_FILE, unfinished) or b"")
    except yaml.YAMLError as err:
        raise ModelError(f"cannot read {run / CONFIG_FILE}: {err}") from err
    if not isinstance(cfg, dict) or not {"model", "dataset"} <= set(cfg):
        raise ModelError(f"{run / CONFIG_FILE} is not a finetuning config (needs model, dataset)")
    return cfg


def is_text_run(cfg: dict[str, Any]) -> bool:
    """Whether the run trained on a text set (its model then is a text classifier), as
    training decides it: by the dataset's modality (a name the registry lacks, which a
    caller's own Sources may carry, is no text set)."""
    from vitplas.data import DataError, dataset_info  # a sibling layer, as in num_classes_of

    try:
        return dataset_info(str(cfg["dataset"])).modality == "text"
    except DataError:
        return False


def read_manifest(run: Path, unfinished: bool = False) -> dict[str, Any]:
    """The run's manifest.json ({} when an unfinished run has none yet)."""
    data = run_record(run, MANIFEST, unfinished)
    try:
        manifest = json.loads(data) if data is not None else {}
    except ValueError as err:
        raise ModelError(
            f"{run / MANIFEST} is not valid JSON ({err}); rerun the finetuning"
        ) from None
    return manifest if isinstance(manifest, dict) else {}


def run_protocol(run: Path, cfg: dict[str, Any]) -> str:
    """The run's `protocol` (a run from before protocols: its `normalization`, same names;
    neither: FinetuneConfig's default)."""
    protocol = cfg.get("protocol", cfg.get("normalization", protocols.DEFAULT))
    if protocol not in protocols.NAMES:
        known = ", ".join(protocols.NAMES)
        raise ModelError(f"{run / CONFIG_FILE} names protocol '{protocol}'; known: {known}")
    return protocol


def run_preprocessing(
    run: Path, cfg: dict[str, Any] | None = None, unfinished: bool = False
) -> dict[str, Any]:
    """build_transform's mean, std, crop_pct and interpolation that `run` trained and was
    evaluated with: data.transforms.preprocessing_for of its protocol and its manifest."""
    cfg = read_run_config(run, unfinished) if cfg is None else cfg
    protocol, manifest = run_protocol(run, cfg), read_manifest(run, unfinished)
    try:
        return preprocessing_for(protocol, manifest)
    except ValueError:
        raise ModelError(
            f"{run / MANIFEST} records no model_mean/model_std, which this run (protocol: "
            "model) was trained with; restore the run's manifest.json"
        ) from None


def read_trained(run: Path, unfinished: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    """(the trained tensors of `run`, the sha256 of its best.safetensors), read through the
    run folder's reader: checked against the seal of a finished run (vitplas.records). A
    missing, changed or unreadable file, or seal, is a ModelError naming it and the fix."""
    from vitplas.records import read_weights

    path = run / BEST
    fix = (f"rerun the finetuning (`vitplas finetune` with its config and `--out {run} "
           "--repair`, or into a new folder)")  # fmt: skip
    try:
        return read_weights(run, BEST.as_posix(), unfinished=unfinished)
    except RunNotFinishedError:
        raise unfinished_error(run) from None
    except DamagedRecordError as err:
        problem = err.problem
        if err.name == BEST.as_posix() and "checksum differs" in problem:
            what = "truncated" if "truncated" in problem else "changed"
            problem = f"corrupt or {what}: {problem}"
        raise ModelError(f"{err.run / err.name} is damaged ({problem}); {fix}") from None
    except FileNotFoundError:
        raise ModelError(f"{path} does not exist: {run} wrote no best weights yet") from None


def apply_trained(model: torch.nn.Module, trained: dict[str, torch.Tensor], source: Path) -> None:
    """Copy `trained` into the matching parameters of `model`; every key must fit."""
    params = dict(model.named_parameters())
    unknown = sorted(set(trained) - set(params))
    wrong = sorted(
        f"{k} {tuple(v.shape)} (model: {tuple(params[k].shape)})"
        for k, v in trained.items()
        if k in params and v.shape != params[k].shape
    )
    if unknown or wrong:
        detail = "; ".join(
            f"{label}: {short_list(keys)}"
            for label, keys in (("parameters the model lacks", unknown), ("wrong shapes", wrong))
            if keys
        )
        raise ModelError(f"{source} does not fit the rebuilt base model; {detail}")
    with torch.no_grad():
        for name, value in trained.items():
            params[name].copy_(value)


def num_classes_of(cfg: dict[str, Any], trained: dict[str, torch.Tensor]) -> int:
    """Class count of the run's head: the trained head's rows, else the dataset's count."""
    if "head.weight" in trained:
        return int(trained["head.weight"].shape[0])
    from vitplas.data import dataset_info  # a sibling layer: only when the head was frozen

    count = dataset_info(cfg["dataset"]).num_classes
    if count is None:
        raise ModelError(f"dataset '{cfg['dataset']}' has no fixed class count; cannot rebuild")
    return int(count)


def adapter_kind(cfg: dict[str, Any]) -> str | None:
    """'lora' or 'lntuning' when the run trained that peft rival, else None."""
    train = cfg.get("train") or []
    found = [t for t in ([train] if isinstance(train, str) else train) if t in ADAPTERS]
    return found[0] if found else None


def lora_options(cfg: dict[str, Any], run: Path) -> LoraOptions:
    """The run's `lora` options (r, alpha, dropout) as training used them."""
    try:
        return LoraOptions(**(cfg.get("lora") or {}))
    except TypeError as err:
        raise ModelError(f"{run / CONFIG_FILE} has unreadable lora options ({err})") from None


def apply_run_weights(model: torch.nn.Module, cfg: dict[str, Any], trained, run: Path) -> None:
    """Put the run's trained tensors into `model`: directly, or for a LoRA / LN-tuning run
    into adapters rebuilt as training injected them, then merged into plain modules."""
    kind = adapter_kind(cfg)
    if kind is not None:
        inject_adapters(model, kind, lora_options(cfg, run))
    apply_trained(model, trained, run / BEST)
    if kind is not None:
        with torch.no_grad():
            merge_adapters(model)


def with_preprocessing(model: torch.nn.Module, prep: dict[str, Any]) -> None:
    """Record `prep` (mean, std, interpolation, crop_pct) in the model's timm pretrained_cfg,
    where data.transforms.transform_for reads interpolation and crop_pct."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    model.pretrained_cfg = {**cfg, **{k: prep[k] for k in PREP_KEYS}}
