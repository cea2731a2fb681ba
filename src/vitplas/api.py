"""The Python API: the functions behind the CLI, for notebooks and scripts.

    import vitplas
    res = vitplas.plasticity("tiny-random", "photos", "digits", pairs=64, random_init=True)
    res.table      # per (layer, component): mean, std, n, ci95
    res.pooled     # per component, pooled over layers, ranked
    res.ranking    # ['mha', 'fc1', ...]
    res.plot()     # a matplotlib Figure (plasticity against depth)

A model is a spec string (preset, timm name, HF id, ARCH@FILE, local file), a LoadedModel
(from `vitplas.load_model`) or any timm-style ViT `nn.Module`. Data are dataset names (as in
`vitplas data list`), DataLoaders yielding images (B, 3, H, W) or (images, labels), or image
tensors (N, 3, H, W) already normalised. Every function calls the same internals as the CLI:
analysis.estimate, analysis.bounds, training.finetune and training.probe.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vitplas.analysis import tables
from vitplas.analysis.bound_table import estimate_bounds, fill_data_bounds, layer_bounds
from vitplas.analysis.configs import BoundsConfig, PlasticityConfig, RadiusConfig
from vitplas.analysis.estimate import Estimate, estimate
from vitplas.analysis.pair_file import PairWriter
from vitplas.analysis.pairs import draw_pairs, pair_units
from vitplas.analysis.plasticity import resolve_components
from vitplas.analysis.setup import (
    ModelSetup,
    bound_width,
    dataset_radius,
    mode_radius,
    open_model_stream,
    open_stream,
    resolve_device,
    setup_loaded,
)
from vitplas.constants import IMAGENET_MEAN_STD
from vitplas.models import LoadedModel
from vitplas.models import load_model as _load_model
from vitplas.models.components import ComponentMap
from vitplas.models.components import component_map as _component_map

ModelLike = str | LoadedModel | nn.Module
DataLike = str | DataLoader | torch.Tensor | Dataset
IMAGENET = IMAGENET_MEAN_STD
_CLI = PlasticityConfig()  # the CLI's defaults are the API's: one place for each
_BOUNDS = BoundsConfig()
_RADIUS = RadiusConfig()


def load_model(spec: str, **options: Any) -> LoadedModel:
    """The model named by `spec` (preset, timm name, HF id, ARCH@FILE or a local file), as a
    LoadedModel: `.model` (timm ViT, eval mode, CPU), `.mean`/`.std`, `.input_size` (3, H, W).
    options: num_classes, random_init, img_size (see vitplas.models.load_model)."""
    return _load_model(spec, **options)


def component_map(model: ModelLike) -> ComponentMap:
    """The component map of `model`: `.depth`, `.block_components`, `.module(layer, name)`."""
    return _component_map(_as_loaded(model, None).model)


@dataclass
class PlasticityResult:
    """One plasticity measurement.

    table: per (layer, component) rows with model, reference, target, inputs, mean, std, n,
    ci95. pooled: one row per component (per-pair mean over layers), ranked by mean.
    With bounds=True (the default), as a run folder's bounds and bound_ratio tables: bounds,
    per-layer bounds (the data LayerNorm bound filled from the measured pairs' token scales);
    bound_ratio, measured / bound per (layer, component) with the fraction of pairs above
    it (exceed_frac); exceedances, one line per component whose bound some pairs exceed."""

    table: pd.DataFrame
    pooled: pd.DataFrame
    estimate: Estimate
    bounds: pd.DataFrame | None = None
    radius: float | list[float] | None = None
    bound_ratio: pd.DataFrame | None = None
    exceedances: list[str] = field(default_factory=list)

    @property
    def ranking(self) -> list[str]:
        """Components from most to least plastic (pooled means)."""
        return list(self.pooled["component"])

    @property
    def settled(self) -> bool:
        """True when no two neighbours in the ranking have overlapping 95% CIs."""
        return tables.ranking_settled(self.pooled)

    def plot(self, kind: str = "depth"):
        """A matplotlib Figure: 'depth' (plasticity per layer, CI bands) or 'box' (per
        component, one point per layer). Save it with fig.savefig(path)."""
        from vitplas.plots import plasticity as plots

        builders = {"depth": plots.depth_figure, "box": plots.box_figure}
        if kind not in builders:
            raise ValueError(f"plot kind '{kind}' is unknown; choose {' or '.join(builders)}")
        return builders[kind](self.table)


def plasticity(
    model: ModelLike = _CLI.model,
    reference: DataLike = _CLI.reference,
    target: DataLike = _CLI.target,
    *,
    pairs: int | None = None,
    batch_size: int = _CLI.batch_size,
    components: Sequence[str] | None = None,
    inputs: str = _CLI.inputs,
    seed: int = _CLI.seed,
    device: str = _CLI.device,
    dtype: str = _CLI.dtype,
    bounds: bool = _CLI.bounds,
    radius: float | None = None,
    radius_images: int = _CLI.radius_images,
    ln_bound: str = _CLI.ln_bound,
    mha_bound: str = _CLI.mha_bound,
    mha_slicing: str = _CLI.mha_slicing,
    protocol: str = _CLI.protocol,
    until_ci: float | None = None,
    reference_split: str = _CLI.reference_split,
    target_split: str = _CLI.target_split,
    save_pairs: str | Path | None = None,
    max_length: int = _CLI.max_length,
    pair_lengths: str = _CLI.pair_lengths,
    **model_options: Any,
) -> PlasticityResult:
    """Plasticity of every component in every layer, as `vitplas plasticity` measures it.

    `pairs` pairs in batches of `batch_size` (None: the CLI's 512 for named datasets; every
    pair that tensors, datasets or DataLoaders hold). Named datasets and Datasets are shuffled
    by `seed` exactly as the CLI does, so the same arguments give the CLI's numbers; tensors
    and DataLoaders pair in their own order: pair i = (i-th reference image, i-th target
    image), and asking for more pairs than tensors hold is refused (no pair counted twice).
    The defaults are the CLI's (vitplas.analysis.configs.PlasticityConfig): bounds on (r
    measured on `radius_images` target images unless given, one r per layer for inputs
    "hidden" and "insitu"; the pairs above each bound counted), ln_bound and mha_bound "data",
    protocol "model". CIs over the independent units of named datasets and Datasets
    (pairs.PairUnits); tensors and DataLoaders carry no image ids, so there every pair is its
    own unit.
    save_pairs: a file path: also write every pair's ratios there as Parquet, streamed (pair,
    reference_index and target_index for named datasets, layer, component, ratio: the columns
    of a run's pairs.parquet, vitplas.analysis.pair_file).
    A text model reads named text datasets tokenised by its tokenizer to `max_length` tokens,
    as the CLI does; pair_lengths "equal" pairs texts of one real length (the CLI's
    pair_lengths, analysis.length_pairs; named datasets and Datasets of texts only).
    model_options (random_init, img_size) apply to spec strings.
    """
    if "normalization" in model_options:
        raise TypeError("plasticity() takes protocol='model' or 'paper' (normalization is gone)")
    setup = _setup(model, device, seed, max_length=max_length, **model_options)
    names = resolve_components(setup.cmap, components)
    x_data = _model_dataset(setup, reference, reference_split, protocol)
    y_data = _model_dataset(setup, target, target_split, protocol)
    named = isinstance(reference, str) and isinstance(target, str)
    pairs = _CLI.pairs if pairs is None and named else _pair_count(pairs, x_data, y_data)
    batch_size = min(batch_size, pairs)
    bound_frame, r = None, None
    if bounds:
        images = min(radius_images, _size(y_data) or radius_images)
        r = radius
        if r is None:  # as the plasticity job: in pair batches, per layer for hidden inputs
            r = _radius_of(setup, y_data, images=images, seed=seed, inputs=inputs,
                           batch_size=batch_size)  # fmt: skip
        options = {"ln_bound": ln_bound, "mha_bound": mha_bound, "mha_slicing": mha_slicing}
        bound_frame = _layer_bounds(setup, names, r, inputs, **options)
    checks = {} if bound_frame is None else estimate_bounds(bound_frame, setup.cmap.depth, names)
    stream_names = (_name(reference), _name(target))
    # datasets pair through the CLI's streams, with the images' indices: their units (the CI's)
    units = None if any(isinstance(d, DataLoader | _Images) for d in (x_data, y_data)) else (
        pair_units(x_data, y_data))  # fmt: skip
    stream = _pairs(x_data, y_data, pairs, batch_size, seed, stream_names, units is not None,
                    pair_lengths)  # fmt: skip
    with _pair_writer(save_pairs, names) as writer, _api_names():
        est = estimate(
            setup.cmap,
            stream,
            components=names,
            inputs=inputs,
            device=setup.device,
            dtype=dtype,
            **checks,
            units=units,
            until_ci=until_ci,
            on_ratios=None if writer is None else writer.add,
        )
    labels = {
        "model": _name(model),
        "reference": _name(reference),
        "target": _name(target),
        "inputs": inputs,
    }
    table = tables.plasticity_table(est, labels)
    result = PlasticityResult(table, tables.pooled_table(est, labels), est, bound_frame, r)
    if bound_frame is not None:  # as the job's tables (analysis.tables.write_all): the data
        # bounds at the pairs' token extremes
        result.bounds = fill_data_bounds(
            bound_frame, names, est.norm_scale, est.token_max, est.longest
        )
        result.bound_ratio = tables.bound_ratio_table(est, labels, result.bounds)
        result.exceedances = tables.exceedance_lines(result.bound_ratio)
    return result


def bounds(
    model: ModelLike = _BOUNDS.model,
    data: DataLike | None = _BOUNDS.dataset,
    *,
    radius: float | Sequence[float] | None = None,
    components: Sequence[str] | None = None,
    ln_bound: str = _BOUNDS.ln_bound,
    mha_bound: str = _BOUNDS.mha_bound,
    r_max: float | Sequence[float] | None = None,
    mha_slicing: str = _BOUNDS.mha_slicing,
    inputs: str = _BOUNDS.inputs,
    protocol: str = _BOUNDS.protocol,
    images: int = _BOUNDS.radius_images,
    batch_size: int = _BOUNDS.batch_size,
    split: str = _BOUNDS.split,
    seed: int = _BOUNDS.seed,
    device: str = _BOUNDS.device,
    **model_options: Any,
) -> pd.DataFrame:
    """Per-layer theoretical bounds (bound_table.BOUND_COLUMNS: layer, component, bound,
    bound_padded, radius, definition, ...). The token count and width come from the model; the
    token radius r is `radius` when given, else measured on `images` images of `data` (one r
    per layer for inputs "hidden" or "insitu"). The defaults are `vitplas bounds`' (vitplas
    .analysis.configs.BoundsConfig): the sound bounds, which need measured pairs: the LayerNorm
    bound "data" and the MHA bound "data" (tokens within `r_max`) are NaN here unless given,
    their definitions saying why (vitplas.plasticity with bounds=True fills them)."""
    setup = _setup(model, device, seed, **model_options)
    names = resolve_components(setup.cmap, components)
    if radius is None:
        if data is None:
            raise ValueError("bounds need a token radius: pass radius=... or data=...")
        data = _dataset(data, split, setup.transform(protocol), protocol)
        radius = _radius_of(setup, data, images=images, seed=seed, inputs=inputs,
                            batch_size=batch_size)  # fmt: skip
    options = {"ln_bound": ln_bound, "mha_bound": mha_bound, "mha_slicing": mha_slicing}
    return _layer_bounds(setup, names, radius, inputs, r_max=r_max, **options)


def radius(
    model: ModelLike = _RADIUS.model,
    data: DataLike = _RADIUS.dataset,
    *,
    images: int = _RADIUS.images,
    split: str = _RADIUS.split,
    per_layer: bool = False,
    protocol: str = _RADIUS.protocol,
    batch_size: int = _RADIUS.batch_size,
    seed: int = _RADIUS.seed,
    device: str = _RADIUS.device,
    **model_options: Any,
) -> float | list[float]:
    """Token radius r, as `vitplas radius` measures it: mean over images of the RMS token norm
    of the embedding output (a float), or with per_layer=True (the job's inputs "hidden") of
    each block's input (a list of depth floats)."""
    setup = _setup(model, device, seed, **model_options)
    data = _dataset(data, split, setup.transform(protocol), protocol)
    inputs = "hidden" if per_layer else "embedding"
    return _radius_of(setup, data, images=images, seed=seed, inputs=inputs,
                      batch_size=batch_size)  # fmt: skip


def _run_dir(kind: str, cfg: Any, run_dir: str | Path | None) -> Path:
    """`run_dir`, else the folder `vitplas KIND` would use for `cfg` (vitplas.jobs.folders)."""
    from vitplas.jobs.folders import default_run_dir
    from vitplas.jobs.table import get

    return Path(run_dir) if run_dir is not None else default_run_dir(get(kind), cfg)


def finetune(run_dir: str | Path | None = None, config: Any = None, **overrides: Any) -> dict:
    """Finetune as `vitplas finetune` does; returns the result dict (also result.json).

    run_dir: the run folder (None: the one `vitplas finetune` picks for these settings,
    runs/finetune/<name>-<config hash>). config: a FinetuneConfig, a preset YAML path, or
    None (the defaults); overrides are config keys, e.g.
    finetune(model="tiny-random", random_init=True, train=["mha"])."""
    from vitplas.jobs.runners import run_finetune
    from vitplas.training.config import FinetuneConfig

    if isinstance(config, str | Path):  # a preset YAML, with its `base:` chain
        from vitplas.training.config import load_finetune_config

        config = load_finetune_config(config)
    cfg = _config(FinetuneConfig, config, overrides)
    return run_finetune(cfg, _run_dir("finetune", cfg, run_dir))


def probe(run_dir: str | Path | None = None, config: Any = None, **overrides: Any):
    """Linear probes as `vitplas probe` does; returns the tidy table (also probe.csv).
    run_dir None: the folder `vitplas probe` picks (runs/probe/<time>-<model>-<dataset>)."""
    from vitplas.jobs.runners import run_probe
    from vitplas.training.config import ProbeConfig

    cfg = _config(ProbeConfig, config, overrides)
    return run_probe(cfg, _run_dir("probe", cfg, run_dir))


def select(
    model: str = "dinov2-s14",
    target: str = "fashion-mnist",
    out: str | Path | None = None,
    **options: Any,
) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Rank the components by the criteria and pick a train set per criterion, as
    `vitplas select` does: (scores table: criterion, layer, component, score, rank, params,
    matrix, note; {criterion: train set}). options are SelectConfig keys (criteria, budget,
    granularity, rule, pairs, pair_lengths, export, ...); with `out`, the run folder the CLI
    writes (locked, config checked first; `export` formats go under out/export/<criterion>/)."""
    from vitplas.jobs.runners import run_select
    from vitplas.selection.config import SelectConfig
    from vitplas.selection.select import picks, score_config

    cfg = _config(SelectConfig, None, {"model": model, "target": target, **options})
    if out is not None:
        return run_select(cfg, out)
    if cfg.export:
        raise ValueError("export writes files into a run folder: pass out=... as well")
    frame = score_config(cfg)
    return frame, picks(frame, cfg.budget, cfg.granularity, cfg.rule)


def _config(cls: type, config: Any, overrides: dict[str, Any]):
    """cls from a config object / YAML path / None, then `overrides`, strictly checked."""
    from dataclasses import is_dataclass

    from vitplas.config import config_from_dict, config_to_dict, read_yaml

    if config is None:
        data: dict[str, Any] = {}
    elif isinstance(config, dict):
        data = dict(config)
    elif is_dataclass(config):
        data = config_to_dict(config)
    else:
        data = read_yaml(Path(config))
    return config_from_dict(cls, {**data, **overrides})


def _as_loaded(model: ModelLike, img_size: int | None, **options: Any) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, str):
        return _load_model(model, img_size=img_size, **options)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a spec string, LoadedModel or nn.Module, got {model!r}")
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size is None:
        raise ValueError("model has no patch_embed.img_size: pass a timm VisionTransformer")
    return LoadedModel(
        model=model,
        spec=type(model).__name__,
        description=f"in-memory {type(model).__name__}",
        mean=tuple(cfg.get("mean", IMAGENET[0])),
        std=tuple(cfg.get("std", IMAGENET[1])),
        input_size=(3, *size),
        random_init=False,
        checksum=None,
        num_classes=getattr(model, "num_classes", 0),
    )


def _setup(
    model: ModelLike, device: str, seed: int, img_size=None, max_length=None, **options
) -> ModelSetup:
    if isinstance(model, str):
        torch.manual_seed(seed)  # as the CLI's entry point: the same random-init weights
    lengths = {} if max_length is None else {"max_length": max_length}
    return setup_loaded(_as_loaded(model, img_size, **options), resolve_device(device), **lengths)


def _name(obj: Any) -> str:
    if isinstance(obj, str):
        return obj
    if isinstance(obj, LoadedModel):
        return obj.spec
    return type(obj).__name__


class _Images(Dataset):
    """An (N, 3, H, W) tensor as a dataset of (image, 0)."""

    def __init__(self, images: torch.Tensor) -> None:
        if images.ndim != 4:
            raise ValueError(f"image tensors must be (N, 3, H, W), got shape {tuple(images.shape)}")
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        return self.images[i], 0


def _size(data) -> int | None:
    """Images a dataset holds (None for a DataLoader: it is read to its end)."""
    return None if isinstance(data, DataLoader) else len(data)


def _pair_count(pairs: int | None, x_data, y_data) -> int:
    """`pairs`, else every pair the data hold; more pairs than tensors hold is an error."""
    sizes = [n for n in (_size(x_data), _size(y_data)) if n is not None]
    if pairs is None:
        return min(sizes) if sizes else 2**62  # two DataLoaders: to the shorter one's end
    if pairs < 1:
        raise ValueError(f"pairs must be >= 1, got {pairs}")
    held = [_size(d) for d in (x_data, y_data) if isinstance(d, _Images)]
    if held and pairs > min(held):
        raise ValueError(
            f"pairs={pairs} asks for more pairs than the image tensors hold ({min(held)}); "
            "pass pairs=None (every pair) or fewer, or more images"
        )
    return pairs


@contextlib.contextmanager
def _api_names() -> Iterator[None]:
    """Errors of the shared internals name this API's arguments, not the CLI's flags."""
    try:
        yield
    except ValueError as err:
        text = str(err).replace("lower --batch-size", "pass a smaller batch_size=")
        if text == str(err):
            raise
        raise ValueError(text.replace("--pairs", "pairs=")) from None


def _dataset(data: DataLike, split: str, transform, protocol: str = "model"):
    if isinstance(data, str):
        return open_stream(data, split, transform, None, False, protocol)
    if isinstance(data, torch.Tensor):
        return _Images(data)
    if isinstance(data, Dataset | DataLoader):
        return data
    raise TypeError(f"data must be a dataset name, DataLoader or tensor, got {type(data).__name__}")


def _model_dataset(setup: ModelSetup, data: DataLike, split: str, protocol: str):
    """A named dataset as the CLI's plasticity reads it for `setup`'s model (a text stream
    tokenised, a stream of the other modality refused); other data as _dataset."""
    if isinstance(data, str):
        return open_model_stream(setup, data, split, None, False, protocol)
    return _dataset(data, split, setup.transform(protocol), protocol)


def _images(loader: Iterable) -> Iterator[torch.Tensor]:
    for batch in loader:
        yield batch[0] if isinstance(batch, list | tuple) else batch


@contextlib.contextmanager
def _pair_writer(path: str | Path | None, components: list[str]) -> Iterator[PairWriter | None]:
    """A PairWriter to `path` whose parts live in a temp folder beside it (None: no writer)."""
    if path is None:
        yield None
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.parts-") as parts:
        writer = PairWriter(path, components, parts)
        yield writer
        writer.finish()


def _pairs(
    x_data, y_data, pairs: int, batch_size: int, seed: int, names, indices=False, lengths="any"
):
    """Pair batches: the CLI's streams for datasets, as pair_lengths `lengths` draws them
    (with the images' indices when `indices`); tensors and loaders in their own order (no
    indices, pair_lengths "any" only)."""
    if not any(isinstance(d, DataLoader | _Images) for d in (x_data, y_data)):
        return draw_pairs(
            lengths,
            x_data,
            y_data,
            pairs=pairs,
            batch_size=batch_size,
            seed=seed,
            names=names,
            with_indices=indices,
        )
    if lengths != "any":
        raise ValueError(
            f"pair_lengths='{lengths}' draws pairs from datasets (named, or Datasets of "
            "texts); tensors and DataLoaders pair in their own order: use pair_lengths='any'"
        )
    xs, ys = (
        _images(d if isinstance(d, DataLoader) else DataLoader(d, batch_size))
        for d in (x_data, y_data)
    )
    return _zip_loaders(xs, ys, pairs)


def _zip_loaders(xs: Iterator, ys: Iterator, pairs: int) -> Iterator:
    left = pairs
    for x, y in zip(xs, ys, strict=False):
        take = min(left, x.shape[0], y.shape[0])
        yield x[:take], y[:take]
        left -= take
        if left <= 0:
            return


def _radius_of(setup: ModelSetup, data, *, images, seed, inputs="embedding", batch_size=32):
    if isinstance(data, DataLoader):
        r, _ = mode_radius(
            setup.cmap, _images(data), max_images=images, inputs=inputs, device=setup.device
        )
    else:
        size = min(images, len(data))
        r = dataset_radius(
            setup, data, images=size, batch_size=batch_size, seed=seed, inputs=inputs
        )
    return r.tolist() if r.ndim else float(r)


def _layer_bounds(setup: ModelSetup, names, radius, inputs, **options) -> pd.DataFrame:
    width = bound_width(setup, inputs)
    return layer_bounds(
        setup.cmap, names, n_tokens=setup.n_tokens, radius=radius, width=width, **options
    )
