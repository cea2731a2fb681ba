"""Plasticity under reparametrisations that leave the network's function unchanged.

A family's blocks allow rescalings by any c > 0 (models.families: BlockSpec.rescale):
    norm -> linear       a norm's gain and bias times c, the weights of the linears reading its
                         output times 1/c (LN1 -> q/k/v, LN2 -> FC1): W (c u) / c = W u;
    LayerScale -> proj   gamma times c, the weight and bias of the projection whose output it
                         scales times 1/c (LS1 -> attention's proj, LS2 -> FC2).
Applied in every block, they change no output beyond float rounding, yet a ratio
||f(x) - f(y)|| / ||x - y|| of one component scales with its parameters: P(LN2) times c and
P(FC1) times 1/c (exactly, when FC1 reads LN2's output or a fixed input). So plasticity compares
components of one type across models or layers, not different types in one parametrisation,
unless the parametrisation is fixed by convention. check() shows it: for each rescaling, the
largest change of the model's output and each component's plasticity before and after, on the
same pairs.

Text models are checked as images are: the pairs are the text plasticity run's (token batches
(B, 2, L), masked ratios), and the output change is taken on the model's output at the real
tokens of the first pairs' texts (a classifier's logits; models.text.real_outputs). GPT-2 is
pre-LN: ln_1 against attn.c_attn, ln_2 against mlp.c_fc (Conv1D weights, (in, out): the whole
weight times 1/c either way). A post-norm block (BERT, RoBERTa, MiniLM, timm's ResPost) allows
no norm-against-linear rescaling: a norm's output feeds the residual stream as well as the next
linear, so a linear that absorbs 1/c leaves the residual scaled by c (tests/test_invariance_text.py
shows the output move). A longer chain that the next norm's scale invariance absorbs (LN1 x c,
FC1 x 1/c, FC2 x c; exact up to the norm's eps) is not implemented. check_run then says so in
one line and writes no table.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from scipy.stats import kendalltau
from torch import nn

from vitplas.analysis.estimate import estimate
from vitplas.models.components import ComponentMap, component_map
from vitplas.models.text import real_outputs

SCALE = 0.02  # c: e.g. LN2's gain and bias times 0.02, FC1's weight times 50
CHECK_PAIRS = 64  # pairs of a run's stream the check reads (each model reads the same ones)
OUTPUT_PAIRS = 8  # pairs of the first batch whose x and y images the output change is taken on
# the largest output change, relative to the largest |output|, that float rounding explains
# (float32 through 12 blocks: ~2e-6); above it the rescaling changed the function: refused
FUNCTION_TOL = 1e-3
ABSORBS_BIAS = ("ls1", "ls2")  # the linear produces the scaled component's input: W and b / c
COLUMNS = ["rescaling", "c", "component", "before", "after", "factor", "rank_before", "rank_after"]


@dataclass(frozen=True)
class Rescaling:
    """Component `scaled` times c in every block, its absorbing linears times 1/c."""

    scaled: str
    absorbers: tuple[str, ...]  # names of the linears' modules (for the label)
    c: float

    @property
    def label(self) -> str:
        return f"{self.scaled} x{self.c:g} / {'+'.join(self.absorbers)} x{1 / self.c:g}"


def rescalings(cmap: ComponentMap, c: float = SCALE) -> tuple[list[Rescaling], list[str]]:
    """(the rescalings this model's blocks allow, why each other norm / LayerScale has none)."""
    allowed, refused = _parts(cmap, c)
    return allowed, [f"{name} cannot be rescaled: {why}" for name, why in refused.items()]


def _parts(cmap: ComponentMap, c: float) -> tuple[list[Rescaling], dict[str, str]]:
    """(the rescalings allowed, {norm / LayerScale: why it has none})."""
    allowed, refused = [], {}
    for name in ("ln1", "ln2", "ls1", "ls2"):
        if name not in cmap.block_components:
            continue
        try:
            _, linears = cmap.rescaling_parts(0, name)
        except ValueError as err:
            refused[name] = str(err).removeprefix(f"{name} cannot be rescaled: ")
            continue
        names = tuple(dict.fromkeys(_module_name(cmap.block(0), m) for m in linears))
        allowed.append(Rescaling(name, names, c))
    return allowed, refused


def none_line(cmap: ComponentMap) -> str:
    """The one line of a model whose blocks allow no rescaling: which norms, and why."""
    by_why: dict[str, list[str]] = {}
    for name, why in _parts(cmap, SCALE)[1].items():
        by_why.setdefault(why, []).append(name)
    why = "; ".join(f"{'/'.join(names)}: {text}" for text, names in by_why.items())
    head = "invariance check: not run, no norm-against-linear rescaling keeps this model's function"
    return f"{head} ({why})"


def _module_name(block: nn.Module, module: nn.Module) -> str:
    return next(n for n, m in block.named_modules() if m is module)


def rescaled(model: nn.Module, rescaling: Rescaling) -> nn.Module:
    """A copy of `model` with `rescaling` applied in every block (an absorbing linear is an
    nn.Linear or GPT-2's Conv1D: its whole weight times 1/c, whichever its layout)."""
    model = copy.deepcopy(model)
    cmap, c = component_map(model), rescaling.c
    with torch.no_grad():
        for layer in range(cmap.depth):
            params, linears = cmap.rescaling_parts(layer, rescaling.scaled)
            for param in params:
                param.mul_(c)
            for linear in linears:
                linear.weight.div_(c)
                if rescaling.scaled in ABSORBS_BIAS and linear.bias is not None:
                    linear.bias.div_(c)
    return model


@dataclass
class InvarianceCheck:
    """table: one row per (rescaling, component) (COLUMNS); output_change: rescaling -> the
    largest |output difference| over the check's `images`; base_scale: the largest |output|;
    rankings: rescaling -> (ranking before, after, Kendall tau); refused: why a norm or
    LayerScale has no rescaling; pairs: the pairs every estimate read; images: the inputs
    the output change is taken on, `unit` ("images" or "texts")."""

    table: pd.DataFrame
    output_change: dict[str, float]
    base_scale: float
    rankings: dict[str, tuple[list[str], list[str], float]]
    refused: list[str]
    pairs: int
    images: int
    unit: str = "images"

    def to_dict(self) -> dict:
        return {
            "pairs": self.pairs,
            "images": self.images,
            "unit": self.unit,
            "output_change": self.output_change,
            "base_scale": self.base_scale,
            "rankings": {k: list(v) for k, v in self.rankings.items()},
            "refused": self.refused,
        }


def _pooled(cmap, batches, components, inputs, device, dtype) -> pd.Series:
    est = estimate(cmap, batches, components=components, inputs=inputs, device=device, dtype=dtype)
    frame = est.frame(pooled=True)
    return frame.set_index("component")["mean"].reindex(list(components))


def _ranking(means: pd.Series) -> list[str]:
    return list(means.sort_values(ascending=False, kind="stable").index)


def _outputs(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The model's output on images, or at the real tokens of a token batch (N, 2, L)."""
    with torch.inference_mode():
        return real_outputs(model, images).double()


def check(
    cmap: ComponentMap,
    batches: Sequence[tuple[torch.Tensor, ...]],
    *,
    components: Sequence[str],
    inputs: str = "embedding",
    device: torch.device | str = "cpu",
    dtype: str = "float32",
    c: float = SCALE,
) -> InvarianceCheck:
    """Plasticity (pooled over layers) of `components` on `batches` (a list of (x, y, ...) pair
    batches, read once per model) for cmap's model and for each rescaled copy, and the largest
    change of the model's output on the x and y images (texts) of the first OUTPUT_PAIRS
    pairs. A model whose blocks allow no rescaling is a ValueError (none_line)."""
    allowed, refused = rescalings(cmap, c)
    if not allowed:
        raise ValueError(none_line(cmap))
    x, y = batches[0][0][:OUTPUT_PAIRS], batches[0][1][:OUTPUT_PAIRS]
    images = torch.cat([x, y]).to(device)
    base_out = _outputs(cmap.model, images)
    base = _pooled(cmap, batches, components, inputs, device, dtype)
    rows, change, rankings = [], {}, {}
    scale = float(base_out.abs().max())
    for r in allowed:
        model = rescaled(cmap.model, r)
        change[r.label] = float((_outputs(model, images) - base_out).abs().max())
        if change[r.label] > FUNCTION_TOL * scale:
            raise RuntimeError(
                f"rescaling {r.label} changed this model's output by {change[r.label]:.3g} "
                f"(largest |output| {scale:.3g}): it is no reparametrisation of this model"
            )
        after = _pooled(component_map(model), batches, components, inputs, device, dtype)
        before_rank, after_rank = _ranking(base), _ranking(after)
        tau = kendalltau([before_rank.index(n) for n in components],
                         [after_rank.index(n) for n in components]).statistic  # fmt: skip
        rankings[r.label] = (before_rank, after_rank, float(tau))
        for name in components:
            b, a = float(base[name]), float(after[name])
            rank_b, rank_a = before_rank.index(name) + 1, after_rank.index(name) + 1
            rows.append((r.label, c, name, b, a, a / b if b else math.nan, rank_b, rank_a))
        del model
    pairs = sum(int(batch[0].shape[0]) for batch in batches)
    table = pd.DataFrame(rows, columns=COLUMNS)
    unit = "texts" if cmap.family.modality == "text" else "images"
    return InvarianceCheck(table, change, scale, rankings, refused, pairs, images.shape[0], unit)


def summary_lines(table: pd.DataFrame, facts: dict) -> list[str]:
    """The check in words: per rescaling, the output change, each component that moved by more
    than 1% (before -> after, x factor), and the ranking before -> after."""
    lines = [
        f"invariance check ({facts['pairs']} pairs, the same for every model; outputs on "
        f"{facts['images']} of their {facts.get('unit', 'images')}, largest |output| "
        f"{facts['base_scale']:.4g}):"
    ]
    for label, rows in table.groupby("rescaling", sort=False):
        before, after, tau = facts["rankings"][label]
        change = facts["output_change"][label]
        lines.append(f"  {label}: max |output change| {change:.2g} (rounding: the same function)")
        for row in rows.itertuples():
            if not math.isclose(row.factor, 1.0, rel_tol=0.01):
                lines.append(
                    f"    P({row.component}) {row.before:.4g} -> {row.after:.4g}"
                    f" (x{row.factor:.3g}), rank {row.rank_before} -> {row.rank_after}"
                )
        moved = "unchanged" if before == after else f"-> {' > '.join(after)}"
        tau_text = (
            f"Kendall tau {tau:.2f}" if math.isfinite(tau) else "one component: no Kendall tau"
        )
        lines.append(f"    ranking {' > '.join(before)} {moved} ({tau_text})")
    lines += [f"  not rescaled: {why}" for why in facts["refused"]]
    return lines


def check_run(cfg, setup, components: Sequence[str], reference, target) -> dict:
    """check() on the first min(cfg.pairs, CHECK_PAIRS) pairs of a plasticity run's stream
    (cfg: a PlasticityConfig; setup: its ModelSetup): {"table": the rows, "facts": to_dict(),
    "summary": summary_lines}; a model that allows no rescaling: no table, no pair read, the
    reasons in facts and one summary line (none_line)."""
    from vitplas.analysis.pairs import config_pairs

    allowed, refused = rescalings(setup.cmap)
    if not allowed:
        return {"table": None, "facts": {"refused": refused}, "summary": [none_line(setup.cmap)]}

    stream = config_pairs(cfg, reference, target, min(cfg.pairs, CHECK_PAIRS), False)
    batches = [tuple(t.to(setup.device) for t in batch[:2]) for batch in stream]
    found = check(
        setup.cmap,
        batches,
        components=components,
        inputs=cfg.inputs,
        device=setup.device,
        dtype=cfg.dtype,
    )
    facts = found.to_dict()
    return {"table": found.table, "facts": facts, "summary": summary_lines(found.table, facts)}
