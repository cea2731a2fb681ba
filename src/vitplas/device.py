"""Device and precision, resolved in one place for every job.

    resolve_device('auto' | 'cpu' | 'cuda' | 'cuda:1', local_rank=None) -> torch.device
    check_device(name)        a ValueError (one line, what to do) when CUDA is asked and absent
    precision(device, dtype)  the estimator's compute precision (float32, tf32, bf16, fp16)
    autocast(device, amp)     training's and evaluation's precision ('auto', 'bf16', 'tf32',
                              'none')
    amp_precision(amp, type)  what a run's `amp` computes its matmuls in on a device type:
    dtype_precision(...)      fp32, tf32, bf16 or fp16, the peak a cost estimate divides by
    default_workers(cap)      DataLoader workers this machine can feed (its CPUs, at most cap)

Precisions: fp32 = true float32 (on CUDA, TF32 off: the original release trains this way);
tf32 = float32 tensors, TF32 tensor-core matmuls (CUDA; on a CPU it is fp32); bf16 = bfloat16
autocast (float32 master weights); fp16 = float16 autocast (the estimator's dtype float16; its
peak is bf16's). Training's `amp`: none = fp32, tf32, bf16, and auto = bf16 on CUDA, fp32 on a
CPU (FinetuneConfig.validate makes auto float32 under `protocol: paper`).

torch is imported inside the functions: the command line's --help imports none of it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

DTYPES = ("float32", "tf32", "bfloat16", "float16")
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
AMP_MODES = ("auto", "bf16", "tf32", "none")
DTYPE_PRECISION = {"float32": "fp32", "tf32": "tf32", "bfloat16": "bf16", "float16": "fp16"}


def check_device(name: str | None) -> None:
    """A ValueError when `name` asks for CUDA and no (such) CUDA device is visible."""
    if not name or not str(name).startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ValueError(
            f"device={name} but no CUDA device is visible to torch on this machine; use "
            "device=auto (CUDA when there is one, else CPU) or device=cpu"
        )
    index = str(name).partition(":")[2]
    if index.isdigit() and int(index) >= torch.cuda.device_count():
        raise ValueError(
            f"device={name} but this machine shows {torch.cuda.device_count()} CUDA "
            f"device(s); use cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
        )


def resolve_device(name: str, local_rank: int | None = None) -> Any:
    """'auto' = cuda when there is one, else cpu; 'cuda' without CUDA is a clear error. With
    `local_rank` (a torchrun process), a bare 'cuda' is that process's device cuda:<rank>."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    check_device(name)
    if name == "cuda" and local_rank is not None:
        return torch.device("cuda", local_rank)
    return torch.device(name)


@contextlib.contextmanager
def precision(device: Any, dtype: str) -> Iterator[None]:
    """float32 = true float32 (on CUDA, TF32 is switched off for matmuls and convolutions,
    the patch embedding included: PyTorch allows it for cuDNN by default); tf32 = float32 with
    TF32 matmuls and convolutions (CUDA); bfloat16/float16 = autocast."""
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype '{dtype}' is unknown; choose one of {', '.join(DTYPES)}")
    if dtype in ("bfloat16", "float16"):
        with torch.autocast(device.type, dtype=getattr(torch, dtype)):
            yield
        return
    with tf32_matmuls(device, dtype == "tf32"):
        yield


@contextlib.contextmanager
def tf32_matmuls(device: Any, enabled: bool) -> Iterator[None]:
    """On CUDA, TF32 for matmuls and convolutions on (enabled) or off (true float32), restored
    afterwards; elsewhere nothing."""
    import torch

    if device.type != "cuda":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def autocast(device: Any, amp: str) -> Any:
    """bf16 autocast on CUDA ('auto' or 'bf16') and on CPU ('bf16'); TF32 matmuls on CUDA
    ('tf32'); else nothing ('none': float32 with PyTorch's defaults)."""
    import torch

    if amp == "tf32":
        return tf32_matmuls(device, True)
    if device.type == "cuda" and amp in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and amp == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def amp_precision(amp: str, device_type: str) -> str:
    """The precision `amp` computes in on a device of type `device_type` ('cuda' or 'cpu')."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp '{amp}' is unknown; choose one of {', '.join(AMP_MODES)}")
    if amp == "bf16" or (amp == "auto" and device_type == "cuda"):
        return "bf16"
    return "tf32" if amp == "tf32" and device_type == "cuda" else "fp32"


def dtype_precision(dtype: str, device_type: str) -> str:
    """The precision of the estimator's `dtype` on a device of type `device_type`."""
    precision = DTYPE_PRECISION[dtype]
    return "fp32" if precision == "tf32" and device_type != "cuda" else precision


def default_workers(cap: int = 4) -> int:
    """DataLoader worker processes for this machine: its usable CPUs minus one for the main
    process, at most `cap` (0 on a 1-core machine: load in the main process). PyTorch warns
    when a loader asks for more workers than the machine has CPUs."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(0, min(cap, cpus - 1))
