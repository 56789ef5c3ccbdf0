"""Random erasing (Zhong et al. 2020) / cutout: a rectangle per sample filled with uniform noise.

Magnitude m -> the erased area is up to 40 % * m of the image (uniform in [0, m] of that), with
an aspect ratio log-uniform in [1/3, 3]. Boxes and masks are not moved by erasing: an occluded
object is still there, which is the point.
"""

from __future__ import annotations

import math

import torch

MAX_AREA = 0.4
ASPECT = 3.0


def rectangles(area: torch.Tensor, size: tuple[int, int], generator: torch.Generator,
               aspect: float = ASPECT, centred_anywhere: bool = False) -> torch.Tensor:
    """(N, 1, H, W) bool: one rectangle per sample covering ``area`` (a share of the image, (N,)).

    Shared with CutMix. The rectangle lies inside the image unless ``centred_anywhere``, where its
    centre is uniform over the image and it is clipped (CutMix's rule).
    """
    height, width = size
    device = area.device
    log_ratio = (torch.rand(area.shape, generator=generator, device=device) * 2 - 1) * math.log(aspect)
    ratio = log_ratio.exp()
    h = (area * height * width * ratio).sqrt().clamp(max=height)
    w = (area * height * width / ratio).sqrt().clamp(max=width)
    u, v = torch.rand((2, len(area)), generator=generator, device=device)
    if centred_anywhere:
        top, left = v * height - h / 2, u * width - w / 2
    else:
        top, left = v * (height - h), u * (width - w)
    ys = torch.arange(height, device=device).view(1, height, 1) + 0.5
    xs = torch.arange(width, device=device).view(1, 1, width) + 0.5
    inside = (ys >= top.view(-1, 1, 1)) & (ys < (top + h).view(-1, 1, 1)) & \
             (xs >= left.view(-1, 1, 1)) & (xs < (left + w).view(-1, 1, 1))
    return inside.unsqueeze(1)


def erase(images: torch.Tensor, m: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    area = torch.rand(m.shape, generator=generator, device=m.device) * m * MAX_AREA
    region = rectangles(area, images.shape[-2:], generator)
    fill = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    return torch.where(region, fill, images)
