"""Plasticity of a preset model between two named offline datasets, then its bounds and the
token radius they use; the same numbers as `vitplas plasticity --model tiny-random
--random-init --reference photos --target digits --pairs 64 --batch-size 16 --device cpu`.

Run: python examples/plasticity_datasets.py
"""

import vitplas

options = dict(random_init=True, device="cpu")
result = vitplas.plasticity("tiny-random", "photos", "digits", pairs=64, batch_size=16, **options)
print(result.table.head(10).to_string(index=False))
print("ranking:", " > ".join(result.ranking), "| settled:", result.settled)

r = vitplas.radius("tiny-random", "digits", images=64, **options)
bounds = vitplas.bounds("tiny-random", radius=r, **options)  # n_tokens, width: from the model
print(f"token radius r = {r:.4g}")
print(bounds.groupby("component")["bound"].max().to_string())
cmap = vitplas.component_map(vitplas.load_model("tiny-random", random_init=True))
print("depth", cmap.depth, "block components", cmap.block_components)
