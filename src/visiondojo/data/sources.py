"""Adapters: every accepted form of data becomes an ``InMemory`` or a ``Streamed`` source.

- ``InMemory``: one (N, C, H, W) tensor plus targets. Arrays and tensors, the built-in datasets,
  detection and segmentation data sets on disk (COCO, VOC, YOLO, mask folders: ``formats``,
  letterboxed to one size) and any ``Dataset`` / ``DataLoader`` whose images fit
  ``DataOptions.memory_limit_gb`` land here;
  training batches them on the device with no per-sample Python.
- ``Streamed``: a ``Dataset`` read by DataLoader workers. Image folders, CSV manifests and datasets
  too large for memory land here. Targets are always known up front (inspection and stratified
  splits need them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset
from torchvision import tv_tensors

from ..launch import local_world_size
from ..errors import DataError
from . import builtin, formats, scenes
from .files import ImageFileDataset, scan_image_folder, scan_manifest
from .images import batch_to_nchw, check_finite, image_to_chw, resize_batch, to_tensor
from .boxes import BoxReading, read_boxes
from .targets import IGNORE_INDEX, Targets, as_targets


@dataclass
class DataOptions:
    """How to read the user's data; each field overrides what inspection would infer."""

    task: str | None = None
    num_classes: int | None = None
    class_names: list[str] | None = None
    resize: tuple[int, int] | None = None
    """(height, width) every image is resized to. Detection and segmentation data (boxes and
    masks move along) are letterboxed to it, their aspect kept; images of several sizes without
    it, to a size planned from them (``formats.plan_size``)."""
    strict: bool = True
    """False skips unreadable image files (and says how many) instead of failing."""
    val_fraction: float = 0.1
    data_dir: str | None = None
    """Folder with the files of a built-in dataset, when not in its default place."""
    box_format: str | None = None
    """Box annotations' format (xyxy, xywh, cxcywh) when the data does not say; None: xyxy."""
    memory_limit_gb: float = 4.0
    """Datasets whose decoded images fit under this are held in memory and batched on the device."""

    @property
    def process_memory_gb(self) -> float:
        """This process's part of ``memory_limit_gb``: under torchrun every process on the machine
        holds its own copy of in-memory data, so the limit is shared by the machine's processes."""
        return self.memory_limit_gb / local_world_size()


@dataclass
class InMemory:
    images: torch.Tensor
    targets: Targets
    """A targets container (``data.targets``); a bare (N, ...) tensor is wrapped as dense targets."""
    class_names: list[str] | None
    origin: str
    positions: torch.Tensor | None = None
    """Index of each sample in the data as the user gave it (None: the same as here). A split
    keeps it, so an error found after the split names the user's index, not the subset's."""
    reading: BoxReading | formats.MaskReading | None = None
    """How box annotations or mask files were read (format, size, what was dropped), for the plan."""
    letterboxes: torch.Tensor | None = None
    """Letterboxed data (detection, segmentation): (N, 5) per image, the scale, pad x, pad y,
    original height and width of its letterbox, so predictions map back to the original pixels."""

    def __post_init__(self) -> None:
        self.targets = as_targets(self.targets)

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, indices: torch.Tensor) -> "InMemory":
        letterboxes = self.letterboxes[indices] if self.letterboxes is not None else None
        return InMemory(self.images[indices], self.targets.subset(indices), self.class_names, self.origin,
                        positions=_positions(self, indices), reading=self.reading, letterboxes=letterboxes)

    def position(self, index: int) -> int:
        """The user's index of sample ``index``."""
        return int(self.positions[index]) if self.positions is not None else index

    def images_at(self, indices: torch.Tensor) -> torch.Tensor:
        return self.images[indices]


@dataclass
class Streamed:
    dataset: Dataset
    """Yields (image, target); batchers read only its images and gather targets from ``targets``."""
    targets: Targets
    class_names: list[str] | None
    origin: str
    channels: int
    size: tuple[int, int]
    positions: torch.Tensor | None = None
    """As ``InMemory.positions``."""

    def __post_init__(self) -> None:
        self.targets = as_targets(self.targets)

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, indices: torch.Tensor) -> "Streamed":
        return Streamed(Subset(self.dataset, indices.tolist()), self.targets.subset(indices), self.class_names,
                        self.origin, self.channels, self.size, positions=_positions(self, indices))

    def position(self, index: int) -> int:
        """The user's index of sample ``index``."""
        return int(self.positions[index]) if self.positions is not None else index

    def images_at(self, indices: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.dataset[int(i)][0] for i in indices])


Source = Union[InMemory, Streamed]


def _positions(source: InMemory | Streamed, indices: torch.Tensor) -> torch.Tensor:
    indices = torch.as_tensor(indices, dtype=torch.int64)
    return source.positions[indices] if source.positions is not None else indices.clone()


def as_source(data: Any, options: DataOptions, *, role: str = "train", default_split: str = "train") -> Source:
    """Adapt ``data`` (given as the ``role`` argument, for error messages) into a Source.

    Empty data is refused here, for every form and role, so the error says it is empty instead of
    surfacing later as a split, an inspection or a loss that has nothing to work on.
    """
    source = _adapt(data, options, role, default_split)
    if len(source) == 0:
        raise empty_data_error(source.origin)
    return source


def empty_data_error(origin: str) -> DataError:
    """The error for data with no samples, naming where it came from and what to check."""
    return DataError(
        f"{origin}: the dataset is empty (0 samples); pass at least one image (check the arrays' first "
        "dimension, the Dataset's __len__, or the files in the folder or manifest)"
    )


def _adapt(data: Any, options: DataOptions, role: str, default_split: str) -> Source:
    if isinstance(data, (InMemory, Streamed)):
        return data
    if isinstance(data, (str, Path)):
        return _from_path(data, options, role, default_split)
    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], (str, Path)):
        return _from_arrays(data[0], data[1], options, role)
    if isinstance(data, DataLoader):
        if isinstance(data.dataset, IterableDataset):
            raise DataError(f"{role}: IterableDataset loaders are not supported; pass a map-style Dataset")
        return _from_dataset(data.dataset, options, f"{role} (DataLoader.dataset)", data.num_workers)
    if isinstance(data, Dataset):
        if isinstance(data, IterableDataset):
            raise DataError(f"{role}: an IterableDataset has no length to split and shuffle; pass a map-style Dataset")
        return _from_dataset(data, options, role, 0)
    raise DataError(
        f"{role}: cannot use a {type(data).__name__} as data. Pass (images, labels) arrays or tensors, "
        "a torch Dataset or DataLoader, an image folder, a CSV manifest, or a built-in name "
        f"({', '.join(builtin.NAMES)})"
    )


def _from_path(data: str | Path, options: DataOptions, role: str, default_split: str) -> Source:
    text = str(data)
    name, _, split = text.partition(":")
    if name == builtin.SCENES:
        images, targets, class_names = scenes.load_split(split or default_split, options.data_dir,
                                                         masks=options.task == "segmentation")
        return _from_arrays(images, targets, options, f"{role} ({text})", class_names)
    if name in builtin.NAMES:
        images, targets, class_names = builtin.load(name, split or default_split, options.data_dir)
        return _from_arrays(images, targets, options, f"{role} ({text})", class_names)
    found = formats.locate(text, task=options.task)
    if found is not None and found[1] in formats.MASK_FORMATS:
        return _from_mask_files(found, options, default_split)
    if found is not None:
        return _from_detection_files(found, options, default_split)
    path = Path(text)
    if not path.exists():
        raise DataError(
            f"{role}: {text!r} is neither an existing file or folder nor a built-in dataset "
            f"({', '.join(builtin.NAMES)})"
        )
    if path.is_dir():
        files = scan_image_folder(path, resize=options.resize, strict=options.strict)
    elif path.suffix.lower() == ".csv":
        files = scan_manifest(path, resize=options.resize, strict=options.strict,
                              multi_hot=options.task == "multilabel")
    else:
        raise DataError(f"{role}: {path} is a file but not a CSV manifest or a COCO .json; pass a class folder, "
                        "a .csv, a COCO .json, a VOC folder, a YOLO data set or a folder of images/ and masks/")
    dataset = ImageFileDataset(files.paths, files.targets, files.channels, files.size)
    return Streamed(dataset, files.targets, files.class_names, str(path),
                    files.channels, files.size)


def _from_detection_files(found: tuple[Path, str, str | None], options: DataOptions, default_split: str) -> InMemory:
    """A COCO / VOC / YOLO data set, letterboxed to ``options.resize`` or to a size planned from it.

    A planned size becomes ``options.resize``: the validation and test data read after the
    training data are letterboxed to the same size, and the plan records it (so does a replay).
    """
    path, file_format, split = found
    files = formats.read_detection_files(path, file_format=file_format, split=split, default_split=default_split,
                                         resize=options.resize, strict=options.strict,
                                         memory_limit_gb=options.process_memory_gb)
    if options.resize is None:
        options.resize = files.reading.size
    return InMemory(files.images, files.targets, files.class_names, files.origin, reading=files.reading,
                    letterboxes=files.letterboxes)


def _from_mask_files(found: tuple[Path, str, str | None], options: DataOptions, default_split: str) -> InMemory:
    """A mask folder, VOC segmentation folder or COCO file read for segmentation, letterboxed as
    detection files are (and, as there, a planned size becomes ``options.resize``). Classes the
    user gave check the mask values per file when the files name no classes. The task becomes
    segmentation when the user named none, so validation and test data given as paths that hold
    boxes and masks alike (a COCO file, a VOC folder, ``fashion-scenes``) are read as masks too."""
    path, file_format, split = found
    given = options.num_classes or (len(options.class_names) if options.class_names else None)
    files = formats.read_mask_files(path, file_format=file_format, split=split, default_split=default_split,
                                    resize=options.resize, strict=options.strict,
                                    memory_limit_gb=options.process_memory_gb, num_classes=given)
    if options.resize is None:
        options.resize = files.reading.size
    if options.task is None:
        options.task = "segmentation"
    return InMemory(files.images, files.masks, files.class_names or options.class_names, files.origin,
                    reading=files.reading, letterboxes=files.letterboxes)


def align_classes(source: Source, class_names: list[str]) -> Source:
    """Renumber ``source``'s labels to ``class_names`` (the training classes), by name.

    Folders, manifests and string labels number their classes per source (sorted names), so a
    test folder that lacks one class would otherwise shift every later class down by one and be
    scored against the wrong labels without any error.
    """
    own = source.class_names
    if not own or list(own) == list(class_names):
        return source
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [name for name in own if name not in index]
    if unknown:
        raise DataError(
            f"{source.origin}: classes {unknown} do not occur in the training data "
            f"(training classes: {', '.join(class_names)})"
        )
    mapping = torch.tensor([index[name] for name in own], dtype=torch.int64)
    values = getattr(source.targets, "values", None)
    if values is not None and values.ndim == 3:  # masks: every pixel renumbered, 255 (ignored) kept
        table = torch.arange(max(IGNORE_INDEX, int(values.max())) + 1)
        table[:len(own)] = mapping  # values beyond the names stay, for check_targets to name
        source.targets = as_targets(table[values])
        source.class_names = list(class_names)
        return source
    labels = class_labels(source)
    if labels.ndim == 1:
        targets = mapping[labels]
    else:
        targets = torch.zeros(len(labels), len(class_names), dtype=labels.dtype)
        targets[:, mapping] = labels
    source.targets = as_targets(targets)
    if isinstance(source, Streamed) and isinstance(getattr(source.dataset, "targets", None), torch.Tensor):
        source.dataset.targets = targets  # what the workers hand out
    source.class_names = list(class_names)
    return source


def class_labels(source: Source) -> torch.Tensor:
    """The (N,) class ids or (N, K) multi-hot labels of a classification source.

    Classification code (inspection, class alignment, class balance, pseudo-labels) reads labels
    densely through this, so data with a variable number of objects per image gets a clear error
    there instead of an indexing failure.
    """
    values = getattr(source.targets, "values", None)
    if values is None or values.ndim > 2:
        raise DataError(f"{source.origin}: these targets are not class labels (one class or one multi-hot row "
                        "per image); classification needs (N,) class ids or (N, K) multi-hot labels")
    return values


def _from_arrays(images: Any, targets: Any, options: DataOptions, origin: str,
                 class_names: list[str] | None = None) -> InMemory:
    images = batch_to_nchw(to_tensor(images, f"{origin} images"), f"{origin} images")
    if is_box_annotations(targets):
        return _boxes_from_images(images, targets, options, origin, class_names)
    targets, names = targets_to_tensor(targets, f"{origin} labels")
    if len(images) != len(targets):
        raise DataError(f"{origin}: {len(images)} images but {len(targets)} labels; they must match one to one")
    check_finite(images, origin)
    if targets.ndim == 3 and tuple(targets.shape[1:]) != tuple(images.shape[-2:]):
        raise DataError(f"{origin}: masks are {targets.shape[1]}x{targets.shape[2]} but the images "
                        f"{images.shape[-2]}x{images.shape[-1]}; each mask must have its image's size")
    # Names the data carries come first: align_classes renumbers them to the training classes.
    if targets.ndim == 3:
        return _masks_from_images(images, targets, options, origin, names or class_names or options.class_names)
    if options.resize is not None:
        images = resize_batch(images, tuple(options.resize))
    return InMemory(images, targets, names or class_names or options.class_names, origin)


def is_box_annotations(targets: Any) -> bool:
    """A list of per-image dicts with boxes: detection data rather than class labels."""
    return isinstance(targets, (list, tuple)) and len(targets) > 0 and isinstance(targets[0], dict) \
        and "boxes" in targets[0]


def _boxes_from_images(images: torch.Tensor | list[torch.Tensor], annotations: Any, options: DataOptions, origin: str,
                       class_names: list[str] | None) -> InMemory:
    """Images with per-image box annotations -> an in-memory source with ragged targets.

    Images of one size stay as they are unless ``resize`` is set; images of several sizes, or a
    ``resize``, are letterboxed as detection files are (aspect kept, boxes moved with them, the
    letterboxes kept so predictions map back), to ``resize`` or a size planned from the data,
    which then becomes ``options.resize`` so validation and test data match.
    """
    sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
    num_classes = options.num_classes or (len(options.class_names) if options.class_names else None)
    targets, reading = read_boxes(annotations, sizes, origin, box_format=options.box_format,
                                  num_classes=num_classes, strict=options.strict)
    names = class_names or options.class_names
    size = _letterbox_size(sizes, options, "detection")
    if size is None:
        stacked = images if isinstance(images, torch.Tensor) else torch.stack(images)
        check_finite(stacked, origin)
        return InMemory(stacked, targets, names, origin, reading=reading)
    letterboxes = formats.letterbox_targets(targets, sizes, size)
    stacked = torch.stack([formats.letterbox(image, size)[0] for image in images])
    check_finite(stacked, origin)
    return InMemory(stacked, targets, names, origin, reading=reading, letterboxes=letterboxes)


def _masks_from_images(images: torch.Tensor | list[torch.Tensor], masks: torch.Tensor | list[torch.Tensor],
                       options: DataOptions, origin: str, class_names: list[str] | None) -> InMemory:
    """Images with (H, W) masks of their size -> an in-memory segmentation source, (N, H, W) int64.

    As box data (``_boxes_from_images``): images of one size stay as they are unless ``resize`` is
    set; images of several sizes, or a ``resize``, are letterboxed together with their masks
    (nearest-exact, padded with the ignore index) to ``resize`` or a size planned from the data,
    which then becomes ``options.resize`` so validation and test data match. Letterboxing rather
    than stretching keeps the objects' shapes, and is how ``Run.predict`` brings new images to the
    training size; the letterboxes are kept so predictions map back.
    """
    sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
    channels = {int(image.shape[0]) for image in images}
    if len(channels) > 1:
        first = next(i for i, image in enumerate(images) if image.shape[0] != images[0].shape[0])
        raise DataError(f"{origin}: sample {first} has {images[first].shape[0]} channels but sample 0 has "
                        f"{images[0].shape[0]}; give every image the same channels (all RGB or all greyscale)")
    size = _letterbox_size(sizes, options, "segmentation")
    if size is None:
        stacked = images if isinstance(images, torch.Tensor) else torch.stack(images)
        check_finite(stacked, origin)
        return InMemory(stacked, (masks if isinstance(masks, torch.Tensor) else torch.stack(masks)).long(),
                        class_names, origin)
    pixels = torch.empty(len(sizes), channels.pop(), *size, dtype=images[0].dtype)
    labels = torch.empty(len(sizes), *size, dtype=torch.int64)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, original in enumerate(sizes):
        groups.setdefault(original, []).append(i)
    for members in groups.values():  # one resize per size and chunk, not one per image
        for start in range(0, len(members), 256):
            chunk = members[start:start + 256]
            index = torch.tensor(chunk, dtype=torch.int64)
            pixels[index] = formats.letterbox(torch.stack([images[i] for i in chunk]), size)[0]
            labels[index] = formats.letterbox_mask(torch.stack([masks[i] for i in chunk]).long(), size)
    check_finite(pixels, origin)
    return InMemory(pixels, labels, class_names, origin, letterboxes=formats.letterbox_table(sizes, size))


def _letterbox_size(sizes: list[tuple[int, int]], options: DataOptions, task: str) -> tuple[int, int] | None:
    """The canvas images of ``sizes`` (with boxes or masks) are letterboxed to, or None when they
    stay as they are (one size, no ``resize``). A planned size becomes ``options.resize``, and the
    task ``options.task``, so validation and test data given later (a COCO file or a VOC folder,
    which hold boxes and masks alike) are read as the training data were."""
    if options.task is None:
        options.task = task
    if options.resize is None and len(set(sizes)) == 1:
        return None
    size = tuple(options.resize) if options.resize is not None else formats.plan_size(sizes)[0]
    options.resize = size  # type: ignore[assignment]
    return size  # type: ignore[return-value]


def is_mask_target(target: Any) -> bool:
    """Whether a Dataset's target is a segmentation mask: a ``tv_tensors.Mask``, a PIL image, or an
    (H, W) / (1, H, W) array or tensor. Class labels are scalars, strings or 1-D multi-hot rows."""
    if isinstance(target, (tv_tensors.Mask, Image.Image)):
        return True
    if isinstance(target, (torch.Tensor, np.ndarray)):
        return target.ndim == 2 or (target.ndim == 3 and target.shape[0] == 1)
    return False


def mask_tensor(mask: Any, origin: str) -> torch.Tensor:
    """One mask (a ``tv_tensors.Mask``, a PIL image, an array or a tensor; (H, W) or (1, H, W)) as
    (H, W) uint8 class indices (255: ignored); float, colour and out-of-range masks are refused."""
    if isinstance(mask, Image.Image):
        if mask.mode in ("RGB", "RGBA"):
            raise DataError(f"{origin}: the mask is an {mask.mode} image; a mask holds class indices: map its colours "
                            "to indices first (a palette PNG, mode P, holds indices)")
        if mask.mode == "F":
            raise DataError(f"{origin}: the mask holds floating-point pixels (mode F), not class indices")
        mask = np.asarray(mask.getchannel(0) if mask.mode in ("LA", "PA") else mask).astype(np.int64)
    if isinstance(mask, torch.Tensor):
        mask = mask.as_subclass(torch.Tensor)  # a tv_tensors.Mask as a plain tensor
    tensor = to_tensor(mask, origin)
    if tensor.ndim == 3 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.ndim != 2:
        raise DataError(f"{origin}: the mask has shape {tuple(tensor.shape)}; a mask is (H, W) class indices")
    if tensor.dtype.is_floating_point:
        raise DataError(f"{origin}: the mask is {str(tensor.dtype).removeprefix('torch.')}; a mask holds integer "
                        "class indices (torchvision's ToTensor scales a PIL mask to [0, 1]: convert masks with "
                        "torch.as_tensor(np.array(mask)) or tv_tensors.Mask instead)")
    if tensor.dtype == torch.bool:
        return tensor.to(torch.uint8)
    low, high = (int(tensor.min()), int(tensor.max())) if tensor.numel() else (0, 0)
    if low < 0 or high > IGNORE_INDEX:
        raise DataError(f"{origin}: the mask holds {low if low < 0 else high}; class indices are "
                        f"0..{IGNORE_INDEX - 1}, {IGNORE_INDEX} marks ignored pixels")
    return tensor.to(torch.uint8)


def targets_to_tensor(targets: Any, origin: str) -> tuple[torch.Tensor, list[str] | None]:
    """Labels -> int64 (N,) class indices or float (N, K) multi-hot; string labels get sorted names."""
    if isinstance(targets, (list, tuple)):
        targets = np.asarray(targets)
    if isinstance(targets, np.ndarray) and targets.dtype.kind in "USO":
        odd = next((i for i, t in enumerate(targets.ravel()) if not isinstance(t, (str, bytes, np.str_, int, np.integer))),
                   None) if targets.dtype.kind == "O" else None
        if odd is not None:
            raise DataError(f"{origin}: label {odd} is a {type(targets.ravel()[odd]).__name__}; labels are class ids, "
                            "class names (strings), multi-hot rows, or for detection {'boxes', 'labels'} dicts")
        names, indices = np.unique(targets.astype(str), return_inverse=True)
        return torch.from_numpy(indices.astype(np.int64)), [str(n) for n in names]
    tensor = to_tensor(targets, origin)
    if tensor.ndim == 2 and tensor.shape[1] == 1:
        tensor = tensor[:, 0]
    if tensor.ndim == 1:
        if tensor.dtype.is_floating_point:
            if not torch.isfinite(tensor).all() or not (tensor == tensor.round()).all():
                first = int((~torch.isfinite(tensor) | (tensor != tensor.round())).nonzero()[0, 0])
                raise DataError(f"{origin}: label {first} is {tensor[first].item()!r}; class labels must be whole numbers")
        if tensor.dtype == torch.bool:
            tensor = tensor.to(torch.int64)
        tensor = tensor.to(torch.int64)
        # Checked here, before any split reorders the data, and because a negative index is never
        # a class (it would otherwise surface as a bincount crash in the stratified split).
        negative = tensor < 0
        if bool(negative.any()):
            first = int(negative.nonzero()[0, 0])
            raise DataError(
                f"{origin}: label {int(tensor[first])} at index {first} is negative ({int(negative.sum())} "
                "negative labels); class labels must be 0..K-1 (string labels are mapped to indices for you)"
            )
        return tensor, None
    if tensor.ndim == 2:
        valid = (tensor == 0) | (tensor == 1)
        if not valid.all():
            row = int((~valid).any(dim=1).nonzero()[0, 0])
            raise DataError(
                f"{origin}: row {row} of the (N, K) labels holds values other than 0 and 1; "
                "multi-label targets must be multi-hot"
            )
        return tensor.to(torch.float32), None
    if tensor.ndim == 3:
        return _masks(tensor, origin), None
    raise DataError(
        f"{origin}: labels must be shaped (N,) class indices, (N, K) multi-hot or (N, H, W) masks, got shape "
        f"{tuple(tensor.shape)}" + ("; an RGB mask must be mapped to class indices first" if tensor.ndim == 4 else "")
    )


def _masks(tensor: torch.Tensor, origin: str) -> torch.Tensor:
    """(N, H, W) segmentation masks as int64 class indices; float masks are refused (they are
    probabilities or a resampled image, not classes)."""
    if tensor.dtype.is_floating_point:
        raise DataError(f"{origin}: masks are {str(tensor.dtype).removeprefix('torch.')}; segmentation masks hold "
                        "integer class indices (0..K-1, 255 for ignored pixels); convert them with .long() if "
                        "they are whole numbers")
    tensor = tensor.to(torch.int64)
    negative = tensor < 0
    if bool(negative.any()):
        first = int(negative.flatten(1).any(dim=1).nonzero()[0, 0])
        raise DataError(f"{origin}: mask {first} holds negative values; class indices are 0..K-1 (255: ignored)")
    return tensor


def _from_dataset(dataset: Dataset, options: DataOptions, origin: str, num_workers: int) -> Source:
    """One pass over the dataset: targets always, images too while they fit the memory limit."""
    try:
        length = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise DataError(f"{origin}: the Dataset has no __len__; visiondojo needs map-style datasets") from None
    if length == 0:
        raise empty_data_error(origin)  # before the pass below, which reads a first sample
    first = dataset[0]
    pair = isinstance(first, (tuple, list)) and len(first) >= 2
    boxes = pair and is_box_annotations([first[1]])
    masks = pair and not boxes and is_mask_target(first[1])
    # Box and mask data are letterboxed after the pass (the targets move with the images); labels
    # allow a plain resize.
    converted = _ConvertedDataset(dataset, origin, None if boxes or masks else options.resize, masks=masks)
    loader = DataLoader(converted, batch_size=64, num_workers=num_workers, collate_fn=list)
    limit = options.process_memory_gb * 2**30
    images: list[torch.Tensor] | None = []
    targets: list[Any] = []
    used = 0
    first_shape: tuple[int, ...] | None = None
    index = -1
    for chunk in loader:
        for image, target in chunk:
            index += 1
            if first_shape is None:
                first_shape = tuple(image.shape)
            elif tuple(image.shape) != first_shape and not (boxes or masks):
                raise DataError(
                    f"{origin}: sample {index} has shape {tuple(image.shape)} but sample 0 has {first_shape}; "
                    "set resize: [HEIGHT, WIDTH] (Python: resize=(H, W)) to bring all images to one size"
                )
            targets.append(target)
            if images is not None:
                images.append(image)
                used += image.numel() * image.element_size() + (target.numel() if masks else 0)
                if used > limit:
                    images = None
    if boxes or masks:
        if images is None:
            raise DataError(f"{origin}: the images take more than memory_limit_gb ({options.process_memory_gb:g} GB "
                            "for this process); "
                            f"{'segmentation' if masks else 'detection'} data is held in memory: set a smaller "
                            "resize or raise memory_limit_gb")
        names = getattr(dataset, "classes", None) or options.class_names
        if masks:
            return _masks_from_images(images, targets, options, origin, names)
        return _boxes_from_images(images, targets, options, origin, names)
    target_tensor, names = targets_to_tensor(_stack_targets(targets, origin), f"{origin} labels")
    class_names = names or getattr(dataset, "classes", None) or options.class_names
    converted.targets = target_tensor
    if images is not None:
        stacked = torch.stack(images)
        check_finite(stacked, origin)
        return InMemory(stacked, target_tensor, class_names, origin)
    assert first_shape is not None
    return Streamed(converted, target_tensor, class_names, origin, first_shape[0], first_shape[1:])  # type: ignore[arg-type]


def _stack_targets(targets: list[Any], origin: str) -> Any:
    first = targets[0]
    if isinstance(first, str):
        return np.asarray(targets)
    try:
        return torch.stack([torch.as_tensor(t) for t in targets])
    except (RuntimeError, TypeError, ValueError) as exc:
        raise DataError(f"{origin}: labels have inconsistent shapes or types ({exc})") from None


class _ConvertedDataset(Dataset):
    """Wraps a user Dataset so each item becomes ((C,H,W) tensor, target).

    Once the first pass has read every target, ``targets`` holds them as a tensor and items
    yield those (so string or int labels collate like everything else). With ``masks`` each target
    becomes an (H, W) uint8 mask, checked against its image's size.
    """

    def __init__(self, dataset: Dataset, origin: str, resize: tuple[int, int] | None, masks: bool = False):
        self.dataset = dataset
        self.origin = origin
        self.resize = resize
        self.masks = masks
        self.targets: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        try:
            item = self.dataset[index]
        except Exception as exc:  # the user's Dataset failed: say which sample, keep its traceback
            raise DataError(f"{self.origin}: reading item {index} raised {type(exc).__name__}: {exc}; fix the "
                            "Dataset's __getitem__ for that item, or leave the item out") from exc
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise DataError(f"{self.origin}: item {index} is a {type(item).__name__}; the Dataset must yield (image, target)")
        image = image_to_chw(item[0], f"{self.origin} item {index}")
        if self.masks:
            mask = mask_tensor(item[1], f"{self.origin}: sample {index}")
            if tuple(mask.shape) != tuple(image.shape[-2:]):
                raise DataError(f"{self.origin}: sample {index}: the mask is {mask.shape[1]}x{mask.shape[0]} but its "
                                f"image {image.shape[2]}x{image.shape[1]}; each mask must have its image's size "
                                "(resize both together, the mask nearest-neighbour)")
            return image, mask
        if self.resize is not None:
            image = resize_batch(image.unsqueeze(0), tuple(self.resize))[0]
        return image, (item[1] if self.targets is None else self.targets[index])
