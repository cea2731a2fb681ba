"""Sweep specs: one YAML per study, read by the launcher and by the aggregator alike.

A spec names a `base` finetune config, `grid` axes whose product is the set of runs, optional
per-dataset preset files and per-dataset axes, where the runs go, how they are executed and
which analysis jobs (plasticity, bounds, probes) belong to the study. Experiment constants
(datasets, seeds, lrs, train sets) live in the YAML only. What a study is, its runs (`expand`)
and its analysis jobs (`analysis_jobs`), is defined here, for the launcher, the cost estimate
and the aggregator alike.

Paths: `presets` are relative to the spec file's folder; `root` to the working directory (like
every `runs/` folder).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vitplas.config import ConfigError, config_from_dict, read_yaml
from vitplas.experiments.axes import check_grid_by, slug_value, split_by, train_label
from vitplas.jobs.registry import ANALYSIS_RUNNERS, DATASET_KEY, check_job, import_path

HASH_LEN = 8
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a spec name: one plain folder name


@dataclass
class SlurmSettings:
    """SLURM job-array settings (submitit's SlurmExecutor)."""

    partition: str | None = None  # SLURM partition
    account: str | None = None  # SLURM account
    qos: str | None = None  # SLURM quality of service
    constraint: str | None = None  # SLURM node constraint
    time_min: int | None = None  # time limit per run in minutes (None: the cost estimate x a
    # margin, experiments/cost.py)
    gpus_per_node: int = 1  # GPUs per run
    cpus_per_task: int = 8  # CPUs per run
    mem_gb: float | None = None  # memory per run in GB (None: the cluster's default)
    setup: list[str] = field(default_factory=list)  # shell lines run before each job


@dataclass
class ExecutorSettings:
    kind: Literal["local", "slurm"] = "local"  # local processes or SLURM job arrays
    max_parallel: int = 1  # local: processes at once; slurm: array parallelism
    timeout_min: int = 7 * 24 * 60  # local jobs: submitit's wall-clock limit per run
    threads_per_run: int | None = None  # torch threads in each local run (None: torch default)
    folder: str | None = None  # submitit logs + pickles; default <root>/submitit
    slurm: SlurmSettings = field(default_factory=SlurmSettings)

    def validate(self) -> None:
        if self.max_parallel < 1:
            raise ConfigError(f"executor.max_parallel is {self.max_parallel}; use 1 or more")


@dataclass
class RunnerSettings:
    """What one run calls, by import path: function(cfg, run_dir) -> dict."""

    function: str = "vitplas.jobs.runners:run_finetune"  # what one run calls:
    # module:function(cfg, run_dir) -> dict (vitplas.jobs.registry: the registered ones)
    config: str | None = "vitplas.training.config:FinetuneConfig"  # None: cfg is a dict


@dataclass
class ProbeBaseline:
    """Which linear-probe row is the baseline of the relative gain (PAPER.md section 4)."""

    layer: int = -1  # -1: the last block
    component: str = "block"  # component of the baseline probe row (block: the block's output)


@dataclass
class AnalysisSettings:
    """Jobs besides the finetuning runs; each entry is a config mapping of the analysis area."""

    plasticity: list[dict[str, Any]] = field(default_factory=list)  # plasticity jobs:
    # PlasticityConfig mappings (vitplas config show plasticity)
    bounds: list[dict[str, Any]] = field(default_factory=list)  # bounds jobs: BoundsConfig mappings
    # (vitplas config show bounds)
    probes: list[dict[str, Any]] = field(default_factory=list)  # probe jobs: ProbeConfig mappings
    # (vitplas config show probe)
    baseline: ProbeBaseline = field(default_factory=ProbeBaseline)


@dataclass
class SweepSpec:
    name: str = ""  # the study's name (names its run folder)
    study: Literal["paper", "custom"] = "custom"  # paper: the paper's study (its figures and
    # tables); custom: any other
    description: str = ""  # one line shown in the report
    root: str = ""  # default runs/sweeps/<name>
    presets: dict[str, str] = field(default_factory=dict)  # dataset -> finetune preset YAML
    base: dict[str, Any] = field(default_factory=dict)  # finetune keys shared by every run (vitplas
    # config show finetune)
    grid: dict[str, list] = field(default_factory=dict)  # finetune key -> list of values; every
    # combination is one run
    grid_by_dataset: dict[str, dict[str, list]] = field(default_factory=dict)  # axis overrides
    base_by: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # see expand()
    grid_by: dict[str, dict[str, dict[str, list]]] = field(default_factory=dict)  # axis ->
    # value label -> {other axis: values}: an axis whose values depend on another's (e.g. the lr
    # grid per train set, `grid_by: {train: {ln1: {lr: [0.1, 0.3, 1.0]}}}`); see expand()
    select_by: Literal["test_acc", "best_val_acc"] = "test_acc"  # the paper picks the lr by test
    # (a selection study, with train=[auto:...] runs, must choose on validation)
    runner: RunnerSettings = field(default_factory=RunnerSettings)
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)
    source: str = ""  # the YAML file it was read from (set by load_spec)

    def validate(self) -> None:
        if not self.name:
            raise ConfigError("a sweep spec needs a `name` (it names the study's run folder)")
        if not SAFE_NAME.fullmatch(self.name):
            raise ConfigError(
                f"spec name {self.name!r} must be one folder name: letters, digits, '.', '_', "
                "'-', not starting with '.' (it becomes runs/sweeps/<name>)"
            )
        check_job(self.runner.function, self.runner.config, "runner")
        if "dataset" not in self.grid and "dataset" not in self.base:
            raise ConfigError("a sweep spec needs `dataset` in `grid` or in `base`")
        for axis, values in self.grid.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"grid axis '{axis}' must be a non-empty list, got {values!r}")
        check_grid_by(self)
        by_lrs = [v for by in self.grid_by.values() for ax in by.values() for v in ax.get("lr", [])]
        for value in [*self.grid.get("lr", []), *by_lrs, self.base.get("lr", 0.0)]:
            if isinstance(value, str):
                raise ConfigError(
                    f"lr {value!r} is text; write it as a number (YAML reads 1e-3 as text: "
                    "write 1.0e-3 or 0.001)"
                )
        datasets = self.grid.get("dataset", [self.base.get("dataset")])
        for dataset, axes in self.grid_by_dataset.items():
            if dataset not in datasets:
                raise ConfigError(
                    f"grid_by_dataset names '{dataset}', which is not a dataset of the grid "
                    f"({', '.join(map(str, datasets))})"
                )
            unknown = sorted(set(axes) - set(self.grid))
            if unknown:
                raise ConfigError(
                    f"grid_by_dataset.{dataset} overrides unknown axis {unknown}; "
                    f"grid axes: {', '.join(self.grid)}"
                )

        for axis, by_value in self.base_by.items():
            if axis not in self.grid:
                raise ConfigError(
                    f"base_by names '{axis}', which is not a grid axis ({', '.join(self.grid)})"
                )
            labels = [train_label(v) for v in self.grid[axis]]  # a list value reads 'mha+fc1'
            stray = [v for v in by_value if train_label(v) not in labels]
            if stray:
                raise ConfigError(f"base_by.{axis} names {stray}, not values of grid.{axis}")

    @property
    def root_path(self) -> Path:
        return Path(self.root or f"runs/sweeps/{self.name}")

    @property
    def axes(self) -> list[str]:
        """The grid axes, in spec order: the columns that tell runs apart."""
        return list(self.grid)


@dataclass(frozen=True)
class Run:
    """One run of a sweep: its id, the values of the grid axes, and its finetune config."""

    run_id: str
    params: dict[str, Any]
    config: dict[str, Any]


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SweepSpec:
    """Read a sweep spec strictly (unknown key = ConfigError naming the known ones)."""
    from vitplas.config import parse_override, set_dotted

    data = read_yaml(path)
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(data, key, value)
    data["source"] = str(path)
    return config_from_dict(SweepSpec, data)


def trained_label(train: Any) -> str:
    """What a run trained (its resolved train list), in one canonical order so that equal sets
    read the same (training.trainsets.canonical_train). `[fc1, mha@8-11]` -> 'mha@8-11+fc1'."""
    from vitplas.training.trainsets import canonical_train

    tokens = train if isinstance(train, list | tuple) else str(train).split("+")
    return "+".join(canonical_train(tokens))


def run_id(params: dict[str, Any], config: dict[str, Any]) -> str:
    """Readable slug of the axis values + a short hash of the whole resolved config.

    The id depends on values only (never on positions in the grid), so reordering a spec's
    axes or values keeps every id; changing any config value makes a new id.
    """
    slug = "_".join(f"{slug_value(params[k])}" for k in sorted(params))
    canonical = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:HASH_LEN]
    return f"{slug}_{digest}"


def _read_preset(spec: SweepSpec, dataset: Any) -> dict[str, Any]:
    """The finetune preset of a dataset as a dict (its `base:` chain merged), or {}."""
    if not spec.presets:
        return {}
    if dataset not in spec.presets:
        raise ConfigError(
            f"dataset '{dataset}' has no entry in `presets` of {spec.source or 'the spec'}; "
            f"entries: {', '.join(spec.presets)}"
        )
    where = Path(spec.source).parent if spec.source else Path(".")
    path = where / spec.presets[dataset]
    if not path.is_file():
        raise ConfigError(
            f"the finetune preset '{path}' for dataset '{dataset}' does not exist; write it "
            f"or change `presets` in {spec.source or 'the spec'}"
        )
    try:
        from vitplas.training.config import read_preset
    except ImportError:  # training area not installed yet: a plain YAML mapping
        return read_yaml(path)
    return read_preset(path)


def expand(spec: SweepSpec, with_presets: bool = True) -> list[Run]:
    """All runs of a spec: preset(dataset) <- base <- base_by[axis][value] <- grid values.

    One Run per grid point; `grid_by_dataset[d]` replaces grid axes for dataset d,
    `grid_by[axis][label]` replaces other grid axes where `axis` takes the value of that label
    (after grid_by_dataset: e.g. each train set's own lr grid), and `base_by[axis][value]` adds
    config keys to the runs where that axis takes that value (e.g. a smaller micro batch for
    a larger model).

    `with_presets=False` skips reading the per-dataset preset files (counting runs only).
    """
    runs: list[Run] = []
    seen: dict[str, dict] = {}
    datasets = spec.grid.get("dataset", [spec.base.get("dataset")])
    for dataset in datasets:
        axes = {**spec.grid, **spec.grid_by_dataset.get(dataset, {})}
        if "dataset" in axes:
            axes["dataset"] = [dataset]
        preset = _read_preset(spec, dataset) if with_presets else {}
        names = list(axes)
        grid = (values for v in split_by(axes, spec) for values in
                itertools.product(*(v[n] for n in names)))  # fmt: skip
        for values in grid:
            params = dict(zip(names, values, strict=True))
            config = {**preset, **spec.base}
            for axis, by_value in spec.base_by.items():
                labelled = {train_label(k): v for k, v in by_value.items()}  # 1 -> '1'
                config.update(labelled.get(train_label(params[axis]), {}))
            config.update(params)
            rid = run_id(params, config)
            if rid in seen:
                raise ConfigError(f"two grid points give the same run {rid}: {params}")
            seen[rid] = params
            runs.append(Run(rid, params, config))
    return runs


def spec_to_dict(spec: SweepSpec) -> dict[str, Any]:
    return dataclasses.asdict(spec)


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


@dataclass
class AnalysisJob:
    """One analysis job of a study: its kind, id (from its values), runner and config."""

    kind: str
    job_id: str
    function: str
    config_class: str | None
    config: dict[str, Any] = field(default_factory=dict)


# `for_each_dataset: true` in an analysis entry: one job per dataset of the sweep's grid, the
# dataset going into the runner config's key DATASET_KEY[kind]
FOR_EACH_DATASET = "for_each_dataset"


def _entries(spec: SweepSpec, kind: str) -> list[dict[str, Any]]:
    """The spec's `analysis.<kind>` entries, `for_each_dataset` ones expanded over the grid."""
    datasets = spec.grid.get("dataset", [spec.base.get("dataset")])
    out = []
    for entry in getattr(spec.analysis, kind):
        config = dict(entry)
        if config.pop(FOR_EACH_DATASET, False):
            out += [{**config, DATASET_KEY[kind]: dataset} for dataset in datasets]
        else:
            out.append(config)
    return out


def analysis_jobs(spec: SweepSpec) -> list[AnalysisJob]:
    """The spec's analysis entries as jobs with ids derived from their values."""
    jobs = []
    for kind in ANALYSIS_RUNNERS:
        for config in _entries(spec, kind):
            function = config.pop("function", ANALYSIS_RUNNERS[kind][0])
            config_class = config.pop("config", ANALYSIS_RUNNERS[kind][1])
            check_job(function, config_class, f"analysis.{kind} entry")
            params = {k: config[k] for k in ("model", "target", "dataset") if k in config}
            jobs.append(AnalysisJob(kind, run_id(params, config), function, config_class, config))
    return jobs


def check_analysis(spec: SweepSpec) -> list[AnalysisJob]:
    """The spec's analysis jobs, each config built strictly (unknown key, bad value: a
    ConfigError naming the entry) before anything runs."""
    jobs = analysis_jobs(spec)
    for job in jobs:
        if job.config_class is None:
            continue
        try:
            config_from_dict(import_path(job.config_class), job.config)
        except ValueError as err:  # ConfigError included
            raise ConfigError(f"analysis.{job.kind} entry {job.job_id}: {err}") from err
    return jobs
