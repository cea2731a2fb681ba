"""The compare-base job: plasticity of a finetuned run and of its base, side by side.

Its run folder holds base/ and finetuned/ (two plasticity jobs, each with its own lifecycle) and
the joined tables compare_base.{csv,parquet} (per layer) and compare_base_pooled.* (per
component) and the figure figures/compare_base.{png,pdf} (base against finetuned per component
and layer), sealed with the folder's config and manifest like every job's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vitplas.config import ConfigError
from vitplas.records import read_json, read_table
from vitplas.runs import Computed, RunDir, write_table

JOINED = ("base_mean", "base_ci95", "finetuned_mean", "finetuned_ci95", "ratio")


def joined_plasticity(base, tuned):
    """Side by side: (layer,) component, base_mean, base_ci95, finetuned_mean,
    finetuned_ci95, ratio (finetuned / base), in the finetuned table's row order."""
    keys = [k for k in ("layer", "component") if k in tuned.columns]
    cols = [*keys, "mean", "ci95"]
    joined = tuned[cols].merge(base[cols], on=keys, how="outer", suffixes=("_ft", "_base"))
    names = {"mean_base": "base_mean", "ci95_base": "base_ci95"}
    names |= {"mean_ft": "finetuned_mean", "ci95_ft": "finetuned_ci95"}
    joined = joined.rename(columns=names)
    joined["ratio"] = joined["finetuned_mean"] / joined["base_mean"]
    return joined[[*keys, *JOINED]]


def compute_compare_base(cfg, run: RunDir, progress=None, on_phase=None) -> Computed:
    """Plasticity of finetuned run cfg.model (run/finetuned) and of its base (run/base, the
    spec RUN#base), then the joined tables in `run`."""
    from vitplas.jobs.runners import run_plasticity
    from vitplas.models.finetuned import BASE_SUFFIX, run_folder
    from vitplas.plots.plasticity import compare_base as compare_figure

    if run_folder(cfg.model) is None or cfg.model.endswith(BASE_SUFFIX):
        raise ConfigError(
            f"--compare-base needs a finished finetuning run folder as --model, not '{cfg.model}'"
        )
    results = {}
    for kind, spec in (("base", cfg.model + BASE_SUFFIX), ("finetuned", cfg.model)):
        part = dataclasses.replace(cfg, model=spec)
        results[kind] = run_plasticity(part, run / kind, progress=progress, on_phase=on_phase)
    pooled = joined_plasticity(results["base"]["pooled"], results["finetuned"]["pooled"])
    layers = joined_plasticity(
        *(read_table(run / kind, "plasticity.csv") for kind in ("base", "finetuned"))
    )
    write_table(layers, run / "compare_base")
    write_table(pooled, run / "compare_base_pooled")
    compare_figure(layers, run / "figures" / "compare_base", *_figure_labels(cfg))
    described = results["finetuned"]["model_description"]
    result = {"model": cfg.model, "model_description": described, "parts": ["base", "finetuned"]}
    return Computed(result, result, {"pooled": pooled})


def _figure_labels(cfg) -> tuple[str, dict[str, Any]]:
    """(the run's train list, the facts of the figure's title) of comparison `cfg`."""
    from vitplas.models.finetuned import read_run_config, run_folder

    trained = "[" + ", ".join(map(str, read_run_config(run_folder(cfg.model))["train"])) + "]"
    keys = ("reference", "target", "inputs", "protocol", "pairs", "model")
    return trained, {k: getattr(cfg, k) for k in keys}


def read_compare_base(run: RunDir) -> dict[str, Any]:
    """A finished comparison's result and pooled table, verified."""
    return {**read_json(run.path), "pooled": read_table(run.path, "compare_base_pooled.csv")}
