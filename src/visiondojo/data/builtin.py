"""Built-in datasets that need no download: Fashion-MNIST (Debian package files) and scikit-learn's digits."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from ..errors import DataError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SCENES = "fashion-scenes"
"""Detection scenes composed from Fashion-MNIST items (``data.scenes``, which reads them through here)."""
NAMES = ("fashion-mnist", "digits", SCENES)


def load(name: str, split: str, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images, labels, class names) of a built-in dataset split (``train`` or ``test``)."""
    if split not in ("train", "test"):
        raise DataError(f"{name}: unknown split {split!r}; use {name}:train or {name}:test")
    if name == "fashion-mnist":
        return (*load_fashion_mnist(split, data_dir), FASHION_MNIST_CLASSES)
    if name == "digits":
        return (*load_digits(split), [str(d) for d in range(10)])
    raise DataError(f"unknown built-in dataset {name!r}; available: {', '.join(NAMES)}")


def load_fashion_mnist(split: str, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 28, 28) images and int64 labels from the IDX files (plain or .gz)."""
    folder = Path(data_dir or os.environ.get("VISIONDOJO_FASHION_MNIST", FASHION_MNIST_DIR))
    image_name, label_name = _FASHION_FILES[split]
    images = read_idx(_find(folder, image_name))
    labels = read_idx(_find(folder, label_name)).astype(np.int64)
    return images, labels


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"fashion-mnist: {stem}[.gz] not found in {folder}. Install the Debian package "
        "dataset-fashion-mnist (apt-get install dataset-fashion-mnist), or point --data-dir "
        "(config: data.data_dir) at a folder holding the IDX files."
    )


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file: magic (0, 0, dtype code, ndim), big-endian dims, then the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = bytearray(handle.read())  # writable, so the tensor can share it without another copy
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: truncated IDX file ({data.size} values for shape {dims})")
    return data.reshape(dims)


def load_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (values 0..16 rescaled to uint8), split 80/20 stratified with a fixed seed."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=0
    )
    chosen = train_idx if split == "train" else test_idx
    return images[chosen], labels[chosen]
