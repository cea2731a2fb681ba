"""The devices a study's cost is estimated on: dense peak TFLOP/s per precision, one record
per device (vitplas.device names the precisions), and this CPU, measured.

Peaks are the vendors' dense figures (the sparsity figures are twice the tensor-core ones):
H100 and H200 SXM 66.9 (fp32), 494.7 (tf32), 989.4 (bf16); A100 SXM 19.5, 156, 312; L40S 91.6,
181.05, 362.1. float16 runs at the bf16 peak. A run that trains in float32 (the original's
`amp: none`) divides by the fp32 peak, 15x below an H100's bf16: its time says so. `cuda` names
the start of `torch.cuda.get_device_name()` on each (benchmarks/train_gpu.py reads the table
through `device_named`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass

import torch

DEFAULT_MFU = 0.4
DEFAULT_STARTUP_S = 60.0  # per job on a cluster: python + torch imports, model, data loaders
CPU_MFU = 0.5  # a ViT step on a CPU reaches about half the matmul benchmark's rate
CPU_STARTUP_S = 10.0  # per job on a CPU: process start, imports, model and data loading


@dataclass(frozen=True)
class Device:
    """Where an estimate's time is spent: dense peaks (TFLOP/s) per precision, the share of
    the peak a run reaches (mfu), a start-up per job, and the device type (`cuda` or `cpu`:
    what `amp: auto` computes in there)."""

    name: str = "H100 SXM"
    fp32: float = 66.9
    tf32: float = 494.7
    bf16: float = 989.4
    mfu: float = DEFAULT_MFU
    startup_s: float = DEFAULT_STARTUP_S
    kind: str = "cuda"
    cuda: str = "NVIDIA H100"  # prefix of its torch.cuda.get_device_name() ("": none)

    def __post_init__(self) -> None:
        peaks = (self.fp32, self.tf32, self.bf16)
        if not all(p > 0 for p in peaks) or not 0 < self.mfu <= 1 or self.startup_s < 0:
            raise ValueError(
                f"device peaks {peaks} TFLOP/s, mfu {self.mfu}, startup {self.startup_s} s: use "
                "peaks > 0, 0 < mfu <= 1 and a startup >= 0"
            )

    def peak(self, precision: str) -> float:
        """The dense peak in TFLOP/s of `precision` (fp16 at the bf16 peak)."""
        return self.bf16 if precision == "fp16" else getattr(self, precision)

    def seconds(self, flops: float, precision: str = "bf16", jobs: int = 1) -> float:
        return flops / (self.peak(precision) * 1e12 * self.mfu) + jobs * self.startup_s


DEVICES: dict[str, Device] = {
    "h100": Device("H100 SXM", 66.9, 494.7, 989.4, cuda="NVIDIA H100"),
    "h200": Device("H200 SXM", 66.9, 494.7, 989.4, cuda="NVIDIA H200"),
    "a100": Device("A100 SXM", 19.5, 156.0, 312.0, cuda="NVIDIA A100"),
    "l40s": Device("L40S", 91.6, 181.05, 362.1, cuda="NVIDIA L40S"),
    "h100-pcie": Device("H100 PCIe", 51.2, 378.0, 756.0, cuda="NVIDIA H100 PCIe"),
    "rtx4090": Device("RTX 4090", 82.6, 82.6, 165.2, cuda="NVIDIA GeForce RTX 4090"),
}
DEFAULT_DEVICE = "h100"


def device_named(cuda_name: str) -> Device | None:
    """The table's record of a CUDA device by its torch.cuda.get_device_name() (the longest
    matching prefix: "NVIDIA H100 PCIe" before "NVIDIA H100"), or None."""
    matches = [d for d in DEVICES.values() if d.cuda and cuda_name.startswith(d.cuda)]
    return max(matches, key=lambda d: len(d.cuda), default=None)


def measure_cpu_tflops(n: int = 1024, seconds: float = 1.0, precision: str = "fp32") -> float:
    """This CPU's matmul rate in TFLOP/s with torch's threads, as if it ran alone: float32
    (`fp32`), or float32 tensors under bf16 autocast (`bf16`: as an `amp: bf16` run computes,
    the casts included; a pure bf16 matmul is 2-3x faster here than what such a run gets).

    The rate is taken per second of CPU time (the process's, all threads) times the number
    of threads: on a machine shared with other work, wall-clock rates measure the neighbours,
    while CPU time counts only the cycles this process was given."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    if precision == "bf16":
        autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    elif precision == "fp32":
        autocast = contextlib.nullcontext()
    else:
        raise ValueError(f"precision '{precision}' is not measured on a CPU; use fp32 or bf16")
    with autocast:
        a @ b  # warm-up
        done, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
        while time.perf_counter() - wall0 < seconds:
            a @ b
            done += 1
    cpu = max(time.process_time() - cpu0, 1e-9)
    return done * 2 * n**3 / cpu * torch.get_num_threads() / 1e12


def cpu_device(mfu: float | None = None, startup_s: float | None = None) -> Device:
    """This CPU, its float32 and bf16-autocast matmul rates measured now (tf32 is float32
    here)."""
    fp32, bf16 = measure_cpu_tflops(), measure_cpu_tflops(precision="bf16")
    return Device(
        f"this CPU ({torch.get_num_threads()} threads, matmuls measured)",
        fp32,
        fp32,
        bf16,
        CPU_MFU if mfu is None else mfu,
        CPU_STARTUP_S if startup_s is None else startup_s,
        kind="cpu",
        cuda="",
    )


def declared_device(
    peak_tflops: str | float | None = None, mfu: float | None = None, startup_s: float | None = None
) -> Device:
    """The device of an estimate from the CLI's options: a name of the table (default h100),
    'cpu' (this machine's matmul rates, measured now, with CPU defaults) or one peak in
    TFLOP/s for every precision."""
    name = DEFAULT_DEVICE if peak_tflops is None else str(peak_tflops).strip().lower()
    if name == "cpu":
        return cpu_device(mfu, startup_s)
    options = {"mfu": DEFAULT_MFU if mfu is None else mfu}
    options["startup_s"] = DEFAULT_STARTUP_S if startup_s is None else startup_s
    if name in DEVICES:
        return dataclasses.replace(DEVICES[name], **options)
    try:
        peak = float(name)
    except ValueError as err:
        raise ValueError(
            f"--device-peak-tflops '{peak_tflops}' is neither a device ({', '.join(DEVICES)}, "
            "cpu) nor a number; name the GPU, give its dense peak in TFLOP/s (then used at "
            "every precision) or 'cpu' to measure this CPU"
        ) from err
    name = f"declared device, {peak:g} TFLOP/s at every precision"
    return Device(name, peak, peak, peak, cuda="", **options)
