"""The registry of job functions a spec may name (`runner.function`, analysis `function:`).

A spec is data: it may only name vitplas's own job functions and config classes, or ones a
user registered explicitly, either in Python (`register_job`) or, so that sweep workers in
other processes see them too, as entry points of their package:

    [project.entry-points."vitplas.jobs"]
    my_finetune = "mypkg.jobs:my_finetune"          # function(cfg, run_dir) -> dict
    [project.entry-points."vitplas.job_configs"]
    my_config = "mypkg.jobs:MyConfig"               # a dataclass

Any other import path (`builtins:print`, `os:system`) is a ConfigError before anything runs.
`import_path` resolves a (checked) path; `check_runs` builds every run's config strictly.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from vitplas.config import ConfigError, config_from_dict

if TYPE_CHECKING:
    from vitplas.experiments.spec import Run, SweepSpec

FUNCTIONS = {
    "vitplas.training.finetune:run_finetune",
    "vitplas.training.probe:run_probe",
    "vitplas.analysis.job:run_plasticity",
    "vitplas.analysis.bounds_job:run_bounds",
    "vitplas.experiments.fake:fake_finetune",
    "vitplas.selection.auto:finetune",  # train=[auto]: resolve the pick, then run_finetune
}
# the runners whose runs are vitplas finetunes of a FinetuneConfig (their cost can be counted)
FINETUNE_RUNNERS = {"vitplas.training.finetune:run_finetune", "vitplas.selection.auto:finetune"}
CONFIGS = {
    "vitplas.training.finetune:FinetuneConfig",
    "vitplas.training.probe:ProbeConfig",
    "vitplas.analysis.job:PlasticityConfig",
    "vitplas.analysis.bounds_job:BoundsConfig",
}
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
            f"{', '.join(sorted(functions))}, or register your own (vitplas.experiments.jobs."
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
    """'package.module:attr' -> the object; a clear error when it is not there."""
    module_name, _, attr = path.partition(":")
    if not attr:
        raise ValueError(f"import path '{path}' must look like 'package.module:name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import '{module_name}' (from '{path}'): {err}") from err
    if not hasattr(module, attr):
        raise ValueError(f"'{module_name}' has no '{attr}' (from '{path}')")
    return getattr(module, attr)


def check_runs(spec: SweepSpec, runs: list[Run]) -> dict[str, str]:
    """{run id: error} for every run whose full config the runner's config class refuses
    (unknown key, wrong type, bad value); {} when all are valid or the runner takes a dict."""
    if spec.runner.config is None:
        return {}
    config_class = import_path(spec.runner.config)
    bad = {}
    for run in runs:
        try:
            config_from_dict(config_class, run.config)
        except ValueError as err:  # ConfigError included
            bad[run.run_id] = str(err)
    return bad
