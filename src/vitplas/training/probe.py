"""Linear probes on the outputs of any (layer, component) of a frozen model.

Features: the tokens a component outputs in the model's real forward pass (a forward hook on
the component's module, found through the component map), mean-pooled over all tokens (or the
CLS token). Classifier: StandardScaler + multinomial logistic regression with sklearn's
objective, C * sum(cross-entropy) + ||W||^2 / 2, fitted full batch with L-BFGS in torch on the
features' device; scikit-learn is the reference (and a backend). The baseline for relative
gains is the last block's output (component "block").

`protocol: paper` is the original release's probe (PAPER.md section 7): each pooled feature
vector L2-normalised, max_iter 5000, train features of the 80% train split (the seeded
random_split with the probe's seed) drawn WITH the training augmentation, shuffled, the last
partial batch dropped; test features of its test split. `protocol: model` (the default) uses
the checkpoint's preprocessing, eval transforms for both splits, no normalisation of the
vectors, every train image.

A text set (a text model: BERT, RoBERTa, GPT-2) is read and called as finetuning reads and calls
it, and its features are pooled over the real tokens only (`mean`: the masked mean; `cls`: the
token the family's classifier reads, BERT's first, GPT-2's last real one): training.probe_text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from vitplas import protocol as protocols
from vitplas.config import ConfigError
from vitplas.models.components import component_map
from vitplas.runs import Computed, write_table
from vitplas.training.config import ProbeConfig
from vitplas.training.probe_text import pool_real_tokens, real_token_mask, text_probe_inputs

Point = tuple[int, str]  # (layer, component); component "block" = the block's output


class _Stop(Exception):
    """Raised by the deepest hook: later blocks are not needed."""


def probe_points(model: nn.Module, layers=None, components: Sequence[str] = ("all",)) -> list:
    """(layer, component) pairs; `all` = every block component plus the block output."""
    cmap = component_map(model)
    names = list(components)
    if "all" in names:
        names = [*cmap.block_components, "block"]
    for name in names:
        if name != "block" and name not in cmap.block_components:
            raise ConfigError(
                f"component '{name}' cannot be probed; choose from "
                f"{', '.join((*cmap.block_components, 'block'))}"
            )
    layers = list(range(cmap.depth)) if layers is None else list(layers)
    bad = [i for i in layers if not -cmap.depth <= i < cmap.depth]
    if bad:
        raise ConfigError(f"layers {bad} out of range for a model with {cmap.depth} blocks")
    return [(i % cmap.depth, n) for i in layers for n in names]


def _pool(
    tokens: torch.Tensor, pool: str, l2: bool = False, mask=None, classifier_token: str = "first"
) -> torch.Tensor:
    """(B, D) features of a component's tokens (B, N, D); `mask` (B, N): a text batch's
    attention mask, pooled over its real tokens only (probe_text.pool_real_tokens)."""
    tokens = tokens[0] if isinstance(tokens, tuple) else tokens  # (B, N, D)
    if mask is not None:
        pooled = pool_real_tokens(tokens, mask, pool, classifier_token)
    else:
        pooled = tokens[:, 0] if pool == "cls" else tokens.mean(dim=1)  # (B, D)
    return F.normalize(pooled.float(), dim=1) if l2 else pooled  # unit L2 norm per image


@torch.no_grad()
def extract_features(
    model: nn.Module,
    loader: DataLoader,
    points: Sequence[Point],
    *,
    pool: str = "mean",
    device: torch.device | str = "cpu",
    amp: str = "none",
    l2: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[dict[Point, torch.Tensor], torch.Tensor]:
    """({point: (N, width) float32 features on `device`}, labels (N,)) in one pass; `l2`
    scales each pooled vector to unit norm; on_batch(images in the batch) after each batch.
    A batch of texts (B, 2, L) (data.pack_tokens) goes in as finetuning feeds it, with its
    attention mask, and is pooled over its real tokens (module docstring)."""
    from vitplas.models.text import forward_logits, is_token_batch
    from vitplas.training.evaluate import autocast

    device = torch.device(device)
    cmap = component_map(model)
    model.eval().to(device)
    last = max(layer for layer, _ in points)
    batch_feats: dict[Point, torch.Tensor] = {}
    masks: list[torch.Tensor | None] = [None]  # the text batch's attention mask (B, L)
    reads = cmap.family.classifier_token
    chunks: dict[Point, list[torch.Tensor]] = {p: [] for p in points}
    handles = []
    for point in points:
        layer, name = point
        module = cmap.block(layer) if name == "block" else cmap.module(layer, name)

        def hook(_m, _inp, out, point=point):
            batch_feats[point] = _pool(out, pool, l2, masks[0], reads).float()

        handles.append(module.register_forward_hook(hook))

    def stop(_m, _inp, _out):
        raise _Stop

    handles.append(cmap.block(last).register_forward_hook(stop))
    labels = []
    try:
        for images, targets in loader:
            inputs = images.to(device, non_blocking=True)
            masks[0] = real_token_mask(inputs) if is_token_batch(inputs) else None
            with autocast(device, amp), _suppress_stop():
                forward_logits(model, inputs)  # images: model(inputs)
            for point in points:
                chunks[point].append(batch_feats[point])
            labels.append(torch.as_tensor(targets))
            if on_batch is not None:
                on_batch(len(targets))
    finally:
        for handle in handles:
            handle.remove()
    feats = {p: torch.cat(c) for p, c in chunks.items()}
    return feats, torch.cat(labels).to(device)


class _suppress_stop:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is _Stop


def standardize(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """StandardScaler: train mean/std (population), a zero std becomes 1."""
    mean = train.mean(dim=0, keepdim=True)
    std = train.std(dim=0, unbiased=False, keepdim=True)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (train - mean) / std, (test - mean) / std


def fit_logistic_torch(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, *, C: float = 1.0, max_iter: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """(W (K, D), b (K,)) minimising C * sum CE + ||W||^2 / 2 (bias unpenalised), by L-BFGS.

    The objective is divided by C * n (same minimiser) so that the tolerances do not depend
    on the sample count.
    """
    n, dim = x.shape
    weight = torch.zeros(num_classes, dim, device=x.device, dtype=x.dtype, requires_grad=True)
    bias = torch.zeros(num_classes, device=x.device, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + weight.square().sum() / (2 * C * n)
        loss.backward()
        return loss

    opt.step(closure)
    return weight.detach(), bias.detach()


def fit_and_score(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    *,
    backend: str = "torch",
    C: float = 1.0,
    max_iter: int = 1000,
) -> float:
    """Test accuracy (%) of a standardised logistic regression fitted on the train features."""
    if backend == "sklearn":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
        clf.fit(train_x.cpu().double().numpy(), train_y.cpu().numpy())
        return 100.0 * float(clf.score(test_x.cpu().double().numpy(), test_y.cpu().numpy()))
    xtr, xte = standardize(train_x, test_x)
    weight, bias = fit_logistic_torch(xtr, train_y, num_classes, C=C, max_iter=max_iter)
    pred = (xte @ weight.T + bias).argmax(dim=1)
    return 100.0 * (pred == test_y).double().mean().item()


def point_groups(points: Sequence[Point], widths: dict[Point, int], n: int, budget: float):
    """Split points into groups whose features (n x width float32) fit in `budget` bytes."""
    groups, current, used = [], [], 0.0
    for point in points:
        size = n * widths[point] * 4
        if current and used + size > budget:
            groups.append(current)
            current, used = [], 0.0
        current.append(point)
        used += size
    return [*groups, current] if current else groups


def probe_model(
    model: nn.Module,
    train_loader: DataLoader,
    test_loader: DataLoader,
    num_classes: int,
    points: Sequence[Point],
    cfg: ProbeConfig,
    device: torch.device,
    on_phase: Callable[[str, int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per point: layer, component, acc, baseline_acc, rel_to_baseline.

    The baseline (last block's output) is always probed, added when not in `points`.
    on_phase(phase, done, total) follows the feature images ("features") and the fits ("fits").
    """
    depth = component_map(model).depth
    points = list(points)
    if (depth - 1, "block") not in points:
        points.append((depth - 1, "block"))
    widths = _widths(model, points, train_loader, device)
    n = len(train_loader.dataset) + len(test_loader.dataset)
    max_iter = cfg.max_iter or protocols.get(cfg.protocol).probe_max_iter
    rows = []
    groups = point_groups(points, widths, n, cfg.max_feature_gb * 1e9)
    seen = [0]

    def images(count: int) -> None:
        seen[0] += count
        if on_phase is not None:
            on_phase("features", seen[0], n * len(groups))

    for group in groups:
        kwargs = {"pool": cfg.pool, "device": device, "amp": cfg.amp, "l2": cfg.l2}
        tr, ytr = extract_features(model, train_loader, group, **kwargs, on_batch=images)
        te, yte = extract_features(model, test_loader, group, **kwargs, on_batch=images)
        for point in group:
            acc = fit_and_score(
                tr[point],
                ytr,
                te[point],
                yte,
                num_classes,
                backend=cfg.backend,
                C=cfg.C,
                max_iter=max_iter,
            )
            rows.append(
                {"layer": point[0], "component": point[1], "acc": acc, "width": widths[point]}
            )
            if on_phase is not None:
                on_phase("fits", len(rows), len(points))
        del tr, te
    (base,) = [r["acc"] for r in rows if (r["layer"], r["component"]) == (depth - 1, "block")]
    for row in rows:
        row["baseline_acc"] = base
        row["rel_to_baseline"] = (row["acc"] - row["baseline_acc"]) / row["baseline_acc"]
    return rows


def _widths(model, points, loader, device) -> dict[Point, int]:
    """Feature width of each point, from one image."""
    images, labels = next(iter(loader))
    one = DataLoader(list(zip(images[:1], torch.as_tensor(labels)[:1], strict=True)), batch_size=1)
    feats, _ = extract_features(model, one, points, device=device)
    return {p: f.shape[1] for p, f in feats.items()}


def read_probe(run) -> dict[str, Any]:
    """A finished probe run's result and table, verified."""
    from vitplas.records import read_table

    table = read_table(run.path, "probe.csv")
    return {**run.read_json(), "table": table}


def compute_probe(
    cfg: ProbeConfig, run, on_phase: Callable[[str, int, int], None] | None = None
) -> Computed:
    """Probe cfg.model on cfg.dataset; write probe.csv/.parquet in `run`.

    Its table (pandas): model, dataset, pool, layer, component, width, n_train, n_test, acc,
    baseline_acc, rel_to_baseline. on_phase(phase, done, total) follows features and fits."""
    table = _probe_table(cfg, on_phase)
    description = table.attrs.pop("description")
    write_table(table, run / "probe")
    result = {k: table[k].iloc[0] for k in ("model", "dataset", "n_train", "n_test")}
    result = {k: v.item() if hasattr(v, "item") else v for k, v in result.items()}
    return Computed({**result, "points": len(table)}, description, {"table": table})


def _probe_table(cfg: ProbeConfig, on_phase=None):
    import pandas as pd

    from vitplas.data import dataset_info, skipped_report
    from vitplas.training.distributed import resolve_device

    info = dataset_info(cfg.dataset)
    torch.manual_seed(cfg.seed)
    model, loaders, description = INPUTS[info.modality](cfg, info.num_classes)
    if cfg.skip_unreadable:
        description |= skipped_report(loader.dataset for loader in loaders)
    device = resolve_device(cfg.device)
    points = probe_points(model, cfg.layers, cfg.components)
    rows = probe_model(
        model, loaders[0], loaders[1], info.num_classes, points, cfg, device, on_phase
    )
    table = pd.DataFrame(rows)
    meta = {"model": cfg.model, "dataset": cfg.dataset, "pool": cfg.pool, "backend": cfg.backend}
    meta |= {"n_train": _n_images(loaders[0]), "n_test": _n_images(loaders[1])}
    table = table.assign(**meta)[[*meta, *table.columns]]
    table.attrs["description"] = description
    return table


def _image_inputs(cfg: ProbeConfig, num_classes: int):
    """(model, [train, test] loaders, description) of a probe on an image set."""
    from vitplas.training.sources import load_model_for

    model, description = load_model_for(_as_finetune(cfg), num_classes)
    return model, probe_loaders(cfg, description), description


# dataset modality -> (cfg, classes) -> (model, [train, test] loaders, description)
INPUTS: dict[str, Callable[[ProbeConfig, int], tuple[nn.Module, list[DataLoader], dict]]] = {
    "image": _image_inputs,
    "text": lambda cfg, _classes: text_probe_inputs(cfg, _as_finetune(cfg)),
}


def _n_images(loader: DataLoader) -> int:
    """Images a pass over `loader` yields (a dropped last batch does not count)."""
    if loader.drop_last:
        return len(loader) * int(loader.batch_size or 1)
    return len(loader.dataset)  # type: ignore[arg-type]


def probe_loaders(cfg: ProbeConfig, description: dict[str, Any]) -> list[DataLoader]:
    """[train, test] loaders of the probe: see the module docstring for the two protocols.

    Under paper the train images are augmented, shuffled (from cfg.seed) and the last partial
    batch dropped, as the original's; `max_train` then caps a fixed random subset first.
    """
    from torch.utils.data import Subset

    from vitplas.data import build_transform, get_dataset, make_loader
    from vitplas.training.sources import preprocessing_for
    from vitplas.training.stream import eval_loader

    prep = preprocessing_for(cfg.protocol, description)
    plan = _as_finetune(cfg).split_plan()
    augmented = protocols.get(cfg.protocol).probe_augmented_train
    loaders = []
    for split, cap in (("train", cfg.max_train), ("test", cfg.max_test)):
        augment = augmented and split == "train"
        transform = build_transform(size=cfg.img_size, train=augment, **prep)
        data = get_dataset(
            cfg.dataset,
            split,
            transform=transform,
            root=cfg.data_root,
            plan=plan,
            skip_unreadable=cfg.skip_unreadable,
        )
        if not augment:
            loaders.append(
                eval_loader(data, cfg.batch_size, max_samples=cap, num_workers=cfg.num_workers)
            )
            continue
        if cap is not None and cap < len(data):
            gen = torch.Generator().manual_seed(0)  # the same subset eval_loader would take
            data = Subset(data, sorted(torch.randperm(len(data), generator=gen)[:cap].tolist()))
        loaders.append(
            make_loader(
                data,
                cfg.batch_size,
                shuffle=True,
                seed=cfg.seed,
                num_workers=cfg.num_workers,
                drop_last=True,
            )
        )
    return loaders


def _as_finetune(cfg: ProbeConfig):
    from vitplas.training.config import FinetuneConfig

    return FinetuneConfig(
        model=cfg.model,
        dataset=cfg.dataset,
        data_root=cfg.data_root,
        max_length=cfg.max_length,
        random_init=cfg.random_init,
        allow_unfinished=cfg.allow_unfinished,
        img_size=cfg.img_size,
        seed=cfg.seed,
        protocol=cfg.protocol,
    )
