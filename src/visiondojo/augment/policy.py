"""A policy of augmentation ops applied to a batch on its device, per sample, from one generator.

Order: all geometric ops fused into one matrix per sample and one resampling, then the color
ops in the policy's order, then erasing. Each op runs on a sample with probability ``p``; a
sample it skips gets magnitude 0, which every op treats as an exact no-op, so the batch is
processed in one piece with no per-sample Python. Ops that share a ``group`` are a menu: each
sample draws one of them (the policy search's groups of interchangeable ops), the others get 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import ConfigError
from ..plan import AugmentOp
from . import color, erase as erasing, geometry
from .color import COLOR_OPS, LINEAR_OPS, linear_color
from .erase import erase
from .geometry import GEOMETRY_OPS, Geometry, keep_unmoved, warp_images

PIXEL_OPS = {**COLOR_OPS, "erase": erase}
OPS = (*GEOMETRY_OPS, *PIXEL_OPS)
"""Every op name a policy may use."""
RGB_ONLY = frozenset({"saturation", "hue"})
"""Ops that leave images with other than 3 channels unchanged (a policy for them skips these)."""


def ops_for(channels: int) -> list[str]:
    """The op names that do something on images with ``channels`` channels."""
    return [name for name in OPS if channels == 3 or name not in RGB_ONLY]


def trivial_augment(channels: int, group: str = "trivial") -> list[AugmentOp]:
    """TrivialAugment (Müller & Hutter 2021) as a policy: ONE menu of every op at full magnitude, so
    each sample gets one op drawn uniformly, at a strength uniform in [0, the op's full range]."""
    return [AugmentOp(name, 1.0, group=group) for name in ops_for(channels)]


def check_ops(ops: Sequence[AugmentOp], where: str = "regularization.augment") -> None:
    """Clear errors for unknown names and out-of-range magnitudes or probabilities."""
    for i, op in enumerate(ops):
        if op.name not in OPS:
            raise ConfigError(f"{where}[{i}]: unknown op {op.name!r}; choose from {', '.join(OPS)}")
        if not 0.0 <= op.magnitude <= 1.0:
            raise ConfigError(f"{where}[{i}] ({op.name}): magnitude {op.magnitude} is outside [0, 1]")
        if not 0.0 <= op.p <= 1.0:
            raise ConfigError(f"{where}[{i}] ({op.name}): probability p={op.p} is outside [0, 1]")
    first: dict[str, AugmentOp] = {}
    for i, op in enumerate(ops):
        leader = first.setdefault(op.group, op) if op.group else op
        if leader.p != op.p:
            raise ConfigError(f"{where}[{i}] ({op.name}): p={op.p} differs from p={leader.p} of its group "
                              f"{op.group!r}; a group fires as one menu, so give its ops one probability")


@dataclass
class Applied:
    """What an ``Augmenter`` did to a batch that its targets must follow (``Task.move_targets``)."""

    geometry: Geometry | None = None
    """Where every pixel went (None: the policy has no geometric op)."""
    erased: torch.Tensor | None = None
    """(N, 1, H, W) bool: the pixels erasing replaced, after the warp (None: no erasing op)."""


class Augmenter:
    """Applies ``ops`` to float image batches in [0, 1] units; returns the images and what was done
    to them (``Applied``: the warp, None when the policy has no geometric op, and the erased
    pixels), which the task uses to move boxes, masks and keypoints with their images.
    """

    def __init__(self, ops: Sequence[AugmentOp]):
        check_ops(ops)
        grouped: dict[str, list[AugmentOp]] = {}
        self.menus = []
        for op in ops:  # an op alone is a menu of one
            if not op.group:
                self.menus.append([op])
            elif op.group not in grouped:
                grouped[op.group] = [op]
                self.menus.append(grouped[op.group])
            else:
                grouped[op.group].append(op)
        self.geometry_ops = [op for op in ops if op.name in GEOMETRY_OPS]
        pixel = [op for op in ops if op.name in COLOR_OPS]
        self.pixel_ops = pixel + [op for op in ops if op.name == "erase"]

    def __bool__(self) -> bool:
        return bool(self.geometry_ops or self.pixel_ops)

    def _magnitudes(self, n: int, generator: torch.Generator, device: torch.device) -> dict[int, torch.Tensor]:
        """(n,) magnitude per sample for every op (keyed by id): the op's magnitude where it fires,
        else 0. A group's members share one draw: each sample picks one member of the menu."""
        out: dict[int, torch.Tensor] = {}
        for members in self.menus:
            fires = _fires(members[0].p, n, generator, device)
            pick = (torch.randint(len(members), (n,), generator=generator, device=device)
                    if len(members) > 1 else None)
            for j, op in enumerate(members):
                on = fires if pick is None else (pick == j if fires is None else fires & (pick == j))
                out[id(op)] = (torch.full((n,), float(op.magnitude), device=device) if on is None
                               else on.float() * op.magnitude)
        return out

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, Applied]:
        n = len(images)
        size = (images.shape[-2], images.shape[-1])
        magnitudes = self._magnitudes(n, generator, images.device)
        applied = Applied()
        if self.geometry_ops:
            maps = [GEOMETRY_OPS[op.name](magnitudes[id(op)], size, generator) for op in self.geometry_ops]
            applied.geometry = Geometry.from_ops(maps, size, n, images.device)
            images = warp_images(images, applied.geometry)
        linear: list[tuple[str, torch.Tensor]] = []  # a run of brightness/contrast, applied as one
        for op in self.pixel_ops:
            m = magnitudes[id(op)]
            if op.name in LINEAR_OPS:
                linear.append((op.name, m))
                continue
            if linear:
                images, linear = linear_color(images, linear, generator), []
            if op.name == "erase":  # the regions are kept: boxes mostly erased are dropped
                regions = erasing.erase_regions(m, size, generator)
                images = erasing.fill(images, regions, generator)
                applied.erased = regions if applied.erased is None else applied.erased | regions
                continue
            images = _apply_pixel_op(PIXEL_OPS[op.name], images, m, generator)
        if linear:
            images = linear_color(images, linear, generator)
        return images, applied


def _apply_pixel_op(fn, images: torch.Tensor, m: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``fn`` on the samples with magnitude > 0, the others exactly as they were.

    On the CPU the op runs on those samples only: in a wide menu each op fires on a few samples
    of the batch, and computing all of it for every member cost 6 % of training throughput on
    Fashion-MNIST. On an accelerator the whole batch is computed and the unmoved samples are
    restored, because selecting the samples would need their count on the host (a sync per op).
    """
    on = m > 0
    if images.device.type != "cpu":
        return keep_unmoved(on, fn(images, m, generator), images)
    index = on.nonzero().squeeze(1)
    if len(index) == len(images):
        return fn(images, m, generator)
    if len(index) == 0:
        return images
    return images.index_copy(0, index, fn(images[index], m[index], generator))


def _fires(p: float, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor | None:
    """(n,) bool: the samples an op (or a menu) runs on, None for all of them."""
    return None if p >= 1 else torch.rand(n, generator=generator, device=device) < p


_RANGES = {
    "hflip": lambda m: f"mirrored left-right with probability {0.5 * m:.2f}",
    "vflip": lambda m: f"mirrored top-bottom with probability {0.5 * m:.2f}",
    "rot90": lambda m: f"quarter turns with probability {m:.2f}",
    "rotate": lambda m: f"angle uniform in +-{geometry.ROTATE_DEG * m:.1f} degrees",
    "shear": lambda m: f"shear angles uniform in +-{geometry.SHEAR_DEG * m:.1f} degrees",
    "translate": lambda m: f"shift uniform in +-{100 * geometry.TRANSLATE * m:.1f} % of the size",
    "zoom": lambda m: f"scale uniform in {1 - geometry.ZOOM * m:.2f}-{1 + geometry.ZOOM * m:.2f}",
    "brightness": lambda m: f"factor {1 - color.BRIGHTNESS * m:.2f}-{1 + color.BRIGHTNESS * m:.2f}",
    "contrast": lambda m: f"factor {1 - color.CONTRAST * m:.2f}-{1 + color.CONTRAST * m:.2f}",
    "saturation": lambda m: f"factor {1 - color.SATURATION * m:.2f}-{1 + color.SATURATION * m:.2f} (RGB only)",
    "hue": lambda m: f"hue rotated by up to +-{360 * color.HUE_TURNS * m:.0f} degrees (RGB only)",
    "gamma": lambda m: f"exponent {2 ** -(color.GAMMA_LOG2 * m):.2f}-{2 ** (color.GAMMA_LOG2 * m):.2f}",
    "autocontrast": lambda m: f"blend of up to {m:.2f} towards the stretched image",
    "equalize": lambda m: f"blend of up to {m:.2f} towards the equalized image",
    "solarize": lambda m: f"pixels above a threshold down to {1 - m:.2f} inverted",
    "posterize": lambda m: f"up to {round(color.POSTERIZE_BITS * m)} low bits dropped",
    "sharpness": lambda m: f"factor {1 - color.SHARPNESS * m:.2f}-{1 + color.SHARPNESS * m:.2f}",
    "blur": lambda m: f"Gaussian sigma up to {color.BLUR_SIGMA * m:.3f} x the shorter side",
    "noise": lambda m: f"Gaussian noise, std up to {color.NOISE_STD * m:.3f}",
    "erase": lambda m: f"a rectangle of up to {100 * erasing.MAX_AREA * m:.0f} % of the image replaced by noise",
}


def describe(op: AugmentOp) -> str:
    """The op's magnitude in physical units, e.g. 'angle uniform in +-15.0 degrees'."""
    return _RANGES[op.name](op.magnitude) if op.name in _RANGES else "unknown op"
