"""The one training loop: every task (detection, segmentation, early-exit, ...) runs through it.

It is task-agnostic: a task hands it a model, a dataset with its collate function, a
`loss_fn(model, images, targets) -> {name: loss}` and an `evaluate_fn(model) -> metrics`.
The loop does what every run needs done right once: the whole forward and loss under
autocast on GPU, warmup + cosine (over steps or the wall-clock budget, whichever binds),
gradient clipping, EMA, per-component loss history (a row every `train.log_every` steps),
atomic checkpoints with exact resume (same step, optimizer, scaler and data order), early
stopping, DDP under torchrun, a live console (progress with the time remaining, each
evaluation's metrics), TensorBoard, and the hook points through which the doctor's monitors
and the user's callbacks (docs/callbacks.md) watch the run and may stop it.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, Sampler

from visiondoctor.config import TrainConfig
from visiondoctor.engine import distributed as dist_utils
from visiondoctor.engine.callbacks import Callback, TrainState
from visiondoctor.engine.checkpoint import load_latest, save_checkpoint
from visiondoctor.engine.progress import Eta, TrainProgress, progress_text, time_remaining, track
from visiondoctor.engine.tensorboard import TENSORBOARD_DIR, TensorBoardLogger
from visiondoctor.report.common_sections import KEY_METRICS
from visiondoctor.rundir import write_bytes_atomic

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Any, Any], dict[str, torch.Tensor]]
EvalFn = Callable[[nn.Module], dict[str, Any]]
STOP_ON = ("error", "warning", "never")
EVAL_LINE_METRICS = 4  # metrics on an evaluation's console line: the primary one first


def loss_column(name: str) -> str:
    """History column of a loss component: torchvision's `loss_classifier` stays as is, SSD's
    `classification` becomes `loss_classification`."""
    return name if name.startswith("loss_") else f"loss_{name}"


def default_loss_fn(model: nn.Module, images: Any, targets: Any) -> dict[str, torch.Tensor]:
    """torchvision convention: a detector in train mode returns its named losses."""
    return model(images, targets)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if dist_utils.is_distributed() and torch.cuda.is_available():
            return torch.device("cuda", dist_utils.local_rank())
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """auto: bf16 where the GPU supports it, fp16 (with a scaler) otherwise, off on CPU."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    if amp in ("fp16", "auto"):
        return torch.float16
    raise ValueError(f"train.amp={amp!r}: expected auto, off, fp16 or bf16")


def channels_last_enabled(mode: str, model: nn.Module, device: torch.device) -> bool:
    """auto: on for convolutional models on CUDA, where tensor cores run NHWC convolutions without
    the layout transposes NCHW costs, and on CPU, where oneDNN's NHWC kernels are faster too.
    Measured on the 2-core development CPU, one training forward + backward of 8 images
    (torch 2.14): SSDLite-MobileNetV3-Large 1.83x, RetinaNet-MobileNetV3-FPN 1.24x,
    DeepLabV3+-ResNet18 1.16x, Faster R-CNN-MobileNetV3-FPN 1.02x; the default recipe on BCCD
    trained at 10.8 instead of 6.6 images/s. Other devices (MPS, ...) keep NCHW."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"train.channels_last={mode!r}: expected auto, on or off")
    if mode == "auto":
        return device.type in ("cuda", "cpu") and any(isinstance(m, nn.Conv2d) for m in model.modules())
    return mode == "on"


def lr_factor(step: int, total_steps: int, elapsed_s: float, budget_s: float, warmup_steps: int, kind: str) -> float:
    """Linear warmup, then cosine to 0 over the training progress (steps or time, whichever is further)."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if kind == "constant":
        return warm
    progress = step / max(1, total_steps)
    if budget_s > 0:
        progress = max(progress, elapsed_s / budget_s)
    return warm * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch, sharded across ranks, that can skip the batches already
    trained (so a resumed run sees exactly the data it would have seen)."""

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.epoch, self.skip = 0, 0
        self.rank, self.world = dist_utils.rank(), dist_utils.world_size()

    def set_epoch(self, epoch: int, skip_samples: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_samples

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        if self.world > 1:  # pad so every rank gets the same count (as DistributedSampler does)
            per_rank = math.ceil(self.size / self.world)
            order = (order * 2)[: per_rank * self.world][self.rank :: self.world]
        return order

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.skip :])

    def __len__(self) -> int:
        return len(self._indices()) - self.skip


@dataclass
class TrainResult:
    steps: int
    epochs_completed: int
    elapsed_s: float
    best_metric: float | None
    metrics: dict[str, Any]
    stopped_by: str  # epochs | time | early-stop | callback | "callback: <reason>"
    history: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str | None = None  # the reason a callback gave (TrainState.request_stop)


@dataclass
class LogWindow:
    """The steps since the last history row on this rank: summed scalars, steps, images, seconds."""
    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    images: int = 0
    seconds: float = 0.0  # before `clock`, e.g. trained before a resume
    clock: float = field(default_factory=time.perf_counter)

    def add(self, scalars: dict[str, float], images: int) -> None:
        for k, v in scalars.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.steps += 1
        self.images += images

    def restart_clock(self) -> None:
        """Time spent outside training steps (evaluation, a resume) does not count as training time."""
        self.clock = time.perf_counter()

    def elapsed(self) -> float:
        return self.seconds + time.perf_counter() - self.clock


class Trainer:
    """Train `model` on `train_set`. Everything run-specific (where files go, what to evaluate)
    is passed in; the loop itself knows nothing about detection or segmentation."""

    def __init__(
        self,
        model: nn.Module,
        train_set: Dataset,
        cfg: TrainConfig,
        collate_fn: Callable | None = None,
        loss_fn: LossFn = default_loss_fn,
        evaluate_fn: EvalFn | None = None,
        val_set: Dataset | None = None,
        primary_metric: str = "map",
        callbacks: Iterable[Callback] = (),
        run_dir: Path | None = None,
        workers: int = 0,
    ):
        if cfg.stop_on not in STOP_ON:
            raise ValueError(f"train.stop_on={cfg.stop_on!r}: expected one of {', '.join(STOP_ON)}")
        if cfg.log_every < 0:
            raise ValueError(f"train.log_every={cfg.log_every}: expected a number of steps >= 0 (0 = once per epoch)")
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.model = dist_utils.prepare_model(model.to(self.device), self.device, cfg.sync_bn)
        self.channels_last = channels_last_enabled(cfg.channels_last, self.model, self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.loss_fn = loss_fn
        self.evaluate_fn = evaluate_fn
        self.primary_metric = primary_metric
        self.callbacks = list(callbacks)
        self.run_dir = Path(run_dir) if run_dir else None
        self.is_main = dist_utils.is_main()
        # Public so that the caller can add the doctor's findings and drawn predictions once the run is evaluated.
        self.tensorboard = (TensorBoardLogger(self.run_dir / TENSORBOARD_DIR)
                            if cfg.tensorboard and self.run_dir is not None and self.is_main else None)
        if self.tensorboard is not None:
            self.callbacks.append(self.tensorboard)
        self.amp_dtype = autocast_dtype(cfg.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        # Each rank loads its share of the global batch; DDP averages the gradients, so a step
        # sees the same batch as one process would (up to BatchNorm statistics, see distributed.py).
        per_rank_batch = dist_utils.per_rank_batch_size(cfg.batch_size)
        self.sampler = EpochSampler(len(train_set), cfg.seed)
        pin = self.device.type == "cuda"
        loader_args = dict(collate_fn=collate_fn, num_workers=workers, pin_memory=pin,
                           persistent_workers=workers > 0)
        # The loader's own draws (worker seeds, one per epoch) come from a generator seeded per
        # epoch, not from the global stream, so that a checkpoint's random state is exactly what
        # the augmentations of the next batch will see, also when resuming mid-epoch.
        self.loader_rng = torch.Generator()
        self.train_loader = DataLoader(train_set, batch_size=per_rank_batch, sampler=self.sampler,
                                       generator=self.loader_rng,
                                       drop_last=len(self.sampler) >= per_rank_batch * 2, **loader_args)
        self.val_loader = (DataLoader(val_set, batch_size=per_rank_batch, shuffle=False, **loader_args)
                           if val_set is not None and self.is_main else None)

        self.ddp_model = dist_utils.wrap_ddp(self.model, self.device)
        if cfg.compile:  # after DDP, so that DDP's bucketing sees the compiled graph (DDPOptimizer)
            self.ddp_model = torch.compile(self.ddp_model)
        self.optimizer = build_optimizer(self.model, cfg)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.ema = build_ema(self.model, cfg.ema_decay) if cfg.ema else None
        self.steps_per_epoch = max(1, len(self.train_loader))
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.state = TrainState(model=self.model, optimizer=self.optimizer)
        self.history: list[dict[str, Any]] = []
        self.elapsed_before = 0.0  # seconds trained before a resume
        self.best_metric: float | None = None
        self.evals_without_improvement = 0
        self.window = LogWindow()  # steps not yet in a history row
        self._started = time.perf_counter()  # of this session (fit)
        self._start_step = 0

    # ----- public -----------------------------------------------------------------------------
    @property
    def eval_model(self) -> nn.Module:
        """The weights to evaluate and export: the EMA average when enabled."""
        return self.ema.module if self.ema is not None else self.model

    def resume(self) -> bool:
        """Continue from the newest valid checkpoint in run_dir/checkpoints. False if none."""
        if self.run_dir is None:
            return False
        found = load_latest(self.run_dir / "checkpoints", map_location=self.device)
        if found is None:
            return False
        path, ckpt = found
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None and "ema" in ckpt:
            self.ema.load_state_dict(ckpt["ema"])
        self.state.step = int(ckpt["step"])
        self.state.epoch = int(ckpt["epoch"])
        self.state.extra["batch_in_epoch"] = int(ckpt["batch_in_epoch"])
        self.elapsed_before = float(ckpt["elapsed_s"])
        self.history = list(ckpt.get("history", []))
        self.best_metric = ckpt.get("best_metric")
        self.evals_without_improvement = int(ckpt.get("evals_without_improvement", 0))
        self.window = _restored_window(ckpt.get("log_window"), self.is_main)
        per_rank = ckpt.get("rng_cpu_per_rank") or []
        same_world = len(per_rank) == dist_utils.world_size()
        torch.set_rng_state((per_rank[dist_utils.rank()] if same_world else ckpt["rng_cpu"]).cpu())
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.state.step, self.state.epoch,
                 self.state.extra["batch_in_epoch"])
        return True

    def fit(self) -> TrainResult:
        cfg, state = self.cfg, self.state
        self.model.train()
        self._call("on_train_start")
        self._started, self._start_step = time.perf_counter(), state.step
        budget_s = cfg.max_minutes * 60.0
        stopped_by = "epochs"
        metrics: dict[str, Any] = {}
        start_batch = int(state.extra.pop("batch_in_epoch", 0))

        with TrainProgress(enabled=self.is_main) as bar:
            while state.epoch < cfg.epochs and stopped_by == "epochs":
                stopped_by, batches_done = self._train_epoch(bar, start_batch, budget_s)
                start_batch = 0
                epoch_done = stopped_by == "epochs"
                self._log_row(state.epoch + 1, budget_s)  # the epoch's last steps: at least one row per epoch
                if epoch_done:
                    state.epoch += 1
                epoch = state.epoch if epoch_done else state.epoch + 1  # the epoch these weights are in
                self._call("on_epoch_end")
                stopped_by = self._stop_check(stopped_by)  # asked at the epoch's end
                last = stopped_by != "epochs" or state.epoch >= cfg.epochs
                elapsed = self._elapsed()
                if last or state.epoch % max(1, cfg.eval_every) == 0:
                    with bar.paused():  # the evaluation draws its own bar
                        metrics = self._validate(elapsed, epoch)
                    if self._early_stop(metrics) and stopped_by == "epochs":
                        stopped_by = "early-stop"
                    stopped_by = self._stop_check(stopped_by)  # asked after the evaluation
                if last or state.epoch % max(1, cfg.checkpoint_every) == 0 or stopped_by != "epochs":
                    self._checkpoint(0 if epoch_done else batches_done, elapsed)
                self._write_history()

        self._call("on_train_end")
        return TrainResult(state.step, state.epoch, self._elapsed(), self.best_metric, metrics, stopped_by,
                           self.history, state.stop_reason if stopped_by.startswith("callback") else None)

    def _train_epoch(self, bar: TrainProgress, start_batch: int, budget_s: float) -> tuple[str, int]:
        """The steps of one epoch from `start_batch`: returns why it ended ("epochs" when it ran
        through, "time" or "callback..." when stopped) and the batches done."""
        cfg, state = self.cfg, self.state
        self.sampler.set_epoch(state.epoch, start_batch * self.train_loader.batch_size)
        self.loader_rng.manual_seed((cfg.seed * 100_003 + state.epoch) * 1009 + dist_utils.rank())
        images_seen, epoch_start = 0, time.perf_counter()
        batches_done = start_batch
        self.window.restart_clock()
        for batch_index, (images, targets) in enumerate(self.train_loader, start=start_batch):
            elapsed = self._elapsed()
            self._train_step(images, targets, elapsed, budget_s)
            batches_done = batch_index + 1
            self.window.add(state.log, _batch_len(images))
            images_seen += _batch_len(images)
            rate = images_seen * dist_utils.world_size() / max(1e-9, time.perf_counter() - epoch_start)
            eta = self._eta(budget_s)
            bar.update(eta.fraction, progress_text(state.step, self.total_steps, state.epoch + 1, cfg.epochs, eta,
                                                   state.log.get("loss", float("nan")), rate))
            if cfg.log_every and state.step % cfg.log_every == 0:
                self._log_row(state.epoch + 1, budget_s)
            if cfg.checkpoint_every_steps and state.step % cfg.checkpoint_every_steps == 0:
                self._checkpoint(batch_index + 1, elapsed)
            time_up = bool(budget_s) and self._elapsed() >= budget_s
            stop, time_up = dist_utils.any_rank(state.stop, time_up)  # all ranks stop together
            if stop:
                return self._callback_stop(), batches_done
            if time_up:
                return "time", batches_done
        return "epochs", batches_done

    def _stop_check(self, stopped_by: str) -> str:
        """`stopped_by`, or the callback's stop when one asked since the last step (on any rank)."""
        if stopped_by == "epochs" and dist_utils.any_rank(self.state.stop)[0]:
            return self._callback_stop()
        return stopped_by

    def _elapsed(self) -> float:
        """Seconds trained, over every session of this run."""
        return self.elapsed_before + time.perf_counter() - self._started

    def _eta(self, budget_s: float) -> Eta:
        return time_remaining(self.state.step, self.total_steps, self._elapsed(), budget_s,
                              self._start_step, self.elapsed_before)

    def _callback_stop(self) -> str:
        """`stopped_by` for a stop a callback asked for, with the reason it gave on whichever rank asked."""
        reasons = [r for r in dist_utils.all_gather_object(self.state.stop_reason) if r]
        self.state.stop_reason = reasons[0] if reasons else None
        if not self.state.stop_reason:
            return "callback"  # a plain stop (e.g. a step budget of the doctor's short runs): nothing to report
        if self.is_main:
            log.warning("stopping at step %d: %s", self.state.step, self.state.stop_reason)
        return f"callback: {self.state.stop_reason}"

    def _log_row(self, epoch: int, budget_s: float) -> None:
        """A history "train" row of the steps since the last one: scalars averaged over the steps of
        every rank, images/s over all ranks, the current lr. Every rank calls it at the same steps."""
        window = self.window
        if window.steps == 0:  # the same count on every rank (also after a resume, see _restored_window)
            return
        totals = dist_utils.sum_over_ranks({**window.sums, "_count": window.steps, "_images": window.images})
        count, images = int(totals.pop("_count")), int(totals.pop("_images"))
        row: dict[str, Any] = {"epoch": epoch, "step": self.state.step, "split": "train",
                               "elapsed_s": round(self._elapsed(), 2), "lr": self.optimizer.param_groups[0]["lr"],
                               "images_per_s": round(images / max(1e-9, window.elapsed()), 2)}
        row.update({k: v / max(1, count) for k, v in totals.items()})
        self.history.append(row)
        self.window = LogWindow()
        self._write_history()  # readable while the run trains
        if self.is_main:
            parts = "  ".join(f"{k[5:]} {v:.4f}" for k, v in row.items() if k.startswith("loss_"))
            text = progress_text(self.state.step, self.total_steps, epoch, self.cfg.epochs, self._eta(budget_s),
                                 row.get("loss", float("nan")), row["images_per_s"])
            log.info("%s%s  lr %.4g  grad norm %.3g", text, f"  ({parts})" if parts else "", row["lr"],
                     row.get("grad_norm", float("nan")))
        for cb in self.callbacks:
            self._safe(cb, "on_log", self.state, row)

    # ----- one step ---------------------------------------------------------------------------
    def _train_step(self, images: Any, targets: Any, elapsed_s: float, budget_s: float) -> None:
        cfg, state = self.cfg, self.state
        images, targets = _to_device(images, self.device), _to_device(targets, self.device)
        if self.channels_last:
            images = _channels_last(images)
        state.images, state.targets, state.log = images, targets, {}
        factor = lr_factor(state.step, self.total_steps, elapsed_s, budget_s, cfg.warmup_steps, cfg.scheduler)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        self._call("before_step")

        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            losses = self.loss_fn(self.ddp_model, images, targets)
            total = sum(cfg.loss_weights.get(name, 1.0) * value for name, value in losses.items())
        state.losses, state.loss = losses, total
        self._call("after_forward")

        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        if cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params])) if params else torch.zeros(())
        state.grad_norm = float(norm)
        self._call("after_backward")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        state.step += 1

        state.log.update({loss_column(k): float(v.detach()) for k, v in losses.items()})
        state.log["loss"] = float(total.detach())
        state.log["grad_norm"] = state.grad_norm
        self._call("after_step")

    # ----- validation, early stopping, checkpoints ---------------------------------------------
    def _validate(self, elapsed: float, epoch: int) -> dict[str, Any]:
        """Validation losses and the task's metrics on the main rank, printed and kept as a history
        "val" row; every rank receives both (for on_log and on_eval_end)."""
        metrics: dict[str, Any] = {}
        row: dict[str, Any] | None = None
        if self.is_main:
            started = time.perf_counter()
            row = {"epoch": epoch, "step": self.state.step, "split": "val", "elapsed_s": round(elapsed, 2)}
            if self.val_loader is not None:
                row.update(self._val_losses())
            if self.evaluate_fn is not None:
                self.eval_model.eval()
                with torch.no_grad():
                    metrics = self.evaluate_fn(self.eval_model)
                self.model.train()
                row.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
            self.history.append(row)
            log.info("eval  step %d  epoch %d  %s  (%.1fs)", self.state.step, epoch,
                     eval_summary(metrics, self.primary_metric, row.get("loss")), time.perf_counter() - started)
        row, metrics = dist_utils.broadcast_object((row, metrics))
        for cb in self.callbacks:
            self._safe(cb, "on_log", self.state, row)
            self._safe(cb, "on_eval_end", self.state, metrics)
        return metrics

    def _val_losses(self) -> dict[str, float]:
        """Validation losses in train mode (torchvision detectors only return losses then), with
        BatchNorm and dropout held in eval mode so validation does not change the model."""
        model = self.eval_model
        model.train()
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)):
                m.eval()
        sums: dict[str, float] = {}
        n = 0
        with torch.no_grad(), torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                             enabled=self.amp_dtype is not None):
            for images, targets in track(self.val_loader, "validation loss", total=len(self.val_loader)):
                losses = self.loss_fn(model, _to_device(images, self.device), _to_device(targets, self.device))
                total = sum(self.cfg.loss_weights.get(k, 1.0) * v for k, v in losses.items())
                for k, v in losses.items():
                    sums[loss_column(k)] = sums.get(loss_column(k), 0.0) + float(v)
                sums["loss"] = sums.get("loss", 0.0) + float(total)
                n += 1
        self.model.train()
        return {k: v / max(1, n) for k, v in sums.items()}

    def _early_stop(self, metrics: dict[str, Any]) -> bool:
        value = metrics.get(self.primary_metric)
        if not isinstance(value, (int, float)) or math.isnan(value):
            return False
        if self.best_metric is None or value > self.best_metric:
            self.best_metric, self.evals_without_improvement = float(value), 0
            if self.is_main and self.run_dir is not None:
                save_checkpoint(self.run_dir / "checkpoints" / "best", self.state.step,
                                {"model": self.eval_model.state_dict(), "step": self.state.step,
                                 self.primary_metric: float(value)}, keep=1)
            return False
        self.evals_without_improvement += 1
        patience = self.cfg.early_stop_patience
        return patience > 0 and self.evals_without_improvement >= patience

    def _checkpoint(self, batch_in_epoch: int, elapsed: float) -> None:
        if self.run_dir is None:
            return
        # Every rank's random state (augmentation draws differ per rank), so a resumed
        # distributed run continues each rank's stream where it stopped.
        rng_per_rank = dist_utils.all_gather_object(torch.get_rng_state())
        # The steps not yet in a history row, so that the resumed run writes the row this one would have.
        window = dist_utils.sum_over_ranks({**self.window.sums, "_images": self.window.images})
        if not self.is_main:
            return
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.state.step,
            "epoch": self.state.epoch,
            "batch_in_epoch": batch_in_epoch,
            "elapsed_s": elapsed,
            "history": self.history,
            "best_metric": self.best_metric,
            "evals_without_improvement": self.evals_without_improvement,
            "rng_cpu": rng_per_rank[0],
            "rng_cpu_per_rank": rng_per_rank,
            "log_window": {"images": int(window.pop("_images")), "sums": window, "steps": self.window.steps,
                           "seconds": self.window.elapsed()},
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        save_checkpoint(self.run_dir / "checkpoints", self.state.step, state)

    def _write_history(self) -> None:
        if not self.is_main or self.run_dir is None or not self.history:
            return

        columns: list[str] = []
        for row in self.history:
            columns += [k for k in row if k not in columns]

        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.history)
        write_bytes_atomic(self.run_dir / "history.csv", out.getvalue().encode())

    # ----- callbacks ----------------------------------------------------------------------------
    def _call(self, hook: str) -> None:
        for cb in self.callbacks:
            self._safe(cb, hook, self.state)

    def _safe(self, cb: Callback, hook: str, *args: Any) -> None:
        method = getattr(cb, hook, None)  # a callback that does not subclass Callback may lack a hook
        if method is None:
            return
        try:
            method(*args)
        except Exception as exc:  # a failing check must never stop the run
            errors = self.state.extra.setdefault("callback_errors", [])
            errors.append(f"{type(cb).__name__}.{hook}: {exc.__class__.__name__}: {exc}")
            log.warning("callback %s.%s failed: %s", type(cb).__name__, hook, exc)


def eval_summary(metrics: dict[str, Any], primary: str, val_loss: float | None = None) -> str:
    """One evaluation in a line: the primary metric, then the report's key metrics, then the validation loss."""
    keys = [primary, *(k for k in KEY_METRICS if k != primary)]
    shown = [f"{KEY_METRICS.get(k, k)} {metrics[k]:.4f}" for k in keys if _number(metrics.get(k))]
    parts = shown[:EVAL_LINE_METRICS] + ([f"val loss {val_loss:.4f}"] if _number(val_loss) else [])
    return "  ".join(parts) or "no metrics"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _restored_window(saved: dict[str, Any] | None, is_main: bool) -> LogWindow:
    """A checkpoint's unlogged steps: their count on every rank (the ranks must agree when to write a
    row), their sums over ranks on the main rank only (the row sums over ranks again)."""
    if not saved:
        return LogWindow()
    steps, seconds = int(saved["steps"]), float(saved["seconds"])
    if not is_main:
        return LogWindow(steps=steps, seconds=seconds)
    return LogWindow({k: float(v) for k, v in saved["sums"].items()}, steps, int(saved["images"]), seconds)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """No weight decay on norm layers and biases (as torchvision's reference recipes do)."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_norm = isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm))
            (no_decay if is_norm or name == "bias" else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise ValueError(f"train.optimizer={cfg.optimizer!r}: expected sgd or adamw")


def build_ema(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _batch_len(images: Any) -> int:
    return len(images) if isinstance(images, (list, tuple)) else int(images.shape[0])


def _channels_last(images: Any) -> Any:
    """Batched 4-D image tensors in NHWC; lists of images are batched inside the model and take
    the layout of its first convolution's weights."""
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        return images.contiguous(memory_format=torch.channels_last)
    return images


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj
