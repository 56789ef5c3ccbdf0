"""COCO JSON: one ``.json`` per split, with ``images``, ``annotations`` and ``categories``.

- ``images[].file_name`` resolves relative to the JSON's folder, else to an ``images/`` folder
  beside it (the two layouts exporters commonly write).
- Category ids (any integers, often 1-based with gaps) become labels 0..K-1 in sorted id order;
  class names are ``categories[].name``.
- ``bbox`` is [x, y, width, height] in pixels.
- ``iscrowd: 1`` marks a region of many objects (a crowd) whose box is not one object: it is not
  trained on, and the count of such annotations is kept in the reading notes (``ignored``).
- Images without annotations are images without objects.

Errors name the JSON file and the annotation id (an image id for image problems).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

from ...errors import DataError
from ..files import within_root
from .common import Entry, Listing, image_list, save_png, target_list

E = TypeVar("E")


def read_coco(path: Path, *, strict: bool = True) -> Listing:
    """The images and objects of a COCO annotation file (nothing decoded yet)."""
    data = load_coco(path)
    categories = coco_categories(data.get("categories") or [], path)
    label_of = {cat_id: label for label, cat_id in enumerate(sorted(categories))}
    listing = Listing("COCO", str(path), [], [categories[i] for i in sorted(categories)], "xywh",
                      "the COCO annotations", ignored={"iscrowd": 0},
                      missing_hint=f" (file names resolve relative to {path.parent} or {path.parent / 'images'})")
    for entry, annotation, name in coco_annotations(data, path, listing, label_of, strict, Entry):
        where = f"{path}, {name}"
        bbox = annotation.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 \
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
            listing.refuse(strict, where, f"its bbox {bbox!r} is not [x, y, width, height]", "fix the annotation")
            continue
        if annotation.get("iscrowd"):
            listing.ignored["iscrowd"] += 1
            continue
        x, y, w, h = (float(v) for v in bbox)
        entry.boxes.append([x, y, x + w, y + h])
        entry.labels.append(label_of[annotation["category_id"]])
        entry.objects.append(name)
    return listing


def coco_annotations(data: dict[str, Any], path: Path, listing: Any, label_of: dict[Any, int], strict: bool,
                     make_entry: Callable[..., E]) -> Iterator[tuple[E, dict[str, Any], str]]:
    """What COCO detection and segmentation read alike: one ``make_entry(file, where,
    declared_size=...)`` per image, appended to ``listing.entries``, then ``(entry, annotation,
    name)`` for every annotation of a listed image and a known category (``name``: ``annotation
    <id>``, as errors name it after the file). Malformed images raise; annotations of unknown images or categories
    go through ``listing.refuse``."""
    by_id: dict[Any, E] = {}
    for k, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            raise DataError(f"{path}: images[{k}] needs an 'id' and a 'file_name'")
        if image["id"] in by_id:
            raise DataError(f"{path}: image id {image['id']} occurs twice in 'images'; give every image its own id")
        declared = (image["height"], image["width"]) if image.get("height") and image.get("width") else None
        where = f"{path}, image {image['id']} ({image['file_name']})"
        entry = make_entry(within_root(_resolve(path.parent, image["file_name"]), path.parent, where, strict), where,
                           declared_size=declared)
        by_id[image["id"]] = entry
        listing.entries.append(entry)
    for k, annotation in enumerate(data.get("annotations") or []):
        name = f"annotation {annotation.get('id', f'#{k}')}" if isinstance(annotation, dict) else f"annotation #{k}"
        where = f"{path}, {name}"
        if not isinstance(annotation, dict):
            raise DataError(f"{where}: is a {type(annotation).__name__}, not an object")
        entry = by_id.get(annotation.get("image_id"))
        if entry is None:
            listing.refuse(strict, where, f"its image_id {annotation.get('image_id')!r} is not in 'images'",
                           "add the image or remove the annotation")
            continue
        if annotation.get("category_id") not in label_of:
            listing.refuse(strict, where, f"its category_id {annotation.get('category_id')!r} is not in 'categories'",
                           "add the category or fix the annotation")
            continue
        yield entry, annotation, name


def load_coco(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read it as JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: not a COCO annotation file (no 'images' list); a .json file as data "
                        "must hold COCO 'images', 'annotations' and 'categories'")
    return data


def coco_categories(categories: list[Any], path: Path) -> dict[Any, str]:
    """category id -> name."""
    names: dict[Any, str] = {}
    for k, category in enumerate(categories):
        if not isinstance(category, dict) or not isinstance(category.get("id"), int):
            raise DataError(f"{path}: categories[{k}] needs an integer 'id'")
        if category["id"] in names:
            raise DataError(f"{path}: category id {category['id']} occurs twice in 'categories'")
        names[category["id"]] = str(category.get("name", category["id"]))
    if not names:
        raise DataError(f"{path}: 'categories' is empty; list the object classes as {{'id': ..., 'name': ...}}")
    return names


def _resolve(folder: Path, file_name: str) -> Path:
    """``file_name`` beside the JSON, else in ``images/`` beside it (the first when neither exists)."""
    candidates = [folder / file_name, folder / "images" / file_name]
    return next((c for c in candidates if c.is_file()), candidates[0])


def export_coco(images: Any, targets_per_image: Any, class_names: Sequence[str], folder: str | Path, *,
                split: str | None = None) -> Path:
    """Write PNG images and a COCO JSON that ``read_coco`` reads back; returns the JSON's path.

    ``images``: (N, C, H, W) or a sequence of (C, H, W) of any sizes; ``targets_per_image``: per
    image ``{"boxes": (M, 4) xyxy pixels, "labels": (M,)}`` (optionally ``iscrowd`` (M,)), or
    ``RaggedTargets``. Layout: ``folder/annotations.json`` and ``folder/images/000000.png``, or
    with ``split``: ``folder/{split}.json`` and ``folder/images/{split}/000000.png``. Category ids
    are 1..K (COCO leaves 0 for the background).
    """
    folder = Path(folder)
    pictures = image_list(images)
    targets = target_list(targets_per_image, len(pictures))
    prefix = f"{split}/" if split else ""
    records, annotations = [], []
    for i, (image, target) in enumerate(zip(pictures, targets)):
        file_name = f"{prefix}{i:06d}.png"
        save_png(image, folder / "images" / file_name)
        records.append({"id": i + 1, "file_name": file_name, "height": image.shape[1], "width": image.shape[2]})
        crowd = target.get("iscrowd", [0] * len(target["labels"]))
        for (x1, y1, x2, y2), label, flag in zip(target["boxes"].tolist(), target["labels"].tolist(), crowd):
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": label + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                "iscrowd": int(flag), "segmentation": []})
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(class_names)]
    path = folder / (f"{split}.json" if split else "annotations.json")
    path.write_text(json.dumps({"images": records, "annotations": annotations, "categories": categories}))
    return path
