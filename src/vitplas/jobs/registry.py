"""The job functions and config classes a sweep spec may name, derived from the job table.

A spec is data: `runner.function` and an analysis entry's `function:` / `config:` may only name
the runners and config classes of the job table (vitplas.jobs.table, with the older import
paths each record keeps as aliases), or ones a user registered explicitly, either in Python
(`register_job`) or, so that sweep workers in other processes see them too, as entry points of
their package:

    [project.entry-points."vitplas.jobs"]
    my_finetune = "mypkg.jobs:my_finetune"          # function(cfg, run_dir) -> dict
    [project.entry-points."vitplas.job_configs"]
    my_config = "mypkg.jobs:MyConfig"               # a dataclass

Any other import path (`builtins:print`, `os:system`) is a ConfigError before anything runs.
`import_path` resolves a path (an alias to its job's runner or config).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from vitplas.config import ConfigError
from vitplas.jobs.table import JOBS, analysis_jobs


def _aliases() -> dict[str, str]:
    """older import path -> the job's runner or config path it means now."""
    out = {}
    for job in JOBS:
        for alias in job.aliases:
            out[alias] = job.config if alias.rsplit(":", 1)[1][:1].isupper() else job.runner
    return out


ALIASES = _aliases()
FUNCTIONS = {job.runner for job in JOBS if job.sweep_runner or job.analysis} | {
    a for a, target in ALIASES.items() if target in {j.runner for j in JOBS}
}
CONFIGS = {job.config for job in JOBS if job.sweep_runner or job.analysis} | {
    a for a, target in ALIASES.items() if target in {j.config for j in JOBS}
}
# the runners whose runs are vitplas finetunes of a FinetuneConfig (their cost can be counted)
FINETUNE_RUNNERS = {
    path
    for job in JOBS
    if job.cost == "finetune"
    for path in (job.runner, *(a for a in job.aliases if ALIASES[a] == job.runner))
}
# kind -> (runner function, config class) of a study's analysis jobs (spec `analysis.<kind>`)
ANALYSIS_RUNNERS = {key: (job.runner, job.config) for key, job in analysis_jobs().items()}
# `for_each_dataset: true` in an analysis entry: the dataset goes into this key of its config
DATASET_KEY = {key: job.dataset_key for key, job in analysis_jobs().items() if job.dataset_key}
_user_functions: set[str] = set()
_user_configs: set[str] = set()


def register_job(function: str, config_class: str | None = None) -> None:
    """Allow specs to name `function` ('pkg.module:name') and its `config_class`."""
    for path in filter(None, (function, config_class)):
        if ":" not in path:
            raise ValueError(f"'{path}' must look like 'package.module:name'")
    _user_functions.add(function)
    if config_class:
        _user_configs.add(config_class)


def _entry_point_values(group: str) -> set[str]:
    return {ep.value for ep in entry_points(group=group)}


def check_job(function: str, config_class: str | None, where: str) -> None:
    """ConfigError unless both are registered; `where` names the spec entry in the message."""
    functions = FUNCTIONS | _user_functions | _entry_point_values("vitplas.jobs")
    if function not in functions:
        raise ConfigError(
            f"{where}: function '{function}' is not a registered vitplas job; use one of "
            f"{', '.join(sorted(functions))}, or register your own (vitplas.jobs.registry."
            "register_job, or a 'vitplas.jobs' entry point of your package)"
        )
    configs = CONFIGS | _user_configs | _entry_point_values("vitplas.job_configs")
    if config_class is not None and config_class not in configs:
        raise ConfigError(
            f"{where}: config '{config_class}' is not a registered job config; use one of "
            f"{', '.join(sorted(configs))} or null, or register your own (register_job, or a "
            "'vitplas.job_configs' entry point)"
        )


def import_path(path: str) -> Any:
    """'package.module:attr' -> the object (an alias: its job's); a clear error when absent."""
    module_name, _, attr = ALIASES.get(path, path).partition(":")
    if not attr:
        raise ValueError(f"import path '{path}' must look like 'package.module:name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import '{module_name}' (from '{path}'): {err}") from err
    if not hasattr(module, attr):
        raise ValueError(f"'{module_name}' has no '{attr}' (from '{path}')")
    return getattr(module, attr)
