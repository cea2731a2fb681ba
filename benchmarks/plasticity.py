"""CPU speed of the plasticity estimator against a plain timm forward pass on the same images.

ViT-B/16 at 224 px, random weights, `inputs="embedding"`. Both sides see the same 2B images
per step (B pairs); timings alternate (forward, estimator, forward, ...) so that the load of a
shared machine weighs on both alike, and the best of the repeats is kept. The last line is a
JSON object holding `ratio_vs_forward` (estimator images/s over forward images/s), the
arithmetic limit of that ratio computed from the model's shapes (`limit_vs_forward`: forward
multiply-adds of 2 images over the estimator's multiply-adds of 1 pair, see `macs`) and the
achieved fraction of it, and `paired_ratio_median` (the median over repeats of forward time over
estimator time of the same repeat, less sensitive to load that changes between repeats). The
limit counts matmuls only: the forward's elementwise work (GELU on the 4D-wide activations,
norms, residual adds), which the estimator skips, is left out, so a fraction above 1 is
possible where elementwise work is slow (a loaded machine).

    .venv/bin/python benchmarks/plasticity.py [--pairs-per-batch 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import time

import timm
import torch

from vitplas.analysis.plasticity import LinearFactors, pair_ratios
from vitplas.models.components import component_map


def macs(cmap, n_tokens: int, n_patches: int) -> dict[str, int]:
    """Multiply-adds of the matmuls: `forward` per image, `estimator` per pair (embedding mode).

    Forward, per block: qkv, q k^T, p v, proj, fc1, fc2; plus the patch embedding (the head is
    left out). Estimator: the embedding of both images, attention (qkv .. proj) on both, and each
    linear component once on the difference with min(out, in) x in per token (the QR factor
    of a weight wider out than in, see vitplas.analysis.plasticity.linear_numerator)."""
    n = n_tokens
    patch = next(p for _, p in cmap.named_parameters("emb") if p.ndim == 4)
    embed = n_patches * patch[0].numel() * patch.shape[0]
    fwd, est = embed, 2 * embed
    for layer in range(cmap.depth):
        qkv, proj, _ = cmap.attention_parts(layer)
        width = qkv.out_features // 3  # all heads together
        attn = n * qkv.weight.numel() + 2 * n * n * width + n * proj.weight.numel()
        fc1, fc2 = cmap.module(layer, "fc1"), cmap.module(layer, "fc2")
        d = fc1.in_features
        fwd += attn + n * fc1.weight.numel() + n * fc2.weight.numel()
        est += 2 * attn + n * d * min(fc1.out_features, d) + n * d * min(fc2.out_features, d)
    return {"forward": fwd, "estimator": est}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--pairs-per-batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval()
    cmap = component_map(model)
    size = model.patch_embed.img_size
    b = args.pairs_per_batch
    x, y = torch.randn(b, 3, *size), torch.randn(b, 3, *size)
    images = torch.cat([x, y])  # (2B, 3, H, W): the same images on both sides

    def forward() -> None:
        with torch.inference_mode():
            model(images)

    factors = LinearFactors()  # one per run, as the estimating loop keeps it (QR once)

    def estimator() -> None:
        pair_ratios(cmap, x, y, inputs="embedding", factors=factors)

    forward(), estimator()  # warm-up (allocator, kernels)
    times = {"forward": [], "estimator": []}
    for _ in range(args.repeats):
        for name, fn in (("forward", forward), ("estimator", estimator)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    n_images = images.shape[0]
    rate = {k: n_images / min(v) for k, v in times.items()}
    patches = model.patch_embed.num_patches
    count = macs(cmap, patches + model.num_prefix_tokens, patches)
    limit = 2 * count["forward"] / count["estimator"]
    ratio = rate["estimator"] / rate["forward"]
    # each repeat's forward and estimator ran back to back: their ratio shares the load
    paired = sorted(f / e for f, e in zip(times["forward"], times["estimator"], strict=True))
    result = {
        "bench": "plasticity",
        "device": "cpu",
        "model": args.model,
        "random_weights": True,
        "inputs": "embedding",
        "pairs_per_batch": b,
        "images_per_step": n_images,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "forward_images_per_s": rate["forward"],
        "estimator_images_per_s": rate["estimator"],
        "seconds": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "ratio_vs_forward": ratio,
        "macs": count,
        "limit_vs_forward": limit,
        "fraction_of_limit": ratio / limit,
        "paired_ratio_median": paired[len(paired) // 2],
    }
    print(f"ratio_vs_forward {ratio:.3f}  arithmetic limit {limit:.3f}  ({ratio / limit:.0%})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
