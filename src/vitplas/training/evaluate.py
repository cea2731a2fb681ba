"""Evaluation: accuracy and loss of a model on a dataset, and of a finished run's best
checkpoint on its own test split and on any dataset with the same classes (EvaluateConfig:
the keys of `vitplas evaluate`)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from vitplas.config import ConfigError
from vitplas.training.distributed import DistInfo, all_reduce_sum


@dataclass
class EvaluateConfig:
    """A finished run's best checkpoint on its own dataset and on others with its classes."""

    run: str | None = None  # the finished finetuning run folder (the command's RUN_DIR)
    datasets: list[str] = field(default_factory=list)  # other datasets with the same classes,
    # after the run's own; shell wildcards over the registry's choices (cifar10-c/*/5)
    split: str = "test"  # split of each dataset
    device: str = "auto"  # auto = cuda if available, else cpu
    batch_size: int = 256  # images per evaluation batch
    num_workers: int = 4  # DataLoader worker processes

    def validate(self) -> None:
        """Cross-field checks; a failure says what to change (`run` is checked by the command:
        a config file may leave it to the command line)."""
        if self.batch_size <= 0 or self.num_workers < 0:
            raise ConfigError(
                f"batch_size must be positive and num_workers >= 0, got {self.batch_size} and "
                f"{self.num_workers}"
            )


def autocast(device: torch.device, amp: str):
    """bf16 autocast on CUDA ('auto' or 'bf16'); nothing on CPU or with 'none'."""
    if device.type == "cuda" and amp in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and amp == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    *,
    amp: str = "none",
    dist: DistInfo | None = None,
) -> dict[str, float]:
    """{"loss": mean cross-entropy, "acc": accuracy in %, "n": images} over the loader
    (summed over processes when `dist` is given), in float32 unless `amp` asks for bf16.

    Accuracy is per image (correct / images); the original averages per-batch accuracies,
    which over-weights a last partial batch (README: protocol choices)."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = torch.as_tensor(labels).to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        totals[0] += F.cross_entropy(logits, labels, reduction="sum").double()
        totals[1] += (logits.argmax(dim=1) == labels).sum()
        totals[2] += labels.numel()
    model.train(was_training)
    if dist is not None:
        all_reduce_sum(totals, dist)
    loss, correct, n = totals.tolist()
    if n == 0:
        raise ValueError("evaluation set is empty")
    return {"loss": loss / n, "acc": 100.0 * correct / n, "n": int(n)}


def load_best_model(run_dir: str | Path, device: str = "cpu") -> tuple[Any, Any]:
    """(LoadedModel of the run's best-validation weights on `device`, its FinetuneConfig).

    The model is `load_model(run_dir)` (models.finetuned): the run's base rebuilt as training
    built it, the trained weights, and the run's own mean/std, interpolation and crop fraction
    (so `data.transform_for(loaded)` is the run's eval transform). Every record read is first
    checked against the checksums sealed at DONE."""
    from vitplas.models import load_model
    from vitplas.runs import RunDir
    from vitplas.training.checkpoint import BEST_FILE
    from vitplas.training.config import load_finetune_config

    run_dir = Path(run_dir)
    best = run_dir / "checkpoints" / BEST_FILE
    if not RunDir(run_dir, create=False).is_done() or not best.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a finished finetuning run (it needs DONE and {best.name}); "
            "finish it first: rerun its finetune command"
        )
    RunDir(run_dir).verify(["config.yaml", "manifest.json", f"checkpoints/{BEST_FILE}"])
    try:
        cfg = load_finetune_config(run_dir / "config.yaml")
    except ConfigError as err:
        raise ConfigError(f"{run_dir}/config.yaml cannot be read: {err}") from err
    loaded = load_model(str(run_dir))
    loaded.model.to(device)
    return loaded, cfg


def evaluate_run(
    run_dir: str | Path,
    datasets: Sequence[str] = (),
    *,
    split: str = "test",
    device: str = "auto",
    batch_size: int = 256,
    num_workers: int = 4,
    wait: bool | None = None,
):
    """Tidy table (pandas) of the best checkpoint on its own dataset and on `datasets`.

    Columns: run, model, train, lr, seed, trained_on, dataset, split, n, acc, loss. A dataset
    with a different number of classes is an error. Also written as <run>/evaluation.csv/.parquet
    (sealed like the run's other records), under the run folder's lock.
    """
    from vitplas.locks import run_lock
    from vitplas.runs import RunDir, write_table

    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    with run_lock(run_dir, command="evaluate", wait=wait):
        table = _evaluate_locked(run_dir, datasets, split, device, batch_size, num_workers)
        write_table(table, Path(run_dir) / "evaluation")
        RunDir(run_dir).seal(["evaluation.csv", "evaluation.parquet"])
    return table


def _evaluate_locked(run_dir, datasets, split, device, batch_size, num_workers):
    import pandas as pd

    from vitplas.data import get_dataset, transform_for
    from vitplas.training.distributed import resolve_device
    from vitplas.training.stream import eval_loader

    dev = resolve_device(device)
    loaded, cfg = load_best_model(run_dir, str(dev))
    names = [cfg.dataset, *[d for d in datasets if d != cfg.dataset]]
    _check_classes(cfg.dataset, names)  # before any work: a bad name loses nothing
    transform = transform_for(loaded, train=False)  # the run's own (models.finetuned)
    plan = cfg.split_plan()  # the test carving the run's protocol uses
    rows = []
    for name in names:
        data = get_dataset(  # the files the run's own option left out stay out
            name,
            split,
            transform=transform,
            root=cfg.data_root,
            plan=plan,
            skip_unreadable=cfg.skip_unreadable,
        )
        loader = eval_loader(data, batch_size, num_workers=num_workers)
        scores = evaluate_model(loaded.model, loader, dev, amp=cfg.amp)
        rows.append(
            {
                "run": str(run_dir),
                "model": cfg.model,
                "train": "+".join(cfg.train),
                "lr": cfg.lr,
                "seed": cfg.seed,
                "trained_on": cfg.dataset,
                "dataset": name,
                "split": split,
                "n": scores["n"],
                "acc": scores["acc"],
                "loss": scores["loss"],
            }
        )
    return pd.DataFrame(rows)


def _check_classes(own_dataset: str, names: Sequence[str]) -> None:
    """Every dataset evaluated must have the class count of the one the run was trained on."""
    from vitplas.data import dataset_info

    own = dataset_info(own_dataset).num_classes
    for name in names:
        classes = dataset_info(name).num_classes
        if classes != own:
            raise ValueError(
                f"dataset '{name}' has {classes} classes; the run was trained on "
                f"'{own_dataset}' with {own}: choose datasets with the same classes"
            )
