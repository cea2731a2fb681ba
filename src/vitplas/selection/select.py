"""`vitplas select`: score every criterion on the user's model and target data, then choose.

    compute_select(cfg, run) -> (scores, picks): the select job's compute (vitplas.jobs)

Files in a run folder: selection.csv (criterion, layer ('all' for a component type), component,
score, rank, params, matrix (the unit has a weight matrix), note (why a score is NaN)),
picks.json (per criterion the train set under the budget and rule, and the criteria's version),
besides the config, manifest, result and seal of every job (vitplas.jobs.lifecycle). Every
data-driven criterion reads the target's train split (no test image is scored).
Defaults are the embedded offline default (DINOv2 ViT-S/14, photos vs Fashion-MNIST), sized to
finish in about three minutes on a 2-core CPU.

A text model (a text target) is scored on its target's train texts tokenised by its own
tokenizer to max_length, through a fresh sequence-classification head (finetuning's:
models.hf_text.with_classifier); FPS averages its input magnitudes over real tokens only.
The plasticity criteria pair the reference's val texts with the target's train texts, tokenised
alike, through the estimator's masked ratio (analysis.token_inputs); the reference defaults to
photos for an image model and wordnet-glosses for a text model (DEFAULT_REFERENCE). With
pair_lengths equal, the pairs are drawn as `vitplas plasticity` draws them (analysis
.length_pairs: each pair's two texts of one real length); an image target is refused.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pandas as pd
import torch

from vitplas.analysis.configs import DEFAULT_REFERENCE  # by the model's modality
from vitplas.runs import Computed
from vitplas.selection import criteria as C
from vitplas.selection.budget import budget_warning, decide, nothing_picked, train_set
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
    from vitplas.selection.gradients import fps_scores, gradient_scores

    rows = C.spectrum_scores(cmap, criteria) + C.control_scores(cmap, criteria, seed)
    data_driven = C.of_kind(criteria, "gradient") + C.of_kind(criteria, "forward")
    if data_driven and train_batches is None:
        raise ValueError(f"{', '.join(data_driven)} need train batches of the target")
    rows += gradient_scores(cmap, train_batches or [], criteria, device)
    if "fps" in criteria:
        rows += fps_scores(cmap, train_batches, device)
    plastic = C.of_kind(criteria, "plasticity")
    if plastic and pairs is None:
        raise ValueError(
            f"{', '.join(plastic)} need pairs of the reference and the target (images or texts)"
        )
    pairs = list(pairs) if len(plastic) > 1 else pairs  # one stream, scored once per mode
    for name in plastic:
        mode = C.BY_NAME[name].inputs or inputs
        rows += C.plasticity_scores(cmap, pairs, inputs=mode, device=device, name=name)
    frame = C.rank(pd.DataFrame(rows, columns=C.COLUMNS))
    order = {c: i for i, c in enumerate(C.CRITERIA)}
    return frame.sort_values(
        ["criterion", "layer", "rank"],
        key=lambda s: s.map(order) if s.name == "criterion" else s.astype(str),
    ).reset_index(drop=True)


def picks(
    frame: pd.DataFrame, budget: float, granularity: str, rule: str = "prefix"
) -> dict[str, list[str]]:
    """{criterion: train set} under the budget rule of vitplas.selection.budget ([] when the
    criterion's first unit does not fit)."""
    crits = list(dict.fromkeys(frame["criterion"]))
    out = {}
    for crit in crits:
        decided = decide(frame, crit, budget, granularity, rule)
        out[crit] = train_set(decided[decided["picked"]])
    return out


def _text_streams(cfg: SelectConfig, loaded, reference: str) -> tuple:
    """(the target's train texts, the reference's val texts or None) tokenised by the model's
    own tokenizer to max_length: datasets of (tokens (2, L), label)."""
    from vitplas.data import TokenizedTexts, get_dataset
    from vitplas.models.hf_text import check_max_length, load_tokenizer

    check_max_length(loaded.spec, loaded.model, cfg.max_length)
    tokenizer = load_tokenizer(loaded.tokenizer, loaded.model)

    def tokenized(name: str, split: str):
        return TokenizedTexts(get_dataset(name, split, root=cfg.data_root), tokenizer,
                              cfg.max_length)  # fmt: skip

    plastic = C.of_kind(cfg.criteria, "plasticity")
    return tokenized(cfg.target, "train"), tokenized(reference, "val") if plastic else None


def _image_streams(cfg: SelectConfig, loaded, reference: str) -> tuple:
    """(the target's train images, the reference's val images or None) as finetuning
    transforms them."""
    from vitplas.analysis.setup import open_stream
    from vitplas.data import transform_for

    transform = transform_for(loaded, train=False, protocol=cfg.protocol)  # as finetuning's
    train = open_stream(cfg.target, "train", transform, cfg.data_root, False)
    plastic = C.of_kind(cfg.criteria, "plasticity")
    ref = open_stream(reference, "val", transform, cfg.data_root, False) if plastic else None
    return train, ref


def reference_of(cfg: SelectConfig, modality: str) -> str:
    """The plasticity reference stream: cfg.reference, else the modality's default; a stream of
    another modality than the model's is a ConfigError."""
    from vitplas.config import ConfigError
    from vitplas.data import dataset_info

    name = cfg.reference or DEFAULT_REFERENCE[modality]
    kind = dataset_info(name).modality
    if C.of_kind(cfg.criteria, "plasticity") and kind != modality:
        raise ConfigError(
            f"reference '{name}' is {kind} but the model reads {modality}: name a {modality} "
            f"reference (e.g. reference={DEFAULT_REFERENCE[modality]})"
        )
    return name


def _data(cfg: SelectConfig, loaded):
    """(grad_batches target train batches (x, labels), plasticity pairs or None); with
    pair_lengths equal, an image target is a one-line ConfigError before any scoring."""
    from vitplas.analysis.length_pairs import stream_lengths
    from vitplas.analysis.pairs import draw_pairs
    from vitplas.config import ConfigError
    from vitplas.data import dataset_info, make_loader

    modality = getattr(loaded, "modality", "image")
    if (kind := dataset_info(cfg.target).modality) != modality:
        raise ConfigError(
            f"target '{cfg.target}' is {kind} but {loaded.spec} reads {modality}: name a "
            f"{modality} target (vitplas datasets lists each one's modality)"
        )
    reference = reference_of(cfg, modality)
    streams = _text_streams if modality == "text" else _image_streams
    train, ref = streams(cfg, loaded, reference)
    if cfg.pair_lengths == "equal":
        stream_lengths(train, cfg.target)  # images: refused, as `vitplas plasticity` refuses
    loader = make_loader(train, cfg.batch_size, shuffle=True, seed=cfg.seed)
    batches = list(itertools.islice(iter(loader), cfg.grad_batches))
    pairs = None
    if ref is not None:
        batch = min(32, cfg.pairs)
        pairs = draw_pairs(cfg.pair_lengths, ref, train, pairs=cfg.pairs, batch_size=batch,
                           seed=cfg.seed, names=(reference, cfg.target))  # fmt: skip
    return batches, pairs


def load_for(cfg: SelectConfig):
    """The model `cfg` scores, with a fresh head for its target's classes (LoadedModel)."""
    from vitplas.data import dataset_info
    from vitplas.models.build import load_configured

    num_classes = dataset_info(cfg.target).num_classes
    torch.manual_seed(cfg.seed)  # the fresh head's initialisation
    return load_configured(cfg, num_classes)


def score_config(cfg: SelectConfig, with_model: bool = False):
    """Load the model (with a fresh head) and the data `cfg` names; its ranked scores (and the
    LoadedModel, with_model=True)."""
    from vitplas.analysis.setup import resolve_device
    from vitplas.models.components import component_map

    device = resolve_device(cfg.device)
    loaded = load_for(cfg)
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
    """A finished selection's scores and picks, verified; one scored by an earlier version of
    the criteria (picks.json's criteria_version) is refused: its scores mean something else."""
    from vitplas.config import ConfigError
    from vitplas.records import read_table

    record = run.read_json("picks.json")
    version = record.get("criteria_version", 1)  # picks.json named no version before v2
    if version != C.CRITERIA_VERSION:
        raise ConfigError(
            f"{run.path} holds a selection scored by criteria version {version} (this vitplas "
            f"scores version {C.CRITERIA_VERSION}: other definitions, other split); select "
            f"into another folder (--out), or delete {run.path} to replace it"
        )
    frame = read_table(run.path, "selection.csv")
    return {"frame": frame, "picks": record["picks"]}


def compute_select(cfg: SelectConfig, run) -> Computed:
    """Score, rank and choose as `cfg` says; selection.csv and picks.json in `run`."""
    from vitplas.analysis.setup import model_checksum_of

    frame, loaded = score_config(cfg, with_model=True)
    chosen = picks(frame, cfg.budget, cfg.granularity, cfg.rule)
    write_selection(run.path, frame, chosen, cfg.budget, cfg.granularity, cfg.rule)
    checksum, checksum_of = model_checksum_of(loaded)
    manifest = {"model": loaded.description, "seed": cfg.seed, "model_checksum": checksum}
    manifest |= {"model_checksum_of": checksum_of, "criteria": list(cfg.criteria),
                 "criteria_version": C.CRITERIA_VERSION}  # fmt: skip
    result = {"budget": cfg.budget, "granularity": cfg.granularity, "rule": cfg.rule,
              "picks": chosen, "criteria_version": C.CRITERIA_VERSION}  # fmt: skip
    return Computed(result, manifest, {"frame": frame})


def write_selection(
    out, frame: pd.DataFrame, chosen: dict, budget: float, granularity: str, rule: str = "prefix"
):
    """selection.csv and picks.json in folder `out`."""
    from vitplas.runs import atomic_write_json, atomic_write_text

    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(out) / "selection.csv", frame.to_csv(index=False))
    record = {"budget": budget, "granularity": granularity, "rule": rule, "picks": chosen,
              "criteria_version": C.CRITERIA_VERSION}  # fmt: skip
    atomic_write_json(Path(out) / "picks.json", record)


def summary(
    frame: pd.DataFrame,
    chosen: dict[str, list[str]],
    budget: float,
    granularity: str,
    rule: str = "prefix",
) -> str:
    """Per criterion: its ranking (component types), the train set it picks, and why each unit
    is in or out (runs of units out for one reason are shown together)."""
    from vitplas.selection.budget import RULES

    lines = [
        f"rule: {rule} ({RULES[rule]}), each {UNIT[granularity]} against {budget:g} of the "
        "block parameters (head and final norm are trained besides)"
    ]
    warning = budget_warning(frame, budget, granularity)
    if warning:
        lines.append(warning)
    types = frame[frame["layer"].astype(str) == C.ALL]
    for crit, group in types.groupby("criterion", sort=False):
        ranking = " > ".join(group.sort_values("rank")["component"])
        direction = "high first" if C.HIGHER_FIRST[crit] else "low first"
        lines.append(f"{crit:<12} {ranking}  ({direction})")
        decided = decide(frame, crit, budget, granularity, rule)
        if chosen[crit]:
            lines.append(f"  picks train={json.dumps(chosen[crit])}")
        else:
            lines.append(f"  picks nothing: {nothing_picked(decided, budget)}")
        lines += _reasons(decided, grouped_in=granularity == "layer")
    return "\n".join(lines)


def _reasons(decided: pd.DataFrame, grouped_in: bool) -> list[str]:
    """'in'/'out' lines of decide's rows; consecutive rows out for one shared reason (ranked
    below the same unit, not scored), or in at layer granularity, make one line."""
    from vitplas.selection.budget import unit_label

    groups: list[list] = []
    for _, r in decided.iterrows():
        shared = r["reason"].startswith(("ranked below", "not scored")) or (
            grouped_in and r["picked"]
        )
        key = ("in" if r["picked"] else r["reason"]) if shared else None
        if groups and key is not None and groups[-1][0] == key:
            groups[-1][1].append(r)
        else:
            groups.append([key, [r]])
    lines = []
    for key, rows in groups:
        word = "in " if rows[0]["picked"] else "out"
        if len(rows) == 1:
            r = rows[0]
            lines.append(f"    {word} {unit_label(r):<10} rank {int(r['rank']):<3} share "
                         f"{float(r['share']):.4f}  {r['reason']}")  # fmt: skip
            continue
        names = ", ".join(unit_label(r) for r in rows)
        ranks = f"ranks {int(rows[0]['rank'])}-{int(rows[-1]['rank'])}"
        share = sum(float(r["share"]) for r in rows)
        why = f"fits: {rows[-1]['reason'].split(': ', 1)[1]}" if key == "in" else key
        lines.append(f"    {word} {names} ({ranks}, share {share:.4f}): {why}")
    return lines
