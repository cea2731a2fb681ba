"""Text streams for the plasticity estimator: a text dataset's items tokenised by the model's
own tokenizer to `max_length` tokens (data.text.TokenizedTexts, finetuning's too), packed as one
(2, L) int64 tensor per text (row 0 the token ids, row 1 the attention mask), so that
analysis.pairs draws text pairs exactly as it draws image pairs (seeds, passes, dataset
indices, units) and a batch is (B, 2, L).

The independent units of a text stream (the CIs') are its distinct texts: a text the stream
holds twice is one unit (WordNet repeats some glosses).
The token radius of a text stream counts real tokens only (pad positions are read by nobody).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from vitplas.analysis.bounds import ASSUMPTIONS
from vitplas.data.text import TokenizedTexts as TokenizedTexts  # re-exported
from vitplas.models.components import ComponentMap
from vitplas.models.text import embed_tokens


def unpack(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids (B, L), attention_mask (B, L)) of a packed (B, 2, L) batch."""
    if batch.ndim != 3 or batch.shape[1] != 2:
        raise ValueError(f"a text batch is (B, 2, L) ids and mask, got {tuple(batch.shape)}")
    ids, mask = batch.unbind(1)
    return ids, mask


def _rms(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) float64 sqrt(mean over the real tokens of ||token||^2) of h (B, L, D)."""
    keep = mask.bool()
    sq = h.double().square().sum(-1).masked_fill(~keep, 0.0)  # (B, L)
    return (sq.sum(-1) / keep.sum(-1).clamp(min=1)).sqrt()


def text_radius(
    cmap: ComponentMap,
    batches: Iterable[torch.Tensor],
    *,
    max_images: int,
    inputs: str = "embedding",
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, int]:
    """(r, L) as setup.mode_radius for text: the mean over texts of the RMS norm of the real
    tokens at MHA's input in each mode (embedding output; each block's input; in situ MHA's
    own input), a 0-dim tensor (embedding) or (depth,); L the padded sequence length.
    `max_images` counts texts (the name is the image radius's)."""
    layers = 1 if inputs == "embedding" else cmap.depth
    total, seen, length = torch.zeros(layers, dtype=torch.float64), 0, 0
    with torch.inference_mode():
        for batch in batches:
            ids, mask = (t.to(device) for t in unpack(batch[: max_images - seen]))
            h, length = embed_tokens(cmap, ids, mask), ids.shape[1]
            for layer in range(layers):
                if inputs == "insitu":
                    site, out = cmap.insitu_inputs(layer, ["mha"], h, mask)
                    total[layer] += _rms(site["mha"], mask).sum().cpu()
                    h = out
                else:
                    total[layer] += _rms(h, mask).sum().cpu()
                    if layer + 1 < layers:
                        h = cmap.forward_block(layer, h, mask)
            seen += ids.shape[0]
            if seen >= max_images:
                break
    if not seen:
        raise ValueError("no texts to measure the token radius on")
    r = total / seen
    return (r[0] if inputs == "embedding" else r), length


def text_assumptions(frame: Any, length: int) -> Any:
    """A bounds table (bound_table.BOUND_COLUMNS) of a text model with its MHA rows' token count
    and padding in their assumptions. The data bound assumes x and y of one real length n (a
    pair of different real lengths has no finite bound: x's own tokens move f(x) at the shared
    positions while those are equal), checked per pair (inf where it fails, `held` False in the
    table), each pair bounded at its own n, the table at the pairs' largest (at most L =
    `length`; pair_lengths=equal draws only such pairs). The paper's formula is at n = L."""
    out = frame.copy()
    notes = {
        "mha-data": "x and y of one real length n (checked per pair: a pair of different real "
        f"lengths has no finite bound, inf); n = the pair's real length, at most L = {length}",
        "mha-paper": f"every token's norm <= r (the mean radius), no query bias, and x, y of "
        f"one real length (n = L = {length}, the padded length: at least every pair's)",
    }
    for kind, text in notes.items():  # a given r_max keeps its own (not checked) assumption
        rows = (out["kind"] == kind) & (out["assumption"] == ASSUMPTIONS[kind])
        out.loc[rows, "assumption"] = text
    return out
