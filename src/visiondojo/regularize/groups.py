"""Group (transform, magnitude) pairs of one family by how far they move the data.

Searching policies op by op is hopeless: |T| ops at |M| magnitudes combine into |T|^|M|-sized
spaces. But many pairs are interchangeable: rotating by 10 degrees and shearing by 12 move
Fashion-MNIST features about equally far. So the pairs of each family (spatial, color, contrast,
blur/sharpness, occlusion) are clustered by their distance (``distance.py``) into a few levels,
weak to strong, and each level becomes one group: a menu of pairs of similar strength, of which
each sample gets one at random (TrivialAugment-style within the group). The search then only
chooses a level per family.

Clustering is 1-D k-means on log distance, initialized at quantiles, so it is deterministic.
Pairs that barely move the data (distance below ``MIN_DISTANCE``: e.g. saturation on grayscale)
are dropped, they could only cost time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..plan import AugmentOp
from .distance import Distance

FAMILIES: dict[str, tuple[str, ...]] = {
    "spatial": ("hflip", "vflip", "rot90", "rotate", "shear", "translate", "zoom"),
    "color": ("brightness", "saturation", "hue", "solarize", "posterize"),
    "contrast": ("contrast", "autocontrast", "equalize", "gamma"),
    "blur_sharpness": ("blur", "sharpness", "noise"),
    "occlusion": ("erase",),
}
LEVELS = ("weak", "medium", "strong")
MIN_DISTANCE = 1e-3
_KMEANS_ROUNDS = 50


@dataclass
class Group:
    family: str
    level: str
    pairs: list[tuple[str, float]]
    """(op, magnitude) choices of similar strength."""
    distance: float
    """Geometric mean distance of the pairs."""

    @property
    def name(self) -> str:
        return f"{self.family}/{self.level}"

    def ops(self, p: float = 1.0) -> list[AugmentOp]:
        """The group as policy ops: one menu, one pair per sample."""
        return [AugmentOp(op, magnitude, p, group=self.name) for op, magnitude in self.pairs]


def family_of(op: str) -> str:
    return next(family for family, ops in FAMILIES.items() if op in ops)


def group_pairs(rows: list[Distance], levels: int = len(LEVELS)) -> list[Group]:
    """Per family, the pairs clustered into up to ``levels`` groups ordered weak to strong."""
    groups = []
    for family, ops in FAMILIES.items():
        pairs = [r for r in rows if r.op in ops and r.distance > MIN_DISTANCE]
        if not pairs:
            continue
        logs = [math.log(r.distance) for r in pairs]
        labels = _kmeans_1d(logs, min(levels, len(set(logs))))
        clusters = sorted(set(labels), key=lambda k: _mean([x for x, c in zip(logs, labels) if c == k]))
        names = _level_names(len(clusters))
        for name, k in zip(names, clusters):
            members = [r for r, c in zip(pairs, labels) if c == k]
            mean_log = _mean([math.log(r.distance) for r in members])
            groups.append(Group(family, name, [(r.op, r.magnitude) for r in members], round(math.exp(mean_log), 6)))
    return groups


def _level_names(count: int) -> tuple[str, ...]:
    return {1: ("medium",), 2: ("weak", "strong")}.get(count, LEVELS)


def _kmeans_1d(values: list[float], k: int) -> list[int]:
    ordered = sorted(values)
    centres = [ordered[min(len(ordered) - 1, int((i + 0.5) * len(ordered) / k))] for i in range(k)]
    labels = [0] * len(values)
    for _ in range(_KMEANS_ROUNDS):
        labels = [min(range(k), key=lambda j: abs(v - centres[j])) for v in values]
        updated = [_mean([v for v, c in zip(values, labels) if c == j]) if j in labels else centres[j]
                   for j in range(k)]
        if updated == centres:
            break
        centres = updated
    return labels


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
