"""Component-wise finetuning: train only the components named in `train` (+ head, final norm).

    compute_finetune(cfg, run) -> Computed   the finetuning job's compute: its lifecycle
        (lock, config check, read-back, seal) is vitplas.jobs.lifecycle's, through
        vitplas.jobs.runners.run_finetune (idempotent: a finished run is skipped, a killed
        run resumes from its checkpoint)

A finished run folder holds config.yaml, manifest.json, metrics.jsonl, result.json,
test_predictions.csv (per test image or text: index, label, pred of the best-validation
weights),
checkpoints/best.safetensors, checksums.json and DONE (the resumable train state,
checkpoints/step_*, is pruned once DONE unless keep_state: true). One process owns the folder
(vitplas.locks); the config is checked before anything is returned or computed, and a
checkpoint saved under other settings (another lr, seed, log_every ...: one copied from another
run) is refused before it is resumed from, naming the keys that differ. A run whose
loss stays above diverge_factor x its first loss for diverge_window steps after warmup stops
as diverged (failed.json says where). Run under torchrun for DDP.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from vitplas.config import ConfigError, config_to_dict
from vitplas.locks import is_main_process
from vitplas.models.components import count_parameters
from vitplas.models.text import forward_logits
from vitplas.records import check_settings, settings_of, stamp
from vitplas.runs import Computed, RunDir, atomic_write_json, atomic_write_text, fault_point
from vitplas.training import checkpoint as ckpt
from vitplas.training.config import RUNTIME_KEYS, FinetuneConfig
from vitplas.training.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    init_distributed,
    resolve_device,
)
from vitplas.training.distributed import cleanup as dist_cleanup
from vitplas.training.divergence import TrainingDivergedError, watch_divergence
from vitplas.training.evaluate import autocast, evaluate_model, predictions_table
from vitplas.training.logger import TrainLogger, truncate_metrics
from vitplas.training.optim import build_optimizer, clip_gradients, grad_norms, lr_at, set_lr
from vitplas.training.sources import Sources, load_sources
from vitplas.training.stream import device_augment, eval_loader, mix_seed, train_loader
from vitplas.training.trainsets import build_trainable, few_shot

__all__ = ["FinetuneConfig", "Finetuner", "TrainingDivergedError", "compute_finetune"]
PREDICTIONS = "test_predictions.csv"  # per test image: index (in the split), label, pred


Callback = Callable[["Finetuner", int], None]


def read_finetune(run: RunDir) -> dict[str, Any]:
    """A finished finetuning run's result.json, verified."""
    return run.read_json("result.json")


def compute_finetune(
    cfg: FinetuneConfig,
    run: RunDir,
    *,
    sources: Sources | None = None,
    callbacks: Sequence[Callback] = (),
    show_progress: bool = False,
) -> Computed:
    """Finetune as `cfg` says into `run`, resuming from its last checkpoint; the result (also
    result.json, which this job writes itself, as its manifest at the start). A diverged run
    leaves failed.json (step, loss) and raises TrainingDivergedError."""
    owner = is_main_process()
    if owner:
        (run / "failed.json").unlink(missing_ok=True)  # a former failure is retried
    trainer = Finetuner(cfg, run, sources=sources, callbacks=callbacks, show=show_progress)
    try:
        trainer.setup()
        trainer.train()
        return Computed(trainer.finish())
    except TrainingDivergedError as err:
        if owner:
            atomic_write_json(run / "failed.json", {"reason": "diverged", **err.where})
        raise
    finally:
        trainer.cleanup()


def after_done(cfg: FinetuneConfig, run: RunDir) -> None:
    """Once DONE: the resumable train state is pruned unless keep_state."""
    if not cfg.keep_state:
        for line in ckpt.prune_state(run.path).lines():
            warnings.warn(f"the train state was not pruned: {line}", stacklevel=2)


def _check_batch(cfg: FinetuneConfig, images: int) -> None:
    """A ConfigError when one update's batch holds more images than the train split: every
    image would be in it several times, each update taking epochs of compute."""
    if cfg.batch_size > images:
        raise ConfigError(
            f"batch_size={cfg.batch_size} is larger than the train split of {cfg.dataset} "
            f"({images} images): every update would hold each image "
            f"{cfg.batch_size / images:.1f} times; use batch_size={images} or less"
        )


class Finetuner:
    """setup() -> train() -> finish(); cleanup() always. One instance per process."""

    def __init__(self, cfg, run: RunDir, *, sources=None, callbacks=(), show=False):
        self.cfg, self.run, self.sources = cfg, run, sources
        self.callbacks, self.show = list(callbacks), show
        self.dist = DistInfo()
        self.logger: TrainLogger | None = None

    # ---- setup -------------------------------------------------------------------------
    def setup(self) -> None:
        """Processes, devices, model (frozen except `train`), optimizer; resume if possible."""
        cfg = self.cfg
        self._owns_group = not torch.distributed.is_initialized()
        self.dist = init_distributed(cfg.device)
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        # what a checkpoint must have been trained under to be resumed from: the config but its
        # runtime keys, log_every included (one logging rhythm per curve), and the processes
        # (each draws its own share of every batch)
        self.settings = settings_of(cfg, RUNTIME_KEYS, keep=("log_every",))
        self.settings["world_size"] = self.dist.world_size
        if not _is_text(cfg.dataset):  # not read for images: an image run's state predates it
            self.settings.pop("max_length", None)
        if cfg.batch_size % self.dist.world_size:
            raise ConfigError(
                f"batch_size {cfg.batch_size} not divisible by {self.dist.world_size}"
            )
        self.local_batch = cfg.batch_size // self.dist.world_size
        self.micro = cfg.micro_batch_size or self.local_batch
        if self.local_batch % self.micro:
            raise ConfigError(f"micro_batch_size {self.micro} must divide {self.local_batch}")
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        fault_point("startup")
        if self.sources is None:
            self.sources = load_sources(cfg)
        if cfg.train_per_class is not None:
            self.sources.train = few_shot(self.sources.train, cfg.train_per_class)
        _check_batch(cfg, len(self.sources.train))
        self._setup_model(self.sources.model.to(self.device))
        self.state = {"step": 0, "elapsed_s": 0.0, "train_s": 0.0, "best": None}
        self.state |= {"start_loss": None, "above": 0}  # divergence watch
        self.frozen_digest = ckpt.frozen_digest(self.model)
        self._resume()
        if self.dist.is_main:
            self._write_run_files()
        barrier(self.dist)

    def _setup_model(self, model: torch.nn.Module) -> None:
        cfg = self.cfg
        self.parameter_counts = count_parameters(model)  # before any adapter is injected
        try:
            self.groups_names = build_trainable(
                model, cfg.train, head=cfg.train_head, norm=cfg.train_norm, lora=cfg.lora
            )
        except ValueError as err:
            raise ConfigError(f"train={cfg.train}: {err}") from err
        params = dict(model.named_parameters())
        self.groups = {c: [params[n] for n in names] for c, names in self.groups_names.items()}
        self.trained = [p for p in model.parameters() if p.requires_grad]
        self.trained_names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.model = model
        self.net = self._wrap(model)
        self.optimizer = build_optimizer(
            self.trained,
            cfg.optimizer,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            betas=cfg.betas,
        )

    def _write_run_files(self) -> None:
        cfg = self.cfg
        self.run.write_config(cfg)
        self.run.write_manifest(
            {
                **self.sources.description,
                "seed": cfg.seed,
                "world_size": self.dist.world_size,
                "trained_parameters": {c: len(n) for c, n in self.groups_names.items()},
                "trainable_params": sum(p.numel() for p in self.trained),
                "parameter_counts": self.parameter_counts,
                **({"selected_by": config_to_dict(cfg.select)} if cfg.select.resolved else {}),
                "resumed_from_step": self.state["step"],
            }
        )
        self.logger = TrainLogger(
            self.run,
            start_step=self.state["step"],
            steps=cfg.steps,
            tensorboard=cfg.tensorboard,
            show=self.show,
        )

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        net = model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            net = DistributedDataParallel(model, device_ids=ids)
        if self.cfg.compile:
            net = torch.compile(net)
        return net

    def _resume(self) -> None:
        found = ckpt.load_latest(self.run / "checkpoints", map_location=self.device)
        if found is None:
            if self.dist.is_main:
                truncate_metrics(self.run, 0)  # a run killed before its first checkpoint
            return
        state, path = found
        fix = (
            f"rerun with the settings its checkpoints were saved under, give these settings a "
            f"folder of their own (--out), or delete {self.run / 'checkpoints'} to start over"
        )
        check_settings(state, self.settings, path / ckpt.STATE_FILE, fix)
        if state["frozen_digest"] != self.frozen_digest:
            raise ckpt.CheckpointError(
                f"{path}: the frozen weights differ from those this run started from "
                "(was the model or its weights file changed?); use a new run folder"
            )
        self.model.load_state_dict(state["trained"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        ckpt.set_rng_state(state["rng"])
        self.state = {k: state[k] for k in ("step", "elapsed_s", "train_s", "best")}
        self.state |= {"start_loss": state.get("start_loss"), "above": state.get("above", 0)}
        if self.dist.is_main:
            truncate_metrics(self.run, self.state["step"])

    # ---- train -------------------------------------------------------------------------
    def train(self) -> None:
        cfg, start = self.cfg, self.state["step"]
        loader = train_loader(
            self.sources.train,
            cfg.batch_size,
            seed=cfg.seed,
            start_step=start,
            steps=cfg.steps,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            num_workers=cfg.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        self.net.train()
        clock = waited = time.perf_counter()
        for step, (images, labels) in enumerate(loader, start=start):
            tick = time.perf_counter()
            data_s, waited = tick - waited, tick
            try:
                record = self.train_step(step, images, labels)
            except torch.cuda.OutOfMemoryError as err:
                raise RuntimeError(
                    f"out of GPU memory with micro-batches of {self.micro} images; set "
                    f"micro_batch_size={max(1, self.micro // 2)} (gradient accumulation keeps "
                    f"the batch of {cfg.batch_size})"
                ) from err
            done = step + 1
            fault_point("step")
            self.state["step"] = done
            self.state["train_s"] += time.perf_counter() - tick
            if done % cfg.log_every == 0 or done == cfg.steps:
                record["step_time_s"] = time.perf_counter() - tick
                record["images_per_s"] = cfg.batch_size / record["step_time_s"]
                record["data_wait_s"] = data_s  # > 0 for long: the input pipeline is too slow
                self._log({"kind": "train", "step": done, **record})
            if done % cfg.eval_every == 0 or (done == cfg.steps and cfg.validates_at_end):
                self.validate(done)
            now = time.perf_counter()
            self.state["elapsed_s"] += now - clock
            clock = now
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                self.save(done)
            if self.logger is not None:
                self.logger.advance(done, f"loss {record['loss']:.4f}" if "loss" in record else "")
            for callback in self.callbacks:
                callback(self, done)
            waited = time.perf_counter()

    def train_step(self, step: int, images: torch.Tensor, labels: torch.Tensor) -> dict:
        """One update (accumulating over micro-batches); {loss, lr, grad norms} on log steps."""
        cfg = self.cfg
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if cfg.augment == "device":
            # crops drawn from (seed, step, rank) alone: identical after a resume
            gen = torch.Generator(self.device).manual_seed(mix_seed(cfg.seed, step, self.dist.rank))
            crops = dict(scale=cfg.crop_scale, ratio=cfg.crop_ratio, flip=cfg.hflip)
            images = device_augment(
                images, cfg.img_size, self.sources.mean, self.sources.std, gen, **crops
            )
        lr = lr_at(
            step,
            base_lr=cfg.lr,
            warmup_steps=cfg.warmup_steps,
            total_steps=cfg.steps,
            warmup=cfg.warmup,
        )
        set_lr(self.optimizer, lr)
        # per-sample losses summed, times K / B: DDP's mean over K processes then gives the
        # mean over the global batch, whatever the accumulation
        scale = self.dist.world_size / cfg.batch_size
        chunks = list(zip(images.split(self.micro), labels.split(self.micro), strict=True))
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        for i, (x, y) in enumerate(chunks):
            sync = i == len(chunks) - 1 or not self.dist.enabled
            with _no_sync(self.net, sync), autocast(self.device, cfg.amp):
                logits = forward_logits(self.net, x)  # images, or tokens (B, 2, L)
                loss = F.cross_entropy(logits.float(), y, reduction="sum")
                (loss * scale).backward()
            loss_sum += loss.detach().double()
        loss_sum = all_reduce_sum(loss_sum, self.dist) / cfg.batch_size
        if not torch.isfinite(loss_sum):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDivergedError(
                f"loss is {loss_sum.item()} at step {step + 1}; the run stopped and kept its "
                f"last good checkpoint (step {self._last_checkpoint()}); lower lr or check inputs"
            ).located(step + 1, loss_sum.item())
        try:
            watch_divergence(self.state, step + 1, loss_sum.item(), cfg)
        except TrainingDivergedError:
            self.optimizer.zero_grad(set_to_none=True)
            raise
        total, per_component = grad_norms(self.groups)
        if cfg.grad_clip is not None:
            clip_gradients(self.trained, total, cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if (step + 1) % cfg.log_every and step + 1 != cfg.steps:
            return {}
        record = {"loss": loss_sum.item(), "lr": lr, "grad_norm": total.item()}
        record.update({f"grad_norm/{c}": v.item() for c, v in per_component.items()})
        return record

    def _last_checkpoint(self) -> int | None:
        found = ckpt.list_checkpoints(self.run / "checkpoints")
        return int(found[-1].name.split("_")[1]) if found else None

    def _log(self, record: dict) -> None:
        if self.logger is not None:
            self.logger.log(record)

    # ---- evaluate / save -----------------------------------------------------------------
    def evaluate(self, split: str, per_image: bool = False) -> dict[str, Any]:
        """Loss and accuracy on `split`; with `per_image`, also "table": its per-image record
        (evaluate.predictions_table)."""
        data = getattr(self.sources, split)
        cfg = self.cfg
        loader = eval_loader(
            data,
            cfg.eval_batch_size or self.micro,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            max_samples=cfg.max_eval_samples,
            num_workers=cfg.num_workers,
        )
        scores = evaluate_model(
            self.model, loader, self.device, amp=cfg.amp, dist=self.dist, per_image=per_image
        )
        if per_image:
            scores["table"] = predictions_table(loader, scores, self.dist)
        return scores

    def validate(self, step: int) -> None:
        scores = self.evaluate("val")
        fault_point("validation")
        self._log(
            {"kind": "val", "step": step, "val_loss": scores["loss"], "val_acc": scores["acc"]}
        )
        best = self.state["best"]
        if best is None or scores["acc"] > best["val_acc"]:
            weights = {
                n: p.detach().cpu().clone()
                for n, p in zip(self.trained_names, self.trained, strict=True)
            }
            self.state["best"] = {
                "val_acc": scores["acc"],
                "val_loss": scores["loss"],
                "step": step,
                "weights": weights,
            }

    def save(self, step: int) -> None:
        if self.dist.is_main:
            state = {
                **self.state,
                "trained": {
                    n: p.detach() for n, p in zip(self.trained_names, self.trained, strict=True)
                },
                "optimizer": self.optimizer.state_dict(),
                "rng": ckpt.rng_state(),
                "frozen_digest": self.frozen_digest,
                "samples_seen": step * self.cfg.batch_size,
            }
            ckpt.save_checkpoint(
                self.run / "checkpoints", step, stamp(state, self.settings),
                keep=self.cfg.keep_checkpoints,
            )  # fmt: skip
        barrier(self.dist)

    # ---- finish / cleanup ----------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Best-validation weights -> test split -> best.safetensors, result.json."""
        cfg, best = self.cfg, self.state["best"]
        self.model.load_state_dict(best["weights"], strict=False)
        test = self.evaluate("test", per_image=True)
        fault_point("test")
        result = {
            "best_val_acc": best["val_acc"],
            "best_val_loss": best["val_loss"],
            "test_acc": test["acc"],
            "test_loss": test["loss"],
            "test_n": test["n"],
            "best_step": best["step"],
            "steps": cfg.steps,
            "wall_time_s": self.state["elapsed_s"],
            "images_per_s": cfg.steps * cfg.batch_size / max(self.state["train_s"], 1e-9),
            "trainable_params": sum(p.numel() for p in self.trained),
            "train": list(cfg.train),
            "lr": cfg.lr,
            "seed": cfg.seed,
            "dataset": cfg.dataset,
            "model": cfg.model,
            "optimizer": cfg.optimizer,
            "batch_size": cfg.batch_size,
        }
        if self.dist.is_main:
            ckpt.save_weights(self.run / "checkpoints" / ckpt.BEST_FILE, best["weights"])
            fault_point("best_weights")
            self._log(
                {
                    "kind": "test",
                    "step": cfg.steps,
                    "test_loss": test["loss"],
                    "test_acc": test["acc"],
                }
            )
            atomic_write_text(self.run / PREDICTIONS, test["table"].to_csv(index=False))
            atomic_write_json(self.run / "result.json", result)
            fault_point("after_result")
        barrier(self.dist)  # the lifecycle (vitplas.jobs.lifecycle) seals the run next
        return result

    def cleanup(self) -> None:
        if self.logger is not None:
            self.logger.close()
            self.logger = None
        if getattr(self, "_owns_group", False):
            dist_cleanup(self.dist)  # a group this run created (torchrun) ends with it


def _is_text(dataset: str) -> bool:
    """Whether `dataset` is a text set of the registry (a caller's own Sources may name
    another: not a text set then)."""
    from vitplas.data import DataError, dataset_info

    try:
        return dataset_info(dataset).modality == "text"
    except DataError:
        return False


def _no_sync(net: torch.nn.Module, sync: bool):
    if sync or not hasattr(net, "no_sync"):
        return contextlib.nullcontext()
    return net.no_sync()
