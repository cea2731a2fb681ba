"""Component-wise finetuning and a linear probe of the tiny random ViT on scikit-learn's digits
(offline, seconds on a CPU). Both write the same run folders as `vitplas finetune` / `probe`.

Run: python examples/finetune_and_probe.py [OUT_DIR]
"""

import sys
from pathlib import Path

import vitplas

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/examples")
common = dict(model="tiny-random", random_init=True, dataset="digits", img_size=32, device="cpu")
result = vitplas.finetune(
    out / "finetune-mha",
    **common,
    train=["mha"],  # what is trained (plus the new head and the final norm)
    lr=0.05,
    batch_size=32,
    steps=6,
    warmup_steps=2,
    eval_every=3,
    num_workers=0,
    tensorboard=False,
)
print(f"finetune MHA: test accuracy {result['test_acc']:.1f}% at step {result['best_step']}")
table = vitplas.probe(
    out / "probe", **common, layers=[1], components=["block"], max_train=256, num_workers=0
)
print(table[["layer", "component", "acc"]].to_string(index=False))
