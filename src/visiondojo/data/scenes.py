"""``fashion-scenes``: detection and segmentation scenes composed from Fashion-MNIST items.

No detection data set ships offline, so visiondojo makes one, deterministically from a seed: each
canvas (128x128 by default) gets a textured background and 2-8 Fashion-MNIST items at random
scales (0.5-3x of 28 px), placed so that some overlap and some are cut by the border. Later
items hide earlier ones. Every scene comes with

- boxes (xyxy, pixels, the extent of each object's *visible* pixels) and labels 0..9,
- an instance map (0 background, j + 1 for the image's object j; visible pixels only),
- a semantic mask (0 background, k + 1 for class k),

so detection, semantic and instance segmentation can all train on it. An object left with less
than ``MIN_VISIBLE`` of its pixels (hidden by others or cut by the border) gets no box and counts
as background in both maps: such slivers are not objects anyone could label. The splits draw
items from disjoint pools: train from Fashion-MNIST training items 0-49,999, validation from
items 50,000-59,999, test from its test set; each object's item index is kept (field ``item``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from .builtin import FASHION_MNIST_CLASSES, load_fashion_mnist
from .formats import export_coco, export_voc, export_yolo
from .targets import RaggedTargets

ITEM_SIZE = 28
ITEMS_PER_SCENE = (2, 8)
SCALE = (0.5, 3.0)
ITEM_THRESHOLD = 24
"""A pixel of an item (0-255) above this belongs to the object; the rest is the item's black surround."""
MIN_VISIBLE = 0.25
"""Share of an object's pixels that must stay visible for it to be labeled."""
OUTSIDE = 1 / 3
"""Share of an item's side that may lie beyond the border (truncation)."""
SPLITS = {"train": ("train", 0, 50_000, 8_000), "val": ("train", 50_000, 60_000, 1_000),
          "test": ("test", 0, 10_000, 1_000)}
"""split -> (Fashion-MNIST split, first item, end item, default number of scenes)."""


@dataclass
class Scenes:
    images: torch.Tensor
    """(N, 1, S, S) uint8."""
    targets: RaggedTargets
    """Per image: ``boxes`` (M, 4) float32 xyxy pixels, ``labels`` (M,) int64, ``item`` (M,) int64."""
    instances: torch.Tensor
    """(N, S, S) uint8: 0 background, j + 1 the image's object j."""
    semantic: torch.Tensor
    """(N, S, S) uint8: 0 background, k + 1 class k."""
    class_names: list[str]
    """The 10 object classes (labels 0..9; in the semantic mask they are 1..10)."""


BACKGROUND_NAME = "background"
"""Class 0 of the semantic masks."""


def fashion_scenes(split: str = "train", n: int | None = None, *, size: int = 128, seed: int = 0,
                   data_dir: str | None = None) -> Scenes:
    """``n`` scenes of ``split`` (train / val / test; defaults 8,000 / 1,000 / 1,000) from Fashion-MNIST."""
    if split not in SPLITS:
        raise DataError(f"fashion-scenes: unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    source, first, end, default_n = SPLITS[split]
    images, labels = load_fashion_mnist(source, data_dir)
    offset = {"train": 0, "val": 1, "test": 2}[split]
    return compose_scenes(images[first:end], labels[first:end], default_n if n is None else n, size=size,
                          seed=seed * 3 + offset, item_offset=first, class_names=list(FASHION_MNIST_CLASSES))


def load_split(split: str, data_dir: str | None = None, *,
               masks: bool = False) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]] | torch.Tensor, list[str]]:
    """(images, targets, class names) for a data spec's split part: ``train``, ``val``, ``test``,
    optionally with a scene count (``fashion-scenes:train:2000``). The targets are per-image box
    dicts, or with ``masks`` the (N, S, S) semantic masks, whose class 0 is the background."""
    part, _, count = split.partition(":")
    if count and not count.isdigit():
        raise DataError(f"fashion-scenes:{split}: the scene count must be a whole number, as in fashion-scenes:train:2000")
    scenes = fashion_scenes(part, int(count) if count else None, data_dir=data_dir)
    if masks:
        return scenes.images, scenes.semantic.long(), [BACKGROUND_NAME, *scenes.class_names]
    return scenes.images, scenes.targets.gather(slice(None)).per_image(), scenes.class_names


def export_scenes(split: str, n: int, folder: str | Path, fmt: str = "coco", *, size: int = 128, seed: int = 0,
                  data_dir: str | None = None) -> Path:
    """Write ``n`` scenes of ``split`` as a COCO, VOC or YOLO data set in ``folder`` (to try the scenes
    with tools made for those formats, or the readers on known boxes); returns what to read."""
    writers = {"coco": export_coco, "voc": export_voc, "yolo": export_yolo}
    if fmt not in writers:
        raise DataError(f"fashion-scenes: unknown format {fmt!r}; choose one of {', '.join(writers)}")
    made = fashion_scenes(split, n, size=size, seed=seed, data_dir=data_dir)
    return writers[fmt](made.images, made.targets, made.class_names, folder, split=split)


def compose_scenes(items: np.ndarray, labels: np.ndarray, n: int, *, size: int = 128, seed: int = 0,
                   item_offset: int = 0, class_names: list[str] | None = None) -> Scenes:
    """``n`` scenes from ``items`` (K, 28, 28) uint8 with class ``labels`` (K,); a pure function of its inputs."""
    if n < 1:
        raise DataError(f"fashion-scenes: n must be at least 1, got {n}")
    rng = np.random.default_rng(seed)
    items_t = torch.as_tensor(np.asarray(items), dtype=torch.float32)
    images = torch.empty(n, 1, size, size, dtype=torch.uint8)
    instances = torch.zeros(n, size, size, dtype=torch.uint8)
    samples = []
    for i in range(n):
        canvas, ids, chosen = _scene(items_t, size, rng)
        boxes, kept = [], []
        for j, index in enumerate(chosen):
            visible = ids == j + 1
            area = int(visible.sum())
            if area < MIN_VISIBLE * index[1]:
                ids[visible] = 0
                continue
            rows, cols = visible.any(dim=1).nonzero()[:, 0], visible.any(dim=0).nonzero()[:, 0]
            boxes.append([float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)])
            kept.append(index[0])
            ids[visible] = len(kept)
        images[i, 0] = canvas
        instances[i] = ids
        samples.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "labels": torch.as_tensor(labels[kept], dtype=torch.int64).reshape(-1),
                        "item": torch.as_tensor(kept, dtype=torch.int64).reshape(-1) + item_offset})
    targets = RaggedTargets.from_samples(samples)
    semantic = _semantic(instances, targets)
    names = class_names or [str(k) for k in range(int(np.max(labels)) + 1)]
    return Scenes(images, targets, instances, semantic, names)


def _scene(items: torch.Tensor, size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """One canvas (S, S) uint8, its instance map before dropping, and per pasted item (index, full pixel count)."""
    canvas = _background(size, rng)
    ids = torch.zeros(size, size, dtype=torch.uint8)
    chosen: list[tuple[int, int]] = []
    for j in range(int(rng.integers(ITEMS_PER_SCENE[0], ITEMS_PER_SCENE[1] + 1))):
        index = int(rng.integers(len(items)))
        side = max(4, round(ITEM_SIZE * rng.uniform(*SCALE)))
        pixels = F.interpolate(items[index][None, None], size=(side, side), mode="bilinear",
                               align_corners=False)[0, 0].round().clamp(0, 255)
        mask = pixels > ITEM_THRESHOLD
        reach = int(side * OUTSIDE)
        x0 = int(rng.integers(-reach, size - side + reach + 1))
        y0 = int(rng.integers(-reach, size - side + reach + 1))
        # The part of the item that falls on the canvas.
        top, left = max(0, -y0), max(0, -x0)
        bottom, right = min(side, size - y0), min(side, size - x0)
        part = mask[top:bottom, left:right]
        region = (slice(y0 + top, y0 + bottom), slice(x0 + left, x0 + right))
        canvas[region] = torch.where(part, pixels[top:bottom, left:right].to(torch.uint8), canvas[region])
        ids[region] = torch.where(part, torch.tensor(j + 1, dtype=torch.uint8), ids[region])
        chosen.append((index, int(mask.sum())))
    return canvas, ids, chosen


def _background(size: int, rng: np.random.Generator) -> torch.Tensor:
    """A dim texture: a smooth random field plus fine grain, so objects are not on flat black."""
    coarse = torch.as_tensor(rng.uniform(0, 1, (1, 1, max(2, size // 16), max(2, size // 16))), dtype=torch.float32)
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0, 0]
    grain = torch.as_tensor(rng.normal(0, 6, (size, size)), dtype=torch.float32)
    level = float(rng.uniform(10, 40))
    return (level + 30 * smooth + grain).round().clamp(0, ITEM_THRESHOLD * 3).to(torch.uint8)


def _semantic(instances: torch.Tensor, targets: RaggedTargets) -> torch.Tensor:
    """Instance maps -> class maps (0 background, k + 1 class k), through each image's own label table."""
    semantic = torch.zeros_like(instances)
    for i in range(len(targets)):
        labels = targets.fields["labels"][targets.offsets[i]:targets.offsets[i + 1]]
        table = torch.cat([torch.zeros(1, dtype=torch.uint8), (labels + 1).to(torch.uint8)])
        semantic[i] = table[instances[i].long()]
    return semantic
