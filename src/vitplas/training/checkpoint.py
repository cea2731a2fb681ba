"""Atomic, verifiable train-state checkpoints in zero-padded step folders.

    checkpoints/step_00000500/state.pt    torch.save of a dict of tensors and plain values
    checkpoints/step_00000500/meta.json   {"step": 500, "sha256": ..., "bytes": ...}
    checkpoints/best.safetensors          weights of the trained parameters at the best val

Once a run is DONE, `prune_state` deletes the step folders (the resumable state: optimizer,
RNG, trained weights of the last steps), which a finished run never reads again.

A step folder is written under a temporary name and renamed when complete, so a kill leaves
either the whole folder or none. Loading reads through the run folder's reader
(vitplas.runs.read_record), verifies the checksum and uses weights_only=True; a corrupt newest
checkpoint falls back to the previous one with a warning. The state records the settings it was
trained under (vitplas.records.stamp), which the finetuning checks before it resumes.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitplas.deletion import Removal, remove_within
from vitplas.runs import atomic_write_bytes, atomic_write_json, fault_point, read_record

STATE_FILE = "state.pt"
META_FILE = "meta.json"
BEST_FILE = "best.safetensors"


class CheckpointError(ValueError):
    """No usable checkpoint where one was expected: the user's data, not a bug of vitplas (the
    command line's exit 2, naming the files and what to do)."""


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step_{step:08d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete step folders under `root`, oldest first (names sort by step)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if p.is_dir() and (p / META_FILE).is_file())


def save_checkpoint(root: str | Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write `state` as checkpoint `step` atomically; keep the newest `keep` checkpoints."""
    root = Path(root)
    final = step_dir(root, step)
    tmp = root / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    atomic_write_bytes(tmp / STATE_FILE, data)
    fault_point("checkpoint_write")  # a kill here leaves only the .tmp- folder
    meta = {"step": step, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    atomic_write_json(tmp / META_FILE, meta)
    if final.exists():  # a rerun of the same step (e.g. after a crash before pruning)
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def state_paths(root: str | Path) -> list[Path]:
    """The resumable train state under the checkpoints folder `root`: its step folders and
    the temp folders of interrupted writes (best.safetensors is not state)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(root.glob("step_*")) + sorted(root.glob(".tmp-step_*"))


def prune_state(run_dir: str | Path, dry_run: bool = False) -> Removal:
    """Delete the resumable train state of the run folder `run_dir` (its checkpoints/ step
    and temp folders), keeping best.safetensors; never through a symlink out of the run
    folder (vitplas.deletion: what it left is in the returned Removal)."""
    return remove_within(run_dir, state_paths(Path(run_dir) / "checkpoints"), dry_run)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one step folder; a wrong checksum or unreadable file is a CheckpointError."""
    path = Path(path)
    try:
        meta = json.loads(_read(path, META_FILE))
        data = _read(path, STATE_FILE)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {path} is unreadable: {err}") from err
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise CheckpointError(f"checkpoint {path} is corrupt: its checksum does not match")
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for a damaged pickle
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {err}") from err


def _read(step: Path, name: str) -> bytes:
    """File `name` of step folder `step` (<run>/checkpoints/step_N) through the run folder's
    reader: the state of an unfinished run, read on purpose (a resume)."""
    run = step.parent.parent
    return read_record(run, (step / name).relative_to(run).as_posix(), unfinished=True)


def load_latest(
    root: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], Path] | None:
    """The newest loadable checkpoint under `root` and its folder, or None when there is none.

    A corrupt checkpoint is skipped with a warning; when every one is corrupt, CheckpointError.
    """
    candidates, problems = list_checkpoints(root), []
    for path in reversed(candidates):
        try:
            return load_checkpoint(path, map_location), path
        except CheckpointError as err:
            problems.append(str(err))
            warnings.warn(f"{err}; falling back to the previous checkpoint", stacklevel=2)
    if candidates:
        names = ", ".join(p.name for p in candidates)
        raise CheckpointError(
            f"no checkpoint under {root} can be resumed from ({names}): {'; '.join(problems)}; "
            f"delete their step folders ({root}/step_*) to restart the run from step 0"
        )
    return None


def save_weights(path: str | Path, tensors: dict[str, torch.Tensor]) -> Path:
    """Atomically write a flat dict of tensors as safetensors."""
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    return atomic_write_bytes(path, data)


def rng_state() -> dict[str, Any]:
    """The states of torch (CPU and CUDA), numpy and python RNGs as weights_only-safe values."""
    np_name, np_keys, np_pos, np_gauss, np_cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_gauss),
            "cached_gaussian": float(np_cached),
        },
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state() returned."""
    torch.set_rng_state(state["torch"].cpu())
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["name"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def frozen_digest(model: torch.nn.Module) -> str:
    """sha256 over the frozen parameters: a resumed run must start from the same weights."""
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
