"""Plasticity of an in-memory timm ViT on image tensors (offline, seconds on a CPU).

Run: python examples/plasticity_in_memory.py [OUT_DIR]
"""

import sys
from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer

import vitplas

torch.manual_seed(0)
model = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)
x = torch.randn(64, 3, 32, 32)  # "reference" images, already normalised
y = torch.randn(64, 3, 32, 32) * 2 + 1  # "target" images
result = vitplas.plasticity(model, x, y, pairs=64, batch_size=16, device="cpu", bounds=True)
print(result.pooled[["component", "mean", "ci95", "rank"]].to_string(index=False))
print("ranking:", " > ".join(result.ranking))
print(
    "bounds (layer 0):", result.bounds.query("layer == 0")[["component", "bound"]].values.tolist()
)
out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".")
result.plot().savefig(out / "plasticity_depth.png")
