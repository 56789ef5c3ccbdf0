"""Class balance: loss weights or balanced sampling when some classes are much rarer than others.

Trained on imbalanced data as it is, a model learns the prior: it scores well by favouring the
large classes and rarely predicts the small ones. Two remedies, chosen by the imbalance ratio
(largest class count over smallest):

- ratio < ``REWEIGHT_FROM``: nothing. The prior is mild and correcting it costs more variance
  than it removes bias.
- ``REWEIGHT_FROM`` <= ratio < ``RESAMPLE_FROM``: loss weights from the *effective number of
  samples* (Cui et al. 2019, "Class-Balanced Loss Based on Effective Number of Samples"). Samples
  of a class overlap in what they teach, so its n samples are worth only
  E_n = (1 - beta^n) / (1 - beta) <= n new ones; weighting class k by 1 / E_{n_k} interpolates
  between no reweighting (beta = 0) and inverse class frequency (beta -> 1).
- ratio >= ``RESAMPLE_FROM``: class-balanced sampling. With an extreme ratio the rare classes'
  loss weights are huge, so a batch that happens to hold one of their samples takes a step far
  larger than the rest and the gradient gets noisy; drawing every class equally often instead
  keeps each batch's loss on one scale.

Multi-label data works the same way with per-label positive counts as the class counts.

Segmentation counts pixels (``choose_pixel_balance``): no balance by default (measured: per-pixel
weights lost mIoU); pinned ``reweight`` uses the same effective-number weights with the beta of one
image's worth of pixels, and resampling does not apply (an image holds many classes).
"""

from __future__ import annotations

from numbers import Real

import torch

from ..errors import ConfigError

REWEIGHT_FROM = 3.0
"""Imbalance ratio from which the loss is reweighted by the effective number of samples."""
RESAMPLE_FROM = 20.0
"""Imbalance ratio from which batches are drawn class-balanced instead of reweighting the loss."""
MODES = ("none", "reweight", "resample")
"""The values of ``RegularizationParams.class_balance``."""


def imbalance_ratio(class_counts: list[int]) -> float:
    """Largest class count over smallest non-zero one (1.0 with fewer than two non-empty classes).

    Empty classes are left out: they contribute nothing to the loss, so they cannot skew it, and
    counting them would make the ratio infinite.
    """
    present = [count for count in class_counts if count > 0]
    return max(present) / min(present) if present else 1.0


def effective_number_weights(class_counts: list[int], beta: float) -> torch.Tensor:
    """Per-class loss weights 1 / E_{n_k}, E_n = (1 - beta^n) / (1 - beta) (Cui et al. 2019).

    Normalized to mean 1 over the classes that have samples (so they sum to K when every class
    has some, as in the paper): the loss keeps its usual scale and the learning rate planned for
    unweighted training still fits. Classes without samples get weight 0 and stay out of the
    normalization: no target ever selects them, and a share of the total for them would only
    shrink the weights that matter. Returns float32, shape (K,); beta = 0 gives all ones.
    """
    check_beta(beta)
    counts = torch.tensor(class_counts, dtype=torch.float64)
    present = counts > 0
    # float64: for beta near 1 and small n, 1 - beta^n is a small difference of numbers near 1.
    effective = (1.0 - torch.pow(beta, counts[present])) / (1.0 - beta)
    weights = torch.zeros_like(counts)
    weights[present] = 1.0 / effective
    if present.any():
        weights *= int(present.sum()) / weights.sum()
    return weights.to(torch.float32)


def check_beta(beta: float) -> None:
    # beta = 1 makes E_n = 0 / 0; the limit (inverse class frequency) is reached with beta -> 1.
    if not (isinstance(beta, Real) and 0.0 <= beta < 1.0):
        raise ConfigError(
            f"regularization.class_balance_beta is {beta!r}; it must be in [0, 1) "
            "(0: no reweighting, towards 1: inverse class frequency; 0.999 is common)"
        )


def sample_weights(targets: torch.Tensor, class_counts: list[int]) -> torch.Tensor:
    """Per-sample drawing weights under which every class is drawn equally often in expectation.

    Class-index targets (N,) weigh sample i by 1 / n_{y_i}: each class's samples then carry a
    total weight of 1. Multi-hot targets (N, K) weigh a sample by the mean of 1 / n_k over its
    positive labels, so a sample that carries a rare label is drawn more often. Samples without
    any positive label (background images) get the mean weight of the labelled ones: they teach
    every label's negative side, so they should neither vanish from training (weight 0) nor be
    boosted like a rare class, and at the average weight they are drawn about as often as a
    typical labelled sample. ``class_counts`` are the counts of these targets. Returns (N,) float32.
    """
    inverse = _inverse_counts(class_counts, targets.device)
    if targets.ndim == 1:
        return inverse[targets]
    return _multilabel_weights(targets > 0.5, inverse)


def _inverse_counts(class_counts: list[int], device: torch.device) -> torch.Tensor:
    """1 / n_k per class, 0 for empty classes (no target selects them; avoids inf)."""
    counts = torch.tensor(class_counts, dtype=torch.float32, device=device)
    return torch.where(counts > 0, 1.0 / counts.clamp(min=1.0), torch.zeros_like(counts))


def _multilabel_weights(positive: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    labels = positive.sum(dim=1)
    labelled = labels > 0
    weights = (positive.to(inverse.dtype) @ inverse) / labels.clamp(min=1)
    fill = weights[labelled].mean() if labelled.any() else torch.ones((), device=weights.device)
    return torch.where(labelled, weights, fill)


def choose_class_balance(class_counts: list[int]) -> tuple[str, str]:
    """(mode, why): the remedy for this imbalance, one of ``MODES``, and the reason in words.

    The thresholds ``REWEIGHT_FROM`` and ``RESAMPLE_FROM`` and the reasons are in the module
    docstring; ``why`` quotes the measured ratio against them so a report can show it as is.
    """
    ratio = imbalance_ratio(class_counts)
    measured = f"imbalance ratio {ratio:.1f} (largest class / smallest)"
    if ratio < REWEIGHT_FROM:
        return "none", f"{measured}: below {REWEIGHT_FROM:g}, the classes are balanced enough as they are"
    if ratio < RESAMPLE_FROM:
        return "reweight", (f"{measured}: between {REWEIGHT_FROM:g} and {RESAMPLE_FROM:g}, "
                            "loss weights from the effective number of samples")
    return "resample", (f"{measured}: {RESAMPLE_FROM:g} or more, class-balanced sampling "
                        "(loss weights this uneven would make the gradient noisy)")


PIXEL_REWEIGHT_MIOU = ((0.894, 0.909, 0.947), (0.687, 0.691, 0.756))
"""Test mIoU without and with per-pixel reweighting (3 seeds; a small U-Net, 12 epochs of 400 easy
32x32 scenes, pixel imbalance ratio ~14): the weights made it paint rare classes over the
background and lost 20 points. The measurement behind ``choose_pixel_balance``."""


def choose_pixel_balance(pixel_counts: list[int], pixels_per_image: float, beta: float) -> tuple[str, float, str]:
    """(mode, pixel beta, why) for per-pixel classes (segmentation). The mode is always ``none``:
    reweighting pixels by class lost mIoU in every measured run (``PIXEL_REWEIGHT_MIOU``), and
    ``resample`` cannot apply (one image holds pixels of many classes). ``reweight`` stays
    available to pin, and the pixel beta is for it.

    The pixels of one image are far from independent samples: with ``beta`` applied per pixel,
    E_n saturates at 1 / (1 - beta) for any class covering a few images' worth of pixels, and every
    weight comes out equal. The pixel beta ``beta ** (1 / pixels_per_image)`` makes an image's worth
    of pixels count as one sample, since beta'^n = beta^(n / P): the weights are those of the
    effective number of *images' worth* of each class (the normalization removes the factor P).
    """
    ratio = imbalance_ratio(pixel_counts)
    without, weighted = (sum(v) / len(v) for v in PIXEL_REWEIGHT_MIOU)
    pixel_beta = float(beta ** (1.0 / max(pixels_per_image, 1.0)))
    return "none", pixel_beta, (f"pixel imbalance ratio {ratio:.1f} (largest class's pixels / smallest's); per-pixel "
                                f"loss weights lowered mIoU in visiondojo's measurements (mean {without:.3f} -> "
                                f"{weighted:.3f} over 3 seeds: rare classes painted over the background), so none")
