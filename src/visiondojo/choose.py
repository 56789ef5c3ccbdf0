"""find_params' optimization choices: the meta-learners run in order, each within its share of time.

1. memory ceiling: the largest batch that runs (optimize/memory.py);
2. throughput at a few candidate batches: the smallest batch the hardware runs efficiently;
3. gradient noise scale B_noise (optimize/noise_scale.py); the batch is B_noise clamped to
   [efficient minimum, ceiling] and rounded to a measured candidate;
4. epochs: planned from the measured throughput to fill the budget (cosine schedule, returning the
   last epoch's weights); without a budget, a plateau schedule and early stopping decide (returning
   the best validated epoch);
5. optimizer by regime (optimize/optimizers.py), its weight decay (regularization.weight_decay), warmup length, BN momentum;
6. learning rate from a range test at the chosen batch (optimize/lr_finder.py).

All of it shares META_SHARE of the budget (or NO_BUDGET_META_S without one). Pinned fields
are never changed; a meta-learner whose answer is no longer needed is skipped (the noise scale
when the throughput scan left a single efficient batch). The two probes whose answer has a
fallback, the noise scale (fallback: the smallest efficient batch) and the range test (fallback:
``optimizers.default_lr``), pass the cost gate of ``learning_curve`` first: under a budget on the
run's length each runs only when its expected gain (``PROBE_GAINS``) exceeds what its time would
have bought as training; ``plan.measurements["probe_gates"]`` holds both sides.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict

from .data.batches import Normalizer
from .durations import format_duration
from .launch import launched_world_size
from .engine.loop import REPORT_S
from .engine.runtime import Runtime
from .learning_curve import cost_gate
from .optimize.batchnorm import batchnorm_layers, bn_momentum_for, sync_batchnorm_rule
from .optimize.length import Throughput, epoch_seconds, measure_throughput, plan_epochs
from .optimize.lr_finder import lr_range_test, scale_lr
from .optimize.memory import memory_ceiling
from .optimize.noise_scale import estimate_noise_scale
from .optimize.optimizers import DEFAULT_WEIGHT_DECAY, choose_optimizer, default_lr
from .optimize.probe import Stopwatch
from .optimize.schedules import MAX_WARMUP_SHARE, warmup_steps_for
from .plan import Plan
from .prepare import Prepared

META_SHARE = 0.08
"""Share of the budget all meta-learners together may use (the issue's ceiling is 10%)."""
NO_BUDGET_META_S = 60.0
MAX_BATCH = 4096
MIN_BATCH = 8
MIN_STEPS_PER_EPOCH = 4
CANDIDATES = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
"""Batches the throughput scan may try, from the task's ``first_batch_candidate`` up."""
SCAN_SHARE = 0.25
NOISE_SHARE = 0.2
SPEED_SHARE = 0.1
"""Shares of the meta-learning time; the learning-rate range test gets what is left (at least half)."""
EFFICIENT = 0.9
"""A batch runs efficiently when its images/s reach this share of the best candidate's."""
PAST_PEAK = 0.9
"""The candidate scan stops at the first batch slower than this share of the best so far."""
NOISE_BIG_BATCH = 512
NOISE_MICRO = 8
MIN_MICRO_BATCH = 4
"""Smallest micro-batch the noise scale uses: BatchNorm needs several samples per batch."""
LR_TEST_STEPS = (25, 80)
NO_BUDGET_MAX_EPOCHS = 200
NO_BUDGET_PATIENCE = 6
PROBE_GAINS: dict[str, tuple[float, str]] = {
    "noise scale": (0.0, "none measured: the smallest efficient batch beat its choice on 2 of 2 seeds"),
    "lr range test": (0.095, "over the default learning rate, 3 seeds"),
}
"""Expected relative error reduction of each probe over its fallback, and where the figure comes from:
``bench/probe_value.py`` (Fashion-MNIST, 5,000 images, 8 epochs, 2 CPU cores). The range test removed
9.5% ± 7.6% of the error left by ``default_lr``. The noise scale's batch lost to the smallest
efficient one by 12% ± 11% of the error on the two seeds where they differed (0.5 and 2.6 points):
where a larger batch buys no images/s, it only buys fewer steps; no gain is credited to it."""


def choose_optimization(plan: Plan, prep: Prepared, runtime: Runtime, *, deadline: float | None) -> Throughput:
    """Fill ``plan.optimization`` and its evidence; ``deadline`` is a perf_counter() time or None.

    Returns the throughput measured at the chosen batch (the policy search sizes its proxies
    from it, and the run length is re-planned with it after the search)."""
    clock = Stopwatch()
    allowance = META_SHARE * (deadline - time.perf_counter()) if deadline is not None else NO_BUDGET_META_S
    normalizer = Normalizer(prep.data, runtime.device, plan.runtime.channels_last)
    opt = plan.optimization
    train_size = len(prep.train)
    args = (prep.model, prep.task, prep.train, runtime, normalizer)
    timings: dict[str, float] = {}
    max_batch = max(1, min(MAX_BATCH, max(MIN_BATCH, train_size // MIN_STEPS_PER_EPOCH), train_size))

    # 1-3: batch size.
    b_noise = None
    if not plan.is_pinned("optimization.batch_size"):
        b_noise = _choose_batch(plan, prep, args, allowance, max_batch, timings, deadline)
    world = launched_world_size()
    if world > 1:
        _choose_for_ranks(plan, prep, runtime.device.type, world)
    batch = opt.batch_size
    # The scan takes a few steps per candidate; the run length deserves a steadier figure.
    speed = measure_throughput(*args, opt, batch, seed=plan.seed, warmup_steps=2, max_steps=10,
                               max_seconds=SPEED_SHARE * allowance)
    timings["throughput"] = timings.get("throughput", 0.0) + speed.seconds
    steps_per_epoch = max(1, train_size // batch) if train_size > batch else 1

    # 4: run length.
    if deadline is not None:
        plan_length_for_budget(plan, prep, speed, deadline, allowance - clock.elapsed)
    elif not plan.is_pinned("optimization.epochs"):
        plan.choose("optimization.schedule", "plateau", "no time budget: learning rate cut 5x on each validation "
                    "plateau, early stopping ends the run")
        plan.choose("optimization.epochs", NO_BUDGET_MAX_EPOCHS, "no time budget: an upper bound; early stopping decides")
        plan.choose("optimization.early_stopping_patience", NO_BUDGET_PATIENCE,
                    "no time budget: stop after this many epochs without validation gain at the lowest learning rate")
    else:
        plan.choose("optimization.schedule", "cosine", "epochs pinned: warmup + cosine over them")
    _choose_keep(plan)

    # 5: optimizer, weight decay, warmup, BatchNorm momentum.
    # Without a budget or pinned epochs the length is open (early stopping decides): not "long".
    length_known = deadline is not None or plan.is_pinned("optimization.epochs")
    name, why = choose_optimizer(prep.model, batch, opt.epochs if length_known else None)
    plan.choose("optimization.optimizer", name, why)
    plan.choose("regularization.weight_decay", DEFAULT_WEIGHT_DECAY[opt.optimizer],
                f"default for {opt.optimizer}, decoupled (its own step), not on norm layers or biases")
    warmup, why = warmup_steps_for(opt.optimizer, opt.betas[1], batch, steps_per_epoch)
    capped = min(warmup, int(MAX_WARMUP_SHARE * opt.epochs * steps_per_epoch))
    plan.choose("optimization.warmup_epochs", round(capped / steps_per_epoch, 3),
                f"{why}, capped at {MAX_WARMUP_SHARE:.0%} of the run: {capped} steps")
    if batchnorm_layers(prep.model):
        plan.choose("optimization.bn_momentum", bn_momentum_for(steps_per_epoch),
                    f"{steps_per_epoch} steps per epoch: running statistics average over at most half an epoch")

    # 6: learning rate.
    if not plan.is_pinned("optimization.lr"):
        _choose_lr(plan, prep, args, speed, b_noise, allowance - clock.elapsed, timings, deadline)

    timings = {k: round(v, 2) for k, v in timings.items()}
    total = round(clock.elapsed, 2)
    plan.measurements["meta_seconds"] = {**timings, "total": total}
    share = f" ({total / opt.budget_s:.1%} of the budget)" if opt.budget_s else ""
    plan.evidence["meta_learning"] = f"{total:.1f}s{share}: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
    if deadline is not None and not plan.is_pinned("optimization.epochs"):
        plan_length_for_budget(plan, prep, speed, deadline, 0.0)  # again, with the meta-learners' time spent
    return speed


def _choose_batch(plan: Plan, prep: Prepared, args: tuple, allowance: float, max_batch: int,
                  timings: dict[str, float], deadline: float | None) -> float | None:
    """Memory ceiling, throughput scan and noise scale -> ``optimization.batch_size``; returns B_noise."""
    opt = plan.optimization
    b_noise = None
    ceiling = memory_ceiling(*args, opt, max_batch=max_batch, seed=plan.seed)
    timings["memory ceiling"] = ceiling.seconds
    speeds = _throughput_curve(args, plan, ceiling.batch_size, SCAN_SHARE * allowance)
    timings["throughput"] = sum(s.seconds for s in speeds.values())
    ceiling.tested = sorted(speeds)
    plan.measurements["memory"] = asdict(ceiling)
    best_speed = max(s.train_images_per_s for s in speeds.values())
    efficient = min(c for c, s in speeds.items() if s.train_images_per_s >= EFFICIENT * best_speed)
    plan.measurements["throughput"] = {str(c): round(s.train_images_per_s, 1) for c, s in speeds.items()}
    b_big = min(NOISE_BIG_BATCH, max(speeds))  # a size the scan ran
    noise_s = NOISE_SHARE * allowance
    if b_big < NOISE_MICRO * MIN_MICRO_BATCH:
        noise_note = f"too little data for micro-batches of {MIN_MICRO_BATCH}"
    elif efficient == max(speeds):
        noise_note = "no noise scale: no batch the scan ran above the smallest efficient one, so its answer is known"
    elif not _probe_pays(plan, prep, "noise scale", noise_s, speeds[efficient], deadline):
        noise_note = "noise scale skipped: " + plan.measurements["probe_gates"]["noise scale"]["why"]
    else:
        noise = estimate_noise_scale(*args, opt, b_big=b_big, micro=NOISE_MICRO, seed=plan.seed,
                                     max_seconds=noise_s)
        timings["noise scale"] = noise.seconds
        plan.measurements["noise_scale"] = asdict(noise)
        if math.isfinite(noise.b_noise) and noise.b_noise > 0:
            b_noise = noise.b_noise
        noise_note = (f"B_noise {noise.b_noise:.0f} ({noise.steps} steps, "
                      f"{'stable' if noise.stable else 'not yet stable'})")
    target = min(max(b_noise or efficient, efficient), ceiling.batch_size)
    batch = min(speeds, key=lambda c: abs(math.log(c / target)))
    plan.choose("optimization.batch_size", batch,
                f"{noise_note}; clamped to [{efficient} (smallest batch within {EFFICIENT:.0%} of the best "
                f"images/s), {ceiling.batch_size} (memory ceiling)]")
    return b_noise


def _choose_for_ranks(plan: Plan, prep: Prepared, device_type: str, world: int) -> None:
    """Under torchrun: a global batch the ranks share evenly (equal shares keep the noise scale
    from the ranks' gradients; uneven ones still train, weighted) and SyncBatchNorm when a rank's
    share is small. The probes ran in one process on rank 0; the budget guard corrects the run's
    length from the measured data-parallel epochs."""
    batch = plan.optimization.batch_size
    if batch % world and not plan.is_pinned("optimization.batch_size"):
        even = max(world, round(batch / world) * world)
        plan.choose("optimization.batch_size", even, f"{plan.evidence.get('optimization.batch_size', '')}; "
                    f"{batch} rounded to a multiple of the {world} processes: {even // world} images each")
    if batchnorm_layers(prep.model):
        sync, why = sync_batchnorm_rule(device_type, plan.optimization.batch_size // world)
        plan.choose("runtime.sync_batchnorm", sync, why)


def _throughput_curve(args: tuple, plan: Plan, ceiling: int, seconds: float) -> dict[int, Throughput]:
    """Images/s at doubling candidate batches below the memory ceiling, within ``seconds``.

    Throughput per image rises with the batch until the hardware is busy, then flattens or
    falls (caches overflow): the scan stops at the first clear drop, at the ceiling, or when the
    next candidate (about twice as long as the last) would not fit the time left.
    """
    first = args[1].first_batch_candidate
    candidates = [c for c in CANDIDATES if first <= c < ceiling] + [ceiling]
    speeds: dict[int, Throughput] = {}
    spent = 0.0
    for batch in candidates:
        speed = measure_throughput(*args, plan.optimization, batch, seed=plan.seed, warmup_steps=2, max_steps=3,
                                   max_seconds=max(seconds - spent, 0.0) / 2)
        speeds[batch] = speed
        spent += speed.seconds
        best = max(s.train_images_per_s for s in speeds.values())
        if speed.train_images_per_s < PAST_PEAK * best or spent + 2 * speed.seconds > seconds:
            break
    return speeds


def _probe_pays(plan: Plan, prep: Prepared, name: str, seconds: float, speed: Throughput,
                deadline: float | None) -> bool:
    """The cost gate for probe ``name`` expected to take ``seconds`` (recorded in the plan's measurements)."""
    time_buys = deadline is not None and not plan.is_pinned("optimization.epochs")
    epochs, spent = float(plan.optimization.epochs), 0.0
    if deadline is not None:
        remaining, per_epoch = _training_time(prep, speed, deadline, seconds)
        epochs, spent = max(remaining, 0.0) / per_epoch, seconds / per_epoch
    gain, basis = PROBE_GAINS[name]
    gate = cost_gate(name, gain, epochs, spent, time_buys_accuracy=time_buys, gain_basis=basis)
    plan.measurements.setdefault("probe_gates", {})[name] = gate.to_dict()
    return gate.runs


def final_evaluation_seconds(prep: Prepared, speed: Throughput) -> float:
    """Expected seconds of the run's final pass over the validation and test images."""
    test_size = len(prep.test) if prep.test is not None else 0
    return (len(prep.val) + test_size) / speed.eval_images_per_s


def _training_time(prep: Prepared, speed: Throughput, deadline: float, still_to_spend: float) -> tuple[float, float]:
    """(seconds of the budget left for training, seconds per epoch) at ``speed``, after ``still_to_spend``
    more seconds of meta-learning and with the final evaluation and report reserved."""
    final_s = final_evaluation_seconds(prep, speed) + REPORT_S
    remaining = deadline - time.perf_counter() - final_s - max(still_to_spend, 0.0)
    return remaining, epoch_seconds(speed, len(prep.train), len(prep.val))


def plan_length_for_budget(plan: Plan, prep: Prepared, speed: Throughput, deadline: float, still_to_spend: float) -> None:
    remaining, per_epoch = _training_time(prep, speed, deadline, still_to_spend)
    plan.measurements["final_evaluation_s"] = round(final_evaluation_seconds(prep, speed), 2)
    plan.choose("optimization.epochs", plan_epochs(remaining, per_epoch),
                f"{format_duration(remaining)} of the budget left for training at {speed.train_images_per_s:,.0f} "
                f"train img/s and {speed.eval_images_per_s:,.0f} eval img/s (batch {speed.batch_size}): "
                f"{per_epoch:.2f}s per epoch")
    plan.choose("optimization.schedule", "cosine", "time budget: warmup + cosine sized to end with the budget")
    if plan.optimization.schedule == "plateau":  # pinned: its learning-rate cuts need a patience
        plan.choose("optimization.early_stopping_patience", NO_BUDGET_PATIENCE,
                    "plateau schedule: epochs without validation gain before a learning-rate cut")
    else:
        plan.choose("optimization.early_stopping_patience", None,
                    "off under a time budget: the cosine schedule is sized to end with the budget")


def _choose_keep(plan: Plan) -> None:
    """The last epoch's weights after a cosine schedule, the best validated ones after any other.

    Measured: with 1,000 labeled Fashion-MNIST images and 100 validation images, the last epoch beat
    the best-read one on test in 5 of 5 runs, by 0.1-1.8 points."""
    schedule = plan.optimization.schedule
    if schedule == "cosine":
        plan.choose("optimization.keep", "last",
                    "cosine anneals to its last epoch: its weights, not those of the highest of many noisy "
                    "validation readings (the highest is as much the luckiest as the best)")
    else:
        plan.choose("optimization.keep", "best", f"{schedule} schedule: the learning rate does not anneal to the "
                    "end, so the best validated epoch")


def _choose_lr(plan: Plan, prep: Prepared, args: tuple, speed: Throughput, b_noise: float | None,
               time_left: float, timings: dict[str, float], deadline: float | None) -> None:
    opt = plan.optimization
    low, high = LR_TEST_STEPS
    affordable = int(0.9 * time_left * speed.train_images_per_s / opt.batch_size)
    test_batch = opt.batch_size
    if affordable < low and b_noise is not None and opt.batch_size > 64:
        test_batch = 64  # cheaper steps; the result is moved to the real batch by the noise-scale relation
        affordable = int(0.9 * time_left * speed.train_images_per_s / test_batch)
    steps = min(high, affordable)
    skipped = f"no time left for a range test of {low}+ steps" if affordable < low else None
    if skipped is None and not _probe_pays(plan, prep, "lr range test",
                                           steps * test_batch / speed.train_images_per_s, speed, deadline):
        skipped = "range test skipped: " + plan.measurements["probe_gates"]["lr range test"]["why"]
    if skipped is not None:
        lr, why = default_lr(opt.optimizer, opt.batch_size)
        plan.choose("optimization.lr", lr, f"{skipped}; {why}")
        return
    test = lr_range_test(*args, opt, test_batch, seed=plan.seed, steps=steps, max_seconds=time_left)
    timings["lr range test"] = test.seconds
    plan.measurements["lr_finder"] = asdict(test)
    if test.stopped == "time" and len(test.lrs) < low:  # slower than measured: the curve ends mid-range
        lr, why = default_lr(opt.optimizer, opt.batch_size)
        plan.choose("optimization.lr", lr, f"range test cut short by its time after {len(test.lrs)} of {steps} steps "
                    f"(learning rates up to {test.lrs[-1]:.3g} only, the loss still falling): not trusted; {why}")
        return
    lr, note = test.suggestion, ""
    if test_batch != opt.batch_size and b_noise is not None:
        lr = scale_lr(lr, test_batch, opt.batch_size, b_noise)
        note = f", moved from batch {test_batch} to {opt.batch_size} by eps(B) = eps_max / (1 + B_noise / B)"
    plan.choose("optimization.lr", float(f"{lr:.3g}"),
                f"range test ({len(test.lrs)} steps at batch {test_batch}): smoothed-loss minimum / 10{note}")
