"""GPU benchmark: full finetuning of ViT-B/16 at 224 through vitplas's train step (bf16
autocast by default, fused attention, augmentation on the device, optional torch.compile), with
achieved TFLOP/s, MFU against the device's dense peak at the precision measured, and peak memory.

    .venv/bin/python benchmarks/train_gpu.py [--model vit_base_patch16_224] [--batch 512]
        [--micro 0] [--train all] [--steps 10] [--compile] [--peak-tflops 989]
        [--precision bf16|tf32|fp32]

--precision: bf16 = bf16 autocast (amp=bf16); tf32 = float32 with TF32 matmuls (amp=none);
fp32 = true float32 (amp=none, TF32 off), as the original release trains.

--micro 0 tries the whole batch per pass and halves it on out-of-memory (accumulation, as
ViT-L/H need). Without CUDA it prints {"skipped": ...} and exits 0. One JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import timm
import torch
from torch.utils.data import TensorDataset

from vitplas.experiments.devices import device_named
from vitplas.runs import RunDir
from vitplas.training.config import IMAGENET_MEAN, IMAGENET_STD, load_finetune_config
from vitplas.training.finetune import Finetuner
from vitplas.training.sources import Sources
from vitplas.training.stream import device_augment


def vit_forward_flops(model: torch.nn.Module, img_size: int) -> float:
    """Matmul FLOPs (2 per multiply-add) of one image's forward pass through a timm ViT."""
    patch = model.patch_embed.patch_size[0]
    dim = model.embed_dim
    tokens = (img_size // patch) ** 2 + model.num_prefix_tokens
    flops = 2 * (tokens - model.num_prefix_tokens) * 3 * patch * patch * dim  # patch embed
    for block in model.blocks:
        hidden = block.mlp.fc1.out_features  # read from the module, not assumed 4 * dim
        flops += 2 * tokens * dim * 3 * dim + 2 * tokens * dim * dim  # qkv, proj
        flops += 2 * 2 * tokens * tokens * dim  # q k^T and attn v
        flops += 2 * 2 * tokens * dim * hidden  # fc1, fc2
    return flops + 2 * dim * model.num_classes


def peak_tflops(name: str, given: float | None, precision: str = "bf16") -> float | None:
    """The given peak, else the dense peak of `precision` on the CUDA device `name` from
    vitplas's device table (experiments/devices.py), else None."""
    if given:
        return given
    device = device_named(name)
    return None if device is None else device.peak(precision)


def make_trainer(args, micro: int, root: str) -> Finetuner:
    size = args.img_size
    cfg = load_finetune_config(
        None,
        [
            f"train=[{args.train}]",
            f"batch_size={args.batch}",
            f"micro_batch_size={micro}",
            "steps=100000",
            "warmup_steps=10",
            f"img_size={size}",
            "augment=device",
            "device=cuda",
            f"amp={'bf16' if args.precision == 'bf16' else 'none'}",
            f"compile={str(args.compile).lower()}",
            "tensorboard=false",
        ],
    )
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False, num_classes=100, img_size=size)
    data = TensorDataset(torch.zeros(1, 3, size, size, dtype=torch.uint8), torch.zeros(1).long())
    sources = Sources(model, data, data, data, 100, IMAGENET_MEAN, IMAGENET_STD)
    trainer = Finetuner(cfg, RunDir(f"{root}/run-{micro}"), sources=sources)
    trainer.setup()
    trainer.net.train()
    return trainer


def time_steps(trainer: Finetuner, images, labels, steps: int, warmup: int) -> float:
    for step in range(warmup):
        trainer.train_step(step, images, labels)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for step in range(warmup, warmup + steps):
        trainer.train_step(step, images, labels)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def augment_rate(images: torch.Tensor, size: int, repeats: int = 20) -> float:
    """Images/s of RandomResizedCrop + flip + normalise on the device alone."""
    gen = torch.Generator("cuda").manual_seed(0)
    device_augment(images, size, IMAGENET_MEAN, IMAGENET_STD, gen)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        device_augment(images, size, IMAGENET_MEAN, IMAGENET_STD, gen)
    torch.cuda.synchronize()
    return repeats * images.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--micro", type=int, default=0, help="0 = largest that fits")
    parser.add_argument("--train", default="all")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--precision", choices=("bf16", "tf32", "fp32"), default="bf16")
    parser.add_argument(
        "--loader-workers",
        type=int,
        default=os.cpu_count() or 1,
        help="workers of the loader measured against training (0: skip)",
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"bench": "train_gpu", "device": "cpu", "skipped": "no CUDA device"}))
        sys.exit(0)
    tf32 = args.precision != "fp32"  # under bf16 autocast, the float32 leftovers may use TF32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    device_name = torch.cuda.get_device_name(0)
    gen = torch.Generator("cuda").manual_seed(0)
    # source images: uint8 at the load size, as the device-augmentation loader yields them
    images = torch.randint(
        0,
        256,
        (args.batch, 3, args.img_size, args.img_size),
        device="cuda",
        dtype=torch.uint8,
        generator=gen,
    )
    labels = torch.randint(0, 100, (args.batch,), device="cuda", generator=gen)
    micro = args.micro or args.batch
    with tempfile.TemporaryDirectory() as root:
        while True:
            try:
                trainer = make_trainer(args, micro, root)
                torch.cuda.reset_peak_memory_stats()
                seconds = time_steps(trainer, images, labels, args.steps, args.warmup)
                break
            except torch.cuda.OutOfMemoryError:
                if args.micro or micro == 1:
                    raise
                trainer = None
                torch.cuda.empty_cache()
                micro //= 2
                print(f"out of memory: retrying with micro-batch {micro}", file=sys.stderr)
        flops = 3 * vit_forward_flops(trainer.model, args.img_size)  # forward + 2x backward
        trainer.cleanup()
    rate = args.batch / seconds
    achieved = rate * flops / 1e12
    peak = peak_tflops(device_name, args.peak_tflops, args.precision)
    result = {
        "bench": "train_gpu",
        "device": device_name,
        "model": args.model,
        "img_size": args.img_size,
        "train": args.train,
        "batch": args.batch,
        "micro_batch": micro,
        "compile": args.compile,
        "precision": args.precision,
        "step_s": round(seconds, 4),
        "images_per_s": round(rate, 1),
        "train_gflop_per_image": round(flops / 1e9, 2),
        "achieved_tflops": round(achieved, 1),
        "peak_tflops": peak,
        "mfu": round(achieved / peak, 4) if peak else None,
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
        "augment_images_per_s": round(augment_rate(images, args.img_size), 1),
    }
    if args.loader_workers:  # the real input pipeline (loader + device crops) vs this rate
        from loader import measure  # benchmarks/loader.py, beside this script

        pipe = measure(
            "device", batch=args.batch, batches=8, workers=args.loader_workers, device="cuda"
        )
        result["loader_images_per_s"] = pipe["images_per_s"]
        result["loader_vs_train"] = round(pipe["images_per_s"] / rate, 2)
    print(
        f"{device_name}: {rate:.0f} images/s, {achieved:.0f} TFLOP/s, MFU "
        f"{result['mfu'] if peak else 'unknown (pass --peak-tflops)'}, "
        f"peak memory {result['peak_memory_gb']} GB",
        file=sys.stderr,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
