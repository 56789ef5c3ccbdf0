"""Inspection: infer the task, classes, image geometry and pixel statistics from the training data.

Every inferred value can be overridden through ``DataOptions``; overrides are checked against
the data (a label beyond ``num_classes`` is an error, not a silent crash in the loss).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import DataError
from ..plan import TASKS, DataParams
from .sources import DataOptions, InMemory, Source, class_labels, empty_data_error
from .boxes import BoxReading
from .formats import MaskReading
from .targets import IGNORE_INDEX, RaggedTargets

IMBALANCE_WARNING_RATIO = 10.0
SMALL_AREA, MEDIUM_AREA = 32**2, 96**2
"""COCO's object size classes: small below 32x32 pixels of area, large from 96x96."""
TINY_SIDE = 4.0
"""Boxes with a side under this many pixels at the training size: too small for most detectors' strides."""
TINY_WARNING_SHARE = 0.05
_STATS_SAMPLES_IN_MEMORY = 20_000
_STATS_SAMPLES_STREAMED = 512


FLOAT_SLACK = 0.5
"""Float pixels this far outside [0, 1] (noise, sharpening) still count as [0, 1] data."""


def infer_task(targets: torch.Tensor) -> str:
    if targets.ndim == 2:
        return "multilabel"
    return "binary" if int(targets.max()) <= 1 else "multiclass"


def inspect_data(train: Source, options: DataOptions) -> DataParams:
    """DataParams for ``train``; raises DataError for empty data or labels that do not fit."""
    if len(train) == 0:
        raise empty_data_error(train.origin)
    boxes = isinstance(train.targets, RaggedTargets)
    masks = is_masks(train)
    task = options.task or ("detection" if boxes else "segmentation" if masks else infer_task(class_labels(train)))
    declared = options.num_classes or (len(options.class_names) if options.class_names else None)
    if options.task is None and task == "binary" and declared is not None and declared > 2:
        task = "multiclass"  # two labels seen, more classes declared: the others are absent from this data
    if task not in TASKS:
        raise DataError(f"task: unknown task {task!r}; allowed: {', '.join(TASKS)}")
    if boxes != (task == "detection"):
        raise DataError(f"{train.origin}: task {task} needs "
                        + ("per-image box annotations ({'boxes', 'labels'} dicts)" if task == "detection" else
                           "class labels, but box annotations were given (they mean task: detection)"))
    if masks != (task == "segmentation"):
        raise DataError(f"{train.origin}: task {task} needs "
                        + ("(N, H, W) masks of class indices" if task == "segmentation" else
                           "class labels, but (N, H, W) masks were given (they mean task: segmentation)"))
    if boxes:
        num_classes = _detection_classes(train, options)
    elif masks:
        num_classes = _mask_classes(train, options)
    else:
        num_classes = _num_classes(train, task, options)
    check_targets(train, task, num_classes)
    channels, height, width = image_geometry(train)
    images = _stats_sample(train)
    pixel_scale, pixel_offset = pixel_range(images)
    mean, std = channel_stats(images, pixel_scale, pixel_offset)
    objects = {}
    if boxes:  # inspect_boxes counts the objects per class and warns about their imbalance itself
        stats = inspect_boxes(train.targets, (height, width), num_classes, train.origin)
        counts, objects = stats.class_counts, box_summary(stats, getattr(train, "reading", None))
    elif masks:
        counts = train.targets.class_counts(num_classes, ignore_index=IGNORE_INDEX)
        _warn_rare_pixels(counts, class_names_of(train, options, num_classes), train.origin)
        objects = mask_summary(train.targets.values, num_classes, getattr(train, "reading", None))
    else:
        counts = train.targets.class_counts(num_classes)
        _refuse_a_single_class(counts, train.origin, options)
        _warn_imbalance(counts, train.origin)
    class_names = class_names_of(train, options, num_classes)
    if len(class_names) != num_classes:
        raise DataError(
            f"class_names: {len(class_names)} names given for {num_classes} classes; give one name per class"
        )
    return DataParams(
        task=task, num_classes=num_classes, channels=channels, height=height, width=width,
        mean=mean, std=std, pixel_scale=pixel_scale, pixel_offset=pixel_offset, class_names=[str(n) for n in class_names],
        class_counts=counts, train_size=len(train), objects=objects,
        resize=list(options.resize) if options.resize is not None else None,
    )


def _refuse_a_single_class(counts: list[int], origin: str, options: DataOptions) -> None:
    """A classifier needs examples of two classes or more; data of one class is almost always a
    mistake (one folder of a class-folder tree read, the labels column of a constant). Declaring
    the classes (``num_classes``, ``class_names``) says the others exist elsewhere, and is allowed."""
    present = [k for k, count in enumerate(counts) if count]
    if len(present) == 1 and options.num_classes is None and options.class_names is None:
        raise DataError(f"{origin}: every training sample has the same class ({present[0]}); a classifier needs "
                        "examples of at least two classes. Check the labels (or the folder: one subfolder per "
                        "class), or declare the classes with num_classes / class_names if the others exist")


def _num_classes(train: Source, task: str, options: DataOptions) -> int:
    targets = class_labels(train)
    if task == "multilabel":
        if targets.ndim != 2:
            raise DataError(f"{train.origin}: task multilabel needs (N, K) multi-hot labels, got shape {tuple(targets.shape)}")
        return targets.shape[1]
    if targets.ndim != 1:
        raise DataError(
            f"{train.origin}: task {task} needs (N,) class-index labels, got shape {tuple(targets.shape)}; "
            "(N, K) multi-hot labels mean task: multilabel"
        )
    if task == "binary":
        return 2
    if options.num_classes is not None:
        return options.num_classes
    if train.class_names:
        count = len(train.class_names)
        highest = int(targets.max())
        if options.class_names and highest >= count:
            # Name the list the user gave, not a label: the labels are fine, the list is short.
            raise DataError(
                f"class_names: {count} names given but the labels go up to {highest}; give one name per class"
            )
        return count
    return int(targets.max()) + 1


def _detection_classes(train: Source, options: DataOptions) -> int:
    """Object classes: as many as the names (given, or carried by the data), else the largest label + 1."""
    names = options.class_names or train.class_names
    if options.num_classes is not None:
        return options.num_classes
    if names:
        return len(names)
    labels = train.targets.fields["labels"]
    return int(labels.max()) + 1 if len(labels) else 1


def is_masks(source: Source) -> bool:
    """Whether the source's targets are (N, H, W) segmentation masks."""
    values = getattr(source.targets, "values", None)
    return values is not None and values.ndim == 3


def _mask_classes(train: Source, options: DataOptions) -> int:
    """Classes of masks: as many as the names (given, or carried), else the largest index + 1
    (the ignore index aside)."""
    if options.num_classes is not None:
        return options.num_classes
    names = options.class_names or train.class_names
    if names:
        return len(names)
    values = train.targets.values
    labelled = values[values != IGNORE_INDEX]
    return int(labelled.max()) + 1 if len(labelled) else 1


def class_names_of(train: Source, options: DataOptions, num_classes: int) -> list[str]:
    return list(options.class_names or train.class_names or [str(i) for i in range(num_classes)])


def mask_summary(masks: torch.Tensor, num_classes: int, reading: Any) -> dict[str, Any]:
    """What the plan records about the training masks (``DataParams.objects``; the pixels per class
    are ``class_counts``): per class the images that show it, and how mask files were read.

    Pixel counts alone hide how a class is spread: 1% of the pixels in every image and 1% in one
    image in a hundred train very differently (the second is seen in one batch an epoch).
    """
    summary: dict[str, Any] = {"images_per_class": images_per_class(masks, num_classes)}
    if isinstance(reading, MaskReading):
        summary["file_format"] = reading.file_format
        summary["size_from"] = reading.size_from
        if reading.ignored:
            summary["ignored"] = dict(reading.ignored)
        if reading.skipped_images:
            summary["skipped_images"] = len(reading.skipped_images)
        if reading.dropped:
            summary["dropped"] = len(reading.dropped)
    return summary


def images_per_class(masks: torch.Tensor, num_classes: int) -> list[int]:
    """How many of the (N, H, W) ``masks`` hold each class (ignored pixels and values beyond the
    classes aside): one bincount of (image, class) per chunk of about 4M pixels."""
    counts = torch.zeros(num_classes, dtype=torch.int64)
    if len(masks) == 0:
        return counts.tolist()
    pixels = max(1, masks[0].numel())
    for part in masks.split(max(1, 2**22 // pixels)):
        flat = part.reshape(len(part), -1).long()
        owner = torch.arange(len(part)).unsqueeze(1) * num_classes
        keep = (flat >= 0) & (flat < num_classes)
        present = torch.bincount((owner + flat)[keep], minlength=len(part) * num_classes)
        counts += (present.view(len(part), num_classes) > 0).sum(dim=0)
    return counts.tolist()


RARE_PIXELS = 0.001
"""A class covering under 0.1% of the labelled pixels is warned about: its IoU will be noisy."""


def _warn_rare_pixels(counts: list[int], names: list[str], origin: str) -> None:
    total = max(sum(counts), 1)
    rare = [f"{names[k] if k < len(names) else k} ({c / total:.3%})" for k, c in enumerate(counts)
            if c / total < RARE_PIXELS]
    if rare:
        warnings.warn(f"{origin}: classes covering under {RARE_PIXELS:.1%} of the labelled pixels: {', '.join(rare)}; "
                      "their IoU rests on few pixels", stacklevel=3)


def check_targets(source: Source, task: str, num_classes: int) -> None:
    """Raise DataError naming the first label that does not fit the task."""
    if len(source) == 0:
        raise empty_data_error(source.origin)
    if task == "detection":
        _check_box_labels(source, num_classes)
        return
    if task == "segmentation":
        _check_masks(source, num_classes)
        return
    targets = class_labels(source)
    if task == "multilabel":
        if targets.ndim != 2 or targets.shape[1] != num_classes:
            raise DataError(
                f"{source.origin}: labels have shape {tuple(targets.shape)}; expected (N, {num_classes}) multi-hot"
            )
        return
    if targets.ndim != 1:
        raise DataError(f"{source.origin}: labels have shape {tuple(targets.shape)}; expected (N,) class indices")
    bad = (targets < 0) | (targets >= num_classes)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise DataError(
            f"{source.origin}: label {int(targets[first])} at index {source.position(first)} is outside "
            f"0..{num_classes - 1} "
            f"({int(bad.sum())} labels out of range); fix the labels or set num_classes"
        )


def _check_masks(source: Source, num_classes: int) -> None:
    if not is_masks(source):
        raise DataError(f"{source.origin}: task segmentation needs (N, H, W) masks of class indices")
    if num_classes > IGNORE_INDEX:
        raise DataError(f"{source.origin}: {num_classes} classes; segmentation supports up to {IGNORE_INDEX} "
                        f"(class indices 0..{IGNORE_INDEX - 1}, {IGNORE_INDEX} marks ignored pixels)")
    values = source.targets.values
    bad = (values >= num_classes) & (values != IGNORE_INDEX)
    if bool(bad.any()):
        first = int(bad.flatten(1).any(dim=1).nonzero()[0, 0])
        raise DataError(f"{source.origin}: mask {source.position(first)} holds class {int(values[first][bad[first]][0])}, "
                        f"outside 0..{num_classes - 1} (and not the ignore index {IGNORE_INDEX}); fix the masks or "
                        "set num_classes / class_names")


def _check_box_labels(source: Source, num_classes: int) -> None:
    if not isinstance(source.targets, RaggedTargets) or "boxes" not in source.targets.fields:
        raise DataError(f"{source.origin}: task detection needs per-image box annotations "
                        "({'boxes': (M, 4), 'labels': (M,)} per image), not class labels")
    labels = source.targets.fields["labels"]
    bad = (labels < 0) | (labels >= num_classes)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        image = int(torch.searchsorted(source.targets.offsets, row, right=True)) - 1
        obj = row - int(source.targets.offsets[image])
        raise DataError(
            f"{source.origin}: image {source.position(image)}, object {obj}: label {int(labels[row])} is outside "
            f"0..{num_classes - 1} ({int(bad.sum())} labels out of range); fix the labels or give every class a name"
        )


def image_geometry(source: Source) -> tuple[int, int, int]:
    if isinstance(source, InMemory):
        _, c, h, w = source.images.shape
        return c, h, w
    return source.channels, source.size[0], source.size[1]


def check_geometry(source: Source, params: DataParams) -> None:
    """Validation and test data must match the training images' channels and size."""
    geometry = image_geometry(source)
    expected = (params.channels, params.height, params.width)
    if geometry != expected:
        raise DataError(
            f"{source.origin}: images are {geometry[0]}x{geometry[1]}x{geometry[2]} (C x H x W) but the training "
            f"images are {expected[0]}x{expected[1]}x{expected[2]}; set resize: [HEIGHT, WIDTH] to match them"
        )


def _stats_sample(source: Source) -> torch.Tensor:
    limit = _STATS_SAMPLES_IN_MEMORY if isinstance(source, InMemory) else _STATS_SAMPLES_STREAMED
    if len(source) <= limit:
        indices = torch.arange(len(source))
    else:
        indices = torch.randperm(len(source), generator=torch.Generator().manual_seed(0))[:limit]
    return source.images_at(indices)


def pixel_range(images: torch.Tensor) -> tuple[float, float]:
    """(scale, offset) that map stored pixels to [0, 1] units: x * scale + offset.

    Bytes are 0..255. Floats in a [0, 1]-like range (a little noise outside is fine) stay as they
    are; floats up to 255 are bytes stored as floats; anything else (standardized data, other
    ranges) is mapped min-max over the inspected sample, so augmentation ops that assume [0, 1]
    (equalize, posterize, solarize, erasing) see the range they expect.
    """
    if images.dtype == torch.uint8:
        return 1.0 / 255.0, 0.0
    low, high = float(images.min()), float(images.max())
    if low >= -FLOAT_SLACK and high <= 1.0 + FLOAT_SLACK:
        return 1.0, 0.0
    if low >= -FLOAT_SLACK and high <= 255.0 + FLOAT_SLACK:
        return 1.0 / 255.0, 0.0
    span = max(high - low, 1e-12)
    return round(1.0 / span, 9), round(-low / span, 9)


def channel_stats(images: torch.Tensor, pixel_scale: float, pixel_offset: float = 0.0) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units, accumulated in float64 in chunks."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    count = 0
    for chunk in images.split(4096):
        values = chunk.to(torch.float64).mul_(pixel_scale).add_(pixel_offset).transpose(0, 1).reshape(channels, -1)
        total += values.sum(dim=1)
        total_sq += values.square().sum(dim=1)
        count += values.shape[1]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt().clamp_min(1e-6)
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]


def _warn_imbalance(counts: list[int], origin: str) -> None:
    smallest, largest = min(counts), max(counts)
    if smallest == 0 or largest / smallest >= IMBALANCE_WARNING_RATIO:
        warnings.warn(
            f"{origin}: strong class imbalance (largest class {largest} samples, smallest {smallest}); "
            "accuracy can look good while rare classes are missed: check per-class recall in the report",
            stacklevel=3,
        )


@dataclass
class BoxStats:
    """What an inspection of box annotations reports."""

    images: int
    objects: int
    objects_per_image_max: int
    images_without_objects: int
    class_counts: list[int]
    sizes: dict[str, int]
    """Objects per COCO size class (small / medium / large, by box area in pixels)."""
    tiny: int
    """Boxes with a side under ``TINY_SIDE`` pixels."""


def box_summary(stats: BoxStats, reading: BoxReading | None) -> dict[str, Any]:
    """What the plan records about the training boxes (``DataParams.objects``)."""
    summary: dict[str, Any] = {
        "objects": stats.objects, "per_image_mean": round(stats.objects / max(stats.images, 1), 3),
        "per_image_max": stats.objects_per_image_max, "images_without_objects": stats.images_without_objects,
        "sizes": stats.sizes, "tiny": stats.tiny}
    if reading is not None:
        summary["read_as"] = (f"{reading.box_format} from {reading.format_from}"
                              + (", normalized coordinates (all in [0, 1]) scaled to pixels" if reading.normalized
                                 else ", pixel coordinates"))
        summary["clipped"] = reading.clipped
        summary["dropped"] = len(reading.dropped)
        for name in ("file_format", "size_from", "ignored"):  # detection files (``formats.FileReading``)
            if getattr(reading, name, None):
                summary[name] = getattr(reading, name)
        if getattr(reading, "skipped_images", None):
            summary["skipped_images"] = len(reading.skipped_images)  # type: ignore[attr-defined]
    return summary


def inspect_boxes(targets: RaggedTargets, size: tuple[int, int], num_classes: int | None = None,
                  origin: str = "data") -> BoxStats:
    """Objects per image, class counts and box sizes of ``targets`` at image ``size``; warns about
    what hurts training: many tiny boxes, and a strong class imbalance."""
    boxes = targets.fields["boxes"].double()
    labels = targets.fields["labels"]
    k = num_classes if num_classes is not None else (int(labels.max()) + 1 if len(labels) else 0)
    sides = (boxes[:, 2:] - boxes[:, :2]).clamp_min(0)
    area = sides.prod(dim=1)
    stats = BoxStats(
        images=len(targets), objects=len(labels),
        objects_per_image_max=int(targets.counts.max()) if len(targets) else 0,
        images_without_objects=int((targets.counts == 0).sum()), class_counts=targets.class_counts(k),
        sizes={"small": int((area < SMALL_AREA).sum()),
               "medium": int(((area >= SMALL_AREA) & (area < MEDIUM_AREA)).sum()),
               "large": int((area >= MEDIUM_AREA).sum())},
        tiny=int((sides.amin(dim=1) < TINY_SIDE).sum()),
    )
    if stats.objects and stats.tiny > TINY_WARNING_SHARE * stats.objects:
        warnings.warn(f"{origin}: {stats.tiny} of {stats.objects} boxes have a side under {TINY_SIDE:g} pixels at "
                      f"{size[0]}x{size[1]}; most detectors miss objects that small (train at a larger size)",
                      stacklevel=2)
    if stats.objects:
        _warn_imbalance(stats.class_counts, origin)
    return stats
