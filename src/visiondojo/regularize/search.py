"""The augmentation-policy search: a level per family of grouped ops, scored by proxy trainings.

1. Proxy 0 trains a copy of the model briefly on a subset, without augmentation: its score is
   the bar to beat, and the trained copy is the model the distances are measured with.
2. ``distance.py`` measures every (op, magnitude) pair; ``groups.py`` clusters each family's
   pairs into weak / medium / strong groups.
3. Greedy coordinate ascent, each step trying its options on top of the best policy so far (ops
   interact, so a proxy scores the combination, never an op alone), keeping the best option only
   when a paired test on the same validation units (``paired.py``: an exact sign test on the
   units exactly one of the two gets right, at ``ALPHA`` divided by the step's options, and a
   minimum effect; a unit is an image for classification, a true object for detection,
   ``Task.correct``) shows it better; without that evidence the simpler policy stays:

   a. *wide* menus: one menu of every group up to a level, across all families (each sample gets
      one (op, magnitude) of all of them; TrivialAugment's wide single-op menu is the strong end),
      levels weak to strong;
   b. the task's target options, weak to strong (``target_options_for``): for classification the
      soft labels (label smoothing, then with mixup, then with CutMix); for detection, where soft
      labels do not apply to boxes, the ops that build an image and its box set from several
      (mosaic on half the images, on all, then with box mixup);
   c. per family, a stacked level of its own (a second op from that family on top), weak to strong,
      only when a wide menu was chosen.

   Within a step, options go weak to strong and stop at the first that scores below the one
   before it (the first is compared with the best so far): stronger versions of what already
   hurts only hurt more. The steps are ordered by what they gave on Fashion-MNIST: a wide menu was
   the best single policy, target options are at most three proxies, and the family refinements fill
   whatever allowance is left. They are skipped when even the weakest wide menu loses to no
   augmentation: the run is then too short for augmentation to pay off (a 7-epoch Fashion-MNIST
   run: every menu, fixed policy and single family lost to none), and each proxy spent on it
   would come off the real run's epochs.

A proxy is the real training loop (``engine.loop.run_training``) with the plan's optimizer,
learning rate and batch (smaller when the subset would give fewer than 8 steps per epoch) on a
subset of the data, scored by the plan's monitored metric on a validation subset after its last
epoch (it keeps its final weights, so earlier validation passes would inform nothing). It trains as
many epochs as the real run is planned to (within ``PROXY_EPOCHS``), on a subset sized so the
proxy fits its share of time: augmentation pays off against memorization, which grows with how
often the model sees each image, so a proxy that sees its subset as often as the real run sees
the data keeps the real run's regime. (A few epochs over a larger subset underfit, and then any
augmentation only looks harmful: on Fashion-MNIST such proxies preferred no augmentation while
the 600 s run gained a point from it.) A run of more epochs than ``PROXY_EPOCHS`` allows is not
searched at all (``choose.py``: no proxy reaches its regime). Proxies draw batches uniformly, also when the plan resamples classes. Every proxy uses the same subset, seed and
initial weights, so differences between proxies are the policy's, not the draw's.

4. Whether the proxy's gain survives the real run's data: regularization pays most on little data,
   so a gain measured on a subset overstates the gain on the whole set (Fashion-MNIST: 1k-image
   proxies adopted a menu the 54k-image run lost 0.58 points with). The chosen policy and no
   augmentation are trained again on half the subset, and the gain at the two sizes is
   extrapolated to the training set's size (``extrapolate.py``); a policy whose extrapolated gain
   falls below the minimum effect is dropped for the one it replaced.

The validation subset is as large as the minimum effect needs to be detectable with ``POWER``
(``paired.images_needed``: about 5,000 units for one point; a detection image holds several
objects, so fewer images), within the validation data.

The search stays inside its allowance: proxies are sized from the measured throughput so that
the planned ones fit, and the search stops early when the next proxy would not.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..augment import ops_for
from ..data.batches import Normalizer, make_batches
from ..data.sources import Source
from ..engine.loop import run_training
from ..engine.runtime import Runtime
from ..optimize.probe import model_copy
from ..paired import ALPHA, MIN_EFFECT, PairedTest, images_needed, paired_test
from ..plan import AugmentOp, Plan
from ..tasks import Task
from .distance import MAGNITUDES, Distance, measure_distances
from .extrapolate import extrapolate_gain
from .groups import FAMILIES, LEVELS, Group, group_pairs

PROXY_EPOCHS = (4, 30)
"""Range of proxy epochs: a proxy trains as many epochs as the real run will (clamped to this)."""
MIN_SUBSET = 256
DISTANCE_SHARE = 0.12
"""Share of the search allowance for the distance analysis."""
MAX_DISTANCE_IMAGES = 1024
MIN_DISTANCE_IMAGES = 128
PLANNED_LEVELS = 2
"""Wide levels the proxies are sized for: levels stop at the first that scores below the one
before, so three are rarely all tried. Family refinements are sized at one proxy each (the first
level stops them when it does not help); they come last and get what is left."""
EXTRAPOLATION_PROXIES = 1
"""The extrapolation's two half-size proxies cost about one full one."""
WIDE = "wide"
"""The pseudo-family of the wide menus: ``{"wide": "medium"}`` is one menu of every group up to medium."""
SOFT_OPTIONS: tuple[dict[str, float], ...] = (
    {"label_smoothing": 0.1},
    {"label_smoothing": 0.1, "mixup": 0.2},
    {"label_smoothing": 0.1, "cutmix": 1.0},
)
SOFT_FIELDS = ("label_smoothing", "mixup", "cutmix")
DICE_OPTION = {"dice": 0.5}
"""Segmentation's first target option: cross-entropy + 0.5 x soft Dice, the usual even-handed mix
(the Dice term in [0, 1], cross-entropy of a trained model well under 1), tried before the soft
labels since it is the change to segmentation training most often found to help small classes."""
BOX_MIX_OPTIONS: tuple[dict[str, float], ...] = (
    {"mosaic": 0.5},
    {"mosaic": 1.0},
    {"mosaic": 1.0, "box_mixup": 0.15},
)
"""Detection's target options, weak to strong: mosaic on half the images, on every image (YOLO's
default), then box mixup on top at the rate Ultralytics' larger models use."""
BOX_MIX_FIELDS = ("mosaic", "box_mixup")


@dataclass
class Trial:
    groups: dict[str, str]
    """family -> level."""
    target_options: dict[str, float]
    """The target stage's fields this proxy set (``target_fields``); absent ones were 0."""
    score: float
    seconds: float
    test: dict[str, Any] | None = None
    """The paired test against the policy it would have replaced (``PairedTest.to_dict``)."""


@dataclass
class ProxyOutcome:
    """What one proxy training tells: its monitored score and which validation units it got right."""

    score: float
    correct: torch.Tensor


@dataclass
class SearchResult:
    augment: list[AugmentOp]
    target_options: dict[str, float]
    distances: list[Distance]
    groups: list[Group]
    trials: list[Trial]
    subset_size: int
    proxy_epochs: int
    seconds: float
    stopped: str
    space: dict[str, Any] = field(default_factory=dict)
    val_images: int = 0
    val_units: int = 0
    """What the paired tests counted on the validation images (``Task.unit``: images, objects)."""
    unit: str = "images"
    min_effect: float = MIN_EFFECT
    extrapolation: dict[str, Any] | None = None
    """Gain of the chosen policy at two subset sizes and extrapolated to the training set."""
    informative: bool = True
    """False when the first proxy learned too little to rank policies (``Task.min_proxy_right``):
    the search stopped there, and its policy is no evidence (``stopped`` says why)."""

    def summary(self) -> dict[str, Any]:
        """JSON-able evidence for plan.measurements."""
        return {
            "distances": [dataclasses.asdict(d) for d in self.distances],
            "groups": [{"name": g.name, "distance": g.distance, "pairs": [list(p) for p in g.pairs]}
                       for g in self.groups],
            "trials": [dataclasses.asdict(t) for t in self.trials],
            "subset_size": self.subset_size, "proxy_epochs": self.proxy_epochs,
            "seconds": round(self.seconds, 2), "stopped": self.stopped, "space": self.space,
            "val_images": self.val_images, "val_units": self.val_units, "unit": self.unit,
            "min_effect": self.min_effect, "extrapolation": self.extrapolation, "informative": self.informative,
        }


def target_fields(task: Task) -> tuple[str, ...]:
    """The regularization fields of the task's target stage (``Task.capabilities``): the soft
    labels (and the Dice weight, for per-pixel classes), the detection mixes (mosaic, box mixup),
    or none."""
    if task.capabilities.soft_labels:
        return SOFT_FIELDS + (tuple(DICE_OPTION) if task.capabilities.dice else ())
    return BOX_MIX_FIELDS if task.capabilities.box_mixing else ()


def target_options_for(task: Task) -> list[dict[str, float]]:
    """The target-stage options the task supports (``Task.capabilities``): the soft-label options
    whose mixes its targets follow (label smoothing alone without mixing), after the Dice loss for
    per-pixel classes; the detection mixes for box targets; else none."""
    if task.capabilities.soft_labels:
        mixes = set(task.capabilities.mixes)
        soft = [dict(o) for o in SOFT_OPTIONS if {"mixup", "cutmix"} & set(o) <= mixes]
        return ([dict(DICE_OPTION)] if task.capabilities.dice else []) + soft
    return [dict(o) for o in BOX_MIX_OPTIONS] if task.capabilities.box_mixing else []


def search_policy(plan: Plan, model: torch.nn.Module, task: Task, train: Source, val: Source, runtime: Runtime,
                  allowance_s: float, train_images_per_s: float, eval_images_per_s: float, *,
                  search_targets: bool = True, min_effect: float = MIN_EFFECT,
                  log: Callable[[str], None] = lambda message: None) -> SearchResult | None:
    """Search a policy within ``allowance_s`` seconds; None when not even the planned proxies fit.

    ``search_targets=False`` keeps the plan's target options (the user pinned soft labels or
    mosaic) and searches the augmentation only. ``min_effect``: the smallest gain (share of
    validation units) a policy change must show; the validation subset is sized to detect it.
    """
    start = time.perf_counter()
    fields = target_fields(task)
    target_options = target_options_for(task)
    search_targets = search_targets and bool(target_options)
    usable = ops_for(plan.data.channels)
    ops = [op for family in FAMILIES.values() for op in family if op in usable]
    planned = 1 + PLANNED_LEVELS + (len(target_options) if search_targets else 0) + len(FAMILIES) + EXTRAPOLATION_PROXIES
    units_per_image = task.units_per_sample(val.targets)
    val_images = min(len(val), math.ceil(images_needed(min_effect) / max(units_per_image, 1e-6)))
    start_options = {} if search_targets else {name: getattr(plan.regularization, name) for name in fields}
    # Each proxy: as many epochs as the real run, then one validation pass.
    epochs = min(max(plan.optimization.epochs, PROXY_EPOCHS[0]), PROXY_EPOCHS[1])
    proxy_s = (1 - DISTANCE_SHARE) * allowance_s / planned
    train_s = proxy_s - val_images / eval_images_per_s
    subset_size = min(len(train), int(train_s * train_images_per_s / epochs))
    if subset_size < MIN_SUBSET:
        return None
    generator = torch.Generator().manual_seed(plan.seed + 4242)
    subset = train.subset(torch.randperm(len(train), generator=generator)[:subset_size])
    val_subset = val.subset(torch.randperm(len(val), generator=generator)[:val_images])
    normalizer = Normalizer(plan.data, runtime.device, plan.runtime.channels_last)
    proxy = Proxy(plan, model, task, subset, val_subset, runtime, normalizer, epochs, fields)

    # 1. The bar to beat, and the briefly trained model the distances are measured with.
    trials: list[Trial] = []
    n_pairs = len(ops) * len(MAGNITUDES)
    distance_images = int(min(MAX_DISTANCE_IMAGES, len(subset),
                              max(MIN_DISTANCE_IMAGES, DISTANCE_SHARE * allowance_s * eval_images_per_s / n_pairs)))
    t = time.perf_counter()
    measured: dict[str, float] = {}

    def distances_of(trained: torch.nn.Module) -> list[Distance]:
        measured["trained_s"] = time.perf_counter() - t  # the proxy alone, without the distance analysis
        return _distances(trained, task, subset, distance_images, ops, normalizer, runtime, plan.seed)

    outcome, distances = proxy.run([], start_options, measure=distances_of)
    trials.append(Trial({}, start_options, outcome.score, round(measured.get("trained_s", time.perf_counter() - t), 2)))
    base_correct = outcome.correct
    right = float(base_correct.float().mean()) if len(base_correct) else 0.0
    log(f"policy search: no augmentation scores {outcome.score:.4f} on the proxy ({subset_size} images x "
        f"{epochs} epochs, {val_images} validation images; {right:.1%} of {len(base_correct)} {task.unit} right)")
    if right < task.min_proxy_right:
        why = (f"the proxies learned too little to rank policies: the first ({subset_size} images x {epochs} epochs) "
               f"got {right:.1%} of its {len(base_correct)} validation {task.unit} right, under the "
               f"{task.min_proxy_right:.0%} a comparison needs")
        return SearchResult([], start_options, distances, [], trials, subset_size, epochs, time.perf_counter() - start,
                            why, _space(len(ops), [], 1), val_images, len(base_correct), task.unit, min_effect,
                            informative=False)
    groups = group_pairs(distances)
    by_family: dict[str, list[Group]] = {}
    for group in groups:
        by_family.setdefault(group.family, []).append(group)

    # 2. Greedy: wide menus, target options, then a stacked level per family, each on top of the best so far.
    steps: list[tuple[str | None, list[str]]] = [(WIDE, [level for level in LEVELS if any(
        LEVELS.index(g.level) <= LEVELS.index(level) for g in groups)])]
    if search_targets:
        steps.append((None, []))  # the target options
    steps += [(f, [g.level for g in gs]) for f, gs in by_family.items()]
    best, best_correct, stopped = trials[0], base_correct, None
    for family, levels in steps:
        if family not in (WIDE, None) and WIDE not in best.groups:
            weakest = next(t for t in trials if WIDE in t.groups)
            stopped = (f"no wide menu beat no augmentation ({weakest.score:.4f} for the weakest against "
                       f"{trials[0].score:.4f}), so the run is too short for augmentation to pay off: "
                       "no family refinements")
            break
        options = ([({**best.groups, family: level}, best.target_options) for level in levels] if family is not None
                   else [(best.groups, dict(option)) for option in target_options])
        alpha = ALPHA / len(options)  # every option of the step is tested against the same best
        step: list[Trial] = []
        step_correct: list[torch.Tensor] = []
        for chosen, chosen_options in options:
            if time.perf_counter() - start + max(t.seconds for t in trials + step) > allowance_s:
                stopped = f"the search allowance ran out after {len(trials) + len(step)} proxy trainings"
                break
            t = time.perf_counter()
            outcome, _ = proxy.run(_ops(chosen, groups), chosen_options)
            test = paired_test(best_correct, outcome.correct, alpha=alpha, min_effect=min_effect, unit=task.unit)
            step.append(Trial(chosen, chosen_options, outcome.score, round(time.perf_counter() - t, 2), test.to_dict()))
            step_correct.append(outcome.correct)
            log(f"policy search: {_describe(chosen, chosen_options)} scores {outcome.score:.4f}; against the best so far "
                f"{test.describe()}")
            previous = step[-2].score if len(step) > 1 else best.score
            if step[-1].score < previous:
                break
        trials += step
        accepted = [i for i, trial in enumerate(step) if trial.test and trial.test["verdict"] == "accepted"]
        if accepted:
            i = max(accepted, key=lambda i: step[i].score)
            best, best_correct = step[i], step_correct[i]
        if stopped:
            break
    extrapolation = None
    if best is not trials[0]:
        extrapolation = _extrapolate(proxy, trials[0], best, base_correct, best_correct, groups, len(train),
                                     min_effect, allowance_s - (time.perf_counter() - start), log)
        if not extrapolation["kept"]:
            best = trials[0]
    space = _space(len(ops), groups, len(trials) + 2 * bool(extrapolation and "tests" in extrapolation))
    return SearchResult(_ops(best.groups, groups), best.target_options, distances, groups, trials, subset_size,
                        epochs, time.perf_counter() - start, stopped or "tried every planned combination", space,
                        val_images, len(base_correct), task.unit, min_effect, extrapolation)


def _extrapolate(proxy: "Proxy", base: Trial, chosen: Trial, base_correct: torch.Tensor,
                 chosen_correct: torch.Tensor, groups: list[Group], train_size: int, min_effect: float,
                 time_left: float, log: Callable[[str], None]) -> dict[str, Any]:
    """Train the base and the chosen policy again on half the subset; keep the chosen one only when
    its gain, extrapolated from the two sizes to ``train_size`` images, is at least ``min_effect``.

    Without time for the two half-size proxies the gain cannot be extrapolated, and the simpler
    base policy stays: a gain that may not survive the full data is no reason to change the run.
    """
    large = len(proxy.train)
    small = large // 2
    unit = proxy.task.unit
    full = paired_test(base_correct, chosen_correct, min_effect=min_effect, unit=unit)
    if small < MIN_SUBSET or time_left < base.seconds:
        return {"kept": False, "sizes": [large], "gains": [round(full.effect, 5)], "train_size": train_size,
                "why": f"no room for half-size proxies ({small} images, {time_left:.0f}s left): the gain of "
                       f"{full.effect:+.2%} on {large} images cannot be extrapolated, so the simpler policy stays"}
    half = proxy.on_fewer(small)
    base_small, _ = half.run(_ops(base.groups, groups), base.target_options)
    chosen_small, _ = half.run(_ops(chosen.groups, groups), chosen.target_options)
    at_small = paired_test(base_small.correct, chosen_small.correct, min_effect=min_effect, unit=unit)
    predicted = extrapolate_gain([small, large], [at_small.effect, full.effect], train_size)
    kept = predicted >= min_effect
    why = (f"gain {at_small.effect:+.2%} on {small} images, {full.effect:+.2%} on {large}: extrapolated "
           f"{predicted:+.2%} on the {train_size} training images, "
           + (f"at least the {min_effect:.1%} minimum: kept" if kept else
              f"under the {min_effect:.1%} minimum: the simpler policy stays"))
    log(f"policy search: {_describe(chosen.groups, chosen.target_options)}: {why}")
    return {"kept": kept, "sizes": [small, large], "gains": [round(at_small.effect, 5), round(full.effect, 5)],
            "train_size": train_size, "predicted": round(predicted, 5), "why": why,
            "tests": [at_small.to_dict(), full.to_dict()]}


def _space(ops: int, groups: list[Group], proxies: int) -> dict[str, Any]:
    """The size of what was searched, and what it cost, for the plan and the report."""
    return {"ops": ops, "magnitudes": len(MAGNITUDES), "pairs": ops * len(MAGNITUDES),
            "policies": f"{len(MAGNITUDES) + 1}^{ops} = {float((len(MAGNITUDES) + 1) ** ops):.3g}",
            "groups": len(groups), "proxy_trainings": proxies}


def _ops(chosen: dict[str, str], groups: list[Group]) -> list[AugmentOp]:
    """Policy ops: the wide menu (every group up to its level, as one menu) when chosen, then the
    chosen level of each family as a menu of its own."""
    ops = []
    if WIDE in chosen:
        cap = LEVELS.index(chosen[WIDE])
        ops += [AugmentOp(op, magnitude, group=f"{WIDE}/{chosen[WIDE]}")
                for g in groups if LEVELS.index(g.level) <= cap for op, magnitude in g.pairs]
    return ops + [op for g in groups if chosen.get(g.family) == g.level for op in g.ops()]


def _describe(chosen: dict[str, str], target_options: dict[str, float]) -> str:
    parts = [f"{family} {level}" for family, level in chosen.items()]
    parts += [f"{k} {v:g}" for k, v in target_options.items()]
    return ", ".join(parts) or "no augmentation"


def _distances(model: torch.nn.Module, task: Task, subset: Source, count: int, ops: list[str],
               normalizer: Normalizer, runtime: Runtime, seed: int) -> list[Distance]:
    index = torch.arange(count)
    pixels = normalizer.unit(subset.images_at(index).to(runtime.device))
    targets = subset.targets.gather(index).to(runtime.device)
    return measure_distances(model, task, pixels, targets, ops, normalizer, runtime, seed=seed)


class Proxy:
    """Short trainings of a fresh copy of the model on one subset, with the plan's optimizer."""

    def __init__(self, plan: Plan, model: torch.nn.Module, task: Task, train: Source, val: Source,
                 runtime: Runtime, normalizer: Normalizer, epochs: int, fields: tuple[str, ...]):
        self.model, self.task, self.runtime, self.normalizer = model, task, runtime, normalizer
        self.source_plan, self.epochs, self.fields = plan, epochs, fields
        self.plan = copy.deepcopy(plan)
        opt = self.plan.optimization
        self.batch_size = max(8, min(opt.batch_size, len(train) // 8))  # at least 8 steps per epoch
        steps = len(train) // self.batch_size
        warmup_steps = min(opt.warmup_epochs * max(plan.data.train_size // max(opt.batch_size, 1), 1),
                           0.1 * epochs * steps)
        # A proxy always anneals a cosine to its end and keeps its final weights, whatever the run's
        # schedule and keep (a pinned constant or plateau schedule keeps the best epoch, which a proxy
        # that validates once cannot choose).
        opt.epochs, opt.schedule, opt.batch_size, opt.keep = epochs, "cosine", self.batch_size, "last"
        opt.warmup_epochs = warmup_steps / max(steps, 1)
        opt.early_stopping_patience, opt.budget_s = None, None
        self.train, self.val = train, val

    def on_fewer(self, size: int) -> "Proxy":
        """The same proxy on the first ``size`` images of its subset (same validation images)."""
        return Proxy(self.source_plan, self.model, self.task, self.train.subset(torch.arange(size)), self.val,
                     self.runtime, self.normalizer, self.epochs, self.fields)

    def run(self, augment: list[AugmentOp], target_options: dict[str, float],
            measure: Callable[[torch.nn.Module], Any] | None = None) -> tuple[ProxyOutcome, Any]:
        """(validation outcome of the returned weights, ``measure(trained model)``) of one proxy
        training with this augmentation and these target options (the task's target fields not
        named are 0)."""
        plan = copy.deepcopy(self.plan)
        plan.regularization = dataclasses.replace(plan.regularization, augment=augment,
                                                  **{name: target_options.get(name, 0.0) for name in self.fields})
        device = self.runtime.device
        train_batches = make_batches(self.train, self.batch_size, device, train=True, seed=plan.seed)
        val_batches = make_batches(self.val, max(self.batch_size, 256), device, train=False)
        with model_copy(self.model, self.runtime) as model, tempfile.TemporaryDirectory() as folder:
            result = run_training(model, self.task, plan, train_batches, val_batches, self.runtime, self.normalizer,
                                  Path(folder), validate_each_epoch=False)
            measured = measure(model) if measure is not None else None
        final = result.last_evaluation
        assert final is not None and final.correct is not None  # validate_each_epoch=False collects it
        return ProxyOutcome(result.kept_metric, final.correct), measured
