"""Segmentation data on disk and from Datasets: mask folders (index, palette and RGB masks), Pascal
VOC segmentation, COCO outlines, letterboxing of images with their masks, predictions mapped back
to each image's own size, and bad input named by its file."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from faster_coco_eval.core import mask as coco_mask
from PIL import Image
from torch import nn
from torch.utils.data import Dataset
from torchvision import tv_tensors

import visiondojo
from visiondojo.data.formats import (VOC_CLASSES, export_mask_folder, export_voc_segmentation, letterbox_region, locate,
                                     read_mask_files)
from visiondojo.data.formats.masks import read_names_file, voc_colours
from visiondojo.data.inspect import images_per_class, inspect_data
from visiondojo.data.sources import DataOptions, align_classes, as_source
from visiondojo.errors import DataError
from visiondojo.plan import DataParams, Plan
from visiondojo.run import Run
from visiondojo.tasks import Masks

NAMES = ["background", "bright", "grey"]
BRIGHT, GREY = 230, 120


def squares(sizes: list[tuple[int, int]], seed: int = 0,
            noise: int = 40) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Dark greyscale images of ``sizes`` (noise up to ``noise``), each with a bright (class 1) and,
    on odd images, a grey (class 2) filled rectangle at even coordinates, and their masks."""
    g = torch.Generator().manual_seed(seed)
    images, masks = [], []
    for i, (h, w) in enumerate(sizes):
        image = torch.randint(0, noise, (1, h, w), generator=g).to(torch.uint8)
        mask = torch.zeros(h, w, dtype=torch.int64)
        for k, value in ((1, BRIGHT), (2, GREY))[:1 + i % 2]:
            bh = 2 * int(torch.randint(2, h // 4, (1,), generator=g))
            bw = 2 * int(torch.randint(2, w // 4, (1,), generator=g))
            y = 2 * int(torch.randint(0, (h - bh) // 2, (1,), generator=g))
            x = 2 * int(torch.randint(0, (w - bw) // 2, (1,), generator=g))
            image[:, y:y + bh, x:x + bw] = value
            mask[y:y + bh, x:x + bw] = k
        images.append(image)
        masks.append(mask)
    return images, masks


def painted(image: torch.Tensor) -> torch.Tensor:
    """Where a noise-free ``squares`` image (or its letterbox canvas) shows a rectangle: scaled up 2x,
    an edge pixel inside keeps at least 9/16 of the rectangle's value and one outside gets at most 1/4."""
    return image[0] > GREY // 2


def save(array: np.ndarray, path: Path, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)).save(path)
    return path


def index_folder(root: Path, sizes: list[tuple[int, int]], split: str | None = None, names: bool = True) -> Path:
    """A mask folder whose masks are plain greyscale (mode L) PNGs of class indices."""
    images, masks = squares(sizes)
    sub = Path(split) if split else Path()
    for i, (image, mask) in enumerate(zip(images, masks)):
        save(image[0].numpy(), root / "images" / sub / f"img{i}.png")
        save(mask.numpy().astype(np.uint8), root / "masks" / sub / f"img{i}.png")
    if names:
        (root / "classes.txt").write_text("\n".join(NAMES) + "\n")
    return root


SIZES = [(24, 32)] * 4


# Mask folders.

def test_a_folder_of_index_pngs_reads_masks_classes_and_splits(tmp_path) -> None:
    index_folder(tmp_path, SIZES, split="train")
    index_folder(tmp_path, [(32, 32)] * 2, split="val", names=False)
    assert locate(str(tmp_path)) == (tmp_path, "masks", None)
    options = DataOptions()
    train = as_source(str(tmp_path), options)
    images, masks = squares(SIZES)
    assert train.class_names == NAMES and train.targets.values.dtype == torch.int64
    assert train.images.shape == (4, 1, 32, 32) and options.resize == (32, 32)  # planned, kept for val and test
    scale = 32 / 32  # the longer side already fits: no scaling, padded below
    assert scale == train.letterboxes[0, 0] and train.letterboxes[:, 3:].tolist() == [[24, 32]] * 4
    assert torch.equal(train.targets.values[:, :24], torch.stack(masks))
    assert bool((train.targets.values[:, 24:] == 255).all())  # the padding is ignored, not background
    assert torch.equal(train.images[:, :, :24], torch.stack(images)) and bool((train.images[:, :, 24:] == 114).all())
    assert options.task == "segmentation"  # so a COCO file or VOC folder given as val or test reads as masks too
    val = as_source(f"{tmp_path}:val", options)
    assert val.origin.endswith(":val") and len(val) == 2 and val.images.shape[-2:] == (32, 32)
    with pytest.raises(DataError, match=r"no split 'test'; splits here: train, val \(choose one as .*:SPLIT\)"):
        as_source(f"{tmp_path}:test", options)


def test_a_folder_of_palette_pngs_reads_the_indices_not_the_colours(tmp_path) -> None:
    images, masks = squares(SIZES)
    masks[0][0, :4] = 255  # an ignored stretch
    export_mask_folder(images, masks, NAMES, tmp_path)
    assert Image.open(tmp_path / "masks" / "000000.png").mode == "P"
    read = read_mask_files(tmp_path, file_format="masks")
    assert torch.equal(read.masks[:, :24], torch.stack(masks)) and read.class_names == NAMES
    assert read.reading.file_format == "mask folder" and read.reading.size == (32, 32)


def test_rgb_masks_map_through_the_palette_of_data_yaml_or_classes_txt(tmp_path) -> None:
    images, masks = squares(SIZES)
    masks[1][0, 0] = 255
    colours = {0: (0, 0, 0), 1: (250, 10, 10), 2: (10, 250, 10), 255: (255, 255, 255)}
    lut = np.zeros((256, 3), dtype=np.uint8)
    for index, colour in colours.items():
        lut[index] = colour
    for i, (image, mask) in enumerate(zip(images, masks)):
        save(image[0].numpy(), tmp_path / "images" / f"{i}.png")
        save(lut[mask.numpy()], tmp_path / "masks" / f"{i}.png")
    (tmp_path / "data.yaml").write_text("names: [background, bright, grey]\n"
                                        "palette: {0: [0, 0, 0], 1: [250, 10, 10], 2: [10, 250, 10], "
                                        "255: [255, 255, 255]}\n")
    read = read_mask_files(tmp_path, file_format="masks")
    assert torch.equal(read.masks[:, :24], torch.stack(masks)) and read.class_names == NAMES
    # The same map as classes.txt: colour last, as hex, or first (CamVid's order); no ignore colour there.
    (tmp_path / "data.yaml").unlink()
    masks[1][0, 0] = 0
    save(lut[masks[1].numpy()], tmp_path / "masks" / "1.png")
    (tmp_path / "classes.txt").write_text("background 0 0 0\nbright #FA0A0A\n10 250 10 grey\n")
    read = read_mask_files(tmp_path, file_format="masks")
    assert torch.equal(read.masks[:, :24], torch.stack(masks)) and read.class_names == NAMES
    # Without colours an RGB mask is refused, with the way out in the message.
    (tmp_path / "classes.txt").write_text("\n".join(NAMES))
    with pytest.raises(DataError, match=r"masks/0\.png: is an RGB colour mask, but no colours are given for the "
                                        r"classes; add .*data\.yaml with names and palette"):
        read_mask_files(tmp_path, file_format="masks")


def test_names_files_take_colours_before_or_after_the_name(tmp_path) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("road 128 64 128\n\nside walk #f423e8\n70 70 70 building\n")
    assert read_names_file(path) == (["road", "side walk", "building"], [(128, 64, 128), (244, 35, 232), (70, 70, 70)])
    path.write_text("road\nside walk\n")
    assert read_names_file(path) == (["road", "side walk"], None)
    path.write_text("road 128 64 128\nsky\n")
    with pytest.raises(DataError, match=r"classes\.txt, line 2: 'sky' has no colour but other lines have"):
        read_names_file(path)
    path.write_text("road 128 64 128\nsky 128 64 128\n")
    with pytest.raises(DataError, match=r"line 2: 'sky' has the colour \[128, 64, 128\] of 'road'"):
        read_names_file(path)


# Pascal VOC.

def test_voc_segmentation_with_splits_borders_and_its_21_classes(tmp_path) -> None:
    images, masks = squares(SIZES)
    for mask in masks:  # VOC's 255 borders around the objects
        inside = (mask > 0).float()[None, None]
        grown = F.max_pool2d(inside, 3, stride=1, padding=1)[0, 0] > 0
        mask[grown & (mask == 0)] = 255
    export_voc_segmentation(images, masks, None, tmp_path, split="train")
    assert not (tmp_path / "labels.txt").exists()
    assert locate(str(tmp_path)) == (tmp_path, "voc-segmentation", None)
    source = as_source(f"{tmp_path}:train", DataOptions())
    assert source.class_names == VOC_CLASSES and source.origin.endswith(":train")
    assert torch.equal(source.targets.values[:, :24], torch.stack(masks))
    # A VOC folder with detection annotations too reads as detection unless the task is segmentation.
    (tmp_path / "Annotations").mkdir()
    assert locate(str(tmp_path))[1] == "voc"
    assert locate(f"{tmp_path}:train", task="segmentation") == (tmp_path, "voc-segmentation", "train")
    # RGB copies of VOC masks map back through VOC's colour map, borders included.
    lut = np.array(voc_colours(256), dtype=np.uint8)
    lut[255] = (224, 224, 192)
    for i, mask in enumerate(masks):
        save(lut[mask.numpy()], tmp_path / "SegmentationClass" / f"train_{i:06d}.png")
    source = as_source(f"{tmp_path}:train", DataOptions(task="segmentation"))
    assert torch.equal(source.targets.values[:, :24], torch.stack(masks))
    with pytest.raises(DataError, match=r"no split 'val' \(.*val\.txt does not exist\); splits here: train"):
        as_source(f"{tmp_path}:val", DataOptions(task="segmentation"))


def test_voc_names_from_labels_txt_and_listed_ids_without_a_mask(tmp_path) -> None:
    images, masks = squares(SIZES)
    export_voc_segmentation(images, masks, NAMES, tmp_path, split="train")
    assert (tmp_path / "labels.txt").read_text().split() == NAMES
    listed = tmp_path / "ImageSets" / "Segmentation" / "train.txt"
    listed.write_text(listed.read_text() + "ghost\n")
    with pytest.raises(DataError, match=r"train\.txt, line 5: .*ghost\.png does not exist; fix the list"):
        read_mask_files(tmp_path, file_format="voc-segmentation")
    read = read_mask_files(tmp_path, file_format="voc-segmentation", strict=False)
    assert read.class_names == NAMES and len(read.files) == 4 and "ghost" in read.reading.skipped_images[0]


# COCO.

def coco_scene(tmp_path: Path) -> Path:
    """Two images: polygons that overlap (a small one inside a large one), an RLE object, an RLE
    crowd over an object and a polygon crowd over the background; category ids 7 and 3."""
    save(np.zeros((20, 30), np.uint8), tmp_path / "images" / "a.png")
    save(np.zeros((40, 40), np.uint8), tmp_path / "images" / "b.png")
    region = np.zeros((40, 40), np.uint8)
    region[4:24, 6:26] = 1
    rle = coco_mask.encode(np.asfortranarray(region))
    rle["counts"] = rle["counts"].decode()
    flat, runs, value, run = region.flatten(order="F"), [], 0, 0  # the same region as an uncompressed RLE
    for v in flat:
        if v != value:
            runs.append(run)
            value, run = v, 0
        run += 1
    runs.append(run)
    data = {"images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 30},
                       {"id": 2, "file_name": "b.png", "height": 40, "width": 40}],
            "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
            "annotations": [
                {"id": 11, "image_id": 1, "category_id": 7, "segmentation": [[2, 2, 12, 2, 12, 10, 2, 10]]},
                {"id": 12, "image_id": 1, "category_id": 3, "segmentation": [[0, 0, 20, 0, 20, 16, 0, 16]]},
                {"id": 13, "image_id": 2, "category_id": 3, "segmentation": rle, "iscrowd": 0},
                {"id": 14, "image_id": 2, "category_id": 7, "segmentation": {"counts": runs, "size": [40, 40]},
                 "iscrowd": 1},
                {"id": 15, "image_id": 2, "category_id": 7, "segmentation": [[30, 30, 38, 30, 38, 38, 30, 38]],
                 "iscrowd": 1}]}
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_outlines_rasterize_smaller_on_top_and_crowds_ignored(tmp_path) -> None:
    path = coco_scene(tmp_path)
    assert locate(str(path)) == (path, "coco", None)  # boxes, unless the task is segmentation
    options = DataOptions(task="segmentation", resize=(40, 40))
    source = as_source(str(path), options)
    assert source.class_names == ["background", "dog", "cat"]  # ids 3, 7 -> classes 1, 2; 0 the background
    assert source.reading.ignored == {"iscrowd": 2}
    first, second = source.targets.values
    scale = 40 / 30
    polygon = lambda points: coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects([points], 20, 30))).astype(bool)
    expected = np.zeros((20, 30), np.int64)
    expected[polygon([0, 0, 20, 0, 20, 16, 0, 16])] = 1  # the large dog first ...
    expected[polygon([2, 2, 12, 2, 12, 10, 2, 10])] = 2  # ... the small cat on top, though it came first
    canvas = F.interpolate(torch.from_numpy(expected)[None, None].float(), size=(round(20 * scale), 40),
                           mode="nearest-exact")[0, 0].long()
    assert torch.equal(first[:canvas.shape[0]], canvas) and bool((first[canvas.shape[0]:] == 255).all())
    assert bool((second[4:24, 6:26] == 1).all())  # the RLE dog: the crowd over it leaves it
    assert bool((second[30:38, 30:38] == 255).all()) and int((second == 255).sum()) == 64
    assert int((second == 1).sum()) == 400 and int((second == 0).sum()) == 1600 - 464


@pytest.mark.parametrize("edit, message", [
    (lambda a: a[0].pop("segmentation"), r"annotation 11: has no segmentation \(polygons"),
    (lambda a: a[0].update(segmentation=[[1, 2, 3, 4]]), r"annotation 11: its polygon 0 is not \[x1, y1, x2, y2"),
    (lambda a: a[2]["segmentation"].update(size=[30, 30]), r"annotation 13: its RLE is 30x30 pixels but its image"),
])
def test_bad_coco_outlines_name_the_file_and_annotation(tmp_path, edit, message) -> None:
    path = coco_scene(tmp_path)
    data = json.loads(path.read_text())
    edit(data["annotations"])
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"annotations\.json, " + message + ".*strict: false to drop such objects"):
        read_mask_files(path, file_format="coco-segmentation")
    read = read_mask_files(path, file_format="coco-segmentation", strict=False)
    assert len(read.reading.dropped) == 1 and len(read.files) == 2


# Images of several sizes.

def test_images_of_two_sizes_are_letterboxed_with_their_masks_onto_the_same_pixels(tmp_path) -> None:
    sizes = [(16, 32), (64, 48), (16, 32), (64, 48)]
    export_mask_folder(*squares(sizes, noise=1), NAMES, tmp_path)
    options = DataOptions()
    source = as_source(str(tmp_path), options)
    assert options.resize == (64, 64) and source.images.shape == (4, 1, 64, 64)
    assert source.letterboxes[:, 0].tolist() == [2.0, 1.0, 2.0, 1.0]
    scales = source.letterboxes[:, 0].tolist()
    for image, mask, (h, w), scale in zip(source.images, source.targets.values, sizes, scales):
        top, left, height, width = letterbox_region((h, w), (64, 64))
        assert (height, width) == (round(h * scale), round(w * scale))
        inside = mask[top:top + height, left:left + width]
        assert bool((inside != 255).all()) and int((mask == 255).sum()) == 64 * 64 - height * width
        assert torch.equal(painted(image[:, :height, :width]), inside > 0)  # the squares land on the same pixels
    resized = as_source(str(tmp_path), DataOptions(resize=(32, 48)))
    assert resized.images.shape[-2:] == (32, 48) and resized.letterboxes[1, 0] == 0.5


def test_arrays_with_resize_are_letterboxed_with_their_masks_too() -> None:
    images, masks = squares([(32, 64)] * 4)
    options = DataOptions(resize=(32, 32))
    source = as_source((torch.stack(images), torch.stack(masks)), options)
    assert source.images.shape == (4, 1, 32, 32) and source.letterboxes[0].tolist() == [0.5, 0, 0, 32, 64]
    assert bool((source.targets.values[:, 16:] == 255).all())
    assert float((painted(source.images[0][:, :16]) == (source.targets.values[0, :16] > 0)).float().mean()) > 0.95
    plain = as_source((torch.stack(images), torch.stack(masks)), DataOptions())
    assert plain.images.shape[-2:] == (32, 64) and plain.letterboxes is None


class MaskDataset(Dataset):
    """(PIL image, ``tv_tensors.Mask``) pairs of several sizes, as torchvision's v2 transforms give them."""

    def __init__(self, sizes, mask_as=tv_tensors.Mask):
        self.images, self.masks = squares(sizes, noise=1)
        self.mask_as = mask_as

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return Image.fromarray(self.images[i][0].numpy()), self.mask_as(self.masks[i])


def test_a_dataset_of_tv_tensor_masks_becomes_a_letterboxed_segmentation_source() -> None:
    sizes = [(16, 32), (64, 48)] * 2
    options = DataOptions()
    source = as_source(MaskDataset(sizes), options)
    assert options.resize == (64, 64) and source.targets.values.shape == (4, 64, 64)
    assert source.targets.values.dtype == torch.int64 and source.letterboxes[:, 0].tolist() == [2.0, 1.0, 2.0, 1.0]
    top, left, height, width = letterbox_region((16, 32), (64, 64))
    assert torch.equal(painted(source.images[0][:, :height, :width]), source.targets.values[0, :height, :width] > 0)
    assert bool((source.targets.values[0, height:] == 255).all())
    params = inspect_data(source, DataOptions())
    assert params.task == "segmentation" and params.num_classes == 3
    assert params.objects["images_per_class"] == [4, 4, 2]  # grey squares on every other image
    # Palette PIL masks and plain arrays work alike; one size stays as it is.
    pil = as_source(MaskDataset([(24, 32)] * 3, lambda m: Image.fromarray(m.numpy().astype(np.uint8), mode="P")),
                    DataOptions())
    assert pil.targets.values.shape == (3, 24, 32) and pil.letterboxes is None


def test_bad_dataset_masks_name_the_sample() -> None:
    dataset = MaskDataset([(16, 32)] * 3)
    dataset.masks[2] = dataset.masks[2][:, :16]
    with pytest.raises(DataError, match=r"sample 2: the mask is 16x16 but its image 32x16"):
        as_source(dataset, DataOptions())
    floats = MaskDataset([(16, 32)] * 3, lambda m: m.float() / 255)
    with pytest.raises(DataError, match=r"sample 0: the mask is float32; .*ToTensor scales a PIL mask"):
        as_source(floats, DataOptions())
    rgb = MaskDataset([(16, 32)] * 2, lambda m: Image.fromarray(np.zeros((16, 32, 3), np.uint8)))
    with pytest.raises(DataError, match=r"sample 0: the mask is an RGB image; .*map its colours to indices"):
        as_source(rgb, DataOptions())


# Inspection and class alignment.

def test_images_per_class_counts_each_image_once_per_class() -> None:
    masks = torch.tensor([[[0, 0], [1, 255]], [[0, 2], [2, 2]], [[255, 255], [255, 255]]])
    assert images_per_class(masks, 3) == [2, 1, 1]


def test_masks_of_another_data_set_are_renumbered_to_the_training_classes_by_name(tmp_path) -> None:
    path = coco_scene(tmp_path)
    data = json.loads(path.read_text())
    data["categories"] = [{"id": 7, "name": "cat"}]  # the dogs' file lacks its category: cat becomes class 1
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] == 7]
    (tmp_path / "cats.json").write_text(json.dumps(data))
    options = DataOptions(task="segmentation", resize=(40, 40))
    cats = as_source(str(tmp_path / "cats.json"), options)
    assert cats.class_names == ["background", "cat"] and sorted(cats.targets.values.unique().tolist()) == [0, 1, 255]
    align_classes(cats, ["background", "dog", "cat"])
    assert cats.class_names == ["background", "dog", "cat"]
    assert sorted(cats.targets.values.unique().tolist()) == [0, 2, 255]


# Predictions at each image's own size.

class Brightness(nn.Module):
    """Two classes by brightness: the logit of class 1 grows with the pixel (linear, so resizing
    its logits is resizing the image)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), 20 * (x - 0.5)], dim=1)


def test_predictions_come_back_at_each_images_original_size(tmp_path) -> None:
    plan = Plan(data=DataParams(task="segmentation", num_classes=2, channels=1, height=32, width=32, mean=[0.0],
                                std=[1.0], class_names=["dark", "bright"]), monitor="miou")
    run = Run(Brightness(), plan)
    sizes = [(8, 16), (64, 48), (20, 30)]
    paths, truths = [], []
    for i, (h, w) in enumerate(sizes):
        image = np.zeros((h, w), np.uint8)
        image[h // 4:h // 2, w // 4:3 * w // 4] = 255
        paths.append(save(image, tmp_path / f"{i}.png"))
        truths.append(torch.from_numpy(image > 0).long())
    found = run.predict([str(p) for p in paths])
    assert isinstance(found.labels, list) and [tuple(m.shape) for m in found.labels] == sizes
    assert [tuple(s.shape) for s in found.scores] == sizes and len(found) == 3
    assert torch.equal(found.labels[0], truths[0])  # scaled 2x and back: exact
    for labels, truth in zip(found.labels[1:], truths[1:]):
        assert float((labels == truth).float().mean()) >= 0.97
    assert [image.size for image in found.to_images()] == [(w, h) for h, w in sizes]
    same = run.predict(np.stack([np.asarray(Image.open(paths[0]))] * 2))
    assert isinstance(same.labels, torch.Tensor) and same.labels.shape == (2, 8, 16)


def test_fit_reads_a_mask_folder_and_predicts_on_its_files(tmp_path) -> None:
    sizes = [(24, 32), (32, 24)] * 8
    export_mask_folder(*squares(sizes), NAMES, tmp_path / "data")
    run = visiondojo.fit("small-unet", str(tmp_path / "data"), out=tmp_path / "run", epochs=1, batch_size=8,
                         pin={"regularization.augment": []}, model_kwargs={"width": 8, "depth": 2}, progress=False)
    data = run.plan.data
    assert data.task == "segmentation" and data.class_names == NAMES and data.resize == [32, 32]
    assert data.objects["file_format"] == "mask folder" and len(data.objects["images_per_class"]) == 3
    found = run.predict([str(tmp_path / "data" / "images" / f"00000{i}.png") for i in range(2)])
    assert [tuple(m.shape) for m in found.labels] == sizes[:2]


# Bad files, each named.

def write_png16_rgb(path: Path, height: int, width: int) -> None:
    """A 16-bit RGB PNG (PIL would read it as 8 bits without a word)."""
    raw = b"".join(b"\x00" + np.full((width, 3), 300, dtype=">u2").tobytes() for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("spoil, message", [
    (lambda m, i: save(np.zeros((10, 10), np.uint8), m), r"masks/img1\.png: the mask is 10x10 pixels but its image "
                                                         r".*img1\.png is 32x24; give the mask its image's size"),
    (lambda m, i: m.unlink(), r"images/img1\.png: has no mask \(looked for .*masks/img1\.png\)"),
    (lambda m, i: i.unlink(), r"masks/img1\.png: is a mask without an image"),
    (lambda m, i: save(np.full((24, 32), 7, np.uint8), m), r"masks/img1\.png: holds class 7 \(768 pixels\), "
                                                           r"outside 0\.\.2 \(3 classes: .*classes\.txt\)"),
    (lambda m, i: save(np.zeros((24, 32), np.float32), m.with_suffix(".tif")) and m.unlink(),
     r"masks/img1\.tif: holds floating-point pixels \(mode F\), not class indices"),
    (lambda m, i: write_png16_rgb(m, 24, 32), r"masks/img1\.png: is a 16-bit RGB PNG"),
    (lambda m, i: m.write_bytes(b"not a png"), r"masks/img1\.png: cannot be read as an image"),
    (lambda m, i: i.write_bytes(b"not a png"), r"images/img1\.png: cannot be read as an image"),
    (lambda m, i: save(np.zeros((24, 32), np.uint8), m.with_suffix(".jpg")) and m.unlink(),
     r"masks/img1\.jpg: is a JPEG: its lossy compression"),
])
def test_bad_masks_and_images_name_the_file_or_are_skipped(tmp_path, spoil, message) -> None:
    index_folder(tmp_path, SIZES)
    spoil(tmp_path / "masks" / "img1.png", tmp_path / "images" / "img1.png")
    with pytest.raises(DataError, match=message + ".*set strict: false to skip such images"):
        as_source(str(tmp_path), DataOptions())
    read = read_mask_files(tmp_path, file_format="masks", strict=False)
    assert len(read.files) == 3 and len(read.reading.skipped_images) == 1
    assert all("img1" not in str(f) for f in read.files)


def test_an_rgb_colour_outside_the_palette_and_black_and_white_masks_are_named(tmp_path) -> None:
    images, masks = squares(SIZES)
    for i, (image, mask) in enumerate(zip(images, masks)):
        save(image[0].numpy(), tmp_path / "images" / f"{i}.png")
        save(np.repeat((mask.numpy() * 100).astype(np.uint8)[..., None], 3, axis=2), tmp_path / "masks" / f"{i}.png")
    (tmp_path / "classes.txt").write_text("background 0 0 0\nbright 100 100 100\n")
    with pytest.raises(DataError, match=r"masks/1\.png: holds the colour \[200, 200, 200\] \(first at x=\d+, y=\d+; "
                                        r"\d+ such pixels\), which is no class's colour"):
        read_mask_files(tmp_path, file_format="masks")
    (tmp_path / "classes.txt").unlink()  # grey RGB without a palette: the grey values are the indices
    assert torch.equal(read_mask_files(tmp_path, file_format="masks").masks[:, :24], torch.stack(masks) * 100)
    for i, mask in enumerate(masks):  # white foreground on black: 255 would mean "ignored"
        save((mask.numpy() > 0).astype(np.uint8) * 255, tmp_path / "masks" / f"{i}.png")
    with pytest.raises(DataError, match=r"every mask holds only 0 and 255; .*save it as class 1 \(mask // 255\)"):
        read_mask_files(tmp_path, file_format="masks")


def test_mask_values_are_checked_against_the_classes_the_user_names(tmp_path) -> None:
    index_folder(tmp_path, SIZES, names=False)
    with pytest.raises(DataError, match=r"masks/img1\.png: holds class 2 \(\d+ pixels\), outside 0\.\.1 "
                                        r"\(2 classes: the classes given\)"):
        as_source(str(tmp_path), DataOptions(class_names=["background", "bright"]))
    source = as_source(str(tmp_path), DataOptions())
    assert source.class_names is None and inspect_data(source, DataOptions()).class_names == ["0", "1", "2"]


def test_shared_subfolders_other_than_splits_pair_by_path_and_hidden_folders_are_left_out(tmp_path) -> None:
    """``images/city_a/x.png`` pairs with ``masks/city_a/x.png``: a city is no split; a notebook's
    checkpoint folder is neither data nor a split."""
    index_folder(tmp_path / "a", SIZES[:2], split="city_a")
    for folder in ("images", "masks"):  # one more city, and a checkpoint copy in images/ only
        (tmp_path / "a" / folder / "city_b").mkdir()
        for name in ("img0.png", "img1.png"):
            (tmp_path / "a" / folder / "city_b" / name).write_bytes((tmp_path / "a" / folder / "city_a" / name).read_bytes())
    save(np.zeros((24, 32), np.uint8), tmp_path / "a" / "images" / ".ipynb_checkpoints" / "img0-checkpoint.png")
    source = as_source(str(tmp_path / "a"), DataOptions())
    assert len(source) == 4 and source.origin == str(tmp_path / "a")


def test_array_and_dataset_masks_set_the_task_for_the_data_read_after_them() -> None:
    images, masks = squares(SIZES)
    options = DataOptions()
    as_source((torch.stack(images), torch.stack(masks)), options)
    assert options.task == "segmentation"  # a COCO file or VOC folder given as val is then read as masks


def test_more_classes_than_a_mask_holds_are_refused_by_the_reader(tmp_path) -> None:
    root = index_folder(tmp_path, SIZES[:1], names=False)
    save(np.full((24, 32), 300, np.uint16), root / "masks" / "img0.png")  # a 16-bit mask: class 300
    (root / "classes.txt").write_text("".join(f"c{k}\n" for k in range(300)))
    with pytest.raises(DataError, match="at most 255 classes fit a mask"):
        as_source(str(root), DataOptions())
