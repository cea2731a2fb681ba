"""A finished finetuning run used as a model: the base model rebuilt, the trained weights on top.

A run spec is a run folder (with config.yaml and checkpoints/best.safetensors) or the path of
that best.safetensors. The base model is rebuilt from the run's resolved config exactly as
training built it (model spec, random_init, img_size, a new head of the dataset's class count
drawn from the run's seed), then the trained parameters are applied after their file passed
`verify_weights`. A base checkpoint other than the one the run trained on is refused.
`RUN#base` names the run's base alone, rebuilt the same way (same random init, same new head,
the run's normalization), so that before/after comparisons differ only in the trained weights.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch

from vitplas.models.errors import ModelError, short_list
from vitplas.models.registry import PAPER_MEAN_STD
from vitplas.runs import DamagedRecordError, RunDir, atomic_write_text, file_sha256

CONFIG_FILE = "config.yaml"
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


def read_run_config(run: Path) -> dict[str, Any]:
    """The run's resolved config.yaml as a dict (the keys a model needs are checked)."""
    import yaml

    try:
        cfg = yaml.safe_load((run / CONFIG_FILE).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ModelError(f"cannot read {run / CONFIG_FILE}: {err}") from err
    if not isinstance(cfg, dict) or not {"model", "dataset"} <= set(cfg):
        raise ModelError(f"{run / CONFIG_FILE} is not a finetuning config (needs model, dataset)")
    return cfg


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


def read_trained(path: Path) -> dict[str, torch.Tensor]:
    from vitplas.models.checkpoints import read_state_dict

    return read_state_dict(path)  # a damaged file: a ModelError naming it


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


def base_manifest(run: Path) -> dict[str, Any]:
    try:
        return json.loads((run / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def from_run(run: Path, *, random_init: bool, base_only: bool = False):
    """A `Built` (vitplas.models.sources) of finetuning run `run`: base model + trained weights
    (base_only: the base alone; the trained file is still verified and read for the head)."""
    from vitplas.models.build import load_model
    from vitplas.models.sources import Built

    if random_init:
        raise ModelError(
            f"{run} is a finetuned run: its weights are the point; drop random_init (--random-init)"
        )
    cfg = read_run_config(run)
    path, checksum = verify_weights(run)
    trained = read_trained(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.get("seed", 0)))  # as training drew the new head
        base = load_model(
            str(cfg["model"]),
            num_classes=num_classes_of(cfg, trained),
            random_init=bool(cfg.get("random_init", False)),
            img_size=cfg.get("img_size"),
        )
    recorded = base_manifest(run).get("model_checksum")
    if recorded and base.checksum and recorded != base.checksum:
        raise ModelError(
            f"base model '{cfg['model']}' has weights (sha256 {base.checksum[:12]}...) other than "
            f"those run {run} trained from ({recorded[:12]}...); restore them to use this run"
        )
    paper = cfg.get("normalization", "paper") == "paper"
    mean, std = PAPER_MEAN_STD if paper else (base.mean, base.std)
    train = "+".join(cfg.get("train", []))
    if base_only:
        desc = f"base model of finetuned run {run}: {base.description}"
        return Built(base.model, desc, mean, std, base.checksum, base.random_init, base.arch)
    apply_trained(base.model, trained, path)
    desc = f"finetuned run {run} (train={train} on {cfg['dataset']}) of {base.description}"
    return Built(base.model, desc, mean, std, checksum, base.random_init, base.arch)
