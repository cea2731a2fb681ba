"""The paper's constants (PAPER.md), in one place: every module that needs one reads it here.

IMAGENET_MEAN, IMAGENET_STD   the ImageNet statistics the original normalises with
THEORETICAL_RANK              the paper's theoretical ranking (section 2): 1 = least smooth
PAPER_TRAIN_SETS              the finetuning configurations of the main study (section 3)
"""

from __future__ import annotations

Triple = tuple[float, float, float]

IMAGENET_MEAN: Triple = (0.485, 0.456, 0.406)
IMAGENET_STD: Triple = (0.229, 0.224, 0.225)
IMAGENET_MEAN_STD: tuple[Triple, Triple] = (IMAGENET_MEAN, IMAGENET_STD)
THEORETICAL_RANK: dict[str, int] = {"mha": 1, "fc1": 2, "fc2": 3, "ln2": 4, "ln1": 5}
PAPER_TRAIN_SETS = ("all", "emb", "ln1", "mha", "ln2", "fc1", "fc2")  # "all": full finetuning
