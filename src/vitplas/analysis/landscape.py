"""The loss landscape of one component beside its rate of change (the original's illustration).

For each component c of block `layer`: train c (and the new head) for `steps` SGD steps,
recording c's parameters theta_0..theta_T; the top two PCA directions d1, d2 of that trajectory
(scikit-learn) span a plane through theta_T. On a grid x grid lattice of (a, b) in
[-span, span]^2 the parameters are set to theta_T + a d1 + b d2 and two surfaces are measured:

    loss(a, b)  cross-entropy of the model on a fixed batch of `eval_images` training images
                (texts: through the sequence classifier with their attention masks)
    rate(a, b)  c's plasticity at that point: mean over `pairs` fixed (reference, target)
                pairs of ||c(x) - c(y)||_F / ||x - y||_F on the embedding output (PAPER.md 1);
                for text pairs the estimator's masked ratio (positions real in both texts)

Only c's parameters move on the grid: the embedding output is computed once. `blocks` keeps
the first `blocks` blocks of the backbone (then the final norm and head), which makes the loss
cheap enough for a CPU; None keeps them all (the paper preset). Images and texts differ only in
what landscape_inputs reads (its MODALITIES table).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from vitplas.analysis.configs import PRESETS as PRESETS  # re-exported
from vitplas.analysis.configs import LandscapeConfig
from vitplas.analysis.landscape_inputs import Modality, Streams, keep_blocks, load_for
from vitplas.analysis.landscape_inputs import reference_of as reference_of  # re-exported
from vitplas.analysis.plasticity import token_ratios
from vitplas.analysis.setup import resolve_device
from vitplas.data import dataset_info, make_loader
from vitplas.models.components import ComponentMap, component_map
from vitplas.models.text import forward_logits
from vitplas.records import read_table
from vitplas.runs import Computed, RunDir, write_table


@dataclass
class _Setup:
    model: nn.Module
    cmap: ComponentMap
    device: torch.device
    description: str
    modality: Modality

    def params(self, layer: int, name: str) -> list[nn.Parameter]:
        """Component `name`'s parameters in block `layer`: the ones the loss reads."""
        return self.modality.params(self.cmap, layer, name)


def _setup(cfg: LandscapeConfig, num_classes: int) -> tuple[_Setup, Any]:
    """The model with a new head of `num_classes`, truncated to cfg.blocks, and its record."""
    loaded, modality = load_for(cfg, num_classes)
    model = loaded.model
    keep_blocks(model, cfg.blocks)
    device = resolve_device(cfg.device)
    model = model.to(device).eval()  # eval: no dropout, the same function at every point
    return _Setup(model, component_map(model), device, loaded.description, modality), loaded


def _batches(cfg: LandscapeConfig, streams: Streams) -> tuple[list, tuple, torch.Tensor]:
    """(SGD batches, loss batch (x, labels), pair inputs (2P, ...): x then y) from the
    streams: images (2P, 3, H, W) or tokens (2P, 2, L)."""
    train = streams.train
    loader = make_loader(train, cfg.batch_size, shuffle=True, seed=cfg.seed, drop_last=True)
    it = iter(loader)
    steps = [next(it) for _ in range(cfg.steps)]
    fixed = make_loader(train, cfg.eval_images, shuffle=True, seed=cfg.seed + 1)
    loss_batch = next(iter(fixed))
    ref, tgt = streams.reference, streams.target
    xs = next(iter(make_loader(ref, cfg.pairs, shuffle=True, seed=cfg.seed)))[0]
    ys = next(iter(make_loader(tgt, cfg.pairs, shuffle=True, seed=cfg.seed)))[0]
    n = min(len(xs), len(ys))
    return steps, loss_batch, torch.cat([xs[:n], ys[:n]])


def trajectory(setup: _Setup, cfg: LandscapeConfig, name: str, steps: list) -> torch.Tensor:
    """(T + 1, P) parameters of component `name` in block cfg.layer along `steps` SGD steps
    that train it and the head (the rest frozen); the model keeps the final point."""
    params = setup.params(cfg.layer, name)
    head = setup.modality.head(setup.cmap)
    for p in setup.model.parameters():
        p.requires_grad_(False)
    for p in [*params, *head]:
        p.requires_grad_(True)
    opt = torch.optim.SGD([*params, *head], lr=cfg.lr, momentum=cfg.momentum)
    points = [parameters_to_vector(params).detach().clone()]
    for x, y in steps:
        loss = F.cross_entropy(forward_logits(setup.model, x.to(setup.device)), y.to(setup.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_([*params, *head], cfg.grad_clip)
        opt.step()
        points.append(parameters_to_vector(params).detach().clone())
    for p in setup.model.parameters():
        p.requires_grad_(False)
    return torch.stack(points)


def pca_plane(points: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(2, P) unit directions (top two principal components of the (T + 1, P) trajectory) and
    the (T + 1, 2) coordinates of each point relative to the last one."""
    from sklearn.decomposition import PCA

    data = points.double().cpu().numpy()
    directions = PCA(n_components=2).fit(data).components_  # rows: unit vectors
    return directions, (data - data[-1]) @ directions.T


def surfaces(setup, cfg, name, center, directions, loss_batch, h, masks=None) -> pd.DataFrame:
    """Rows (i, j, a, b, loss, rate) over the grid around `center` (P,) in the plane; h
    (2P, N, D) the pairs' embedding output, masks (2P, N) their real tokens (text) or None."""
    params = setup.params(cfg.layer, name)
    axis = np.linspace(-cfg.span, cfg.span, cfg.grid)
    d = torch.as_tensor(directions, dtype=center.dtype, device=center.device)
    x, y = (t.to(setup.device) for t in loss_batch)
    rows = []
    with torch.inference_mode():
        for i, a in enumerate(axis):
            for j, b in enumerate(axis):
                vector_to_parameters(center + float(a) * d[0] + float(b) * d[1], params)
                loss = float(F.cross_entropy(forward_logits(setup.model, x), y))
                ratio = token_ratios(setup.cmap, h, [name], masks=masks)[:, cfg.layer, 0]  # (P,)
                rows.append((i, j, float(a), float(b), loss, float(ratio.nanmean())))
        vector_to_parameters(center, params)
    return pd.DataFrame(rows, columns=["i", "j", "a", "b", "loss", "rate"])


def read_landscape(run: RunDir) -> dict[str, Any]:
    """A finished landscape run's result, grid and trajectory, verified."""
    grid = read_table(run.path, "landscape.csv")
    path = read_table(run.path, "trajectory.csv")
    return {**run.read_json(), "grid": grid, "trajectory": path}


def compute_landscape(cfg: LandscapeConfig, run: RunDir, progress=None) -> Computed:
    """Every component's trajectory, plane and surfaces; tables and figures under `run`.

    progress(component, done, total) is called after each component."""
    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _compute(cfg, run, progress)
    finally:
        torch.set_num_threads(threads)


def _compute(cfg: LandscapeConfig, run: RunDir, progress) -> Computed:
    from vitplas.plots.landscape import landscape_figure
    from vitplas.plots.style import titled, write

    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    setup, loaded = _setup(cfg, dataset_info(cfg.dataset).num_classes)
    steps, loss_batch, pairs = _batches(cfg, setup.modality.streams(cfg, loaded))
    with torch.inference_mode():
        h, masks = setup.modality.embed(setup.cmap, pairs.to(setup.device))  # (2P, N, D):
        # c moves, h does not
    start = {k: v.clone() for k, v in setup.model.state_dict().items()}
    grids, paths = [], []
    for k, name in enumerate(cfg.components):
        setup.model.load_state_dict(start)  # every component from the same pretrained point
        points = trajectory(setup, cfg, name, steps)
        directions, coords = pca_plane(points)
        grid = surfaces(setup, cfg, name, points[-1], directions, loss_batch, h, masks)
        grids.append(grid.assign(component=name))
        paths.append(pd.DataFrame({"component": name, "step": range(len(coords)),
                                   "a": coords[:, 0], "b": coords[:, 1]}))  # fmt: skip
        if progress is not None:
            progress(name, k + 1, len(cfg.components))
    grid = pd.concat(grids, ignore_index=True).assign(model=cfg.model, layer=cfg.layer)
    path = pd.concat(paths, ignore_index=True)
    files = [*write_table(grid, run / "landscape"), *write_table(path, run / "trajectory")]
    unit, reference = setup.modality.unit, reference_of(cfg)
    title = titled(
        f"Loss and rate of change of block {cfg.layer}'s components, on the plane of each SGD path",
        [cfg.model, setup.modality.size(cfg),
         f"loss: {cfg.eval_images} {cfg.dataset} train {unit}s",
         f"rate: {cfg.pairs} pairs ({reference} {unit}, {cfg.dataset} test {unit})"],
    )  # fmt: skip
    files += write(landscape_figure(grid, path, title), run / "figures" / "landscape")
    result = {
        "model": cfg.model,
        "model_description": setup.description,
        "components": cfg.components,
        "files": [str(Path(p).relative_to(run.path)) for p in files],
        "timings": {"total_s": time.perf_counter() - t0},
    }
    return Computed(result, result, {"grid": grid, "trajectory": path})
