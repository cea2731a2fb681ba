"""What a study costs before it runs: FLOPs, time on a declared device, and disk.

FLOPs are counted (experiments/flops.py) on one real training step of each run's model and
batch (forward, loss, backward, optimizer step) built on the meta device. Runs that share a
shape (model, input size, batch, classes, what is trained, optimizer) are counted once: the
paper's 924 runs have a few dozen shapes.

Per finetuning run: training = steps x FLOPs of one step; validation = forward FLOPs per
image x val images x number of validations; test = one pass over the test split. Analysis
jobs: plasticity = its pairs through the real estimator (counted the same way) plus the
radius images; probes = one forward pass over the train and test images they read; bounds =
the radius images (spectral norms are negligible).
A text run (a text set: the model is its sequence classifier) counts token batches of its
max_length instead of images (every text padded to it, as training feeds them), a text
plasticity job its pairs of max_length tokens and its token radius through the real
analysis.text_pairs.text_radius; the table says tokens where images say px.

Time = FLOPs / (peak x MFU) + a fixed start-up per job (process start, imports, model and data
loading), on a declared device (experiments/devices.py: H100 by default, at 40% utilisation),
where the peak is that of the precision each job computes in (vitplas.device): a
finetuning run's resolved `amp` (`protocol: paper` trains in float32, as the original: the
fp32 peak, 15x below an H100's bf16), a plasticity job's `dtype`, a probe's `amp`. `cpu`
measures this machine's float32 and bf16 matmul rates (per CPU second, so a shared machine
reads as an idle one). Where runs train in float32 or TF32 on a GPU, the table says how
much faster bf16 would be.

Disk kept by a finished run: best.safetensors (the trained parameters, float32) and its records
(config, manifest, metrics, result, TensorBoard). While a run is in flight its resumable train
states (trained parameters + optimizer slots, `keep_checkpoints` of them) come on top; finished
runs prune them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from vitplas.device import amp_precision, dtype_precision
from vitplas.experiments.axes import train_label
from vitplas.experiments.devices import (  # noqa: F401 (declared_device: the CLI's)
    DEVICES,
    Device,
    declared_device,
    measure_cpu_tflops,
)
from vitplas.experiments.flops import (
    forward_flops,
    input_label,
    meta_model,
    pair_flops,
    text_config,
    text_radius_flops,
    train_step_flops,
)
from vitplas.experiments.sizes import ASSUMED_SPLIT, split_sizes
from vitplas.experiments.spec import Run, SweepSpec, expand

SLURM_MARGIN = 1.5  # a job's time limit = estimate x margin + SLURM_SLACK_MIN
SLURM_SLACK_MIN = 15
UNCOUNTED_TIME_MIN = 240  # SLURM limit of a custom runner's job (no estimate possible)
FLOAT_BYTES = 4  # weights and optimizer slots are float32 (autocast keeps float32 masters)
RECORD_LINE_BYTES = 400  # mean metrics.jsonl line (train lines with per-component grad norms
# ~600 B, val/test lines ~100 B; a mini-study run: 2,630 B for 7 lines)
RUN_FILES_BYTES = 4_000  # config.yaml + manifest.json + result.json + status + DONE
ANALYSIS_BYTES = 2_000_000  # tables (CSV + Parquet) and figures of one analysis job
OPTIMIZER_SLOTS = {"sgd": 1, "adamw": 2}  # momentum; Adam's two moments


# ---- the estimate ----------------------------------------------------------------------------
@dataclass
class JobCost:
    """One job of a study: a finetuning run or an analysis job."""

    job_id: str
    kind: str  # finetune | plasticity | bounds | probes
    shape: str  # what its FLOPs were counted on (runs that share it share the count)
    flops: dict[str, float]  # train / val / test / analysis
    disk_bytes: int
    peak_disk_bytes: int
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    precision: str = "fp32"  # what its matmuls compute in (vitplas.device): its peak
    device_type: str = "cuda"  # where it computes: the declared device's type, or cpu when
    # its config says device: cpu

    @property
    def total_flops(self) -> float:
        return float(sum(self.flops.values()))


class _Counter:
    """Counts each distinct (model, shape) once; one meta model per (spec, img, classes)."""

    def __init__(self) -> None:
        self.models: dict[tuple, nn.Module] = {}
        self.cache: dict[tuple, Any] = {}

    def model(self, spec: str, img_size: int | None, classes: int) -> nn.Module:
        key = (spec, img_size, classes)
        if key not in self.models:
            self.models[key] = meta_model(spec, img_size, classes)
        return self.models[key]

    def get(self, key: tuple, compute):
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]


def _classes(dataset: str) -> int:
    from vitplas.data.registry import dataset_info

    return dataset_info(dataset).num_classes or 10


def _is_text_set(dataset: str) -> bool:
    from vitplas.data.registry import dataset_info

    return dataset_info(dataset).modality == "text"


def _capped(n: int, cap: int | None) -> int:
    return n if cap is None else min(n, cap)


def run_cost(run: Run, counter: _Counter, device: Device) -> JobCost:
    """The cost of one finetuning run of a sweep."""
    from vitplas.config import config_from_dict
    from vitplas.training.config import FinetuneConfig
    from vitplas.training.trainsets import RIVALS, is_auto

    cfg = config_from_dict(FinetuneConfig, dict(run.config))
    auto = any(is_auto(t) for t in cfg.train)
    if auto:  # the pick is made when the run starts: count the most a pick can train
        cfg.train = ["all"]
    classes = _classes(cfg.dataset)
    text = _is_text_set(cfg.dataset)  # a text set: img_size is not read, max_length is
    img_size, length = (None, cfg.max_length) if text else (cfg.img_size, None)
    model = counter.model(cfg.model, img_size, classes)
    key = (cfg.model, img_size, length, classes)
    fwd = counter.get(("fwd", *key), lambda: forward_flops(model, length))
    if any(t in RIVALS for t in cfg.train):  # peft injects adapters: keep the shared model clean
        model = copy.deepcopy(model)
    trained = tuple(cfg.train)
    shape = (*key, cfg.batch_size, trained, cfg.optimizer)
    shape += (cfg.train_head, cfg.train_norm, cfg.lora.r if "lora" in trained else None)
    step, n_trained = counter.get(("train", *shape), lambda: train_step_flops(model, cfg))
    sizes, known = split_sizes(cfg.dataset)
    validations = cfg.steps // cfg.eval_every
    validations += int(cfg.validates_at_end and cfg.steps % cfg.eval_every != 0)
    flops = {
        "train": float(step) * cfg.steps,
        "val": float(fwd) * _capped(sizes["val"], cfg.max_eval_samples) * validations,
        "test": float(fwd) * _capped(sizes["test"], cfg.max_eval_samples),
    }
    best = n_trained * FLOAT_BYTES
    lines = cfg.steps // cfg.log_every + validations + 1
    records = RUN_FILES_BYTES + lines * RECORD_LINE_BYTES * (2 if cfg.tensorboard else 1)
    # a train state holds the trained weights, the optimizer's slots and the best weights
    states = cfg.keep_checkpoints * best * (2 + OPTIMIZER_SLOTS.get(cfg.optimizer, 2))
    label = f"{cfg.model}@{input_label(model, length)} b{cfg.batch_size}"
    label += f" {train_label(list(trained))}"
    label += " (auto)" if auto else ""
    cost = JobCost(run.run_id, "finetune", label, flops, best + records, best + records + states)
    if not known:
        unit = "texts" if text else "images"
        cost.notes.append(f"{cfg.dataset}: split sizes unknown, {ASSUMED_SPLIT} {unit} assumed")
    if auto:
        cost.notes.append(
            "train=[auto] runs (label 'all (auto)') are counted as train=[all], an upper "
            "bound: the pick is made when the run starts; their selection scoring is not counted"
        )
    cost.device_type = "cpu" if cfg.device == "cpu" else device.kind  # a cpu run stays there
    cost.precision = amp_precision(cfg.amp, cost.device_type)  # cfg.amp resolved by validate()
    cost.seconds = device.seconds(cost.total_flops, cost.precision)
    return cost


def _analysis_config(job: Any) -> Any:
    """The job's config object (its dataclass, defaults filled in), or None for a custom one."""
    from vitplas.config import config_from_dict
    from vitplas.jobs.registry import import_path

    if job.config_class is None:
        return None
    return config_from_dict(import_path(job.config_class), dict(job.config))


def analysis_cost(job: Any, counter: _Counter, device: Device) -> JobCost:
    """The cost of one analysis job (reproduce.AnalysisJob) of a study; a custom runner's
    job counts its start-up only."""
    cfg = _analysis_config(job)
    if cfg is None or not hasattr(cfg, "model"):
        cost = JobCost(job.job_id, job.kind, "custom", {"analysis": 0.0}, ANALYSIS_BYTES, 0)
        cost.notes.append(f"{job.kind} job {job.job_id}: a custom runner, start-up only")
        cost.seconds = device.seconds(0.0, cost.precision)
        return cost
    if text_config(cfg.model) is not None:
        return _text_analysis_cost(job, cfg, counter, device)
    model = counter.model(cfg.model, cfg.img_size, 0)
    fwd = counter.get(("fwd", cfg.model, cfg.img_size, 0), lambda: forward_flops(model))
    radius_images = 0 if getattr(cfg, "radius", None) else getattr(cfg, "radius_images", 0)
    if job.kind == "plasticity":
        key = ("pair", cfg.model, cfg.img_size, cfg.inputs)
        pair = counter.get(key, lambda: pair_flops(model, cfg.inputs))
        flops = float(pair) * cfg.pairs + float(fwd) * (radius_images if cfg.bounds else 0)
    elif job.kind == "probes":
        flops = float(fwd) * _probe_inputs(cfg)
    else:  # bounds: the radius images (spectral norms are negligible)
        flops = float(fwd) * radius_images
    return _analysis_job(job, cfg, f"{cfg.model}@{input_label(model)}", flops, device)


def _probe_inputs(cfg: Any) -> int:
    """The train and test images (texts) a probe job reads, its caps applied."""
    sizes, _ = split_sizes(cfg.dataset)
    return _capped(sizes["train"], cfg.max_train) + _capped(sizes["test"], cfg.max_test)


def _analysis_job(job: Any, cfg: Any, label: str, flops: float, device: Device) -> JobCost:
    cost = JobCost(job.job_id, job.kind, label, {"analysis": flops}, ANALYSIS_BYTES, ANALYSIS_BYTES)
    cost.precision = _analysis_precision(job.kind, cfg, device.kind)
    cost.seconds = device.seconds(cost.total_flops, cost.precision)
    return cost


def _text_analysis_cost(job: Any, cfg: Any, counter: _Counter, device: Device) -> JobCost:
    """A plasticity job of a text model: its pairs of max_length tokens through the estimator
    and, with bounds, its radius texts through the token radius; a probe job: one forward pass
    of max_length tokens per train and test text it reads; other kinds are refused."""
    from vitplas.config import ConfigError

    if job.kind == "probes":  # img_size is not read for a text set
        length, model = cfg.max_length, counter.model(cfg.model, None, 0)
        fwd = counter.get(("fwd", cfg.model, None, length), lambda: forward_flops(model, length))
        flops = float(fwd) * _probe_inputs(cfg)
        return _analysis_job(job, cfg, f"{cfg.model}@{input_label(model, length)}", flops, device)
    if job.kind != "plasticity":
        raise ConfigError(
            f"{job.kind} job {job.job_id}: {cfg.model} is a text model and {job.kind} reads "
            "images only; measure text models with plasticity or probes"
        )
    length, model = cfg.max_length, counter.model(cfg.model, cfg.img_size, 0)
    key = (cfg.model, length, cfg.inputs)
    pair = counter.get(("pair", *key), lambda: pair_flops(model, cfg.inputs, length))
    flops = float(pair) * cfg.pairs
    if cfg.bounds and cfg.radius is None:
        radius = counter.get(("radius", *key), lambda: text_radius_flops(model, cfg.inputs, length))
        flops += float(radius) * cfg.radius_images
    return _analysis_job(job, cfg, f"{cfg.model}@{input_label(model, length)}", flops, device)


def _analysis_precision(kind: str, cfg: Any, device_type: str) -> str:
    """A plasticity job computes in its `dtype`, a probe in its `amp`; the bounds' radius is
    measured in float32."""
    device_type = "cpu" if getattr(cfg, "device", None) == "cpu" else device_type
    if kind == "plasticity" and hasattr(cfg, "dtype"):
        return dtype_precision(cfg.dtype, device_type)
    if hasattr(cfg, "amp"):
        return amp_precision(cfg.amp, device_type)
    return "fp32"


@dataclass
class StudyCost:
    """Every job's cost and the totals of a study on one device."""

    name: str
    device: Device
    jobs: list[JobCost]
    time_min: int | None = None  # the spec's SLURM time limit per run, when it sets one

    @property
    def runs(self) -> list[JobCost]:
        return [j for j in self.jobs if j.kind == "finetune"]

    def totals(self, jobs: Iterable[JobCost] | None = None) -> dict[str, float]:
        jobs = list(self.jobs if jobs is None else jobs)
        out: dict[str, float] = {"jobs": len(jobs)}
        for key in ("train", "val", "test", "analysis"):
            out[f"{key}_flops"] = sum(j.flops.get(key, 0.0) for j in jobs)
        out["flops"] = sum(j.total_flops for j in jobs)
        out["seconds"] = sum(j.seconds for j in jobs)
        out["disk_bytes"] = sum(j.disk_bytes for j in jobs)
        out["peak_disk_bytes"] = max((j.peak_disk_bytes for j in jobs), default=0)
        return out

    def per_run_text(self) -> dict[str, str]:
        """run id -> '  <FLOP>  <time>' for the dry run's list of runs."""
        text = {j.job_id: (human(j.total_flops, "FLOP"), human(j.seconds, "s")) for j in self.runs}
        return {job_id: f"  {flop}  {secs}" for job_id, (flop, secs) in text.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.name,
            "device": asdict(self.device),
            "totals": self.totals(),
            "runs_totals": self.totals(self.runs),
            "jobs": [{**asdict(j), "total_flops": j.total_flops} for j in self.jobs],
        }


def study_cost(
    spec: SweepSpec, device: Device | None = None, runs: list[Run] | None = None
) -> StudyCost:
    """The cost of every finetuning run and analysis job of a spec on `device`. Runs of
    another runner than vitplas's finetunings (jobs.FINETUNE_RUNNERS) are not estimated."""
    from vitplas.experiments.spec import analysis_jobs
    from vitplas.jobs.registry import FINETUNE_RUNNERS

    device = device or Device()
    counter = _Counter()
    runs = expand(spec) if runs is None else runs
    if spec.runner.function not in FINETUNE_RUNNERS:
        runs = []
    jobs = [run_cost(run, counter, device) for run in runs]
    jobs += [analysis_cost(job, counter, device) for job in analysis_jobs(spec)]
    return StudyCost(spec.name, device, jobs, spec.executor.slurm.time_min)


def slurm_minutes(cost: JobCost) -> int:
    """A SLURM time limit for one job: its estimate x SLURM_MARGIN + SLURM_SLACK_MIN."""
    return math.ceil(cost.seconds * SLURM_MARGIN / 60) + SLURM_SLACK_MIN


# ---- the readable form -----------------------------------------------------------------------
def human(value: float, unit: str) -> str:
    """1.2e15, 'FLOP' -> '1.20 PFLOP'; bytes -> '3.4 GB'; seconds -> '2.5 h'."""
    if unit == "s":
        for size, name in ((86400, "d"), (3600, "h"), (60, "min")):
            if value >= size:
                return f"{value / size:.1f} {name}"
        return f"{value:.0f} s"
    for power, prefix in ((18, "E"), (15, "P"), (12, "T"), (9, "G"), (6, "M"), (3, "k")):
        if value >= 10**power:
            return f"{value / 10**power:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


def slurm_time_limits(
    spec: SweepSpec, runs: list[Run], device: Device | None = None
) -> dict[str, int]:
    """run id -> a SLURM time limit in minutes: the run's estimate on `device` (default: the
    declared H100) x SLURM_MARGIN + SLURM_SLACK_MIN, rounded up to 30 minutes so that runs of
    similar length share a job array. Runs of a custom runner, which vitplas cannot count,
    get UNCOUNTED_TIME_MIN."""
    from vitplas.jobs.registry import FINETUNE_RUNNERS

    if spec.runner.function not in FINETUNE_RUNNERS:
        return {run.run_id: UNCOUNTED_TIME_MIN for run in runs}
    counter, device = _Counter(), device or Device()
    limits = {}
    for run in runs:
        minutes = slurm_minutes(run_cost(run, counter, device))
        limits[run.run_id] = 30 * math.ceil(minutes / 30)
    return limits
