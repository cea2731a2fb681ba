"""Evaluation: accuracy and loss of a model on a dataset, and of a finished run's best
checkpoint on its own test split and on any dataset with the same classes (the evaluate job:
its config is training.config.EvaluateConfig, its lifecycle vitplas.jobs.lifecycle's)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from vitplas.config import ConfigError
from vitplas.device import autocast as autocast  # re-exported (its home: vitplas.device)
from vitplas.models.text import forward_logits
from vitplas.runs import Computed
from vitplas.training.distributed import DistInfo, all_reduce_sum


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    *,
    amp: str = "none",
    dist: DistInfo | None = None,
    per_image: bool = False,
) -> dict[str, Any]:
    """{"loss": mean cross-entropy, "acc": accuracy in %, "n": images} over the loader
    (summed over processes when `dist` is given), in float32 unless `amp` asks for bf16;
    with `per_image`, also "pred" and "label" (this process's images, in loader order).

    Accuracy is per image (correct / images); the original averages per-batch accuracies,
    which over-weights a last partial batch (README: protocol choices)."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = torch.as_tensor(labels).to(device, non_blocking=True)
        with autocast(device, amp):
            logits = forward_logits(model, images)  # images, or tokens (B, 2, L)
        logits = logits.float()
        totals[0] += F.cross_entropy(logits, labels, reduction="sum").double()
        totals[1] += (logits.argmax(dim=1) == labels).sum()
        totals[2] += labels.numel()
        if per_image:
            seen.append((logits.argmax(dim=1), labels))
    model.train(was_training)
    if dist is not None:
        all_reduce_sum(totals, dist)
    loss, correct, n = totals.tolist()
    if n == 0:
        raise ValueError("evaluation set is empty")
    out: dict[str, Any] = {"loss": loss / n, "acc": 100.0 * correct / n, "n": int(n)}
    if per_image:
        out["pred"] = torch.cat([p for p, _ in seen])
        out["label"] = torch.cat([y for _, y in seen])
    return out


def predictions_table(loader: DataLoader, scores: dict[str, Any], dist: DistInfo | None = None):
    """The per-image record of an evaluation with `per_image` (pandas: index, label, pred; one
    row per image of the split, by its index in the split, gathered over processes): what a
    bootstrap over test images resamples (vitplas.experiments.evidence)."""
    import pandas as pd

    shard = loader.dataset  # eval_loader's Subset: this process's indices into the split
    indices = torch.as_tensor(shard.indices, device=scores["pred"].device)
    total = len(shard.dataset)
    full = torch.zeros(2, total, dtype=torch.long, device=indices.device)  # pred + 1, label + 1
    full[0, indices] = scores["pred"] + 1
    full[1, indices] = scores["label"] + 1
    if dist is not None:
        all_reduce_sum(full, dist)
    keep = (full[0] > 0).nonzero().flatten().cpu()
    pred, label = (full[:, keep] - 1).cpu().tolist()
    return pd.DataFrame({"index": keep.tolist(), "label": label, "pred": pred})


def load_best_model(run_dir: str | Path, device: str = "cpu") -> tuple[Any, Any]:
    """(LoadedModel of the run's best-validation weights on `device`, its FinetuneConfig).

    The model is `load_model(run_dir)` (models.finetuned): the run's base rebuilt as training
    built it, the trained weights, and the run's own mean/std, interpolation and crop fraction
    (so `data.transform_for(loaded)` is the run's eval transform). Every record read is first
    checked against the checksums sealed at DONE."""
    from vitplas.models import load_model
    from vitplas.records import read_yaml
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
        cfg = load_finetune_config(None, data=read_yaml(run_dir) or {})
    except ConfigError as err:
        raise ConfigError(f"{run_dir}/config.yaml cannot be read: {err}") from err
    loaded = load_model(str(run_dir))
    loaded.model.to(device)
    return loaded, cfg


def expand_datasets(patterns: Sequence[str]) -> list[str]:
    """Dataset names, with shell wildcards over the registry's parameter choices:
    'cifar10-c/*/5' -> every CIFAR-10-C corruption at severity 5."""
    import fnmatch
    import itertools

    from vitplas.data import list_datasets

    concrete = []
    for info in list_datasets():
        choices = [p.choices for p in info.params]
        if any(c is None for c in choices):
            continue
        concrete += ["/".join([info.family, *combo]) for combo in itertools.product(*choices)]
    names = []
    for pattern in patterns:
        matched = fnmatch.filter(concrete, pattern) if any(c in pattern for c in "*?[") else []
        names += matched or [pattern]
    return list(dict.fromkeys(names))


def read_evaluation(run) -> dict[str, Any]:
    """A finished run's evaluation table (verified)."""
    from vitplas.records import read_table

    return {"table": read_table(run.path, "evaluation.csv")}


def compute_evaluation(cfg, run) -> Computed:
    """The best checkpoint of finished run `run` (cfg.run) on its own dataset and cfg.datasets
    (wildcards expanded): evaluation.csv/.parquet; the lifecycle extends the run's seal.

    Columns: run, model, train, lr, seed, trained_on, dataset, split, n, acc, loss. A dataset
    with a different number of classes is an error, before any work."""
    from vitplas.runs import write_table

    datasets = expand_datasets(cfg.datasets)
    table = _evaluate_locked(
        run.path, datasets, cfg.split, cfg.device, cfg.batch_size, cfg.num_workers
    )
    write_table(table, run / "evaluation")
    return Computed({"datasets": list(table["dataset"])}, None, {"table": table})


def _text_reader(loaded: Any, cfg: Any):
    """(name, split, plan) -> that split of a text set tokenised as the run's training did:
    by the run's tokenizer to its max_length (data.TokenizedTexts: (2, L) ids and mask)."""
    from vitplas.data import TokenizedTexts, get_dataset
    from vitplas.models.hf_text import load_tokenizer

    tokenizer = load_tokenizer(loaded.tokenizer, loaded.model)  # GPT-2: pad id = eos

    def read(name: str, split: str, plan: Any) -> TokenizedTexts:
        texts = get_dataset(name, split, root=cfg.data_root, plan=plan)
        return TokenizedTexts(texts, tokenizer, cfg.max_length)

    return read


def _evaluate_locked(run_dir, datasets, split, device, batch_size, num_workers):
    import pandas as pd

    from vitplas.data import get_dataset, transform_for
    from vitplas.training.distributed import resolve_device
    from vitplas.training.stream import eval_loader

    dev = resolve_device(device)
    loaded, cfg = load_best_model(run_dir, str(dev))
    names = [cfg.dataset, *[d for d in datasets if d != cfg.dataset]]
    _check_classes(cfg.dataset, names)  # before any work: a bad name loses nothing
    plan = cfg.split_plan()  # the test carving the run's protocol uses
    read = _text_reader(loaded, cfg) if loaded.modality == "text" else None
    transform = None if read else transform_for(loaded, train=False)  # the run's own
    rows = []
    for name in names:
        if read is not None:
            data = read(name, split, plan)
        else:
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
