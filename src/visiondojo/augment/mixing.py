"""Soft labels as batch operations: label smoothing, mixup and CutMix (and CutMix on masks).

Targets here are soft: float tensors shaped like what the task's loss compares the outputs
with ((N, K) class probabilities, (N,) binary or (N, K) multi-label probabilities), made by the
task's ``soft_targets``. Every mixed sample i draws its own weight lambda_i ~ Beta(a, a) and a
partner pi(i) from a random permutation of the batch; its target becomes
lambda_i * y_i + (1 - lambda_i) * y_pi(i), so a sample's target weights always sum to 1.

Magnitudes: mixup m and cutmix m are the Beta concentration a (0 is off; 0.2 is the common
ImageNet mixup setting, 1.0 the common CutMix one, where lambda is uniform). CutMix's box covers
1 - lambda of the image, its centre uniform over the image, clipped; lambda is then recomputed
from the pixels actually pasted, so the target matches the image exactly.
"""

from __future__ import annotations

import torch

from .erase import rectangles

_GAMMA_ROUNDS = 16


def sample_gamma(shape: float, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """n draws of Gamma(shape, 1) from ``generator`` (torch's own sampler takes no generator).

    Marsaglia & Tsang (2000) for shape >= 1, vectorized: each round accepts > 95 % of the draws
    still pending. Shapes below 1 use Gamma(a) = Gamma(a + 1) * U^(1/a).
    """
    boost = shape < 1
    d = (shape + 1 if boost else shape) - 1 / 3
    c = 1 / (9 * d) ** 0.5
    out = torch.zeros(n, device=device)
    pending = torch.ones(n, dtype=torch.bool, device=device)
    for _ in range(_GAMMA_ROUNDS):
        z = torch.randn(n, generator=generator, device=device)
        u = torch.rand(n, generator=generator, device=device)
        v = (1 + c * z) ** 3
        accept = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * torch.log(v.clamp_min(1e-30)))
        take = pending & accept
        out = torch.where(take, d * v, out)
        pending = pending & ~take
    out = torch.where(pending, torch.full_like(out, d), out)  # after 16 rounds: p(pending) < 1e-20
    if boost:
        out = out * torch.rand(n, generator=generator, device=device).pow(1 / shape)
    return out


def sample_beta(a: float, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """n draws of Beta(a, a)."""
    x = sample_gamma(a, n, generator, device)
    y = sample_gamma(a, n, generator, device)
    return x / (x + y).clamp_min(1e-30)


def smooth(soft_targets: torch.Tensor, epsilon: float, num_classes: int) -> torch.Tensor:
    """Move ``epsilon`` of the target mass to the uniform distribution over ``num_classes``
    (2 for binary and multi-label targets, whose every entry is its own yes/no)."""
    return soft_targets * (1 - epsilon) + epsilon / num_classes


def mix(images: torch.Tensor, targets: torch.Tensor, mixup: float, cutmix: float, generator: torch.Generator,
        masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Mixup and/or CutMix per sample; with both on, each sample gets one of them at random.

    ``masks`` (N, H, W) (segmentation) are cut and pasted with the images; mixup leaves a
    sample's mask alone, since a pixel cannot take two classes.
    Returns (images, targets, masks); the mixing weight of a sample's own target is ``lam`` in [0, 1].
    """
    n = len(images)
    device = images.device
    if n < 2 or (mixup <= 0 and cutmix <= 0):
        return images, targets, masks
    partner = torch.randperm(n, generator=generator, device=device)
    use_cut = torch.zeros(n, dtype=torch.bool, device=device)
    if cutmix > 0 and mixup > 0:
        use_cut = torch.rand(n, generator=generator, device=device) < 0.5
    elif cutmix > 0:
        use_cut = torch.ones(n, dtype=torch.bool, device=device)
    lam = torch.ones(n, device=device)
    out = images
    if mixup > 0:
        lam_mix = sample_beta(mixup, n, generator, device)
        lam = torch.where(use_cut, lam, lam_mix)
        mixed = torch.lerp(images[partner], images, lam_mix.view(-1, 1, 1, 1).to(images.dtype))
        out = torch.where(use_cut.view(-1, 1, 1, 1), out, mixed)
    if cutmix > 0:
        lam_cut = sample_beta(cutmix, n, generator, device)
        region = rectangles(1 - lam_cut, images.shape[-2:], generator, aspect=1.0,
                            centred_anywhere=True) & use_cut.view(-1, 1, 1, 1)
        out = torch.where(region, images[partner], out)
        pasted = region.flatten(1).float().mean(dim=1)
        lam = torch.where(use_cut, 1 - pasted, lam)
        if masks is not None:
            masks = torch.where(region[:, 0], masks[partner], masks)
    weight = lam.view(-1, *([1] * (targets.ndim - 1))).to(targets.dtype)
    return out, torch.lerp(targets[partner], targets, weight), masks
