"""Noisy Student (Xie et al. 2020): teacher -> pseudo-labels -> noised student -> new teacher.

Each round:

1. the teacher (first the supervised model) labels the unlabeled images (``pseudo.py``:
   a validation-calibrated confidence threshold, class-balanced): its top class (``hard``) or
   its class probabilities (``soft``, ``SSLParams.pseudo_labels``);
2. a student of the same architecture starts from its teacher's weights (``student_init``
   ``teacher``: under a budget it gets further in its few epochs) or from the model's initial
   weights (``scratch``, the paper's choice; after any representation pretraining), and trains
   on labeled + pseudo-labeled images with noise:
   TrivialAugment (``augment.trivial_augment``: one op of the whole set per image, at a random
   strength), dropout before its head (``SSLParams.student_dropout``) and the model's stochastic
   depth. Each batch draws at least ``labeled_share`` of its images from the labeled set (more
   when the pseudo-labels are few: the data's own proportion), so the weight of the unlabeled
   loss is (1 - share) / share of the labeled one; the labeled draws are class-balanced when
   the teacher's plan balanced classes, the pseudo-labeled ones always are;
3. the student replaces the teacher unless validation shows it *significantly* worse: a paired,
   one-sided sign test on the validation images that exactly one of the two gets right
   (``student_holds``), so that a few validation images cannot throw away a student that learned
   from far more images. Comparing two accuracies of 100 images each would: their difference
   has a spread of about 4 points, where a student typically gains 1-2 (Fashion-MNIST, 1,000
   labels: students of one round gained 0.9-2.2 test points over their teacher, and the best of
   them read 1 point below it on 100 validation images). A rejected student ends the rounds.

Why strong augmentation for every student, whatever the teacher's policy: without input noise a
student only learns to copy its teacher (Xie et al. 2020 use RandAugment at a high magnitude, and
the gain disappears without noise), while the teacher's searched policy was chosen for a few
labeled images, where the search may well prefer none. A policy the user pinned is kept.

The student trains with the teacher's plan (optimizer, learning rate, batch, soft labels), only
its length, warmup and BatchNorm momentum resized to the larger data. With a deadline, the time
left is split evenly over the rounds still to run, and the loop's budget guard keeps each
student inside its share.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..augment import trivial_augment
from ..data.batches import Normalizer, make_batches
from ..data.sources import Source, class_labels
from ..engine.loop import LoopResult, run_training
from ..engine.progress import TrainingProgress
from ..engine.runtime import Runtime
from ..optimize.batchnorm import bn_momentum_for
from ..optimize.schedules import MAX_WARMUP_SHARE
from ..paired import MIN_EFFECT, detection_power, paired_test
from ..plan import Plan
from ..tasks import Task
from ..regularize.class_balance import sample_weights
from ..regularize.dropout import DROPOUT_TYPES
from .pseudo import choose_threshold, predict, select
from .unlabeled import concat_sources

ORIENTATION_OPS = frozenset({"vflip", "rot90"})
MIN_CLASSES = 2
"""Fewest classes the pseudo-labels must cover for a round to run."""
MIN_ROUND_SHARE = 0.5
"""A round starts only with at least this share of the last round's time left."""
REJECT_P = 0.05
"""A student is rejected when the sign test puts the chance of its validation deficit, were it
no worse than its teacher, below this."""


@dataclass
class Round:
    round: int
    threshold: float
    threshold_why: str
    kept: int
    counts: list[int]
    labeled_share: float
    epochs: int
    teacher_metric: float
    student_metric: float
    accepted: bool
    verdict: str
    seconds: float


@dataclass
class NoisyStudentResult:
    rounds: list[Round]
    history: list[dict[str, Any]]
    """Every student's epochs, with a ``stage`` column."""
    stopped: str
    result: LoopResult | None
    """The accepted student's training (None when the teacher was kept)."""

    def summary(self) -> dict[str, Any]:
        return {"rounds": [asdict(r) for r in self.rounds], "stopped": self.stopped}


def student_plan(teacher: Plan, steps_per_epoch: int, model: nn.Module) -> Plan:
    """The teacher's plan for a student: same optimizer, learning rate, batch and soft labels; its
    length, warmup (the same number of steps) and BatchNorm momentum fitted to the student's data,
    and its noise: TrivialAugment (unless the user pinned a policy) and dropout."""
    plan = copy.deepcopy(teacher)
    opt, ssl = plan.optimization, plan.ssl
    teacher_steps = max(1, teacher.data.train_size // max(opt.batch_size, 1))
    opt.epochs = ssl.student_epochs or opt.epochs
    warmup_steps = min(opt.warmup_epochs * teacher_steps, MAX_WARMUP_SHARE * opt.epochs * steps_per_epoch)
    opt.warmup_epochs = round(warmup_steps / steps_per_epoch, 4)
    if opt.bn_momentum is not None:
        opt.bn_momentum = bn_momentum_for(steps_per_epoch)
    reg = plan.regularization
    if "regularization.augment" not in plan.pinned:
        # Flips upside down and quarter turns change what some images show (a 6 is a 9): only
        # when the teacher's own policy found them harmless.
        allowed = {op.name for op in reg.augment}
        reg.augment = [op for op in trivial_augment(plan.data.channels, group="student")
                       if op.name not in ORIENTATION_OPS or op.name in allowed]
    if reg.dropout is not None or not any(isinstance(m, DROPOUT_TYPES) for m in model.modules()):
        # A model with dropout layers of its own keeps their rates (its noise) unless the plan sets one.
        reg.dropout = max(reg.dropout or 0.0, ssl.student_dropout) or reg.dropout
    reg.class_balance = "none"  # the draws are balanced by class already (pseudo.PseudoLabels.sample_weights)
    if "optimization.epochs" not in plan.pinned:
        plan.pinned.append("optimization.epochs")  # the budget guard may shorten, never lengthen, a student
    return plan


def student_holds(teacher_probs: torch.Tensor, student_probs: torch.Tensor, targets: torch.Tensor) -> tuple[bool, str]:
    """(accepted, why): the student is kept unless it is significantly worse on validation.

    The paired test of ``visiondojo.paired`` with the roles the evidence sets: the student is the
    default here (every measured round gained 0.9-2.2 test points over its teacher, having learned
    from far more images), so the teacher must show itself better on the images exactly one of the
    two gets right (McNemar's exact test, one-sided at ``REJECT_P``). The test counts top-1
    accuracy, the metric of the single-label tasks Noisy Student runs for, whatever metric the
    plan monitors; its power to see a one-point loss is reported beside it.
    """
    teacher_right = teacher_probs.argmax(dim=1) == targets
    student_right = student_probs.argmax(dim=1) == targets
    test = paired_test(student_right, teacher_right, alpha=REJECT_P, min_effect=0.0)
    power = detection_power(test.images, max((test.candidate_only + test.baseline_only) / max(test.images, 1),
                                             MIN_EFFECT), MIN_EFFECT, REJECT_P)
    why = (f"of {len(targets)} validation images, {test.baseline_only} only the student and {test.candidate_only} only "
           f"the teacher got right; power {power:.2f} to see a {MIN_EFFECT:.0%} loss (sign test p = {test.p_value:.3f})")
    return not test.accepted, why


def _labeled_weights(plan: Plan, train: Source) -> torch.Tensor:
    """Draw weights of the labeled images, summing to 1: class-balanced when the teacher's plan
    balanced classes (by loss weights or by sampling), else uniform."""
    if plan.regularization.class_balance == "none":
        return torch.full((len(train),), 1 / len(train), dtype=torch.float64)
    weights = sample_weights(class_labels(train), plan.data.class_counts).double()
    return weights / weights.sum()


def noisy_student(model: nn.Module, initial_state: dict[str, torch.Tensor] | None, teacher_metric: float, task: Task,
                  plan: Plan, train: Source, val: Source, unlabeled: Source, val_batches: Any, runtime: Runtime,
                  normalizer: Normalizer, folder: Path, *, deadline: float | None,
                  final_eval_ratio: float = 1.0, progress: TrainingProgress | None = None) -> NoisyStudentResult:
    """Run up to ``plan.ssl.noisy_student_rounds`` rounds; on return ``model`` holds the last accepted student (or the teacher).

    ``initial_state`` is where students start for ``student_init: scratch`` (None: from the teacher).
    """
    ssl = plan.ssl
    rounds: list[Round] = []
    history: list[dict[str, Any]] = []
    best, accepted_result = teacher_metric, None
    stopped = f"ran the planned {ssl.noisy_student_rounds} round(s)"
    val_targets = class_labels(val)
    for r in range(1, ssl.noisy_student_rounds + 1):
        start = time.perf_counter()
        if deadline is not None and rounds and deadline - start < MIN_ROUND_SHARE * rounds[-1].seconds:
            stopped = f"round {r}: too little time left for another student"
            break
        teacher_val = predict(model, task, val, normalizer, runtime)
        if ssl.pseudo_threshold is None:
            threshold, why = choose_threshold(teacher_val, val_targets)
        else:
            threshold, why = ssl.pseudo_threshold, "set in the plan"
        pseudo = select(predict(model, task, unlabeled, normalizer, runtime), threshold)
        classes = sum(count > 0 for count in pseudo.counts)
        if classes < MIN_CLASSES:
            stopped = (f"round {r}: pseudo-labels (confidence >= {threshold:.3f}) cover {classes} class(es); "
                       "a student would learn the teacher's bias")
            break
        if ssl.pseudo_labels == "soft":
            targets = torch.cat([task.soft_targets(class_labels(train)), task.soft_from_scores(pseudo.probs)])
        else:
            targets = torch.cat([class_labels(train), pseudo.labels])
        combined = concat_sources(train, unlabeled.subset(pseudo.index), targets)
        # The plan's share is a floor: with few pseudo-labels, the data's own proportion is larger.
        share = max(ssl.labeled_share, len(train) / len(combined))
        weights = torch.cat([share * _labeled_weights(plan, train), (1 - share) * pseudo.sample_weights()])
        batch = plan.optimization.batch_size
        splan = student_plan(plan, max(1, len(combined) // batch), model)
        student = copy.deepcopy(model)
        if initial_state is not None:
            student.load_state_dict(initial_state)
        batches = make_batches(combined, batch, runtime.device, train=True, seed=plan.seed + r,
                               num_workers=plan.runtime.num_workers or None, sample_weights=weights)
        if progress is not None:
            progress.log(f"noisy student round {r}: {len(pseudo.index)} pseudo-labels (confidence >= "
                         f"{threshold:.3f}, at most {pseudo.cap} per class), {len(train)} labeled images at "
                         f"{share:.0%} of each batch")
        round_deadline = None
        if deadline is not None:
            round_deadline = time.perf_counter() + (deadline - time.perf_counter()) / (ssl.noisy_student_rounds - r + 1)
        result = run_training(student, task, splan, batches, val_batches, runtime, normalizer, folder / f"student{r}",
                              deadline=round_deadline, final_eval_ratio=final_eval_ratio, progress=progress)
        history += [{"stage": f"student {r}", **row} for row in result.history]
        if math.isfinite(result.kept_metric):
            accepted, verdict = student_holds(teacher_val, predict(student, task, val, normalizer, runtime),
                                              val_targets)
        else:  # the budget cut its first epoch short: nothing says it learned anything
            accepted, verdict = False, "no epoch of the student was validated"
        rounds.append(Round(r, round(threshold, 4), why, len(pseudo.index), pseudo.counts, share,
                            len(result.history), round(best, 6), round(result.kept_metric, 6), accepted, verdict,
                            round(time.perf_counter() - start, 2)))
        if not accepted:
            stopped = f"round {r}: the student is significantly worse than its teacher ({verdict}); the teacher is kept"
            break
        model.load_state_dict(student.state_dict())
        best, accepted_result = result.kept_metric, result
        if deadline is not None and time.perf_counter() >= deadline:
            stopped = f"the time budget ended after round {r}"
            break
    return NoisyStudentResult(rounds, history, stopped, accepted_result)
