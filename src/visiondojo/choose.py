"""find_params' choices for the plan. Until the meta-learners land, sensible defaults:
AdamW, linear warmup + cosine, batch 256 capped by the dataset, and, under a budget, as
many epochs as the measured throughput allows."""

from __future__ import annotations

import time

from .data.batches import Normalizer
from .durations import format_duration
from .engine.loop import REPORT_S
from .engine.runtime import Runtime
from .optimize.length import epoch_seconds, measure_throughput, plan_epochs
from .plan import Plan
from .prepare import Prepared

DEFAULT_BATCH = 256
MIN_BATCH = 8
MIN_STEPS_PER_EPOCH = 4
PROBE_SECONDS = 3.0
PROBE_SHARE = 0.02
"""The throughput probe times at most this share of the budget (and at most PROBE_SECONDS)."""


def choose_optimization(plan: Plan, prep: Prepared, runtime: Runtime, *, deadline: float | None) -> None:
    """Fill ``plan.optimization`` (leaving pinned fields alone); ``deadline`` is a perf_counter() time."""
    train_size = len(prep.train)
    batch = min(DEFAULT_BATCH, max(MIN_BATCH, train_size // MIN_STEPS_PER_EPOCH))
    plan.choose("optimization.batch_size", batch,
                f"default {DEFAULT_BATCH}, capped so the {train_size} training images make at least "
                f"{MIN_STEPS_PER_EPOCH} steps per epoch")
    plan.choose("optimization.optimizer", "adamw", "default: AdamW with decoupled weight decay")
    plan.choose("optimization.schedule", "cosine", "default: linear warmup, then cosine decay to zero")
    if deadline is None:
        plan.evidence.setdefault("optimization.epochs", "no time budget: planned epochs with early stopping")
        return
    normalizer = Normalizer(prep.data, runtime.device, plan.runtime.channels_last)
    probe_s = min(PROBE_SECONDS, PROBE_SHARE * (deadline - time.perf_counter()))
    speed = measure_throughput(prep.model, prep.task, plan, prep.train, runtime, normalizer, max_seconds=probe_s)
    test_size = len(prep.test) if prep.test is not None else 0
    final_s = (len(prep.val) + test_size) / speed.eval_images_per_s + REPORT_S
    remaining = deadline - time.perf_counter() - final_s
    per_epoch = epoch_seconds(speed, train_size, len(prep.val), plan.optimization.batch_size)
    epochs = plan_epochs(remaining, per_epoch)
    plan.choose("optimization.epochs", epochs,
                f"{format_duration(remaining)} of the budget left for training at "
                f"{speed.train_images_per_s:,.0f} train img/s and {speed.eval_images_per_s:,.0f} eval img/s "
                f"(measured in {speed.probe_s:.1f}s): {per_epoch:.2f}s per epoch")
    plan.choose("optimization.early_stopping_patience", None,
                "off under a time budget: the cosine schedule is sized to end with the budget")
