"""A finished finetuning run used as a model: the base model rebuilt, the trained weights on top.

A run spec is a run folder (with config.yaml and checkpoints/best.safetensors) or the path of
that best.safetensors. The base model is rebuilt from the run's resolved config exactly as
training built it (models.build.start_model: model spec, random_init, img_size, a new head of
the dataset's class count drawn from the run's seed as its protocol says), then the trained
parameters are applied after their file passed `verify_weights` (models.build.from_run puts
these records together; this module reads and checks them). A base checkpoint other than
the one the run trained on is refused. The model's mean/std, interpolation and crop fraction
are the run's own (`run_preprocessing`: its protocol and its manifest), so every consumer's
`transform_for(loaded)` feeds it what it trained and was evaluated on.
`RUN#base` names the run's base alone, rebuilt the same way (same random init, same new head,
the run's preprocessing), so that before/after comparisons differ only in the trained weights.
Records are checked against the run's seal (vitplas.runs) when it covers them.
A LoRA or LN-tuning run's adapters are rebuilt as training injected them (its `lora` options),
given the trained tensors, then merged (models.adapters): the model is a plain timm model.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch

from vitplas import protocol as protocols
from vitplas.data.transforms import preprocessing_for
from vitplas.models.adapters import ADAPTERS, LoraOptions, inject_adapters, merge_adapters
from vitplas.models.errors import ModelError, short_list
from vitplas.runs import DamagedRecordError, RunDir, atomic_write_text, file_sha256

CONFIG_FILE = "config.yaml"
MANIFEST = "manifest.json"
PREP_KEYS = ("mean", "std", "interpolation", "crop_pct")  # what run_preprocessing gives
BEST = Path("checkpoints") / "best.safetensors"
BASE_SUFFIX = "#base"  # RUN#base: the run's base model, without the trained weights
SIDECAR_SUFFIX = ".sha256"  # recorded at first use for runs that recorded no checksum


def run_folder(spec: str | Path) -> Path | None:
    """The run folder a spec names (the folder or its checkpoints/best.safetensors, either
    optionally with #base), else None."""
    path = Path(str(spec).removesuffix(BASE_SUFFIX)).expanduser()
    if path.name == BEST.name and path.parent.name == BEST.parent.name:
        path = path.parent.parent
    if path.is_dir() and (path / CONFIG_FILE).is_file() and (path / BEST.parent).is_dir():
        return path
    return None


def read_record(run: Path, name: str) -> bytes | None:
    """Record `name` of `run`, checked against the run's seal when it covers it; a damaged one,
    or one the seal covers that is gone, is a ModelError naming it. None when absent from an
    unsealed run (a run in progress)."""
    folder = RunDir(run, create=False)
    try:
        if not (run / name).is_file() and not (folder.is_done() and name in folder.checksums()):
            return None
        return folder.read_verified(name)
    except DamagedRecordError as err:
        raise ModelError(
            f"{err.run / err.name} is damaged ({err.problem}); restore it or rerun the finetuning"
        ) from None


def read_run_config(run: Path) -> dict[str, Any]:
    """The run's resolved config.yaml as a dict (the keys a model needs are checked)."""
    import yaml

    try:
        cfg = yaml.safe_load(read_record(run, CONFIG_FILE) or b"")
    except yaml.YAMLError as err:
        raise ModelError(f"cannot read {run / CONFIG_FILE}: {err}") from err
    if not isinstance(cfg, dict) or not {"model", "dataset"} <= set(cfg):
        raise ModelError(f"{run / CONFIG_FILE} is not a finetuning config (needs model, dataset)")
    return cfg


def read_manifest(run: Path) -> dict[str, Any]:
    """The run's manifest.json ({} when there is none)."""
    data = read_record(run, MANIFEST)
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


def run_preprocessing(run: Path, cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """build_transform's mean, std, crop_pct and interpolation that `run` trained and was
    evaluated with: data.transforms.preprocessing_for of its protocol and its manifest."""
    cfg = read_run_config(run) if cfg is None else cfg
    protocol, manifest = run_protocol(run, cfg), read_manifest(run)
    try:
        return preprocessing_for(protocol, manifest)
    except ValueError:
        raise ModelError(
            f"{run / MANIFEST} records no model_mean/model_std, which this run (protocol: "
            "model) was trained with; restore the run's manifest.json"
        ) from None


def verify_weights(run: Path) -> tuple[Path, str]:
    """(path, sha256) of the run's best.safetensors, checked against its recorded checksum.

    The expected value is the run's sealed checksum (vitplas.runs, checksums.json) when the
    seal covers the file; only an unsealed (unfinished) run falls back to a
    `best.safetensors.sha256` recorded at first use (written now when absent). A missing or
    changed file, or a missing, changed or unreadable seal, is a ModelError naming it.
    """
    path = run / BEST
    if not path.is_file():
        raise ModelError(f"{path} does not exist: is {run} a finished finetuning run (DONE)?")
    actual, size = file_sha256(path), path.stat().st_size
    try:
        sealed = RunDir(run, create=False).checksums().get(BEST.as_posix())
    except DamagedRecordError as err:
        raise ModelError(
            f"{err.run / err.name} is damaged ({err.problem}): {run}'s weights "
            "cannot be checked; rerun the finetuning"
        ) from None
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    expected = sealed.get("sha256") if isinstance(sealed, dict) else None
    if expected is None and sidecar.is_file():
        expected = sidecar.read_text().split()[0]
    elif expected is None:
        with contextlib.suppress(OSError):  # a read-only run folder: nothing recorded
            atomic_write_text(sidecar, f"{actual}  {path.name}\n")
    if expected is not None and expected != actual:
        what = (
            "truncated" if isinstance(sealed, dict) and size < sealed.get("bytes", 0) else "changed"
        )
        raise ModelError(
            f"{path} is corrupt or {what}: sha256 {actual[:12]}... differs from the recorded "
            f"{expected[:12]}...; restore the file or rerun the finetuning"
        )
    return path, actual


def read_trained(path: Path, run: Path) -> dict[str, torch.Tensor]:
    """The trained tensors of `run` (its best.safetensors); an unreadable file is a ModelError
    naming it and the fix."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise ModelError(
            f"{path} is damaged ({err}); rerun the finetuning (`vitplas finetune` with its "
            f"config and `--out {run} --repair`, or into a new folder)"
        ) from None


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
