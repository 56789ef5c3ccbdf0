"""Semantic-segmentation data on disk: images and a class index per pixel, read and written.

Three layouts are read (``locate`` tells them apart, ``read_mask_files`` reads them):

- **A mask folder**: ``images/`` and ``masks/`` side by side, optionally with split subfolders
  (``images/train`` + ``masks/train``, chosen by a ``:split`` suffix); an image and its mask have
  the same path below their folder up to the suffix (``images/a/x.jpg`` <-> ``masks/a/x.png``).
  Split subfolders are the folders of both ``images/`` and ``masks/`` named as splits
  (``FOLDER_SPLITS``: train, val, test, ...); without any, every image is read whatever the split
  (as flat YOLO folders are). Hidden files and folders (``.ipynb_checkpoints``) are left out.
- **Pascal VOC segmentation**: ``JPEGImages/``, ``SegmentationClass/`` (palette PNGs, 255 on the
  object borders) and ``ImageSets/Segmentation/{split}.txt`` (without it every mask is read).
  The classes are VOC's 21 (``VOC_CLASSES``, background first) unless a names file says otherwise.
- **COCO JSON** with ``segmentation`` polygons or RLE (``faster_coco_eval``'s pycocotools API
  rasterizes them): class 0 is the background and the category ids become classes 1..K in sorted
  id order. Where objects overlap, the smaller object is painted over the larger (a cup stays
  visible on the table it stands on; equal areas: the later annotation wins). ``iscrowd``
  regions become the ignore index 255 where no object claims the pixel, and are counted in the
  reading notes (``ignored``). Images without annotations are all background.

Mask pixels are class indices 0..K-1, 255 marking pixels no loss or metric counts
(``targets.IGNORE_INDEX``):

- single-channel PNGs (PIL modes ``1``, ``L``, ``I;16``, ``I``) hold the indices;
- palette PNGs (mode ``P``, as VOC's): the pixel value *is* the index; the palette only colours
  it for viewers, so it is not consulted;
- RGB(A) colour masks are mapped to indices through the folder's palette map (below); without
  one, an RGB mask whose three channels are equal everywhere is a greyscale index mask saved as
  RGB, any other is an error saying how to fix it. VOC folders map VOC's own colour map
  (border colour 224, 224, 192 -> 255) when no names file gives colours.
- Float masks, 16-bit RGB masks and JPEG masks (lossy: every edge would hold values between
  classes) are refused.

Class names and colours come from, in this order:

- ``data.yaml``: ``names`` (a list, or ``{index: name}``) and optionally ``palette``: a list of
  ``[r, g, b]`` (one per class), or ``{index: [r, g, b]}``, where the index 255 names the colour
  of ignored pixels;
- ``classes.txt`` / ``labels.txt``: one class a line, in index order. A line may end with the
  class's colour, ``name r g b`` or ``name #rrggbb``, or start with it as CamVid writes it,
  ``r g b name``; either every line has a colour or none has. Names may hold spaces.

Without names, a mask folder's classes are 0..(largest index): inspection names them ``0``,
``1``, ... as it names the classes of arrays.

Every image and its mask are letterboxed together (``letterbox`` / ``letterbox_mask``) to one
training size: ``resize`` when given, else planned from the data (``plan_size``), masks padded
with 255. Errors name the file (the mask, or the JSON file and image or annotation id) and say
how to fix it; ``strict=False`` skips bad images (and drops bad COCO objects) and counts them.
Writing (``export_mask_folder``, ``export_voc_segmentation``) produces exactly the layouts read.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ...errors import DataError
from ..files import IMAGE_SUFFIXES
from ..images import pil_to_chw, to_tensor
from ..targets import IGNORE_INDEX
from .coco import coco_annotations, coco_categories, load_coco
from .common import GREY_MODES, Refusals, image_list, no_usable_images, save_png, yaml_mapping
from .letterbox import letterbox, letterbox_mask, letterbox_table, plan_size
from .yolo import yaml_names

MASK_FORMATS = ("masks", "voc-segmentation", "coco-segmentation")
"""The ``locate`` formats of segmentation data; the others are detection formats."""
VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor"]
VOC_SPLITS = Path("ImageSets") / "Segmentation"
FOLDER_SPLITS = ("train", "training", "val", "valid", "validation", "test", "testing", "trainval")
"""Subfolders of a mask folder's ``images/`` and ``masks/`` that are splits (chosen by ``:split``)."""
VOC_BORDER = (224, 224, 192)
"""The colour of VOC's object borders (index 255) in its colour map."""
LOSSY_SUFFIXES = (".jpg", ".jpeg")
INDEX_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N")
"""PIL modes whose pixel values are read as class indices."""
COLOUR_MODES = ("RGB", "RGBA")
NAMES_FILES = ("classes.txt", "labels.txt")
_HEX = re.compile(r"#([0-9a-fA-F]{6})")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

Colour = tuple[int, int, int]


class _Bad(Exception):
    """A problem with one image or mask: ``where`` it is, what is wrong and how to fix it."""

    def __init__(self, where: str, problem: str, fix: str):
        super().__init__(f"{where}: {problem}")
        self.where, self.problem, self.fix = where, problem, fix


@dataclass
class Shape:
    """One COCO annotation to paint: its polygons or RLE, and the class index it paints."""

    segmentation: Any
    label: int
    """A class 1..K, or ``IGNORE_INDEX`` for a crowd region."""
    where: str
    """How errors name it: the JSON file and annotation id."""


@dataclass
class MaskEntry:
    """One image and where its mask comes from: a mask file, or COCO shapes to rasterize."""

    image: Path
    where: str
    """How errors about the image's annotations name them: the mask file, or the JSON and image id."""
    mask: Path | None = None
    shapes: list[Shape] = field(default_factory=list)
    declared_size: tuple[int, int] | None = None
    """(height, width) the annotations say the image has (COCO), when they say."""


@dataclass
class MaskListing(Refusals):
    """A segmentation data set's images and masks as found on disk, before any pixel is read."""

    file_format: str
    origin: str
    entries: list[MaskEntry]
    class_names: list[str] | None
    """None: the classes are 0..(largest index in the masks)."""
    names_from: str = ""
    """Where the class names came from, for errors about indices beyond them."""
    palette: dict[Colour, int] | None = None
    """Colour -> class index (or 255) for RGB masks; None: RGB masks are refused."""
    palette_hint: str = ""
    """How to give a palette map, for the error about an RGB mask without one."""
    skipped: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    ignored: dict[str, int] = field(default_factory=dict)



@dataclass
class MaskReading:
    """How a segmentation data set on disk was read, for the plan (``inspect.mask_summary``)."""

    file_format: str
    size: tuple[int, int]
    """(height, width) every image and mask was letterboxed to."""
    size_from: str
    skipped_images: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    """COCO objects dropped (``strict=False``), one line each."""
    ignored: dict[str, int] = field(default_factory=dict)


@dataclass
class MaskFiles:
    """A segmentation data set read from disk: letterboxed images and masks and how they were read."""

    images: torch.Tensor
    """(N, C, H, W) uint8: 1 channel when every image is greyscale, else 3."""
    masks: torch.Tensor
    """(N, H, W) int64 class indices on the letterbox canvas, 255 on the padding and ignored pixels."""
    class_names: list[str] | None
    reading: MaskReading
    letterboxes: torch.Tensor
    """(N, 5) float64 per image: scale, pad x, pad y, original height, original width."""
    files: list[Path]
    origin: str


# Recognizing the layouts.

def is_mask_folder(path: Path) -> bool:
    return path.is_dir() and (path / "images").is_dir() and (path / "masks").is_dir()


def is_voc_segmentation(path: Path) -> bool:
    return path.is_dir() and (path / "SegmentationClass").is_dir()


def read_mask_files(path: str | Path, *, file_format: str, split: str | None = None, default_split: str = "train",
                    resize: tuple[int, int] | None = None, strict: bool = True, memory_limit_gb: float = 4.0,
                    num_classes: int | None = None) -> MaskFiles:
    """Read a segmentation data set of ``file_format`` (one of ``MASK_FORMATS``) into memory.

    ``resize`` (height, width) is the letterbox size; None plans it from the data. ``num_classes``
    (the caller's, when the files name no classes) lets mask values be checked per file, so an
    index out of range is named by its file rather than found later by its position.
    """
    path = Path(path)
    chosen = split or default_split
    if file_format == "masks":
        listing = read_mask_folder(path, chosen, strict=strict)
    elif file_format == "voc-segmentation":
        listing = read_voc_segmentation(path, chosen, strict=strict)
    elif file_format == "coco-segmentation":
        if split is not None:
            raise DataError(f"{path}:{split}: a COCO file holds one split; pass the split's own .json file")
        listing = read_coco_segmentation(path, strict=strict)
    else:
        raise DataError(f"file_format: {file_format!r} is not one of {', '.join(MASK_FORMATS)}")
    return load_mask_listing(listing, resize=resize, strict=strict, memory_limit_gb=memory_limit_gb,
                             num_classes=num_classes)


# The mask folder.

def read_mask_folder(root: Path, split: str, *, strict: bool = True) -> MaskListing:
    """The image/mask pairs of ``split`` of the mask folder ``root`` (nothing decoded yet)."""
    images_dir, masks_dir = root / "images", root / "masks"
    # Only the usual split names count as splits: other shared subfolders (a city, a sequence) are
    # part of the paths that pair images with masks.
    splits = sorted(d.name for d in images_dir.iterdir()
                    if d.is_dir() and d.name in FOLDER_SPLITS and (masks_dir / d.name).is_dir())
    if splits and split not in splits:
        raise DataError(f"{root}: no split {split!r}; splits here: {', '.join(splits)} (choose one as {root}:SPLIT)")
    if splits:
        images_dir, masks_dir = images_dir / split, masks_dir / split
    names, palette, named_by = read_class_names(root)
    listing = MaskListing("mask folder", f"{root}:{split}" if splits else str(root), [], names, named_by, palette,
                          palette_hint=f"add {root / 'data.yaml'} with names and palette, or colours in "
                                       f"{root / 'classes.txt'} ('name r g b' a line)")
    images, masks = _files_by_key(images_dir), _files_by_key(masks_dir)
    for key in sorted(set(images) | set(masks)):
        image, mask = images.get(key), masks.get(key)
        if mask is None:
            listing.refuse(strict, str(image), f"has no mask (looked for {masks_dir / key}.png)",
                           "add the mask or remove the image", skipped=True)
        elif image is None:
            listing.refuse(strict, str(mask), f"is a mask without an image (looked for {images_dir / key}.*)",
                           "add the image or remove the mask", skipped=True)
        elif mask.suffix.lower() in LOSSY_SUFFIXES:
            listing.refuse(strict, str(mask), "is a JPEG: its lossy compression blurs every edge into values "
                           "between class indices", "save the masks as PNG", skipped=True)
        else:
            listing.entries.append(MaskEntry(image, str(mask), mask=mask))
    if not listing.entries and not listing.skipped:
        raise DataError(f"{root}: no image/mask pairs in {images_dir} and {masks_dir} (an image and its mask share "
                        "the path up to the suffix: images/x.jpg and masks/x.png)")
    return listing


def _files_by_key(folder: Path) -> dict[str, Path]:
    """Image files below ``folder`` by their path relative to it without the suffix; two files
    of one key (``x.png`` and ``x.jpg``) are an error, as which one is meant cannot be told."""
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)  # .ipynb_checkpoints, ...
        if path.suffix.lower() not in IMAGE_SUFFIXES or hidden or not path.is_file():
            continue
        key = path.relative_to(folder).with_suffix("").as_posix()
        if key in found:
            raise DataError(f"{path}: {found[key].name} has the same name up to the suffix, so which one pairs with "
                            "its image or mask cannot be told; remove or rename one")
        found[key] = path
    return found


def read_class_names(root: Path) -> tuple[list[str] | None, dict[Colour, int] | None, str]:
    """Class names, the colour map of RGB masks (or None) and the file they came from ('' if none):
    ``data.yaml``, else ``classes.txt`` / ``labels.txt`` (see the module's docstring)."""
    config = root / "data.yaml"
    if config.is_file():
        return (*_names_from_yaml(config), str(config))
    for name in NAMES_FILES:
        if (root / name).is_file():
            names, colours = read_names_file(root / name)
            palette = None if colours is None else {colour: k for k, colour in enumerate(colours)}
            return names, palette, str(root / name)
    return None, None, ""


def _names_from_yaml(config: Path) -> tuple[list[str], dict[Colour, int] | None]:
    data = yaml_mapping(config, "a mask folder's data.yaml is a mapping with 'names' and optionally 'palette'")
    names = yaml_names(data.get("names"), config)
    given = data.get("palette")
    if given is None:
        return names, None
    if isinstance(given, list):
        if len(given) != len(names):
            raise DataError(f"{config}: 'palette' has {len(given)} colours for {len(names)} names; give one "
                            "[r, g, b] per class (or a mapping {index: [r, g, b]}, 255 for ignored pixels)")
        given = dict(enumerate(given))
    if not isinstance(given, dict):
        raise DataError(f"{config}: 'palette' must be a list of [r, g, b] or a mapping {{index: [r, g, b]}}")
    palette: dict[Colour, int] = {}
    for index, colour in given.items():
        if not isinstance(index, int) or not (0 <= index < len(names) or index == IGNORE_INDEX):
            raise DataError(f"{config}: palette index {index!r} is neither a class 0..{len(names) - 1} nor "
                            f"{IGNORE_INDEX} (ignored pixels)")
        rgb = _colour(colour)
        if rgb is None:
            raise DataError(f"{config}: palette colour of {index} is {colour!r}; write [r, g, b] with 0..255 each")
        if rgb in palette:
            raise DataError(f"{config}: colour {list(rgb)} is given to both {palette[rgb]} and {index}; "
                            "an RGB mask could not tell them apart")
        palette[rgb] = index
    return names, palette


def _colour(value: Any) -> Colour | None:
    if isinstance(value, str):
        found = _HEX.fullmatch(value.strip())
        return tuple(bytes.fromhex(found.group(1))) if found else None  # type: ignore[return-value]
    if isinstance(value, (list, tuple)) and len(value) == 3 \
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value):
        return tuple(value)  # type: ignore[return-value]
    return None


def read_names_file(path: Path) -> tuple[list[str], list[Colour] | None]:
    """Names one a line (blank lines skipped), each with or without a colour: ``name r g b``,
    ``name #rrggbb`` or ``r g b name``; either every line has a colour or none has."""
    names: list[str] = []
    colours: list[Colour | None] = []
    lines = [(n, line.strip()) for n, line in enumerate(path.read_text().splitlines(), start=1) if line.strip()]
    for line_no, line in lines:
        name, colour = _name_and_colour(line, f"{path}, line {line_no}")
        names.append(name)
        colours.append(colour)
    if not names:
        raise DataError(f"{path}: no class names; write one name a line, in class index order")
    if all(c is None for c in colours):
        return names, None
    if any(c is None for c in colours):
        line_no = lines[colours.index(None)][0]
        raise DataError(f"{path}, line {line_no}: {names[colours.index(None)]!r} has no colour but other lines have; "
                        "give every class its colour ('name r g b') or none")
    seen: dict[Colour, str] = {}
    for (line_no, _), name, colour in zip(lines, names, colours):
        assert colour is not None
        if colour in seen:
            raise DataError(f"{path}, line {line_no}: {name!r} has the colour {list(colour)} of {seen[colour]!r}; "
                            "an RGB mask could not tell them apart")
        seen[colour] = name
    return names, colours  # type: ignore[return-value]


def _name_and_colour(line: str, where: str) -> tuple[str, Colour | None]:
    tokens = line.split()
    if len(tokens) >= 2 and _HEX.fullmatch(tokens[-1]):
        return " ".join(tokens[:-1]), _colour(tokens[-1])
    for name_tokens, colour_tokens in ((tokens[:-3], tokens[-3:]), (tokens[3:], tokens[:3])):
        if len(tokens) >= 4 and all(re.fullmatch(r"\d+", t) for t in colour_tokens):
            colour = _colour([int(t) for t in colour_tokens])
            if colour is None:
                raise DataError(f"{where}: the colour {' '.join(colour_tokens)} is not three values 0..255")
            return " ".join(name_tokens), colour
    return line, None


# Pascal VOC segmentation.

def read_voc_segmentation(root: Path, split: str, *, strict: bool = True) -> MaskListing:
    """The image/mask pairs of ``split`` of the VOC folder ``root`` (nothing decoded yet)."""
    ids, missing = _voc_ids(root, split, strict)
    names, palette, named_by = read_class_names(root)
    if names is None:
        names = list(VOC_CLASSES)
        named_by = "Pascal VOC's classes"
    if palette is None:  # RGB copies of VOC's masks: VOC's colour map, borders included
        colours = voc_colours(len(names))
        palette = {colour: k for k, colour in enumerate(colours)}
        palette[VOC_BORDER] = IGNORE_INDEX
    origin = f"{root}:{split}" if (root / VOC_SPLITS).is_dir() else str(root)
    listing = MaskListing("Pascal VOC segmentation", origin, [], names, named_by, palette, skipped=missing,
                          palette_hint=f"add colours to {root / 'labels.txt'} ('name r g b' a line)")
    for mask_id in ids:
        mask = root / "SegmentationClass" / f"{mask_id}.png"
        listing.entries.append(MaskEntry(_voc_image(root, mask_id), str(mask), mask=mask))
    if not listing.entries and not listing.skipped:
        raise DataError(f"{root / 'SegmentationClass'}: no .png masks")
    return listing


def _voc_ids(root: Path, split: str, strict: bool) -> tuple[list[str], list[str]]:
    """The ids of ``split`` (those ``ImageSets/Segmentation/{split}.txt`` lists, or every mask
    without it) and, with ``strict=False``, a line for each listed id that has no mask."""
    masks = root / "SegmentationClass"
    sets = root / VOC_SPLITS
    if not sets.is_dir():
        return sorted(p.stem for p in masks.glob("*.png")), []
    listed = sets / f"{split}.txt"
    if not listed.is_file():
        have = sorted(p.stem for p in sets.glob("*.txt"))
        raise DataError(f"{root}: no split {split!r} ({listed} does not exist); splits here: "
                        f"{', '.join(have) or 'none'} (choose one as {root}:SPLIT)")
    ids, missing = [], []
    for line_no, line in enumerate(listed.read_text().splitlines(), start=1):
        if not line.split():
            continue
        mask = masks / f"{line.split()[0]}.png"
        if mask.is_file():
            ids.append(mask.stem)
        elif strict:
            raise DataError(f"{listed}, line {line_no}: {mask} does not exist; fix the list, or set strict: false "
                            "to skip such images")
        else:
            missing.append(f"{listed}, line {line_no}: {mask} does not exist")
    return ids, missing


def _voc_image(root: Path, mask_id: str) -> Path:
    folder = root / "JPEGImages"
    for suffix in (".jpg", ".png", ".jpeg"):
        if (folder / f"{mask_id}{suffix}").is_file():
            return folder / f"{mask_id}{suffix}"
    found = [p for p in sorted(folder.glob(f"{mask_id}.*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    return found[0] if found else folder / f"{mask_id}.jpg"


def voc_palette(count: int = 256) -> list[int]:
    """Pascal VOC's colour map (the bits of the class index spread over R, G and B), flattened."""
    colours = []
    for index in range(count):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours += [r, g, b]
    return colours


def voc_colours(count: int) -> list[Colour]:
    """The first ``count`` colours of Pascal VOC's colour map (``voc_palette``)."""
    flat = voc_palette()
    return [tuple(flat[3 * k:3 * k + 3]) for k in range(count)]  # type: ignore[misc]


# COCO segmentation.

def read_coco_segmentation(path: Path, *, strict: bool = True) -> MaskListing:
    """The images and object outlines of a COCO annotation file (nothing rasterized yet)."""
    data = load_coco(path)
    categories = coco_categories(data.get("categories") or [], path)
    label_of = {cat_id: label for label, cat_id in enumerate(sorted(categories), start=1)}
    names = ["background"] + [categories[i] for i in sorted(categories)]
    listing = MaskListing("COCO segmentation", str(path), [], names, f"{path}'s categories and the background",
                          ignored={"iscrowd": 0})
    for entry, annotation, name in coco_annotations(data, path, listing, label_of, strict, MaskEntry):
        where = f"{path}, {name}"
        problem = _segmentation_problem(annotation.get("segmentation"), entry.declared_size)
        if problem is not None:
            listing.refuse(strict, where, problem, "fix the annotation", skipped=False)
            continue
        crowd = bool(annotation.get("iscrowd"))
        listing.ignored["iscrowd"] += crowd
        entry.shapes.append(Shape(annotation["segmentation"], IGNORE_INDEX if crowd else
                                  label_of[annotation["category_id"]], where))
    return listing


def _segmentation_problem(segmentation: Any, declared: tuple[int, int] | None) -> str | None:
    """Why ``segmentation`` is no polygon list or RLE (None when it is one)."""
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)) \
                or not isinstance(counts, (list, str)):
            return "its RLE segmentation needs 'size': [height, width] and 'counts' (a list or a string)"
        if declared is not None and tuple(size) != tuple(declared):
            return (f"its RLE is {size[1]}x{size[0]} pixels but its image is {declared[1]}x{declared[0]} "
                    "(an RLE covers the whole image)")
        return None
    if not isinstance(segmentation, list) or not segmentation:
        return ("has no segmentation (polygons [[x1, y1, x2, y2, ...], ...] or an RLE); task segmentation needs "
                "every object's outline, not only its box")
    for j, polygon in enumerate(segmentation):
        if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2 \
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in polygon):
            return (f"its polygon {j} is not [x1, y1, x2, y2, ...] with at least 3 points "
                    f"({len(polygon) if isinstance(polygon, list) else type(polygon).__name__} values)")
    return None


def _rasterize(entry: MaskEntry, size: tuple[int, int]) -> np.ndarray:
    """The semantic mask of ``entry``'s shapes at ``size``: objects by decreasing area (the
    smaller on top; equal areas in annotation order, the later on top), then crowd regions as
    255 where no object is."""
    from faster_coco_eval.core import mask as coco_mask  # here: it loads OpenCV, which only COCO outlines need

    height, width = size
    mask = np.zeros((height, width), dtype=np.int64)
    objects, crowds = [], []
    for shape in entry.shapes:
        segmentation = shape.segmentation
        if isinstance(segmentation, dict) and tuple(segmentation["size"]) != (height, width):
            raise _Bad(shape.where, f"its RLE is {segmentation['size'][1]}x{segmentation['size'][0]} pixels but "
                       f"its image {entry.image} is {width}x{height}", "fix the annotation")
        try:
            if isinstance(segmentation, dict):
                rle = coco_mask.frPyObjects(segmentation, height, width) \
                    if isinstance(segmentation["counts"], list) else segmentation
            else:
                rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
            area = float(coco_mask.area(rle))
        except Exception as exc:  # a corrupt RLE string fails inside the C extension
            raise _Bad(shape.where, f"its segmentation cannot be decoded ({type(exc).__name__}: {exc})",
                       "fix the annotation") from None
        (crowds if shape.label == IGNORE_INDEX else objects).append((shape, rle, area))
    objects.sort(key=lambda item: -item[2])  # stable: equal areas keep their order
    for shape, rle, _ in objects:
        mask[coco_mask.decode(rle).astype(bool)] = shape.label
    for _, rle, _ in crowds:
        mask[coco_mask.decode(rle).astype(bool) & (mask == 0)] = IGNORE_INDEX
    return mask


# Reading pixels: what every layout shares.

def load_mask_listing(listing: MaskListing, *, resize: tuple[int, int] | None = None, strict: bool = True,
                      memory_limit_gb: float = 4.0, num_classes: int | None = None) -> MaskFiles:
    """Check, decode and letterbox the images and masks of ``listing``.

    1. Every image and mask header is opened (no pixel decode): a missing or unreadable file, a
       mask whose size differs from its image's, a float or 16-bit RGB mask is an error naming
       the file (``strict=False``: the image is skipped and counted).
    2. The images and masks are decoded (in threads), the masks' values checked (indices
       0..K-1 or 255 when K is known; RGB colours in the palette map) and both letterboxed to one
       size: ``resize``, else planned from the images (``plan_size``).
    """
    entries, sizes, grey = _scan_pairs(listing, strict)
    size, size_from = (tuple(resize), "resize") if resize is not None else plan_size(sizes)
    channels = 1 if all(grey) else 3
    needed = len(entries) * (channels + 8) * size[0] * size[1]  # uint8 pixels, int64 masks
    if needed > memory_limit_gb * 2**30:
        raise DataError(f"{listing.origin}: {len(entries)} images at {channels}x{size[0]}x{size[1]} and their masks "
                        f"take {needed / 2**30:.1f} GB, more than memory_limit_gb ({memory_limit_gb:g}); set a "
                        "smaller resize, raise memory_limit_gb, or train on a part of the data")
    known = len(listing.class_names) if listing.class_names else num_classes
    images, masks, (highest, ignoring), failed = _decode_pairs(entries, sizes, channels, size, listing, known)
    for _, bad in failed:
        listing.refuse(strict, bad.where, bad.problem, bad.fix, skipped=True)
    bad_indices = {i for i, _ in failed}
    keep = [i for i in range(len(entries)) if i not in bad_indices]
    if not keep:
        raise no_usable_images(listing)
    if failed:
        index = torch.tensor(keep, dtype=torch.int64)
        images, masks = images[index], masks[index]
    _check_labelled([highest[i] for i in keep], [ignoring[i] for i in keep], listing.origin)
    letterboxes = letterbox_table([sizes[i] for i in keep], size)
    names = listing.class_names
    reading = MaskReading(listing.file_format, size, size_from, list(listing.skipped),  # type: ignore[arg-type]
                          list(listing.dropped), dict(listing.ignored))
    return MaskFiles(images, masks.long(), list(names) if names else None, reading, letterboxes,
                     [entries[i].image for i in keep], listing.origin)


def _scan_pairs(listing: MaskListing, strict: bool) -> tuple[list[MaskEntry], list[tuple[int, int]], list[bool]]:
    """The entries whose image and mask open and agree in size, each image's (height, width) and
    whether it is greyscale; the others refused or skipped."""
    entries, sizes, grey = [], [], []
    for entry in listing.entries:
        try:
            size, mode = _image_header(entry)
            if entry.mask is not None:
                _mask_header(entry.mask, entry.image, size)
        except _Bad as bad:
            listing.refuse(strict, bad.where, bad.problem, bad.fix, skipped=True)
            continue
        entries.append(entry)
        sizes.append(size)
        grey.append(mode in GREY_MODES)
    if not entries:
        raise no_usable_images(listing)
    return entries, sizes, grey


def _image_header(entry: MaskEntry) -> tuple[tuple[int, int], str]:
    if not entry.image.is_file():
        raise _Bad(entry.where, f"its image file {entry.image} does not exist", "add the file")
    try:
        with Image.open(entry.image) as image:
            size, mode = (image.height, image.width), image.mode
    except Exception as exc:  # PIL raises many types for broken files
        raise _Bad(str(entry.image), f"cannot be read as an image ({type(exc).__name__})", "replace the file") from None
    if entry.declared_size and tuple(entry.declared_size) != size:
        (dh, dw), (h, w) = entry.declared_size, size
        raise _Bad(entry.where, f"the image file {entry.image} is {w}x{h} pixels but the annotations say {dw}x{dh} "
                   "(a rotated or replaced image: its outlines would not fit)", "fix the size or the file")
    return size, mode


def _mask_header(mask: Path, image: Path, size: tuple[int, int]) -> None:
    """Refuse a mask that does not exist, does not open, is float or 16-bit RGB, or is not its image's size."""
    where = str(mask)
    if not mask.is_file():
        raise _Bad(where, f"the mask of {image} does not exist", "add the mask")
    try:
        with Image.open(mask) as opened:
            mode, mask_size = opened.mode, (opened.height, opened.width)
        with open(mask, "rb") as handle:
            head = handle.read(26)
    except Exception as exc:
        raise _Bad(where, f"cannot be read as an image ({type(exc).__name__})", "replace the file") from None
    if head[:8] == _PNG_SIGNATURE and head[24] == 16 and head[25] in (2, 6):
        raise _Bad(where, "is a 16-bit RGB PNG; a mask holds one class index per pixel (or an 8-bit colour that "
                   "the palette map names)", "save it as an 8-bit PNG of class indices (mode L or P)")
    if mode == "F":
        raise _Bad(where, "holds floating-point pixels (mode F), not class indices",
                   "save it as an 8-bit PNG of class indices 0..K-1 (255: ignored)")
    if mode not in INDEX_MODES + COLOUR_MODES + ("LA", "PA"):
        raise _Bad(where, f"is a {mode} image; a mask holds class indices (PNG mode L or P) or RGB colours",
                   "save it as an 8-bit PNG of class indices")
    if mask_size != size:
        raise _Bad(where, f"the mask is {mask_size[1]}x{mask_size[0]} pixels but its image {image} is "
                   f"{size[1]}x{size[0]}", "give the mask its image's size (resize it nearest-neighbour) "
                   "or replace it")


def _decode_pairs(entries: list[MaskEntry], sizes: list[tuple[int, int]], channels: int, size: tuple[int, int],
                  listing: MaskListing, known: int | None
                  ) -> tuple[torch.Tensor, torch.Tensor, tuple[list[int], list[bool]], list[tuple[int, _Bad]]]:
    """Every image and mask decoded, checked and letterboxed, in threads (PIL and torch release
    the GIL while they work): images (N, C, *size) uint8, masks (N, *size) uint8, per mask its
    largest class index (255 aside, -1 for none) and whether it has ignored pixels, and (index,
    problem) of the pairs that failed."""
    images = torch.empty(len(entries), channels, *size, dtype=torch.uint8)
    masks = torch.empty(len(entries), *size, dtype=torch.uint8)
    highest = [-1] * len(entries)
    ignoring = [False] * len(entries)
    failed: list[tuple[int, _Bad]] = []

    def decode(index: int) -> None:
        entry = entries[index]
        try:
            try:
                with Image.open(entry.image) as image:
                    pixels = pil_to_chw(image, channels)
            except Exception as exc:  # a truncated file opens but does not decode
                raise _Bad(str(entry.image), f"cannot be decoded ({type(exc).__name__})", "replace the file") from None
            values = _rasterize(entry, sizes[index]) if entry.mask is None else mask_values(entry.mask, listing)
            highest[index] = _checked(values, str(entry.mask or entry.where), known, listing)
            ignoring[index] = bool((values == IGNORE_INDEX).any())
        except _Bad as bad:
            failed.append((index, bad))
            return
        images[index] = letterbox(pixels, size)[0]
        masks[index] = letterbox_mask(torch.from_numpy(values.astype(np.uint8)), size)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(decode, range(len(entries))))
    return images, masks, (highest, ignoring), sorted(failed, key=lambda f: f[0])


def mask_values(path: Path, listing: MaskListing) -> np.ndarray:
    """A mask file's class indices (H, W) int64: index modes as they are, colours through the palette map."""
    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode in ("LA", "PA"):
                image = image.getchannel(0)
            array = np.asarray(image)
    except Exception as exc:
        raise _Bad(str(path), f"cannot be decoded ({type(exc).__name__})", "replace the file") from None
    if array.ndim == 2:
        return array.astype(np.int64)
    return _colours_to_indices(array[:, :, :3], path, listing)


def _colours_to_indices(rgb: np.ndarray, path: Path, listing: MaskListing) -> np.ndarray:
    codes = (rgb[:, :, 0].astype(np.int64) << 16) | (rgb[:, :, 1].astype(np.int64) << 8) | rgb[:, :, 2]
    if listing.palette is None:
        if (rgb[:, :, 0] == rgb[:, :, 1]).all() and (rgb[:, :, 1] == rgb[:, :, 2]).all():
            return rgb[:, :, 0].astype(np.int64)  # a greyscale index mask saved as RGB
        raise _Bad(str(path), "is an RGB colour mask, but no colours are given for the classes",
                   f"{listing.palette_hint}, or save the masks as class-index PNGs (mode L or P)")
    known = np.array(sorted((r << 16) | (g << 8) | b for r, g, b in listing.palette), dtype=np.int64)
    index = {(r << 16) | (g << 8) | b: k for (r, g, b), k in listing.palette.items()}
    table = np.array([index[int(code)] for code in known], dtype=np.int64)
    position = np.searchsorted(known, codes).clip(max=len(known) - 1)
    unknown = known[position] != codes
    if unknown.any():
        y, x = (int(v[0]) for v in np.nonzero(unknown))
        colour = [int(v) for v in rgb[y, x]]
        raise _Bad(str(path), f"holds the colour {colour} (first at x={x}, y={y}; {int(unknown.sum())} such pixels), "
                   "which is no class's colour", "add the colour to the palette map or fix the mask")
    return table[position]


def _checked(values: np.ndarray, where: str, known: int | None, listing: MaskListing) -> int:
    """Raise for mask values that are no class index; return the largest class index (255 aside, -1 for none)."""
    labelled = values[values != IGNORE_INDEX]
    low = int(labelled.min()) if labelled.size else 0
    high = int(labelled.max()) if labelled.size else -1
    if low < 0:
        raise _Bad(where, f"holds the negative value {low}", "class indices are 0..K-1 (255: ignored); fix the mask")
    # Never above 255: the values are stored as uint8, and 255 is the ignore index.
    limit = min(known, IGNORE_INDEX) if known is not None else IGNORE_INDEX
    if high >= limit:
        count = int((labelled >= limit).sum())
        if known is not None:
            named = listing.names_from if listing.class_names else "the classes given"
            problem = (f"holds class {high} ({count} pixels), outside 0..{limit - 1} ({known} classes: {named}"
                       + (f"; at most {IGNORE_INDEX} classes fit a mask" if known > IGNORE_INDEX else "")
                       + f") and not {IGNORE_INDEX} (ignored)")
        else:
            problem = (f"holds the value {high} ({count} pixels); class indices are 0..{IGNORE_INDEX - 1}, "
                       f"{IGNORE_INDEX} marks ignored pixels")
        raise _Bad(where, problem, "fix the mask or the class names")
    return high


def _check_labelled(highest: list[int], ignoring: list[bool], origin: str) -> None:
    """Masks that hold nothing but background and the ignore index teach nothing; the usual cause
    is a black-and-white mask whose white (255) was meant as the foreground. (Checked on the masks
    as read: the letterbox padding is 255 too.)"""
    if max(highest) > 0 or not any(ignoring):
        return
    raise DataError(f"{origin}: every mask holds only 0 and {IGNORE_INDEX}; {IGNORE_INDEX} marks ignored pixels, so "
                    "nothing but the background would be learned. If white (255) is the foreground of black-and-white "
                    "masks, save it as class 1 (mask // 255)")


# Writing.

def mask_list(masks: Any, count: int) -> list[np.ndarray]:
    """(N, H, W) masks, or a sequence of differently sized (H, W) ones, as uint8 numpy arrays."""
    if isinstance(masks, (torch.Tensor, np.ndarray)):
        masks = list(masks)
    if len(masks) != count:
        raise DataError(f"{count} images but {len(masks)} masks; give one mask per image")
    arrays = []
    for i, mask in enumerate(masks):
        tensor = to_tensor(mask, f"mask {i}")
        if tensor.ndim != 2 or tensor.dtype.is_floating_point or int(tensor.min()) < 0 or int(tensor.max()) > 255:
            raise DataError(f"mask {i}: a mask is (H, W) integer class indices 0..255, got {tuple(tensor.shape)} "
                            f"{str(tensor.dtype).removeprefix('torch.')}")
        arrays.append(tensor.numpy().astype(np.uint8))
    return arrays


def save_index_png(mask: np.ndarray, path: Path) -> None:
    """A mask as a palette PNG: the pixel values are the class indices, VOC's colour map shows them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(mask, mode="P")
    image.putpalette(voc_palette())
    image.save(path)


def _pairs(images: Any, masks: Any) -> list[tuple[torch.Tensor, np.ndarray]]:
    pictures = image_list(images)
    arrays = mask_list(masks, len(pictures))
    for i, (picture, mask) in enumerate(zip(pictures, arrays)):
        if tuple(picture.shape[1:]) != mask.shape:
            raise DataError(f"mask {i} is {mask.shape[1]}x{mask.shape[0]} but its image "
                            f"{picture.shape[2]}x{picture.shape[1]}; each mask must have its image's size")
    return list(zip(pictures, arrays))


def export_mask_folder(images: Any, masks: Any, class_names: Sequence[str] | None, folder: str | Path,
                       split: str | None = None) -> Path:
    """Write PNG images, palette-PNG masks and ``classes.txt`` that ``read_mask_folder`` reads back;
    returns the folder.

    ``images``: (N, C, H, W) or a sequence of (C, H, W) of any sizes; ``masks``: (N, H, W) or a
    sequence of (H, W) class indices (255: ignored), each its image's size. Layout:
    ``images/000000.png`` and ``masks/000000.png``, or with ``split`` ``images/{split}/...`` and
    ``masks/{split}/...``. ``class_names`` None writes no names file.
    """
    folder = Path(folder)
    sub = Path(split) if split else Path()
    for i, (picture, mask) in enumerate(_pairs(images, masks)):
        save_png(picture, folder / "images" / sub / f"{i:06d}.png")
        save_index_png(mask, folder / "masks" / sub / f"{i:06d}.png")
    if class_names is not None:
        (folder / "classes.txt").write_text("".join(f"{name}\n" for name in class_names))
    return folder


def export_voc_segmentation(images: Any, masks: Any, class_names: Sequence[str] | None, folder: str | Path,
                            split: str | None = None) -> Path:
    """Write a VOC segmentation folder that ``read_voc_segmentation`` reads back; returns the folder.

    As ``export_mask_folder`` takes its arguments. Images go to ``JPEGImages/`` (as lossless PNGs),
    masks to ``SegmentationClass/`` as palette PNGs; with ``split`` the ids are ``{split}_000000``
    and ``ImageSets/Segmentation/{split}.txt`` lists them. Class names other than VOC's 21 go to
    ``labels.txt``.
    """
    folder = Path(folder)
    ids = []
    for i, (picture, mask) in enumerate(_pairs(images, masks)):
        stem = f"{split}_{i:06d}" if split else f"{i:06d}"
        save_png(picture, folder / "JPEGImages" / f"{stem}.png")
        save_index_png(mask, folder / "SegmentationClass" / f"{stem}.png")
        ids.append(stem)
    if class_names is not None and list(class_names) != VOC_CLASSES:
        (folder / "labels.txt").write_text("".join(f"{name}\n" for name in class_names))
    if split:
        (folder / VOC_SPLITS).mkdir(parents=True, exist_ok=True)
        (folder / VOC_SPLITS / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return folder
