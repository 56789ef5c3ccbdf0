"""YOLO: images plus one text file of boxes per image, ``class cx cy w h`` a line, normalized.

Two layouts are read:

- ``data.yaml``: ``names`` (a list, or a dict ``{id: name}`` with ids 0..K-1) and the splits
  ``train`` / ``val`` / ``test``, each an image folder, a ``.txt`` list of image files (entries
  relative to the list's folder), or a list of those; relative to the ``path`` key (itself
  relative to the YAML's folder), else to the YAML's folder.
- ``images/`` and ``labels/`` side by side, optionally with split subfolders
  (``images/train``); class names from ``classes.txt`` (in the folder or in ``labels/``), else
  the class ids themselves.

An image's label file is its path with the last ``images`` folder replaced by ``labels`` and the
suffix by ``.txt``. An image without a label file, or with an empty one, has no objects. A line
with other than 5 fields, a field that is no number, or a class id not in ``names`` is an error
naming the label file and line (``strict=False``: the line is dropped and counted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import yaml

from ...errors import DataError
from ..files import IMAGE_SUFFIXES
from .common import Entry, Listing, image_list, number, read_names, save_png, target_list, yaml_mapping

SPLIT_NAMES = ("train", "val", "test")


def is_yolo(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() in (".yaml", ".yml")
    return path.is_dir() and ((path / "data.yaml").is_file()
                              or ((path / "images").is_dir() and (path / "labels").is_dir()))


def read_yolo(path: Path, split: str, *, strict: bool = True) -> Listing:
    """The images and objects of ``split`` of the YOLO data set at ``path`` (nothing decoded yet)."""
    config = path if path.is_file() else path / "data.yaml"
    if config.is_file():
        images, names, origin = _from_config(config, split)
    else:
        images, names, origin = _from_folders(path, split)
    listing = Listing("YOLO", origin, [], names or [], "cxcywh", "the YOLO label files", normalized=True)
    highest = -1
    for image in images:
        entry = Entry(image, str(label_file(image)))
        listing.entries.append(entry)
        if Path(entry.where).is_file():
            highest = max(highest, _read_labels(entry, names, listing, strict))
    if names is None:
        listing.class_names = [str(k) for k in range(highest + 1)] or ["0"]
    return listing


def label_file(image: Path) -> Path:
    """``.../images/.../x.png`` -> ``.../labels/.../x.txt`` (the last ``images`` folder)."""
    parts = list(image.parts)
    for k in range(len(parts) - 2, -1, -1):
        if parts[k] == "images":
            parts[k] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _from_config(config: Path, split: str) -> tuple[list[Path], list[str], str]:
    data = yaml_mapping(config, "a YOLO data.yaml is a mapping with 'names' and 'train' / 'val' / 'test'")
    names = yaml_names(data.get("names"), config)
    root = config.parent / str(data.get("path") or "")
    splits = [s for s in SPLIT_NAMES if data.get(s)]
    if split not in splits:
        raise DataError(f"{config}: no split {split!r}; splits here: {', '.join(splits) or 'none'} "
                        f"(choose one as {config.parent}:SPLIT)")
    sources = data[split] if isinstance(data[split], list) else [data[split]]
    images: list[Path] = []
    for source in sources:
        where = root / str(source)
        if where.is_dir():
            images += _images_under(where)
        elif where.is_file():
            images += [p if p.is_absolute() else where.parent / p
                       for p in (Path(line.strip()) for line in where.read_text().splitlines() if line.strip())]
        else:
            raise DataError(f"{config}: {split}: {where} is neither an image folder nor a .txt list of images")
    return images, names, f"{config.parent}:{split}"


def yaml_names(names: Any, config: Path) -> list[str]:
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    if isinstance(names, dict) and names:
        try:
            by_id = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            by_id = {}
        if sorted(by_id) == list(range(len(names))):
            return [by_id[k] for k in range(len(names))]
    raise DataError(f"{config}: 'names' must list the class names, as a list or as {{0: name, 1: name, ...}}")


def _from_folders(path: Path, split: str) -> tuple[list[Path], list[str] | None, str]:
    folder = path / "images"
    present = [s for s in SPLIT_NAMES if (folder / s).is_dir()]
    if present and split not in present:
        raise DataError(f"{folder}: no split {split!r}; splits here: {', '.join(present)} (choose one as {path}:SPLIT)")
    images = _images_under(folder / split if present else folder)
    names = read_names([path / "classes.txt", path / "labels" / "classes.txt"])
    return images, names, f"{path}:{split}" if present else str(path)


def _images_under(folder: Path) -> list[Path]:
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not images:
        raise DataError(f"{folder}: no image files (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return images


def _read_labels(entry: Entry, names: list[str] | None, listing: Listing, strict: bool) -> int:
    """The boxes of ``entry``'s label file, as normalized xyxy; returns the highest class id read."""
    highest = -1
    for line_no, line in enumerate(Path(entry.where).read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{entry.where}, line {line_no}"
        if len(fields) != 5:
            polygon = " (polygon labels of segmentation data are not read as boxes)" if len(fields) > 5 else ""
            listing.refuse(strict, where, f"has {len(fields)} fields; a box line is 'class cx cy w h'{polygon}",
                           "fix the line")
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            listing.refuse(strict, where, f"{line.strip()!r} holds a field that is not a number", "fix the line")
            continue
        label = int(values[0])
        if label != values[0] or label < 0 or (names is not None and label >= len(names)):
            known = f"0..{len(names) - 1} ({len(names)} names)" if names is not None else "0 or more"
            listing.refuse(strict, where, f"class {fields[0]} is not a class id {known}", "fix the line")
            continue
        cx, cy, w, h = values[1:]
        entry.boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        entry.labels.append(label)
        entry.objects.append(f"line {line_no}")
        highest = max(highest, label)
    return highest


def export_yolo(images: Any, targets_per_image: Any, class_names: Sequence[str], folder: str | Path, *,
                split: str = "train") -> Path:
    """Write PNG images, label files and ``data.yaml`` that ``read_yolo`` reads back; returns the folder.

    As ``export_coco`` takes its arguments. Layout: ``images/{split}/000000.png`` and
    ``labels/{split}/000000.txt`` (6 decimals); ``data.yaml`` names the classes and every split
    folder present, so writing ``train`` and then ``val`` into one folder makes one data set.
    """
    folder = Path(folder)
    pictures = image_list(images)
    targets = target_list(targets_per_image, len(pictures))
    (folder / "labels" / split).mkdir(parents=True, exist_ok=True)
    for i, (image, target) in enumerate(zip(pictures, targets)):
        save_png(image, folder / "images" / split / f"{i:06d}.png")
        height, width = image.shape[1:]
        lines = [f"{label} " + " ".join(number(v) for v in ((x1 + x2) / 2 / width, (y1 + y2) / 2 / height,
                                                             (x2 - x1) / width, (y2 - y1) / height))
                 for (x1, y1, x2, y2), label in zip(target["boxes"].tolist(), target["labels"].tolist())]
        (folder / "labels" / split / f"{i:06d}.txt").write_text("".join(f"{line}\n" for line in lines))
    config = {s: f"images/{s}" for s in SPLIT_NAMES if (folder / "images" / s).is_dir()}
    config["names"] = dict(enumerate(class_names))  # type: ignore[assignment]
    (folder / "data.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder
