"""The data-driven criteria: gradients at the start of finetuning, and FPS's forward scores.

Gradients are taken one image at a time (a per-sample loop: a forward and a backward of a
1-image batch, in eval mode, so that no dropout draw enters), because the empirical Fisher is
the mean of per-image squared gradients, not the square of a batch's mean gradient (which is
smaller by a factor that depends on the batch size and on the component). The loop keeps
memory fixed by the model: per parameter one float32 sum of g_s (for g_bar), and per unit one
float64 scalar sum of ||g_s||^2; S images cost S small backward passes (about the CPU time of
one batched pass of S images at one thread).

FPS (arXiv 2510.27359) scores a weight by |w| times the magnitude of the input it multiplies,
averaged over the data: I(W_jk) = |W_jk| E|a_k| for a Linear's weight (a: its input, E over
images and tokens), I(gamma_k) = |gamma_k| E|xhat_k| = E|y_k - beta_k| for an elementwise gain
(a norm's y = gamma * xhat + beta, a layer scale's y = gamma * x: read from the output, so any
normalisation works). Biases (whose input is the constant 1) are left out. A unit's score is the
mean of I over its weights and gains; a component type's, over all its layers' (the pooled
mean). A weight of another module type gets NaN and says so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vitplas.models.components import ComponentMap
from vitplas.models.hooks import is_hf_conv1d
from vitplas.models.text import forward_logits, is_token_batch
from vitplas.selection.criteria import (
    ALL,
    BY_NAME,
    Sums,
    Unit,
    counts,
    has_matrix,
    is_matrix,
    of_kind,
    row,
    unit_parameters,
)

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]  # (images (B, C, H, W) or tokens
# (B, 2, L), labels (B,))


def gradient_scores(
    cmap: ComponentMap, batches: Batches, criteria: Sequence[str], device="cpu"
) -> list[dict]:
    """The gradient criteria of `criteria` (module docstring) from the images of `batches`,
    through the model's fresh head; nothing is left in .grad, requires_grad is restored."""
    wanted = of_kind(criteria, "gradient")
    if not wanted:
        return []
    units = unit_parameters(cmap)
    model = cmap.model
    tensors = [p for ps in units.values() for _, p in ps]
    g_sum = [torch.zeros_like(p, dtype=torch.float32) for p in tensors]  # float64 copies of
    # every gradient would cost more than its backward pass
    f_sum = {u: 0.0 for u in units}
    slots = _slots(units)
    flags = [p.requires_grad for p in model.parameters()]
    was_training, images_seen = model.training, 0
    model.eval()
    try:
        for p in model.parameters():  # gradients of the units' parameters only
            p.requires_grad_(False)
        for p in tensors:
            p.requires_grad_(True)
        for images, labels in batches:
            for x, y in zip(images, labels, strict=True):
                logits = forward_logits(model, x[None].to(device)).float()  # (1, classes)
                loss = F.cross_entropy(logits, torch.as_tensor(y).view(1).to(device))
                grads = torch.autograd.grad(loss, tensors)
                squares = [float(torch.dot(g.flatten(), g.flatten())) for g in grads]
                for total, g in zip(g_sum, grads, strict=True):
                    total.add_(g.float())
                for u, idx in slots.items():
                    f_sum[u] += sum(squares[i] for i in idx)
                images_seen += 1
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    if images_seen == 0:
        raise ValueError("no images were given to the gradient criteria")
    sums = {}
    for u, idx in slots.items():
        g2 = sum(float((g_sum[i].double() / images_seen).pow(2).sum()) for i in idx)
        w2 = sum(float(tensors[i].detach().double().pow(2).sum()) for i in idx)
        sums[u] = {"g2": g2, "w2": w2, "f": f_sum[u] / images_seen}
    return _pooled_rows(wanted, units, sums)


def _slots(units: dict[Unit, list]) -> dict[Unit, list[int]]:
    """Per unit, the positions of its parameters in the flat list of all units' parameters."""
    out, i = {}, 0
    for u, ps in units.items():
        out[u] = list(range(i, i + len(ps)))
        i += len(ps)
    return out


def _pooled_rows(names: Sequence[str], units: dict[Unit, list], sums: dict[Unit, Sums]):
    """Rows of each criterion: per unit its formula of the unit's sums (n = its size), per
    component type the formula of the sums pooled over its layers."""
    n, mat = counts(units), has_matrix(units)
    rows = []
    for name in names:
        formula = BY_NAME[name].formula
        types: dict[str, Sums] = {}
        for (layer, comp), s in sums.items():
            s = {**s, "n": n[(layer, comp)]}
            rows.append(row(name, layer, comp, formula(s), s["n"], mat[(layer, comp)]))
            acc = types.setdefault(comp, dict.fromkeys(s, 0.0))
            for k in acc:
                acc[k] += s[k]
        for comp, s in types.items():
            layers = [u for u in units if u[1] == comp]
            rows.append(row(name, ALL, comp, formula(s), int(s["n"]), any(mat[u] for u in layers)))
    return rows


# ---- FPS ------------------------------------------------------------------------------------
def fps_scores(cmap: ComponentMap, batches: Batches, device="cpu") -> list[dict]:
    """FPS per unit and per component type (module docstring), forward only, from `batches`."""
    units = unit_parameters(cmap)
    modules = dict(cmap.model.named_modules())
    stats, notes, hooks = {}, {}, []
    real: list[torch.Tensor | None] = [None]  # the batch's real-token mask (B, L), text only
    for u, ps in units.items():
        for name, param in ps:
            if name.endswith("bias"):
                continue
            owner, _, attr = name.rpartition(".")
            reader = _reader(modules.get(owner), attr, param, name)
            if isinstance(reader, str):
                notes[u] = reader
                continue
            if reader is not None:
                cell = stats.setdefault((u, name), [0.0, 0])  # sum of |a| per input, count
                hooks.append(modules[owner].register_forward_hook(_hook(reader, cell, real)))
    model = cmap.model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for images, _ in batches:
                images = images.to(device)
                real[0] = images[:, 1].bool() if is_token_batch(images) else None
                forward_logits(model, images)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    transposed = {name for (_u, name) in stats if _is_conv1d(modules, name)}
    return _fps_rows(units, stats, notes, transposed)


def _reader(module: nn.Module | None, attr: str, param: torch.Tensor, name: str):
    """How to read a weight's input magnitudes from its module's forward: ('input', W) for a
    Linear's weight, ('gain', bias) for an elementwise gain; a string says why it cannot."""
    if isinstance(module, nn.Linear) and attr == "weight":
        return ("input", None)
    if is_hf_conv1d(module) and attr == "weight":  # GPT-2: y = x @ W + b, W (in, out)
        return ("input_t", None)
    if param.ndim == 1 and module is not None:
        own = dict(module.named_parameters(recurse=False))
        bias = own.get("bias")
        alone = set(own) <= {attr, "bias"} and sum(1 for _ in module.parameters()) == len(own)
        if alone and (bias is None or bias.shape == param.shape):
            return ("gain", bias)
        return f"fps: {name} is not the gain of an elementwise module (norm, layer scale)"
    if is_matrix(name, param):
        return f"fps: {name} belongs to a {type(module).__name__}, not a Linear"
    return None  # another tensor (a position table): not a weight FPS scores


def _hook(reader, cell, real):
    kind, bias = reader

    def hook(module, args, output):
        if kind in ("input", "input_t"):
            a = args[0].detach().abs().double()  # (..., in)
        else:
            y = output.detach().double()
            a = (y - bias.detach().double()).abs() if bias is not None else y.abs()  # (..., D)
        mask = real[0]
        if mask is not None and a.shape[:2] == mask.shape:
            a = a[mask]  # (real tokens, D): text, pad positions left out
        flat = a.reshape(-1, a.shape[-1])
        cell[0] = cell[0] + flat.sum(0)
        cell[1] += flat.shape[0]

    return hook


def _is_conv1d(modules: dict[str, nn.Module], name: str) -> bool:
    return is_hf_conv1d(modules.get(name.rpartition(".")[0]))


def _fps_rows(units, stats, notes, transposed=frozenset()) -> list[dict]:
    n, mat = counts(units), has_matrix(units)
    totals: dict[Unit, list[float]] = {u: [0.0, 0] for u in units}  # sum of I, weights scored
    params = {name: p for ps in units.values() for name, p in ps}
    for (u, name), (abs_sum, tokens) in stats.items():
        if tokens == 0:
            notes.setdefault(u, f"fps: {name}'s module was not run by the forward pass")
            continue
        mean_a = abs_sum / tokens  # (in,) or (D,)
        w = params[name].detach().double().abs()
        w = w.T if name in transposed else w  # a Conv1D's (in, out) as a Linear's (out, in)
        if mean_a.shape[0] != w.shape[-1]:
            notes.setdefault(u, f"fps: {name}'s module output is not elementwise in it")
            continue
        totals[u][0] += float((w.sum(0) * mean_a).sum()) if w.ndim == 2 else float(mean_a.sum())
        totals[u][1] += w.numel()
    rows = []
    for u, (total, k) in totals.items():
        score = total / k if k and u not in notes else math.nan
        rows.append(row("fps", u[0], u[1], score, n[u], mat[u], notes.get(u, "")))
    for comp in dict.fromkeys(c for _, c in units):
        layers = [u for u in units if u[1] == comp]
        bad = [notes[u] for u in layers if u in notes]
        total, k = (sum(totals[u][i] for u in layers) for i in (0, 1))
        score = total / k if k and not bad else math.nan
        rows.append(row("fps", ALL, comp, score, sum(n[u] for u in layers),
                        any(mat[u] for u in layers), bad[0] if bad else ""))  # fmt: skip
    return rows
