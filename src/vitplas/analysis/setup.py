"""What the analysis commands share: device choice, model and datasets with their transform
(for a text model: its tokenizer, analysis.text_pairs), honest stream labels, and a model
checksum."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from vitplas.analysis.bounds import token_radius
from vitplas.analysis.pairs import stream_seed
from vitplas.analysis.plasticity import embed_images
from vitplas.analysis.text_pairs import TokenizedTexts, text_assumptions, text_radius
from vitplas.data import dataset_info, get_dataset, make_loader, transform_for
from vitplas.data.splits import plan_for
from vitplas.device import precision
from vitplas.device import resolve_device as resolve_device  # re-exported
from vitplas.models import LoadedModel, load_model
from vitplas.models.build import load_configured
from vitplas.models.components import ComponentMap, component_map
from vitplas.models.errors import ModelError
from vitplas.models.text import load_tokenizer

DEFAULT_MAX_LENGTH = 128  # tokens per text where a config has no max_length (the original's)


@dataclass
class ModelSetup:
    """A loaded model on its device, its component map and token shape (n_tokens, width);
    a text model's n_tokens is the padded sequence length L (max_length), with its tokenizer."""

    loaded: LoadedModel
    cmap: ComponentMap
    device: torch.device
    n_tokens: int
    width: int
    tokenizer: Any = None

    @property
    def text(self) -> bool:
        return self.loaded.modality == "text"

    def transform(self, protocol: str = "model"):
        """Eval transform of `protocol` (data.transforms): paper = the original's, model = the
        checkpoint's own mean/std, interpolation and crop fraction. A text model: None (its
        tokenizer turns texts into tensors); protocol paper, the original's image crops, is
        refused."""
        if self.text:
            if protocol != "model":
                raise ModelError(
                    f"protocol '{protocol}' is the original's image preprocessing (resize and "
                    f"crops): {self.loaded.spec} is a text model; use protocol model"
                )
            return None
        return transform_for(self.loaded, train=False, protocol=protocol)


def setup_model(
    spec: str, *, random_init: bool, img_size: int | None, device: torch.device
) -> ModelSetup:
    """Load `spec`, check its input size against its patches, move it to `device`."""
    return setup_loaded(load_model(spec, random_init=random_init, img_size=img_size), device)


def setup_for(cfg) -> ModelSetup:
    """setup_model from a job config's model, random_init, img_size and device, seeded first
    from cfg.seed: random_init weights are the same each time the same run is computed."""
    torch.manual_seed(cfg.seed)
    max_length = getattr(cfg, "max_length", DEFAULT_MAX_LENGTH)
    return setup_loaded(load_configured(cfg), resolve_device(cfg.device), max_length)


def setup_loaded(
    loaded: LoadedModel, device: torch.device, max_length: int = DEFAULT_MAX_LENGTH
) -> ModelSetup:
    """A loaded model on `device` in eval mode, with its map and token shape (N, D); a text
    model reads sequences of `max_length` tokens (checked against its positions) and gets its
    tokenizer."""
    model = loaded.model.to(device).eval()
    cmap = component_map(model)
    if loaded.modality == "text":
        return _text_setup(loaded, cmap, device, max_length)
    with torch.inference_mode():
        probe = torch.zeros(1, *loaded.input_size, device=device)
        n_tokens, width = embed_images(cmap, probe).shape[1:]  # refuses a ragged image size
    return ModelSetup(loaded, cmap, device, int(n_tokens), int(width))


def _text_setup(loaded: LoadedModel, cmap: ComponentMap, device, max_length: int) -> ModelSetup:
    from vitplas.models.hf_text import check_max_length

    check_max_length(loaded.spec, loaded.model, max_length)
    tokenizer = load_tokenizer(loaded)
    with torch.inference_mode():
        probe = torch.zeros(1, max_length, dtype=torch.long, device=device)
        width = cmap.embed(probe).shape[-1]
    return ModelSetup(loaded, cmap, device, max_length, int(width), tokenizer)


def check_modality(setup: ModelSetup, *streams: str) -> None:
    """A one-line ModelError when a stream (a dataset name) is not of the model's modality."""
    for name in streams:
        kind = dataset_info(name).modality
        if kind != setup.loaded.modality:
            reads = "token ids" if setup.text else "images"
            raise ModelError(
                f"dataset '{name}' is {kind} but {setup.loaded.spec} reads {reads}; pair a "
                f"{setup.loaded.modality} model with {setup.loaded.modality} datasets "
                "(vitplas datasets lists each one's modality)"
            )


def model_stream(setup: ModelSetup, cfg, name: str, split: str) -> Dataset:
    """Stream `name`/`split` of a job config (its data_root, download, protocol) as `setup`'s
    model reads it (open_model_stream)."""
    return open_model_stream(setup, name, split, cfg.data_root, cfg.download, cfg.protocol)


def open_model_stream(
    setup: ModelSetup, name: str, split: str, root: str | None, download: bool, protocol: str
) -> Dataset:
    """Dataset `name`/`split` as `setup`'s model reads it: images through its transform,
    texts tokenised to its n_tokens (TokenizedTexts); a stream of another modality refused."""
    check_modality(setup, name)
    data = open_stream(name, split, setup.transform(protocol), root, download, protocol)
    return TokenizedTexts(data, setup.tokenizer, setup.n_tokens) if setup.text else data


def measured_unit(setup: ModelSetup) -> str:
    """What a radius is averaged over: "texts" (their real tokens only) or "images"."""
    return "texts" if setup.text else "images"


def open_stream(
    name: str, split: str, transform, root: str | None, download: bool, protocol: str = "model"
) -> Dataset:
    """Dataset `name`/`split`, carved as `protocol` says (paper: the original's test split)."""
    plan = plan_for(protocol)
    return get_dataset(name, split, transform=transform, root=root, download=download, plan=plan)


def measured_radius(
    setup: ModelSetup, data: Dataset, name: str, split: str, *, images: int, **kwargs
) -> tuple[float | list[float], str]:
    """(r as a number, or a list per layer for hidden / insitu inputs; where it was measured)
    on `images` images of dataset `name` [`split`]; kwargs go to dataset_radius."""
    r = dataset_radius(setup, data, images=images, **kwargs)
    where = f"measured on {name} [{split}], {images} {measured_unit(setup)}"
    return (r.tolist() if r.ndim else float(r)), where


def dataset_radius(
    setup: ModelSetup,
    data: Dataset,
    *,
    images: int,
    batch_size: int,
    seed: int = 0,
    inputs: str = "embedding",
    num_workers: int = 0,
) -> torch.Tensor:
    """Token radius r of input mode `inputs` (RADIUS_AT) on the first `images` images of
    `data` in the seed's target order (the images the first pairs use), in float32: a number
    (embedding), or one per layer (hidden, insitu)."""
    loader = make_loader(
        data,
        min(batch_size, len(data)),
        shuffle=True,
        seed=stream_seed(seed, "target", 0),
        num_workers=num_workers,
    )
    batches = (x for x, _ in loader)
    measure = text_radius if setup.text else mode_radius
    with precision(setup.device, "float32"):  # r enters the bounds: no TF32 rounding
        r, _ = measure(setup.cmap, batches, max_images=images, inputs=inputs, device=setup.device)
    return r


# where each input mode measures the token radius r of the MHA bound (the ball MHA's input
# tokens must lie in): MHA's own input, i.e. the embedding output (embedding: MHA reads it
# without LN1), each block's input (hidden: likewise), or what MHA receives in the model's
# forward (insitu: LN1's output in a pre-norm block, the block input in a post-norm one)
RADIUS_AT = {
    "embedding": "embedding output",
    "hidden": "input of block {layer}",
    "insitu": "MHA's input in block {layer}",
}


def mode_radius(
    cmap: ComponentMap,
    batches: Iterable[torch.Tensor],
    *,
    max_images: int,
    inputs: str = "embedding",
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, int]:
    """(r, n_tokens): the mean over images of the RMS token norm at RADIUS_AT[inputs], a 0-dim
    tensor (embedding) or one per layer (L,)."""
    if inputs not in RADIUS_AT:
        raise ValueError(f"inputs '{inputs}' is unknown; choose one of {', '.join(RADIUS_AT)}")
    if inputs != "insitu":
        per_layer = inputs == "hidden"
        return token_radius(
            cmap, batches, max_images=max_images, per_layer=per_layer, device=device
        )
    total, seen, n_tokens = torch.zeros(cmap.depth, dtype=torch.float64), 0, 0
    with torch.inference_mode():
        for images in batches:
            h = embed_images(cmap, images[: max_images - seen].to(device, non_blocking=True))
            n_tokens = h.shape[1]
            for layer in range(cmap.depth):
                site, h = cmap.insitu_inputs(layer, ["mha"], h)
                rms = site["mha"].double().square().sum(-1).mean(-1).sqrt()  # (B,)
                total[layer] += rms.sum().cpu()
            seen += h.shape[0]
            if seen >= max_images:
                break
    if not seen:
        raise ValueError("no images to measure the token radius on")
    return total / seen, n_tokens


def bound_width(setup: ModelSetup, inputs: str) -> int | None:
    """The width of the tokens FC2's probe reads zero-padded (its tight bound ||W[:, :D]||_2),
    or None in situ: FC2 reads its real, full-width input there, so ||W||_2 is the tight one."""
    return None if inputs == "insitu" else setup.width


def config_bounds(cfg, setup: ModelSetup, components, radius, on_phase=None):
    """layer_bounds of `setup`'s model with a plasticity or bounds config's options (ln_bound,
    mha_bound, mha_slicing, inputs; r_max where the config has one); on_phase("bounds", done,
    total) follows the layers. The table: bound_table.BOUND_COLUMNS."""
    from vitplas.analysis.bound_table import layer_bounds

    frame = layer_bounds(
        setup.cmap,
        components,
        n_tokens=setup.n_tokens,
        radius=radius,
        width=bound_width(setup, cfg.inputs),
        ln_bound=cfg.ln_bound,
        mha_bound=cfg.mha_bound,
        mha_slicing=cfg.mha_slicing,
        r_max=getattr(cfg, "r_max", None),
        progress=None if on_phase is None else lambda done, n: on_phase("bounds", done, n),
    )
    return text_assumptions(frame, setup.n_tokens) if setup.text else frame


def stream_label(name: str) -> str:
    """'name: description' from the dataset registry (says when a stream is a stand-in)."""
    try:
        description = dataset_info(name).description
    except Exception:  # a name the registry resolves only at load time
        return name
    return f"{name}: {description.split(';')[0]}"


def model_checksum(setup: ModelSetup) -> tuple[str, str]:
    """(sha256, what it hashes): the weights file when there is one, else the tensors."""
    return model_checksum_of(setup.loaded)


def model_checksum_of(loaded: LoadedModel) -> tuple[str, str]:
    """(sha256, what it hashes) of a LoadedModel: its weights file, else its tensors."""
    if loaded.checksum:
        return loaded.checksum, "weights file"
    digest = hashlib.sha256()
    for name, tensor in sorted(loaded.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(
            tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest(), "state dict tensors"
