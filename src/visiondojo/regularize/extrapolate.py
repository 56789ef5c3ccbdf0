"""How a policy's gain measured on subsets carries over to the whole training set.

Regularization pays against memorization, and a model memorizes a small set sooner: the same
policy that gains two points on 1,000 images may gain nothing on 54,000 (Fashion-MNIST: the policy
search's 1k-image proxies adopted a menu that cost the 54k-image run 0.58 points). Measured at two
subset sizes, the gain is modelled as linear in log(size), the usual shape of learning curves over
a modest range of sizes, and read off at the training set's size.

The slope is capped at zero: a gain that grows with data would be a bet on an extrapolation over
an order of magnitude from two noisy points, so the larger subset's gain is the most the run is
credited with. A gain that shrinks is followed, and a policy whose gain would vanish before the
run's size is not adopted.
"""

from __future__ import annotations

import math
from typing import Sequence


def extrapolate_gain(sizes: Sequence[int], gains: Sequence[float], target_size: int) -> float:
    """Gain at ``target_size`` from gains measured at ``sizes`` (least squares in log size, slope <= 0)."""
    if len(sizes) != len(gains) or not sizes:
        raise ValueError(f"extrapolate_gain: {len(sizes)} sizes and {len(gains)} gains; give one gain per size")
    if len(set(sizes)) < 2:
        return float(gains[-1])
    xs = [math.log(size) for size in sizes]
    mean_x, mean_y = sum(xs) / len(xs), sum(gains) / len(gains)
    slope = (sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, gains))
             / sum((x - mean_x) ** 2 for x in xs))
    slope = min(slope, 0.0)
    largest = max(range(len(sizes)), key=lambda i: sizes[i])
    # Anchored at the largest subset (its gain is the least noisy and nearest the run's regime).
    at_largest = mean_y + slope * (xs[largest] - mean_x) if slope < 0 else float(gains[largest])
    return at_largest + slope * (math.log(max(target_size, 1)) - xs[largest])
