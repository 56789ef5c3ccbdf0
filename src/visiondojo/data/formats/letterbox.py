"""Letterboxing: images of many sizes onto one training canvas, aspect kept, and back again.

Detection data on disk comes in every size and shape; a batch needs one. Stretching every image to
a square would change the objects' aspect ratios (a person in a portrait photo would train as a
squat one), so each image is scaled as a whole until its longer side fits the canvas (small images
are scaled up too, so objects keep the same share of the canvas) and the rest of the canvas is
padded. The padding goes to the bottom and right: the image keeps its top-left corner at (0, 0),
so a box maps to the canvas by the scale alone, with no half-pixel offsets from splitting odd
padding in two. ``pad`` (the image's top-left corner on the canvas) is still returned and
honoured by ``unletterbox_boxes``, so centred letterboxes (``center=True``, as other tools make
them) map back too. The padding is grey (114 of 255, as Ultralytics pads): mid-range, so it shifts
the pixel mean less than black and does not look like the dark edge of an object.

Segmentation masks are letterboxed exactly as their images (``letterbox_mask``): resized by
nearest-exact, so every pixel keeps a whole class index, and padded with the ignore index, so the
padding is no class at all (class 0 there would teach that image borders are background).

The training size, when the user gives none, is planned from the data (``plan_size``).
"""

from __future__ import annotations

import math
from statistics import median
from typing import Sequence

import torch
import torch.nn.functional as F

from ..images import resize_batch
from ..targets import IGNORE_INDEX, RaggedTargets

PAD_VALUE = 114
"""Padding of uint8 images (float images, assumed in [0, 1], get 114 / 255)."""
SIZE_MULTIPLE = 32
"""Planned sizes are a multiple of this: the largest stride of the common detector backbones."""
MAX_PLANNED_SIDE = 640
"""Planned sizes stop here (the common detection training size): larger images train downscaled
unless ``resize`` asks for more."""


def plan_size(sizes: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], str]:
    """The square training size for images of ``sizes`` ((height, width) each) and how it was found.

    The median of the images' longer sides, rounded up to a multiple of ``SIZE_MULTIPLE``, at most
    ``MAX_PLANNED_SIDE``: the median, so that a few huge or tiny images do not decide for all; up
    to the stride multiple, so every feature map divides evenly.
    """
    middle = median(max(h, w) for h, w in sizes)
    side = min(MAX_PLANNED_SIDE, max(SIZE_MULTIPLE, math.ceil(middle / SIZE_MULTIPLE) * SIZE_MULTIPLE))
    rule = (f"planned: median longer side {middle:g} px, rounded up to a multiple of {SIZE_MULTIPLE}, "
            f"at most {MAX_PLANNED_SIDE}")
    return (side, side), rule


def letterbox_scale(original: tuple[int, int], size: tuple[int, int]) -> float:
    """The factor that fits an image of ``original`` (height, width) into ``size`` with its aspect kept."""
    return min(size[0] / original[0], size[1] / original[1])


def letterbox(image: torch.Tensor, size: tuple[int, int], *,
              center: bool = False) -> tuple[torch.Tensor, float, tuple[float, float]]:
    """(C, H, W) image -> (C, *size) canvas, the ``scale`` it was resized by, and ``pad``: the
    (x, y) of its top-left corner on the canvas ((0, 0) unless ``center``). An (N, C, H, W)
    batch of one size becomes (N, C, *size) canvases, all placed alike.

    A box maps onto the canvas as ``box * scale + (pad_x, pad_y, pad_x, pad_y)``. The resized image
    has whole-pixel sides, so along its shorter side the true factor differs from ``scale`` by
    at most half a pixel over the whole side.
    """
    height, width = int(image.shape[-2]), int(image.shape[-1])
    scale = letterbox_scale((height, width), size)
    top, left, new_h, new_w = letterbox_region((height, width), size, center=center)
    fill = PAD_VALUE if not image.dtype.is_floating_point else PAD_VALUE / 255
    canvas = torch.full((*image.shape[:-2], *size), fill, dtype=image.dtype)
    batch = image if image.ndim == 4 else image.unsqueeze(0)
    resized = resize_batch(batch, (new_h, new_w))
    canvas[..., top:top + new_h, left:left + new_w] = resized if image.ndim == 4 else resized[0]
    return canvas, scale, (float(left), float(top))


def letterbox_region(original: tuple[int, int], size: tuple[int, int], *,
                     center: bool = False) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the canvas region that an image of ``original`` (height,
    width) covers once letterboxed to ``size``: the one rule ``letterbox``, ``letterbox_mask`` and
    the mapping of predicted masks back to the image (``Run.predict``) all follow."""
    scale = letterbox_scale(original, size)
    new_h = min(size[0], max(1, round(original[0] * scale)))
    new_w = min(size[1], max(1, round(original[1] * scale)))
    top = (size[0] - new_h) // 2 if center else 0
    left = (size[1] - new_w) // 2 if center else 0
    return top, left, new_h, new_w


def letterbox_mask(mask: torch.Tensor, size: tuple[int, int], *, center: bool = False,
                   fill: int = IGNORE_INDEX) -> torch.Tensor:
    """(H, W) class indices (or an (N, H, W) batch of one size) -> a ``size`` canvas, the mask
    placed where ``letterbox`` places its image: resized by nearest-exact (a class index is never
    blended with its neighbours) and padded with ``fill``, the ignore index, so the padding counts
    in no loss or metric."""
    top, left, new_h, new_w = letterbox_region((int(mask.shape[-2]), int(mask.shape[-1])), size, center=center)
    canvas = torch.full((*mask.shape[:-2], *size), fill, dtype=mask.dtype)
    if (new_h, new_w) == tuple(mask.shape[-2:]):
        resized = mask
    else:  # float for interpolate: exact for indices up to 2**24
        flat = mask.reshape(-1, 1, *mask.shape[-2:]).float()
        resized = F.interpolate(flat, size=(new_h, new_w), mode="nearest-exact").reshape(*mask.shape[:-2], new_h, new_w)
        resized = resized.to(mask.dtype)
    canvas[..., top:top + new_h, left:left + new_w] = resized
    return canvas


def unletterbox_boxes(boxes: torch.Tensor, scale: float, pad: tuple[float, float],
                      original_size: tuple[int, int]) -> torch.Tensor:
    """(M, 4) xyxy boxes on a letterboxed canvas -> the same boxes in the original image's pixels.

    The inverse of ``letterbox``'s mapping, clipped to the original (height, width): a predicted
    box that reaches into the padding ends at the image's edge.
    """
    boxes = torch.as_tensor(boxes)
    if not boxes.dtype.is_floating_point:
        boxes = boxes.float()
    shift = torch.tensor([pad[0], pad[1], pad[0], pad[1]], dtype=boxes.dtype, device=boxes.device)
    original = (boxes - shift) / scale
    height, width = original_size
    limits = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
    return torch.minimum(original.clamp_min(0), limits)


def letterbox_targets(targets: RaggedTargets, sizes: Sequence[tuple[int, int]], size: tuple[int, int]) -> torch.Tensor:
    """Move every image's boxes (in place) onto its letterbox canvas of ``size`` (images of ``sizes``,
    placed top-left); returns the (N, 5) letterboxes: scale, pad x, pad y, original height, width."""
    letterboxes = letterbox_table(sizes, size)
    targets.fields["boxes"] = (targets.fields["boxes"].double()
                               * letterboxes[:, 0].repeat_interleave(targets.counts)[:, None]).to(torch.float32)
    return letterboxes


def letterbox_table(sizes: Sequence[tuple[int, int]], size: tuple[int, int]) -> torch.Tensor:
    """The (N, 5) float64 letterboxes of images of ``sizes`` on canvases of ``size``, placed top-left:
    scale, pad x, pad y, original height, original width (what ``InMemory.letterboxes`` keeps)."""
    scales = torch.tensor([letterbox_scale(s, size) for s in sizes], dtype=torch.float64)
    return torch.cat([scales[:, None], torch.zeros(len(sizes), 2, dtype=torch.float64),
                      torch.tensor(sizes, dtype=torch.float64).reshape(-1, 2)], dim=1)
