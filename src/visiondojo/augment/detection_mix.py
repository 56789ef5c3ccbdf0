"""Batch ops for detection that build new images from several images of the batch: mosaic and
box mixup. Both run on the device, for the whole batch at once, with an independent draw per
sample from one generator, and return a batch of the same size whose boxes match its pixels.

Images are (N, C, H, W) floats in [0, 1] units; targets are a ``RaggedBatch`` with ``boxes``
(xyxy pixels) and any other per-object fields (``labels``...), which follow their object: when a
box is copied into another image its whole row is, when it is dropped its whole row is. Only
``boxes`` move; a field that has its own geometry (instance masks, keypoints) is not supported yet.

Mosaic (probability ``p`` per sample, ``magnitude`` m in [0, 1]):
    the image becomes a 2x2 mosaic of itself and three other images of the batch (drawn per
    sample; itself in a random quadrant). The four quadrants meet at a centre uniform in
    0.5 +- 0.25 m of each side (at m = 1: [0.25, 0.75]), rounded to whole pixels so that every
    output pixel belongs to one quadrant. Each source is scaled, keeping its aspect ratio, by the
    smallest factor that covers its quadrant (0.5 when the centre is in the middle: the classic
    half-size 2x2 grid; between 0.25 and 0.75 at m = 1), and placed with its corner at the centre,
    so the part of it beyond the outer edges of the canvas is cropped, never a gap left to fill.
    Its boxes are scaled and moved alike, clipped to the quadrant, and dropped when less than
    ``min_visible`` of their moved area stays in it (or when thinner than a pixel).
    The whole batch is resampled in ONE bilinear ``grid_sample``: the batch is read as one tall
    image and each output pixel looks up its source image's rows in it.

Box mixup (probability ``p`` per sample):
    the image is blended with another image of the batch, lambda * own + (1 - lambda) * other,
    and keeps both images' boxes, unweighted. Since the loss then treats every box as a whole
    object, lambda stays near 1/2: Beta(32, 32) (95 % of the draws in [0.38, 0.62]). A weight far
    from 1/2 would show one of the images as a faint ghost whose boxes still count in full, and
    teach the detector to fire on near-invisible objects; a little spread around 1/2 (rather than
    exactly 1/2) still varies the objects' contrast. ``concentration`` sets it (larger: nearer 1/2).

Samples an op does not pick keep their image and their boxes bit for bit, and p = 0 is an exact
no-op that draws nothing from the generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.targets import RaggedBatch, RaggedTargets
from .geometry import keep_unmoved, signed_uniform
from .mixing import sample_beta

MOSAIC_SHIFT = 0.25
"""Share of each side the mosaic centre may move from the middle at magnitude 1."""
BOX_MIXUP_CONCENTRATION = 32.0
"""Beta(a, a) concentration of box mixup's blend weight: near 1/2 (see the module notes)."""
MIN_BOX_SIZE = 1.0
"""Boxes thinner than this many pixels after clipping are dropped, as ``warp_boxes`` drops them."""

_LEFT = (True, False, True, False)
_TOP = (True, True, False, False)
"""Quadrants in order: top-left, top-right, bottom-left, bottom-right."""


@dataclass
class MosaicLayout:
    """The draws of one mosaic call: which samples become mosaics and how each is laid out."""

    chosen: torch.Tensor
    """(N,) bool: the samples that become mosaics."""
    sources: torch.Tensor
    """(N, 4) int64: the batch image shown in each quadrant (top-left, top-right, bottom-left, bottom-right)."""
    centre: torch.Tensor
    """(N, 2) float: (x, y) where the quadrants meet, in whole pixels."""
    size: tuple[int, int]
    """(height, width) of the canvas, the same as the images'."""

    def subset(self, index: torch.Tensor) -> "MosaicLayout":
        """The layouts of the samples ``index`` alone (their sources still index the whole batch)."""
        return MosaicLayout(self.chosen[index], self.sources[index], self.centre[index], self.size)

    def quadrants(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(region (N, 4, 4) xyxy of each quadrant, scale (N, 4) of its source, offset (N, 4, 2)):
        a source point (x, y) lands at offset + scale * (x, y)."""
        height, width = self.size
        device = self.centre.device
        left = torch.tensor(_LEFT, device=device)
        top = torch.tensor(_TOP, device=device)
        cx, cy = self.centre[:, 0:1], self.centre[:, 1:2]
        x1, x2 = torch.where(left, 0.0, cx), torch.where(left, cx, float(width))
        y1, y2 = torch.where(top, 0.0, cy), torch.where(top, cy, float(height))
        # Aspect kept, the quadrant covered: the larger of the two side ratios.
        scale = torch.maximum((x2 - x1) / width, (y2 - y1) / height).clamp_min(1e-6)
        ox = torch.where(left, cx - scale * width, cx)  # the source's corner at the centre
        oy = torch.where(top, cy - scale * height, cy)
        return torch.stack([x1, y1, x2, y2], dim=2), scale, torch.stack([ox, oy], dim=2)


def mosaic_layout(n: int, size: tuple[int, int], p: float, magnitude: float, generator: torch.Generator,
                  device: torch.device) -> MosaicLayout:
    """Draw a mosaic's layout for a batch of ``n`` images: a fixed number of draws whatever ``p``,
    so one seed always gives the same layout."""
    height, width = size
    chosen = torch.rand(n, generator=generator, device=device) < p
    own = torch.arange(n, device=device)
    # Three other images (another sample whenever the batch has one; they may repeat among themselves).
    others = (own[:, None] + torch.randint(1, max(n, 2), (n, 3), generator=generator, device=device)) % n
    turn = torch.randint(0, 4, (n, 1), generator=generator, device=device)  # the quadrant the sample keeps
    slots = (torch.arange(4, device=device)[None, :] - turn) % 4
    sources = torch.cat([own[:, None], others], dim=1).gather(1, slots)
    shift = signed_uniform(torch.full((n, 2), MOSAIC_SHIFT * magnitude, device=device), generator)
    centre = ((0.5 + shift) * torch.tensor([float(width), float(height)], device=device)).round()
    return MosaicLayout(chosen, sources, centre, size)


def mosaic(images: torch.Tensor, targets: RaggedBatch, p: float, generator: torch.Generator,
           magnitude: float = 1.0, min_visible: float = 0.0) -> tuple[torch.Tensor, RaggedBatch]:
    """Each sample, with probability ``p``, becomes a 2x2 mosaic of itself and three other images
    of the batch, with their boxes (see the module notes). Returns (images, targets)."""
    if p <= 0:
        return images, targets
    layout = mosaic_layout(len(images), (images.shape[-2], images.shape[-1]), p, magnitude, generator,
                           images.device)
    return apply_mosaic(images, targets, layout, min_visible)


def apply_mosaic(images: torch.Tensor, targets: RaggedBatch, layout: MosaicLayout,
                 min_visible: float = 0.0) -> tuple[torch.Tensor, RaggedBatch]:
    """The mosaics of ``layout`` (from ``mosaic_layout``, or laid out by hand) and their boxes."""
    _require_boxes(targets)
    return _mosaic_images(images, layout), _mosaic_boxes(targets, layout, min_visible)


def _mosaic_images(images: torch.Tensor, layout: MosaicLayout) -> torch.Tensor:
    """The picked samples' mosaics, the others exactly as they were. On a CPU only the picked ones
    are resampled; on an accelerator all are and the others restored, since selecting them would
    need their count on the host (a sync), as ``policy._apply_pixel_op`` does for pixel ops."""
    if images.device.type != "cpu":
        return keep_unmoved(layout.chosen, _resample(images, layout), images)
    picked = layout.chosen.nonzero().squeeze(1)
    if len(picked) == len(images):
        return _resample(images, layout)
    if len(picked) == 0:
        return images
    return images.index_copy(0, picked, _resample(images, layout.subset(picked)))


def _resample(images: torch.Tensor, layout: MosaicLayout) -> torch.Tensor:
    """(K, C, H, W): the mosaics of the K samples of ``layout``, made from the batch ``images``."""
    n, c, height, width = images.shape
    k = len(layout.centre)
    _, scale, offset = layout.quadrants()
    device = images.device
    cx, cy = layout.centre[:, 0, None], layout.centre[:, 1, None]
    xs = torch.arange(width, device=device, dtype=torch.float32) + 0.5
    ys = torch.arange(height, device=device, dtype=torch.float32) + 0.5
    right, bottom = xs > cx, ys > cy  # (K, W), (K, H): pixel centres past the centre line
    # Where each output pixel centre comes from in its source. Separable: x depends on the column
    # and the quadrant (K, 4, W), y on the row and the quadrant (K, 4, H); only the final grid is
    # per pixel. Clamped to the source's outermost pixel centres, so bilinear sampling can never
    # read across into the next image of the tall one (a shrunk source, scale <= 0.75, never gets
    # there anyway: the clamp guards the invariant, at no cost on these small tensors).
    # Normalized (align_corners=False), float32 whatever the images' dtype: a row index in the tall
    # image of the whole batch needs its precision.
    x = ((xs - offset[:, :, 0, None]) / scale[..., None]).clamp(0.5, width - 0.5) * (2 / width) - 1
    y = ((ys - offset[:, :, 1, None]) / scale[..., None]).clamp(0.5, height - 0.5)
    y = (y + layout.sources[..., None] * height) * (2 / (n * height)) - 1  # the row in the tall image
    x_top, x_bottom = torch.where(right, x[:, 1], x[:, 0]), torch.where(right, x[:, 3], x[:, 2])  # (K, W)
    y_left, y_right = torch.where(bottom, y[:, 2], y[:, 0]), torch.where(bottom, y[:, 3], y[:, 1])  # (K, H)
    grid = torch.empty(k, height, width, 2, device=device)
    torch.where(bottom[:, :, None], x_bottom[:, None, :], x_top[:, None, :], out=grid[..., 0])
    torch.where(right[:, None, :], y_right[:, :, None], y_left[:, :, None], out=grid[..., 1])
    grid = grid.view(1, k * height, width, 2)
    tall = images.float().transpose(0, 1).reshape(1, c, n * height, width)
    out = F.grid_sample(tall, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.view(c, k, height, width).transpose(0, 1).to(images.dtype).contiguous()


def _mosaic_boxes(targets: RaggedBatch, layout: MosaicLayout, min_visible: float) -> RaggedBatch:
    region, scale, offset = layout.quadrants()
    # Every source's objects, once per quadrant that shows it: ``image`` is the quadrant's slot (4 i + q).
    copies = _grouped(targets).gather(layout.sources.reshape(-1))
    slot = copies.image
    boxes = copies.fields["boxes"]
    moved = boxes * scale.reshape(-1)[slot, None].to(boxes.dtype) + offset.reshape(-1, 2)[slot].repeat(1, 2).to(boxes.dtype)
    bounds = region.reshape(-1, 4)[slot].to(boxes.dtype)
    clipped = torch.maximum(torch.minimum(moved, bounds[:, [2, 3, 2, 3]]), bounds[:, [0, 1, 0, 1]])
    owner = slot // 4
    keep = _visible(clipped, moved, min_visible) & layout.chosen[owner]
    placed = RaggedBatch({**copies.fields, "boxes": clipped}, owner, targets.size).keep(keep)
    return _concat(targets.keep(~layout.chosen[targets.image]), placed)


def _visible(clipped: torch.Tensor, moved: torch.Tensor, min_visible: float) -> torch.Tensor:
    """(M,) bool: clipped boxes at least a pixel wide and high, keeping ``min_visible`` of the moved area."""
    width, height = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    keep = (width >= MIN_BOX_SIZE) & (height >= MIN_BOX_SIZE)
    if min_visible > 0:
        area = (moved[:, 2] - moved[:, 0]).clamp_min(0) * (moved[:, 3] - moved[:, 1]).clamp_min(0)
        keep &= width * height >= min_visible * area
    return keep


def mixup_draws(n: int, p: float, concentration: float, generator: torch.Generator,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Box mixup's draws for ``n`` samples: (mixed (N,) bool, partner (N,) another sample, lambda (N,)
    the weight of the sample's own image)."""
    mixed = torch.rand(n, generator=generator, device=device) < p
    partner = (torch.arange(n, device=device) + torch.randint(1, n, (n,), generator=generator, device=device)) % n
    return mixed, partner, sample_beta(concentration, n, generator, device)


def box_mixup(images: torch.Tensor, targets: RaggedBatch, p: float, generator: torch.Generator,
              concentration: float = BOX_MIXUP_CONCENTRATION) -> tuple[torch.Tensor, RaggedBatch]:
    """Each sample, with probability ``p``, blended with another image of the batch; it keeps its
    boxes and gains the other's (see the module notes). Returns (images, targets)."""
    n = len(images)
    if p <= 0 or n < 2:
        return images, targets
    _require_boxes(targets)
    mixed, partner, lam = mixup_draws(n, p, concentration, generator, images.device)
    blend = torch.lerp(images[partner], images, lam.view(-1, 1, 1, 1).to(images.dtype))
    guests = _grouped(targets).gather(partner)  # ``image`` is the host: the position in ``partner``
    return keep_unmoved(mixed, blend, images), _concat(targets, guests.keep(mixed[guests.image]))


def mix_boxes(images: torch.Tensor, targets: RaggedBatch, mosaic_p: float, mixup_p: float,
              generator: torch.Generator, min_visible: float = 0.0) -> tuple[torch.Tensor, RaggedBatch]:
    """Mosaic, then box mixup (so a mosaic may be blended with another image, as the two are
    usually combined); each at its own probability per sample, 0 leaving it out."""
    images, targets = mosaic(images, targets, mosaic_p, generator, min_visible=min_visible)
    return box_mixup(images, targets, mixup_p, generator)


def _require_boxes(targets: RaggedBatch) -> None:
    if not isinstance(targets, RaggedBatch) or "boxes" not in targets.fields:
        raise TypeError("mosaic and box mixup need ragged targets with boxes (a RaggedBatch with a 'boxes' field)")


def _grouped(targets: RaggedBatch) -> RaggedTargets:
    """The batch's objects grouped by image, with offsets: what ``gather`` copies images' objects from."""
    order = torch.argsort(targets.image, stable=True)
    counts = torch.bincount(targets.image, minlength=targets.size)
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    return RaggedTargets({k: v[order] for k, v in targets.fields.items()}, offsets)


def _concat(first: RaggedBatch, second: RaggedBatch) -> RaggedBatch:
    """The objects of both (same images, same fields), ``first``'s rows first."""
    return RaggedBatch({k: torch.cat([v, second.fields[k]]) for k, v in first.fields.items()},
                       torch.cat([first.image, second.image]), first.size)
