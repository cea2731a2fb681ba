"""Compute precision, in one place for training, the estimator and the cost estimate.

A run computes its matrix products in one of four precisions, each with its own peak on a
GPU (experiments/cost.py's device table):

    fp32  true float32 (on CUDA, TF32 switched off: the original release trains this way)
    tf32  float32 tensors, TF32 tensor-core matmuls (CUDA; on a CPU it is fp32)
    bf16  bfloat16 autocast (float32 master weights)
    fp16  float16 autocast (the estimator's `dtype: float16`; its peak is bf16's)

Training names it with `amp` (FinetuneConfig, ProbeConfig): none = fp32, tf32, bf16, and
auto = bf16 on CUDA, fp32 on a CPU (FinetuneConfig.validate makes auto float32 under
`protocol: paper`); the estimator with `dtype` (float32, tf32, bfloat16, float16).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
AMP_MODES = ("auto", "bf16", "tf32", "none")
DTYPE_PRECISION = {"float32": "fp32", "tf32": "tf32", "bfloat16": "bf16", "float16": "fp16"}


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


@contextlib.contextmanager
def tf32_matmuls(device: torch.device, enabled: bool) -> Iterator[None]:
    """On CUDA, TF32 for matmuls and convolutions on (enabled) or off (true float32: PyTorch
    allows it for cuDNN convolutions by default), restored afterwards; elsewhere nothing."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
