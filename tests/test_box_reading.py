"""Reading per-image box annotations: formats, normalized coordinates, clipping and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from visiondojo.data.boxes import read_boxes
from visiondojo.errors import DataError

SIZES = [(100, 200), (100, 200), (100, 200)]
XYXY = [[10.0, 20.0, 50.0, 60.0], [0.0, 0.0, 200.0, 100.0]]


def annotations(boxes_per_image, labels_per_image):
    return [{"boxes": b, "labels": l} for b, l in zip(boxes_per_image, labels_per_image)]


def test_every_format_reads_to_the_same_pixels() -> None:
    xyxy = torch.tensor(XYXY)
    xywh = torch.cat([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], dim=1)
    cxcywh = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], dim=1)
    for fmt, boxes in (("xyxy", xyxy), ("xywh", xywh), ("cxcywh", cxcywh)):
        targets, reading = read_boxes(annotations([boxes, [], boxes.numpy()], [[1, 2], [], [0, 0]]), SIZES, "data",
                                      box_format=fmt)
        assert reading.box_format == fmt and reading.format_from == "box_format" and not reading.normalized
        assert targets.counts.tolist() == [2, 0, 2]
        torch.testing.assert_close(targets.fields["boxes"][:2], xyxy)
        assert targets.fields["labels"].tolist() == [1, 2, 0, 0]


def test_normalized_coordinates_and_bounding_boxes_say_what_they_are() -> None:
    normalized = torch.tensor(XYXY) / torch.tensor([200.0, 100.0, 200.0, 100.0])
    targets, reading = read_boxes(annotations([normalized], [[3, 4]]), SIZES[:1], "data")
    assert reading.normalized and reading.format_from == "the default (xyxy)"
    torch.testing.assert_close(targets.fields["boxes"], torch.tensor(XYXY))
    declared = tv_tensors.BoundingBoxes(torch.tensor([[30.0, 40.0, 40.0, 40.0]]), format="CXCYWH", canvas_size=(100, 200))
    targets, reading = read_boxes(annotations([declared], [[0]]), SIZES[:1], "data", box_format="xyxy")
    assert reading.box_format == "cxcywh" and reading.format_from == "the data (BoundingBoxes)"
    torch.testing.assert_close(targets.fields["boxes"], torch.tensor([[10.0, 20.0, 50.0, 60.0]]))


def test_boxes_just_outside_are_clipped_and_counted() -> None:
    targets, reading = read_boxes(annotations([[[-2.0, 0.0, 203.0, 50.0]]], [[0]]), SIZES[:1], "data")
    assert reading.clipped == 1
    assert targets.fields["boxes"].tolist() == [[0.0, 0.0, 200.0, 50.0]]


@pytest.mark.parametrize("box, label, message", [
    ([10.0, 10.0, 5.0, 30.0], 0, "x2 <= x1"),
    ([float("nan"), 10.0, 20.0, 30.0], 0, "NaN"),
    ([10.0, 10.0, 290.0, 30.0], 0, "beyond the 200x100 image"),
    ([10.0, 10.0, 20.0, 30.0], 7, "label 7 is not a class"),
    ([10.0, 10.0, 20.0, 30.0], -1, "label -1 is not a class"),
])
def test_bad_objects_are_named_or_dropped(box, label, message) -> None:
    good = [1.0, 1.0, 9.0, 9.0]
    data = annotations([[good], [good, box]], [[0], [1, label]])
    with pytest.raises(DataError, match=rf"train: image 1, object 1 .*{message}.*strict: false"):
        read_boxes(data, SIZES[:2], "train", num_classes=3)
    targets, reading = read_boxes(data, SIZES[:2], "train", num_classes=3, strict=False)
    assert targets.counts.tolist() == [1, 1] and len(reading.dropped) == 1 and message in reading.dropped[0]


def test_malformed_annotations_get_clear_errors() -> None:
    with pytest.raises(DataError, match="2 images but 1 annotations"):
        read_boxes(annotations([[XYXY[0]]], [[0]]), SIZES[:2], "data")
    with pytest.raises(DataError, match="image 0 has 2 boxes but 1 labels"):
        read_boxes(annotations([XYXY], [[0]]), SIZES[:1], "data")
    with pytest.raises(DataError, match="annotation 0 is a list"):
        read_boxes([[1, 2, 3, 4]], SIZES[:1], "data")
    with pytest.raises(DataError, match="box_format: 'yolo'"):
        read_boxes(annotations([XYXY], [[0, 1]]), SIZES[:1], "data", box_format="yolo")
    with pytest.raises(DataError, match="fractional label"):
        read_boxes(annotations([[XYXY[0]]], [np.array([0.5])]), SIZES[:1], "data")


def test_images_with_box_annotations_become_a_source_with_ragged_targets() -> None:
    from visiondojo.data.sources import DataOptions, as_source
    from visiondojo.data.targets import RaggedTargets

    images = np.zeros((3, 100, 200), dtype=np.uint8)
    data = (images, annotations([XYXY, [], [XYXY[0]]], [[0, 1], [], [2]]))
    source = as_source(data, DataOptions(), role="train")
    assert isinstance(source.targets, RaggedTargets) and source.targets.counts.tolist() == [2, 0, 1]
    resized = as_source(data, DataOptions(resize=(50, 50)), role="train")
    assert resized.images.shape[-2:] == (50, 50)
    # Letterboxed, aspect kept: 100 x 200 scales by 1/4 to 25 x 50 at the top of the 50 x 50 canvas.
    torch.testing.assert_close(resized.targets.fields["boxes"][0], torch.tensor([2.5, 5.0, 12.5, 15.0]))
    assert resized.letterboxes[0].tolist() == [0.25, 0.0, 0.0, 100.0, 200.0]
    with pytest.raises(DataError, match="object 0 .*x2 <= x1"):
        as_source((images[:1], annotations([[[30.0, 0.0, 10.0, 5.0]]], [[0]])), DataOptions(box_format="xyxy"),
                  role="train")


def test_box_data_with_a_module_that_is_no_detector_gets_a_plain_error(tmp_path) -> None:
    import visiondojo
    from visiondojo.errors import ModelError

    images = np.zeros((8, 32, 32), dtype=np.uint8)
    data = (images, annotations([[[1.0, 1.0, 9.0, 9.0]]] * 8, [[0]] * 8))
    with pytest.raises(ModelError, match=r"must follow torchvision's protocol"):
        visiondojo.fit(torch.nn.Flatten(), data, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_box_inspection_counts_sizes_and_warns_about_tiny_boxes() -> None:
    from visiondojo.data.inspect import inspect_boxes

    boxes = [[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 40.0, 40.0], [0.0, 0.0, 100.0, 100.0]], [], [[5.0, 5.0, 7.0, 30.0]]]
    targets, _ = read_boxes(annotations(boxes, [[0, 1, 1], [], [1]]), [(128, 128)] * 3, "data")
    with pytest.warns(UserWarning, match="1 of 4 boxes have a side under 4 pixels at 128x128"):
        stats = inspect_boxes(targets, (128, 128), 2)
    assert (stats.images, stats.objects, stats.objects_per_image_max, stats.images_without_objects) == (3, 4, 3, 1)
    assert stats.class_counts == [1, 3] and stats.sizes == {"small": 2, "medium": 1, "large": 1} and stats.tiny == 1
