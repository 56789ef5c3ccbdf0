"""Paired comparisons: does candidate B beat baseline A on the same validation images?

Every accept/reject a meta-learner makes from proxy scores (an augmentation level, a soft-label
option, a Noisy Student student) goes through here. Two accuracies read on 1,000 images each
differ by about 1.3 points from noise alone, more than most policies differ in the real run; on
the same images, most of that noise cancels: only the images exactly one of the two gets right
carry evidence (McNemar's exact test, a sign test on the discordant images). Under "B is no
better" B wins each with chance at most 1/2, so the one-sided binomial tail of B's wins is the
p-value.

A decision needs three things:

- **significance**: p below ``ALPHA`` (divided by the options tried against the same baseline);
- **a minimum effect**: B ahead by at least ``MIN_EFFECT`` of the images; smaller gains are
  not worth a more complex policy, and a proxy's gain shrinks on the real run's larger data;
- **power**: when the test is not significant, was it able to see ``MIN_EFFECT`` at all? With the
  discordance observed, the chance of detecting an effect of that size is computed; below
  ``POWER`` the comparison is *underpowered*, and the simpler option stays for want of evidence,
  not because the candidate was shown no better.

When the evidence is not there the baseline (the simpler option) wins: a policy change must earn
its place. ``images_needed`` sizes a validation subset so the minimum effect is detectable.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from scipy.stats import binom, norm

ALPHA = 0.05
MIN_EFFECT = 0.01
"""Smallest gain (share of the validation images) a candidate must show: one point. The issue
data: on Fashion-MNIST, 1k-image proxies over-rewarded regularization by more than half a point
that the 54k-image run did not need."""
POWER = 0.8
DISCORDANCE_PRIOR = 0.08
"""Share of validation images two proxy trainings of the same model disagree on, for sizing a
validation subset before any proxy ran (Fashion-MNIST proxies: 6-12 %)."""


@dataclass
class PairedTest:
    """The evidence of one comparison, as the plan records it."""

    images: int
    """Validation units compared (images; image x label for multi-label tasks)."""
    candidate_only: int
    """Units only the candidate got right."""
    baseline_only: int
    effect: float
    """(candidate_only - baseline_only) / images: the candidate's accuracy gain."""
    p_value: float
    """One-sided exact sign test of "the candidate is no better"."""
    power: float
    """Chance this test detects a gain of ``min_effect`` at the observed discordance."""
    alpha: float
    min_effect: float
    verdict: str
    """accepted, below the minimum effect, underpowered, or not significant."""
    unit: str = "images"
    """What a unit is (``Task.unit``): images, image labels, objects."""

    @property
    def accepted(self) -> bool:
        return self.verdict == "accepted"

    def describe(self) -> str:
        return (f"{self.verdict}: {self.effect:+.2%} on {self.images} {self.unit} ({self.candidate_only} only the "
                f"candidate, {self.baseline_only} only the baseline got right; sign test p = {self.p_value:.3g} vs "
                f"{self.alpha:.3g}, power {self.power:.2f} for a {self.min_effect:.1%} gain)")

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["p_value"] = float(f"{self.p_value:.4g}")
        values["power"] = round(self.power, 3)
        values["effect"] = round(self.effect, 5)
        return values


def sign_test_p(wins: int, losses: int) -> float:
    """One-sided exact p-value of ``wins`` or more among ``wins + losses`` fair coin flips."""
    n = wins + losses
    return float(binom.sf(wins - 1, n, 0.5)) if n else 1.0


def detection_power(images: int, discordance: float, effect: float, alpha: float = ALPHA) -> float:
    """Chance the one-sided sign test at ``alpha`` detects a true gain of ``effect`` on ``images``
    units when a share ``discordance`` of them are discordant.

    The discordant count is taken at its expectation; given it, the candidate wins each discordant
    unit with chance (1 + effect / discordance) / 2.
    """
    discordant = max(int(round(images * discordance)), 0)
    if discordant == 0 or effect <= 0:
        return 0.0
    p_win = min(0.5 * (1 + effect / max(discordance, effect)), 1.0)
    critical = int(binom.isf(alpha, discordant, 0.5)) + 1  # smallest count with P(X >= count) <= alpha
    return float(binom.sf(critical - 1, discordant, p_win))


def images_needed(effect: float = MIN_EFFECT, discordance: float = DISCORDANCE_PRIOR, alpha: float = ALPHA,
                  power: float = POWER) -> int:
    """Validation units for the sign test to detect ``effect`` with ``power`` (normal approximation)."""
    p_win = 0.5 * (1 + effect / max(discordance, effect))
    z_a, z_b = norm.isf(alpha), norm.isf(1 - power)
    discordant = ((z_a * 0.5 + z_b * math.sqrt(p_win * (1 - p_win))) / (p_win - 0.5)) ** 2
    return math.ceil(discordant / discordance)


def detectable_effect(images: int, discordance: float = DISCORDANCE_PRIOR, alpha: float = ALPHA,
                      power: float = POWER) -> float:
    """Smallest gain ``images`` validation units detect with ``power`` (1.0 when none below it)."""
    low, high = 1e-4, 1.0
    if images_needed(high, discordance, alpha, power) > images:
        return 1.0
    for _ in range(40):  # images_needed falls as the effect grows: bisect
        middle = (low + high) / 2
        low, high = (low, middle) if images_needed(middle, discordance, alpha, power) <= images else (middle, high)
    return high


def paired_test(baseline_right: torch.Tensor, candidate_right: torch.Tensor, *, alpha: float = ALPHA,
                min_effect: float = MIN_EFFECT, unit: str = "images") -> PairedTest:
    """Whether the candidate beats the baseline on the same validation units (bool tensors of equal length)."""
    if baseline_right.shape != candidate_right.shape:
        raise ValueError(f"paired test: {tuple(baseline_right.shape)} and {tuple(candidate_right.shape)} "
                         "correctness vectors differ; both must score the same validation images")
    a, b = baseline_right.bool().reshape(-1), candidate_right.bool().reshape(-1)
    n = a.numel()
    candidate_only, baseline_only = int((b & ~a).sum()), int((a & ~b).sum())
    effect = (candidate_only - baseline_only) / max(n, 1)
    p = sign_test_p(candidate_only, baseline_only)
    discordance = (candidate_only + baseline_only) / max(n, 1)
    power = detection_power(n, max(discordance, DISCORDANCE_PRIOR / 4), min_effect, alpha)
    if p < alpha and effect >= min_effect:
        verdict = "accepted"
    elif p < alpha:
        verdict = "below the minimum effect"
    elif power < POWER:
        verdict = "underpowered"
    else:
        verdict = "not significant"
    return PairedTest(n, candidate_only, baseline_only, effect, p, power, alpha, min_effect, verdict, unit)
