"""The targets container: dense and ragged targets through subsets, batches, splits and both batchers."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from visiondojo.data.batches import make_batches
from visiondojo.data.sources import InMemory, Streamed
from visiondojo.data.split import validation_split
from visiondojo.data.targets import DenseTargets, RaggedBatch, RaggedTargets


def ragged(counts: list[int], num_classes: int = 3, seed: int = 0) -> tuple[RaggedTargets, list[dict[str, torch.Tensor]]]:
    """Per-sample boxes whose first coordinate encodes (sample, object), so any mix-up shows."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for i, m in enumerate(counts):
        boxes = torch.stack([torch.tensor([100.0 * i + j, 0.0, 100.0 * i + j + 5, 5.0]) for j in range(m)]) if m else torch.zeros(0, 4)
        samples.append({"boxes": boxes, "labels": torch.randint(0, num_classes, (m,), generator=g)})
    return RaggedTargets.from_samples(samples), samples


def test_dense_targets_gather_count_and_stratify() -> None:
    ids = DenseTargets(torch.tensor([2, 0, 1, 2, 2]))
    assert ids.gather(torch.tensor([4, 1])).tolist() == [2, 0] and ids.gather(slice(1, 3)).tolist() == [0, 1]
    assert ids.subset(torch.tensor([0, 3])).values.tolist() == [2, 2]
    assert ids.class_counts(4) == [1, 1, 3, 0]
    assert torch.equal(ids.stratify_key(), ids.values)
    hot = DenseTargets(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    assert hot.class_counts(2) == [2, 1] and hot.stratify_key() is None
    masks = DenseTargets(torch.tensor([[[0, 1], [255, 1]]]))
    assert masks.class_counts(2, ignore_index=255) == [1, 2] and masks.stratify_key() is None


def test_ragged_targets_gather_the_objects_of_each_sample_in_batch_order() -> None:
    targets, samples = ragged([2, 0, 3, 1])
    assert len(targets) == 4 and targets.counts.tolist() == [2, 0, 3, 1]
    batch = targets.gather(torch.tensor([3, 1, 0]))
    assert isinstance(batch, RaggedBatch) and len(batch) == 3
    assert batch.image.tolist() == [0, 2, 2]  # sample 3 (position 0): one box; sample 1: none; sample 0 (position 2): two
    per_image = batch.per_image()
    for got, index in zip(per_image, [3, 1, 0]):
        assert torch.equal(got["boxes"], samples[index]["boxes"]) and torch.equal(got["labels"], samples[index]["labels"])
    in_order = targets.gather(slice(1, 3)).per_image()
    assert [len(d["boxes"]) for d in in_order] == [0, 3]
    sub = targets.subset(torch.tensor([2, 0]))
    assert sub.counts.tolist() == [3, 2]
    assert torch.equal(sub.gather(torch.tensor([1])).fields["boxes"], samples[0]["boxes"])
    kept = batch.keep(batch.fields["boxes"][:, 0] < 300)  # drops sample 3's box
    assert [len(d["boxes"]) for d in kept.per_image()] == [0, 0, 2]


def test_ragged_targets_count_objects_and_stratify_on_the_rarest_class() -> None:
    targets = RaggedTargets.from_samples([
        {"boxes": torch.zeros(2, 4), "labels": torch.tensor([0, 1])},
        {"boxes": torch.zeros(1, 4), "labels": torch.tensor([0])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
        {"boxes": torch.zeros(2, 4), "labels": torch.tensor([0, 0])},
    ])
    assert targets.class_counts(3) == [4, 1, 0]
    assert targets.stratify_key().tolist() == [1, 0, 2, 0]  # class 1 is rarest; "2" = no objects


class _Images(Dataset):
    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], {"not": "collatable"}  # ragged targets never pass through the workers


def test_both_batchers_gather_ragged_targets_through_the_container() -> None:
    counts = [i % 3 for i in range(24)]
    targets, _ = ragged(counts)
    images = torch.arange(24, dtype=torch.float32).view(24, 1, 1, 1).expand(24, 1, 4, 4).contiguous()
    memory = InMemory(images, targets, None, "boxes")
    streamed = Streamed(_Images(images), targets, None, "boxes", 1, (4, 4))
    for train in (True, False):
        device_batches = list(make_batches(memory, 5, torch.device("cpu"), train=train, seed=3))
        loader_batches = list(make_batches(streamed, 5, torch.device("cpu"), train=train, seed=3, num_workers=0))
        assert len(device_batches) == len(loader_batches) == (4 if train else 5)
        for images_of, targets_of in device_batches + loader_batches:
            assert len(targets_of) == len(images_of)
            # Each image keeps its own boxes: box x1 // 100 is the sample index.
            owners = images_of[:, 0, 0, 0].long()[targets_of.image]
            assert torch.equal(owners, (targets_of.fields["boxes"][:, 0] // 100).long())
            assert targets_of.image.tolist() == sorted(targets_of.image.tolist())
        if not train:  # evaluation sees every sample once, in order, through either batcher
            for batches in (device_batches, loader_batches):
                assert torch.cat([i[:, 0, 0, 0] for i, _ in batches]).tolist() == list(range(24))
                assert sum(len(t.fields["boxes"]) for _, t in batches) == sum(counts)


def test_a_validation_split_of_ragged_targets_keeps_every_image_with_its_boxes() -> None:
    targets, samples = ragged([1 + i % 2 for i in range(40)], num_classes=4, seed=1)
    images = torch.arange(40, dtype=torch.float32).view(40, 1, 1, 1).expand(40, 1, 2, 2).contiguous()
    train, val = validation_split(InMemory(images, targets, None, "boxes"), 0.25, seed=0)
    assert len(train) + len(val) == 40 and len(val) == 10
    for part in (train, val):
        batch = part.targets.gather(torch.arange(len(part)))
        for index, objects in zip(part.images[:, 0, 0, 0].long().tolist(), batch.per_image()):
            assert torch.equal(objects["boxes"], samples[index]["boxes"])
            assert torch.equal(objects["labels"], samples[index]["labels"])


def test_a_ragged_batch_chunks_as_its_images_do() -> None:
    targets, samples = ragged([2, 0, 3, 1, 1, 0, 2, 1, 0, 4])
    batch = targets.gather(torch.arange(10))
    images = torch.arange(10)
    for chunks in (1, 3, 4, 10):
        image_parts, target_parts = images.chunk(chunks), batch.chunk(chunks)
        assert [len(t) for t in target_parts] == [len(i) for i in image_parts]
        for ids, part in zip(image_parts, target_parts):
            for index, objects in zip(ids.tolist(), part.per_image()):
                assert torch.equal(objects["boxes"], samples[index]["boxes"])
