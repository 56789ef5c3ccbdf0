"""Detection through ``fit``: a tiny detector learns easy scenes, the run folder says what it did,
resume is exact, and the torchvision detectors build offline for the data."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import visiondojo
from visiondojo.engine import loop
from visiondojo.errors import DataError, ModelError, VisionDojoError
from visiondojo.models import build_for
from visiondojo.plan import DataParams
from visiondojo.tasks import Detections

TINY = {"width": 8, "fpn_channels": 32, "head_convs": 1}
PINS = dict(epochs=8, batch_size=16, lr=3e-3, model_kwargs=TINY, pin={"regularization.augment": []}, progress=False)


def rectangle_scenes(n: int, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """1-3 filled rectangles per image on a noisy dark background: class 0 bright, class 1 grey."""
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(n, 1, size, size, generator=g) * 40).to(torch.uint8)
    targets = []
    for i in range(n):
        boxes, labels = [], []
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            w, h = torch.randint(12, 29, (2,), generator=g).tolist()
            x = int(torch.randint(0, size - w, (1,), generator=g))
            y = int(torch.randint(0, size - h, (1,), generator=g))
            label = int(torch.randint(0, 2, (1,), generator=g))
            images[i, 0, y:y + h, x:x + w] = 230 if label == 0 else 120
            boxes.append([x, y, x + w, y + h])
            labels.append(label)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
    return images, targets


@pytest.fixture(scope="module")
def scenes():
    return rectangle_scenes(240, seed=0), rectangle_scenes(60, seed=1)


@pytest.fixture(scope="module")
def full_run(scenes, tmp_path_factory):
    train, test = scenes
    return visiondojo.fit("small-fcos", train, test_data=test, out=tmp_path_factory.mktemp("det") / "run", **PINS)


def test_a_tiny_detector_learns_easy_scenes(full_run, scenes):
    run = full_run
    assert run.plan.data.task == "detection" and run.plan.monitor == "map"
    assert run.metrics["test"]["map_50"] >= 0.6, run.metrics["test"]
    assert len(run.metrics["test"]["map_per_class"]) == 2
    curves = run.metrics["test"]["pr_50_per_class"]
    assert len(curves) == 2 and len(curves[0]) == 101 and curves[0][0] > 0.8  # precise at low recall
    # Each loss term of the detector is logged per epoch, beside their sum.
    row = run.history[-1]
    terms = row["train_classification"] + row["train_bbox_regression"] + row["train_bbox_ctrness"]
    assert terms == pytest.approx(row["train_loss"], rel=1e-3)
    objects = run.plan.data.objects
    assert 0 < objects["objects"] < sum(len(t["labels"]) for t in scenes[0][1])  # validation held some back
    assert objects["per_image_max"] == 3 and objects["images_without_objects"] == 0
    assert objects["read_as"].startswith("xyxy") and objects["sizes"]["small"] == objects["objects"]
    report = (run.dir / "report.html").read_text()
    assert "object detection" in report and "Per-class average precision" in report and "missed" in report
    assert "Precision-recall curves" in report


def test_predictions_are_boxes_in_pixels_where_the_objects_are(full_run):
    images, targets = rectangle_scenes(8, seed=5)
    found = full_run.predict(images)
    assert isinstance(found, Detections) and len(found.boxes) == 8
    hits = 0
    for boxes, scores, labels, truth in zip(found.boxes, found.scores, found.labels, targets):
        best = scores.argmax() if len(scores) else None
        if best is None:
            continue
        iou = visiondojo.tasks.detection.box_iou(boxes[best:best + 1], truth["boxes"]).max()
        hits += int(iou >= 0.5)
    assert hits >= 6
    assert found.names()[0] and set(found.names()[0]) <= {"0", "1"}


def test_predictions_on_larger_images_of_another_shape_come_back_in_their_pixels(full_run):
    """A 64x64 scene upscaled to 96 x 128: letterboxed to the training size for the detector, and the
    boxes mapped back onto the 96 x 128 image."""
    images, targets = rectangle_scenes(8, seed=6)
    big = torch.nn.functional.interpolate(images.float(), size=(96, 128), mode="nearest").to(torch.uint8)
    found = full_run.predict(big)
    scale = torch.tensor([2.0, 1.5, 2.0, 1.5])
    hits = 0
    for boxes, scores, truth in zip(found.boxes, found.scores, targets):
        if len(scores):
            best = boxes[scores.argmax()].unsqueeze(0)
            hits += int(visiondojo.tasks.detection.box_iou(best, truth["boxes"] * scale).max() >= 0.5)
    assert hits >= 6
    assert all(float(b[:, 2].max()) <= 128 and float(b[:, 3].max()) <= 96 for b in found.boxes if len(b))


class Interrupted(Exception):
    pass


def test_resume_of_a_detector_is_exact(scenes, full_run, tmp_path, monkeypatch):
    train, test = scenes
    out = tmp_path / "run"
    save_last = loop._save_last

    def save_then_crash(directory, model, optimizer, scheduler, state, *rest):
        save_last(directory, model, optimizer, scheduler, state, *rest)
        if state.epoch == 3:
            raise Interrupted

    monkeypatch.setattr(loop, "_save_last", save_then_crash)
    with pytest.raises(Interrupted):
        visiondojo.fit("small-fcos", train, test_data=test, out=out, **PINS)
    monkeypatch.undo()
    resumed = visiondojo.train(None, train, test_data=test, plan=out / "plan.yaml", out=out, resume=True,
                               progress=False)
    final, reference = load_file(str(out / "model.safetensors")), load_file(str(full_run.dir / "model.safetensors"))
    assert final.keys() == reference.keys()
    assert all(torch.equal(final[k], reference[k]) for k in final)
    assert resumed.metrics == full_run.metrics


def test_a_finished_detection_run_loads_and_evaluates(full_run, scenes):
    loaded = visiondojo.load(full_run.dir)
    again = visiondojo.evaluate(loaded, scenes[1])
    assert again["map"] == pytest.approx(full_run.metrics["test"]["map"], abs=1e-6)


@pytest.mark.parametrize("name", ["fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_mobilenet_v3_large_fpn",
                                  "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn",
                                  "ssdlite320_mobilenet_v3_large", "ssd300_vgg16"])
def test_torchvision_detectors_build_offline_for_the_data(name):
    data = DataParams(task="detection", num_classes=3, channels=1, height=96, width=128)
    model = build_for(f"torchvision:{name}", data)  # no weights: nothing is downloaded
    assert model.transform.image_mean == [0.0] and model.transform.image_std == [1.0]
    if not name.startswith("ssd"):  # SSDs keep their design size; the others train at the data's
        assert (model.transform.min_size, model.transform.max_size) == ((96,), 128)
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 1
    if name.startswith("fasterrcnn"):
        assert model.roi_heads.box_predictor.cls_score.out_features == 4  # 3 classes + background
        assert not any(type(m).__name__ == "FrozenBatchNorm2d" for m in model.modules())
    model.eval()
    with torch.no_grad():
        out = model([torch.zeros(1, 96, 128)])
    assert {"boxes", "scores", "labels"} <= set(out[0])


def test_detection_refuses_what_it_cannot_train(scenes):
    train, _ = scenes
    with pytest.raises(ModelError, match="is a classifier"):
        visiondojo.find_params("fmnist-resnet", train)
    labels = (torch.zeros(8, 1, 28, 28, dtype=torch.uint8), torch.arange(8) % 2)
    with pytest.raises(ModelError, match="is a detector"):
        visiondojo.find_params("small-fcos", labels)
    with pytest.raises(VisionDojoError, match="not available for detection"):
        visiondojo.find_params("small-fcos", train, unlabeled=train[0], model_kwargs=TINY)
    images, targets = train
    bad = [dict(t) for t in targets]
    bad[5] = {"boxes": bad[5]["boxes"], "labels": torch.full_like(bad[5]["labels"], 7)}
    with pytest.raises(DataError, match=r"image 5, object 0 .*label 7 is not a class \(0..1\)"):
        visiondojo.find_params("small-fcos", (images, bad), class_names=["bright", "grey"], model_kwargs=TINY)


def test_the_cli_writes_coco_results_and_prints_the_coco_table(full_run, tmp_path, capsys):
    import json

    from PIL import Image

    from visiondojo.cli import main

    images, _ = rectangle_scenes(3, seed=9)
    paths = []
    for i, image in enumerate(images):
        paths.append(str(tmp_path / f"scene{i}.png"))
        Image.fromarray(image[0].numpy()).save(paths[-1])
    out = tmp_path / "preds.json"
    assert main(["predict", str(full_run.dir), *paths, "--out", str(out)]) == 0
    assert "detections in 3 images" in capsys.readouterr().out
    results = json.loads(out.read_text())
    assert results and {"image_id", "category_id", "bbox", "score"} <= set(results[0])
    assert {r["image_id"] for r in results} <= set(paths)
    assert all(r["bbox"][2] > 0 and r["bbox"][3] > 0 and 0 <= r["bbox"][0] <= 64 for r in results)
    assert main(["predict", str(full_run.dir), paths[0], "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "path,class,score,x1,y1,x2,y2"


def test_the_memory_probe_reads_the_densest_images(scenes):
    from visiondojo.data.sources import InMemory
    from visiondojo.data.boxes import read_boxes
    from visiondojo.optimize.memory import densest

    images, targets = scenes[0]
    ragged, _ = read_boxes(targets, [(64, 64)] * len(images), "scenes")
    source = InMemory(images, ragged, None, "scenes")
    dense = densest(source, 10)
    assert len(dense) == 10 and bool((dense.targets.counts == 3).all())
    labeled = InMemory(images, torch.zeros(len(images), dtype=torch.long), None, "labels")
    assert densest(labeled, 10) is labeled  # class labels: every image is alike


def test_a_detector_trains_from_coco_files_and_the_cli_evaluates_it(scenes, tmp_path, capsys):
    """COCO JSON in (images of two sizes, letterboxed to a planned size), COCO table out."""
    from visiondojo.cli import main
    from visiondojo.data.formats import export_coco

    (images, targets), (test_images, test_targets) = scenes
    wide = torch.nn.functional.interpolate(images[:40].float(), size=(48, 64), mode="nearest").to(torch.uint8)
    squeezed = [{"boxes": t["boxes"] * torch.tensor([1.0, 0.75, 1.0, 0.75]), "labels": t["labels"]}
                for t in targets[:40]]
    pictures = list(images[40:]) + list(wide)
    train_json = export_coco(pictures, targets[40:] + squeezed, ["bright", "grey"], tmp_path / "coco", split="train")
    test_json = export_coco(test_images, test_targets, ["bright", "grey"], tmp_path / "coco", split="test")
    run = visiondojo.fit("small-fcos", str(train_json), test_data=str(test_json), out=tmp_path / "run",
                         **{**PINS, "epochs": 4})
    assert run.plan.data.task == "detection" and run.plan.data.class_names == ["bright", "grey"]
    assert (run.plan.data.height, run.plan.data.width) == (64, 64) and run.plan.data.resize == [64, 64]
    assert run.plan.data.sources["train"] == str(train_json)
    objects = run.plan.data.objects
    assert objects["file_format"] == "COCO" and objects["size_from"].startswith("planned: median longer side 64")
    assert run.metrics["test"]["map_50"] > 0.3
    assert main(["evaluate", str(run.dir), "--data", str(test_json)]) == 0
    table = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ]" in table


def test_a_dataset_of_images_and_box_dicts_of_two_sizes_is_letterboxed_with_its_boxes():
    from torch.utils.data import Dataset

    from visiondojo.data.sources import DataOptions, InMemory, as_source

    class Boxes(Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            side = 32 if i < 2 else 64
            image = torch.zeros(1, side, side, dtype=torch.uint8)
            image[0, 4:12, 6:20] = 255
            return image, {"boxes": torch.tensor([[6.0, 4.0, 20.0, 12.0]]), "labels": torch.tensor([i % 2])}

    options = DataOptions()
    source = as_source(Boxes(), options, role="train_data")
    assert isinstance(source, InMemory) and tuple(source.images.shape) == (5, 1, 64, 64)
    assert options.resize == (64, 64)  # planned from the data: validation and test data follow it
    for i, boxes in enumerate(source.targets.gather(slice(None)).per_image()):
        rows, cols = (source.images[i, 0] > 127).nonzero(as_tuple=True)
        drawn = torch.tensor([[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]], dtype=torch.float32)
        assert torch.allclose(boxes["boxes"], drawn, atol=1.0), (i, boxes["boxes"], drawn)  # resampling's edge
    assert source.letterboxes[0].tolist() == [2.0, 0.0, 0.0, 32.0, 32.0]
