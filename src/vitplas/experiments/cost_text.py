"""The readable form of a study's cost (experiments/cost.py): the dry run's table, grouped by
shape and precision, the device and its peaks, how much faster bf16 would be where runs train
in float32, and whether the spec's SLURM time limit holds the runs' estimates."""

from __future__ import annotations

from vitplas.experiments.cost import (
    SLURM_MARGIN,
    SLURM_SLACK_MIN,
    JobCost,
    StudyCost,
    human,
    slurm_minutes,
)


def _sums(totals: dict[str, float]) -> tuple[str, str, str]:
    return (
        human(totals["flops"], "FLOP"),
        human(totals["seconds"], "s"),
        human(totals["disk_bytes"], "B"),
    )


def format_table(cost: StudyCost) -> str:
    """Jobs grouped by shape and precision (count, FLOPs and time per job and in all, disk
    kept), totals, the device, how much faster bf16 would be, and the SLURM limit's check."""
    groups: dict[tuple[str, str, str], list[JobCost]] = {}
    for job in cost.jobs:
        groups.setdefault((job.kind, job.shape, job.precision), []).append(job)
    header = ("kind", "shape", "precision", "jobs", "FLOP/job", "time/job", "FLOP", "time", "disk")
    rows = [header]
    for (kind, shape, precision), jobs in groups.items():
        tot, n = cost.totals(jobs), len(jobs)
        per_job = (human(tot["flops"] / n, "FLOP"), human(tot["seconds"] / n, "s"))
        rows.append((kind, shape, precision, str(n), *per_job, *_sums(tot)))
    tot = cost.totals()
    rows.append(("total", "", "", str(len(cost.jobs)), "", "", *_sums(tot)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(-1, lines[1])
    dev = cost.device
    runs = cost.totals(cost.runs)
    lines.append(
        f"{len(cost.runs)} runs: train {human(runs['train_flops'], 'FLOP')}, validation "
        f"{human(runs['val_flops'], 'FLOP')}, test {human(runs['test_flops'], 'FLOP')}; "
        f"analyses {human(tot['analysis_flops'], 'FLOP')}"
    )
    lines.append(
        f"device: {dev.name}, dense peaks {dev.fp32:.3g} / {dev.tf32:.3g} / {dev.bf16:.3g} "
        f"TFLOP/s (fp32 / tf32 / bf16) x MFU {dev.mfu:g} + {dev.startup_s:g} s start-up per "
        f"job; disk while runs are in flight: up to {human(tot['peak_disk_bytes'], 'B')} per "
        "run (resumable train states, pruned when a run finishes)"
    )
    lines += faster_lines(cost) + slurm_lines(cost)
    notes = sorted({n for j in cost.jobs for n in j.notes})
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def faster_lines(cost: StudyCost) -> list[str]:
    """Where runs train in float32 or TF32 on a GPU: the study's time at that precision, and
    what it would be with the same runs in TF32 (amp: tf32) or bf16 (amp: bf16)."""
    slow = [j for j in cost.runs if j.precision in ("fp32", "tf32") and j.device_type == "cuda"]
    if not slow or cost.device.kind != "cuda":
        return []
    now = cost.totals()["seconds"]
    counts = {p: sum(j.precision == p for j in slow) for p in ("fp32", "tf32")}
    what = " and ".join(f"{n} in {p}" for p, n in counts.items() if n)
    options = []
    for faster in ("tf32", "bf16") if counts["fp32"] else ("bf16",):
        saved = sum(
            j.seconds - cost.device.seconds(j.total_flops, faster)
            for j in slow
            if j.precision != faster
        )
        options.append(
            f"with amp: {faster} {human(now - saved, 's')} ({now / (now - saved):.1f}x faster)"
        )
    return [
        f"precision: {len(slow)} of {len(cost.runs)} runs train without bf16 ({what}; amp: "
        f"none is float32, as the original trains): {human(now, 's')}; {', '.join(options)}, "
        "neither the original's numerics"
    ]


def slurm_lines(cost: StudyCost) -> list[str]:
    """Whether the spec's SLURM time limit holds the runs' estimates (x the margin)."""
    if cost.time_min is None or not cost.runs:
        return []
    need = max(slurm_minutes(j) for j in cost.runs)
    over = sum(slurm_minutes(j) > cost.time_min for j in cost.runs)
    if not over:
        return [f"SLURM: the spec's time_min {cost.time_min} min holds every run ({need} needed)"]
    return [
        f"SLURM: the spec's time_min {cost.time_min} min is below the estimate (x "
        f"{SLURM_MARGIN:g} + {SLURM_SLACK_MIN} min) of {over} of {len(cost.runs)} runs (up to "
        f"{need} min): they would be killed; drop time_min (limits from the estimate) or "
        "raise it"
    ]
