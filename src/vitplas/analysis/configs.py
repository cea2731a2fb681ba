"""The configs of the analysis jobs (plasticity, bounds, radius, landscape): dataclasses whose
defaults are the embedded offline default. This module imports no torch, so that a command's
--help, which lists every key from these classes (vitplas.cli.keys), stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vitplas import protocol as protocols
from vitplas.config import ConfigError, at_least, check_range

# The embedded default (DESIGN.md): DINOv2 ViT-S/14, photos vs Fashion-MNIST test, ~2 min on a
# 2-core CPU. Its pooled CIs already stand apart at 128 pairs; 512 leave a wide margin.
DEFAULT_PAIRS = 512
LN_BOUNDS = ("data", "abs", "signed")  # the first is the default (analysis/bounds.py)
MHA_BOUNDS = ("data", "paper")  # the first is the default
MHA_SLICINGS = ("rows", "columns")
# the reference stream of a modality where a config names none (`vitplas select`, landscape)
DEFAULT_REFERENCE = {"image": "photos", "text": "wordnet-glosses"}


def check_bound_options(ln_bound: str, mha_bound: str, mha_slicing: str) -> None:
    """A clear error (ConfigError, a ValueError) for bad bound options, before any work."""
    for value, known, key in (
        (ln_bound, LN_BOUNDS, "ln_bound"),
        (mha_bound, MHA_BOUNDS, "mha_bound"),
        (mha_slicing, MHA_SLICINGS, "mha_slicing"),
    ):
        if value not in known:
            raise ConfigError(f"{key} '{value}' is unknown; choose one of {', '.join(known)}")
    if mha_bound == "data" and mha_slicing != "rows":
        raise ConfigError(
            f"mha_slicing '{mha_slicing}' is the original's formula only: use it with "
            "mha_bound paper (the data bound always slices heads by rows)"
        )


@dataclass
class PlasticityConfig:
    """`vitplas plasticity` settings; defaults are the embedded offline default."""

    model: str = "dinov2-s14"  # preset, timm name, HF id or ARCH@FILE (vitplas models)
    random_init: bool = False  # random weights on purpose (a baseline; the model says RANDOM INIT)
    allow_unfinished: bool = False  # a model that is a finetuning run without DONE (still
    # training, stopped) is used as it is, marked UNFINISHED in the manifest, not refused
    img_size: int | None = None  # input side in px, a multiple of the patch (None: the model's own)
    protocol: protocols.Name = protocols.DEFAULT  # preprocessing and splits: model = the
    # checkpoint's own (the default, any model); paper = the original release's (ImageNet
    # mean/std, bilinear Resize + CenterCrop, its test split)
    reference: str = "photos"  # reference stream x of the pairs (vitplas datasets)
    reference_split: str = "val"  # split of the reference stream
    target: str = "fashion-mnist"  # target dataset y of the pairs
    target_split: str = "test"  # split of the target dataset
    data_root: str | None = None  # dataset folder (None: $VITPLAS_DATA, then <VITPLAS_HOME>/data)
    download: bool = False  # download missing datasets where a download exists
    inputs: Literal["embedding", "hidden", "insitu"] = "embedding"  # embedding: every block fed
    # the embedding output (the paper); hidden: each block's own input; insitu: each component's
    # own input in the model's forward
    components: list[str] = field(default_factory=list)  # empty: every block component
    max_length: int = 128  # text models: tokens per text (truncated, padded; the original's 128)
    pair_lengths: Literal["any", "equal"] = "any"  # text models: any (pairs as drawn; a pair
    # of different real lengths has no finite MHA bound) or equal (each pair's two texts of one
    # real length, lengths only one stream has skipped: a finite MHA bound at that length)
    pairs: int = DEFAULT_PAIRS  # (reference, target) pairs to average over (the paper: 12800)
    batch_size: int = 32  # pairs per forward pass
    seed: int = 0  # seed of the pairs' order
    device: str = "auto"  # auto (cuda if available, else cpu), cpu, cuda, cuda:1 ...
    dtype: Literal["float32", "tf32", "bfloat16", "float16"] = "float32"  # compute precision of the
    # forward passes
    until_ci: float | None = None  # stop when every CI half-width < until_ci * mean
    check_every: int = 4  # batches between two sequential-stop checks
    num_workers: int = 0  # DataLoader worker processes
    bounds: bool = True  # also compute the theoretical bounds and the exceedances
    radius: float | None = None  # token radius r; None: measured on the target stream
    radius_images: int = 256  # target images the radius r is measured on
    ln_bound: Literal["data", "abs", "signed"] = "data"  # LayerNorm/RmsNorm bound: data
    # (max|gamma| / the smallest token scale of the measured pairs: holds for every pair), abs
    # (max|gamma|) or signed (the original's)
    mha_bound: Literal["data", "paper"] = "data"  # MHA bound: data (tokens within r_max, the
    # largest token norm of the pairs, query bias included: holds for every pair) or paper (the
    # paper's formula at the mean radius r: assumes every token within r and no query bias)
    mha_slicing: Literal["rows", "columns"] = "rows"  # heads of the paper's MHA formula: rows
    # (per-head rows) or columns (the original's; mha_bound paper only)
    figures: bool = True  # draw the figures (PNG + PDF)
    save_pairs: bool = False  # also keep every pair's ratios (pair, its images' dataset indices,
    # layer, component, ratio) in pairs.parquet, for custom analyses
    check_invariance: bool = False  # also apply the function-preserving rescalings the family
    # allows (norm against the next linear, LayerScale against its projection) and report how
    # far each component's plasticity and the ranking move (invariance.csv; analysis.invariance)

    def validate(self) -> None:
        if self.pairs < 1:
            raise ConfigError(f"pairs must be >= 1, got {self.pairs}")
        at_least(self, 1, "batch_size", "check_every", "radius_images", "max_length")
        if self.until_ci is not None and not 0 < self.until_ci < 1:
            raise ConfigError(f"until_ci is a fraction of the mean in (0, 1), got {self.until_ci}")
        if self.radius is not None and not self.radius > 0:
            raise ConfigError(f"radius must be > 0, got {self.radius}")
        check_bound_options(self.ln_bound, self.mha_bound, self.mha_slicing)


@dataclass
class BoundsConfig:
    """`vitplas bounds` settings. The radius is given, or measured on dataset/split."""

    model: str = "dinov2-s14"  # preset, timm name, HF id or ARCH@FILE (vitplas models)
    random_init: bool = False  # random weights on purpose (a baseline)
    allow_unfinished: bool = False  # a model that is a finetuning run without DONE (still
    # training, stopped) is used as it is, marked UNFINISHED in the manifest, not refused
    img_size: int | None = None  # input side in px, a multiple of the patch (None: the model's own)
    protocol: protocols.Name = protocols.DEFAULT  # preprocessing and splits (vitplas.protocol)
    dataset: str = "fashion-mnist"  # dataset the radius r is measured on
    split: str = "test"  # split of that dataset
    data_root: str | None = None  # dataset folder (None: $VITPLAS_DATA, then <VITPLAS_HOME>/data)
    radius: float | None = None  # token radius r (None: measured on dataset/split)
    radius_images: int = 256  # images the radius r is measured on
    batch_size: int = 32  # images per forward pass while measuring r
    max_length: int = 128  # text models: tokens per text (a plasticity run's, with --plasticity)
    inputs: Literal["embedding", "hidden", "insitu"] = "embedding"  # embedding (the paper), hidden
    # (each block's input, r per layer) or insitu (each component's own input, r at MHA's)
    components: list[str] | None = None  # components to bound (None: every block component)
    ln_bound: Literal["data", "abs", "signed"] = "data"  # LayerNorm/RmsNorm bound: data
    # (max|gamma| / smallest token scale of a plasticity run's pairs), abs (max|gamma|) or signed
    # (the original's)
    mha_bound: Literal["data", "paper"] = "data"  # MHA bound: data (tokens within r_max, query
    # bias included: no assumption) or paper (the paper's formula at r)
    r_max: float | None = None  # largest token norm the data MHA bound covers (None: the
    # plasticity run's, measured on its pairs)
    mha_slicing: Literal["rows", "columns"] = "rows"  # heads of the paper's MHA formula: rows
    # (per-head rows) or columns (the original's; mha_bound paper only)
    plasticity: str | None = None  # a plasticity run folder to divide by the bounds
    seed: int = 0  # seed of the images r is measured on, and of random_init weights
    device: str = "auto"  # auto (cuda if available, else cpu), cpu, cuda ...
    figures: bool = True  # draw the figures (PNG + PDF)

    def validate(self) -> None:
        if self.radius is not None and not self.radius > 0:
            raise ConfigError(f"radius must be > 0, got {self.radius}")
        at_least(self, 1, "radius_images", "batch_size", "max_length")
        if self.r_max is not None and not self.r_max > 0:
            raise ConfigError(f"r_max must be > 0, got {self.r_max}")
        check_bound_options(self.ln_bound, self.mha_bound, self.mha_slicing)
        if self.plasticity is not None:
            _check_plasticity_run(Path(self.plasticity), self)


def plasticity_damaged(err: Any) -> Any:
    """A DamagedRecordError of a plasticity run that another job reads, with that run's fix."""
    from vitplas.runs import DamagedRecordError

    fix = (f"recompute it (`vitplas plasticity` with its config, `--out {err.run} --repair`), "
           "or name another plasticity run")  # fmt: skip
    return DamagedRecordError(err.run, err.name, err.problem, fix=fix)


# what a plasticity run must share with the bounds it is divided by (the seed too when the
# weights are random: they are drawn from it)
SAME_AS_PLASTICITY = ("model", "random_init", "img_size", "protocol", "inputs")


def needs_measured_bounds(cfg: BoundsConfig) -> bool:
    """Whether the bounds need a plasticity run's token extremes: the data LayerNorm bound
    (s_min), or the data MHA bound without a given r_max."""
    return cfg.ln_bound == "data" or (cfg.mha_bound == "data" and cfg.r_max is None)


def _check_plasticity_run(folder: Path, cfg: BoundsConfig) -> None:
    """`folder` is a finished plasticity run (its records verified) of the same model, input
    size, protocol and inputs mode (and seed, for random weights); else a ConfigError naming
    the difference. Its tables are checked against the bounds' model when they are read."""
    from vitplas.records import read_json, read_yaml
    from vitplas.runs import DamagedRecordError, RunNotFinishedError

    what = f"the plasticity run '{folder}'"
    try:
        job = read_json(folder, "manifest.json").get("job")
        measured = read_yaml(folder) or {}
    except RunNotFinishedError:
        raise ConfigError(
            f"{what} is not a finished run (no DONE: still going, stopped, or no run folder); "
            "finish it (rerun its command) or name a finished plasticity run"
        ) from None
    except DamagedRecordError as err:
        raise plasticity_damaged(err) from None
    if job != "plasticity" or not (folder / "plasticity.csv").is_file():
        raise ConfigError(f"'{folder}' is a {job or 'non-vitplas'} run, not a plasticity run")
    keys = SAME_AS_PLASTICITY + (("seed",) if cfg.random_init else ())
    other = [k for k in keys if measured.get(k) != getattr(cfg, k)]
    if other:
        details = ", ".join(
            f"{k}: {measured.get(k)!r} there, {getattr(cfg, k)!r} here" for k in other
        )
        raise ConfigError(f"{what} measured another setting ({details}); give the bounds the "
                          "same settings, or name a plasticity run of these")  # fmt: skip
    if needs_measured_bounds(cfg) and not measured.get("bounds", True):
        raise ConfigError(
            f"{what} has no bounds.csv (run with --no-bounds), so no token scales or norms for "
            "the data bounds: rerun it with bounds, or pass --ln-bound abs|signed and "
            "--mha-bound paper"
        )


@dataclass
class RadiusConfig:
    """The settings of a `vitplas radius` run (its config.yaml; checked like any run's)."""

    model: str = "dinov2-s14"  # model spec (preset, timm name, ARCH@FILE, run folder, HF id)
    random_init: bool = False  # random weights on purpose (never a silent fallback)
    allow_unfinished: bool = False  # a model that is a finetuning run without DONE (still
    # training, stopped) is used as it is, marked UNFINISHED in the manifest, not refused
    img_size: int | None = None  # input size (None: the model's own)
    dataset: str = "fashion-mnist"  # dataset the radius r is measured on
    split: str = "test"  # split of that dataset
    images: int = 256  # images (or texts: their real tokens) r is averaged over
    batch_size: int = 32  # images per forward pass
    max_length: int = 128  # text models: tokens per text (truncated, padded)
    inputs: Literal["embedding", "hidden", "insitu"] = "embedding"  # embedding output, each
    # block's input, or MHA's own input in the model's forward (one r per layer for both)
    device: str = "auto"  # auto, cpu or cuda
    seed: int = 0  # seed of the image sample and of random_init weights
    protocol: protocols.Name = protocols.DEFAULT  # preprocessing: the checkpoint's, or the
    # original release's (Resize 224 + CenterCrop 224, ImageNet mean/std)


@dataclass
class LandscapeConfig:
    """`vitplas landscape` settings; defaults are the offline default (see PRESETS['paper'])."""

    model: str = "dinov2-s14"  # preset, timm name, HF id or ARCH@FILE (vitplas models)
    random_init: bool = False  # random weights on purpose (a baseline)
    allow_unfinished: bool = False  # a model that is a finetuning run without DONE (still
    # training, stopped) is used as it is, marked UNFINISHED in the manifest, not refused
    img_size: int | None = 42  # input side in px (None: the model's own); not read for a text set
    max_length: int = 128  # a text set: each text tokenised by the model's tokenizer to this
    # many tokens (truncated, padded, masked), as finetuning's max_length; not read for images
    blocks: int | None = 1  # keep the first N blocks (None: all; the paper); BERT's encoder
    # layers, GPT-2's h for a text model
    dataset: str = "fashion-mnist"  # SGD steps and the loss batch: its train split; a text set
    # (rotten-tomatoes, ...) needs a text model (minilm-l6, a BERT / GPT-2 folder)
    reference: str | None = None  # rate of change: pairs (reference [val], dataset [test])
    # (None: photos for an image set, wordnet-glosses for a text set)
    data_root: str | None = None  # dataset folder (None: $VITPLAS_DATA, then <VITPLAS_HOME>/data)
    layer: int = 0  # the block whose components are studied
    components: list[str] = field(default_factory=lambda: ["ln1", "fc1", "mha"])  # components of
    # that block, one pair of surfaces each
    steps: int = 20  # SGD steps of the trajectory
    lr: float = 0.01  # SGD learning rate of the trajectory
    momentum: float = 0.9  # SGD momentum
    grad_clip: float | None = 1.0  # total gradient norm, as the finetuning protocol clips
    batch_size: int = 16  # images (texts) per SGD step
    grid: int = 20  # grid points per side of the plane (grid x grid evaluations)
    span: float = 0.5  # the grid covers [-span, span] along both PCA directions
    eval_images: int = 16  # training images (texts) of the fixed loss batch
    pairs: int = 16  # fixed (reference, dataset) pairs of the rate of change
    seed: int = 0  # seed of the head, the batches and the pairs
    device: str = "auto"  # auto (cuda if available, else cpu), cpu, cuda ...
    threads: int | None = 1  # torch CPU threads for the run: its tensors are small, and more
    # threads mostly wait for each other (5x the CPU time on a shared 2-core CPU); None: torch's
    protocol: protocols.Name = protocols.DEFAULT  # preprocessing and splits: the checkpoint's
    # own (model), or the original release's (paper; vitplas.protocol)

    def validate(self) -> None:
        at_least(self, 2, "steps", "grid")
        at_least(self, 1, "max_length")
        if self.reference is None:  # resolved here: the run's config names the stream it read
            from vitplas.data import dataset_info

            self.reference = DEFAULT_REFERENCE[dataset_info(self.dataset).modality]
        for key in ("span", "lr"):
            check_range(key, getattr(self, key), getattr(self, key) > 0, "> 0")
        if self.blocks is not None and not 0 <= self.layer < self.blocks:
            raise ConfigError(f"layer {self.layer} is not among the first {self.blocks} blocks")


# The original's setup: ViT-B/16 in21k, block 0, LN1/FC1/MHA, 20 x 20 grid over +-0.5, 20 steps.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(
        model="vit-b16-in21k",
        img_size=224,
        blocks=None,
        dataset="cifar10",
        reference="imagenet",
        grid=20,
        span=0.5,
        steps=20,
        batch_size=64,
        eval_images=256,
        pairs=256,
        protocol="paper",
        threads=None,
    ),
    "offline": {},
}
