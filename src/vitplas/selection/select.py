"""`vitplas select`: score every criterion on the user's model and target data, then choose.

    run_select(cfg, out) -> (selection frame, {criterion: picked train set})

Files in `out`: selection.csv (criterion, layer ('all' for a component type), component, score,
rank, params), picks.json (per criterion the train set under the budget), config.yaml, DONE.
Defaults are the embedded offline default (DINOv2 ViT-S/14, photos vs Fashion-MNIST), sized to
finish in about three minutes on a 2-core CPU.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd
import torch

from vitplas.config import ConfigError
from vitplas.selection import criteria as C
from vitplas.selection.budget import choose, train_set

UNIT = {"component": "component", "layer": "(layer, component)"}


@dataclass
class SelectConfig:
    """What `vitplas select` scores, on which data, and the budget it chooses under."""

    model: str = "dinov2-s14"  # model spec (preset, timm name, ARCH@FILE, run folder, HF id)
    random_init: bool = False  # random weights on purpose (never a silent fallback)
    img_size: int | None = None  # input size (None: the model's own)
    protocol: Literal["model", "paper"] = "model"  # preprocessing: the model's or the original's
    target: str = "fashion-mnist"  # the downstream dataset the components are scored on
    data_root: str | None = None  # dataset folder (None: $VITPLAS_DATA, then <VITPLAS_HOME>/data)
    criteria: list[str] = field(default_factory=list)  # criteria to score (empty: all of them)
    budget: float = 0.35  # trained fraction of the blocks' parameters, in (0, 1]
    granularity: Literal["component", "layer"] = "component"  # pick component types, or
    # (layer, component) units
    reference: str = "photos"  # plasticity: the reference stream paired with the target's test
    inputs: Literal["embedding", "hidden"] = "embedding"  # plasticity inputs
    pairs: int = 128  # plasticity: image pairs
    grad_batches: int = 2  # gradient criteria: target train batches through a fresh head
    batch_size: int = 16  # images per batch
    seed: int = 0  # seed of the data draws, the fresh head and the random control
    device: str = "auto"  # auto, cpu or cuda

    def validate(self) -> None:
        try:
            self.criteria = C.parse_criteria(self.criteria)
        except ValueError as err:
            raise ConfigError(f"criteria: {err}") from err
        if not 0 < self.budget <= 1:
            raise ConfigError(f"budget is a fraction in (0, 1], got {self.budget}")
        if min(self.pairs, self.grad_batches, self.batch_size) < 1:
            raise ConfigError("pairs, grad_batches and batch_size must be >= 1")


def score_model(
    cmap,
    criteria: list[str],
    *,
    train_batches=None,
    pairs=None,
    inputs: str = "embedding",
    seed: int = 0,
    device="cpu",
) -> pd.DataFrame:
    """Ranked scores of `criteria` on a model (its component map) with data already loaded:
    train_batches (images, labels) for the gradient criteria, pairs (x, y) for plasticity."""
    rows = C.spectrum_scores(cmap, criteria) + C.control_scores(cmap, criteria, seed)
    if {"grad_norm", "rgn", "fisher"} & set(criteria):
        if train_batches is None:
            raise ValueError("the gradient criteria need train batches of the target")
        rows += C.gradient_scores(cmap, train_batches, criteria, device)
    if "plasticity" in criteria:
        if pairs is None:
            raise ValueError("the plasticity criterion needs image pairs")
        rows += C.plasticity_scores(cmap, pairs, inputs=inputs, device=device)
    frame = C.rank(pd.DataFrame(rows, columns=C.COLUMNS))
    order = {c: i for i, c in enumerate(C.CRITERIA)}
    return frame.sort_values(
        ["criterion", "layer", "rank"],
        key=lambda s: s.map(order) if s.name == "criterion" else s.astype(str),
    ).reset_index(drop=True)


def picks(frame: pd.DataFrame, budget: float, granularity: str) -> dict[str, list[str]]:
    """{criterion: train set} under the budget rule of vitplas.selection.budget."""
    crits = list(dict.fromkeys(frame["criterion"]))
    return {c: train_set(choose(frame, c, budget, granularity)) for c in crits}


def _data(cfg: SelectConfig, loaded):
    from vitplas.analysis.pairs import pair_batches
    from vitplas.analysis.setup import open_stream
    from vitplas.data import make_loader, transform_for

    transform = transform_for(loaded, train=False, protocol=cfg.protocol)  # as finetuning's
    train = open_stream(cfg.target, "train", transform, cfg.data_root, False)
    loader = make_loader(train, cfg.batch_size, shuffle=True, seed=cfg.seed)
    batches = list(itertools.islice(iter(loader), cfg.grad_batches))
    pairs = None
    if "plasticity" in cfg.criteria:
        reference = open_stream(cfg.reference, "val", transform, cfg.data_root, False)
        target = open_stream(cfg.target, "test", transform, cfg.data_root, False)
        batch = min(32, cfg.pairs)
        pairs = pair_batches(reference, target, pairs=cfg.pairs, batch_size=batch, seed=cfg.seed)
    return batches, pairs


def score_config(cfg: SelectConfig) -> pd.DataFrame:
    """Load the model (with a fresh head) and the data `cfg` names; its ranked scores."""
    from vitplas.analysis.setup import resolve_device
    from vitplas.data import dataset_info
    from vitplas.models import load_model
    from vitplas.models.components import component_map

    device = resolve_device(cfg.device)
    num_classes = dataset_info(cfg.target).num_classes
    torch.manual_seed(cfg.seed)  # the fresh head's initialisation
    loaded = load_model(
        cfg.model, num_classes=num_classes, random_init=cfg.random_init, img_size=cfg.img_size
    )
    cmap = component_map(loaded.model.to(device).eval())
    batches, pairs = _data(cfg, loaded)
    return score_model(
        cmap,
        cfg.criteria,
        train_batches=batches,
        pairs=pairs,
        inputs=cfg.inputs,
        seed=cfg.seed,
        device=device,
    )


def run_select(
    cfg: SelectConfig, out: str | Path, *, repair: bool = False, wait: bool | None = None
) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Score, rank and choose as `cfg` says; write the files listed in the module docstring.
    The folder is locked and its config checked first: a finished selection of `cfg` is read
    back (verified), another config refused (vitplas.runs.RunDir.begin)."""
    import io
    import json

    from vitplas.locks import run_lock
    from vitplas.runs import RunDir

    run = RunDir(out)
    with run_lock(run.path, command="select", wait=wait):
        if run.begin(cfg, repair=repair):  # a finished selection of cfg: read back, verified
            frame = pd.read_csv(io.BytesIO(run.read_verified("selection.csv")))
            return frame, json.loads(run.read_verified("picks.json"))["picks"]
        run.start(cfg)
        frame = score_config(cfg)
        chosen = picks(frame, cfg.budget, cfg.granularity)
        write_selection(out, frame, chosen, cfg.budget, cfg.granularity)
        run.mark_done()
    return frame, chosen


def write_selection(out, frame: pd.DataFrame, chosen: dict, budget: float, granularity: str):
    """selection.csv and picks.json in folder `out`."""
    from vitplas.runs import atomic_write_json, atomic_write_text

    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(out) / "selection.csv", frame.to_csv(index=False))
    record = {"budget": budget, "granularity": granularity, "picks": chosen}
    atomic_write_json(Path(out) / "picks.json", record)


def summary(
    frame: pd.DataFrame, chosen: dict[str, list[str]], budget: float, granularity: str
) -> str:
    """Per criterion: its ranking (component types) and the train set it picks."""
    lines = [
        f"rule: in rank order, take each {UNIT[granularity]} whose parameters still fit in "
        f"{budget:g} of the block parameters (head and final norm are trained besides)"
    ]
    types = frame[frame["layer"].astype(str) == C.ALL]
    for crit, group in types.groupby("criterion", sort=False):
        ranking = " > ".join(group.sort_values("rank")["component"])
        direction = "high first" if C.HIGHER_FIRST[crit] else "low first"
        lines.append(
            f"{crit:<12} {ranking:<40} ({direction})  picks train={json.dumps(chosen[crit])}"
        )
    return "\n".join(lines)
