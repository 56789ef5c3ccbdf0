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
from typing import Callable, Union

import torch
import torch.nn.functional as F

ROTATE_DEG = 30.0
SHEAR_DEG = 30.0
TRANSLATE = 0.3
ZOOM = 0.4

Entry = Union[torch.Tensor, float]
"""One matrix entry: (N,) per-sample values, or a Python float shared by every sample."""


@dataclass
class Affine:
    """A 2x3 affine map per sample, ``[[a, b, tx], [c, d, ty]]``, about the image centre.

    Entries an op leaves alone stay Python floats, so composing ops costs tensor arithmetic only
    where the maps really differ (a flip touches one entry, a translation two), instead of a
    batched 3x3 product per op: on a CPU these (N,)-sized steps cost their dispatch, not their math.
    """

    a: Entry = 1.0
    b: Entry = 0.0
    tx: Entry = 0.0
    c: Entry = 0.0
    d: Entry = 1.0
    ty: Entry = 0.0

    def then(self, other: "Affine") -> "Affine":
        """``other`` applied after ``self``: the product other @ self."""
        o = other
        return Affine(
            a=_add(_mul(o.a, self.a), _mul(o.b, self.c)), b=_add(_mul(o.a, self.b), _mul(o.b, self.d)),
            tx=_add(_add(_mul(o.a, self.tx), _mul(o.b, self.ty)), o.tx),
            c=_add(_mul(o.c, self.a), _mul(o.d, self.c)), d=_add(_mul(o.c, self.b), _mul(o.d, self.d)),
            ty=_add(_add(_mul(o.c, self.tx), _mul(o.d, self.ty)), o.ty),
        )

    def matrix(self, n: int, device: torch.device, size: tuple[int, int]) -> torch.Tensor:
        """(N, 3, 3) forward matrices in pixel coordinates: T(c) A T(-c), c the image centre."""
        height, width = size
        cx, cy = width / 2, height / 2
        tx = _add(_add(self.tx, cx), _mul(_add(_mul(self.a, cx), _mul(self.b, cy)), -1.0))
        ty = _add(_add(self.ty, cy), _mul(_add(_mul(self.c, cx), _mul(self.d, cy)), -1.0))
        entries = [self.a, self.b, tx, self.c, self.d, ty, 0.0, 0.0, 1.0]
        columns = [e if isinstance(e, torch.Tensor) else torch.full((n,), e, device=device) for e in entries]
        return torch.stack(columns, dim=1).view(n, 3, 3)


def _mul(x: Entry, y: Entry) -> Entry:
    if isinstance(x, float) and isinstance(y, float):
        return x * y
    if (isinstance(x, float) and x == 0.0) or (isinstance(y, float) and y == 0.0):
        return 0.0
    if isinstance(x, float) and x == 1.0:
        return y
    if isinstance(y, float) and y == 1.0:
        return x
    return x * y


def _add(x: Entry, y: Entry) -> Entry:
    if isinstance(x, float) and isinstance(y, float):
        return x + y
    if isinstance(x, float) and x == 0.0:
        return y
    if isinstance(y, float) and y == 0.0:
        return x
    return x + y


GeometryOp = Callable[[torch.Tensor, tuple[int, int], torch.Generator], Affine]
"""(magnitudes (N,), (height, width), generator) -> the per-sample maps about the image centre."""


def signed_uniform(m: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-sample strength uniform in [-m, m]."""
    return (torch.rand(m.shape, generator=generator, device=m.device) * 2 - 1) * m


def _flip_sign(m: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(m.shape, generator=generator, device=m.device) < 0.5 * m
    return 1.0 - 2.0 * flip.float()


def hflip(m: torch.Tensor, size: tuple[int, int], generator: torch.Generator) -> Affine:
    return Affine(a=_flip_sign(m, generator))


def vflip(m: torch.Tensor, size: tuple[int, int], generator: torch.Generator) -> Affine:
    return Affine(d=_flip_sign(m, generator))


def rot90(m: torch.Tensor, size: tuple[int, int], generator: torch.Generator) -> Affine:
    """Quarter turns with exact cosines and sines, so 4 quarter turns are the identity bit for bit."""
    apply = torch.rand(m.shape, generator=generator, device=m.device) < m
    k = torch.randint(1, 4, m.shape, generator=generator, device=m.device) * apply
    even = (k % 2 == 0).float()
    cos = even * (1 - k.float())  # k = 0, 1, 2, 3 -> 1, 0, -1, 0
    sin = (1 - even) * (2 - k.float())  # -> 0, 1, 0, -1
    return Affine(a=cos, b=-sin, c=sin, d=cos)


def rotate(m: torch.Tensor, size: tuple[int, int], generator: torch.Generator) -> Affine:
    angle = torch.deg2rad(signed_uniform(m, generator) * ROTATE_DEG)
    cos, sin = angle.cos(), angle.sin()
    return Affine(a=cos, b=-sin, c=sin, d=cos)


def shear(m: torch.Tensor, size: tuple[int, int], generator: torch.Generator) -> Affine:
    sx = torch.tan(torch.deg2rad(signed_uniform(m, generator) * SHEAR_DEG))
    sy = torch.tan(torch.deg2rad(signed_uniform(m, generator) * SHEAR_DEG))
    return Affine(a=1 + sx * sy, b=sx, c=sy)  # [[1, sx], [0, 1]] @ [[1, 0], [sy, 1]]


def translate(m: torch.Tensor, size: tuple[int, int], generator: torch.Generator) -> Affine:
    height, width = size
    return Affine(tx=signed_uniform(m, generator) * (TRANSLATE * width),
                  ty=signed_uniform(m, generator) * (TRANSLATE * height))


def zoom(m: torch.Tensor, size: tuple[int, int], generator: torch.Generator) -> Affine:
    scale = 1 + signed_uniform(m, generator) * ZOOM
    return Affine(a=scale, d=scale)


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
    def from_ops(cls, maps: list[Affine], size: tuple[int, int], n: int, device: torch.device) -> "Geometry":
        """The ops' maps, in order (the first is applied first), as one matrix per sample."""
        total = Affine()
        for affine in maps:
            total = total.then(affine)
        return cls(total.matrix(n, device, size), size)

    @property
    def moved(self) -> torch.Tensor:
        """(N,) bool: samples whose matrix is not the identity (the others are left bit for bit)."""
        eye = torch.eye(3, device=self.matrix.device, dtype=self.matrix.dtype)
        return (self.matrix != eye).flatten(1).any(dim=1)

    def grid(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The sampling grid of ``grid_sample``: each output pixel's position in the input.

        Built by broadcasting from the inverse matrix in closed form: ``affine_grid`` runs one tiny
        matrix product per sample, which on a CPU costs several times the resampling itself.
        """
        height, width = self.size
        inverse = affine_inverse(self.matrix.float())  # output pixel -> input pixel
        # Normalized input coordinate (align_corners=False): 2 * x_in / size - 1, at output pixel centres.
        # Python-scalar factors (no host tensor, so no GPU sync); float32 whatever the images' dtype.
        rows = torch.stack([inverse[:, 0] * (2 / width), inverse[:, 1] * (2 / height)], dim=1).unsqueeze(-1)
        xs = torch.arange(width, device=inverse.device, dtype=torch.float32).view(1, 1, width) + 0.5
        ys = torch.arange(height, device=inverse.device, dtype=torch.float32).view(1, height, 1) + 0.5
        # (N, 2, H, W) in one broadcast add of a column term and a row term; grid_sample takes the
        # (N, H, W, 2) view as it is, so the planes are never interleaved in memory.
        planes = rows[:, :, 0:1] * xs + (rows[:, :, 1:2] * ys + (rows[:, :, 2:3] - 1))
        return planes.permute(0, 2, 3, 1).to(dtype)


def affine_inverse(matrix: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) affine matrices -> (N, 2, 3) inverses, in closed form (no batched LU)."""
    a, b, tx = matrix[:, 0, 0], matrix[:, 0, 1], matrix[:, 0, 2]
    c, d, ty = matrix[:, 1, 0], matrix[:, 1, 1], matrix[:, 1, 2]
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    return torch.stack([ia, ib, -(ia * tx + ib * ty), ic, id_, -(ic * tx + id_ * ty)], dim=1).view(-1, 2, 3)


def keep_unmoved(changed: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """``new`` where ``changed`` (N,) else ``old``, so untouched samples stay bit for bit.

    On a CPU, when every sample changed, the select is skipped (checking is free there); on a
    GPU the check would stall the stream, while the select costs next to nothing.
    """
    if new.device.type == "cpu" and bool(changed.all()):
        return new
    return torch.where(changed.view(-1, *([1] * (new.ndim - 1))), new, old)


def warp_images(images: torch.Tensor, geometry: Geometry, grid: torch.Tensor | None = None) -> torch.Tensor:
    """(N, C, H, W) float images resampled bilinearly; outside the input is 0. Unmoved samples are exact."""
    grid = geometry.grid(images.dtype) if grid is None else grid
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return keep_unmoved(geometry.moved, warped, images)


def warp_masks(masks: torch.Tensor, geometry: Geometry, ignore_index: int = 255,
               grid: torch.Tensor | None = None) -> torch.Tensor:
    """(N, H, W) integer class masks resampled by nearest neighbour; pixels from outside the input
    get ``ignore_index`` (their class is unknown, so the loss must skip them)."""
    grid = geometry.grid() if grid is None else grid
    shifted = (masks.to(torch.float32) + 1).unsqueeze(1)  # 0 now means "came from outside"
    warped = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False)[:, 0]
    warped = torch.where(warped == 0, torch.full_like(warped, ignore_index + 1), warped) - 1
    return keep_unmoved(geometry.moved, warped.to(masks.dtype), masks)


def apply_points(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(M, 3, 3) matrices applied to (M, P, 2) points."""
    return points @ matrix[:, :2, :2].transpose(1, 2) + matrix[:, None, :2, 2]


def warp_boxes(boxes: torch.Tensor, index: torch.Tensor, geometry: Geometry,
               min_size: float = 1.0, min_visible: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (M, 4) xyxy of samples ``index`` (M,) -> (moved boxes, keep mask (M,)).

    A box moves through its four corners; the result is their enclosing box, clipped to the
    image. Boxes thinner than ``min_size`` pixels after clipping (pushed out of the frame), or
    keeping less than ``min_visible`` of their moved area inside it (a sliver at the border that
    no longer shows the object), are marked for dropping; drop their labels with the same mask.
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
    width_in, height_in = out[:, 2] - out[:, 0], out[:, 3] - out[:, 1]
    keep = (width_in >= min_size) & (height_in >= min_size)
    if min_visible > 0:
        moved_area = (high - low).clamp_min(0).prod(dim=1)
        keep &= width_in * height_in >= min_visible * moved_area
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
