"""Jobs: one record per job kind (vitplas.jobs.table) and one lifecycle that runs any of them in
a run folder (vitplas.jobs.lifecycle). The runners load on first use, so that reading the table
(a command's --help) imports no torch:

    from vitplas.jobs import run_plasticity, run_finetune, ...   (vitplas.jobs.runners)
"""

from __future__ import annotations

from typing import Any

RUNNERS = (
    "run_bounds",
    "run_compare_base",
    "run_evaluate",
    "run_finetune",
    "run_landscape",
    "run_plasticity",
    "run_probe",
    "run_radius",
    "run_select",
)
__all__ = ["RUNNERS", *RUNNERS, "run_job"]


def __getattr__(name: str) -> Any:
    if name in RUNNERS:
        from vitplas.jobs import runners

        return getattr(runners, name)
    if name == "run_job":
        from vitplas.jobs.lifecycle import run_job

        return run_job
    raise AttributeError(f"module 'vitplas.jobs' has no attribute '{name}'")
