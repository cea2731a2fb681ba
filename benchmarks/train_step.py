"""CPU benchmark: train-step images/s of vitplas's component-wise step, per `train` set, against
a plain timm training step of all parameters (fp32, no tricks), on the same batch, same run.

    .venv/bin/python benchmarks/train_step.py [--model vit_base_patch16_224] [--batch 8]
        [--steps 3] [--rounds 2] [--img-size 224] [--threads N]

ViT-B/16 at 224 with random weights (no download). Prints a table, then one JSON line with
images/s per configuration and the ratio to the plain step (>= 1 means not slower).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import timm
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from vitplas.runs import RunDir
from vitplas.training.config import load_finetune_config
from vitplas.training.finetune import Finetuner
from vitplas.training.sources import Sources

TRAIN_SETS = ("all", "ln1", "mha", "ln2", "fc1", "fc2")


def _model(name: str, img_size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10, img_size=img_size)


def _timed(step, images, labels, steps: int) -> float:
    """Median seconds per step after one warm-up step."""
    step(images, labels)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step(images, labels)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def plain_step_time(name, images, labels, steps) -> float:
    """model(x) -> CE -> backward -> SGD step over every parameter."""
    model = _model(name, images.shape[-1]).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _timed(step, images, labels, steps)


def vitplas_step_time(name, train, images, labels, steps, root) -> float:
    """Finetuner.train_step: schedule, grad norms per component, clipping, SGD on `train`."""
    batch = images.shape[0]
    cfg = load_finetune_config(
        None,
        [
            f"train=[{train}]",
            f"batch_size={batch}",
            "steps=1000",
            "warmup_steps=10",
            f"img_size={images.shape[-1]}",
            "device=cpu",
            "num_workers=0",
            "tensorboard=false",
        ],
    )
    data = TensorDataset(images, labels)
    sources = Sources(_model(name, images.shape[-1]), data, data, data, 10)
    trainer = Finetuner(cfg, RunDir(f"{root}/{train}"), sources=sources)
    trainer.setup()
    trainer.net.train()
    counter = iter(range(10**6))
    try:
        return _timed(lambda x, y: trainer.train_step(next(counter), x, y), images, labels, steps)
    finally:
        trainer.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="best of this many rounds")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, args.img_size, args.img_size, generator=gen)
    labels = torch.randint(0, 10, (args.batch,), generator=gen)
    # rounds over every configuration, best of rounds: other processes on a shared machine
    # slow some steps down, never speed them up
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as root:
            seconds = {"plain": plain_step_time(args.model, images, labels, args.steps)}
            for train in TRAIN_SETS:
                seconds[train] = vitplas_step_time(
                    args.model, train, images, labels, args.steps, root
                )
        best = {k: min(v, best.get(k, float("inf"))) for k, v in seconds.items()}
    results = {k: args.batch / v for k, v in best.items()}
    print(f"{'config':8s} {'images/s':>9s} {'x plain':>8s}")
    for key, value in results.items():
        print(f"{key:8s} {value:9.2f} {value / results['plain']:8.2f}")
    summary = {
        "bench": "train_step",
        "device": "cpu",
        "model": args.model,
        "img_size": args.img_size,
        "batch": args.batch,
        "steps": args.steps,
        "rounds": args.rounds,
        "threads": torch.get_num_threads(),
        "images_per_s": {k: round(v, 3) for k, v in results.items()},
        "ratio_to_plain": {k: round(v / results["plain"], 3) for k, v in results.items()},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
