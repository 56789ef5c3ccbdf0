"""The SSL meta-learner: which methods run, for how long, and the weight of the unlabeled loss.

Decided from the amounts of labeled (n_l) and unlabeled (n_u) images, the measured training
throughput and the time left, before anything trains, with the reasons in the plan:

- **Representation pretraining** (SimCLR or Barlow Twins) needs many passes over the images
  with two views each: both papers report most of their gain only after 100+ epochs, and
  fewer passes give features that a supervised run on the same time beats. So it runs when
  ``PRETRAIN_SHARE`` of the time affords at least ``MIN_PRETRAIN_EPOCHS`` two-view passes over
  all images, and only when the unlabeled images are at least as many as the labeled ones (else
  supervised training already sees most of them). Barlow Twins below a pretraining batch of
  ``SIMCLR_MIN_BATCH``, SimCLR above: NT-Xent draws its negatives from the batch and loses
  accuracy fast below 512 (Chen et al. 2020, fig. 9), Barlow Twins needs no negatives and is
  flat down to 256 (Zbontar et al. 2021, fig. 2).
- **Noisy Student** runs for single-label tasks when the unlabeled images are at least
  ``MIN_UNLABELED_RATIO`` of the labeled ones and the time affords at least one student of
  ``MIN_STUDENT_EPOCHS`` epochs over the labeled + (expected) pseudo-labeled images; up to
  ``MAX_ROUNDS`` rounds, as many as the time affords at that length.
- **Pseudo-labels** are hard (the teacher's top class): soft ones (its probabilities) measured no
  better.
- **The teacher** gets the time for ``TEACHER_EPOCHS`` epochs of the labeled images (plus the
  meta-learners' and policy search's shares of its budget), within ``TEACHER_SHARE``.
- **Weight of the unlabeled loss**: each student batch draws at least ``labeled_share`` =
  max(n_l / (n_l + n_u), 1 / (1 + ``MU``)) of its images from the labeled set: the data's own
  proportion, but never fewer labeled images than FixMatch's 1 : 7 (Sohn et al. 2020), so that
  true labels are not drowned by many pseudo-labels (a round that keeps few pseudo-labels uses
  its own, larger proportion).

Without a budget: pretraining runs ``NO_BUDGET_PRETRAIN_EPOCHS`` when the data is large enough,
students train like the teacher (until early stopping), and rounds run while students improve.
"""

from __future__ import annotations

import math
import time

from ..choose import META_SHARE
from ..data.batches import Normalizer
from ..engine.runtime import Runtime
from ..optimize.length import measure_throughput
from ..plan import Plan
from ..prepare import Prepared
from ..regularize.choose import SEARCH_SHARE
from ..data.sources import Source
from .backbone import feature_dim, find_feature_layer
from .pretrain import suggested_projector_dim

PRETRAIN_SHARE = 0.5
MIN_PRETRAIN_EPOCHS = 100
MAX_PRETRAIN_EPOCHS = 300
NO_BUDGET_PRETRAIN_EPOCHS = 100
SIMCLR_MIN_BATCH = 512
PRETRAIN_BATCH = {"cpu": 256, "cuda": 512}
PRETRAIN_LR = 1e-3
"""AdamW's learning rate at batch 256, scaled linearly with the batch."""
MIN_UNLABELED_RATIO = 0.25
MIN_STUDENT_EPOCHS = 4
"""Shortest student worth a round. Students start from their teacher, so a few epochs over the
pseudo-labels already pay, and on the same time three short rounds did at least as well as one
long one: Fashion-MNIST, 1,000 labels, a 0.842 teacher, three 210 s rounds of 3-4 epochs gave
0.855 -> 0.864 -> 0.872 test, one 630 s round of 11 epochs 0.869 (one run each)."""
MAX_ROUNDS = 3
EXPECTED_KEPT = 0.7
"""Share of the unlabeled images a round is expected to pseudo-label (for planning its length)."""
TEACHER_EPOCHS = 200
TEACHER_SHARE = (0.1, 0.5)
MU = 7
STUDENT_DROPOUT = 0.2
"""Dropout before the student's head: Noisy Student's noise (the paper uses 0.5 on ImageNet-scale
models; a lighter rate suits the small models and short runs visiondojo trains on a CPU)."""
THROUGHPUT_BATCH = 256


def choose_ssl(plan: Plan, prep: Prepared, unlabeled: Source | None, runtime: Runtime, *,
               deadline: float | None) -> None:
    """Fill ``plan.ssl`` with its evidence (from a short throughput measurement)."""
    if unlabeled is None:
        plan.evidence["ssl"] = "no unlabeled data: no semi-supervised learning"
        return
    n_l, n_u = len(prep.train), len(unlabeled)
    normalizer = Normalizer(prep.data, runtime.device, plan.runtime.channels_last)
    speed = measure_throughput(prep.model, prep.task, prep.train, runtime, normalizer, plan.optimization,
                               min(THROUGHPUT_BATCH, n_l), seed=plan.seed)
    ips = speed.train_images_per_s
    left = deadline - time.perf_counter() if deadline is not None else None
    plan.measurements["ssl_choice"] = {"labeled": n_l, "unlabeled": n_u, "train_images_per_s": round(ips, 1),
                                       "time_left_s": round(left, 1) if left is not None else None}
    ssl = plan.ssl
    pinned = plan.is_pinned

    # Representation pretraining.
    batch = PRETRAIN_BATCH.get(runtime.device.type, PRETRAIN_BATCH["cpu"])
    affordable = (PRETRAIN_SHARE * left * ips / (2 * (n_l + n_u)) if left is not None
                  else NO_BUDGET_PRETRAIN_EPOCHS)
    if n_u < n_l:
        method, why = "none", f"{n_u} unlabeled images are fewer than the {n_l} labeled ones: supervised training sees most images anyway"
    elif affordable < MIN_PRETRAIN_EPOCHS:
        method, why = "none", (f"{PRETRAIN_SHARE:.0%} of the time affords {affordable:.1f} two-view passes over the "
                               f"{n_l + n_u} images, under the {MIN_PRETRAIN_EPOCHS} contrastive pretraining needs")
    elif batch < SIMCLR_MIN_BATCH:
        method, why = "barlow_twins", (f"{affordable:.0f} two-view passes affordable; batch {batch} is below "
                                       f"{SIMCLR_MIN_BATCH}, where Barlow Twins (no negatives) beats SimCLR")
    else:
        method, why = "simclr", f"{affordable:.0f} two-view passes affordable at batch {batch}, enough negatives for SimCLR"
    plan.choose("ssl.pretrain", method, why)
    if ssl.pretrain != "none":
        epochs = min(MAX_PRETRAIN_EPOCHS, int(affordable))
        plan.choose("ssl.pretrain_epochs", epochs, f"{epochs} passes over labeled + unlabeled images")
        plan.choose("ssl.pretrain_batch_size", batch, f"{runtime.device.type}: {batch}")
        plan.choose("ssl.pretrain_lr", PRETRAIN_LR * ssl.pretrain_batch_size / 256,
                    f"AdamW {PRETRAIN_LR:g} at batch 256, scaled linearly")
        layer = find_feature_layer(prep.model, ssl.feature_layer)
        features = feature_dim(prep.model, layer, plan.data.channels, plan.data.height, plan.data.width)
        plan.choose("ssl.projector_dim", suggested_projector_dim(ssl.pretrain, features),
                    f"{features} features at {layer!r}: " + ("SimCLR's 128" if ssl.pretrain == "simclr" else
                                                            "Barlow Twins gains from a wider projector"))
    pretrain_s = (ssl.pretrain_epochs * 2 * (n_l + n_u) / ips) if ssl.pretrain != "none" else 0.0
    if left is not None:
        pretrain_s = min(pretrain_s, PRETRAIN_SHARE * left)  # pretraining stops there (api._pretrain)
    plan.measurements["ssl_choice"]["pretrain_s"] = round(pretrain_s, 1)

    # Noisy Student and the teacher's share.
    student_images = n_l + EXPECTED_KEPT * n_u
    student_epoch_s = student_images / ips + len(prep.val) / speed.eval_images_per_s
    teacher_s = TEACHER_EPOCHS * n_l / ips / (1 - META_SHARE - SEARCH_SHARE)
    after = left - pretrain_s if left is not None else None
    share = min(max(teacher_s / after, TEACHER_SHARE[0]), TEACHER_SHARE[1]) if after and after > 0 else 1.0
    rounds, epochs = 0, 0
    if plan.data.task == "multilabel":
        why = "multi-label data: Noisy Student's pseudo-labels are single-label only"
    elif not prep.task.capabilities.soft_labels:
        why = f"{prep.task.name}: no soft labels for a teacher's pseudo-labels"
    elif n_u < MIN_UNLABELED_RATIO * n_l:
        why = f"{n_u} unlabeled images are under {MIN_UNLABELED_RATIO:.0%} of the {n_l} labeled ones: too few to matter"
    elif after is None:
        rounds, epochs = MAX_ROUNDS, 0
        why = (f"no time budget: up to {MAX_ROUNDS} rounds, while no student is significantly worse than its "
               "teacher")
    else:
        students_s = (1 - share) * after
        rounds = min(MAX_ROUNDS, math.floor(students_s / (MIN_STUDENT_EPOCHS * student_epoch_s)))
        epochs = math.floor(students_s / max(rounds, 1) / student_epoch_s)
        why = (f"{students_s:.0f}s for students at {student_epoch_s:.1f}s per epoch over ~{student_images:.0f} "
               f"images: {rounds} round(s) of {epochs} epochs (at least {MIN_STUDENT_EPOCHS} each)")
    plan.choose("ssl.noisy_student_rounds", rounds, why)
    if ssl.noisy_student_rounds:
        plan.choose("ssl.student_epochs", epochs, why)
        plan.choose("ssl.teacher_share", round(share, 4),
                    f"{TEACHER_EPOCHS} epochs of the {n_l} labeled images take ~{teacher_s:.0f}s with its "
                    f"meta-learning and policy search; within {TEACHER_SHARE[0]:.0%}-{TEACHER_SHARE[1]:.0%}")
        labeled_share = max(n_l / (n_l + n_u), 1 / (1 + MU))
        plan.choose("ssl.labeled_share", round(labeled_share, 4),
                    f"max(n_l / (n_l + n_u), 1 / (1 + {MU})): the unlabeled loss weighs "
                    f"{(1 - labeled_share) / labeled_share:.1f}x the labeled one")
        plan.choose("ssl.student_dropout", STUDENT_DROPOUT, "Noisy Student's dropout noise before the head")
        plan.choose("ssl.pseudo_labels", "hard",
                    "the teacher's top class: soft labels (its probabilities) did no better (Fashion-MNIST, 1,000 "
                    "labels, one 250 s student: 0.852 soft, 0.855 soft without a threshold, 0.856 hard)")
        plan.choose("ssl.student_init", "teacher",
                    "students start from their teacher's weights: in the few epochs a budget allows they get further "
                    "than from scratch (Fashion-MNIST, 1,000 labels, 20k unlabeled, 300 s: 0.859 vs 0.842)")
