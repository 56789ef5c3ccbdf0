"""Unlabeled images in any form labeled data takes, as a Source whose targets mean nothing.

Accepted: an image array or tensor alone ((N, H, W), (N, H, W, C) or (N, C, H, W)), an
``(images, labels)`` pair (the labels are ignored), a Dataset or DataLoader yielding images or
``(image, ...)`` tuples, an image folder (every image below it, class subfolders or not), a CSV
manifest (its first column) and a built-in name (``fashion-mnist:train``). The images must have
the labeled images' channels, size and pixel range, since they go through the same normalizer.
"""

from __future__ import annotations

import csv
import hashlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from ..data import builtin
from ..data.files import IMAGE_SUFFIXES, ImageFileDataset, scan_files
from ..data.images import image_to_chw
from ..data.inspect import FLOAT_SLACK, check_geometry, image_geometry
from ..data.sources import DataOptions, InMemory, Source, Streamed, as_source
from ..data.targets import as_targets
from ..errors import DataError
from ..plan import DataParams

UNKNOWN = -1
"""Target of every unlabeled image; nothing may train on it."""
RANGE_SAMPLE = 512
DARKER = 0.1
"""Unlabeled images whose brightest pixel is under this share of the labeled images' are on
another scale (0..1 floats next to 0..255 ones): the same normalizer would make them black."""


def as_unlabeled(data: Any, options: DataOptions, role: str = "unlabeled") -> Source:
    """Adapt ``data`` (the user's ``role`` argument) into a Source of images with UNKNOWN targets."""
    if isinstance(data, (str, Path)):
        source = _from_path(data, options, role)
    elif isinstance(data, (np.ndarray, torch.Tensor)):
        source = as_source((data, np.zeros(len(data), dtype=np.int64)), options, role=role)
    elif isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], (str, Path)):
        source = as_source((data[0], np.zeros(len(data[0]), dtype=np.int64)), options, role=role)
    elif isinstance(data, DataLoader):
        source = as_source(_ImagesOnly(data.dataset), options, role=f"{role} (DataLoader.dataset)")
    elif isinstance(data, Dataset):
        source = as_source(_ImagesOnly(data), options, role=role)
    else:
        raise DataError(
            f"{role}: cannot use a {type(data).__name__} as unlabeled data. Pass an image array or tensor, "
            "a torch Dataset or DataLoader, an image folder, a CSV manifest, or a built-in name "
            f"({', '.join(builtin.NAMES)})"
        )
    if len(source) == 0:
        raise DataError(f"{role}: no images")
    source.targets = as_targets(torch.full((len(source),), UNKNOWN, dtype=torch.int64))
    source.class_names = None
    return source


def check_unlabeled(source: Source, data: DataParams, labeled: Source) -> None:
    """The unlabeled images must look like the labeled ones to the model: geometry and pixel range."""
    check_geometry(source, data)
    own, theirs = _dtype(source), _dtype(labeled)
    if own is not None and theirs is not None and (own == torch.uint8) != (theirs == torch.uint8):
        raise DataError(
            f"{source.origin}: images are {own} but the labeled images are {theirs}; give both in one form "
            "(e.g. both uint8 0..255, or both float in [0, 1]) so they are normalized alike"
        )
    low, high = _unit_range(source, data)
    _, labeled_high = _unit_range(labeled, data)
    if low < -FLOAT_SLACK or high > 1 + FLOAT_SLACK or high < DARKER * labeled_high:
        raise DataError(
            f"{source.origin}: pixel values map to {low:.3g}..{high:.3g} where the labeled images reach "
            f"{labeled_high:.3g} (both mapped by x * {data.pixel_scale:.4g} + {data.pixel_offset:.4g}); "
            "give the unlabeled images the labeled images' scale (e.g. both 0..255, or both 0..1)"
        )


def drop_known(source: Source, known: dict[str, Source | None]) -> Source:
    """``source`` without the images that are also in the labeled data, with a warning that counts them.

    ``known`` maps a role (training, validation, test) to its Source. An unlabeled copy of a
    validation or test image would be pseudo-labeled by the teacher and learned by the student,
    so validation (which accepts students and calibrates the threshold) and test would read too
    high; a copy of a training image would have its true label contradicted by a pseudo-label.
    Images held in memory are compared by their pixels, image files by their resolved paths;
    other streamed datasets cannot be compared without reading them all and are kept as given.
    """
    ids = _identities(source)
    if ids is None:
        return source
    keep = torch.ones(len(source), dtype=torch.bool)
    found = []
    for role, other in known.items():
        other_ids = _identities(other) if other is not None else None
        if other_ids is None:
            continue
        theirs = set(other_ids)
        hits = torch.tensor([i for i, key in enumerate(ids) if key in theirs], dtype=torch.int64)
        if len(hits):
            keep[hits] = False
            found.append(f"{len(hits)} in the {role} data")
    if not found:
        return source
    if not keep.any():
        raise DataError(f"{source.origin}: every unlabeled image is also in the labeled data ({', '.join(found)}); "
                        "pass images without labels that the labeled data does not hold")
    warnings.warn(f"{source.origin}: {int((~keep).sum())} of {len(source)} unlabeled images are also labeled "
                  f"({', '.join(found)}) and are left out: pseudo-labels on validation or test images would make "
                  "those scores read too high, and on training images contradict their labels", stacklevel=4)
    return source.subset(keep.nonzero()[:, 0])


def _identities(source: Source) -> list[bytes | Path] | None:
    """What makes each image the same image: its stored pixels (in memory) or its file, else None."""
    if isinstance(source, InMemory):
        images = source.images.contiguous().numpy()
        tag = str(images.dtype).encode()
        return [hashlib.blake2b(tag + row.tobytes(), digest_size=16).digest() for row in images]
    dataset, indices = source.dataset, None
    while isinstance(dataset, Subset):
        indices = [dataset.indices[i] for i in indices] if indices is not None else list(dataset.indices)
        dataset = dataset.dataset
    if not isinstance(dataset, ImageFileDataset):
        return None
    paths = [Path(p).resolve() for p in dataset.paths]
    return [paths[i] for i in indices] if indices is not None else paths


def _unit_range(source: Source, data: DataParams) -> tuple[float, float]:
    """(min, max) of a sample of ``source``'s pixels in [0, 1] units of the labeled data."""
    pixels = source.images_at(torch.arange(min(RANGE_SAMPLE, len(source)))).float()
    pixels = pixels * data.pixel_scale + data.pixel_offset
    return float(pixels.min()), float(pixels.max())


def _dtype(source: Source) -> torch.dtype | None:
    return source.images.dtype if isinstance(source, InMemory) else None


def _from_path(data: str | Path, options: DataOptions, role: str) -> Source:
    text = str(data)
    if text.partition(":")[0] in builtin.NAMES:
        return as_source(text, options, role=role)
    path = Path(text)
    if path.is_file() and path.suffix.lower() == ".csv":
        paths = _manifest_paths(path)
    elif path.is_dir():
        paths = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
    else:
        raise DataError(f"{role}: {text!r} is neither an image folder, a CSV manifest nor a built-in dataset "
                        f"({', '.join(builtin.NAMES)})")
    if not paths:
        raise DataError(f"{role}: no image files in {path} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    files = scan_files(paths, torch.zeros(len(paths), dtype=torch.int64), [], str(path), options.resize,
                       options.strict)
    return Streamed(ImageFileDataset(files.paths, files.targets, files.channels, files.size), files.targets, None,
                    str(path), files.channels, files.size)


def _manifest_paths(csv_path: Path) -> list[Path]:
    """The first column of a manifest (labels, if any, are ignored); relative paths are from the CSV."""
    paths = []
    with csv_path.open(newline="") as handle:
        for line_no, row in enumerate(csv.reader(handle), start=1):
            if not row or not row[0].strip():
                continue
            if line_no == 1 and row[0].strip().lower() in ("path", "file", "filename", "image"):
                continue
            path = Path(row[0].strip())
            paths.append(path if path.is_absolute() else csv_path.parent / path)
    return paths


class _ImagesOnly(Dataset):
    """A user Dataset of images, or of (image, ...) tuples, as (image, 0) pairs."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        item = self.dataset[index]
        image = item[0] if isinstance(item, (tuple, list)) else item
        return image_to_chw(image, f"unlabeled item {index}"), 0


def concat_sources(first: Source, second: Source, targets: torch.Tensor | None = None) -> Source:
    """``first`` then ``second`` as one Source, with ``targets`` for all of it (None: UNKNOWN for
    every image, for training that ignores targets; the two parts' own targets may not even share
    a shape, e.g. multi-hot labels next to unlabeled images).

    Two in-memory sources stay in memory (batched on the device); otherwise the result streams
    through a ConcatDataset.
    """
    if targets is None:
        targets = torch.full((len(first) + len(second),), UNKNOWN, dtype=torch.int64)
    origin = f"{first.origin} + {second.origin}"
    if isinstance(first, InMemory) and isinstance(second, InMemory):
        return InMemory(torch.cat([first.images, second.images]), targets, first.class_names, origin)
    split = len(first)
    dataset = ConcatDataset([_Relabeled(first, targets[:split]), _Relabeled(second, targets[split:])])
    channels, height, width = image_geometry(first)
    return Streamed(dataset, targets, first.class_names, origin, channels, (height, width))


class _Relabeled(Dataset):
    """Items of a Source (in memory or streamed) with the given targets."""

    def __init__(self, source: Source, targets: torch.Tensor):
        self.source, self.targets = source, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.source, InMemory):
            return self.source.images[index], self.targets[index]
        return self.source.dataset[index][0], self.targets[index]
