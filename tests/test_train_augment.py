"""Augmentation on the device (RandomResizedCrop + flip + normalise as one affine resampling),
and the bf16/device-augmentation training path (GPU test)."""

from __future__ import annotations

import pytest
import torch
from test_train_support import NUM_CLASSES, tiny_vit, toy_config
from torch.utils.data import TensorDataset

from vitplas.jobs.runners import run_finetune
from vitplas.training.sources import Sources
from vitplas.training.stream import device_augment

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _uint8(n=6, size=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)


def test_full_crop_is_the_normalised_image_or_its_mirror():
    images = _uint8()
    gen = torch.Generator().manual_seed(0)
    out = device_augment(images, 16, MEAN, STD, gen, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    plain = (images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(
        1, 3, 1, 1
    )
    flipped = 0
    for i in range(len(images)):
        if torch.allclose(out[i], plain[i], atol=1e-5):
            continue
        assert torch.allclose(out[i], plain[i].flip(-1), atol=1e-5), i
        flipped += 1
    assert 0 < flipped < len(images)  # both outcomes occur with this seed


def test_crops_are_random_reproducible_and_inside_the_image():
    images = torch.full((64, 3, 32, 32), 200, dtype=torch.uint8)
    images[:, :, :, :16] = 0  # left half black: crops see different shares of it
    a = device_augment(images, 24, MEAN, STD, torch.Generator().manual_seed(1))
    b = device_augment(images, 24, MEAN, STD, torch.Generator().manual_seed(1))
    assert a.shape == (64, 3, 24, 24) and torch.equal(a, b)
    dark = (a[:, 0] < 0).float().mean(dim=(1, 2))  # share of each crop from the black half
    assert dark.std() > 0.1  # crops differ in position and size
    lo, hi = (0 - MEAN[0]) / STD[0], (200 / 255 - MEAN[0]) / STD[0]
    assert a[:, 0].min() >= lo - 1e-5 and a[:, 0].max() <= hi + 1e-5  # no zero padding


def _device_run(tmp_path, device: str, amp: str):
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, NUM_CLASSES, (64,), generator=gen)
    images = _uint8(64, 32)
    images[:, 0] = (labels.view(-1, 1, 1) * 60).to(torch.uint8)
    train = TensorDataset(images, labels)
    evals = TensorDataset((images.float() / 255 - 0.5) / 0.25, labels)
    sources = Sources(tiny_vit(), train, evals, evals, NUM_CLASSES, (0.5,) * 3, (0.25,) * 3)
    cfg = toy_config("augment=device", f"device={device}", f"amp={amp}", "steps=8")
    return run_finetune(cfg, tmp_path, sources=sources)


def test_device_augmentation_path_trains_on_cpu(tmp_path):
    result = _device_run(tmp_path, "cpu", "none")
    assert result["steps"] == 8 and 0.0 <= result["test_acc"] <= 100.0
    assert torch.isfinite(torch.tensor(result["test_loss"]))


@pytest.mark.gpu
def test_bf16_device_augmentation_on_gpu(tmp_path):
    result = _device_run(tmp_path, "cuda", "bf16")
    assert torch.isfinite(torch.tensor(result["test_loss"]))
    assert result["best_val_acc"] >= 25.0


def test_uint8_loader_transform_keeps_bytes_and_makes_rgb():
    import numpy as np
    from PIL import Image

    from vitplas.training.sources import uint8_transform

    grey = Image.fromarray(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28), mode="L")
    out = uint8_transform(28)(grey)
    assert out.dtype == torch.uint8 and out.shape == (3, 28, 28)
    assert torch.equal(out[0], torch.from_numpy(np.array(grey))) and torch.equal(out[0], out[2])
    assert uint8_transform(16)(grey).shape == (3, 16, 16)


def test_uint8_loader_transform_keeps_the_aspect_ratio_of_wide_images():
    import numpy as np
    from PIL import Image

    from vitplas.training.sources import uint8_transform

    wide = np.zeros((20, 40), dtype=np.uint8)
    wide[:, 10:30] = 255  # a white centre square of the 20 x 40 image
    out = uint8_transform(10)(Image.fromarray(wide, mode="L"))
    assert out.shape == (3, 10, 10)
    assert out[:, :, 1:-1].min() == 255  # the centre square (edges antialiased) ...
    assert out[:, :, 0].min() > 128  # ... not the whole image squashed (black at its sides)
