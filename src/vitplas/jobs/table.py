"""The table of job kinds: one `Job` record each. Every other list of job kinds is derived here.

Adding a job kind is one record below plus its config class and compute/read-back functions;
its command, `config show` kind, sweep allow-list entry, analysis runner, aggregate cells and
sealed records follow from the record (vitplas.jobs.registry, vitplas.cli.factory, ...).
Importing this module imports no torch (the records name functions by import path).
"""

from __future__ import annotations

from vitplas.jobs.job import ANALYSIS_RUNTIME_KEYS, Job

PLASTICITY_LABELS = ("model", "reference", "target", "inputs")  # the rows' labels
TINY = "--model tiny-random --random-init"
_COMMON = {"model": "--model", "random_init": "--random-init", "img_size": "--img-size"}
_RUN = "--model tiny-random --random-init img_size=32 --dataset digits"
_FT = (  # a tiny finetune that makes a finished run for the examples that need one
    "vitplas finetune configs/finetune/smoke-digits.yaml steps=4 eval_every=2 warmup_steps=1 "
    "--out runs/ex-ft"
)
_BOUNDS_TABLES = {
    "bound_ratio": ((*PLASTICITY_LABELS, "layer", "component"), "ratio"),
    "bounds": (("model", "radius", "norm_scale", "r_max", "layer", "component"), "bound"),
}

JOBS: tuple[Job, ...] = (
    Job(
        kind="plasticity",
        config="vitplas.analysis.configs:PlasticityConfig",
        compute="vitplas.analysis.job:compute_plasticity",
        read_back="vitplas.analysis.job:read_plasticity",
        summary="Plasticity per (layer, component), ranked, with 95% CIs.",
        records=("summary.txt", "*.csv", "*.parquet"),
        tables={
            "plasticity": ((*PLASTICITY_LABELS, "layer", "component"), "mean"),
            "plasticity_pooled": ((*PLASTICITY_LABELS, "component"), "mean"),
            **_BOUNDS_TABLES,
        },
        render="vitplas.jobs.render:plasticity",
        examples=(
            f"vitplas plasticity {TINY} --target digits --pairs 64 components=[mha,fc1]",
            "vitplas plasticity --pairs 32 bounds=false",
        ),
        flags={
            **_COMMON,
            **{k: "--" + k.replace("_", "-") for k in ("reference", "reference_split", "target")},
            **{k: "--" + k.replace("_", "-") for k in ("target_split", "data_root", "inputs")},
            **{k: "--" + k.replace("_", "-") for k in ("components", "pairs", "batch_size")},
            **{k: "--" + k.replace("_", "-") for k in ("seed", "device", "dtype", "until_ci")},
            "num_workers": "--workers",
            **{k: "--" + k.replace("_", "-") for k in ("bounds", "radius", "ln_bound")},
            **{k: "--" + k.replace("_", "-") for k in ("mha_bound", "mha_slicing", "protocol")},
            "save_pairs": "--save-pairs",
            "check_invariance": "--check-invariance",
        },
        progress="pairs",
        analysis="plasticity",
        dataset_key="target",
        runner="vitplas.jobs.runners:run_plasticity",
        aliases=("vitplas.analysis.job:run_plasticity", "vitplas.analysis.job:PlasticityConfig"),
        cost="pairs",
    ),
    Job(
        kind="compare-base",
        config="vitplas.analysis.configs:PlasticityConfig",
        compute="vitplas.jobs.compare:compute_compare_base",
        read_back="vitplas.jobs.compare:read_compare_base",
        summary="Plasticity of a finetuned run beside its base's.",
        records=(
            "compare_base.csv",
            "compare_base.parquet",
            "compare_base_pooled.*",
            "figures/compare_base.*",
        ),
        render="vitplas.jobs.render:comparison",
        flag_of="plasticity",
        progress="pairs",
        runner="vitplas.jobs.runners:run_compare_base",
    ),
    Job(
        kind="bounds",
        config="vitplas.analysis.configs:BoundsConfig",
        compute="vitplas.analysis.bounds_job:compute_bounds",
        read_back="vitplas.analysis.bounds_job:read_bounds",
        summary="Theoretical upper bounds per layer and component.",
        records=("*.csv", "*.parquet"),
        tables=_BOUNDS_TABLES,
        render="vitplas.jobs.render:bounds",
        examples=(f"vitplas bounds {TINY} --dataset digits radius_images=32",),
        flags={
            **_COMMON,
            **{k: "--" + k.replace("_", "-") for k in ("dataset", "split", "radius", "inputs")},
            "radius_images": "--radius-images",
            **{k: "--" + k.replace("_", "-") for k in ("components", "ln_bound", "mha_slicing")},
            **{k: "--" + k.replace("_", "-") for k in ("mha_bound", "r_max")},
            **{k: "--" + k.replace("_", "-") for k in ("plasticity", "device", "seed")},
            "protocol": "--protocol",
        },
        input_runs=("model", "plasticity"),  # the plasticity run it divides by the bounds
        analysis="bounds",
        dataset_key="dataset",
        runner="vitplas.jobs.runners:run_bounds",
        aliases=(
            "vitplas.analysis.bounds_job:run_bounds",
            "vitplas.analysis.bounds_job:BoundsConfig",
        ),
        cost="radius",
    ),
    Job(
        kind="radius",
        config="vitplas.analysis.configs:RadiusConfig",
        compute="vitplas.analysis.radius:compute_radius",
        read_back="vitplas.analysis.radius:read_radius",
        summary="Token radius r: mean RMS token norm of the embedding.",
        records=("radius.json",),
        result_file=False,
        render="vitplas.jobs.render:radius",
        examples=(f"vitplas radius {TINY} --dataset digits --images 32 batch_size=16",),
        flags={
            **_COMMON,
            **{k: "--" + k.replace("_", "-") for k in ("dataset", "split", "images", "inputs")},
            **{k: "--" + k.replace("_", "-") for k in ("batch_size", "device", "seed", "protocol")},
        },
        progress="images",
        runner="vitplas.jobs.runners:run_radius",
    ),
    Job(
        kind="finetune",
        config="vitplas.training.config:FinetuneConfig",
        compute="vitplas.training.finetune:compute_finetune",
        read_back="vitplas.training.finetune:read_finetune",
        summary="Finetune the components named in `train`; resumable.",
        records=(
            "metrics.jsonl",
            "picks.json",
            "test_predictions.csv",
            "*.csv",
            "*.parquet",
            "checkpoints/*.safetensors",
        ),
        runtime_keys=frozenset(
            {"num_workers", "device", "compile", "tensorboard", "eval_batch_size"}
            | {"log_every", "keep_state"}
        ),
        result_file=False,
        manifest=False,
        prepare="vitplas.selection.auto:resolve_auto",
        after_done="vitplas.training.finetune:after_done",
        render="vitplas.jobs.render:finetune",
        examples=(
            "vitplas finetune configs/finetune/smoke-digits.yaml steps=10 eval_every=5 "
            "warmup_steps=2 --train mha,fc1 --lr 0.05",
        ),
        flags={k: "--" + k for k in ("model", "dataset", "train", "lr", "steps", "seed", "device")},
        folder="hash",
        progress="bar",
        sweep_runner=True,
        runner="vitplas.jobs.runners:run_finetune",
        aliases=(
            "vitplas.training.finetune:run_finetune",
            "vitplas.selection.auto:finetune",
            "vitplas.training.finetune:FinetuneConfig",
        ),
        cost="finetune",
    ),
    Job(
        kind="evaluate",
        config="vitplas.training.config:EvaluateConfig",
        compute="vitplas.training.evaluate:compute_evaluation",
        read_back="vitplas.training.evaluate:read_evaluation",
        summary="A finished run's best weights on its and other datasets.",
        records=("evaluation.csv", "evaluation.parquet"),
        on_finished_run=("finetune", "finetuning"),
        input_runs=(),  # its run is the folder it works in: computed afresh every time
        render="vitplas.jobs.render:evaluation",
        examples=(f"{_FT} && vitplas evaluate runs/ex-ft split=val batch_size=64",),
        flags={
            "datasets": "--dataset",
            **{k: "--" + k.replace("_", "-") for k in ("split", "device", "batch_size")},
            "num_workers": "--num-workers",
        },
        positional="run",
        positional_name=("RUN_DIR", "run folder"),
        folder="none",
        progress="none",
        runner="vitplas.jobs.runners:run_evaluate",
    ),
    Job(
        kind="probe",
        config="vitplas.training.config:ProbeConfig",
        compute="vitplas.training.probe:compute_probe",
        read_back="vitplas.training.probe:read_probe",
        summary="Linear probes on (layer, component) outputs.",
        records=("*.csv", "*.parquet"),
        tables={"probe": (("model", "dataset", "pool", "backend", "layer", "component"), "acc")},
        render="vitplas.jobs.render:probe",
        examples=(
            f"vitplas probe {_RUN} layers=[-1] components=[mha,block] max_train=200 "
            "max_test=100 num_workers=0 device=cpu",
        ),
        flags={**_COMMON, **{k: "--" + k for k in ("dataset", "protocol")}},
        folder_name=("model", "dataset"),
        analysis="probes",
        dataset_key="dataset",
        runner="vitplas.jobs.runners:run_probe",
        aliases=("vitplas.training.probe:run_probe", "vitplas.training.probe:ProbeConfig"),
        cost="images",
    ),
    Job(
        kind="select",
        config="vitplas.selection.config:SelectConfig",
        compute="vitplas.selection.select:compute_select",
        read_back="vitplas.selection.select:read_select",
        summary="Rank components by the criteria; pick and export sets.",
        records=("selection.csv", "picks.json"),
        runtime_keys=ANALYSIS_RUNTIME_KEYS | {"export"},  # a format changes no score or pick
        extend="vitplas.selection.export:export_run",
        render="vitplas.jobs.render:selection",
        examples=(
            f"vitplas select {TINY} --target digits --pairs 16 grad_batches=1 batch_size=8 "
            "--export peft",
        ),
        flags={
            **_COMMON,
            **{k: "--" + k.replace("_", "-") for k in ("target", "data_root", "criteria")},
            **{k: "--" + k.replace("_", "-") for k in ("budget", "granularity", "rule", "export")},
            "inputs": "--inputs",
            **{k: "--" + k.replace("_", "-") for k in ("pairs", "grad_batches", "batch_size")},
            **{k: "--" + k.replace("_", "-") for k in ("seed", "device")},
        },
        progress="none",
        runner="vitplas.jobs.runners:run_select",
    ),
    Job(
        kind="landscape",
        config="vitplas.analysis.configs:LandscapeConfig",
        compute="vitplas.analysis.landscape:compute_landscape",
        read_back="vitplas.analysis.landscape:read_landscape",
        summary="Loss and rate of change around a short SGD path.",
        records=("*.csv", "*.parquet"),
        render="vitplas.jobs.render:landscape",
        examples=(
            "vitplas landscape --model tiny-random random_init=true img_size=32 "
            "dataset=digits grid=5 steps=4",
        ),
        flags={"model": "--model"},
        presets="vitplas.analysis.configs:PRESETS",
        runner="vitplas.jobs.runners:run_landscape",
    ),
)

BY_KIND: dict[str, Job] = {job.kind: job for job in JOBS}


def get(kind: str) -> Job:
    """The record of job `kind`; an unknown kind is a ValueError naming the known ones."""
    if kind not in BY_KIND:
        raise ValueError(f"job kind '{kind}' is unknown; known: {', '.join(BY_KIND)}")
    return BY_KIND[kind]


def analysis_jobs() -> dict[str, Job]:
    """{spec analysis key: job} of the jobs a sweep spec's `analysis:` section may hold."""
    return {job.analysis: job for job in JOBS if job.analysis}


def aggregate_cells() -> dict[str, tuple[list[str], str]]:
    """{table name: (cell columns, value column)} of every job's tidy study tables."""
    cells: dict[str, tuple[list[str], str]] = {}
    for job in JOBS:
        for name, (keys, value) in job.tables.items():
            cells.setdefault(name, (list(keys), value))
    return cells


__all__ = ["ANALYSIS_RUNTIME_KEYS", "BY_KIND", "JOBS", "Job", "aggregate_cells", "get"]
