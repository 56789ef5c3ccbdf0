"""Detection and segmentation data on disk in the common formats, read and written.

Detection (COCO JSON, Pascal VOC, YOLO) reads into letterboxed images plus per-image
``{"boxes", "labels"}`` targets (``read_detection_files``); semantic segmentation (a folder of
images and masks, VOC's ``SegmentationClass``, COCO outlines: ``masks``) into letterboxed images
plus (N, H, W) masks (``read_mask_files``). ``sources`` calls them for paths that ``locate``
recognizes:

- a ``.json`` file: COCO, its boxes; with task segmentation, its polygons and RLE;
- a folder with ``Annotations/``: Pascal VOC detection; a folder with ``SegmentationClass/``:
  VOC segmentation, when the task is segmentation or the folder has no ``Annotations/``;
- a folder with ``images/`` and ``masks/``: a mask folder (unless it has ``labels/`` too and the
  task is not segmentation: then YOLO);
- a folder with ``data.yaml`` (or a ``.yaml`` file), or with ``images/`` and ``labels/``: YOLO.

The task reaches ``locate`` as an argument (``DataOptions.task``, None when the user gave none):
one folder or COCO file can hold both boxes and masks, and only the task tells which are meant;
without a task the old detection reading stands. A split is chosen by a ``:split`` suffix
(``voc_folder:val``), else the caller's default split; a COCO file is one split already. Writing
(``export_coco``, ``export_voc``, ``export_yolo``, ``export_mask_folder``,
``export_voc_segmentation``) produces exactly the layouts the readers read, so data can be
converted between formats and round trips can be tested.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import DataError
from .coco import export_coco, read_coco
from .common import DetectionFiles, FileReading, load_listing
from .letterbox import (letterbox, letterbox_mask, letterbox_region, letterbox_scale, letterbox_table,
                        letterbox_targets, plan_size, unletterbox_boxes)
from .masks import (MASK_FORMATS, VOC_CLASSES, MaskFiles, MaskReading, export_mask_folder, export_voc_segmentation,
                    is_mask_folder, is_voc_segmentation, read_mask_files, voc_palette)
from .voc import export_voc, is_voc, read_voc
from .yolo import export_yolo, is_yolo, read_yolo

__all__ = ["DetectionFiles", "FileReading", "MASK_FORMATS", "MaskFiles", "MaskReading", "VOC_CLASSES", "export_coco",
           "export_mask_folder", "export_voc", "export_voc_segmentation", "export_yolo", "letterbox", "letterbox_mask",
           "letterbox_region", "letterbox_scale", "letterbox_table", "letterbox_targets", "locate", "plan_size", "read_detection_files",
           "read_mask_files", "unletterbox_boxes", "voc_palette"]


def locate(text: str, task: str | None = None) -> tuple[Path, str, str | None] | None:
    """(path, format, split or None) when ``text`` names a detection or segmentation data set on
    disk, else None; the segmentation formats are ``MASK_FORMATS``.

    ``text`` may end in ``:split``; the suffix counts only when the path without it exists and the
    path with it does not (so a file name with a colon in it still reads as it is). ``task``
    decides between boxes and masks where the files hold both (see the module's docstring).
    """
    path, split = Path(text), None
    if not path.exists():
        base, colon, suffix = text.rpartition(":")
        if not (colon and base and suffix and Path(base).exists()):
            return None
        path, split = Path(base), suffix
    segmentation = task == "segmentation"
    if path.is_file() and path.suffix.lower() == ".json":
        return path, "coco-segmentation" if segmentation else "coco", split
    if is_voc_segmentation(path) and (segmentation or not is_voc(path)):
        return path, "voc-segmentation", split
    if is_voc(path):
        return path, "voc", split
    if is_mask_folder(path) and (segmentation or not (path / "labels").is_dir()):
        return path, "masks", split
    if is_yolo(path):
        return path, "yolo", split
    return None


def read_detection_files(path: str | Path, *, file_format: str | None = None, split: str | None = None,
                         default_split: str = "train", resize: tuple[int, int] | None = None, strict: bool = True,
                         memory_limit_gb: float = 4.0) -> DetectionFiles:
    """Read a COCO / VOC / YOLO data set (``file_format`` None: as ``locate`` finds it) into memory.

    ``resize`` (height, width) is the letterbox size; None plans it from the data
    (``plan_size``). ``strict=False`` drops bad objects and skips bad images, and says which in
    ``reading.dropped`` and ``reading.skipped_images``.
    """
    if file_format is None:
        found = locate(str(path))
        if found is not None and found[1] in MASK_FORMATS:
            raise DataError(f"{path}: holds segmentation masks, not boxes; read it with read_mask_files")
        if found is None:
            raise DataError(f"{path}: not a COCO .json file, a VOC folder (Annotations/) or a YOLO data set "
                            "(data.yaml, or images/ and labels/)")
        path, file_format, split = found[0], found[1], split or found[2]
    path = Path(path)
    chosen = split or default_split
    if file_format == "coco":
        if split is not None:
            raise DataError(f"{path}:{split}: a COCO file holds one split; pass the split's own .json file")
        listing = read_coco(path, strict=strict)
    elif file_format == "voc":
        listing = read_voc(path, chosen, strict=strict)
    elif file_format == "yolo":
        listing = read_yolo(path, chosen, strict=strict)
    else:
        raise DataError(f"file_format: {file_format!r} is not one of coco, voc, yolo")
    return load_listing(listing, resize=resize, strict=strict, memory_limit_gb=memory_limit_gb)
