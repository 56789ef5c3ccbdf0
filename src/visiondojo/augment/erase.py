"""Random erasing (Zhong et al. 2020) / cutout: a rectangle per sample filled with uniform noise.

Magnitude m -> the erased area is up to 40 % * m of the image (uniform in [0, m] of that), with
an aspect ratio log-uniform in [1/3, 3]. Boxes and masks are not moved by erasing: an occluded
object is still there, which is the point; but a box whose object is mostly erased no longer
shows it, and the task drops it (``hidden_share``; ``Task.move_targets``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

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


def erase_regions(m: torch.Tensor, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """(N, 1, H, W) bool: the rectangle each sample loses at magnitude ``m`` (N,); empty where m is 0."""
    area = torch.rand(m.shape, generator=generator, device=m.device) * m * MAX_AREA
    return rectangles(area, size, generator)


def fill(images: torch.Tensor, regions: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``images`` with the ``regions`` replaced by uniform noise."""
    noise = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    return torch.where(regions, noise, images)


def erase(images: torch.Tensor, m: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return fill(images, erase_regions(m, images.shape[-2:], generator), generator)


def hidden_share(boxes: torch.Tensor, image: torch.Tensor, erased: torch.Tensor) -> torch.Tensor:
    """(M,) share of each box (xyxy pixels, in image ``image[i]`` of the batch) that ``erased``
    (N, 1, H, W bool) covers, counted on the pixels the box touches, through one summed-area
    table per image: the whole batch's boxes in one gather."""
    if len(boxes) == 0:
        return boxes.new_zeros(0)
    height, width = erased.shape[-2:]
    table = F.pad(erased[:, 0].float().cumsum(1).cumsum(2), (1, 0, 1, 0))  # (N, H + 1, W + 1)
    x1, x2 = boxes[:, 0].floor().clamp(0, width).long(), boxes[:, 2].ceil().clamp(0, width).long()
    y1, y2 = boxes[:, 1].floor().clamp(0, height).long(), boxes[:, 3].ceil().clamp(0, height).long()
    covered = table[image, y2, x2] - table[image, y1, x2] - table[image, y2, x1] + table[image, y1, x1]
    return covered / ((x2 - x1) * (y2 - y1)).clamp_min(1)
