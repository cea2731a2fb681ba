"""Input-pipeline throughput of finetuning: images/s that the train loader yields, with the
augmentation in the loader's workers (`augment=cpu`: RandomResizedCrop + flip + normalise on
the CPU) and with it on the device (`augment=device`: the workers only decode to uint8 at
`load_size`, the crops run on the device as `Finetuner.train_step` runs them).

Real images: Fashion-MNIST train when it is here, else scikit-learn's digits. The loader is
the one the Finetuner builds (`train_loader`, the same sampler and seeded dataset). Give the
training rate of the device (`--train-images-per-s`, e.g. from benchmarks/train_gpu.py, which
calls `measure` itself on a GPU) to get `loader_vs_train`; the aim there is >= 1.5.

    .venv/bin/python benchmarks/loader.py [--batch 256] [--batches 8] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from vitplas.training.config import load_finetune_config
from vitplas.training.sources import load_sources
from vitplas.training.stream import device_augment, train_loader


def _dataset() -> str:
    from vitplas.data import is_available

    return "fashion-mnist" if is_available("fashion-mnist")[0] else "digits"


def measure(
    augment: str,
    *,
    batch: int,
    batches: int,
    workers: int,
    img_size: int = 224,
    load_size: int = 32,
    device: str = "cpu",
) -> dict:
    """images/s of `batches` train batches (after a first, warm-up batch) for one augment mode;
    for `device`, the on-device crops are timed in (synchronised), as a train step pays them."""
    overrides = [
        "model=tiny-random",
        "random_init=true",
        f"dataset={_dataset()}",
        f"augment={augment}",
        f"img_size={img_size}",
        f"load_size={load_size}",
        f"batch_size={batch}",
        f"steps={batches + 1}",
        "warmup_steps=0",
        "device=cpu",
    ]
    cfg = load_finetune_config(None, overrides)
    sources = load_sources(cfg, splits=("train",))
    loader = train_loader(
        sources.train, batch, seed=0, start_step=0, steps=batches + 1, num_workers=workers
    )
    gen = torch.Generator(device).manual_seed(0)
    seen, start = 0, None
    for images, _ in loader:
        if augment == "device":
            images = images.to(device, non_blocking=True)
            images = device_augment(images, img_size, sources.mean, sources.std, gen)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if start is None:  # the first batch pays for the workers' start
            start = time.perf_counter()
            continue
        seen += images.shape[0]
    seconds = time.perf_counter() - start
    return {"augment": augment, "images_per_s": round(seen / seconds, 1), "images": seen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--load-size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--train-images-per-s", type=float, default=None)
    args = parser.parse_args()
    sizes = {"img_size": args.img_size, "load_size": args.load_size, "device": args.device}
    common = {"batch": args.batch, "batches": args.batches, "workers": args.workers, **sizes}
    runs = [measure(mode, **common) for mode in ("cpu", "device")]
    for run in runs:
        print(f"augment={run['augment']:6s} {run['images_per_s']:9.1f} images/s")
    result = {
        "bench": "loader",
        "device": args.device,
        "dataset": _dataset(),
        **common,
        "images_per_s": {run["augment"]: run["images_per_s"] for run in runs},
    }
    if args.train_images_per_s:
        rate = args.train_images_per_s
        result["loader_vs_train"] = {r["augment"]: round(r["images_per_s"] / rate, 2) for r in runs}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
