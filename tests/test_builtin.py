"""Built-in datasets: the Fashion-MNIST IDX reader (on files written here) and scikit-learn's digits."""

from __future__ import annotations

import gzip
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

import visiondojo
from visiondojo.data import builtin
from visiondojo.data.sources import DataOptions, InMemory, as_source


def write_idx(path: Path, array: np.ndarray, *, compress: bool = False) -> Path:
    """IDX: magic (0, 0, 0x08 = unsigned byte, ndim), big-endian uint32 dims, then the bytes."""
    payload = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def write_fashion_mnist(folder: Path, *, n_train: int = 30, n_test: int = 10, compress: bool = False,
                        seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, n, (image_file, label_file) in (("train", n_train, builtin._FASHION_FILES["train"]),
                                               ("test", n_test, builtin._FASHION_FILES["test"])):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n) % 10
        write_idx(folder / image_file, images, compress=compress)
        write_idx(folder / label_file, labels, compress=compress)
        written[split] = (images, labels)
    return written


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_fashion_mnist_reader(tmp_path, compress):
    written = write_fashion_mnist(tmp_path / "fm", compress=compress)
    for split in ("train", "test"):
        images, labels, names = builtin.load("fashion-mnist", split, str(tmp_path / "fm"))
        assert images.dtype == np.uint8 and images.shape == written[split][0].shape
        np.testing.assert_array_equal(images, written[split][0])
        np.testing.assert_array_equal(labels, written[split][1])
        assert labels.dtype == np.int64
        assert names[0] == "T-shirt/top" and names[9] == "Ankle boot" and len(names) == 10


def test_fashion_mnist_through_data_options_and_fit_options(tmp_path, tiny_net):
    written = write_fashion_mnist(tmp_path / "fm", n_train=40, compress=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's warning about sharing a read-only buffer
        src = as_source("fashion-mnist", DataOptions(data_dir=str(tmp_path / "fm")), role="train_data")
    assert isinstance(src, InMemory)
    assert tuple(src.images.shape) == (40, 1, 28, 28)
    assert src.targets.values.tolist() == written["train"][1].tolist()
    test = as_source("fashion-mnist:test", DataOptions(data_dir=str(tmp_path / "fm")))
    assert len(test) == 10
    plan = visiondojo.find_params(tiny_net(outputs=10), "fashion-mnist", data_dir=str(tmp_path / "fm"))
    assert plan.data.class_names == builtin.FASHION_MNIST_CLASSES
    assert (plan.data.num_classes, plan.data.channels, plan.data.height) == (10, 1, 28)
    assert plan.data.train_size + plan.data.val_size == 40


def test_fashion_mnist_folder_from_the_environment(tmp_path, monkeypatch):
    write_fashion_mnist(tmp_path / "env", n_test=7)
    monkeypatch.setenv("VISIONDOJO_FASHION_MNIST", str(tmp_path / "env"))
    images, labels, _ = builtin.load("fashion-mnist", "test")
    assert images.shape == (7, 28, 28) and len(labels) == 7


def test_missing_fashion_mnist_names_the_package_and_the_option(tmp_path):
    with pytest.raises(visiondojo.DataError) as caught:
        builtin.load("fashion-mnist", "train", str(tmp_path / "nowhere"))
    message = str(caught.value)
    assert "train-images-idx3-ubyte" in message and str(tmp_path / "nowhere") in message
    assert "dataset-fashion-mnist" in message and "--data-dir" in message


def test_broken_idx_files_are_data_errors(tmp_path):
    folder = tmp_path / "fm"
    write_fashion_mnist(folder)
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(visiondojo.DataError, match=r"truncated IDX file \(23515 values for shape \(30, 28, 28\)\)"):
        builtin.load("fashion-mnist", "train", str(folder))
    path.write_bytes(b"\x00\x00\x0d\x01" + struct.pack(">I", 1) + b"\x00\x00\x00\x00")  # float IDX
    with pytest.raises(visiondojo.DataError, match="not an unsigned-byte IDX file"):
        builtin.load("fashion-mnist", "train", str(folder))


def test_unknown_split_and_dataset(tmp_path):
    with pytest.raises(visiondojo.DataError, match="unknown split 'valid'"):
        builtin.load("digits", "valid")
    with pytest.raises(visiondojo.DataError, match="neither an existing file or folder nor a built-in dataset"):
        as_source("mnist-but-not-quite", DataOptions())


def test_digits():
    train_images, train_labels, names = builtin.load("digits", "train")
    test_images, test_labels, _ = builtin.load("digits", "test")
    assert train_images.shape == (1437, 8, 8) and test_images.shape == (360, 8, 8)
    assert train_images.dtype == np.uint8 and train_images.max() == 255 and train_images.min() == 0
    assert names == [str(d) for d in range(10)]
    # Stratified: every digit is in both splits in about the same share.
    train_share = np.bincount(train_labels, minlength=10) / len(train_labels)
    test_share = np.bincount(test_labels, minlength=10) / len(test_labels)
    assert np.abs(train_share - test_share).max() < 0.01
    # The two splits are disjoint: no test image appears in the training split.
    train_rows = {row.tobytes() for row in train_images}
    assert sum(row.tobytes() in train_rows for row in test_images) < 5  # a few digits are pixel-identical
    src = as_source("digits:test", DataOptions())
    assert tuple(src.images.shape) == (360, 1, 8, 8) and src.class_names == names
