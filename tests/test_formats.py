"""Detection data on disk: COCO, VOC and YOLO written and read back, letterboxing, and bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from visiondojo.data.formats import (export_coco, export_voc, export_yolo, letterbox, locate, read_detection_files,
                                     unletterbox_boxes)
from visiondojo.data.sources import DataOptions, as_source
from visiondojo.errors import DataError

NAMES = ["disc", "bar", "square"]
SIZES = [(48, 64)] * 6
MIXED = [(40, 90), (120, 50), (64, 64), (33, 77), (96, 72)]


def rectangles(sizes: list[tuple[int, int]], seed: int = 0, channels: int = 1,
               fractional: bool = True) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Dark noisy images of ``sizes`` with 0-3 bright filled rectangles each, and their boxes.

    Boxes lie on whole pixels, plus a quarter pixel on the left and top when ``fractional``
    (annotations are not always whole, and the readers must keep the fraction).
    """
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for i, (h, w) in enumerate(sizes):
        image = torch.randint(0, 40, (channels, h, w), generator=g).to(torch.uint8)
        boxes, labels = [], []
        for _ in range(i % 4):
            bw, bh = int(torch.randint(6, w // 2, (1,), generator=g)), int(torch.randint(6, h // 2, (1,), generator=g))
            x, y = int(torch.randint(0, w - bw, (1,), generator=g)), int(torch.randint(0, h - bh, (1,), generator=g))
            image[:, y:y + bh, x:x + bw] = 255
            shift = 0.25 if fractional else 0.0
            boxes.append([x + shift, y + shift, x + bw, y + bh])
            labels.append(int(torch.randint(0, len(NAMES), (1,), generator=g)))
        images.append(image)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "labels": torch.tensor(labels, dtype=torch.int64)})
    return images, targets


def assert_same_objects(source, targets: list[dict[str, torch.Tensor]], atol: float = 1e-4) -> None:
    assert source.targets.counts.tolist() == [len(t["labels"]) for t in targets]
    torch.testing.assert_close(source.targets.fields["boxes"], torch.cat([t["boxes"] for t in targets]),
                               atol=atol, rtol=0)
    assert torch.equal(source.targets.fields["labels"], torch.cat([t["labels"] for t in targets]))


@pytest.fixture(scope="module")
def data() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    return rectangles(SIZES)


def test_coco_round_trip_reads_the_boxes_labels_and_names(tmp_path, data) -> None:
    images, targets = data
    path = export_coco(images, targets, NAMES, tmp_path)
    options = DataOptions()
    source = as_source(str(path), options)
    assert_same_objects(source, targets)
    assert source.class_names == NAMES and source.images.shape == (6, 1, 64, 64)
    assert torch.equal(source.images[0, :, :48], images[0])  # wider than tall: padded at the bottom
    assert bool((source.images[0, :, 48:] == 114).all())
    assert source.reading.file_format == "COCO" and source.reading.box_format == "xywh"
    assert options.resize == (64, 64)  # planned once, so validation and test data are letterboxed alike
    assert source.subset(torch.tensor([2, 1])).letterboxes[:, 3:].tolist() == [[48, 64], [48, 64]]


def test_coco_category_ids_become_contiguous_labels_and_crowds_are_not_trained_on(tmp_path, data) -> None:
    images, targets = data
    crowd = [dict(t, iscrowd=torch.arange(len(t["labels"])) == 0) for t in targets]
    path = export_coco(images, crowd, NAMES, tmp_path)
    content = json.loads(path.read_text())
    for category in content["categories"]:
        category["id"] = category["id"] * 10 + 7  # 17, 27, 37: sparse ids
    for annotation in content["annotations"]:
        annotation["category_id"] = annotation["category_id"] * 10 + 7
    for image in content["images"]:
        image["file_name"] = f"images/{image['file_name']}"  # relative to the JSON's folder this time
    path.write_text(json.dumps(content))
    source = as_source(str(path), DataOptions())
    kept = [{k: v[1:] for k, v in t.items()} for t in targets]
    assert_same_objects(source, kept)
    assert source.reading.ignored == {"iscrowd": sum(1 for t in targets if len(t["labels"]))}


def test_voc_round_trip_with_splits_and_one_based_boxes(tmp_path, data) -> None:
    images, targets = data
    export_voc(images[:4], targets[:4], NAMES, tmp_path, split="train")
    export_voc(images[4:], targets[4:], NAMES, tmp_path, split="val")
    xml = (tmp_path / "Annotations" / "train_000001.xml").read_text()
    x1, y1, x2, y2 = targets[1]["boxes"][0].tolist()
    assert f"<xmin>{x1 + 1:g}</xmin>" in xml and f"<xmax>{x2:g}</xmax>" in xml  # 1-based, inclusive
    assert_same_objects(as_source(str(tmp_path), DataOptions()), targets[:4])  # the default split: train
    val = as_source(f"{tmp_path}:val", DataOptions())
    assert_same_objects(val, targets[4:])
    assert val.class_names == NAMES and val.origin.endswith(":val")
    with pytest.raises(DataError, match=r"no split 'test'.*splits here: train, val"):
        as_source(str(tmp_path), DataOptions(), default_split="test")


def test_voc_difficult_objects_are_dropped_and_names_come_from_all_files(tmp_path, data) -> None:
    images, targets = data
    flagged = [dict(t, difficult=torch.arange(len(t["labels"])) == len(t["labels"]) - 1) for t in targets]
    export_voc(images, flagged, NAMES, tmp_path)
    (tmp_path / "labels.txt").unlink()
    source = as_source(str(tmp_path), DataOptions())
    assert source.reading.ignored == {"difficult": sum(1 for t in targets if len(t["labels"]))}
    used = sorted({NAMES[k] for t in targets for k in t["labels"].tolist()})
    assert source.class_names == used  # the sorted names of every object, difficult ones too
    kept = [{"boxes": t["boxes"][:-1], "labels": t["labels"][:-1]} for t in targets]
    remap = torch.tensor([used.index(n) if n in used else -1 for n in NAMES])
    assert_same_objects(source, [{"boxes": t["boxes"], "labels": remap[t["labels"]]} for t in kept])


def test_yolo_round_trip_with_data_yaml_and_bare_folders(tmp_path, data) -> None:
    images, targets = data
    export_yolo(images[:4], targets[:4], NAMES, tmp_path, split="train")
    export_yolo(images[4:], targets[4:], NAMES, tmp_path, split="val")
    assert "train: images/train" in (tmp_path / "data.yaml").read_text()
    train = as_source(str(tmp_path), DataOptions())
    assert_same_objects(train, targets[:4], atol=1e-3)  # 6 decimals of a fraction
    assert train.class_names == NAMES and train.reading.normalized
    assert_same_objects(as_source(str(tmp_path / "data.yaml") + ":val", DataOptions()), targets[4:], atol=1e-3)
    (tmp_path / "data.yaml").unlink()  # images/ and labels/ alone: names are the class ids
    (tmp_path / "labels" / "val" / "000000.txt").unlink()  # an image without a label file has no objects
    bare = as_source(f"{tmp_path}:val", DataOptions())
    assert_same_objects(bare, targets[4:], atol=1e-3)
    assert bare.class_names == [str(k) for k in range(int(targets[5]["labels"].max()) + 1)]


def test_a_data_set_converts_between_formats_unchanged(tmp_path, data) -> None:
    images, targets = data
    first = read_detection_files(export_coco(images, targets, NAMES, tmp_path / "coco"))
    export_yolo(first.images, first.targets, first.class_names, tmp_path / "yolo")
    second = read_detection_files(tmp_path / "yolo")
    assert torch.equal(first.images, second.images) and second.class_names == NAMES
    torch.testing.assert_close(second.targets.fields["boxes"], first.targets.fields["boxes"], atol=1e-3, rtol=0)
    assert torch.equal(second.targets.fields["labels"], first.targets.fields["labels"])
    assert torch.equal(second.targets.offsets, first.targets.offsets)


def test_images_of_many_sizes_are_letterboxed_with_their_boxes_and_map_back(tmp_path) -> None:
    images, targets = rectangles(MIXED, seed=1, fractional=False)
    read = read_detection_files(export_voc(images, targets, NAMES, tmp_path))
    # Median longer side of 90, 120, 64, 77, 96 is 90: rounded up to a multiple of 32.
    assert read.reading.size == (96, 96) and "median longer side 90" in read.reading.size_from
    assert read.images.shape == (5, 1, 96, 96)
    per_image = read.targets.gather(slice(None)).per_image()
    for i, (objects, original) in enumerate(zip(per_image, targets)):
        scale, pad_x, pad_y, height, width = read.letterboxes[i].tolist()
        assert scale == pytest.approx(96 / max(MIXED[i])) and (height, width) == MIXED[i]
        back = unletterbox_boxes(objects["boxes"], scale, (pad_x, pad_y), (int(height), int(width)))
        torch.testing.assert_close(back, original["boxes"], atol=1e-4, rtol=0)
        for x1, y1, x2, y2 in objects["boxes"].tolist():  # the rectangle is still under its box
            inside = read.images[i, 0, round(y1) + 1:round(y2) - 1, round(x1) + 1:round(x2) - 1]
            assert inside.numel() and int(inside.min()) >= 200
    assert bool((read.images[0, 0, 50:] == 114).all()) and bool((read.images[1, 0, :, 50:] == 114).all())  # padding


def test_letterbox_keeps_the_aspect_and_a_centred_one_maps_back_too() -> None:
    image = torch.zeros(3, 30, 60, dtype=torch.uint8)
    image[:, 10:20, 20:40] = 255
    canvas, scale, pad = letterbox(image, (64, 64), center=True)
    assert canvas.shape == (3, 64, 64) and scale == pytest.approx(64 / 60) and pad == (0.0, 16.0)
    box = torch.tensor([[20.0, 10.0, 40.0, 20.0]]) * scale + torch.tensor([pad[0], pad[1], pad[0], pad[1]])
    x1, y1, x2, y2 = box[0].round().long().tolist()
    assert bool((canvas[:, y1 + 1:y2 - 1, x1 + 1:x2 - 1] == 255).all()) and int(canvas[0, 0, 0]) == 114
    torch.testing.assert_close(unletterbox_boxes(box, scale, pad, (30, 60)), torch.tensor([[20.0, 10.0, 40.0, 20.0]]))
    floats, _, _ = letterbox(image.float() / 255, (32, 80))
    assert floats.shape == (3, 32, 80) and float(floats[0, 0, -1]) == pytest.approx(114 / 255)
    assert unletterbox_boxes(torch.tensor([[-5.0, 0.0, 99.0, 40.0]]), 1.0, (0.0, 0.0), (30, 60)).tolist() == \
        [[0.0, 0.0, 60.0, 30.0]]  # clipped to the original image


def test_resize_sets_the_letterbox_size_and_channels_follow_the_images(tmp_path) -> None:
    grey, targets = rectangles(MIXED[:2], seed=2)
    colour, _ = rectangles(MIXED[:2], seed=2, channels=3)
    path = export_coco([grey[0], colour[1]], targets, NAMES, tmp_path)
    source = as_source(str(path), DataOptions(resize=(40, 80)))
    assert source.images.shape == (2, 3, 40, 80)  # one colour image makes every image RGB
    assert source.letterboxes[:, 0].tolist() == pytest.approx([80 / 90, 40 / 120])


def test_yolo_splits_may_be_lists_of_image_files(tmp_path, data) -> None:
    export_yolo(*data, NAMES, tmp_path)
    (tmp_path / "subset.txt").write_text("images/train/000003.png\n./images/train/000001.png\n")
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images/train\nval: subset.txt\nnames: [disc, bar, square]\n")
    assert_same_objects(as_source(f"{tmp_path}:val", DataOptions()), [data[1][3], data[1][1]], atol=1e-3)
    with pytest.raises(DataError, match=r"data\.yaml: no split 'test'; splits here: train, val"):
        as_source(f"{tmp_path}:test", DataOptions())


def test_fashion_scenes_export_reads_back_as_the_same_scenes(tmp_path) -> None:
    from visiondojo.data.scenes import export_scenes, fashion_scenes

    try:
        made = fashion_scenes("test", 3, size=64)
    except DataError:
        pytest.skip("the Fashion-MNIST files are not installed")
    read = as_source(f"{export_scenes('test', 3, tmp_path, 'voc', size=64)}:test", DataOptions())
    assert torch.equal(read.images, made.images) and read.class_names == made.class_names
    torch.testing.assert_close(read.targets.fields["boxes"], made.targets.fields["boxes"], atol=1e-4, rtol=0)


def coco_file(tmp_path: Path, data, edit) -> Path:
    images, targets = data
    path = export_coco(images, targets, NAMES, tmp_path)
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["annotations"][2].update(image_id=99), r"annotations\.json, annotation 3: its image_id 99 is not in"),
    (lambda c: c["annotations"][2].update(category_id=5), r"annotation 3: its category_id 5 is not in 'categories'"),
    (lambda c: c["annotations"][2].update(bbox=[4, 4, -2, 5]), r"annotation 3 \(box .*\): x2 <= x1"),
    (lambda c: c["annotations"][2].update(bbox=[4, 4, 500, 5]), r"annotation 3 \(box .*class .*beyond the 64x48"),
])
def test_bad_coco_annotations_name_the_file_and_annotation(tmp_path, data, edit, message) -> None:
    path = coco_file(tmp_path, data, edit)
    with pytest.raises(DataError, match=message + ".*strict: false"):
        read_detection_files(path)
    read = read_detection_files(path, strict=False)
    assert len(read.reading.dropped) == 1 and read.targets.counts.sum() == sum(len(t["labels"]) for t in data[1]) - 1


def test_missing_and_resized_coco_images_name_the_file_or_are_skipped(tmp_path, data) -> None:
    path = coco_file(tmp_path, data, lambda c: c["images"][3].update(width=100))
    (tmp_path / "images" / "000001.png").unlink()
    with pytest.raises(DataError, match=r"json, image 2 \(000001\.png\): the image file .* does not exist"):
        read_detection_files(path)
    read = read_detection_files(path, strict=False)
    assert read.images.shape[0] == 4 and len(read.reading.skipped_images) == 2
    assert "say 100x48" in read.reading.skipped_images[1]
    assert read.targets.counts.tolist() == [len(t["labels"]) for i, t in enumerate(data[1]) if i not in (1, 3)]


def test_bad_voc_objects_name_the_xml_file_and_object_index(tmp_path, data) -> None:
    export_voc(*data, NAMES, tmp_path)
    xml = tmp_path / "Annotations" / "000003.xml"
    text = xml.read_text()
    second = text.index("<object>", text.index("<object>") + 1)
    xml.write_text(text[:second] + text[second:].replace("<xmin>", "<xmin>x", 1))
    with pytest.raises(DataError, match=r"000003\.xml, object 1: its bndbox .* four numbers.*strict: false"):
        read_detection_files(tmp_path)
    assert len(read_detection_files(tmp_path, strict=False).reading.dropped) == 1
    xml.write_text(re.sub(r"<name>\w+</name>", "<name>cat</name>", text, count=1))
    with pytest.raises(DataError, match=r"000003\.xml, object 0: its class 'cat' is not one of the 3 class names"):
        read_detection_files(tmp_path)


def test_listed_voc_ids_without_a_file_and_data_beyond_the_memory_limit(tmp_path, data) -> None:
    export_voc(*data, NAMES, tmp_path, split="train")
    listed = tmp_path / "ImageSets" / "Main" / "train.txt"
    listed.write_text(listed.read_text() + "ghost\n")
    with pytest.raises(DataError, match=r"train\.txt, line 7: .*ghost\.xml does not exist"):
        read_detection_files(tmp_path)
    read = read_detection_files(tmp_path, strict=False)
    assert read.images.shape[0] == 6 and "ghost" in read.reading.skipped_images[0]
    with pytest.raises(DataError, match=r"6 images at 1x64x64 take .* GB, more than memory_limit_gb"):
        read_detection_files(tmp_path, memory_limit_gb=1e-6, strict=False)


@pytest.mark.parametrize("line, message", [
    ("1 0.5 0.5 0.2", r"has 4 fields"),
    ("1 0.5 half 0.2 0.2", r"not a number"),
    ("3 0.5 0.5 0.2 0.2", r"class 3 is not a class id 0\.\.2"),
    ("0 0.5 0.5 -0.2 0.2", r"\(box .*class 'disc'\): x2 <= x1"),
])
def test_bad_yolo_lines_name_the_file_and_line(tmp_path, data, line, message) -> None:
    export_yolo(*data, NAMES, tmp_path)
    labels = tmp_path / "labels" / "train" / "000002.txt"
    labels.write_text(labels.read_text() + line + "\n")
    with pytest.raises(DataError, match=r"000002\.txt, line 3.*" + message + ".*strict: false"):
        read_detection_files(tmp_path)
    read = read_detection_files(tmp_path, strict=False)
    assert len(read.reading.dropped) == 1 and read.targets.counts[2] == 2


def test_paths_that_are_no_detection_data_keep_their_old_meaning(tmp_path, data) -> None:
    path = export_coco(*data, NAMES, tmp_path / "coco")
    assert locate(str(path)) == (path, "coco", None) and locate(str(tmp_path / "elsewhere")) is None
    (tmp_path / "classes" / "a").mkdir(parents=True)
    assert locate(str(tmp_path / "classes")) is None and locate(f"{tmp_path / 'classes'}:train") is None
    with pytest.raises(DataError, match="a COCO file holds one split"):
        as_source(f"{path}:val", DataOptions())
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataError, match=r"bad\.json: not a COCO annotation file"):
        as_source(str(tmp_path / "bad.json"), DataOptions())


def test_find_params_reads_a_coco_file_as_detection(tmp_path) -> None:
    import visiondojo

    images, targets = rectangles([(48, 64)] * 16, seed=3)
    path = export_coco(images, targets, NAMES, tmp_path)
    plan = visiondojo.find_params("small-fcos", str(path), model_kwargs={"width": 8, "fpn_channels": 32,
                                                                        "head_convs": 1}, budget=5)
    assert plan.data.task == "detection" and plan.data.num_classes == 3 and plan.data.class_names == NAMES
    assert plan.data.resize == [64, 64] and plan.data.objects["read_as"].startswith("xywh from the COCO")
