"""`vitplas select`: score every criterion on the user's model and target data, then choose.

    compute_select(cfg, run) -> (scores, picks): the select job's compute (vitplas.jobs)

Files in a run folder: selection.csv (criterion, layer ('all' for a component type), component,
score, rank, params), picks.json (per criterion the train set under the budget), besides the
config, manifest, result and seal of every job (vitplas.jobs.lifecycle).
Defaults are the embedded offline default (DINOv2 ViT-S/14, photos vs Fashion-MNIST), sized to
finish in about three minutes on a 2-core CPU.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pandas as pd
import torch

from vitplas.runs import Computed
from vitplas.selection import criteria as C
from vitplas.selection.budget import choose, train_set
from vitplas.selection.config import SelectConfig

UNIT = {"component": "component", "layer": "(layer, component)"}


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


def score_config(cfg: SelectConfig, with_model: bool = False):
    """Load the model (with a fresh head) and the data `cfg` names; its ranked scores (and the
    LoadedModel, with_model=True)."""
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
    frame = score_model(
        cmap,
        cfg.criteria,
        train_batches=batches,
        pairs=pairs,
        inputs=cfg.inputs,
        seed=cfg.seed,
        device=device,
    )
    return (frame, loaded) if with_model else frame


def read_select(run) -> dict:
    """A finished selection's scores and picks, verified."""
    import io

    frame = pd.read_csv(io.BytesIO(run.read_verified("selection.csv")))
    return {"frame": frame, "picks": run.read_json("picks.json")["picks"]}


def compute_select(cfg: SelectConfig, run) -> Computed:
    """Score, rank and choose as `cfg` says; selection.csv and picks.json in `run`."""
    from vitplas.analysis.setup import model_checksum_of

    frame, loaded = score_config(cfg, with_model=True)
    chosen = picks(frame, cfg.budget, cfg.granularity)
    write_selection(run.path, frame, chosen, cfg.budget, cfg.granularity)
    checksum, checksum_of = model_checksum_of(loaded)
    manifest = {"model": loaded.description, "seed": cfg.seed, "model_checksum": checksum}
    manifest |= {"model_checksum_of": checksum_of, "criteria": list(cfg.criteria)}
    result = {"budget": cfg.budget, "granularity": cfg.granularity, "picks": chosen}
    return Computed(result, manifest, {"frame": frame})


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
