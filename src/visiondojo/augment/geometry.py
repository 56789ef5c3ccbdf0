"""Geometric augmentation as one affine matrix per sample, and what that matrix does to targets.

Every geometric op (flips, rot90, rotate, shear, translate, zoom) only produces a per-sample 3x3
matrix; the ops of a policy are multiplied into ONE matrix per sample, and the image is resampled
ONCE (``grid_sample``, bilinear). The same matrix moves masks (nearest), boxes (through their four
corners, clipped, degenerate ones dropped) and keypoints (marked invisible once outside), so
targets can never disagree with their image.

Coordinates: pixel ``(x, y)`` covers ``[x, x+1) x [y, y+1)``; boxes are ``x1, y1, x2, y2`` in these
continuous units. Matrices map an input point to its output point (forward), in pixel units.

Magnitude m in [0, 1] -> physical range (each sample draws its strength uniformly inside it):

==========  =========================================================
hflip       flipped with probability 0.5 * m
vflip       flipped with probability 0.5 * m
rot90       rotated by 90, 180 or 270 degrees with probability m
rotate      angle uniform in +-30 * m degrees
shear       x and y shear angles uniform in +-30 * m degrees
translate   shift uniform in +-30 * m % of the width and of the height
zoom        scale uniform in 1 +- 0.4 * m
==========  =========================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

ROTATE_DEG = 30.0
SHEAR_DEG = 30.0
TRANSLATE = 0.3
ZOOM = 0.4

GeometryOp = Callable[[torch.Tensor, tuple[int, int], torch.Generator], torch.Tensor]
"""(magnitudes (N,), (height, width), generator) -> (N, 3, 3) forward matrices, centred coordinates."""


def signed_uniform(m: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-sample strength uniform in [-m, m]."""
    return (torch.rand(m.shape, generator=generator, device=m.device) * 2 - 1) * m


def _linear(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor,
            tx: torch.Tensor | None = None, ty: torch.Tensor | None = None) -> torch.Tensor:
    """(N, 3, 3) matrices [[a, b, tx], [c, d, ty], [0, 0, 1]]."""
    zero = torch.zeros_like(a)
    one = torch.ones_like(a)
    tx = zero if tx is None else tx
    ty = zero if ty is None else ty
    return torch.stack([a, b, tx, c, d, ty, zero, zero, one], dim=1).view(-1, 3, 3)


def _flip(m: torch.Tensor, generator: torch.Generator, axis: int) -> torch.Tensor:
    flip = torch.rand(m.shape, generator=generator, device=m.device) < 0.5 * m
    sign = 1.0 - 2.0 * flip.float()
    one = torch.ones_like(m)
    return _linear(sign, 0 * m, 0 * m, one) if axis == 0 else _linear(one, 0 * m, 0 * m, sign)


def hflip(m: torch.Tensor, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    return _flip(m, generator, axis=0)


def vflip(m: torch.Tensor, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    return _flip(m, generator, axis=1)


def rot90(m: torch.Tensor, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Quarter turns with exact cosines and sines, so 4 quarter turns are the identity bit for bit."""
    apply = torch.rand(m.shape, generator=generator, device=m.device) < m
    k = torch.randint(1, 4, m.shape, generator=generator, device=m.device) * apply
    cos = torch.tensor([1.0, 0.0, -1.0, 0.0], device=m.device)[k]
    sin = torch.tensor([0.0, 1.0, 0.0, -1.0], device=m.device)[k]
    return _linear(cos, -sin, sin, cos)


def rotate(m: torch.Tensor, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    angle = torch.deg2rad(signed_uniform(m, generator) * ROTATE_DEG)
    cos, sin = angle.cos(), angle.sin()
    return _linear(cos, -sin, sin, cos)


def shear(m: torch.Tensor, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    sx = torch.tan(torch.deg2rad(signed_uniform(m, generator) * SHEAR_DEG))
    sy = torch.tan(torch.deg2rad(signed_uniform(m, generator) * SHEAR_DEG))
    # [[1, sx], [0, 1]] @ [[1, 0], [sy, 1]]
    return _linear(1 + sx * sy, sx, sy, torch.ones_like(m))


def translate(m: torch.Tensor, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    height, width = size
    tx = signed_uniform(m, generator) * TRANSLATE * width
    ty = signed_uniform(m, generator) * TRANSLATE * height
    one = torch.ones_like(m)
    return _linear(one, 0 * m, 0 * m, one, tx, ty)


def zoom(m: torch.Tensor, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    scale = 1 + signed_uniform(m, generator) * ZOOM
    return _linear(scale, 0 * m, 0 * m, scale)


GEOMETRY_OPS: dict[str, GeometryOp] = {
    "hflip": hflip, "vflip": vflip, "rot90": rot90, "rotate": rotate, "shear": shear,
    "translate": translate, "zoom": zoom,
}


@dataclass
class Geometry:
    """Where every pixel of a batch went: forward matrices in pixel units, and the image size."""

    matrix: torch.Tensor
    """(N, 3, 3): input pixel coordinates -> output pixel coordinates."""
    size: tuple[int, int]
    """(height, width), the same before and after."""

    @classmethod
    def from_centred(cls, centred: torch.Tensor, size: tuple[int, int]) -> "Geometry":
        """Matrices about the image centre (what the ops produce) -> pixel coordinates."""
        height, width = size
        shift = _translation(width / 2, height / 2, centred)
        unshift = _translation(-width / 2, -height / 2, centred)
        return cls(shift @ centred @ unshift, size)

    @property
    def moved(self) -> torch.Tensor:
        """(N,) bool: samples whose matrix is not the identity (the others are left bit for bit)."""
        eye = torch.eye(3, device=self.matrix.device, dtype=self.matrix.dtype)
        return (self.matrix != eye).flatten(1).any(dim=1)

    def grid(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The sampling grid of ``grid_sample``: each output pixel's position in the input."""
        height, width = self.size
        n = len(self.matrix)
        to_norm = torch.tensor([[2 / width, 0, -1], [0, 2 / height, -1], [0, 0, 1]],
                               device=self.matrix.device, dtype=self.matrix.dtype)
        theta = to_norm @ torch.linalg.inv(self.matrix) @ torch.linalg.inv(to_norm)
        return F.affine_grid(theta[:, :2].to(dtype), [n, 1, height, width], align_corners=False)


def _translation(tx: float, ty: float, like: torch.Tensor) -> torch.Tensor:
    out = torch.eye(3, device=like.device, dtype=like.dtype)
    out[0, 2], out[1, 2] = tx, ty
    return out


def warp_images(images: torch.Tensor, geometry: Geometry, grid: torch.Tensor | None = None) -> torch.Tensor:
    """(N, C, H, W) float images resampled bilinearly; outside the input is 0. Unmoved samples are exact."""
    grid = geometry.grid(images.dtype) if grid is None else grid
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return torch.where(geometry.moved.view(-1, 1, 1, 1), warped, images)


def warp_masks(masks: torch.Tensor, geometry: Geometry, ignore_index: int = 255,
               grid: torch.Tensor | None = None) -> torch.Tensor:
    """(N, H, W) integer class masks resampled by nearest neighbour; pixels from outside the input
    get ``ignore_index`` (their class is unknown, so the loss must skip them)."""
    grid = geometry.grid() if grid is None else grid
    shifted = (masks.to(torch.float32) + 1).unsqueeze(1)  # 0 now means "came from outside"
    warped = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False)[:, 0]
    warped = torch.where(warped == 0, torch.full_like(warped, ignore_index + 1), warped) - 1
    return torch.where(geometry.moved.view(-1, 1, 1), warped.to(masks.dtype), masks)


def apply_points(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(M, 3, 3) matrices applied to (M, P, 2) points."""
    return points @ matrix[:, :2, :2].transpose(1, 2) + matrix[:, None, :2, 2]


def warp_boxes(boxes: torch.Tensor, index: torch.Tensor, geometry: Geometry,
               min_size: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (M, 4) xyxy of samples ``index`` (M,) -> (moved boxes, keep mask (M,)).

    A box moves through its four corners; the result is their enclosing box, clipped to the
    image. Boxes thinner than ``min_size`` pixels after clipping (pushed out of the frame) are
    marked for dropping; drop their labels with the same mask.
    """
    height, width = geometry.size
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    corners = torch.stack([torch.stack([x1, y1], 1), torch.stack([x2, y1], 1),
                           torch.stack([x1, y2], 1), torch.stack([x2, y2], 1)], dim=1)
    moved = apply_points(geometry.matrix[index].to(boxes.dtype), corners)
    low = moved.amin(dim=1)
    high = moved.amax(dim=1)
    out = torch.cat([low[:, 0:1].clamp(0, width), low[:, 1:2].clamp(0, height),
                     high[:, 0:1].clamp(0, width), high[:, 1:2].clamp(0, height)], dim=1)
    keep = ((out[:, 2] - out[:, 0]) >= min_size) & ((out[:, 3] - out[:, 1]) >= min_size)
    return out, keep


def warp_keypoints(keypoints: torch.Tensor, visible: torch.Tensor, geometry: Geometry,
                   flip_index: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints (N, K, 2) at pixel positions, visibility (N, K) bool -> moved, still-visible.

    A point that leaves the image becomes invisible. ``flip_index`` (left/right partners, e.g.
    left eye <-> right eye) relabels the points of mirrored samples, whose left is now right.
    """
    height, width = geometry.size
    moved = apply_points(geometry.matrix.to(keypoints.dtype), keypoints)
    inside = (moved[..., 0] >= 0) & (moved[..., 0] < width) & (moved[..., 1] >= 0) & (moved[..., 1] < height)
    visible = visible & inside
    if flip_index is not None:
        m = geometry.matrix
        mirrored = (m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0]) < 0
        moved = torch.where(mirrored.view(-1, 1, 1), moved[:, flip_index], moved)
        visible = torch.where(mirrored.view(-1, 1), visible[:, flip_index], visible)
    return moved, visible


def identity(n: int, device: torch.device) -> torch.Tensor:
    return torch.eye(3, device=device).expand(n, 3, 3).clone()


def compose(matrices: list[torch.Tensor]) -> torch.Tensor:
    """Ops applied in list order: the first op's matrix is applied first."""
    out = matrices[0]
    for matrix in matrices[1:]:
        out = matrix @ out
    return out

