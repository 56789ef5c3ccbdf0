"""The training loop: read it top to bottom and you see the whole run.

Per epoch: train steps (regularize the batch on device: augment, soft targets, normalize ->
autocast forward -> task loss (class-weighted) -> backward -> clip -> decoupled weight decay +
optimizer step -> schedule), validation, history row, checkpoints (last every epoch, best on
improvement), early stopping, and the budget guard that re-plans the schedule from the measured
epoch times so it anneals and ends on time. The guard plans in optimizer steps, so the last epoch
may be partial: whole epochs alone would leave up to an epoch of the budget unused (on a 9-epoch
run, a tenth of it).

The run returns its final weights (``optimization.keep: last``) or its best validated ones
(``best``). Why the final ones by default: a cosine schedule anneals to its end, and the best of
many noisy validation readings is as much the luckiest as the best. On 100 validation images an
epoch's accuracy spreads by about 3.5 points; picking the highest reading once chose a student's
first, unannealed epoch, 1.8 test points below its last.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import statistics
import time
import warnings
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.batches import Normalizer
from ..errors import ConfigError, VisionDojoError
from ..plan import OptimizationParams, Plan
from ..tasks import Task
from . import checkpoint
from .evaluate import Evaluation, evaluate
from .progress import TrainingProgress
from .distributed import rank_seed
from .runtime import Runtime
from .epoch import EpochResult, EpochTotals, Pause, train_one_epoch
from .rollback import GoodStates
from .interrupt import Interrupted, stop_on_signals
from ..optimize.optimizers import build_optimizer
from ..optimize.batchnorm import restore_bn_momentum, set_bn_momentum, synchronized_batchnorm
from ..optimize.schedules import PLATEAU_FACTOR, build_scheduler, schedule_factor
from ..optimize.gradient_noise import RankNoiseScale
from ..regularize.batch import BatchRegularizer, loss_settings
from ..regularize.dropout import apply_dropout
from ..regularize.weight_decay import DecoupledWeightDecay

LAST = "last.safetensors"
BEST = "best.safetensors"
MAX_LR_CUTS = 2
"""``plateau`` schedule: learning-rate cuts before a plateau stops the run."""
GUARD_WINDOW = 5
GROW_BELOW = 0.8
FILL = 0.95
REPORT_S = 6.0
"""Seconds kept at the end of a budget for writing the weights and the report (its plots took 2.2-4.3 s
after 600 s Fashion-MNIST runs on 2 CPU cores; with 3 s kept, a run that filled its budget to the
step overran it by 1.2 s)."""
KEEP = ("last", "best")
CHECKPOINT_EVERY_S = 600.0
"""A user's run checkpoints mid-epoch at least this often (seconds): a kill or preemption loses at
most ten minutes of a long epoch, for the cost of one save per ten minutes."""


class Decision(Enum):
    """What the driver does after a validated epoch."""

    CONTINUE = "continue"
    CUT_LR = "cut the learning rate"
    STOP = "stop early"


class Stop(Enum):
    """Why a run ended."""

    COMPLETED = "completed"
    BUDGET_CUT = "budget cut"
    BUDGET_SHORTENED = "budget shortened"
    EARLY_STOPPING = "early stopping"

    def describe(self, monitor: str, patience: int | None) -> str:
        """The sentence the run's metrics and report show."""
        return {
            Stop.COMPLETED: "completed the planned epochs",
            Stop.BUDGET_CUT: "the time budget ran out mid-epoch",
            Stop.BUDGET_SHORTENED: "the time budget: the schedule was shortened to end on time",
            Stop.EARLY_STOPPING: f"early stopping: no val_{monitor} gain in {patience} epochs",
        }[self]


@dataclass
class LoopState:
    """Everything besides model/optimizer/scheduler that an exact resume needs."""

    epoch: int = 0
    """Next epoch to run."""
    step: int = 0
    best_metric: float = -math.inf
    best_epoch: int = -1
    epochs_since_best: int = 0
    elapsed_s: float = 0.0
    partial: dict[str, Any] | None = None
    """The current epoch's totals so far (``EpochTotals``) when checkpointed mid-epoch, else None."""
    planned_epochs: int = 0
    """Epochs the run will train, the last one possibly partial."""
    planned_steps: int = 0
    """Optimizer steps the schedule is sized for (0 in checkpoints that predate it: whole epochs)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cycle_s: list[float] = field(default_factory=list)
    """Seconds of the last few full epochs, for the budget guard."""
    overhead_s: list[float] = field(default_factory=list)
    """Their seconds outside the training steps (validation, checkpoints), for the budget guard."""
    replans: int = 0
    lr_cuts: int = 0
    rollbacks: int = 0
    """Times the weights went back to a kept copy after non-finite gradients (``engine.rollback``)."""
    streak: int = 0
    """Skipped steps in a row that the last epoch ended on: three in a row roll back across epochs too."""
    stopped: str | None = None
    """``Stop`` name once the loop ended early (budget cut, early stopping): a resumed run that had
    ended trains nothing more (before this, it trained the cut epoch, or past the early stop, again)."""
    micro_batches: int = 1
    """Parts each batch trains in since an out-of-memory error (the global batch stays)."""
    world_size: int = 1
    """Processes that trained it (torchrun): resumed by another number, the batches split otherwise."""


@dataclass
class LoopResult:
    history: list[dict[str, Any]]
    kept_epoch: int
    """The epoch (1-based) whose weights the model holds on return; 0 when none was validated."""
    kept_metric: float
    """Its validation metric (-inf when no epoch was validated)."""
    best_epoch: int
    """The epoch with the best validation metric."""
    stop: Stop
    stop_reason: str
    """``stop`` in words."""
    notes: list[str]
    last_evaluation: Evaluation | None = None
    """With ``validate_each_epoch=False``: the one validation pass, with every score (paired tests
    compare proxies image by image)."""


def run_training(model: nn.Module, task: Task, plan: Plan, train_batches: Any, val_batches: Any,
                 runtime: Runtime, normalizer: Normalizer, checkpoint_dir: Path, *,
                 deadline: float | None = None, final_eval_ratio: float = 1.0, resume: bool = False,
                 progress: TrainingProgress | None = None, validate_each_epoch: bool = True,
                 final_eval_s: float = 0.0, interruptible: bool = False,
                 checkpoint_every_s: float | None = None) -> LoopResult:
    """Train ``model`` in place per ``plan``; on return it holds the weights ``optimization.keep`` names.

    With a ``deadline`` (a ``time.perf_counter()`` value), the loop keeps back the time the final
    evaluation needs: the last validation pass times ``final_eval_ratio`` (the final evaluation
    covers validation and test data) plus ``REPORT_S``; before the first validation, the planner's
    estimate of that evaluation (``final_eval_s``), so an epoch cut short by the budget still leaves
    the final evaluation its time.

    ``validate_each_epoch=False`` validates and checkpoints after the last epoch only: for short
    trainings that keep their final weights and never stop early (the policy search's proxies),
    where the other passes would be a quarter of the time and inform nothing. That one pass
    collects every score (``LoopResult.last_evaluation``).

    ``interruptible`` (the user's run, not a probe): SIGINT and SIGTERM stop training at the next
    step boundary, checkpoint the exact position and raise ``Interrupted``. ``checkpoint_every_s``
    also checkpoints mid-epoch that often, so a kill loses at most that much of a long epoch.
    """
    progress = progress or TrainingProgress(False)
    opt, reg = plan.optimization, plan.regularization
    if opt.keep not in KEEP:
        raise ConfigError(f"optimization.keep = {opt.keep!r}; choose one of {', '.join(KEEP)}")
    if not validate_each_epoch and (opt.keep != "last" or opt.early_stopping_patience is not None or deadline):
        raise ValueError("validate_each_epoch=False needs keep 'last', no early stopping and no deadline: "
                         "each of them acts on per-epoch validation")
    steps_per_epoch = len(train_batches)
    seed = rank_seed(plan.seed, runtime.rank)  # each rank its own augmentation and dropout draws
    regularize = BatchRegularizer(reg, task, normalizer, runtime.device, seed=seed)
    settings = loss_settings(reg, plan.data.class_counts, runtime.device)
    optimizer = build_optimizer(model, opt)
    decay = DecoupledWeightDecay(optimizer, reg.weight_decay, adaptive=reg.adaptive_decay)
    scheduler = build_scheduler(optimizer, opt, steps_per_epoch)
    state = LoopState(planned_epochs=opt.epochs)
    if runtime.is_main:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    resumed_draws = None  # the regularizer's generator state, when resuming mid-epoch
    if resume:
        state, resumed_draws = _restore(checkpoint_dir / LAST, model, optimizer, scheduler, runtime, decay)
        if state.world_size != runtime.world_size:
            warnings.warn(f"the checkpoint was written by {state.world_size} process(es) and resumes in "
                          f"{runtime.world_size}: the global batch stays, but its shares (and BatchNorm's "
                          "per-process statistics, and the summation order of the gradients) change, so the "
                          "run will not reproduce an uninterrupted one exactly")
            state.notes.append(f"resumed in {runtime.world_size} process(es) from a checkpoint of {state.world_size}")
    else:
        torch.manual_seed(seed)
    state.world_size = runtime.world_size
    state.planned_steps = state.planned_steps or state.planned_epochs * steps_per_epoch
    # Both are undone below, so the returned model is the user's architecture with its own settings.
    dropout = apply_dropout(model, reg.dropout, reg.stochastic_depth)
    try:
        user_bn_momentum = set_bn_momentum(model, opt.bn_momentum)
    except BaseException:
        dropout.restore()
        raise
    clock_start = time.perf_counter() - state.elapsed_s
    unsync: Callable[[], None] = lambda: None
    signals = contextlib.ExitStack()

    def save() -> None:
        # Every rank's random streams (dropout, augmentation draws), for an exact resume.
        draws = {**checkpoint.rng_state(), "regularizer": regularize.generator.get_state()}
        rng = runtime.all_gather_object(draws)
        if runtime.is_main:
            _save_last(checkpoint_dir, model, optimizer, scheduler, state, runtime.scaler, decay, rng)

    try:
        request = signals.enter_context(stop_on_signals()) if interruptible else None
        trainer, noise, unsync = _data_parallel(model, optimizer, plan, runtime, state)
        stop = Stop[state.stopped] if state.stopped else Stop.COMPLETED  # resumed after it had ended
        cut_off = stop is Stop.BUDGET_CUT
        reserve_s = REPORT_S + final_eval_s
        cycle_start = time.perf_counter()
        good = GoodStates(model, optimizer, scheduler, steps_per_epoch)  # what a roll-back restores
        while True:
            if deadline is not None:
                # One clock for the job: rank 0's epoch times and time left, so every rank re-plans alike.
                remaining_s = deadline - reserve_s - time.perf_counter()
                state.cycle_s, state.overhead_s, remaining_s = runtime.broadcast(
                    (state.cycle_s, state.overhead_s, remaining_s))
            if deadline is not None and state.cycle_s and state.overhead_s:
                # Pinned epochs are a ceiling; planned ones may grow when the run is faster than measured.
                ceiling = opt.epochs if plan.is_pinned("optimization.epochs") else None
                _budget_guard(state, scheduler, steps_per_epoch, remaining_s,
                              ceiling=None if ceiling is None else ceiling * steps_per_epoch)
            if state.stopped or state.epoch >= state.planned_epochs:
                break
            epoch = state.epoch
            model.train()
            # Checkpointed mid-epoch: its totals so far; else a fresh epoch (with the skip streak the
            # last one ended on).
            done = EpochTotals(**state.partial) if state.partial else EpochTotals(streak=state.streak)
            regularize.set_epoch(epoch)
            if state.partial and resumed_draws is not None:
                regularize.generator.set_state(resumed_draws)
            resumed_draws = None
            max_steps = min(steps_per_epoch, state.planned_steps - state.step)
            progress.start_epoch(epoch, state.planned_epochs, max_steps)
            good.start_epoch(epoch, state.step)
            if not good.kept:  # the run's (or the resumed run's) first state; later ones every good.every steps
                good.keep(done.steps)
            while True:  # the epoch, in pieces when it pauses for a checkpoint or a roll-back
                train_batches.set_epoch(epoch, done.steps)
                trained = train_one_epoch(
                    trainer, task, optimizer, scheduler, train_batches, regularize, runtime, epoch=epoch,
                    max_steps=max_steps, grad_clip_norm=opt.grad_clip_norm, loss_settings=settings,
                    stop_time=None if deadline is None else deadline - reserve_s,
                    checkpoint_time=None if checkpoint_every_s is None else time.perf_counter() + checkpoint_every_s,
                    stop=request, done=done, micro_batches=state.micro_batches, good=good, progress=progress)
                if trained.micro_batches != state.micro_batches:
                    state.notes.append(f"epoch {epoch + 1}: out of memory; each batch of {opt.batch_size} now trains "
                                       f"in {trained.micro_batches} micro-batches (gradients accumulated, the same "
                                       "global batch and learning rate)")
                    warnings.warn(state.notes[-1])
                    state.micro_batches = trained.micro_batches
                if trained.pause is Pause.ROLLBACK:
                    done = dataclasses.replace(trained.totals, streak=0)
                    state.notes.append(good.roll_back(done.steps, state.rollbacks))
                    state.rollbacks += 1
                    continue
                if trained.pause not in (Pause.CHECKPOINT, Pause.SIGNAL):
                    break
                done = trained.totals
                state.partial = dataclasses.asdict(done)
                state.elapsed_s = time.perf_counter() - clock_start
                save()
                if trained.pause is Pause.SIGNAL:
                    raise _interrupted(trained.signal, checkpoint_dir, epoch, done.steps, max_steps)
            state.partial, state.streak = None, trained.totals.streak
            state.step += trained.steps
            runtime.sync_buffers(model)  # every rank then validates, checkpoints and returns the same model
            cut_off = trained.cut_off
            if cut_off:  # no time for validation: the final evaluation comes next
                progress.end_epoch(f"epoch {epoch + 1} cut short by the time budget", last=True)
                stop = Stop.BUDGET_CUT
                state.stopped = stop.name
                state.notes.append(f"epoch {epoch + 1} was cut short by the time budget")
                state.elapsed_s = time.perf_counter() - clock_start
                save()
                break
            row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "train_loss": round(trained.mean_loss, 6),
                   **{f"train_{name}": round(value, 6) for name, value in trained.mean_terms.items()}}
            if trained.totals.skipped:
                row["skipped_steps"] = trained.totals.skipped
                state.notes.append(f"epoch {epoch + 1}: {trained.totals.skipped} step(s) skipped for non-finite "
                                   "gradients")
            if noise is not None:
                row["noise_scale"] = round(noise.end_epoch(), 2)
            timing = {"train_s": round(trained.seconds, 3), "epoch_s": round(trained.seconds, 3),
                      "train_images_per_s": round(trained.images_per_s, 1)}
            if not validate_each_epoch and epoch + 1 < state.planned_epochs:
                state.history.append({**row, **timing})
                state.epoch += 1
                progress.end_epoch(f"epoch {epoch + 1}/{state.planned_epochs}  train_loss {trained.mean_loss:.4f}")
                continue
            val_start = time.perf_counter()
            evaluation = evaluate(model, task, val_batches, normalizer, runtime, collect=not validate_each_epoch)
            # The slowest validation so far: a steady reserve keeps the budget guard from chasing noise.
            reserve_s = max(reserve_s, (time.perf_counter() - val_start) * final_eval_ratio + REPORT_S)
            monitored = float(evaluation.metrics[plan.monitor])  # type: ignore[arg-type]
            improved = monitored > state.best_metric
            if improved:
                state.best_metric, state.best_epoch, state.epochs_since_best = monitored, epoch, 0
                if runtime.is_main:
                    checkpoint.save_weights(model, checkpoint_dir / BEST)
            else:
                state.epochs_since_best += 1
            epoch_s = trained.seconds + (time.perf_counter() - val_start)
            scalars = {f"val_{k}": v for k, v in evaluation.metrics.items() if not isinstance(v, list)}
            state.history.append({**row, **scalars, **timing, "epoch_s": round(epoch_s, 3)})
            state.epoch += 1
            state.elapsed_s = time.perf_counter() - clock_start
            progress.end_epoch(_epoch_line(epoch, state, trained, scalars, plan.monitor, monitored, improved, epoch_s),
                               last=state.epoch >= state.planned_epochs)
            decision = _after_validation(state, opt)
            if decision is Decision.CUT_LR:
                state.lr_cuts += 1
                state.epochs_since_best = 0
                schedule_factor(scheduler).scale *= PLATEAU_FACTOR
                state.notes.append(f"after epoch {epoch + 1}: validation plateau, learning rate x{PLATEAU_FACTOR:g}")
            if decision is Decision.STOP:
                state.stopped = Stop.EARLY_STOPPING.name
            save()
            if decision is Decision.STOP:
                stop = Stop.EARLY_STOPPING
                break
            now = time.perf_counter()
            if trained.steps == steps_per_epoch:  # the guard's times come from full epochs
                state.cycle_s = [*state.cycle_s[-(GUARD_WINDOW - 1):], now - cycle_start]
                state.overhead_s = [*state.overhead_s[-(GUARD_WINDOW - 1):], now - cycle_start - trained.seconds]
            cycle_start = now
        if stop is Stop.COMPLETED and state.planned_steps < opt.epochs * steps_per_epoch:
            stop = Stop.BUDGET_SHORTENED
        if state.replans:
            state.notes.append(f"the budget guard re-planned the schedule {state.replans} time(s) from the measured "
                               f"epoch times: {opt.epochs} -> {state.planned_steps / steps_per_epoch:.2f} epochs")
    finally:
        signals.close()
        unsync()
        restore_bn_momentum(model, user_bn_momentum)
        dropout.restore()
    notes = [*dropout.describe(), *state.notes]
    if reg.adaptive_decay and decay.scales:
        spread = decay.summary()
        notes.append(f"adaptive weight decay: per-tensor multipliers min {spread['min']:.2f}, "
                     f"median {spread['median']:.2f}, max {spread['max']:.2f} at the end")
    best = checkpoint_dir / BEST
    last_validated = bool(state.history) and not cut_off
    if opt.keep == "last" and last_validated and stop is not Stop.EARLY_STOPPING:
        kept_epoch, kept_metric = state.epoch, float(state.history[-1][f"val_{plan.monitor}"])
    else:
        kept_epoch, kept_metric = state.best_epoch + 1, state.best_metric
        runtime.barrier()  # the main process wrote it
        if best.exists():
            checkpoint.load_weights(model, best, runtime.device)
    return LoopResult(state.history, kept_epoch, kept_metric, state.best_epoch + 1, stop,
                      stop.describe(plan.monitor, opt.early_stopping_patience), notes,
                      evaluation if not validate_each_epoch and last_validated else None)


def _interrupted(signal_number: int, checkpoint_dir: Path, epoch: int, step: int, steps: int) -> Interrupted:
    name = signal.Signals(signal_number).name
    run_dir = checkpoint_dir.parent
    return Interrupted(f"stopped by {name} in epoch {epoch + 1} after step {step} of {steps}; the run is "
                       f"checkpointed in {checkpoint_dir / LAST}. Continue it with resume=True (CLI: --resume "
                       f"--out {run_dir})", signal_number, str(run_dir))


def _load_last(path: Path) -> dict[str, Any]:
    """The last checkpoint, or the one before it when the last is damaged or missing (a kill
    between the two renames of a save leaves only the previous one)."""
    before = checkpoint.previous(path)
    if not path.exists() and not before.exists():
        raise VisionDojoError(f"{path}: no checkpoint to resume from; start the run without --resume")
    try:
        return checkpoint.load_state(path if path.exists() else before)
    except checkpoint.DamagedCheckpoint as damaged:
        if not path.exists() or not before.exists():
            raise VisionDojoError(f"{damaged}. No earlier checkpoint is kept; start the run again without "
                                  "--resume (in a new run folder, or with --overwrite)") from None
        saved = checkpoint.load_state(before)
        warnings.warn(f"{damaged}; resuming from the checkpoint before it ({before.name}, epoch "
                      f"{saved['loop']['epoch']})")
        return saved


def _data_parallel(model: nn.Module, optimizer: torch.optim.Optimizer, plan: Plan, runtime: Runtime,
                   state: LoopState) -> tuple[nn.Module, RankNoiseScale | None, Callable[[], None]]:
    """What trains: ``model`` itself in one process; under a process group, ``model`` wrapped in
    DDP (gradients averaged over the ranks, each holding its share of the global batch; evaluation
    and checkpoints use the model itself), with the noise-scale hook, and with SyncBatchNorm where
    the plan's rule asks for it (the returned function puts the user's layers back)."""
    if runtime.world_size == 1:
        return model, None, lambda: None
    unsync = (synchronized_batchnorm(model) if plan.runtime.sync_batchnorm and runtime.device.type == "cuda"
              else lambda: None)
    trainer, noise, batch = DistributedDataParallel(model), None, plan.optimization.batch_size
    if batch % runtime.world_size == 0:
        # The gradient noise scale for free: each rank's share against the all-reduced batch.
        noise = RankNoiseScale(batch // runtime.world_size, batch)
        trainer.register_comm_hook(None, noise.hook)
        optimizer.register_step_pre_hook(noise.close_step)
    else:  # weighted shares of different sizes are not the estimator's equal small batches
        uneven = (f"the global batch of {batch} is split over {runtime.world_size} processes in shares one image "
                  "apart, each rank's loss weighted by its share (no noise scale)")
        if uneven not in state.notes:
            state.notes.append(uneven)
    return trainer, noise, unsync


def _after_validation(state: LoopState, opt: OptimizationParams) -> Decision:
    """What a validated epoch means for the run: go on, cut the learning rate (the ``plateau``
    schedule, up to ``MAX_LR_CUTS`` times) or stop early (patience spent)."""
    patience = opt.early_stopping_patience
    if patience is None or state.epochs_since_best < patience:
        return Decision.CONTINUE
    if opt.schedule == "plateau" and state.lr_cuts < MAX_LR_CUTS:
        return Decision.CUT_LR
    return Decision.STOP


def _epoch_line(epoch: int, state: LoopState, trained: EpochResult, scalars: dict[str, Any], monitor: str,
                monitored: float, improved: bool, epoch_s: float) -> str:
    """The progress line of a validated epoch (a task without a validation loss shows none)."""
    loss = f"  val_loss {scalars['val_loss']:.4f}" if "val_loss" in scalars else ""
    return (f"epoch {epoch + 1}/{state.planned_epochs}  train_loss {trained.mean_loss:.4f}{loss}  "
            f"val_{monitor} {monitored:.4f}{'  *' if improved else ''}  {trained.images_per_s:,.0f} img/s  {epoch_s:.1f}s")


def _budget_guard(state: LoopState, scheduler: torch.optim.lr_scheduler.LambdaLR, steps_per_epoch: int,
                  remaining_s: float, *, ceiling: int | None) -> None:
    """Re-plan the steps that fit the time left and resize the schedule so it still anneals on time.

    Times are medians of the last few full epochs, split into training steps and the rest
    (validation, checkpoints), so one epoch slowed by other load on the machine neither cuts the
    run short for good nor stretches it: the plan shrinks when the run falls behind and grows when
    it is ahead (a throughput probe that underestimated the speed), never beyond ``ceiling``
    steps (pinned epochs). The new plan is whole epochs plus a partial last one when its training
    would outlast its own validation pass.
    """
    cycle_s, overhead_s = statistics.median(state.cycle_s), statistics.median(state.overhead_s)
    step_s = max(cycle_s - overhead_s, 1e-9) / steps_per_epoch
    left = max(state.planned_steps - state.step, 0)
    needed_s = left * step_s + math.ceil(left / steps_per_epoch) * overhead_s
    # Hysteresis: act when the plan overruns the time left, or would use under GROW_BELOW of it;
    # then re-plan into FILL of it, so noise in epoch times does not re-plan every epoch.
    at_ceiling = ceiling is not None and state.planned_steps >= ceiling
    if needed_s <= remaining_s and (needed_s >= GROW_BELOW * remaining_s or at_ceiling):
        return
    fill_s = FILL * max(remaining_s, 0.0)
    whole = int(fill_s // cycle_s)
    partial = int((fill_s - whole * cycle_s - overhead_s) // step_s)
    partial = partial if partial * step_s >= overhead_s else 0
    new_total = state.step + whole * steps_per_epoch + min(max(partial, 0), steps_per_epoch - 1)
    if ceiling is not None:
        new_total = min(ceiling, new_total)
    if new_total == state.planned_steps:
        return
    state.replans += 1
    state.planned_steps = new_total
    # The steps left fill epochs from here on (the step count need not be a multiple of an epoch's
    # after a partial one that the guard then extended).
    state.planned_epochs = state.epoch + math.ceil(max(new_total - state.step, 0) / steps_per_epoch)
    schedule_factor(scheduler).resize(max(new_total, state.step + 1))


def _save_last(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LambdaLR, state: LoopState,
               scaler: torch.amp.GradScaler | None, decay: DecoupledWeightDecay, rng: list[dict[str, Any]]) -> None:
    """The last state; ``rng`` holds each rank's random streams, rank 0's first."""
    saved = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng": rng[0], "loop": state.__dict__, "weight_decay": decay.state_dict()}
    if len(rng) > 1:
        saved["rng_ranks"] = rng
    if scaler is not None:
        saved["scaler"] = scaler.state_dict()
    checkpoint.save_state(directory / LAST, saved)


def _restore(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LambdaLR, runtime: Runtime,
             decay: DecoupledWeightDecay) -> tuple[LoopState, torch.Tensor | None]:
    """The checkpoint's state restored in place; returns the loop's state and this rank's
    regularizer generator state (for a checkpoint taken mid-epoch)."""
    saved = _load_last(path)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    ranks = saved.get("rng_ranks", [saved["rng"]])
    own = ranks[runtime.rank] if runtime.rank < len(ranks) else None
    if own is not None:
        checkpoint.set_rng_state(own)
    else:  # more processes than wrote the checkpoint (exactness is lost anyway; the loop warns)
        torch.manual_seed(rank_seed(saved["loop"]["step"], runtime.rank))
    scaler = runtime.scaler
    if scaler is not None and "scaler" in saved:
        scaler.load_state_dict(saved["scaler"])
    if "weight_decay" in saved:
        decay.load_state_dict(saved["weight_decay"])
    return LoopState(**saved["loop"]), None if own is None else own.get("regularizer")
