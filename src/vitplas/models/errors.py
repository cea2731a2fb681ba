"""The one error type of model loading: says what was wrong, where we looked, how to fix it."""

from __future__ import annotations

from collections.abc import Sequence


class ModelError(ValueError):
    """A model spec cannot be resolved, or its weights cannot be found or trusted."""


def short_list(items: Sequence[str], limit: int = 12) -> str:
    """`a, b, c` for short lists; the first `limit` and a count for long ones."""
    items = list(items)
    if len(items) <= limit:
        return ", ".join(items)
    return f"{', '.join(items[:limit])}, ... ({len(items) - limit} more, {len(items)} in all)"


# how to ask for random weights, in every command (finetune/probe: key=value; analysis: option)
RANDOM_INIT_ADVICE = (
    "random_init=true to use random weights on purpose (plasticity and bounds: --random-init)"
)


def hub_advice() -> str:
    """How to get Hub weights onto this machine, for the reason the Hub was not used: the user
    set HF_HUB_OFFLINE, or the Hub could not be reached (vitplas then searched the cache only:
    see sources.hub_access), or the Hub answered without the file."""
    import os

    from huggingface_hub import constants

    cache = constants.HF_HUB_CACHE
    user_offline = any(
        os.environ.get(k, "").upper() in ("1", "ON", "YES", "TRUE")
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    if user_offline:
        return (
            f"HF_HUB_OFFLINE is set, so only the hub cache {cache} was searched: unset it on a "
            "machine with internet to download the weights once"
        )
    if constants.HF_HUB_OFFLINE:
        return (
            f"the Hugging Face Hub ({constants.ENDPOINT}) cannot be reached from this machine, "
            f"so only the hub cache {cache} was searched: to work offline, download the repo "
            "where there is internet (`hf download REPO`) and copy that machine's hub cache "
            "here (or point HF_HOME at a copy)"
        )
    return f"check the name; downloaded weights are kept in the hub cache {cache}"


def reason(err: BaseException) -> str:
    """`Type: first sentence` of an error, short enough to sit inside another message."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first.split('. ')[0][:160]}"
