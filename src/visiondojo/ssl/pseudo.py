"""Pseudo-labels for Noisy Student: the teacher's confident predictions, class-balanced.

- **Threshold from validation.** A pseudo-label is kept when the teacher's confidence (its top
  class probability) reaches a threshold. The threshold is the lowest confidence at which the
  teacher's kept *validation* predictions halve its error rate (precision >= (1 + accuracy) / 2):
  a weak teacher keeps only what it is sure of, a strong one keeps nearly everything. Fewer than
  ``MIN_VAL`` validation images cannot say that, and then ``DEFAULT_THRESHOLD`` is used.
- **Class balance** (Xie et al. 2020). A teacher over-predicts the classes it likes; a student
  trained on that inherits and amplifies the skew. Per predicted class at most ``K`` (the median
  count over classes) of the most confident images are kept; classes with fewer than ``K`` keep
  all theirs and are drawn more often (``sample_weights``), which is duplication without copies.

Binary tasks use the two-class view [1 - p, p]. Multi-label pseudo-labels are not made here
(a confidence per label would need its own threshold per label); ``choose.py`` skips Noisy
Student for them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..data.batches import Normalizer, make_batches
from ..data.sources import Source
from ..engine.runtime import Runtime
from ..engine.step import eval_outputs
from ..tasks import Task

DEFAULT_THRESHOLD = 0.7
MIN_VAL = 20
PREDICT_BATCH = 512


@dataclass
class PseudoLabels:
    index: torch.Tensor
    """(M,) positions in the unlabeled source of the kept images."""
    labels: torch.Tensor
    """(M,) int64 classes."""
    confidence: torch.Tensor
    """(M,) the teacher's probability of that class."""
    probs: torch.Tensor
    """(M, K) the teacher's class probabilities: the soft pseudo-labels."""
    threshold: float
    counts: list[int]
    """Kept images per class."""
    cap: int
    """Most images kept per class."""

    def sample_weights(self) -> torch.Tensor:
        """(M,) draw weights that give every class the same share (rare classes drawn more often)."""
        counts = torch.bincount(self.labels, minlength=len(self.counts)).clamp_min(1).double()
        weights = 1.0 / counts[self.labels]
        return weights / weights.sum()


@torch.no_grad()
def predict(model: nn.Module, task: Task, source: Source, normalizer: Normalizer, runtime: Runtime) -> torch.Tensor:
    """(N, K) class probabilities of every image in ``source``, in order, on the CPU."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for images, _ in make_batches(source, PREDICT_BATCH, runtime.device, train=False):
            out.append(task.scores(eval_outputs(model, task, runtime, normalizer(images))).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def choose_threshold(val_probs: torch.Tensor, val_targets: torch.Tensor) -> tuple[float, str]:
    """(threshold, why): the lowest confidence whose kept validation predictions halve the error rate."""
    if len(val_targets) < MIN_VAL:
        return DEFAULT_THRESHOLD, (f"{len(val_targets)} validation images are too few to calibrate; "
                                   f"default {DEFAULT_THRESHOLD}")
    confidence, predicted = val_probs.max(dim=1)
    correct = (predicted == val_targets).double()
    accuracy = float(correct.mean())
    target = (1 + accuracy) / 2
    order = confidence.argsort(descending=True)
    ranked = confidence[order]
    precision = correct[order].cumsum(0) / torch.arange(1, len(order) + 1, dtype=torch.float64)
    # A threshold keeps every tie of its confidence, so only the last of equal confidences is a cut.
    cut = torch.ones(len(order), dtype=torch.bool)
    cut[:-1] = ranked[:-1] != ranked[1:]
    ok = ((precision >= target) & cut).nonzero()
    if len(ok) == 0:  # not even the teacher's surest predictions are right often enough
        return math.inf, f"no confidence level reaches precision {target:.3f} on validation: no pseudo-labels"
    last = int(ok[-1])
    threshold = float(confidence[order[last]])
    return threshold, (f"teacher validation accuracy {accuracy:.3f}: the {last + 1} of {len(order)} validation "
                       f"predictions with confidence >= {threshold:.3f} are {float(precision[last]):.3f} right "
                       f"(target {target:.3f}: half the errors)")


def select(probs: torch.Tensor, threshold: float) -> PseudoLabels:
    """The confident predictions, at most the median class count per class (most confident first)."""
    num_classes = probs.shape[1]
    confidence, labels = probs.max(dim=1)
    confident = (confidence >= threshold).nonzero()[:, 0]
    per_class = [confident[labels[confident] == k] for k in range(num_classes)]
    sizes = [len(members) for members in per_class]
    present = sorted(size for size in sizes if size > 0)
    cap = present[(len(present) - 1) // 2] if present else 0  # the lower median
    kept = [members[confidence[members].argsort(descending=True)[:cap]] for members in per_class]
    index = torch.cat(kept).sort().values if kept else torch.zeros(0, dtype=torch.int64)
    return PseudoLabels(index, labels[index], confidence[index], probs[index], threshold,
                        [min(size, cap) for size in sizes], cap)
