"""What the three detection file formats share: a parsed listing becomes images and targets.

Each format module (``coco``, ``voc``, ``yolo``) only parses its files into a ``Listing``: per
image, the file, its boxes as xyxy (pixels, or fractions of the image for YOLO) and labels, and
how errors name the image and each object. Everything after that is the same for all formats and
lives here, so a bad box reads the same whatever file it came from:

1. Every image header is opened (no pixel decode): a missing or unreadable image, or one whose
   size differs from the size its annotations declare, is an error naming it (``strict=False``:
   skipped and counted).
2. Every object is checked by the very rules of ``boxes.read_boxes`` (finite, not empty or
   inverted, not far outside the image), named by its file and its annotation id, object index
   or line; then ``read_boxes`` itself builds the targets and clips what is just outside.
3. The images are decoded and letterboxed (``letterbox``) to one training size: ``resize`` when
   given, else planned from the data (``plan_size``); boxes move with them.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import yaml
from PIL import Image
from torchvision import tv_tensors

from ...errors import DataError
from ..boxes import OUTSIDE_TOLERANCE, BoxReading, _problem, read_boxes
from ..images import image_to_chw, pil_to_chw
from ..targets import RaggedTargets
from .letterbox import letterbox, letterbox_targets, plan_size

GREY_MODES = ("1", "L", "I", "I;16", "F")
"""PIL modes of single-channel images."""


@dataclass
class Entry:
    """One image of a listing and its objects, as its annotation file gives them."""

    image: Path
    where: str
    """How errors name the image's annotations: the JSON and image id, the XML file, the label file."""
    boxes: list[list[float]] = field(default_factory=list)
    """xyxy per object: pixels, or fractions of the image when the listing is ``normalized``."""
    labels: list[int] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)
    """How errors name each object: ``annotation 12``, ``object 3``, ``line 4``."""
    declared_size: tuple[int, int] | None = None
    """(height, width) the annotations say the image has, when they say."""


def no_usable_images(listing: Any) -> DataError:
    """The error for a listing (``Listing``, ``MaskListing``) none of whose images could be used."""
    return DataError(f"{listing.origin}: none of the {len(listing.entries)} images could be used"
                     + (f" (first problem: {listing.skipped[0]})" if listing.skipped else ""))


def yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """A YAML file of a data set that must hold a mapping; ``what`` says what it should hold."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"{path}: cannot read it as YAML ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: {what}")
    return data


class Refusals:
    """``refuse`` for a listing dataclass with ``skipped`` (images) and ``dropped`` (objects) lists:
    one rule for what strict reading raises and lenient reading counts, in every file format."""

    skipped: list[str]
    dropped: list[str]

    def refuse(self, strict: bool, where: str, problem: str, fix: str, skipped: bool = False) -> None:
        """Raise for a bad annotation or image (``strict``), else drop the object (or skip the
        image, ``skipped``) and count it."""
        if strict:
            what = "skip such images" if skipped else "drop such objects"
            raise DataError(f"{where}: {problem}; {fix}, or set strict: false to {what}")
        (self.skipped if skipped else self.dropped).append(f"{where}: {problem}")


@dataclass
class Listing(Refusals):
    """A data set's images and objects as parsed from its files, before any pixel is read."""

    file_format: str
    origin: str
    entries: list[Entry]
    class_names: list[str]
    box_format: str
    """The format the files store boxes in (for the plan; entries hold xyxy already)."""
    format_from: str
    normalized: bool = False
    dropped: list[str] = field(default_factory=list)
    """Objects the parser dropped (``strict=False``), one line each, naming it and why."""
    ignored: dict[str, int] = field(default_factory=dict)
    """Objects the format says not to train on, by flag (COCO ``iscrowd``, VOC ``difficult``)."""
    skipped: list[str] = field(default_factory=list)
    """Images skipped (``strict=False``), one line each, naming it and why."""
    missing_hint: str = ""
    """Added to the error for a missing image: where the format looks for image files."""



@dataclass
class FileReading(BoxReading):
    """How a detection data set on disk was read: ``BoxReading``'s notes and the file format's."""

    file_format: str = ""
    size: tuple[int, int] = (0, 0)
    """(height, width) every image was letterboxed to."""
    size_from: str = ""
    """``resize`` when the caller gave the size, else the rule that planned it from the data."""
    ignored: dict[str, int] = field(default_factory=dict)
    skipped_images: list[str] = field(default_factory=list)


@dataclass
class DetectionFiles:
    """A detection data set read from disk: letterboxed images, their boxes and how they were read."""

    images: torch.Tensor
    """(N, C, H, W) uint8: 1 channel when every image is greyscale, else 3."""
    targets: RaggedTargets
    """Per image: ``boxes`` (M, 4) float32 xyxy on the letterboxed canvas, ``labels`` (M,) int64."""
    class_names: list[str]
    reading: FileReading
    letterboxes: torch.Tensor
    """(N, 5) float64 per image: scale, pad x, pad y, original height, original width; with
    ``unletterbox_boxes`` they map boxes back to the original image's pixels."""
    files: list[Path]
    origin: str


def load_listing(listing: Listing, *, resize: tuple[int, int] | None = None, strict: bool = True,
                 memory_limit_gb: float = 4.0) -> DetectionFiles:
    """Check, decode and letterbox the images of ``listing``; see the module's docstring for the steps."""
    entries, sizes, grey = _scan_headers(listing, strict)
    names = listing.class_names
    annotations = []
    for entry, size in zip(entries, sizes):
        boxes, labels = _checked_objects(entry, size, names, listing, strict)
        annotations.append({"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=size),
                            "labels": labels})
    targets, checked = read_boxes(annotations, sizes, listing.origin, num_classes=len(names), strict=strict)
    size, size_from = (tuple(resize), "resize") if resize is not None else plan_size(sizes)
    channels = 1 if all(grey) else 3
    needed = len(entries) * channels * size[0] * size[1]
    if needed > memory_limit_gb * 2**30:
        raise DataError(f"{listing.origin}: {len(entries)} images at {channels}x{size[0]}x{size[1]} take "
                        f"{needed / 2**30:.1f} GB, more than memory_limit_gb ({memory_limit_gb:g}); set a smaller "
                        "resize, raise memory_limit_gb, or train on a part of the data")
    letterboxes = letterbox_targets(targets, sizes, size)
    images, failed = _decode_all([e.image for e in entries], channels, size)
    for index, why in failed:
        listing.refuse(strict, entries[index].where, f"the image file {entries[index].image} {why}",
                       "replace the file", skipped=True)
    if failed:
        keep = torch.tensor(sorted(set(range(len(entries))) - {i for i, _ in failed}), dtype=torch.int64)
        images, targets, letterboxes = images[keep], targets.subset(keep), letterboxes[keep]
        entries = [entries[int(i)] for i in keep]
    reading = FileReading(listing.box_format, listing.normalized, listing.format_from, checked.clipped,
                          listing.dropped + checked.dropped, file_format=listing.file_format,
                          size=size, size_from=size_from, ignored=dict(listing.ignored),  # type: ignore[arg-type]
                          skipped_images=list(listing.skipped))
    return DetectionFiles(images, targets, list(names), reading, letterboxes, [e.image for e in entries],
                          listing.origin)


def _scan_headers(listing: Listing, strict: bool) -> tuple[list[Entry], list[tuple[int, int]], list[bool]]:
    """The entries whose image opens (and has the declared size), each image's (height, width), and
    whether it is greyscale; the others refused or skipped."""
    entries, sizes, grey = [], [], []
    for entry in listing.entries:
        if not entry.image.is_file():
            listing.refuse(strict, entry.where, f"the image file {entry.image} does not exist{listing.missing_hint}",
                           "add the file", skipped=True)
            continue
        try:
            with Image.open(entry.image) as image:
                size, mode = (image.height, image.width), image.mode
        except Exception as exc:  # PIL raises many types for broken files
            listing.refuse(strict, entry.where, f"the image file {entry.image} cannot be read ({type(exc).__name__})",
                           "replace the file", skipped=True)
            continue
        if entry.declared_size and tuple(entry.declared_size) != size:
            (dh, dw), (h, w) = entry.declared_size, size
            listing.refuse(strict, entry.where, f"the image file {entry.image} is {w}x{h} pixels but the annotations "
                           f"say {dw}x{dh} (a rotated or replaced image: its boxes would not fit)",
                           "fix the size or the file", skipped=True)
            continue
        entries.append(entry)
        sizes.append(size)
        grey.append(mode in GREY_MODES)
    if not entries:
        raise no_usable_images(listing)
    return entries, sizes, grey


def _checked_objects(entry: Entry, size: tuple[int, int], names: list[str], listing: Listing,
                     strict: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's objects in pixels, each checked by ``read_boxes``'s rules and named by its file."""
    height, width = size
    boxes = torch.tensor(entry.boxes, dtype=torch.float64).reshape(-1, 4)
    labels = torch.tensor(entry.labels, dtype=torch.int64).reshape(-1)
    if listing.normalized:
        boxes = boxes * torch.tensor([width, height, width, height], dtype=torch.float64)
    slack = torch.tensor([-OUTSIDE_TOLERANCE * width, -OUTSIDE_TOLERANCE * height,
                          (1 + OUTSIDE_TOLERANCE) * width, (1 + OUTSIDE_TOLERANCE) * height], dtype=torch.float64)
    keep = torch.ones(len(boxes), dtype=torch.bool)
    for j, (box, label) in enumerate(zip(boxes, labels.tolist())):
        problem = _problem(box, label, width, height, slack, len(names))
        if problem is not None:
            keep[j] = False
            name = names[label] if 0 <= label < len(names) else label
            listing.refuse(strict, f"{entry.where}, {entry.objects[j]} (box {[round(float(v), 2) for v in box]}, "
                           f"class {name!r})", problem, "fix the annotation")
    return boxes[keep], labels[keep]


def _decode_all(paths: list[Path], channels: int, size: tuple[int, int]) -> tuple[torch.Tensor, list[tuple[int, str]]]:
    """Every image decoded and letterboxed into one (N, C, H, W) uint8 tensor, in threads (PIL and
    torch release the GIL while they work); (index, why) of those that fail to decode."""
    images = torch.empty(len(paths), channels, *size, dtype=torch.uint8)
    failed: list[tuple[int, str]] = []

    def decode(index: int) -> None:
        try:
            with Image.open(paths[index]) as image:
                pixels = pil_to_chw(image, channels)
        except Exception as exc:  # a truncated file opens but does not decode
            failed.append((index, f"cannot be decoded ({type(exc).__name__})"))
            return
        images[index] = letterbox(pixels, size)[0]

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(decode, range(len(paths))))
    return images, sorted(failed)


# Writing: what the exporters share.

def image_list(images: Any) -> list[torch.Tensor]:
    """(N, C, H, W) / (N, H, W) images, or a sequence of differently sized ones, as uint8 (C, H, W)
    tensors (float images are taken to be in [0, 1])."""
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 3:
        images = images[:, None]
    chw = [image_to_chw(image, f"image {i}") for i, image in enumerate(images)]
    return [image if image.dtype == torch.uint8 else (image.float() * 255).round().clamp(0, 255).to(torch.uint8)
            for image in chw]


def target_list(targets: Any, count: int) -> list[dict[str, np.ndarray]]:
    """Per-image target dicts (or ``RaggedTargets``) as numpy: boxes (M, 4) float64, labels (M,) int64,
    and any per-object flags (``iscrowd``, ``difficult``) the writer knows."""
    if isinstance(targets, RaggedTargets):
        targets = targets.gather(slice(None)).per_image()
    if len(targets) != count:
        raise DataError(f"{count} images but {len(targets)} targets; give one target dict per image")
    return [{key: np.asarray(torch.as_tensor(value).detach().cpu(), dtype=np.float64 if key == "boxes" else np.int64)
             .reshape((-1, 4) if key == "boxes" else (-1,)) for key, value in target.items()} for target in targets]


def save_png(image: torch.Tensor, path: Path) -> None:
    """A uint8 (C, H, W) image as a PNG (greyscale, RGB or RGBA by its channels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = image.permute(1, 2, 0).numpy()
    Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(path)


def number(value: float, decimals: int = 6) -> str:
    """A coordinate as text: at most ``decimals`` decimals, no trailing zeros (``12``, ``12.5``)."""
    text = f"{value:.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def read_names(candidates: Sequence[Path]) -> list[str] | None:
    """Class names from the first of ``candidates`` that exists: one name a line, blank lines skipped."""
    for path in candidates:
        if path.is_file():
            return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return None
