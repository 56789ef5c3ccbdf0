"""Images on disk: class folders and CSV manifests, scanned up front and read by DataLoader workers.

Scanning opens every file header once (cheap: no pixel decode for most formats) so that
unreadable files, mixed sizes and the channel count are known before training starts, not
discovered by a worker crash in epoch 3.
"""

from __future__ import annotations

import csv
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import DataError
from .images import pil_to_chw, resize_batch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
_LABEL_SEPARATORS = re.compile(r"[;| ]+")


@dataclass
class ImageFiles:
    """A scanned list of image files with their targets."""

    paths: list[Path]
    targets: torch.Tensor
    class_names: list[str]
    channels: int
    size: tuple[int, int]
    """(height, width) every image has after the optional resize."""
    skipped: list[Path]


class ImageFileDataset(Dataset):
    """Reads one image per item as uint8 (C, H, W), converted to ``channels`` and resized to ``size``."""

    def __init__(self, paths: list[Path], targets: torch.Tensor, channels: int, size: tuple[int, int]):
        self.paths = paths
        self.targets = targets
        self.channels = channels
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        with Image.open(self.paths[index]) as image:
            pixels = pil_to_chw(image, self.channels)
        if tuple(pixels.shape[-2:]) != self.size:
            pixels = resize_batch(pixels.unsqueeze(0), self.size)[0]
        return pixels, self.targets[index]


def scan_image_folder(root: Path, *, resize: tuple[int, int] | None, strict: bool) -> ImageFiles:
    """One subfolder per class; class names are the sorted subfolder names."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        empty = "the folder is empty; " if not any(root.iterdir()) else ""
        raise DataError(f"{root}: {empty}an image folder needs one subfolder per class, found none "
                        f"(put each class's images in {root}/<class name>/)")
    paths: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(class_dirs):
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
                paths.append(path)
                labels.append(label)
    if not paths:
        raise DataError(
            f"{root}: the image folder is empty: no image files found in the class subfolders "
            f"(looked for {', '.join(sorted(IMAGE_SUFFIXES))}); put each class's images in {root}/<class name>/"
        )
    targets = torch.tensor(labels, dtype=torch.int64)
    return scan_files(paths, targets, [d.name for d in class_dirs], str(root), resize, strict)


def within_root(path: Path, root: Path, where: str, strict: bool) -> Path:
    """``path`` as a manifest or annotation file under ``root`` lists it. A path that leaves the
    root (absolute, or through ``..``) is an error naming it, or with ``strict: false`` a
    warning: a data set from someone else must not read whatever files the user can."""
    resolved, base = path.resolve(), root.resolve()
    if resolved != base and base not in resolved.parents:
        _refuse_or_allow(f"{where}: {path} is outside the data folder {root}", strict,
                         fix="move the file into the folder", allow="allow paths outside it")
    return path


def _refuse_or_allow(problem: str, strict: bool, *, fix: str, allow: str) -> None:
    """A listing problem that strict reading refuses and lenient reading keeps, with a warning."""
    if strict:
        raise DataError(f"{problem}; {fix}, or set strict: false (Python: strict=False) to {allow}")
    warnings.warn(f"{problem} (kept: strict is false)")


def scan_manifest(
    csv_path: Path, *, resize: tuple[int, int] | None, strict: bool, multi_hot: bool = False
) -> ImageFiles:
    """CSV rows ``path,labels``; labels are names separated by spaces, ';' or '|'; paths are relative to the CSV.

    Targets are multi-hot (N, K), unless every row names exactly one label and ``multi_hot`` is
    False: then they are class indices, so a single-label manifest trains as multi-class.
    """
    rows: list[tuple[Path, list[str]]] = []
    first_line: dict[Path, int] = {}
    with csv_path.open(newline="") as handle:
        for line_no, row in enumerate(csv.reader(handle), start=1):
            if not row or not "".join(row).strip():
                continue
            if line_no == 1 and row[0].strip().lower() in ("path", "file", "filename", "image"):
                continue
            if len(row) < 2:
                raise DataError(f"{csv_path}:{line_no}: expected 'path,labels', got {row!r}")
            names = [n for n in _LABEL_SEPARATORS.split(row[1].strip()) if n]
            path = Path(row[0].strip())
            path = path if path.is_absolute() else csv_path.parent / path
            key = path.resolve()
            if key in first_line:
                _refuse_or_allow(f"{csv_path}:{line_no}: {row[0].strip()} is listed again (first on line "
                                 f"{first_line[key]})", strict, fix="list each image once (merge its labels on one "
                                 "row)", allow="keep every row")
            first_line.setdefault(key, line_no)
            rows.append((within_root(path, csv_path.parent, f"{csv_path}:{line_no}", strict), names))
    if not rows:
        raise DataError(f"{csv_path}: the manifest is empty: it lists no images; add one 'path,labels' row per image")
    class_names = sorted({name for _, names in rows for name in names})
    index = {name: i for i, name in enumerate(class_names)}
    targets = torch.zeros(len(rows), len(class_names), dtype=torch.float32)
    for i, (_, names) in enumerate(rows):
        targets[i, [index[n] for n in names]] = 1.0
    if not multi_hot and bool((targets.sum(dim=1) == 1).all()):
        targets = targets.argmax(dim=1)
    return scan_files([p for p, _ in rows], targets, class_names, str(csv_path), resize, strict)


def scan_files(
    paths: list[Path], targets: torch.Tensor, class_names: list[str], origin: str,
    resize: tuple[int, int] | None, strict: bool,
) -> ImageFiles:
    sizes: dict[tuple[int, int], list[Path]] = {}
    colour = False
    bad: list[tuple[Path, str]] = []
    keep: list[int] = []
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                image.verify()
                height_width = (image.height, image.width)
                colour |= image.mode not in ("1", "L", "I", "I;16", "F")
        except Exception as exc:  # PIL raises many types for broken files
            bad.append((path, exc.__class__.__name__))
            continue
        sizes.setdefault(height_width, []).append(path)
        keep.append(i)
    if bad:
        listing = "\n".join(f"  {p} ({why})" for p, why in bad[:10])
        more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        if strict:
            raise DataError(
                f"{origin}: {len(bad)} unreadable image file(s):\n{listing}{more}\n"
                "Fix or remove them, or set strict: false to skip them."
            )
        warnings.warn(f"{origin}: skipped {len(bad)} unreadable image file(s):\n{listing}{more}", stacklevel=3)
    if not keep:
        raise DataError(f"{origin}: none of the {len(paths)} image files could be read")
    if resize is None and len(sizes) > 1:
        examples = ", ".join(f"{h}x{w} (e.g. {ps[0].name})" for (h, w), ps in list(sizes.items())[:4])
        raise DataError(
            f"{origin}: images have {len(sizes)} different sizes: {examples}. "
            "Set resize: [HEIGHT, WIDTH] (Python: resize=(H, W)) to bring them to one size."
        )
    size = tuple(resize) if resize is not None else next(iter(sizes))
    return ImageFiles(
        paths=[paths[i] for i in keep],
        targets=targets[keep],
        class_names=class_names,
        channels=3 if colour else 1,
        size=size,  # type: ignore[arg-type]
        skipped=[p for p, _ in bad],
    )
