"""Commands of the training area (registered on vitplas.cli.app.app): finetune, evaluate, probe."""

from __future__ import annotations

import fnmatch
import hashlib
import json
from pathlib import Path

import typer

from vitplas.cli.app import app, check_device, check_out_folder, removed_if_unused


def _fail(err: Exception | str, code: int = 2) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(code)


LOCKED_EXIT = 3  # the run folder is owned by another process (see vitplas.locks)
WAIT = typer.Option(False, "--wait", help="Wait for a run folder another process owns.")
REPAIR = typer.Option(False, "--repair", help="Recompute a finished run whose records are damaged.")


def _waiting(wait: bool) -> None:
    """--wait reaches every lock this process takes through VITPLAS_WAIT_LOCK."""
    import os

    from vitplas.locks import WAIT_ENV

    if wait:
        os.environ[WAIT_ENV] = "1"


def default_finetune_dir(cfg, root: str | Path = "runs") -> Path:
    """runs/finetune/<dataset-train-lr-seed>-<hash of the config>: the same command finds the
    same folder again, so rerunning it resumes (or skips) instead of starting over. The hash
    covers the keys that differ from the defaults: a key added to vitplas renames no folder."""
    from vitplas.config import config_from_dict, config_to_dict
    from vitplas.training.config import RUNTIME_KEYS

    default = config_to_dict(config_from_dict(type(cfg), {}))
    data = {
        k: v
        for k, v in config_to_dict(cfg).items()
        if k not in RUNTIME_KEYS and (k not in default or v != default[k])
    }
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
    wait: bool = WAIT,
    repair: bool = REPAIR,
    # flags of common keys; their help is the key's (config_cmd.KeysCommand)
    model: str | None = typer.Option(None),
    dataset: str | None = typer.Option(None),
    train: str | None = typer.Option(None),
    lr: float | None = typer.Option(None),
    steps: int | None = typer.Option(None),
    seed: int | None = typer.Option(None),
    device: str | None = typer.Option(None),
) -> None:
    """Finetune the components named in `train` (+ head and final norm); resumable.

    Rerunning the same command resumes a killed run and skips a finished one. Under
    `torchrun --nproc_per_node K` the same command trains with DDP. Exit 3: another process
    owns the run folder.
    """
    from vitplas.cli.keys import merge_flags, split_args
    from vitplas.config import ConfigError
    from vitplas.locks import RunLockedError
    from vitplas.runs import disk_full
    from vitplas.selection.auto import finetune as finetune_run
    from vitplas.training.config import load_finetune_config
    from vitplas.training.finetune import TrainingDivergedError

    flags = dict(model=model, dataset=dataset, train=train, lr=lr, steps=steps, seed=seed)
    try:
        config, overrides = split_args(args)
        overrides = merge_flags(overrides, {**flags, "device": device})
        cfg = load_finetune_config(config, overrides)
        check_device(cfg.device)
        run_dir = check_out_folder(out) if out else default_finetune_dir(cfg)
        typer.echo(f"run folder: {run_dir}", err=True)
        with removed_if_unused(run_dir):
            # train=[auto]: a criterion picks the train set, inside the run folder's lock
            result = finetune_run(cfg, run_dir, show_progress=progress, repair=repair, wait=wait)
    except TrainingDivergedError as err:
        _fail(err, 1)
    except RunLockedError as err:
        _fail(err, LOCKED_EXIT)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        _fail(err)
    except OSError as err:
        message = disk_full(err)
        if message is None:
            raise
        _fail(message)
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
    wait: bool = WAIT,
) -> None:
    """Test accuracy/loss of a run's best checkpoint on its own and other datasets.

    Writes RUN_DIR/evaluation.csv and .parquet (one row per dataset) and prints the table.
    """
    from safetensors import SafetensorError

    from vitplas.locks import RunLockedError
    from vitplas.runs import DamagedRecordError
    from vitplas.training.evaluate import evaluate_run

    _waiting(wait)
    try:
        check_device(device)
        table = evaluate_run(
            run_dir,
            expand_datasets(dataset),
            split=split,
            device=device,
            batch_size=batch_size,
            num_workers=num_workers,
        )
    except RunLockedError as err:
        _fail(err, LOCKED_EXIT)
    except DamagedRecordError as err:  # evaluate rewrites evaluation.* only: no --repair here
        _fail(DamagedRecordError(err.run, err.name, err.problem, fix=_RETRAIN.format(err.run)))
    except SafetensorError as err:  # sealed weights that do not parse (sealed damaged)
        weights = run_dir / "checkpoints" / "best.safetensors"
        _fail(ValueError(f"{weights} is damaged ({err}); {_RETRAIN.format(run_dir)}"))
    except (ValueError, FileNotFoundError, KeyError) as err:
        _fail(err)
    typer.echo(table[["dataset", "split", "n", "acc", "loss"]].to_string(index=False))


# the fix for a damaged input of `evaluate` (weights, config): only the finetuning makes them
_RETRAIN = (
    "recompute the run with `vitplas finetune` and its config, `--out {0} --repair`, or "
    "rerun the finetuning into a new folder"
)


@app.command()
def probe(
    args: list[str] = typer.Argument(
        None, help="[CONFIG.yaml] then key=value overrides of ProbeConfig"
    ),
    model: str | None = typer.Option(None, help="model spec (preset, timm name, file)"),
    dataset: str | None = typer.Option(None, help="dataset name"),
    protocol: str | None = typer.Option(None, help="model (default) or paper (the original's)"),
    out: Path | None = typer.Option(None, "--out", help="run folder (default runs/probe/...)"),
    wait: bool = WAIT,
    repair: bool = REPAIR,
) -> None:
    """Linear probes on (layer, component) outputs of a frozen model: a tidy accuracy table."""
    from vitplas.cli.analysis import _progress
    from vitplas.cli.keys import merge_flags, split_args
    from vitplas.config import ConfigError, load_config
    from vitplas.locks import RunLockedError
    from vitplas.runs import default_run_dir
    from vitplas.training.probe import ProbeConfig, run_probe

    try:
        config, overrides = split_args(args)
        flags = {"model": model, "dataset": dataset, "protocol": protocol}
        cfg = load_config(ProbeConfig, config, merge_flags(overrides, flags))
        check_device(cfg.device)
        name = f"{cfg.model}-{cfg.dataset}"
        run_dir = check_out_folder(out) if out else default_run_dir("probe", name)
        with removed_if_unused(run_dir), _progress(0) as (_, update):
            table = run_probe(cfg, run_dir, on_phase=update, repair=repair, wait=wait)
    except RunLockedError as err:
        _fail(err, LOCKED_EXIT)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        _fail(err)
    typer.echo(f"run folder: {run_dir}", err=True)
    columns = ["layer", "component", "acc", "rel_to_baseline"]
    typer.echo(table[columns].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
