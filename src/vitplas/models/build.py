"""load_model: one entry point from a spec string to a timm VisionTransformer and its facts.

Spec kinds, tried in this order:
    preset            'vit-b16-in21k', 'vit-l16-in21k', 'vit-h14-in21k', 'dinov2-s14', 'tiny-random'
    ARCH@FILE         a local file of a whole model's weights (.safetensors, .pth/.pt/.bin)
                      for timm arch ARCH, e.g. 'vit_base_patch16_224@exported.safetensors'
                      (another bare file has no architecture; a finetuned run's
                      best.safetensors holds only its trained parameters: name the run)
    folder            a local Hugging Face ViT folder (config.json + weights), or a text model
                      folder of the text families (BERT, RoBERTa, GPT-2; loaded by transformers)
    finetuned run     a finished `vitplas finetune` run folder (or its
                      checkpoints/best.safetensors): base model + trained weights;
                      RUN#base: that run's base model alone (an unfinished run: refused,
                      unless allow_unfinished)
    timm name         'vit_base_patch16_224.orig_in21k' (timm downloads / reads its cache)
    Hugging Face id   'google/vit-base-patch16-224-in21k' (converted to timm's layout), or a
                      text model's ('openai-community/gpt2')
A model whose weights cannot be had is an error (never a silent random init); pass
random_init=True to build the architecture with random weights on purpose.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vitplas import protocol as protocols
from vitplas.models import checkpoints, finetuned, hf, sources, timm_models
from vitplas.models.errors import ModelError
from vitplas.models.families_ops import embedding_module, input_shape, patch_size, set_input_size
from vitplas.models.registry import (
    NORMALIZATIONS,
    PAPER_MEAN_STD,
    Triple,
    get_preset,
    is_preset,
    preset_names,
)
from vitplas.models.sources import RANDOM_INIT, Built, build_preset
from vitplas.runs import DONE_MARKER

# a finetuning run used before it finished (allow_unfinished): what its description starts with
UNFINISHED = "UNFINISHED (no DONE, allow_unfinished)"


@dataclass
class LoadedModel:
    """A model ready to use: `model` is a timm VisionTransformer in eval mode on CPU (modality
    "text": a transformers model of the text families; mean, std and input_size are empty, and
    `tokenizer` is the folder or hub id its tokenizer loads from).

    mean/std are the model's own normalisation; `normalization("paper")` gives the paper's
    (ImageNet statistics, PAPER.md section 3 choice). input_size is (3, H, W) in pixels.
    checksum is the sha256 of the weights file (None for random weights).
    """

    model: nn.Module
    spec: str
    description: str
    mean: Triple
    std: Triple
    input_size: tuple[int, int, int]
    random_init: bool
    checksum: str | None
    num_classes: int
    arch: str = ""
    modality: str = "image"
    tokenizer: str | None = None

    def normalization(self, choice: str = "model") -> tuple[Triple, Triple]:
        """(mean, std) for `choice`: 'model' (the checkpoint's own) or 'paper' (ImageNet)."""
        if choice == "model":
            return self.mean, self.std
        if choice == "paper":
            return PAPER_MEAN_STD
        raise ModelError(f"normalization '{choice}' is unknown; known: {', '.join(NORMALIZATIONS)}")


def load_model(
    spec: str,
    *,
    num_classes: int | None = None,
    random_init: bool = False,
    img_size: int | None = None,
    allow_unfinished: bool = False,
) -> LoadedModel:
    """Build the model named by `spec` (see the module docstring for the spec kinds).

    num_classes: None keeps the checkpoint's head (0 = no head for the in21k backbones);
    N gives a new head of N outputs (trunc-normal std 0.02, zero bias), unless the head
    already has N outputs. img_size: input side in pixels; the position embedding is
    resampled to the new patch grid (a finetuned run: only its own size). random_init: random
    weights, never a download. allow_unfinished: a finetuning run without DONE is used as it
    is (its description says UNFINISHED) instead of refused.
    """
    spec = spec.strip()
    built = _dispatch(
        spec, random_init=random_init, img_size=img_size, allow_unfinished=allow_unfinished
    )
    return _finish(spec, built, num_classes=num_classes, img_size=img_size)


def load_configured(cfg, num_classes: int | None = None) -> LoadedModel:
    """load_model of a job config's model keys: model, random_init, img_size, allow_unfinished."""
    return load_model(
        cfg.model,
        num_classes=num_classes,
        random_init=cfg.random_init,
        img_size=cfg.img_size,
        allow_unfinished=getattr(cfg, "allow_unfinished", False),
    )


def _dispatch(spec: str, *, random_init: bool, img_size: int | None, allow_unfinished: bool):
    if is_preset(spec):
        return build_preset(get_preset(spec), random_init=random_init, img_size=img_size)
    if (run := finetuned.run_folder(spec)) is not None:
        base_only = spec.endswith(finetuned.BASE_SUFFIX)
        return from_run(
            run,
            random_init=random_init,
            base_only=base_only,
            img_size=img_size,
            allow_unfinished=allow_unfinished,
        )
    if "@" in spec:
        arch, _, path = spec.partition("@")
        if (run := finetuned.run_folder(path)) is not None:
            raise ModelError(
                f"{path} holds only the parameters that run {run} trained, not a whole model; "
                f"name the run instead ('{run}' or '{path}'): its base is rebuilt from the run's "
                f"config and they are applied. `vitplas export {run}` writes a whole model"
            )
        return sources.from_file(arch, Path(path).expanduser(), random_init=random_init)
    path = Path(spec).expanduser()
    if path.exists() or spec.lower().endswith(checkpoints.WEIGHT_SUFFIXES):
        return sources.from_path(path, random_init=random_init)
    if timm_models.is_timm_vit(spec):
        return sources.from_timm(spec, random_init=random_init, img_size=img_size)
    if hf.is_hf_id(spec):
        return sources.from_hf(spec, random_init=random_init)
    raise _unknown(spec)


def _unknown(spec: str) -> ModelError:
    close = difflib.get_close_matches(spec, preset_names(), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    if "/" not in spec:
        try:  # a mistyped timm name or a non-ViT: let the timm check say what is wrong
            timm_models.check_timm_vit(spec)
        except ModelError as err:
            hint += f"; as a timm name: {err}"
    return ModelError(
        f"model '{spec}' is unknown{hint}. A model spec is a preset ({', '.join(preset_names())}),"
        " a timm ViT name with tag (vit_base_patch16_224.orig_in21k), a Hugging Face ViT id "
        "(google/vit-base-patch16-224-in21k), a local Hugging Face folder, or ARCH@FILE for a "
        "local weights file (vit_base_patch16_224@path/to/weights.safetensors)"
    )


def check_patch_grid(model: nn.Module, img_size: int | None) -> None:
    """A ModelError when the input side (img_size, else the model's own) is not a multiple of
    the model's patch: timm would drop the ragged border of every image silently."""
    (height, width) = (img_size, img_size) if img_size else input_shape(model)[1:]
    ph, pw = patch_size(embedding_module(model))  # a hybrid's stem stride included
    if height % ph == 0 and width % pw == 0:
        return
    kept = (height // ph * ph) * (width // pw * pw) / (height * width)
    lower, upper = max(ph, height // ph * ph), (height // ph + 1) * ph
    raise ModelError(
        f"img_size={height} is not a multiple of this model's {ph}-pixel patches: its "
        f"{height // ph}x{width // pw} patch grid would drop {1 - kept:.0%} of every image; use "
        f"img_size={lower} or {upper}"
    )


def _finish(spec: str, built: Built, *, num_classes: int | None, img_size: int | None):
    if built.modality == "text":
        return _finish_text(spec, built, num_classes=num_classes, img_size=img_size)
    model = built.model
    check_patch_grid(model, img_size)
    if img_size is not None and input_shape(model)[1:] != (img_size, img_size):
        set_input_size(model, (img_size, img_size))  # resamples pos_embed
    if num_classes is not None and num_classes != model.num_classes:
        model.reset_classifier(num_classes)
        if num_classes > 0:  # timm's / HF's ViT head init, so every spec kind starts alike
            nn.init.trunc_normal_(model.head.weight, std=0.02)
            nn.init.zeros_(model.head.bias)
    model = model.cpu().eval()
    description = built.description
    if built.random_init and RANDOM_INIT not in description:
        description = f"{RANDOM_INIT} {description}"
    return LoadedModel(
        model=model,
        spec=spec,
        description=description,
        mean=tuple(float(v) for v in built.mean),
        std=tuple(float(v) for v in built.std),
        input_size=input_shape(model),  # the image's channels, not a hybrid stem's
        random_init=built.random_init,
        checksum=built.checksum,
        num_classes=int(model.num_classes),
        arch=built.arch,
    )


def _finish_text(spec: str, built: Built, *, num_classes: int | None, img_size: int | None):
    """A text model as loaded (its family checked); num_classes N (other than the head it has)
    makes it the *ForSequenceClassification of its config with a new N-class head and the
    base weights (hf_text.with_classifier)."""
    from vitplas.models.components import component_map
    from vitplas.models.hf_text import with_classifier

    if img_size is not None:
        raise ModelError(f"{spec} is a text model: it has no image size (drop img_size)")
    model = built.model
    try:
        component_map(model)  # one of the text families, every parameter in a component
        has = int(model.config.num_labels) if _is_text_classifier(model) else 0
        if num_classes is not None and num_classes != has:
            if num_classes < 1:
                raise ModelError(f"{spec}: a text model's head needs 1 class or more")
            model = with_classifier(model, num_classes)
            component_map(model)
            has = num_classes
    except TypeError as err:
        raise ModelError(f"{spec}: {err}") from err
    description = built.description
    if built.random_init and RANDOM_INIT not in description:
        description = f"{RANDOM_INIT} {description}"
    return LoadedModel(
        model=model.cpu().eval(),
        spec=spec,
        description=description,
        mean=(),
        std=(),
        input_size=(),
        random_init=built.random_init,
        checksum=built.checksum,
        num_classes=has,
        arch=built.arch,
        modality="text",
        tokenizer=built.tokenizer,
    )


def _is_text_classifier(model: nn.Module) -> bool:
    return type(model).__name__.endswith("ForSequenceClassification")


def reset_head(model: torch.nn.Module) -> None:
    """Give the classification head torch.nn.Linear's default initialisation (the original's:
    weights and bias uniform in +-1/sqrt(fan_in)), drawn from the global torch RNG."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(
            f"the model's head is {type(head).__name__}, not a Linear: protocol paper needs a "
            "new linear head (pass num_classes)"
        )
    head.reset_parameters()


def start_model(
    spec: str,
    *,
    num_classes: int,
    random_init: bool,
    img_size: int | None,
    seed: int,
    protocol: str,
    allow_unfinished: bool = False,
):
    """The LoadedModel a finetuning run starts from: `spec` with a new `num_classes` head drawn
    from `seed` (global torch RNG): timm's init under protocol model, torch.nn.Linear's under
    paper (the original's)."""
    torch.manual_seed(seed)
    loaded = load_model(
        spec,
        num_classes=num_classes,
        random_init=random_init,
        img_size=img_size,
        allow_unfinished=allow_unfinished,
    )
    if protocols.get(protocol).head_init == "torch":
        torch.manual_seed(seed)  # the same head whatever loading drew
        reset_head(loaded.model)
    return loaded


def from_run(
    run: Path,
    *,
    random_init: bool,
    base_only: bool = False,
    img_size: int | None = None,
    allow_unfinished: bool = False,
) -> Built:
    """A `Built` (vitplas.models.sources) of finetuning run `run`: base model + trained weights
    (base_only: the base alone; the trained file is still verified and read for the head).
    A finished run only (its records read through its seal), unless `allow_unfinished`; at
    its own input size only (`img_size` None or the run's). A run on a text set is its text
    model's sequence classifier (modality text, its tokenizer; no image size, no mean/std)."""
    if random_init:
        raise ModelError(
            f"{run} is a finetuned run: its weights are the point; drop random_init (--random-init)"
        )
    unfinished = not (run / DONE_MARKER).exists()
    if unfinished and not allow_unfinished:
        raise finetuned.unfinished_error(run)
    cfg = finetuned.read_run_config(run, unfinished)
    text = finetuned.is_text_run(cfg)  # a text set: the sequence classifier, no image size
    if text and img_size is not None:
        raise ModelError(f"{run} is a text model (trained on {cfg['dataset']}): it has no image "
                         "size (drop img_size)")  # fmt: skip
    if img_size is not None and cfg.get("img_size") not in (None, img_size):
        raise ModelError(
            f"{run} trained at img_size {cfg['img_size']}; at {img_size} its position embedding "
            f"would be resampled into another model: set img_size={cfg['img_size']} (or leave "
            "it unset)"
        )
    prep = None if text else finetuned.run_preprocessing(run, cfg, unfinished)
    trained, checksum = finetuned.read_trained(run, unfinished)
    with torch.random.fork_rng(devices=[]):
        base = start_model(
            str(cfg["model"]),
            num_classes=finetuned.num_classes_of(cfg, trained),
            random_init=bool(cfg.get("random_init", False)),
            img_size=None if text else cfg.get("img_size"),
            seed=int(cfg.get("seed", 0)),
            protocol=finetuned.run_protocol(run, cfg),
        )
    recorded = finetuned.read_manifest(run, unfinished).get("model_checksum")
    if recorded and base.checksum and recorded != base.checksum:
        raise ModelError(
            f"base model '{cfg['model']}' has weights (sha256 {base.checksum[:12]}...) other than "
            f"those run {run} trained from ({recorded[:12]}...); restore them to use this run"
        )
    if prep is not None:
        finetuned.with_preprocessing(base.model, prep)
    mean, std = (prep["mean"], prep["std"]) if prep is not None else ((), ())
    modality = {"modality": base.modality, "tokenizer": base.tokenizer}  # text: its tokenizer
    train = "+".join(cfg.get("train", []))
    what = f"{UNFINISHED} finetuned run {run}" if unfinished else f"finetuned run {run}"
    if base_only:
        desc = f"base model of {what}: {base.description}"
        return Built(
            base.model, desc, mean, std, base.checksum, base.random_init, base.arch, **modality
        )
    finetuned.apply_run_weights(base.model, cfg, trained, run)
    desc = f"{what} (train={train} on {cfg['dataset']}) of {base.description}"
    return Built(base.model, desc, mean, std, checksum, base.random_init, base.arch, **modality)
