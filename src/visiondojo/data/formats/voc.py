"""Pascal VOC: ``Annotations/*.xml`` (one per image), ``JPEGImages/``, optional ``ImageSets/Main``.

- The split (``train``, ``val``, ``test``, ``trainval``) lists image ids in
  ``ImageSets/Main/{split}.txt``; without ``ImageSets`` every XML is read, whatever the split.
- VOC boxes are 1-based and inclusive (a box over pixel columns 0..9 reads ``xmin 1, xmax 10``):
  they become 0-based xyxy as ``xmin - 1, ymin - 1, xmax, ymax``.
- ``difficult: 1`` marks objects the VOC benchmark itself leaves out (hard to recognize even for
  people): they are not trained on, and their count is kept in the reading notes (``ignored``).
- Class names are those of ``labels.txt`` / ``classes.txt`` in the folder, one a line, else the
  sorted names of every object in *all* the XML files, so that every split of one folder numbers
  its classes alike.

Errors name the XML file and the object's index in it.
"""

from __future__ import annotations

import glob
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Sequence

from ...errors import DataError
from ..files import IMAGE_SUFFIXES
from .common import Entry, Listing, image_list, number, read_names, save_png, target_list

SPLITS_FOLDER = Path("ImageSets") / "Main"
_CORNERS = ("xmin", "ymin", "xmax", "ymax")


def is_voc(path: Path) -> bool:
    return path.is_dir() and (path / "Annotations").is_dir()


def read_voc(root: Path, split: str, *, strict: bool = True) -> Listing:
    """The images and objects of the VOC folder ``root``'s ``split`` (nothing decoded yet)."""
    xml_files, missing = _split_files(root, split, strict)
    names = read_names([root / "labels.txt", root / "classes.txt"]) or _all_names(root)
    label_of = {name: label for label, name in enumerate(names)}
    origin = f"{root}:{split}" if (root / SPLITS_FOLDER).is_dir() else str(root)
    listing = Listing("Pascal VOC", origin, [], names, "xyxy", "the VOC XML files (1-based pixels)",
                      ignored={"difficult": 0}, skipped=missing)
    for xml in xml_files:
        try:
            tree = ET.parse(xml).getroot()
        except (ET.ParseError, OSError) as exc:
            listing.refuse(strict, str(xml), f"cannot be read as XML ({exc})", "fix the file", skipped=True)
            continue
        entry = Entry(_image_file(root, tree, xml), str(xml), declared_size=_declared_size(tree))
        listing.entries.append(entry)
        for j, element in enumerate(tree.findall("object")):
            _read_object(element, f"object {j}", entry, label_of, listing, strict)
    if not listing.entries:
        raise DataError(f"{origin}: no usable annotation files")
    return listing


def _split_files(root: Path, split: str, strict: bool) -> tuple[list[Path], list[str]]:
    """The XML files of ``split`` (those ``ImageSets/Main/{split}.txt`` lists, or all without
    ImageSets) and, with ``strict=False``, a line for each listed id that has no XML file."""
    annotations = root / "Annotations"
    sets = root / SPLITS_FOLDER
    if not sets.is_dir():
        files = sorted(annotations.glob("*.xml"))
        if not files:
            raise DataError(f"{annotations}: no .xml annotation files")
        return files, []
    listed = sets / f"{split}.txt"
    if not listed.is_file():
        have = sorted(p.stem for p in sets.glob("*.txt") if "_" not in p.stem)
        raise DataError(f"{root}: no split {split!r} ({listed} does not exist); splits here: "
                        f"{', '.join(have) or 'none'} (choose one as {root}:SPLIT)")
    files, missing = [], []
    for line_no, line in enumerate(listed.read_text().splitlines(), start=1):
        if not line.split():
            continue
        xml = annotations / f"{line.split()[0]}.xml"
        if xml.is_file():
            files.append(xml)
        elif strict:
            raise DataError(f"{listed}, line {line_no}: {xml} does not exist; fix the list, or set strict: false "
                            "to skip such images")
        else:
            missing.append(f"{listed}, line {line_no}: {xml} does not exist")
    return files, missing


def _all_names(root: Path) -> list[str]:
    """Sorted object names of every XML file (unreadable ones are reported when their split is read)."""
    names: set[str] = set()
    for xml in (root / "Annotations").glob("*.xml"):
        try:
            names.update((n.text or "").strip() for n in ET.parse(xml).getroot().findall("object/name"))
        except (ET.ParseError, OSError):
            continue
    return sorted(names - {""})


def _image_file(root: Path, tree: ET.Element, xml: Path) -> Path:
    """``JPEGImages/<filename>`` as the XML names it, else the image file named as the XML."""
    folder = root / "JPEGImages"
    named = (tree.findtext("filename") or "").strip()
    if named and (folder / named).is_file():
        return folder / named
    found = [p for p in sorted(folder.glob(f"{glob.escape(xml.stem)}.*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    return found[0] if found else folder / (named or f"{xml.stem}.jpg")


def _declared_size(tree: ET.Element) -> tuple[int, int] | None:
    try:
        height, width = (int(float(tree.findtext(f"size/{k}") or 0)) for k in ("height", "width"))
    except ValueError:
        return None
    return (height, width) if height > 0 and width > 0 else None


def _read_object(element: ET.Element, name: str, entry: Entry, label_of: dict[str, int], listing: Listing,
                 strict: bool) -> None:
    where = f"{entry.where}, {name}"
    if (element.findtext("difficult") or "0").strip() in ("1", "true"):
        listing.ignored["difficult"] += 1
        return
    class_name = (element.findtext("name") or "").strip()
    if class_name not in label_of:
        listing.refuse(strict, where, f"its class {class_name!r} is not one of the {len(label_of)} class names",
                       "add it to labels.txt or fix the name")
        return
    try:
        xmin, ymin, xmax, ymax = (float(element.findtext(f"bndbox/{k}") or "") for k in _CORNERS)
    except ValueError:
        values = {k: element.findtext(f"bndbox/{k}") for k in _CORNERS}
        listing.refuse(strict, where, f"its bndbox {values} does not hold four numbers", "fix the annotation")
        return
    entry.boxes.append([xmin - 1, ymin - 1, xmax, ymax])
    entry.labels.append(label_of[class_name])
    entry.objects.append(name)


def export_voc(images: Any, targets_per_image: Any, class_names: Sequence[str], folder: str | Path, *,
               split: str | None = None) -> Path:
    """Write PNG images and VOC XML files that ``read_voc`` reads back; returns the folder.

    As ``export_coco`` takes its arguments (``difficult`` (M,) per image is optional). Boxes are
    written 1-based (``xmin = x1 + 1``, ``xmax = x2``) with up to 6 decimals. With ``split``, the
    image ids are ``{split}_000000`` and ``ImageSets/Main/{split}.txt`` lists them; the class
    names go to ``labels.txt`` so a split without some class still numbers classes alike.
    """
    folder = Path(folder)
    pictures = image_list(images)
    targets = target_list(targets_per_image, len(pictures))
    (folder / "Annotations").mkdir(parents=True, exist_ok=True)
    ids = []
    for i, (image, target) in enumerate(zip(pictures, targets)):
        stem = f"{split}_{i:06d}" if split else f"{i:06d}"
        save_png(image, folder / "JPEGImages" / f"{stem}.png")
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = f"{stem}.png"
        size = ET.SubElement(root, "size")
        for key, value in zip(("width", "height", "depth"), (image.shape[2], image.shape[1], image.shape[0])):
            ET.SubElement(size, key).text = str(value)
        difficult = target.get("difficult", [0] * len(target["labels"]))
        for (x1, y1, x2, y2), label, flag in zip(target["boxes"].tolist(), target["labels"].tolist(), difficult):
            element = ET.SubElement(root, "object")
            ET.SubElement(element, "name").text = class_names[label]
            ET.SubElement(element, "difficult").text = str(int(flag))
            box = ET.SubElement(element, "bndbox")
            for key, value in zip(_CORNERS, (x1 + 1, y1 + 1, x2, y2)):
                ET.SubElement(box, key).text = number(value)
        ET.indent(root)
        ET.ElementTree(root).write(folder / "Annotations" / f"{stem}.xml", encoding="utf-8")
        ids.append(stem)
    (folder / "labels.txt").write_text("".join(f"{name}\n" for name in class_names))
    if split:
        (folder / SPLITS_FOLDER).mkdir(parents=True, exist_ok=True)
        (folder / SPLITS_FOLDER / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return folder
