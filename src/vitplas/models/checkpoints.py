"""Local weight files: read them safely, check every key and shape, load them strictly.

Formats: `.safetensors`; `.pth` / `.pt` / `.bin` (read with `torch.load(weights_only=True)`,
a plain state dict or a dict holding one under "model" / "state_dict"); a Hugging Face
folder is handled by `vitplas.models.hf`.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from vitplas.models.errors import ModelError, short_list

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pth", ".pt", ".bin")
WEIGHT_SUFFIXES = SAFETENSORS_SUFFIXES + TORCH_SUFFIXES
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")  # training checkpoints


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weight file by key, as float32 on CPU (integers kept as they are).

    A file that cannot be parsed is a ModelError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise ModelError(
            f"weights file {path} has suffix '{suffix}'; known: {', '.join(WEIGHT_SUFFIXES)}"
        )
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        if suffix in SAFETENSORS_SUFFIXES:
            obj: object = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (
        SafetensorError,
        OSError,
        RuntimeError,
        ValueError,
        EOFError,
        pickle.UnpicklingError,
    ) as err:
        raise ModelError(
            f"cannot read weights file {path} ({type(err).__name__}: {err}); the file is "
            "corrupt, truncated or not a state dict: download or save it again"
        ) from err
    return _as_state_dict(obj, path)


def _as_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ModelError(f"weights file {path} holds no state dict (got {type(obj).__name__})")
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelError(f"weights file {path} has entries that are not tensors: {short_list(bad)}")
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):  # saved from a DDP-wrapped model
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def check_state_dict(
    expected: Mapping[str, tuple[int, ...]],
    state: Mapping[str, torch.Tensor],
    source: str,
    error: type[Exception] = ModelError,
    advice: str = "Check that the architecture matches the checkpoint (local files: `arch@path`)",
) -> None:
    """Fail (with `error`) unless `state` has exactly the keys of `expected`, each with the
    expected shape; the message lists the missing, unexpected and wrong-shape keys."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k} {tuple(state[k].shape)} (model: {tuple(expected[k])})"
        for k in set(state) & set(expected)
        if tuple(state[k].shape) != tuple(expected[k])
    )
    if missing or unexpected or wrong:
        parts = [
            f"{label}: {short_list(keys)}"
            for label, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("wrong shapes", wrong),
            )
            if keys
        ]
        raise error(f"weights from {source} do not fit the model; {'; '.join(parts)}. {advice}")


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_checked(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """Load `state` into `model` after checking every key and shape (assign: meta models work)."""
    check_state_dict(shapes(model), state, source)
    model.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise ModelError(f"model tensors not set by {source}: {short_list(left)}")
    return model
