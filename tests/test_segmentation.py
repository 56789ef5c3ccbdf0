"""Semantic segmentation through ``fit``: masks in from arrays, a small U-Net that learns easy scenes,
the ignore index kept out of loss and metrics, masks moving with their images, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import visiondojo
from visiondojo.augment import Augmenter
from visiondojo.cli import main
from visiondojo.errors import DataError, ModelError
from visiondojo.models import build_for
from visiondojo.plan import AugmentOp, DataParams
from visiondojo.tasks import Masks, SegmentationTask

TINY = {"width": 8, "depth": 2}


def blob_scenes(n: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """1-2 filled rectangles per image on a noisy dark background: class 1 bright, class 2 grey, 0 background."""
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(n, 1, size, size, generator=g) * 40).to(torch.uint8)
    masks = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        for _ in range(int(torch.randint(1, 3, (1,), generator=g))):
            w, h = torch.randint(6, 14, (2,), generator=g).tolist()
            x = int(torch.randint(0, size - w, (1,), generator=g))
            y = int(torch.randint(0, size - h, (1,), generator=g))
            k = int(torch.randint(1, 3, (1,), generator=g))
            images[i, 0, y:y + h, x:x + w] = 230 if k == 1 else 120
            masks[i, y:y + h, x:x + w] = k
    return images, masks


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    train, test = blob_scenes(400), blob_scenes(100, seed=1)
    return visiondojo.fit("small-unet", train, test_data=test, out=tmp_path_factory.mktemp("seg") / "run", epochs=12,
                          batch_size=32, lr=3e-3, pin={"regularization.augment": []}, model_kwargs=TINY,
                          progress=False)


def test_a_small_unet_learns_easy_scenes(run):
    assert run.plan.data.task == "segmentation" and run.plan.monitor == "miou"
    test = run.metrics["test"]
    assert test["miou"] >= 0.7, test
    assert len(test["iou_per_class"]) == 3 and min(test["iou_per_class"]) >= 0.5, test
    assert test["pixel_acc"] >= 0.9
    counts = run.plan.data.class_counts  # pixels per class, background the most
    assert len(counts) == 3 and counts[0] > counts[1] > 0 and counts[2] > 0


def test_predictions_are_masks_where_the_objects_are(run):
    images, masks = blob_scenes(8, seed=7)
    found = run.predict(images)
    assert isinstance(found, Masks) and found.labels.shape == (8, 32, 32)
    assert float((found.labels == masks).float().mean()) >= 0.9
    confident = found.scores[found.labels == masks]  # surer where it is right than where it is wrong
    assert float(confident.mean()) > float(found.scores[found.labels != masks].mean()) + 0.15


def test_the_ignore_index_counts_in_neither_loss_nor_metrics():
    task = SegmentationTask(3)
    logits = torch.randn(2, 3, 8, 8)
    truth = logits.argmax(dim=1)
    wrong = (truth + 1) % 3
    ignored = truth.clone()
    ignored[:, :4] = 255  # the top half ignored: whatever is predicted there costs nothing
    mixed = torch.where(torch.arange(8).view(1, 8, 1) < 4, wrong, truth)  # the top half wrong
    metrics = task.metrics()
    task.update_metrics(metrics, logits, ignored)
    assert float(metrics.compute()["miou"]) == pytest.approx(1.0)
    # The loss over the labelled half is the loss of the whole with that half alone counted.
    model = torch.nn.Identity()
    half = task.forward_train(model, logits, ignored).loss
    expected = torch.nn.functional.cross_entropy(logits[:, :, 4:], truth[:, 4:])
    assert float(half) == pytest.approx(float(expected), rel=1e-5)
    assert task.correct(logits, truth).tolist() == [True, True]
    assert task.correct(logits, mixed).tolist() == [False, False]  # half the pixels wrong: IoU under 0.5


def test_a_mask_moves_exactly_with_its_image():
    """A painted region and its mask agree after every geometric op (nearest for both)."""
    images, masks = blob_scenes(16, seed=3)
    pixels = (masks > 0).float()[:, None]  # the image is the mask itself: exact under nearest resampling
    ops = [AugmentOp(name, 0.8) for name in ("hflip", "vflip", "rot90", "rotate", "shear", "translate", "zoom")]
    for op in ops:
        out, applied = Augmenter([op])(pixels, torch.Generator().manual_seed(5))
        moved = SegmentationTask(3).move_targets(masks, applied)
        inside = moved != 255
        agree = ((out[:, 0] > 0.5) == (moved > 0))[inside].float().mean()
        assert float(agree) >= 0.97, (op.name, float(agree))
        assert bool(inside.any())


def test_segmentation_models_build_offline_for_the_masks():
    data = DataParams(task="segmentation", num_classes=4, channels=1, height=32, width=32)
    model = build_for("torchvision:lraspp_mobilenet_v3_large", data)
    out = SegmentationTask(4).forward_eval(model.eval(), torch.zeros(2, 1, 32, 32))
    assert out.shape == (2, 4, 32, 32)
    with pytest.raises(ModelError, match="is a classifier; for segmentation use small-unet"):
        build_for("fmnist-resnet", data)
    with pytest.raises(ModelError, match="is a segmentation model; the data has class labels"):
        build_for("small-unet", DataParams(task="multiclass", num_classes=4))


def test_bad_masks_get_clear_errors():
    images, masks = blob_scenes(8)
    with pytest.raises(DataError, match="masks are float32; segmentation masks hold integer class indices"):
        visiondojo.find_params("small-unet", (images, masks.float()))
    with pytest.raises(DataError, match="masks are 16x16 but the images 32x32"):
        visiondojo.find_params("small-unet", (images, masks[:, :16, :16]))
    with pytest.raises(DataError, match="an RGB mask must be mapped to class indices first"):
        visiondojo.find_params("small-unet", (images, masks[..., None].expand(-1, -1, -1, 3)))
    bad = masks.clone()
    bad[5, 0, 0] = 7
    with pytest.raises(DataError, match=r"holds class 7, outside 0..2"):
        visiondojo.find_params("small-unet", (images, bad), class_names=["bg", "bright", "grey"])


def test_the_cli_writes_palette_png_masks(run, tmp_path, capsys):
    images, masks = blob_scenes(3, seed=9)
    paths = []
    for i, image in enumerate(images):
        path = tmp_path / f"scene{i}.png"
        Image.fromarray(image[0].numpy()).save(path)
        paths.append(str(path))
    out = tmp_path / "masks"
    assert main(["predict", str(run.dir), *paths, "--out", str(out)]) == 0
    assert "wrote 3 masks" in capsys.readouterr().out
    written = Image.open(out / "scene0.png")
    assert written.mode == "P" and written.getpalette()[3:6] == [128, 0, 0]  # VOC's colour for class 1
    assert float((torch.as_tensor(np.array(written)) == masks[0]).float().mean()) >= 0.9
    assert main(["predict", str(run.dir), *paths, "--out", str(out)]) == 2  # nothing of the user's is overwritten
    assert "scene0.png exists; visiondojo does not overwrite" in capsys.readouterr().err


def test_the_review_counts_pixels_and_shows_the_worst_images_first():
    task = SegmentationTask(2)
    targets = torch.tensor([[[0, 1], [1, 255]], [[0, 0], [1, 1]]])
    predicted = torch.tensor([[[0, 1], [0, 1]], [[0, 0], [1, 1]]], dtype=torch.uint8)
    review = task.review(predicted, targets, torch.zeros(2), ["bg", "fg"], limit=2)
    assert review.confusion.tolist() == [[3, 0], [1, 3]]  # the ignored pixel is not counted
    assert [i for i, _ in review.mistakes] == [0, 1] and review.mistakes[0][1] == "IoU 0.50"
    drawn = task.draw_mistake(torch.zeros(1, 2, 2), predicted[0], targets[0], ["bg", "fg"])
    assert drawn.shape == (3, 2, 6)  # image | truth | prediction


def test_what_segmentation_cannot_do_yet_is_refused_before_training():
    images, masks = blob_scenes(40)
    with pytest.raises(visiondojo.errors.VisionDojoError, match="not available for segmentation yet"):
        visiondojo.find_params("small-unet", (images, masks), unlabeled=images[:10])
    with pytest.raises(visiondojo.errors.ConfigError, match="no single class per image to draw balanced batches"):
        visiondojo.fit("small-unet", (images, masks), epochs=1, pin={"regularization.class_balance": "resample"},
                       model_kwargs=TINY, progress=False)
