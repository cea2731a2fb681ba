"""Divergence beyond NaN: gradient clipping keeps the weights finite under an lr far too high,
so the loss can climb to 1e11 without ever being NaN. A run whose loss stays above
`diverge_factor` x its first step's loss for `diverge_window` consecutive steps after warmup
is stopped as diverged; so is a run whose last step's loss is above that limit, so that no
run, however short against the window, that ends far above its first loss is sealed DONE.
The watch's state (first loss, steps above) lives in the train state,
so a resumed run watches exactly as an unbroken one.
"""

from __future__ import annotations

from typing import Any, ClassVar


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite, or stayed far above its starting value.
    `.where` = {"step", "loss", "message"} once located."""

    where: ClassVar[dict[str, Any]] = {}

    def located(self, step: int, loss: float) -> TrainingDivergedError:
        self.where = {"step": step, "loss": loss, "message": str(self)}
        return self


def watch_divergence(state: dict[str, Any], step: int, loss: float, cfg: Any) -> None:
    """Update state["start_loss"] / state["above"] with `loss` at 1-based `step`; raise
    TrainingDivergedError when the loss stayed too high for cfg.diverge_window steps after
    warmup, or when the last step's loss is too high (whatever the warmup: a run shorter than
    the window is watched too)."""
    if state["start_loss"] is None:
        state["start_loss"] = loss
    if cfg.diverge_factor is None:
        return
    limit = cfg.diverge_factor * state["start_loss"]
    if step == cfg.steps and loss > limit:
        raise TrainingDivergedError(
            f"training diverged: the loss ended at {loss:.4g} at the last step ({step}), above "
            f"{cfg.diverge_factor:g} x its first value ({state['start_loss']:.4g}); the run is "
            f"marked failed (failed.json); {ADVICE}"
        ).located(step, loss)
    if step <= cfg.warmup_steps:
        return
    state["above"] = state["above"] + 1 if loss > limit else 0
    if state["above"] >= cfg.diverge_window:
        raise TrainingDivergedError(
            f"training diverged: the loss stayed above {cfg.diverge_factor:g} x its first "
            f"value ({state['start_loss']:.4g}) for {cfg.diverge_window} steps after warmup, "
            f"reaching {loss:.4g} at step {step}; the run is marked failed (failed.json); "
            f"{ADVICE}"
        ).located(step, loss)


ADVICE = "lower lr (or raise diverge_factor / set it to null if this is expected)"
