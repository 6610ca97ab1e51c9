"""`fit`, the one training loop. Its epoch reads on one screen: train (`_train_epoch`, one
`_step` per batch), evaluate (`_evaluate_epoch`), select the best weights and count towards early
stopping (`_Tally.add`), hand the resumable state to the caller (`_hand_over`), stop or go on."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from compresskit import distributed
from compresskit.ema import EMA
from compresskit.progress import Progress
from compresskit.train.config import TrainConfig, lr_factor, make_optimizer
from compresskit.train.inference import evaluate
from compresskit.train.precision import Precision, as_input, resolve_precision
from compresskit.train.state import FitResult, TrainingState, capture_rng, restore_rng

if TYPE_CHECKING:
    from compresskit.compress.distill import Distillation

HISTORY_COLUMNS = (
    "epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "seconds",
)  # fmt: skip
"""A history row's columns; test_loss/test_acc are NaN unless `fit` was given a ``test_loader``."""


def fit(
    model: nn.Module,
    train_loader,
    val_loader,
    cfg: TrainConfig,
    *,
    progress: Progress | None = None,
    parameters: Iterable[nn.Parameter] | None = None,
    resume: TrainingState | None = None,
    on_epoch: Callable[[TrainingState], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    test_loader=None,
    distill: Distillation | None = None,
) -> FitResult:
    """Train `model` (already on its device) for up to `cfg.epochs` epochs.

    `val_loader` may be None: then nothing is validated and the last epoch counts as best.
    `test_loader`, when given, is evaluated after every epoch into the history's ``test_loss`` /
    ``test_acc`` (for learning curves only: selection and early stopping never look at it; its
    time is not in the epoch's ``seconds``).
    `parameters` restricts what the optimizer updates (default: all that require grad).
    `on_epoch` sees the `TrainingState` after every finished epoch (a run directory saves it);
    `resume` continues from such a state, with `model` already holding its weights, and gives the
    same epochs, bit for bit on CPU, as a run that never stopped. An interrupt (Ctrl-C) propagates:
    the last state handed to `on_epoch` is the one to resume from. `on_step(step, loss)` sees the
    training loss (nats) after every optimizer step, numbered from 1 across epochs.

    `cfg.ema`: an exponential moving average of the weights (`compresskit.ema.EMA`), updated after
    every optimizer step; validation, test evaluation, best-epoch selection and the best weights
    use the average, training goes on with the raw weights (`FitResult.averaged`: the last
    epoch's average). `distill`: the training loss is `Distillation.loss` against its teacher
    instead of plain cross-entropy (label smoothing still applies to the hard term).

    Under `torch.distributed` (`distributed.world_size()` > 1; every rank calls `fit` with its own
    sharded loaders, see `data.Loader`) the model trains wrapped in DistributedDataParallel
    (`cfg.sync_bn`: with SyncBatchNorm, turned back into plain batch norm on return), each rank's
    loss weighted by its share of the global batch so the averaged gradient is the global batch's;
    the epoch's training loss and accuracy are summed over ranks, rank 0's batch-norm statistics
    are copied to every rank before each validation, and `on_epoch` sees the same state on every
    rank (with every rank's torch random state, so a resumed run continues each rank's dropout).
    """
    cfg.validate(has_validation=val_loader is not None)
    tr = _setup(model, train_loader, val_loader, test_loader, cfg, progress or Progress(enabled=False),
                parameters, distill, on_epoch, on_step)  # fmt: skip
    try:
        tally = _Tally.start(tr, resume)  # the resumed optimizer, schedule and random states
        tr.ema = _start_ema(model, cfg, resume, tr.device)
        stop_reason = tally.stop_reason()  # not "" when the resumed run had already stopped early
        tally.started = time.perf_counter()
        for epoch in range(cfg.epochs + 1 if stop_reason else tally.epoch + 1, cfg.epochs + 1):
            t0 = time.perf_counter()
            row = _train_epoch(tr, epoch)
            with tr.ema.swapped_in(model) if tr.ema is not None else nullcontext(model):
                _evaluate_epoch(tr, row, since=t0)
                tally.add(model, row)
            tr.progress.log(format_epoch(row, cfg.epochs))
            _hand_over(tr, tally)
            stop_reason = tally.stop_reason()
            if stop_reason:
                break
        return tally.result(tr, stop_reason or "epochs")
    finally:
        if tr.world > 1 and cfg.sync_bn:
            distributed.from_sync_batchnorm(model)


@dataclass
class _Training:
    """What every epoch of one `fit` call works with. `step_fn` is `model` as it trains: wrapped in
    DistributedDataParallel under torch.distributed, compiled with ``cfg.compile``.
    `global_sizes`: under torch.distributed, the global batch size of every step of an epoch."""

    cfg: TrainConfig
    model: nn.Module
    step_fn: Callable[[torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    train_loader: Iterable
    val_loader: Iterable | None
    test_loader: Iterable | None
    device: torch.device
    precision: Precision
    progress: Progress
    distill: Distillation | None
    on_epoch: Callable[[TrainingState], None] | None
    on_step: Callable[[int, float], None] | None
    world: int
    global_sizes: list[int] | None
    ema: EMA | None = None


def _setup(
    model: nn.Module,
    train_loader,
    val_loader,
    test_loader,
    cfg: TrainConfig,
    progress: Progress,
    parameters: Iterable[nn.Parameter] | None,
    distill: Distillation | None,
    on_epoch: Callable[[TrainingState], None] | None,
    on_step: Callable[[int, float], None] | None,
) -> _Training:
    """The model in its precision's memory format, the seeded dropout generator, the optimizer and
    its schedule, and the module that trains (DDP-wrapped, compiled as `cfg` asks)."""
    device = next(model.parameters()).device
    precision = resolve_precision(cfg.precision, device)
    if precision.channels_last:
        model.to(memory_format=torch.channels_last)
    if distill is not None:
        distill.prepare(channels_last=precision.channels_last)
    world, rank = distributed.world_size(), distributed.rank()
    torch.manual_seed(cfg.seed + rank)  # dropout masks, independent per rank
    optimizer = make_optimizer(parameters if parameters is not None else model.parameters(), cfg)
    steps_per_epoch = max(len(train_loader), 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(cfg, step, steps_per_epoch)
    )
    train_module: nn.Module = model
    global_sizes: list[int] | None = None
    if world > 1:
        if cfg.sync_bn:
            distributed.to_sync_batchnorm(model)
        train_module = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
        global_sizes = train_loader.global_batch_sizes()
    step_fn = torch.compile(train_module) if cfg.compile else train_module
    return _Training(cfg, model, step_fn, optimizer, schedule, train_loader, val_loader, test_loader, device,
                     precision, progress, distill, on_epoch, on_step, world, global_sizes)  # fmt: skip


def _train_epoch(tr: _Training, epoch: int) -> dict:
    """One pass over the training loader; the epoch's history row with its learning rate and
    training loss (nats) and accuracy (fraction), validation and test columns still NaN."""
    lr = tr.optimizer.param_groups[0]["lr"]
    tr.model.train()
    loss_sum = torch.zeros((), device=tr.device)
    correct = torch.zeros((), device=tr.device)
    seen = 0
    with tr.progress.task(f"epoch {epoch}/{tr.cfg.epochs}", total=len(tr.train_loader)) as advance:
        for i, (x, y) in enumerate(tr.train_loader):
            loss, out = _step(tr, i, x, y)
            loss_sum += loss.detach() * len(y)
            correct += (out.detach().argmax(1) == y).sum()
            seen += len(y)
            advance()
    if tr.world > 1:
        loss_sum, correct, seen = _sum_over_ranks(tr, loss_sum, correct, seen)
    return {
        "epoch": epoch,
        "lr": lr,
        "train_loss": (loss_sum / max(seen, 1)).item(),
        "train_acc": (correct / max(seen, 1)).item(),
        "val_loss": float("nan"),
        "val_acc": float("nan"),
        "test_loss": float("nan"),
        "test_acc": float("nan"),
    }


def _step(tr: _Training, i: int, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on batch `i` of the epoch (images x B×C×H×W, labels y B); returns the
    loss (nats, 0-d) and the logits B×classes."""
    with tr.precision.autocast(tr.device):
        x = as_input(x, tr.precision)
        out = tr.step_fn(x)
        if tr.distill is None:
            loss = F.cross_entropy(out, y, label_smoothing=tr.cfg.label_smoothing)
        else:
            loss = tr.distill.loss(out, x, y, label_smoothing=tr.cfg.label_smoothing)
    tr.optimizer.zero_grad(set_to_none=True)
    if tr.global_sizes is None:
        loss.backward()
    else:  # DDP averages over ranks; the global batch's mean weights ranks by their share
        (loss * (len(y) * tr.world / tr.global_sizes[i])).backward()
    tr.optimizer.step()
    tr.schedule.step()
    if tr.ema is not None:
        tr.ema.update(tr.model)
    if tr.on_step is not None:
        tr.on_step(tr.schedule.last_epoch, loss.item())  # LambdaLR counts optimizer steps
    return loss, out


def _sum_over_ranks(
    tr: _Training, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The epoch's loss sum, correct count and image count over every rank; every rank's batch-norm
    statistics (and their averages) made rank 0's. Collectives: every rank calls this."""
    seen_here = torch.tensor(float(seen), dtype=torch.float64, device=tr.device)
    totals = torch.stack([loss_sum.double(), correct.double(), seen_here])
    loss_sum, correct, seen_sum = distributed.all_reduce_sum(totals)
    seen = int(seen_sum.item())
    distributed.broadcast_buffers(tr.model)
    if tr.ema is not None:  # rank 0's averaged statistics too, the ones it evaluates and saves
        tr.ema.load_buffer_averages(distributed.broadcast_object(tr.ema.buffer_averages(tr.model)))
    return loss_sum, correct, seen


def _evaluate_epoch(tr: _Training, row: dict, *, since: float) -> None:
    """Fill `row`'s validation and test columns, and its ``seconds`` (from `since`, a
    `time.perf_counter` reading; the test evaluation is not counted)."""
    if tr.val_loader is not None:
        row["val_loss"], row["val_acc"] = evaluate(tr.model, tr.val_loader, tr.device, precision=tr.precision)
    row["seconds"] = time.perf_counter() - since
    if tr.test_loader is not None:
        row["test_loss"], row["test_acc"] = evaluate(
            tr.model, tr.test_loader, tr.device, precision=tr.precision
        )


@dataclass
class _Tally:
    """What `fit` keeps across epochs: the history, the best weights (CPU) with their epoch and
    score (val_acc; the epoch number without validation; -1 before any), the epochs since the
    patience metric last improved and its best value, the last finished epoch, the seconds spent
    before this call and the `time.perf_counter` reading this call's epochs started at."""

    cfg: TrainConfig
    validated: bool
    history: list[dict]
    best_state: dict[str, torch.Tensor]
    best_epoch: int = 0
    best_score: float = -1.0
    since_best: int = 0
    monitor_best: float | None = None
    epoch: int = 0
    spent: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def start(cls, tr: _Training, resume: TrainingState | None) -> _Tally:
        """A fresh tally, or `resume`'s with the optimizer, schedule and random states put back."""
        validated = tr.val_loader is not None
        if resume is None:
            return cls(tr.cfg, validated, [], _cpu_copy(tr.model))
        tr.optimizer.load_state_dict(resume.optimizer)
        tr.schedule.load_state_dict(resume.schedule)
        _restore_all_rng(resume.rng, tr.train_loader)
        return cls(tr.cfg, validated, [dict(row) for row in resume.history], resume.best_state,
                   resume.best_epoch, resume.best_score, resume.since_best, resume.monitor_best,
                   resume.epoch, resume.seconds)  # fmt: skip

    def add(self, model: nn.Module, row: dict) -> None:
        """Count the evaluated epoch of `row`: keep `model`'s weights if they are the best so far,
        and count it towards patience unless the patience metric improved."""
        score = row["val_acc"] if self.validated else float(row["epoch"])
        if score > self.best_score:
            self.best_score, self.best_epoch = score, row["epoch"]
            self.best_state = _cpu_copy(model)
        self.history.append(row)
        self.epoch = row["epoch"]
        if self.validated and not _improved(self.cfg, row, self.monitor_best):
            self.since_best += 1
        else:
            self.since_best, self.monitor_best = 0, row[self.cfg.patience_metric] if self.validated else None

    def stop_reason(self) -> str:
        """Why training stops after the last epoch ("target", "patience"), or "" to go on."""
        return _should_stop(self.cfg, self.history[-1], self.since_best) if self.history else ""

    def seconds(self) -> float:
        return self.spent + time.perf_counter() - self.started

    def state(self, tr: _Training, rng: dict) -> TrainingState:
        return TrainingState(
            epoch=self.epoch, history=list(self.history), optimizer=tr.optimizer.state_dict(),
            schedule=tr.schedule.state_dict(), best_state=self.best_state, best_epoch=self.best_epoch,
            best_score=self.best_score, since_best=self.since_best, monitor_best=self.monitor_best,
            seconds=self.seconds(), rng=rng, ema=None if tr.ema is None else tr.ema.to_dict(),
        )  # fmt: skip

    def result(self, tr: _Training, stop_reason: str) -> FitResult:
        return FitResult(
            history=self.history,
            best_state=self.best_state,
            best_epoch=self.best_epoch,
            best_val_acc=self.best_score if self.validated and self.best_score >= 0 else None,
            stop_reason=stop_reason,
            seconds=self.seconds(),
            averaged=None if tr.ema is None else tr.ema.weights(tr.model),
        )


def _hand_over(tr: _Training, tally: _Tally) -> None:
    """Give `on_epoch` the state to resume from. The random states are captured on every rank,
    with or without `on_epoch`: under torch.distributed that is a collective."""
    rng = _capture_all_rng(tr.train_loader)
    if tr.on_epoch is not None:
        tr.on_epoch(tally.state(tr, rng))


def _start_ema(
    model: nn.Module, cfg: TrainConfig, resume: TrainingState | None, device: torch.device
) -> EMA | None:
    """The average `cfg.ema` asks for: the resumed one, or one starting at `model`'s weights (also
    when the state resumed from kept none)."""
    if cfg.ema is None:
        return None
    if resume is not None and resume.ema is not None:
        return EMA.from_dict(resume.ema, cfg.ema, device)
    return EMA.start(model, cfg.ema)


def _capture_all_rng(loader) -> dict:
    """`capture_rng`, plus under torch.distributed every rank's torch generator (``ranks``, in rank
    order): the loader's generator is the same on every rank, the dropout generators are not."""
    state = capture_rng(loader)
    if distributed.world_size() > 1:
        state["ranks"] = distributed.gather_objects(state["torch"])
    return state


def _restore_all_rng(state: dict, loader) -> None:
    """Undo `_capture_all_rng` on this rank (its own torch generator when the world size is the
    one the state was captured in)."""
    restore_rng(state, loader)
    ranks = state.get("ranks")
    if ranks is not None and len(ranks) == distributed.world_size():
        torch.set_rng_state(ranks[distributed.rank()])


def _improved(cfg: TrainConfig, row: dict, best: float | None) -> bool:
    """Whether this epoch's `cfg.patience_metric` beats `best` by more than `cfg.min_delta`."""
    value = row[cfg.patience_metric]
    if best is None:
        return True
    if cfg.patience_metric == "val_loss":
        return value < best - cfg.min_delta
    return value > best + cfg.min_delta


def _should_stop(cfg: TrainConfig, row: dict, since_best: int) -> str:
    """Why training stops after the epoch of `row` ("target", "patience"), or "" to go on."""
    if cfg.target_accuracy is not None and row["val_acc"] >= cfg.target_accuracy:
        return "target"
    if cfg.patience is not None and since_best >= cfg.patience:
        return "patience"
    return ""


def _cpu_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def format_epoch(row: dict, epochs: int) -> str:
    line = (
        f"epoch {row['epoch']:>3}/{epochs}  lr {row['lr']:.4f}  "
        f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}"
    )
    if not math.isnan(row["val_acc"]):
        line += f"  val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}"
    if not math.isnan(row.get("test_acc", float("nan"))):
        line += f"  test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f}"
    return line + f"  {row['seconds']:.1f}s"
