"""find_params' regularization choices: class balance, and the augmentation-policy search.

The weight decay rate is chosen with the optimizer (``choose.py``). The augmentation policy and
the task's target options (soft labels for classification, mosaic and box mixup for detection)
come from the policy search (``search.py``) within ``SEARCH_SHARE`` of the time left, unless the
user pinned them (a saved policy passed to ``fit`` pins every field).

The search's proxies stand for the real run only when they train as many epochs as it does (at
most ``search.PROXY_EPOCHS``): augmentation pays off against memorization, which grows with how
often the model sees each image. A run of more epochs than a proxy can train (a few labeled
images under a generous budget) is in a regime no proxy reaches, and there the proxies prefer no
augmentation while the run needs it most (Fashion-MNIST, 900 labeled images, 900 s: the search
chose none from 30-epoch proxies, and the 760-epoch run memorized its images and scored 0.760 on
test). Such a run, and one whose search allowance is too small for the proxies, gets TrivialAugment
as a prior when it has ``PRIOR_MIN_EPOCHS`` or more, a short one no augmentation (with label
smoothing for single-label classification).

Two gates come before any proxy runs, with their reasons in the plan:

- **power**: the validation images must be able to show a gain the search would act on; when
  they detect only gains above ``MAX_MIN_EFFECT`` (a few hundred images), every decision would be
  underpowered, and the prior is kept;
- **cost** (``learning_curve.cost_gate``): under a budget on the run's length, the search's time
  comes off the run, so it runs only when its expected gain exceeds what that time would buy as
  training. Its expected gain over the prior is ``EXPECTED_SEARCH_GAIN``, from every budgeted
  Fashion-MNIST comparison so far; without a budget (or with pinned epochs) its time costs no
  accuracy and it runs.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

from ..augment import trivial_augment
from ..engine.runtime import Runtime
from ..errors import ConfigError
from ..learning_curve import cost_gate
from ..optimize.length import Throughput, epoch_seconds
from ..paired import MIN_EFFECT, POWER, detectable_effect
from ..plan import AugmentOp, Plan, RegularizationParams
from ..prepare import Prepared
from ..tasks import Task
from .class_balance import choose_class_balance, choose_pixel_balance, imbalance_ratio
from .search import PROXY_EPOCHS, SOFT_FIELDS, search_policy, target_fields

SEARCH_SHARE = 0.2
"""Share of the time left after the optimization meta-learners that the policy search may use."""
NO_BUDGET_SEARCH_EPOCHS = 10
"""Without a budget, the search may take as long as this many epochs of the full training set."""
PRIOR_MIN_EPOCHS = 20
"""When the search cannot run, runs of at least this many epochs get TrivialAugment instead of no
augmentation: on Fashion-MNIST it beat none by 0.75 points at 22 epochs (bench/augment_search.py),
and a few labeled images seen hundreds of times need augmentation most."""
PRIOR_DICE = 0.5
PRIOR_DICE_MIOU = ((0.400, 0.350), (0.428, 0.381))
"""Test mIoU of cross-entropy alone and with + 0.5 x Dice, seeds 0 and 1 (SmallUNet, 8 epochs of
1,500 fashion-scenes, 300 test scenes, everything else planned alike): +2.8 and +3.1 points. Why a
segmentation run without a search gets ``PRIOR_DICE``."""
PRIOR_LABEL_SMOOTHING = 0.1
"""Shorter single-label runs get label smoothing without augmentation: it is what the search chose
on Fashion-MNIST at 8-9 epochs (+0.39 and +0.51 points over none, search time included), and the
one soft-label option it never rejected there."""
DETECTION_PRIOR_WHY = ("horizontal flips (the one augmentation of torchvision's reference detection recipe), "
                       "scale 0.8-1.2 and shifts of up to 10% (Ultralytics' defaults go to 0.5-1.5), brightness "
                       "and contrast; boxes move with every geometric op")


def detection_prior() -> list[AugmentOp]:
    """Flip, zoom, translate, brightness and contrast, each on every image at a random strength."""
    return [AugmentOp("hflip", 1.0), AugmentOp("zoom", 0.5), AugmentOp("translate", 1 / 3),
            AugmentOp("brightness", 0.5), AugmentOp("contrast", 0.5)]


MAX_MIN_EFFECT = 0.03
"""The search runs only when its validation images detect a 3-point gain (power 0.8): below about
500 images, the proxies' differences are noise."""
EXPECTED_SEARCH_GAIN = 0.0
"""Share of the error the search is expected to remove beyond the prior policy under a budget. Every
budgeted Fashion-MNIST run measured so far found no better policy than the prior now chosen without
a search: at 8-9 epochs it chose label smoothing alone (the short prior); at 12 epochs it lost 0.58
points on one seed (a weak menu adopted on a proxy gain within noise) and 0.07 on the other (label
smoothing); at 22 epochs it scored 0.28 points below TrivialAugment (the long prior). Raise it when
a measured regime shows the search beating the prior."""


def choose_regularization(plan: Plan, prep: Prepared, runtime: Runtime, speed: Throughput, *,
                          deadline: float | None, log: Callable[[str], None] = lambda message: None) -> bool:
    """Fill ``plan.regularization``; returns whether the policy search ran (and spent time)."""
    counts = plan.data.class_counts
    if counts and prep.task.capabilities.class_balance:
        mode, why = choose_class_balance(counts)
        plan.choose("regularization.class_balance", mode, why)
        plan.measurements["imbalance_ratio"] = round(imbalance_ratio(counts), 3)
    elif counts and prep.task.capabilities.pixel_balance:
        per_image = sum(counts) / max(plan.data.train_size, 1)
        mode, beta, why = choose_pixel_balance(counts, per_image, plan.regularization.class_balance_beta)
        plan.choose("regularization.class_balance", mode, why)
        if plan.regularization.class_balance == "reweight":
            plan.choose("regularization.class_balance_beta", beta,
                        f"per pixel, {plan.regularization.class_balance_beta:g} per image's {per_image:.0f} pixels: "
                        "an image's worth of a class's pixels counts as one sample")
        plan.measurements["imbalance_ratio"] = round(imbalance_ratio(counts), 3)
    if plan.is_pinned("regularization.augment"):
        _dice_prior(plan, prep.task, "no policy search: the augmentation is pinned")
        return False
    features = prep.task.feature_source(prep.model)
    if features is None:
        _prior(plan, prep.task, f"no policy search: the augmentation distances read {prep.task.name} models' "
                     f"features, and {type(prep.model).__name__} has none the task knows where to find")
        return False
    # Under a budget the search's own share comes off the run's epochs; pinned epochs stay.
    epochs = plan.optimization.epochs
    length_pinned = plan.is_pinned("optimization.epochs")
    after_search = epochs if length_pinned else int(epochs * (1 - SEARCH_SHARE))
    if (deadline is not None or length_pinned) and after_search > PROXY_EPOCHS[1]:
        _prior(plan, prep.task, f"{after_search} planned epochs are more than the {PROXY_EPOCHS[1]} a proxy training can run, "
                     "so proxies cannot show the memorization augmentation prevents (they would prefer none)")
        return False
    units = int(len(prep.val) * prep.task.units_per_sample(prep.val.targets))
    min_effect = max(MIN_EFFECT, detectable_effect(units))
    if min_effect > MAX_MIN_EFFECT:
        _prior(plan, prep.task, f"underpowered: {units} validation {prep.task.unit} detect only gains of "
                     f"{min_effect:.1%} or more (power {POWER:.0%}), above the {MAX_MIN_EFFECT:.0%} a policy search "
                     "could act on")
        return False
    time_buys_accuracy = deadline is not None and not length_pinned
    gate = cost_gate("policy search", EXPECTED_SEARCH_GAIN, epochs, epochs * SEARCH_SHARE,
                     time_buys_accuracy=time_buys_accuracy,
                     gain_basis="its measured gain over the prior policy in budgeted runs")
    plan.measurements["search_gate"] = gate.to_dict()
    if not gate.runs:
        _prior(plan, prep.task, gate.why)
        return False
    if deadline is not None:
        allowance = SEARCH_SHARE * (deadline - time.perf_counter())
    else:
        allowance = NO_BUDGET_SEARCH_EPOCHS * epoch_seconds(speed, len(prep.train), len(prep.val))
    fields = target_fields(prep.task)
    search_targets = not any(plan.is_pinned(f"regularization.{name}") for name in fields)
    result = search_policy(plan, prep.model, prep.task, prep.train, prep.val, runtime, allowance,
                           speed.train_images_per_s, speed.eval_images_per_s, search_targets=search_targets,
                           min_effect=min_effect, log=log)
    if result is None:
        _prior(plan, prep.task, f"{allowance:.1f}s is too little for the policy search's proxy trainings")
        return False
    if not result.informative:
        plan.measurements["augment_search"] = result.summary()
        _prior(plan, prep.task, result.stopped)
        return True
    chosen = sorted({op.group for op in result.augment})
    adopted = [t for t in result.trials[1:] if t.test and t.test["verdict"] == "accepted"]
    evidence = "; ".join(f"{_trial_name(t)}: {t.test['effect']:+.2%}, p = {t.test['p_value']:.3g}" for t in adopted)
    extrapolated = f"; {result.extrapolation['why']}" if result.extrapolation else ""
    plan.choose("regularization.augment", result.augment,
                f"policy search: {len(result.trials)} proxy trainings ({result.subset_size} images x "
                f"{result.proxy_epochs} epochs, {result.val_images} validation images holding {result.val_units} "
                f"{result.unit}, {result.seconds:.0f}s of {allowance:.0f}s) over {len(result.groups)} groups of "
                f"{result.space['pairs']} (op, magnitude) pairs measured on {features}, instead of "
                f"{result.space['policies']} policies: {', '.join(chosen) or 'no augmentation'}; a change is adopted "
                f"only on a paired sign test over the {result.unit} (p < 0.05 over the step's options) with a gain of "
                f"at least {result.min_effect:.1%}: {evidence or 'none was'}{extrapolated}; {result.stopped}")
    if search_targets:
        for name in fields:
            plan.choose(f"regularization.{name}", float(result.target_options.get(name, 0.0)),
                        "policy search: the target option that significantly beat the others on the proxies "
                        "(none when no option did)")
    plan.measurements["augment_search"] = result.summary()
    return True


def _trial_name(trial: Any) -> str:
    parts = [f"{family} {level}" for family, level in trial.groups.items()]
    parts += [f"{name} {value:g}" for name, value in trial.target_options.items()]
    return ", ".join(parts) or "no augmentation"


def _prior(plan: Plan, task: Task, why_not_searched: str) -> None:
    """The policy without a search: TrivialAugment for a run long enough to memorize, else none
    (with label smoothing for single-label classification, unless soft labels are pinned); for
    detection, the detection prior whatever the length; for segmentation, the Dice term too."""
    epochs = plan.optimization.epochs
    _dice_prior(plan, task, why_not_searched)
    if plan.data.task == "detection":
        if epochs >= PRIOR_MIN_EPOCHS:
            plan.choose("regularization.augment", detection_prior(), f"{why_not_searched}; {epochs} planned epochs "
                        f"would let the detector memorize its images: {DETECTION_PRIOR_WHY}")
        else:
            plan.choose("regularization.augment", [AugmentOp("hflip", 1.0)],
                        f"{why_not_searched}; {epochs} planned epochs are too few to need more than horizontal "
                        "flips (the one augmentation of torchvision's reference detection recipe; they cost no "
                        "fit, and the objects' mirror images are objects of the same class)")
        return
    if epochs >= PRIOR_MIN_EPOCHS:
        plan.choose("regularization.augment", trivial_augment(plan.data.channels),
                    f"{why_not_searched}; {epochs} planned epochs would let the model memorize its images: "
                    "TrivialAugment, the fixed policy that beat none at that length in visiondojo's benchmarks")
        return
    plan.evidence["regularization.augment"] = (f"no augmentation: {why_not_searched}, and {epochs} planned epochs "
                                               "are too few to need it")
    soft_pinned = any(plan.is_pinned(f"regularization.{name}") for name in SOFT_FIELDS)
    if plan.data.task == "multiclass" and not soft_pinned and task.capabilities.soft_labels:
        plan.choose("regularization.label_smoothing", PRIOR_LABEL_SMOOTHING,
                    f"without a search, single-label runs of under {PRIOR_MIN_EPOCHS} epochs get label smoothing: "
                    "what the policy search chose at that length in visiondojo's benchmarks")


def _dice_prior(plan: Plan, task: Task, why_not_searched: str) -> None:
    """Without a search, segmentation trains on cross-entropy + ``PRIOR_DICE`` x Dice (unless pinned)."""
    if not task.capabilities.dice:
        return
    without, dice = (sum(v) / len(v) for v in PRIOR_DICE_MIOU)
    plan.choose("regularization.dice", PRIOR_DICE,
                f"{why_not_searched}; cross-entropy + {PRIOR_DICE:g} x Dice, the target option measured to help "
                f"segmentation (mean test mIoU {without:.3f} -> {dice:.3f} over 2 seeds in visiondojo's benchmarks)")


def regularization_pins(policy: RegularizationParams | str | Path | dict[str, Any] | None) -> dict[str, Any]:
    """``{'regularization.<field>': value}`` for every field of a saved policy (or the keys of a mapping)."""
    if policy is None:
        return {}
    if isinstance(policy, (str, Path)):
        policy = RegularizationParams.load(policy)
    if isinstance(policy, RegularizationParams):
        values = {f.name: getattr(policy, f.name) for f in dataclasses.fields(policy)}
    elif isinstance(policy, dict):
        values = policy
    else:
        raise ConfigError(f"regularization: expected RegularizationParams, a file path or a mapping, "
                          f"got {type(policy).__name__}")
    return {f"regularization.{k}": v for k, v in values.items()}
