"""Every accepted form of data becomes the same Source; inspection, splits and device batching."""

from __future__ import annotations

import csv
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import visiondojo
from visiondojo.data.batches import DeviceBatches, make_batches
from visiondojo.data.inspect import inspect_data
from visiondojo.data.sources import DataOptions, InMemory, Streamed, as_source
from visiondojo.data.split import validation_split

from conftest import write_png


def source(data, **options):
    return as_source(data, DataOptions(**options), role="train_data")


# ---------------------------------------------------------------- arrays and tensors

@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_arrays_and_tensors_become_nchw(backend, dtype, layout):
    rng = np.random.default_rng(0)
    channels = 1 if layout == "NHW" else 3
    nchw = rng.integers(0, 256, (5, channels, 6, 7)).astype(dtype)
    if dtype == "float32":
        nchw /= 255.0
    given = {"NHW": nchw[:, 0], "NHWC": nchw.transpose(0, 2, 3, 1), "NCHW": nchw}[layout]
    labels = np.array([0, 1, 2, 1, 0])
    if backend == "torch":
        given, labels = torch.from_numpy(np.ascontiguousarray(given)), torch.from_numpy(labels)
    src = source((given, labels))
    assert isinstance(src, InMemory)
    assert tuple(src.images.shape) == (5, channels, 6, 7)
    assert src.images.dtype == (torch.uint8 if dtype == "uint8" else torch.float32)
    assert torch.equal(src.images, torch.from_numpy(nchw))
    assert src.targets.values.tolist() == [0, 1, 2, 1, 0]
    assert src.targets.values.dtype == torch.int64


def test_compact_dtypes():
    """Integers in 0..255 are stored as uint8; float64 becomes float32."""
    ints = np.arange(4 * 8 * 8).reshape(4, 8, 8) % 256
    assert source((ints.astype(np.int64), np.arange(4))).images.dtype == torch.uint8
    doubles = np.linspace(0, 1, 4 * 8 * 8).reshape(4, 8, 8)
    src = source((doubles, np.arange(4)))
    assert src.images.dtype == torch.float32
    assert torch.allclose(src.images[:, 0].double(), torch.from_numpy(doubles), atol=1e-7)


def test_string_labels_get_sorted_class_names():
    images = np.zeros((5, 4, 4), np.uint8)
    src = source((images, np.array(["zebra", "cat", "dog", "cat", "zebra"])))
    assert src.class_names == ["cat", "dog", "zebra"]
    assert src.targets.values.tolist() == [2, 0, 1, 0, 2]


def test_channel_axis_that_cannot_be_told_is_an_error():
    with pytest.raises(visiondojo.DataError, match=r"channel axis of shape \(2, 5, 6, 7\)"):
        source((np.zeros((2, 5, 6, 7), np.float32), np.zeros(2)))


# ---------------------------------------------------------------- datasets and loaders

class PairDataset(Dataset):
    """Yields (image, target) in whatever form it is given."""

    def __init__(self, images, targets):
        self.images, self.targets = images, targets

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.images[i], self.targets[i]


def test_dataset_of_tensors_is_held_in_memory(problem):
    images, labels = problem(20, dtype="uint8")
    chw = torch.from_numpy(images).unsqueeze(1)
    src = source(PairDataset(list(chw), [int(v) for v in labels]))
    assert isinstance(src, InMemory)
    assert torch.equal(src.images, chw)
    assert src.targets.values.tolist() == labels.tolist()


def test_dataset_of_pil_images_with_string_labels(problem):
    images, labels = problem(12, classes=3, channels=3, dtype="uint8")
    names = np.array(["red", "green", "blue"])[labels]
    src = source(PairDataset([Image.fromarray(im) for im in images], list(names)))
    assert isinstance(src, InMemory)
    assert tuple(src.images.shape) == (12, 3, 8, 8)
    assert torch.equal(src.images, torch.from_numpy(images).permute(0, 3, 1, 2))
    assert src.class_names == ["blue", "green", "red"]
    assert [src.class_names[t] for t in src.targets.values] == names.tolist()


def test_dataset_of_hwc_arrays_with_multi_hot_targets(problem):
    images, labels = problem(10, task="multilabel", classes=3, channels=3)
    src = source(PairDataset(images, torch.from_numpy(labels)))
    assert tuple(src.images.shape) == (10, 3, 8, 8)
    assert src.targets.values.dtype == torch.float32 and tuple(src.targets.values.shape) == (10, 3)
    assert torch.equal(src.targets.values, torch.from_numpy(labels))


def test_dataloader_uses_its_dataset(problem):
    images, labels = problem(30)
    loader = DataLoader(PairDataset(torch.from_numpy(images), torch.from_numpy(labels)), batch_size=7, shuffle=True)
    src = source(loader)
    assert isinstance(src, InMemory)
    assert "DataLoader" in src.origin
    assert torch.equal(src.images[:, 0], torch.from_numpy(images))  # dataset order, not the loader's shuffle
    assert src.targets.values.tolist() == labels.tolist()


def test_dataset_over_the_memory_limit_is_streamed(problem):
    images, labels = problem(16)
    src = source(PairDataset(torch.from_numpy(images), torch.from_numpy(labels)), memory_limit_gb=1e-6)
    assert isinstance(src, Streamed)
    assert (src.channels, tuple(src.size)) == (1, (8, 8))
    image, target = src.dataset[3]
    assert torch.equal(image[0], torch.from_numpy(images[3])) and int(target) == labels[3]


def test_dataset_with_mixed_sizes_names_the_sample():
    items = [torch.zeros(1, 8, 8)] * 3 + [torch.zeros(1, 9, 8)]
    with pytest.raises(visiondojo.DataError, match=r"sample 3 has shape \(1, 9, 8\).*resize"):
        source(PairDataset(items, [0, 1, 0, 1]))


# ---------------------------------------------------------------- image folders and manifests

def test_image_folder(image_folder):
    root = image_folder(24, classes=3, size=9)
    src = source(root)
    assert isinstance(src, Streamed)
    assert src.class_names == ["class_a", "class_b", "class_c"]
    assert (src.channels, tuple(src.size)) == (1, (9, 9))
    assert len(src) == 24
    first = sorted((root / "class_a").iterdir())[0]
    image, target = src.dataset[0]
    assert image.dtype == torch.uint8 and tuple(image.shape) == (1, 9, 9)
    assert torch.equal(image[0], torch.from_numpy(np.array(Image.open(first))))
    assert int(target) == 0


def test_rgb_image_folder_with_non_square_images(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        for i in range(3):
            write_png(tmp_path / "pets" / label / f"{i}.png", rng.integers(0, 256, (6, 10, 3), dtype=np.uint8))
    src = source(tmp_path / "pets")
    assert src.class_names == ["cat", "dog"]
    assert (src.channels, tuple(src.size)) == (3, (6, 10))
    assert src.targets.values.tolist() == [0, 0, 0, 1, 1, 1]
    assert tuple(src.dataset[4][0].shape) == (3, 6, 10)


def _write_manifest(tmp_path, rows):
    rng = np.random.default_rng(0)
    with (tmp_path / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "labels"])
        for i, labels in enumerate(rows):
            write_png(tmp_path / "img" / f"{i}.png", rng.integers(0, 256, (5, 5), dtype=np.uint8))
            writer.writerow([f"img/{i}.png", labels])
    return tmp_path / "labels.csv"


def test_manifest_with_several_labels_is_multilabel(tmp_path):
    manifest = _write_manifest(tmp_path, ["sky tree", "tree", "sky;water", "water|tree|sky", ""])
    src = source(manifest)
    assert src.class_names == ["sky", "tree", "water"]
    assert src.targets.values.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1], [1, 1, 1], [0, 0, 0]]
    params = inspect_data(src, DataOptions())
    assert (params.task, params.num_classes) == ("multilabel", 3)
    assert params.class_counts == [3, 3, 2]


def test_manifest_with_one_label_per_row_is_multiclass(tmp_path):
    manifest = _write_manifest(tmp_path, ["dog", "cat", "bird", "cat", "dog", "bird"])
    src = source(manifest)
    assert src.class_names == ["bird", "cat", "dog"]
    assert src.targets.values.tolist() == [2, 1, 0, 1, 2, 0]
    params = inspect_data(src, DataOptions())
    assert (params.task, params.num_classes) == ("multiclass", 3)
    # Asking for multi-label keeps the multi-hot form even when each row has one label.
    forced = as_source(manifest, DataOptions(task="multilabel"))
    assert tuple(forced.targets.values.shape) == (6, 3)


# ---------------------------------------------------------------- inspection

def test_inspection_of_a_multiclass_uint8_problem(problem):
    images, labels = problem(200, classes=4, channels=3, dtype="uint8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # balanced data: no imbalance warning
        params = inspect_data(source((images, labels)), DataOptions())
    assert (params.task, params.num_classes, params.channels, params.height, params.width) == ("multiclass", 4, 3, 8, 8)
    assert params.pixel_scale == pytest.approx(1 / 255)
    expected_mean = (images / 255.0).mean(axis=(0, 1, 2))
    expected_std = (images / 255.0).std(axis=(0, 1, 2))
    assert params.mean == pytest.approx(expected_mean.tolist(), abs=1e-5)
    assert params.std == pytest.approx(expected_std.tolist(), abs=1e-5)
    assert params.class_counts == np.bincount(labels, minlength=4).tolist()
    assert params.class_names == ["0", "1", "2", "3"]


def test_inspection_of_float_binary_and_multilabel(problem):
    images, labels = problem(100, task="binary")
    params = inspect_data(source((images, labels)), DataOptions())
    assert (params.task, params.num_classes, params.num_outputs, params.pixel_scale) == ("binary", 2, 1, 1.0)
    assert params.mean == pytest.approx([float(images.mean())], abs=1e-5)
    images, labels = problem(100, task="multilabel", classes=3)
    params = inspect_data(source((images, labels)), DataOptions())
    assert (params.task, params.num_classes, params.num_outputs) == ("multilabel", 3, 3)
    assert params.class_counts == labels.sum(axis=0).astype(int).tolist()


def test_strong_imbalance_warns(problem):
    images, _ = problem(110)
    labels = np.array([0] * 100 + [1] * 10)
    with pytest.warns(UserWarning, match=r"strong class imbalance \(largest class 100 samples, smallest 10\)"):
        inspect_data(source((images, labels)), DataOptions())


def test_overrides_are_respected(problem):
    images, labels = problem(60, task="binary")
    params = inspect_data(source((images, labels)), DataOptions(task="multiclass"))
    assert (params.task, params.num_classes, params.num_outputs) == ("multiclass", 2, 2)
    images, labels = problem(60, classes=3)
    with pytest.warns(UserWarning, match="smallest 0"):  # classes 3 and 4 have no samples
        params = inspect_data(source((images, labels)), DataOptions(num_classes=5))
    assert params.num_classes == 5
    assert params.class_counts == np.bincount(labels, minlength=5).tolist()
    with pytest.raises(visiondojo.DataError, match=r"outside 0\.\.1"):
        inspect_data(source((images, labels)), DataOptions(num_classes=2))


def test_find_params_reports_overrides_in_the_plan(problem, tiny_net):
    images, labels = problem(80, classes=3)
    plan = visiondojo.find_params(tiny_net(outputs=3), (images, labels), class_names=["x", "y", "z"])
    assert plan.data.class_names == ["x", "y", "z"]
    assert (plan.data.task, plan.data.num_classes, plan.data.train_size + plan.data.val_size) == ("multiclass", 3, 80)
    with pytest.raises(visiondojo.DataError, match=r"^class_names: 2 names given but the labels go up to 2"):
        visiondojo.find_params(tiny_net(outputs=3), (images, labels), class_names=["x", "y"])
    with pytest.raises(visiondojo.DataError, match="2 names given for 3 classes"):
        visiondojo.find_params(tiny_net(outputs=3), (images, labels), class_names=["x", "y"], num_classes=3)


# ---------------------------------------------------------------- validation split

def _indexed_source(labels):
    """Images that carry their own index, so a split's members can be read back."""
    n = len(labels)
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return InMemory(images, torch.as_tensor(labels), None, "indexed")


def test_stratified_split_keeps_class_proportions():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    src = _indexed_source(labels)
    train, val = validation_split(src, 0.2, seed=0)
    assert np.bincount(val.targets.values.numpy()).tolist() == [12, 6, 2]
    assert np.bincount(train.targets.values.numpy()).tolist() == [48, 24, 8]
    ids = torch.cat([train.images[:, 0, 0, 0], val.images[:, 0, 0, 0]]).long()
    assert sorted(ids.tolist()) == list(range(100))  # disjoint and complete
    assert torch.equal(labels_of(train), train.targets.values) and torch.equal(labels_of(val), val.targets.values)


def labels_of(part):
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    return labels[part.images[:, 0, 0, 0].long()]


def test_split_is_deterministic_for_a_seed():
    src = _indexed_source(np.array([0] * 60 + [1] * 30 + [2] * 10))
    ids = lambda part: part.images[:, 0, 0, 0].long().tolist()  # noqa: E731
    first, again, other = (validation_split(src, 0.2, seed=s)[1] for s in (3, 3, 4))
    assert ids(first) == ids(again)
    assert sorted(ids(first)) != sorted(ids(other))


def test_split_gives_every_class_a_validation_sample():
    labels = np.array([0] * 30 + [1] * 2 + [2] * 2)
    _, val = validation_split(_indexed_source(labels), 0.05, seed=0)
    assert sorted(set(val.targets.values.tolist())) == [0, 1, 2]


def test_split_stratifies_labels_that_start_at_one():
    labels = np.array([1] * 40 + [2] * 40 + [3] * 20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the empty class 0 is no reason to give up stratifying
        _, val = validation_split(_indexed_source(labels), 0.2, seed=0)
    assert np.bincount(val.targets.values.numpy()).tolist() == [0, 8, 8, 4]


# ---------------------------------------------------------------- device batching

def _device_batches(n=50, batch_size=8, seed=0, drop_last=False):
    src = _indexed_source(np.zeros(n, dtype=np.int64))
    return DeviceBatches(src, batch_size, torch.device("cpu"), shuffle=True, drop_last=drop_last, seed=seed)


def _epoch_order(batches, epoch):
    batches.set_epoch(epoch)
    return torch.cat([images[:, 0, 0, 0] for images, _ in batches]).long().tolist()


def test_device_batches_cover_every_sample_once_per_epoch():
    batches = _device_batches(50, 8)
    assert len(batches) == 7
    for epoch in range(3):
        order = _epoch_order(batches, epoch)
        assert sorted(order) == list(range(50))


def test_device_batches_drop_only_the_ragged_last_batch():
    batches = _device_batches(50, 8, drop_last=True)
    assert len(batches) == 6
    order = _epoch_order(batches, 0)
    assert len(order) == 48 and len(set(order)) == 48


def test_device_batches_order_is_a_function_of_seed_and_epoch():
    a, b, other_seed = _device_batches(seed=1), _device_batches(seed=1), _device_batches(seed=2)
    orders = [_epoch_order(a, e) for e in range(3)]
    assert orders[0] != orders[1] != orders[2] != orders[0]
    assert [_epoch_order(b, e) for e in (2, 0, 1)] == [orders[2], orders[0], orders[1]]
    assert _epoch_order(a, 1) == orders[1]  # revisiting an epoch replays it
    assert _epoch_order(other_seed, 0) != orders[0]


def test_evaluation_batches_keep_order_and_every_sample():
    src = _indexed_source(np.zeros(21, dtype=np.int64))
    batches = make_batches(src, 8, torch.device("cpu"), train=False)
    order = torch.cat([images[:, 0, 0, 0] for images, _ in batches]).long().tolist()
    assert order == list(range(21))


# ---------------------------------------------------------------- training from disk

def test_fit_on_an_image_folder(image_folder, tiny_net, quick_fit):
    root = image_folder(90, classes=3, size=9)
    run = quick_fit(tiny_net(outputs=3), root, epochs=5, batch_size=8)
    assert run.plan.data.class_names == ["class_a", "class_b", "class_c"]
    assert (run.plan.data.channels, run.plan.data.height, run.plan.data.width) == (1, 9, 9)
    assert run.metrics["val"]["acc"] >= 0.9
    paths = sorted(root.rglob("*.png"))
    predicted = run.predict(paths).names()
    accuracy = np.mean([name == path.parent.name for name, path in zip(predicted, paths)])
    assert accuracy >= 0.9
    # Predicting from files and evaluating the folder agree.
    assert visiondojo.evaluate(run, root)["acc"] == pytest.approx(accuracy, abs=1e-6)


def test_val_and_test_labels_are_renumbered_to_the_training_classes(tmp_path):
    """A test set that lacks a class must not shift the later classes onto the wrong labels."""
    from visiondojo.data.sources import DataOptions, align_classes, as_source
    from visiondojo.errors import DataError

    images = np.zeros((3, 4, 4), dtype=np.uint8)
    train = as_source((images, np.array(["cat", "dog", "fox"])), DataOptions())
    test = as_source((images[:2], np.array(["cat", "fox"])), DataOptions())
    assert test.targets.values.tolist() == [0, 1] and test.class_names == ["cat", "fox"]
    align_classes(test, train.class_names)
    assert test.targets.values.tolist() == [0, 2] and test.class_names == ["cat", "dog", "fox"]
    stranger = as_source((images[:1], np.array(["owl"])), DataOptions())
    with pytest.raises(DataError, match="'owl'.*do not occur in the training data"):
        align_classes(stranger, train.class_names)


@pytest.mark.filterwarnings("ignore:No positive samples")  # class b's AUROC is undefined in this test set
def test_a_test_folder_missing_a_class_is_scored_on_the_right_labels(tmp_path, image_folder, tiny_net):
    train = image_folder(60, classes=3, name="train")
    test = image_folder(30, classes=3, name="test", seed=5)
    shutil.rmtree(test / "class_b")  # the test folder now holds classes a and c only
    run = visiondojo.fit(tiny_net(outputs=3), train, test_data=test, epochs=8, batch_size=16, lr=0.01,
                         out=tmp_path / "run", progress=False)
    assert run.metrics["test"]["acc"] >= 0.9


@pytest.mark.parametrize("low, high, expected", [
    (0.0, 1.0, (1.0, 0.0)),            # [0, 1] floats stay as they are
    (-0.2, 1.3, (1.0, 0.0)),           # a little noise outside is still [0, 1] data
    (0.0, 255.0, (1 / 255, 0.0)),      # bytes stored as floats
    (-2.0, 3.0, (0.2, 0.4)),           # standardized data: min-max to [0, 1]
])
def test_float_pixels_are_mapped_to_the_unit_range(low: float, high: float, expected: tuple[float, float]) -> None:
    """Augmentation ops assume [0, 1]; inspection finds the map x * scale + offset that gets there."""
    from visiondojo.data.inspect import pixel_range

    images = torch.linspace(low, high, 2 * 8 * 8).view(2, 1, 8, 8)
    scale, offset = pixel_range(images)
    assert (scale, offset) == pytest.approx(expected)
    mapped = images * scale + offset
    if expected[0] not in (1.0, 1 / 255):
        assert float(mapped.min()) == pytest.approx(0.0, abs=1e-6) and float(mapped.max()) == pytest.approx(1.0)


def test_a_moved_plan_key_says_where_it_went() -> None:
    from visiondojo.errors import ConfigError
    from visiondojo.plan import Plan

    with pytest.raises(ConfigError, match="moved to regularization.weight_decay"):
        Plan.from_dict({"optimization": {"weight_decay": 0.01}})
    with pytest.raises(ConfigError, match="moved to regularization.weight_decay"):
        Plan().set("optimization.weight_decay", 0.01)
