"""FinetuneConfig: every knob of one component-wise finetuning run.

The dataclass defaults are the paper's recipe (PAPER.md section 3): SGD with momentum 0.9,
no weight decay, batch 512, 2,000 linear warmup steps then cosine to 0, gradient-norm clip 1,
ViT-B/16 pretrained on ImageNet-21k at 224 px. A preset YAML states only what differs; the
paper's presets (configs/paper/) also state `protocol: paper`.

`protocol` bundles the recipe details where the original release and a model-following
default differ (PAPER.md section 7; README "Where the paper's protocol is questionable").
The plain default is `model`, right for any checkpoint; `paper` reproduces the original:

    item             paper (the original)                    model
    preprocessing    ImageNet mean/std, bilinear, Resize +   the checkpoint's mean/std,
                     CenterCrop at crop 1                    interpolation and crop_pct
    warmup           lr * k / W (update 0 uses lr 0)         lr * (k + 1) / W
    new head         torch.nn.Linear's default init          timm's (trunc normal 0.02, bias 0)
    amp: auto        float32 (bf16 / tf32: faster choices)   bf16 autocast on CUDA
    CIFAR-10-C,      NumPy global seed 42 permutation,       our fixed generator (splits.py)
    DomainNet test   first 80% train
    val_split: auto  seeded (random_split with the run's     fixed (never moves with the seed)
                     seed: moves with the seed)

YAML presets may name a parent with `base: other.yaml` (a path relative to the preset); the
parent's keys are merged first. Strings like `1e-3` (YAML 1.1 reads them as strings) are
accepted for float fields.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from vitplas import protocol as protocols
from vitplas.config import (
    ConfigError,
    at_least,
    check_range,
    config_from_dict,
    parse_override,
    read_yaml,
    set_dotted,
)
from vitplas.device import default_workers
from vitplas.training.options import LoraOptions, SelectOptions

if TYPE_CHECKING:
    from vitplas.data.splits import SplitPlan


@dataclass
class FinetuneConfig:
    """One finetuning run. `train` names what is trained (`all` = full finetuning)."""

    # what
    model: str = "vit-b16-in21k"  # preset, timm name, HF id or ARCH@FILE (vitplas models)
    random_init: bool = False  # True only for baselines/tests: the model says "RANDOM INIT"
    allow_unfinished: bool = False  # a model that is a finetuning run without DONE (still
    # training, stopped) is used as it is, marked UNFINISHED in the manifest, not refused
    dataset: str = "cifar10"  # dataset name (vitplas datasets)
    data_root: str | None = None  # dataset folder (None: $VITPLAS_DATA, then <VITPLAS_HOME>/data)
    download: bool = False  # download a missing dataset where a download exists
    skip_unreadable: bool = False  # leave out image files that cannot be decoded (counted in
    # the manifest, one warning) instead of stopping with an error naming them
    train: list[str] = field(default_factory=lambda: ["mha"])  # what is trained besides head and
    # norm: components (mha, fc1, ln1, ...; all = full finetuning), mha@8-11, mha+fc1, lora,
    # lntuning, bitfit, auto[:criterion[:budget]] (grammar: vitplas.training.trainsets)
    select: SelectOptions = field(default_factory=SelectOptions)  # how train=[auto] chooses
    lora: LoraOptions = field(default_factory=LoraOptions)  # options of train=[lora]
    train_per_class: int | None = None  # few-shot: k train images per class (a fixed draw)
    train_head: bool = True  # train the new classification head (the paper: always)
    train_norm: bool = True  # train the final LayerNorm (the paper: always)

    # inputs
    img_size: int = 224  # input side in px
    protocol: protocols.Name = protocols.DEFAULT  # the model's preprocessing (model), or the
    # original's (paper): every item in vitplas.protocol
    val_split: Literal["auto", "fixed", "seeded"] = "auto"  # auto: seeded (paper), fixed (model)
    augment: Literal["cpu", "device"] = "cpu"  # where RandomResizedCrop + flip run
    load_size: int | None = None  # augment=device: uint8 size the loader yields (None = img_size;
    # e.g. 32 for CIFAR: the CPU only decodes, the GPU crops and resizes to img_size)
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # training crops
    # (RandomResizedCrop): area as a fraction of the image, uniform in [min, max]
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])  # training crops:
    # aspect ratio (width / height), log-uniform in [min, max]
    hflip: bool = True  # training images flipped left-right with probability 0.5
    # (img_size, load_size, crop_scale, crop_ratio, hflip: images only, not read for a text set)
    max_length: int = 128  # a text set: every text tokenised by the model's tokenizer to this
    # many tokens (truncated, padded, masked); not read for an image set

    # optimisation
    optimizer: Literal["sgd", "adamw"] = "sgd"  # sgd (the paper) or adamw
    lr: float = 0.01  # peak learning rate
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 0.0  # L2 weight decay
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    batch_size: int = 512  # global batch (all processes, all accumulation steps)
    micro_batch_size: int | None = None  # per process; None = no accumulation
    steps: int = 10_000  # optimisation steps
    warmup_steps: int = 2_000  # linear warmup steps, then cosine to 0
    grad_clip: float | None = 1.0  # clip of the total gradient norm (None: no clipping)

    # evaluation, logging, checkpoints
    eval_every: int = 500  # steps between two validations (and checkpoints)
    eval_at_end: bool = False  # validate after the last step too when `steps` is not a
    # multiple of `eval_every` (the original validates at multiples only; a run shorter than one
    # period always validates)
    ckpt_every: int | None = None  # None = at every evaluation
    keep_checkpoints: int = 2  # step checkpoints kept (the best one is kept besides)
    keep_state: bool = False  # keep the resumable train state (step folders) after DONE
    diverge_factor: float | None = 10.0  # stop as diverged when the loss stays above this x the
    # first step's loss for diverge_window steps after warmup, or is above it at the last step
    # (null: only NaN/inf stops a run)
    diverge_window: int = 100  # steps the loss must stay above diverge_factor x its first value
    log_every: int = 10  # steps between two metrics lines
    eval_batch_size: int | None = None  # None = micro batch (or batch) size
    max_eval_samples: int | None = None  # cap val/test size (smoke runs); None = all
    tensorboard: bool = True  # also write TensorBoard event files

    # reproducibility and hardware
    seed: int = 0  # seed of init, data order, augmentation and (seeded) val split
    num_workers: int = 4  # DataLoader worker processes
    device: str = "auto"  # auto = cuda if available, else cpu
    amp: Literal["auto", "bf16", "tf32", "none"] = "auto"  # auto: float32 under protocol paper
    # (the original); bf16 autocast on cuda under model. bf16 / tf32 (TF32 matmuls on cuda):
    # faster on a GPU, not the original's numerics (vitplas.device). validate() resolves
    # auto, so the run folder's config states what ran
    compile: bool = False  # torch.compile the model
    deterministic: bool = False  # torch deterministic algorithms (exact resume on GPU)

    def validate(self) -> None:
        """Cross-field checks; a failure says what to change."""
        positive = ("batch_size", "steps", "eval_every", "log_every", "img_size", "max_length")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.train:
            raise ConfigError("train is empty; name components (e.g. train=[mha]) or train=[all]")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ConfigError(
                f"warmup_steps={self.warmup_steps} must be in [0, steps={self.steps}]; "
                "set warmup_steps=... too when shortening a run"
            )
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"grad_clip must be positive or null, got {self.grad_clip}")
        _check_crops(self.crop_scale, self.crop_ratio)
        if len(self.betas) != 2:
            raise ConfigError(f"betas must hold two numbers, got {self.betas}")
        if self.micro_batch_size is not None and (
            self.micro_batch_size <= 0 or self.batch_size % self.micro_batch_size
        ):
            raise ConfigError(
                f"micro_batch_size={self.micro_batch_size} must divide the per-process "
                f"batch (batch_size={self.batch_size} / number of processes)"
            )
        if self.diverge_factor is not None and self.diverge_factor <= 1:
            raise ConfigError(f"diverge_factor must be > 1 or null, got {self.diverge_factor}")
        if self.diverge_window < 1:
            raise ConfigError(f"diverge_window must be >= 1, got {self.diverge_window}")
        if self.keep_checkpoints < 1:
            raise ConfigError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.ckpt_every is not None and self.ckpt_every <= 0:
            raise ConfigError(f"ckpt_every must be positive or null, got {self.ckpt_every}")
        recipe = protocols.get(self.protocol)
        if self.amp == "auto":
            self.amp = recipe.amp_auto
        if self.val_split == "auto":
            self.val_split = recipe.val_split
        from vitplas.training.trainsets import parse_train

        try:
            self.train = parse_train(self.train)
        except ValueError as err:
            raise ConfigError(f"train: {err}") from err
        if self.train_per_class is not None and self.train_per_class < 1:
            raise ConfigError(f"train_per_class must be >= 1 or null, got {self.train_per_class}")
        budget = self.select.budget
        check_range("select.budget", budget, 0 < budget <= 1, "a fraction in (0, 1]")
        at_least(self.lora, 1, "r", "alpha", prefix="lora.")
        dropout = self.lora.dropout
        check_range("lora.dropout", dropout, 0 <= dropout < 1, "a probability in [0, 1)")

    @property
    def warmup(self) -> str:
        """lr_at's warmup rule: the original's from lr 0 (paper), or one step ahead (model)."""
        return protocols.get(self.protocol).warmup

    def split_plan(self) -> SplitPlan:
        """How test and val are carved (data.splits): the original's under protocol paper."""
        from vitplas.data.splits import plan_for

        return plan_for(self.protocol, self.val_split, self.seed)

    @property
    def validates_at_end(self) -> bool:
        """Validate after the last step though it is no multiple of eval_every: when asked,
        or when the run is shorter than one period (a best checkpoint must exist)."""
        return self.eval_at_end or self.steps < self.eval_every

    @property
    def checkpoint_every(self) -> int:
        return self.ckpt_every or self.eval_every

    def run_name(self) -> str:
        """A short readable name: dataset-train-lr-seed."""
        return f"{self.dataset}-{'+'.join(self.train)}-lr{self.lr:g}-s{self.seed}"


@dataclass
class ProbeConfig:
    """A linear-probe study of one model on one dataset."""

    model: str = "vit-b16-in21k"  # preset, timm name, HF id or ARCH@FILE (vitplas models)
    random_init: bool = False  # random weights on purpose (a baseline)
    allow_unfinished: bool = False  # a model that is a finetuning run without DONE (still
    # training, stopped) is used as it is, marked UNFINISHED in the manifest, not refused
    dataset: str = "cifar10"  # dataset name (vitplas datasets)
    data_root: str | None = None  # dataset folder (None: $VITPLAS_DATA, then <VITPLAS_HOME>/data)
    skip_unreadable: bool = False  # leave out image files that cannot be decoded (counted in
    # the manifest, one warning) instead of stopping with an error naming them
    img_size: int = 224  # input side in px (an image set; not read for a text set)
    max_length: int = 128  # a text set: every text tokenised by the model's tokenizer to this
    # many tokens (truncated, padded, masked), as finetuning's; not read for an image set
    protocol: protocols.Name = protocols.DEFAULT  # preprocessing and splits: model (the
    # checkpoint's) or paper (the original's, images only; module docstring, vitplas.protocol)
    layers: list[int] | None = None  # None = every block
    components: list[str] = field(default_factory=lambda: ["all"])  # all = every one + block
    pool: Literal["mean", "cls"] = "mean"  # token pooling of a feature: mean over tokens, or the
    # cls token (token 0); a text set: over its real tokens only (attention mask 1), cls the
    # one the family's classifier reads: BERT's first ([CLS]), GPT-2's last real token
    C: float = 1.0  # inverse L2 strength, as scikit-learn's
    backend: Literal["torch", "sklearn"] = "torch"  # logistic regression by torch (L-BFGS) or
    # scikit-learn
    max_iter: int | None = None  # None: 5000 under protocol paper (the original's), else 1000
    max_train: int | None = None  # a fixed random subset (seed) of the train split
    max_test: int | None = None  # a fixed random subset of the test split (None: all)
    batch_size: int = 128  # images per forward pass
    num_workers: int = field(default_factory=default_workers)  # DataLoader worker processes
    # (default: what this machine's CPUs can feed, at most 4)
    device: str = "auto"  # auto (cuda if available, else cpu), cpu, cuda ...
    amp: Literal["auto", "bf16", "none"] = "none"  # features in float32 by default: the probe
    # is the baseline of every relative gain (auto/bf16: bf16 autocast on CUDA, faster, features
    # rounded to 8 mantissa bits)
    seed: int = 0  # seed of the subsets and (paper) the augmentation
    max_feature_gb: float = 4.0  # features held at once; more points = more passes

    def validate(self) -> None:
        if self.max_iter is None:
            self.max_iter = protocols.get(self.protocol).probe_max_iter
        check_range("C", self.C, self.C > 0, "> 0")
        at_least(self, 1, "batch_size", "max_iter", "max_length")
        for key in ("max_train", "max_test"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)}: use 1 or more (or null for all)")

    @property
    def l2(self) -> bool:
        """Whether each pooled feature vector is scaled to unit L2 norm (the original's)."""
        return protocols.get(self.protocol).probe_l2


@dataclass
class EvaluateConfig:
    """A finished run's best checkpoint on its own dataset and on others with its classes."""

    run: str | None = None  # the finished finetuning run folder (the command's RUN_DIR)
    datasets: list[str] = field(default_factory=list)  # other datasets with the same classes,
    # after the run's own; shell wildcards over the registry's choices (cifar10-c/*/5)
    split: str = "test"  # split of each dataset
    device: str = "auto"  # auto = cuda if available, else cpu
    batch_size: int = 256  # images per evaluation batch
    num_workers: int = field(default_factory=default_workers)  # DataLoader worker processes
    # (default: what this machine's CPUs can feed, at most 4)

    def validate(self) -> None:
        """Cross-field checks; a failure says what to change (`run` is checked by the command:
        a config file may leave it to the command line)."""
        check_range("batch_size", self.batch_size, self.batch_size > 0, "positive")
        at_least(self, 0, "num_workers")


def _check_crops(scale: list[float], ratio: list[float]) -> None:
    """crop_scale within (0, 1] and crop_ratio > 0, each an ordered [min, max]."""
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ConfigError(f"crop_scale must be [min, max] with 0 < min <= max <= 1, got {scale}")
    if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
        raise ConfigError(f"crop_ratio must be [min, max] with 0 < min <= max, got {ratio}")


_FLOAT_FIELDS = {
    f.name
    for f in dataclasses.fields(FinetuneConfig)
    if "float" in str(f.type) and "list" not in str(f.type)
}


def read_preset(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A preset YAML as a dict, with its `base:` chain merged in (parents first)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"config '{path}' includes itself through base:")
    data = read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    merged = read_preset(path.parent / str(base), (*_seen, path))
    merged.update(data)
    return merged


def _floats(data: dict[str, Any]) -> dict[str, Any]:
    for key in _FLOAT_FIELDS & set(data):
        if isinstance(data[key], str):
            # a non-number is left for the strict loader to reject with its message
            with contextlib.suppress(ValueError):
                data[key] = float(data[key])
    return data


def load_finetune_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    data: dict[str, Any] | None = None,
) -> FinetuneConfig:
    """Defaults < `data` < preset YAML (with `base:`) < `key=value` overrides, strictly."""
    data = {**(data or {}), **(read_preset(path) if path is not None else {})}
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(data, key, value)
    return config_from_dict(FinetuneConfig, _floats(data))


def is_finetune_preset(path: str | Path) -> bool:
    """Whether a YAML file is a finetuning preset: its first line is the command that runs it,
    `# vitplas finetune ...` (sweep specs are headed by their own commands)."""
    first = Path(path).read_text().lstrip().splitlines()[:1]
    return bool(first) and first[0].startswith("#") and "vitplas finetune" in first[0]


# Keys that may change between a run and its resumption (hardware and display only).
RUNTIME_KEYS = {"num_workers", "device", "compile", "tensorboard", "eval_batch_size", "log_every"}
RUNTIME_KEYS |= {"keep_state"}  # what is kept on disk after DONE changes no number
