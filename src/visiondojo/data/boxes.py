"""Per-image box annotations in any common form -> ``RaggedTargets`` in the one form training uses.

The form throughout visiondojo is torchvision's: per image ``{"boxes": (M, 4) float xyxy in
pixels, "labels": (M,) int64}``; images without objects are valid. Annotations arrive as dicts of
tensors, arrays or lists, or as torchvision ``tv_tensors.BoundingBoxes`` (which carry their
format and canvas size). The box format (xyxy, xywh, cxcywh) is taken from the data when it says,
else from ``box_format``; coordinates are read as normalized (fractions of the image) when every
one of them lies in [0, 1] and the images are larger than 1 pixel, and that inference is reported
so the plan can say it.

Bad boxes get an error naming the image and the object: NaN or infinite coordinates, x2 <= x1 or
y2 <= y1, a box beyond the image by more than ``OUTSIDE_TOLERANCE`` of its side (within it, the box
is clipped and counted), a negative label or one beyond the class names. With ``strict=False``
the bad objects are dropped and counted instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.ops import box_convert

from ..errors import DataError
from .targets import RaggedTargets

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")
OUTSIDE_TOLERANCE = 0.02
"""Share of the image's side a box may reach beyond it and still be clipped rather than refused
(annotation tools round and pad; a box 30% outside is a wrong coordinate system)."""


@dataclass
class BoxReading:
    """How the annotations were read: what the plan and the inspection report."""

    box_format: str
    normalized: bool
    format_from: str
    """Where the format came from: the data (``BoundingBoxes``), the caller, or the default."""
    clipped: int = 0
    dropped: list[str] = field(default_factory=list)
    """With ``strict=False``: one line per dropped object, naming it and why."""


def read_boxes(annotations: Sequence[Any], image_sizes: Sequence[tuple[int, int]], origin: str, *,
               box_format: str | None = None, num_classes: int | None = None,
               strict: bool = True) -> tuple[RaggedTargets, BoxReading]:
    """Per-image annotations (``image_sizes``: (height, width) of each image) -> targets and how they were read."""
    if len(annotations) != len(image_sizes):
        raise DataError(f"{origin}: {len(image_sizes)} images but {len(annotations)} annotations; they must match one to one")
    if box_format is not None and box_format not in BOX_FORMATS:
        raise DataError(f"box_format: {box_format!r} is not one of {', '.join(BOX_FORMATS)}")
    raw = [_fields(a, i, origin) for i, a in enumerate(annotations)]
    declared = {b.format.value.lower() for b, _ in raw if isinstance(b, tv_tensors.BoundingBoxes)}
    if len(declared) > 1:
        raise DataError(f"{origin}: the BoundingBoxes mix formats {sorted(declared)}; use one format")
    fmt, source = ((declared.pop(), "the data (BoundingBoxes)") if declared else
                   (box_format, "box_format") if box_format else ("xyxy", "the default (xyxy)"))
    coords = [torch.as_tensor(b, dtype=torch.float64).reshape(-1, 4) for b, _ in raw]
    everything = torch.cat(coords) if coords else torch.zeros(0, 4, dtype=torch.float64)
    finite = everything[torch.isfinite(everything).all(dim=1)]
    normalized = (not declared and len(finite) > 0 and bool(((finite >= 0) & (finite <= 1)).all())
                  and max(max(h, w) for h, w in image_sizes) > 1)
    reading = BoxReading(fmt, normalized, source)
    samples = []
    for i, ((_, labels), boxes, (height, width)) in enumerate(zip(raw, coords, image_sizes)):
        if normalized:
            boxes = boxes * torch.tensor([width, height, width, height], dtype=torch.float64)
        boxes = box_convert(boxes, fmt, "xyxy") if fmt != "xyxy" else boxes
        samples.append(_checked(boxes, labels, i, (height, width), origin, num_classes, strict, reading))
    return RaggedTargets.from_samples(samples), reading


def _fields(annotation: Any, index: int, origin: str) -> tuple[Any, torch.Tensor]:
    if not isinstance(annotation, dict) or "boxes" not in annotation or "labels" not in annotation:
        raise DataError(f"{origin}: annotation {index} is a {type(annotation).__name__}; give a dict with "
                        "'boxes' (M, 4) and 'labels' (M,) per image (empty for an image without objects)")
    boxes = annotation["boxes"]
    boxes = boxes if isinstance(boxes, torch.Tensor) else torch.as_tensor(np.asarray(boxes, dtype=np.float64))
    labels = torch.as_tensor(np.asarray(annotation["labels"])).reshape(-1)
    if boxes.numel() % 4 or len(boxes.reshape(-1, 4)) != len(labels):
        raise DataError(f"{origin}: image {index} has {boxes.numel() / 4:g} boxes but {len(labels)} labels; "
                        "give one label per box, boxes shaped (M, 4)")
    if labels.dtype.is_floating_point and not bool((labels == labels.round()).all()):
        raise DataError(f"{origin}: image {index} has a fractional label; labels are class indices")
    return boxes, labels.long()


def _checked(boxes: torch.Tensor, labels: torch.Tensor, image: int, size: tuple[int, int], origin: str,
             num_classes: int | None, strict: bool, reading: BoxReading) -> dict[str, torch.Tensor]:
    """One image's xyxy boxes, refused (strict) or dropped when bad, clipped when just outside."""
    height, width = size
    keep = torch.ones(len(boxes), dtype=torch.bool)
    slack = torch.tensor([-OUTSIDE_TOLERANCE * width, -OUTSIDE_TOLERANCE * height,
                          (1 + OUTSIDE_TOLERANCE) * width, (1 + OUTSIDE_TOLERANCE) * height], dtype=torch.float64)
    for j, (box, label) in enumerate(zip(boxes, labels)):
        problem = _problem(box, int(label), width, height, slack, num_classes)
        if problem is None:
            continue
        where = f"{origin}: image {image}, object {j} (box {[round(float(v), 2) for v in box]}, label {int(label)})"
        if strict:
            raise DataError(f"{where}: {problem}; fix the annotation, or set strict: false to drop such objects")
        keep[j] = False
        reading.dropped.append(f"{where}: {problem}")
    boxes, labels = boxes[keep], labels[keep]
    limits = torch.tensor([width, height, width, height], dtype=torch.float64)
    clipped = torch.minimum(boxes.clamp_min(0), limits)
    reading.clipped += int((clipped != boxes).any(dim=1).sum())
    return {"boxes": clipped.to(torch.float32), "labels": labels}


def _problem(box: torch.Tensor, label: int, width: int, height: int, slack: torch.Tensor,
             num_classes: int | None) -> str | None:
    if not bool(torch.isfinite(box).all()):
        return "a coordinate is NaN or infinite"
    x1, y1, x2, y2 = box.tolist()
    if x2 <= x1 or y2 <= y1:
        return "x2 <= x1 or y2 <= y1 (an empty or inverted box; check box_format)"
    if x1 < slack[0] or y1 < slack[1] or x2 > slack[2] or y2 > slack[3]:
        return (f"the box reaches beyond the {width}x{height} image by more than {OUTSIDE_TOLERANCE:.0%} of its side "
                "(check box_format and whether coordinates are normalized)")
    if label < 0 or (num_classes is not None and label >= num_classes):
        top = f"0..{num_classes - 1}" if num_classes is not None else "0 or more"
        return f"label {label} is not a class ({top})"
    return None
