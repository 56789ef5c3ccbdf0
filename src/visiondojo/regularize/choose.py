"""find_params' regularization choices: class balance, and the augmentation-policy search.

The weight decay rate is chosen with the optimizer (``choose.py``). The augmentation policy and
the soft labels come from the policy search (``search.py``) within ``SEARCH_SHARE`` of the time
left, unless the user pinned them (a saved policy passed to ``fit`` pins every field).

The search's proxies stand for the real run only when they train as many epochs as it does (at
most ``search.PROXY_EPOCHS``): augmentation pays off against memorization, which grows with how
often the model sees each image. A run of more epochs than a proxy can train (a few labeled
images under a generous budget) is in a regime no proxy reaches, and there the proxies prefer no
augmentation while the run needs it most (Fashion-MNIST, 900 labeled images, 900 s: the search
chose none from 30-epoch proxies, and the 760-epoch run memorized its images and scored 0.760 on
test). Such a run, and one whose search allowance is too small for the proxies, gets TrivialAugment
as a prior when it has ``PRIOR_MIN_EPOCHS`` or more, a short one no augmentation.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

from ..augment import trivial_augment
from ..engine.runtime import Runtime
from ..errors import ConfigError
from ..optimize.length import Throughput, epoch_seconds
from ..plan import Plan, RegularizationParams
from ..prepare import Prepared
from .class_balance import choose_class_balance, imbalance_ratio
from .search import PROXY_EPOCHS, search_policy

SEARCH_SHARE = 0.2
"""Share of the time left after the optimization meta-learners that the policy search may use."""
NO_BUDGET_SEARCH_EPOCHS = 10
"""Without a budget, the search may take as long as this many epochs of the full training set."""
SOFT_FIELDS = ("label_smoothing", "mixup", "cutmix")
PRIOR_MIN_EPOCHS = 20
"""When the search cannot run, runs of at least this many epochs get TrivialAugment instead of no
augmentation: on Fashion-MNIST it beat none by 0.75 points at 22 epochs (bench/augment_search.py),
and a few labeled images seen hundreds of times need augmentation most."""


def choose_regularization(plan: Plan, prep: Prepared, runtime: Runtime, speed: Throughput, *,
                          deadline: float | None, log: Callable[[str], None] = lambda message: None) -> bool:
    """Fill ``plan.regularization``; returns whether the policy search ran (and spent time)."""
    counts = plan.data.class_counts
    if counts:
        mode, why = choose_class_balance(counts)
        plan.choose("regularization.class_balance", mode, why)
        plan.measurements["imbalance_ratio"] = round(imbalance_ratio(counts), 3)
    if plan.is_pinned("regularization.augment"):
        return False
    # Under a budget the search's own share comes off the run's epochs; pinned epochs stay.
    epochs = plan.optimization.epochs
    after_search = epochs if plan.is_pinned("optimization.epochs") else int(epochs * (1 - SEARCH_SHARE))
    if (deadline is not None or plan.is_pinned("optimization.epochs")) and after_search > PROXY_EPOCHS[1]:
        _prior(plan, f"{after_search} planned epochs are more than the {PROXY_EPOCHS[1]} a proxy training can run, "
                     "so proxies cannot show the memorization augmentation prevents (they would prefer none)")
        return False
    if deadline is not None:
        allowance = SEARCH_SHARE * (deadline - time.perf_counter())
    else:
        allowance = NO_BUDGET_SEARCH_EPOCHS * epoch_seconds(speed, len(prep.train), len(prep.val))
    search_soft = not any(plan.is_pinned(f"regularization.{name}") for name in SOFT_FIELDS)
    result = search_policy(plan, prep.model, prep.task, prep.train, prep.val, runtime, allowance,
                           speed.train_images_per_s, speed.eval_images_per_s, search_soft=search_soft, log=log)
    if result is None:
        _prior(plan, f"{allowance:.1f}s is too little for the policy search's proxy trainings")
        return False
    base, best = result.trials[0].score, max(t.score for t in result.trials)
    chosen = sorted({op.group for op in result.augment})
    plan.choose("regularization.augment", result.augment,
                f"policy search: {len(result.trials)} proxy trainings ({result.subset_size} images x "
                f"{result.proxy_epochs} epochs, {result.seconds:.0f}s of {allowance:.0f}s) over {len(result.groups)} "
                f"groups of {result.space['pairs']} (op, magnitude) pairs, instead of {result.space['policies']} "
                f"policies: {', '.join(chosen) or 'no augmentation'} (proxy {plan.monitor} {best:.4f}, "
                f"{base:.4f} without augmentation); {result.stopped}")
    if search_soft:
        for name in SOFT_FIELDS:
            plan.choose(f"regularization.{name}", float(result.soft.get(name, 0.0)),
                        "policy search: soft-label option with the best proxy score (with the chosen augmentation)")
    plan.measurements["augment_search"] = result.summary()
    return True


def _prior(plan: Plan, why_not_searched: str) -> None:
    """The policy without a search: TrivialAugment for a run long enough to memorize, else none."""
    epochs = plan.optimization.epochs
    if epochs >= PRIOR_MIN_EPOCHS:
        plan.choose("regularization.augment", trivial_augment(plan.data.channels),
                    f"{why_not_searched}; {epochs} planned epochs would let the model memorize its images: "
                    "TrivialAugment, the best fixed policy measured (Fashion-MNIST, 22 epochs: +0.75 points over none)")
    else:
        plan.evidence["regularization.augment"] = (f"no augmentation: {why_not_searched}, and {epochs} planned epochs "
                                                   "are too few to need it")


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
