"""GPU figures of the plasticity estimator (needs CUDA; says so and exits 0 without it).

1. end to end: the paper's 12,800 pairs on ViT-B/16 at 224 px (random weights), data loading
   included (photos vs Fashion-MNIST test when it is here, else photos vs digits), through
   the same job `vitplas plasticity` runs, at --dtype bfloat16 and tf32. Aim: < 60 s.
2. throughput against a plain timm forward pass of the same 2B images (bf16 autocast),
   CUDA-synchronised, best of the repeats. Aim: >= 0.8.
3. ViT-H/14 fits: two batches of pairs in bf16, with the peak GPU memory.
Each figure is printed as a JSON line as soon as it is measured; the last line holds all.

    .venv/bin/python benchmarks/plasticity_gpu.py [--pairs 12800] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import torch


def end_to_end(args: argparse.Namespace, dtype: str) -> dict:
    from vitplas.analysis.job import PlasticityConfig
    from vitplas.data import is_available
    from vitplas.jobs.runners import run_plasticity

    target = "fashion-mnist" if is_available("fashion-mnist")[0] else "digits"
    cfg = PlasticityConfig(
        model="vit-b16-in21k",
        random_init=True,
        reference=f"photos/{args.pairs}",
        target=target,
        pairs=args.pairs,
        batch_size=args.batch_size,
        device="cuda",
        dtype=dtype,
        num_workers=args.workers,
        figures=False,
    )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = run_plasticity(cfg, out)
    return {
        "figure": "end_to_end",
        "model": "ViT-B/16 (random init)",
        "dtype": dtype,
        "target": target,
        "pairs": result["pairs"],
        "batch_size": args.batch_size,
        "workers": args.workers,
        "seconds": time.perf_counter() - start,
        "timings": result["timings"],
        "under_60_s": time.perf_counter() - start < 60,
    }


def _best_time(fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def versus_forward(name: str, pairs: int, repeats: int = 5) -> dict:
    import timm

    from vitplas.analysis.plasticity import LinearFactors, pair_ratios
    from vitplas.models.components import component_map

    model = timm.create_model(name, pretrained=False).cuda().eval()
    cmap = component_map(model)
    size = model.patch_embed.img_size
    x, y = (torch.randn(pairs, 3, *size, device="cuda") for _ in range(2))
    images = torch.cat([x, y])
    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        forward = _best_time(lambda: model(images), repeats)
        factors = LinearFactors()  # one per run, as the estimating loop keeps it (QR once)
        estimator = _best_time(lambda: pair_ratios(cmap, x, y, factors=factors), repeats)
    return {
        "figure": "versus_forward",
        "model": name,
        "pairs_per_batch": pairs,
        "dtype": "bfloat16",
        "forward_images_per_s": 2 * pairs / forward,
        "estimator_images_per_s": 2 * pairs / estimator,
        "ratio_vs_forward": forward / estimator,
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=12_800)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("plasticity_gpu: no CUDA device on this machine; nothing measured", file=sys.stderr)
        print(json.dumps({"bench": "plasticity_gpu", "device": "cpu", "skipped": "no CUDA device"}))
        return
    steps = [
        lambda: end_to_end(args, "bfloat16"),
        lambda: end_to_end(args, "tf32"),
        lambda: versus_forward("vit_base_patch16_224", pairs=args.batch_size),
        lambda: versus_forward("vit_huge_patch14_224", pairs=32, repeats=2),
    ]
    figures = []
    for step in steps:
        figures.append(step())
        print(json.dumps(figures[-1]), flush=True)
    device = torch.cuda.get_device_name(0)
    print(json.dumps({"bench": "plasticity_gpu", "device": device, "figures": figures}))


if __name__ == "__main__":
    main()
