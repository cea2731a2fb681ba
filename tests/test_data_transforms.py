"""Transforms from a model's config, and the seeded DataLoader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vitplas.data import build_transform, eval_resize, get_dataset, make_loader, transform_for

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_eval_resize_ratio():
    assert eval_resize(224) == (256, 256)
    assert eval_resize(32) == (37, 37)
    assert eval_resize((3, 32, 48)) == (37, 55)
    assert eval_resize(32, crop_pct=1.0) == (32, 32)
    with pytest.raises(ValueError, match="crop_pct"):
        eval_resize(32, crop_pct=0.0)


@pytest.mark.parametrize("train", [True, False])
def test_grey_image_becomes_three_equal_normalised_channels(train):
    value = 100
    image = Image.fromarray(np.full((28, 28), value, dtype=np.uint8))  # mode 'L'
    out = build_transform(MEAN, STD, 32, train)(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    expected = (value / 255 - torch.tensor(MEAN)) / torch.tensor(STD)  # a flat image stays flat
    assert torch.allclose(out.mean(dim=(1, 2)), expected, atol=1e-5)
    assert torch.allclose(out.amax(dim=(1, 2)), out.amin(dim=(1, 2)), atol=1e-5)


def test_eval_is_deterministic_and_centered():
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[:, 32:] = 255  # left half black, right half white
    image = Image.fromarray(pixels)
    transform = build_transform((0.5,) * 3, (0.5,) * 3, (3, 32, 32), train=False)
    first, second = transform(image), transform(image)
    assert torch.equal(first, second)
    assert first[0, 16, 2].item() == pytest.approx(-1.0, abs=1e-6)  # black -> (0 - .5) / .5
    assert first[0, 16, 29].item() == pytest.approx(1.0, abs=1e-6)  # white -> (1 - .5) / .5


def test_train_transform_is_random_and_seeded():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    transform = build_transform(MEAN, STD, 32, train=True)
    torch.manual_seed(1)
    a = transform(image)
    torch.manual_seed(1)
    b = transform(image)
    torch.manual_seed(2)
    c = transform(image)
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == (3, 32, 32)


def test_transform_for_reads_a_model_config():
    class Loaded:
        mean, std, input_size = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), (3, 48, 48)

    out = transform_for(Loaded(), train=False)(Image.new("RGB", (10, 20), (255, 0, 0)))
    assert out.shape == (3, 48, 48)
    assert torch.allclose(out[0], torch.ones(48, 48), atol=1e-6)  # red: (1 - .5) / .5
    with pytest.raises(ValueError, match="mean and std must be 3 values"):
        build_transform((0.5,), (0.5,), 32, train=False)


def test_loader_batches_and_seeded_order():
    data = get_dataset("digits", "test", transform=build_transform(MEAN, STD, 16, train=False))

    def first_labels(seed):
        images, labels = next(iter(make_loader(data, 32, shuffle=True, seed=seed)))
        assert images.shape == (32, 3, 16, 16) and labels.dtype == torch.int64
        return labels.tolist()

    assert first_labels(0) == first_labels(0)
    assert first_labels(0) != first_labels(1)
    in_order = make_loader(data, 100, shuffle=False, seed=0, drop_last=True)
    assert len(in_order) == 3  # 359 test digits, last partial batch dropped
    assert next(iter(in_order))[1].tolist() == data.labels[:100].tolist()


def test_grey_and_photo_batches_feed_a_tiny_vit():
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(
        img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, mlp_ratio=3.0,
        num_classes=10,
    ).eval()  # fmt: skip
    transform = build_transform((0.5,) * 3, (0.5,) * 3, 32, train=True)
    for name in ("mnist-5k", "photos/8"):
        data = get_dataset(name, "val", transform=transform)
        images, labels = next(iter(make_loader(data, 8, shuffle=True, seed=0)))
        with torch.no_grad():
            logits = model(images)
        assert images.shape == (8, 3, 32, 32) and logits.shape == (8, 10)
        assert torch.isfinite(logits).all()
        assert (labels == -1).all() if name.startswith("photos") else (labels >= 0).all()
