"""The one place for plot style: colours and line styles per component, fonts, sizes, saving
as PNG + PDF.

Every figure is built inside `plt.rc_context(RC)` (`new_figure` and `figure` open it, `styled`
keeps it for a builder's whole body), so every text of every figure takes its size from RC:
no builder passes a font size. Components that share a plot never share a look: the block
components have Dark2 colours and solid lines, the model-level ones (embedding, final norm,
head) their own colours and dashes, and each component its own marker shape (`line_style`), so
that a line drawn exactly on another still shows beneath it.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files

import matplotlib.pyplot as plt

from vitplas.runs import atomic_write_bytes

COMPONENT_COLORS = {
    "mha": "#1b9e77",
    "fc1": "#d95f02",
    "fc2": "#7570b3",
    "ln2": "#e7298a",
    "ln1": "#66a61e",
    "ls1": "#e6ab02",
    "ls2": "#a6761d",
    "all": "#444444",
    "emb": "#1f78b4",
    "norm": "#000000",
    "head": "#e31a1c",
}
# dashes tell the model-level components from the block components (solid)
COMPONENT_DASHES = {"emb": "--", "norm": ":", "head": "-."}
# one marker shape per component, the same in every panel: lines drawn on each other still
# show both shapes at their points
COMPONENT_MARKERS = {
    "mha": "o", "fc1": "s", "fc2": "D", "ln2": "^", "ln1": "v", "ls1": "P", "ls2": "*",
    "all": "h", "emb": "X", "norm": "p", "head": "d",
}  # fmt: skip
COMPONENT_LABELS = {
    "mha": "MHA",
    "fc1": "FC1",
    "fc2": "FC2",
    "ln2": "LN2",
    "ln1": "LN1",
    "ls1": "LS1",
    "ls2": "LS2",
    "all": "Full",
    "emb": "Embedding",
    "norm": "Final norm",
    "head": "Head",
}
RC = {
    "figure.dpi": 120,
    "savefig.dpi": 150,
    "font.size": 10,
    "figure.titlesize": 11,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
}
# Box medians: visible on every component's fill colour (passed to boxplot: an rc setting
# would apply only to boxes drawn inside the rc context, which builders leave)
MEDIAN_PROPS = {"color": "black"}


SEPARATOR = " · "  # between the facts of a figure's identity line


def identity(facts) -> str:
    """One line naming what a figure measured (model, data, inputs mode, protocol, pairs):
    the non-empty facts joined by SEPARATOR, in the order given. It goes under the title, so
    two figures of different measurements never read alike."""
    return SEPARATOR.join(str(f) for f in facts if f)


def titled(what: str, facts) -> str:
    """`what`, then the identity line below it when there is one."""
    line = identity(facts)
    return f"{what}\n{line}" if line else what


def color(component: str) -> str:
    return COMPONENT_COLORS.get(component, "#333333")


# train sets that are not one component (a criterion's pick, a rival): colours apart from the
# components' and dashed lines, given in the order a figure lists them
OTHER_COLORS = ("#1f77b4", "#8c564b", "#17becf", "#bcbd22", "#9467bd", "#7f7f7f", "#ff7f0e",
                "#2ca02c", "#d62728")  # fmt: skip
OTHER_MARKERS = ("o", "s", "D", "^", "v", "P", "*", "X", "h", "p")


def set_styles(names: Iterable[str]) -> dict[str, dict]:
    """{train set: keyword arguments of `ax.plot`}: a component its own colour and marker on a
    solid line, every other set (a pick, a rival) the next of OTHER_COLORS and OTHER_MARKERS on a
    dashed line, so that no two sets of one figure look alike (colours and markers cycle apart
    beyond 9 others)."""
    out, others = {}, 0
    for name in dict.fromkeys(names):
        if name in COMPONENT_COLORS:
            marker = COMPONENT_MARKERS.get(name, "o")
            out[name] = {"color": COMPONENT_COLORS[name], "marker": marker, "linestyle": "-"}
            continue
        color = OTHER_COLORS[others % len(OTHER_COLORS)]
        marker = OTHER_MARKERS[others % len(OTHER_MARKERS)]
        out[name] = {"color": color, "marker": marker, "linestyle": "--"}
        others += 1
    return out


def label(component: str) -> str:
    return COMPONENT_LABELS.get(component, component)


def line_style(component: str) -> dict:
    """Keyword arguments of `ax.plot` for a component's line: its colour, dashes and marker
    shape, the same in every figure and panel (a line drawn exactly on another leaves that
    one's marker shape visible around its own). One line width for all: a wider line would
    read as a more important one."""
    return {
        "color": color(component),
        "ls": COMPONENT_DASHES.get(component, "-"),
        "marker": COMPONENT_MARKERS.get(component, "."),
        "ms": 6,
        "lw": 1.8,
        "label": label(component),
    }


def styled(builder: Callable) -> Callable:
    """Run a figure builder inside the style's rc context, so the texts it adds after
    `new_figure` (titles, labels, legends) take RC's sizes too, and pin its tick label sizes
    (ticks drawn later, say in a notebook outside the context, keep them)."""

    @functools.wraps(builder)
    def inside(*args, **kwargs):
        with plt.rc_context(RC):
            fig = builder(*args, **kwargs)
        for ax in fig.axes:  # ticks are made again at each draw: pin their size, in or out of RC
            ax.tick_params(axis="x", which="both", labelsize=RC["xtick.labelsize"])
            ax.tick_params(axis="y", which="both", labelsize=RC["ytick.labelsize"])
        return fig

    return inside


def note(fig, text: str) -> None:
    """A note under the figure (what is not drawn, and why), in the style's small size."""
    fig.text(0.01, 0.0, text, ha="left", va="top", fontsize="small", wrap=True)


@contextmanager
def figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6.0, 4.0)) -> Iterator:
    """A styled (fig, axes) pair; closed on exit so long sweeps do not leak figures."""
    with plt.rc_context(RC):
        fig, axes = plt.subplots(nrows, ncols, figsize=size, squeeze=False)
        try:
            yield fig, axes if nrows * ncols > 1 else axes[0, 0]
        finally:
            plt.close(fig)


def new_figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6.0, 4.0), **kw):
    """A styled (fig, axes (nrows, ncols) array) left open: builders return it, `write` saves
    and closes it, a notebook shows it."""
    with plt.rc_context(RC):
        return plt.subplots(nrows, ncols, figsize=size, squeeze=False, **kw)


def write(fig, stem: str | Path) -> list[Path]:
    """Save an open figure as stem.png + stem.pdf, then close it; returns both paths."""
    try:
        with plt.rc_context(RC):
            return save(fig, stem)
    finally:
        plt.close(fig)


def integer_ticks(ax) -> None:
    """Whole-number ticks on x (layers, block indices)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def legend_outside(fig, axes, order=None) -> None:
    """One legend for the figure, right of the last axes, never over the data: every label
    of every panel once, in `order` (labels) when given, else as first drawn."""
    entries: dict[str, object] = {}
    for ax in axes.flat:
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(text, handle)
    names = list(entries)
    if order is not None:
        names = [n for n in order if n in entries] + [n for n in names if n not in order]
    if names:
        fig.legend([entries[n] for n in names], names, loc="center left",
                   bbox_to_anchor=(1.0, 0.5))  # fmt: skip


def save(fig, stem: str | Path) -> list[Path]:
    """Save `fig` as stem.png and stem.pdf; returns both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    fig.tight_layout()
    for path in paths:  # through an atomic write: a full disk names the file, leaves no stub
        buffer = io.BytesIO()
        fig.savefig(buffer, format=path.suffix[1:], bbox_inches="tight")  # keeps a legend
        atomic_write_bytes(path, buffer.getvalue())  # placed outside the axes
    return paths
