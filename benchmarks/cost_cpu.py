"""The cost estimate at the precision a run trains in, against measured runs on this CPU.

Two short finetuning runs of the offline DINOv2 ViT-S/14 (float32: `amp: none`; bf16
autocast: `amp: bf16`), each estimated first on the declared `cpu` device (its float32 and
bf16 matmul rates measured now, MFU 0.5, 10 s start-up) and then run as `vitplas finetune`
in a child process. Prints per precision: estimated s, measured wall s, measured CPU s /
threads (what the wall time would be on an idle machine: a shared machine's wall time also
counts the neighbours), and estimate / measured; ends with one JSON line.

    .venv/bin/python benchmarks/cost_cpu.py [--steps 12] [--img-size 112] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from vitplas.experiments.cost import study_cost
from vitplas.experiments.devices import cpu_device
from vitplas.experiments.spec import expand, load_spec

SPEC = """name: cost-cpu
base: {{model: dinov2-s14, dataset: fashion-mnist, img_size: {img}, batch_size: {batch},
        steps: {steps}, warmup_steps: 1, eval_every: {steps}, max_eval_samples: 64,
        train: [all], num_workers: 0, device: cpu, tensorboard: false}}
grid: {{amp: [none, bf16]}}
"""


def run_child(config: dict, out: Path) -> tuple[float, float]:
    """(wall s, CPU s of the child) of `vitplas finetune` with `config`'s keys."""
    keys = [f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in config.items()]
    command = [sys.executable, "-c", "from vitplas.cli import main; main()", "finetune"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([*command, *keys, "--out", str(out)], check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--img-size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        spec_file = Path(tmp) / "spec.yaml"
        spec_file.write_text(SPEC.format(img=args.img_size, batch=args.batch, steps=args.steps))
        spec = load_spec(spec_file)
        device = cpu_device()
        estimate = study_cost(spec, device)
        rows = []
        for run, job in zip(expand(spec), estimate.runs, strict=True):
            config = dict(run.config)
            wall, cpu = run_child(config, Path(tmp) / run.run_id)
            idle = cpu / threads
            rows.append(
                {
                    "precision": job.precision,
                    "tflop": job.total_flops / 1e12,
                    "estimate_s": job.seconds,
                    "wall_s": wall,
                    "cpu_per_thread_s": idle,
                    "estimate_vs_wall": job.seconds / wall,
                    "estimate_vs_idle": job.seconds / idle,
                }
            )
            print(
                f"{job.precision}: {job.total_flops / 1e12:.2f} TFLOP, estimated "
                f"{job.seconds:.0f} s, measured {wall:.0f} s wall, {idle:.0f} s CPU/thread: "
                f"estimate/wall {job.seconds / wall:.2f}, estimate/idle {job.seconds / idle:.2f}"
            )
    load = os.getloadavg()[0]
    print(
        f"device: {device.name}: fp32 {device.fp32:.3f}, bf16 {device.bf16:.3f} TFLOP/s per CPU "
        f"second; load average {load:.1f}"
    )
    peaks = {"fp32_tflops": device.fp32, "bf16_tflops": device.bf16}
    print(json.dumps({"benchmark": "cost_cpu", "threads": threads, **peaks, "runs": rows}))


if __name__ == "__main__":
    main()
