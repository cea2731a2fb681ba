"""Commands of the training area (registered on vitplas.cli.app.app): finetune, evaluate, probe."""

from __future__ import annotations

import fnmatch
import hashlib
import json
from pathlib import Path

import typer

from vitplas.cli.app import app


def _fail(err: Exception, code: int = 2) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(code)


def _split_args(args: list[str]) -> tuple[str | None, list[str]]:
    """[CONFIG.yaml] key=value ... -> (config path or None, overrides)."""
    config = None
    overrides = []
    for item in args:
        if "=" not in item and item.endswith((".yaml", ".yml")) and config is None:
            config = item
        else:
            overrides.append(item)
    return config, overrides


def default_finetune_dir(cfg, root: str | Path = "runs") -> Path:
    """runs/finetune/<dataset-train-lr-seed>-<hash of the config>: the same command finds the
    same folder again, so rerunning it resumes (or skips) instead of starting over."""
    from vitplas.config import config_to_dict
    from vitplas.training.config import RUNTIME_KEYS

    data = {k: v for k, v in config_to_dict(cfg).items() if k not in RUNTIME_KEYS}
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]
    safe = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in cfg.run_name())
    return Path(root) / "finetune" / f"{safe}-{digest}"


@app.command(context_settings={"allow_extra_args": False})
def finetune(
    args: list[str] = typer.Argument(
        None, help="[CONFIG.yaml] then key=value overrides, e.g. train=mha,fc1 lr=0.01 seed=0"
    ),
    out: Path | None = typer.Option(
        None, "--out", help="run folder (default: runs/finetune/<name>-<config hash>)"
    ),
    progress: bool = typer.Option(True, help="show a progress bar with ETA"),
) -> None:
    """Finetune the components named in `train` (+ head and final norm); resumable.

    Rerunning the same command resumes a killed run and skips a finished one. Under
    `torchrun --nproc_per_node K` the same command trains with DDP.
    """
    from vitplas.config import ConfigError
    from vitplas.selection.auto import resolve_auto
    from vitplas.training.config import load_finetune_config
    from vitplas.training.finetune import TrainingDivergedError, run_finetune

    config, overrides = _split_args(args or [])
    try:
        cfg = load_finetune_config(config, overrides)
        run_dir = out or default_finetune_dir(cfg)
        typer.echo(f"run folder: {run_dir}", err=True)
        cfg = resolve_auto(cfg, run_dir)  # train=[auto]: a criterion picks the train set
        result = run_finetune(cfg, run_dir, show_progress=progress)
    except TrainingDivergedError as err:
        _fail(err, 1)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        _fail(err)
    summary = {k: result[k] for k in ("best_val_acc", "test_acc", "best_step", "wall_time_s")}
    typer.echo(json.dumps({"run_dir": str(run_dir), **summary}))


def expand_datasets(patterns: list[str]) -> list[str]:
    """Dataset names, with shell wildcards over the registry's parameter choices:
    'cifar10-c/*/5' -> every CIFAR-10-C corruption at severity 5."""
    import itertools

    from vitplas.data import list_datasets

    concrete = []
    for info in list_datasets():
        choices = [p.choices for p in info.params]
        if any(c is None for c in choices):
            continue
        concrete += ["/".join([info.family, *combo]) for combo in itertools.product(*choices)]
    names = []
    for pattern in patterns:
        matched = fnmatch.filter(concrete, pattern) if any(c in pattern for c in "*?[") else []
        names += matched or [pattern]
    return list(dict.fromkeys(names))


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="a finished finetuning run folder"),
    dataset: list[str] = typer.Option(
        [], "--dataset", "-d", help="other datasets with the same classes; wildcards allowed"
    ),
    split: str = typer.Option("test", help="split of each dataset"),
    device: str = typer.Option("auto", help="auto, cpu, cuda"),
    batch_size: int = typer.Option(256),
    num_workers: int = typer.Option(4),
) -> None:
    """Test accuracy/loss of a run's best checkpoint on its own and other datasets.

    Writes RUN_DIR/evaluation.csv and .parquet (one row per dataset) and prints the table.
    """
    from vitplas.training.evaluate import evaluate_run

    try:
        table = evaluate_run(
            run_dir,
            expand_datasets(dataset),
            split=split,
            device=device,
            batch_size=batch_size,
            num_workers=num_workers,
        )
    except (ValueError, FileNotFoundError, KeyError) as err:
        _fail(err)
    typer.echo(table[["dataset", "split", "n", "acc", "loss"]].to_string(index=False))


@app.command()
def probe(
    args: list[str] = typer.Argument(
        None, help="[CONFIG.yaml] then key=value overrides of ProbeConfig"
    ),
    model: str | None = typer.Option(None, help="model spec (preset, timm name, file)"),
    dataset: str | None = typer.Option(None, help="dataset name"),
    out: Path | None = typer.Option(None, "--out", help="run folder (default runs/probe/...)"),
) -> None:
    """Linear probes on (layer, component) outputs of a frozen model: a tidy accuracy table.

    Examples: `vitplas probe --model dinov2-s14 --dataset fashion-mnist img_size=112
    layers=[11] components=[mha,fc1,block] max_train=5000`.
    """
    from vitplas.config import ConfigError, load_config
    from vitplas.runs import default_run_dir
    from vitplas.training.probe import ProbeConfig, run_probe

    config, overrides = _split_args(args or [])
    overrides += [f"model={model}"] * bool(model) + [f"dataset={dataset}"] * bool(dataset)
    try:
        cfg = load_config(ProbeConfig, config, overrides)
        run_dir = out or default_run_dir("probe", f"{cfg.model}-{cfg.dataset}")
        table = run_probe(cfg, run_dir)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        _fail(err)
    typer.echo(f"run folder: {run_dir}", err=True)
    columns = ["layer", "component", "acc", "rel_to_baseline"]
    typer.echo(table[columns].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
