"""The radius job: the token radius r of a model on a dataset (the bounds' r), in its own run
folder: radius.json (r, one per layer with inputs hidden or insitu) beside its config and
manifest.
The lifecycle is vitplas.jobs.lifecycle's; this module is the compute and the read-back."""

from __future__ import annotations

from typing import Any

from vitplas.analysis.configs import RadiusConfig
from vitplas.analysis.setup import (
    dataset_radius,
    measured_unit,
    model_checksum,
    open_model_stream,
    setup_for,
)
from vitplas.config import config_to_dict
from vitplas.runs import Computed, DamagedRecordError, RunDir, atomic_write_json

RADIUS_FILE = "radius.json"


class _Counted:
    """A dataset that reports each image (or text) read (the radius loader reads in this
    process)."""

    def __init__(self, data, advance, images: int) -> None:
        self.data, self.advance, self.read = data, advance, 0
        self.total = min(images, len(data))  # the images r is measured on

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index):
        self.read += 1
        if self.advance is not None:
            self.advance(min(self.read, self.total), self.total)
        return self.data[index]


def radius_values(result: Any, run: RunDir) -> list[float]:
    """The radius (or radii, per layer) of a radius.json record."""
    if not isinstance(result, dict) or "radius" not in result:
        raise DamagedRecordError(run.path, RADIUS_FILE, "it holds no 'radius'")
    radius = result["radius"]
    return [float(v) for v in radius] if isinstance(radius, list) else [float(radius)]


def read_radius(run: RunDir) -> dict[str, Any]:
    """A finished radius run's record (verified), with `values`: r as a list."""
    record = run.read_json(RADIUS_FILE)
    return {**record, "values": radius_values(record, run)}


def compute_radius(cfg: RadiusConfig, run: RunDir, progress=None) -> Computed:
    """Measure r as `cfg` says and write radius.json (with `images_measured`: cfg.images, or
    fewer when the split holds fewer); progress(images read, images measured) per image. A
    text model's r is over each text's real tokens (analysis.text_pairs.text_radius;
    `measured_on` says texts)."""
    setup = setup_for(cfg)
    data = open_model_stream(setup, cfg.dataset, cfg.split, None, False, cfg.protocol)
    counted = _Counted(data, progress, cfg.images)
    r = dataset_radius(
        setup,
        counted,
        images=cfg.images,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        inputs=cfg.inputs,
    )
    values = r.tolist() if r.ndim else [float(r)]
    per_layer = cfg.inputs != "embedding"
    record = {"radius": values if per_layer else values[0], "per_layer": per_layer}
    record |= {"images_measured": counted.total, "measured_on": measured_unit(setup)}
    record |= {"n_tokens": setup.n_tokens, "width": setup.width, **config_to_dict(cfg)}
    atomic_write_json(run / RADIUS_FILE, record)
    checksum, hashed = model_checksum(setup)
    manifest = {"model": setup.loaded.description, "model_sha256": checksum}
    manifest["model_sha256_of"] = hashed
    return Computed({**record, "values": values}, manifest)
