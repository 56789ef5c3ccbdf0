"""Self-supervised losses over two views of a batch: row n of ``z1`` and of ``z2`` embed the same image.

Both are pure functions of the two (N, D) embeddings, computed in float32 whatever the autocast
dtype of the embeddings (the exponentials of NT-Xent and the D x D correlations of Barlow Twins
lose too much in bf16), and both are invariant to a common rescaling of the embeddings, so
the projector's output scale never needs tuning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BARLOW_EPS = 1e-5
"""Added to each dimension's batch variance before dividing by its square root (as BatchNorm does):
a dimension that is constant over the batch standardizes to 0 instead of NaN."""


def _check_pair(z1: torch.Tensor, z2: torch.Tensor) -> None:
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"expected two (N, D) embeddings of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalized temperature-scaled cross-entropy (Chen et al. 2020, "A Simple Framework
    for Contrastive Learning of Visual Representations", eq. 1).

    The 2N embeddings ``u_k = z_k / ||z_k||`` (views 1 then 2) give similarities
    ``s_kl = u_k . u_l / temperature``. Each embedding is an anchor whose positive ``p(k)`` is the
    other view of its image and whose negatives are the other 2N - 2 embeddings of the batch:

        l(k) = -log( exp(s_k,p(k)) / sum_{l != k} exp(s_kl) ),    L = 1/(2N) sum_k l(k).

    The self-similarity (always 1 / temperature) is left out of the denominator. A low
    temperature sharpens the softmax onto the hardest negatives (SimCLR used 0.1-0.5).
    """
    _check_pair(z1, z2)
    n = len(z1)
    u = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = (u @ u.T) / temperature
    itself = torch.eye(2 * n, dtype=torch.bool, device=u.device)
    logits = logits.masked_fill(itself, float("-inf"))
    partner = torch.arange(2 * n, device=u.device).roll(n)  # k -> (k + N) mod 2N
    return F.cross_entropy(logits, partner)


def barlow_twins(z1: torch.Tensor, z2: torch.Tensor, off_diagonal_weight: float | None = None) -> torch.Tensor:
    """Barlow Twins' redundancy-reduction loss (Zbontar et al. 2021, "Barlow Twins: Self-Supervised
    Learning via Redundancy Reduction", eq. 1).

    Each embedding dimension is standardized over the batch, per view (population variance, plus
    ``BARLOW_EPS``), so ``C = z1^T z2 / N`` is the D x D cross-correlation matrix of the two views,
    entries in [-1, 1]. The loss pulls it towards the identity:

        L = sum_i (1 - C_ii)^2  +  lambda * sum_i sum_{j != i} C_ij^2.

    The first term makes each dimension invariant to the augmentation, the second decorrelates
    the dimensions, which is what prevents collapse without negatives.

    ``lambda`` defaults to 1/D: row i's off-diagonal term is then the *mean* of its D - 1 squared
    cross-correlations (times (D - 1)/D), so invariance and redundancy reduction keep the same
    balance at any projector width. The paper's 5e-3 was tuned for D = 8192, where it is about
    41/D: a heavier decorrelation weight that at the widths used here (128-2048) would go from
    0.6/D to 10/D as the width changes.
    """
    _check_pair(z1, z2)
    n, d = z1.shape
    weight = 1.0 / d if off_diagonal_weight is None else off_diagonal_weight
    c = _standardized(z1).T @ _standardized(z2) / n
    diagonal = c.diagonal()
    on = (1 - diagonal).square().sum()
    off = c.square().sum() - diagonal.square().sum()
    return on + weight * off


def _standardized(z: torch.Tensor) -> torch.Tensor:
    """Each column to mean 0 and (population) variance 1 over the batch, in float32."""
    z = z.float()
    mean = z.mean(dim=0)
    variance = z.var(dim=0, unbiased=False)
    return (z - mean) / torch.sqrt(variance + BARLOW_EPS)
