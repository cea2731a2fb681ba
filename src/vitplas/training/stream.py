"""The training data stream: a pure function of (seed, step), so a resumed run sees the same
images, in the same order, with the same augmentations, as an uninterrupted one.

The stream is the concatenation of per-epoch permutations of the training set; update `s`
uses stream positions [s * B, (s + 1) * B) (B = global batch), and process `r` of `K` takes
the r-th contiguous slice of B / K. Each sample's augmentation is drawn from a torch RNG
seeded by (seed, stream position), so it does not depend on worker count or on resuming.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

_MIX = 0x9E3779B1  # spreads (seed, position) pairs over the 63-bit seed space


def _mix(seed: int, value: int) -> int:
    return (seed * _MIX + value * 0x85EBCA77 + 0x2545F491) % (2**63 - 1)


def mix_seed(seed: int, step: int, rank: int) -> int:
    """A generator seed for (seed, step, rank): augmentation on the device."""
    return _mix(_mix(seed, step), rank + 1)


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """For each update from `start_step` to `steps`, this process's share of the global batch
    as (stream position, dataset index) pairs."""

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        seed: int,
        start_step: int,
        steps: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by {world_size} processes")
        self.n, self.batch, self.seed = num_samples, batch_size, seed
        self.start, self.steps = start_step, steps
        self.share = batch_size // world_size
        self.offset = rank * self.share
        self._perm: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.steps - self.start

    def index(self, position: int) -> int:
        """Dataset index at a stream position."""
        epoch, i = divmod(position, self.n)
        if self._perm is None or self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(_mix(self.seed, epoch))
            self._perm = (epoch, torch.randperm(self.n, generator=gen))
        return int(self._perm[1][i])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.steps):
            first = step * self.batch + self.offset
            yield [(p, self.index(p)) for p in range(first, first + self.share)]


class SeededDataset(Dataset):
    """Wraps a dataset; item (position, index) is drawn with torch's RNG seeded by position."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        position, index = key
        with torch.random.fork_rng(devices=[]):  # leaves the caller's RNG untouched
            torch.manual_seed(_mix(self.seed, position))
            return self.dataset[index]


def train_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    seed: int,
    start_step: int,
    steps: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """Batches (images, labels) of this process's share of updates start_step..steps-1."""
    sampler = StepBatchSampler(
        len(dataset),
        batch_size,
        seed=seed,
        start_step=start_step,
        steps=steps,
        rank=rank,
        world_size=world_size,
    )
    return DataLoader(
        SeededDataset(dataset, seed),
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=4 if num_workers else None,
    )


def eval_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    max_samples: int | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """Sequential batches of this process's shard (every K-th sample); `max_samples` takes a
    fixed random subset (seed 0) so that a capped evaluation still covers every class."""
    indices = list(range(len(dataset)))
    if max_samples is not None and max_samples < len(indices):
        gen = torch.Generator().manual_seed(0)
        indices = sorted(torch.randperm(len(indices), generator=gen)[:max_samples].tolist())
    shard = Subset(dataset, indices[rank::world_size])
    return DataLoader(shard, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)


def device_augment(
    images: torch.Tensor,
    size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
) -> torch.Tensor:
    """RandomResizedCrop + horizontal flip + normalisation of a uint8 batch on its device.

    images: (B, 3, H, W) uint8 -> (B, 3, size, size) float32. One affine sampling grid per
    image (bilinear, no antialiasing: fine for upsampling small images, slightly aliased when
    shrinking large crops). The crop's area fraction and log aspect ratio are uniform in
    `scale` and log(`ratio`), clamped to the image, like torchvision's fallback.
    """
    batch, device = images.shape[0], images.device
    u = torch.rand(batch, 5, generator=generator, device=device)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    aspect = torch.exp(log_r)
    width = torch.sqrt(area * aspect).clamp(max=1.0)  # fractions of the image side
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (width / 2 + (1 - width) * u[:, 2]) * 2 - 1  # crop centre in [-1, 1]
    cy = (height / 2 + (1 - height) * u[:, 3]) * 2 - 1
    mirror = torch.where((u[:, 4] < 0.5) & flip, -1.0, 1.0)  # flip: left-right, p = 0.5
    theta = torch.zeros(batch, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2] = width * mirror, cx
    theta[:, 1, 1], theta[:, 1, 2] = height, cy
    grid = F.affine_grid(theta, [batch, 3, size, size], align_corners=False)
    out = F.grid_sample(images.float() / 255.0, grid, mode="bilinear", align_corners=False)
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return (out - mean_t) / std_t  # (B, 3, size, size)
