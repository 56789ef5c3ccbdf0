"""fashion-scenes from synthetic items: deterministic, boxes and masks that agree with the pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visiondojo.data.scenes import ITEM_THRESHOLD, ITEMS_PER_SCENE, compose_scenes
from visiondojo.errors import DataError


def blob_items(k: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bright filled ellipses on black, 28x28, as Fashion-MNIST items are bright shapes on black."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:28, 0:28]
    items = np.zeros((k, 28, 28), dtype=np.uint8)
    for i in range(k):
        ry, rx = rng.uniform(5, 13, 2)
        items[i][((ys - 13.5) / ry) ** 2 + ((xs - 13.5) / rx) ** 2 <= 1] = rng.integers(150, 256)
    return items, rng.integers(0, 10, k)


@pytest.fixture(scope="module")
def scenes():
    items, labels = blob_items()
    return compose_scenes(items, labels, 24, size=64, seed=3, item_offset=1000), labels


def test_scenes_are_a_pure_function_of_the_seed(scenes) -> None:
    made, _ = scenes
    items, labels = blob_items()
    again = compose_scenes(items, labels, 24, size=64, seed=3, item_offset=1000)
    assert torch.equal(made.images, again.images) and torch.equal(made.instances, again.instances)
    assert torch.equal(made.targets.fields["boxes"], again.targets.fields["boxes"])
    other = compose_scenes(items, labels, 24, size=64, seed=4, item_offset=1000)
    assert not torch.equal(made.images, other.images)


def test_every_box_is_the_extent_of_its_objects_visible_pixels(scenes) -> None:
    made, labels = scenes
    assert made.images.shape == (24, 1, 64, 64) and made.images.dtype == torch.uint8
    counts = made.targets.counts
    assert int(counts.max()) <= ITEMS_PER_SCENE[1] and int(counts.sum()) >= 24
    for i, objects in enumerate(made.targets.gather(torch.arange(24)).per_image()):
        ids = made.instances[i]
        assert int(ids.max()) == len(objects["boxes"])  # ids 1..M, compact
        for j, (box, label, item) in enumerate(zip(objects["boxes"], objects["labels"], objects["item"])):
            rows, cols = (ids == j + 1).nonzero().unbind(1)
            assert box.tolist() == [cols.min().item(), rows.min().item(), cols.max().item() + 1, rows.max().item() + 1]
            assert int(label) == int(labels[int(item) - 1000])  # the item's own class, pool offset kept
            assert bool((made.semantic[i][ids == j + 1] == label + 1).all())
            assert bool((made.images[i, 0][ids == j + 1] > ITEM_THRESHOLD).all())  # object pixels are the item's
        assert bool((made.semantic[i][ids == 0] == 0).all())


def test_scenes_vary_in_scale_and_truncate_at_the_border(scenes) -> None:
    made, _ = scenes
    boxes = made.targets.fields["boxes"]
    sides = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert float(sides.min()) < 14 and float(sides.max()) > 40
    touching = (boxes[:, 0] == 0) | (boxes[:, 1] == 0) | (boxes[:, 2] == 64) | (boxes[:, 3] == 64)
    assert 0 < int(touching.sum()) < len(boxes)


def test_zero_scenes_is_refused() -> None:
    items, labels = blob_items(4)
    with pytest.raises(DataError, match="at least 1"):
        compose_scenes(items, labels, 0)


def test_the_scenes_give_semantic_masks_when_the_task_is_segmentation(monkeypatch) -> None:
    """``fashion-scenes`` with ``task: segmentation`` reads the semantic masks, class 0 the background."""
    import visiondojo
    from visiondojo.data import scenes as scenes_module

    items, labels = blob_items()
    made = compose_scenes(items, labels, 24, size=64, seed=3, class_names=[f"c{k}" for k in range(10)])
    monkeypatch.setattr(scenes_module, "fashion_scenes", lambda split, n=None, data_dir=None: made)
    plan = visiondojo.find_params("small-unet", "fashion-scenes:train:24", task="segmentation",
                                  pin={"optimization.batch_size": 8, "optimization.lr": 1e-3,
                                       "optimization.epochs": 1, "regularization.augment": []})
    assert plan.data.task == "segmentation" and plan.data.num_classes == 11
    assert plan.data.class_names[0] == "background" and plan.data.class_names[1:] == made.class_names
    assert sum(plan.data.class_counts) == plan.data.train_size * 64 * 64  # every pixel of the training split
    present = set(torch.unique(made.semantic).tolist())
    assert {k for k, c in enumerate(plan.data.class_counts) if c > 0} <= present and plan.data.class_counts[0] > 0
