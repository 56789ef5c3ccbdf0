"""Shared fixtures: tiny seeded image problems that a tiny conv net learns in a few epochs.

The class (or, for multi-label data, each label) decides which vertical stripe of the image is
bright; Gaussian noise on top keeps the problem from being trivial pixel lookup. Everything is
seeded, so every test sees the same numbers on every run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import visiondojo

# The models here are tiny: a second intra-op thread buys nothing, and when another process holds
# the other core, OpenMP's spin-waiting makes each step up to a hundred times slower.
torch.set_num_threads(1)


def stripe_images(labels: np.ndarray, *, size: int = 8, stripes: int, channels: int | None = None,
                  seed: int = 0, noise: float = 0.15, dtype: str = "float32") -> np.ndarray:
    """Images whose stripe k (of ``stripes`` vertical stripes) is bright where ``labels`` say so.

    ``labels`` is (N,) class indices or (N, K) multi-hot. Output is (N, H, W) for
    ``channels=None``, else (N, H, W, C); float32 around [0, 1], or uint8 in 0..255.
    """
    rng = np.random.default_rng(seed)
    n = len(labels)
    hot = labels if labels.ndim == 2 else np.eye(stripes, dtype=np.float32)[labels]
    images = rng.normal(0.2, noise, (n, size, size)).astype(np.float32)
    width = size // stripes
    for k in range(stripes):
        images[:, :, k * width:(k + 1) * width] += 0.6 * hot[:, k, None, None]
    if channels is not None:
        images = np.repeat(images[..., None], channels, axis=-1)
    if dtype == "uint8":
        return np.round(np.clip(images, 0, 1) * 255).astype(np.uint8)
    return images


def make_problem(n: int, *, task: str = "multiclass", classes: int = 4, size: int = 8,
                 channels: int | None = None, seed: int = 0, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of an easy problem: ``binary`` (2 stripes), ``multiclass`` or ``multilabel``."""
    rng = np.random.default_rng(seed + 1000)
    if task == "multilabel":
        labels = (rng.random((n, classes)) < 0.5).astype(np.float32)
    else:
        k = 2 if task == "binary" else classes
        labels = rng.integers(0, k, n).astype(np.int64)
        classes = k
    return stripe_images(labels, size=size, stripes=classes, channels=channels, seed=seed, dtype=dtype), labels


class TinyNet(nn.Sequential):
    """Conv -> ReLU -> pool to a 2x4 grid (keeps which stripe is bright) -> Linear."""

    def __init__(self, in_channels: int = 1, outputs: int = 4, seed: int = 0):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            super().__init__(
                nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(),
                nn.AdaptiveAvgPool2d((2, 4)), nn.Flatten(), nn.Linear(64, outputs),
            )


FAST = {"epochs": 6, "batch_size": 32, "lr": 0.01, "progress": False}
"""Pins that make a run on a few hundred 8x8 images take about a second on a CPU."""


@pytest.fixture
def problem() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    return make_problem


@pytest.fixture
def tiny_net() -> Callable[..., nn.Module]:
    return TinyNet


@pytest.fixture
def quick_fit(tmp_path: Path) -> Callable[..., visiondojo.Run]:
    """``fit`` with the FAST pins and an ``out`` folder under tmp_path (both overridable)."""
    counter = iter(range(1000))

    def run(model: Any, train_data: Any, *args: Any, **kwargs: Any) -> visiondojo.Run:
        options = {**FAST, "out": tmp_path / f"run{next(counter)}", **kwargs}
        return visiondojo.fit(model, train_data, *args, **options)

    return run


def write_png(path: Path, pixels: np.ndarray) -> Path:
    """Save uint8 (H, W) as grayscale or (H, W, 3) as RGB."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def image_folder(tmp_path: Path) -> Callable[..., Path]:
    """Write a class-folder dataset of the stripe problem as PNGs; returns the root folder."""

    def build(n: int = 60, *, classes: int = 3, size: int = 9, rgb: bool = False, name: str = "images",
              seed: int = 0) -> Path:
        images, labels = make_problem(n, classes=classes, size=size, channels=3 if rgb else None, seed=seed,
                                      dtype="uint8")
        root = tmp_path / name
        for i, (image, label) in enumerate(zip(images, labels)):
            write_png(root / f"class_{'abcdefgh'[label]}" / f"img{i:03d}.png", image)
        return root

    return build


def state_dicts_equal(a: nn.Module | dict, b: nn.Module | dict) -> bool:
    """Same keys and bit-identical tensors."""
    sa = a.state_dict() if isinstance(a, nn.Module) else a
    sb = b.state_dict() if isinstance(b, nn.Module) else b
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


@pytest.fixture
def weights_equal() -> Callable[[Any, Any], bool]:
    return state_dicts_equal


class ProxyClock:
    """The policy search's clock, moved only by proxy trainings, each costing ``per_proxy`` seconds.

    The search decides from its clock how many proxies fit its allowance; on a real clock that
    number follows the host's speed (a shared CI machine ran one proxy where a quiet one runs
    three). A fixed cost per proxy makes the decisions, and the test, the same everywhere.
    """

    def __init__(self, per_proxy: float) -> None:
        self.per_proxy, self.now, self.proxies = per_proxy, 0.0, 0

    def perf_counter(self) -> float:
        return self.now

    def charge(self) -> None:
        self.now += self.per_proxy
        self.proxies += 1


@pytest.fixture
def proxy_clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], ProxyClock]:
    """Install a ``ProxyClock`` in the policy search (its real proxies still train)."""
    from visiondojo.regularize import search

    def install(per_proxy: float) -> ProxyClock:
        clock = ProxyClock(per_proxy)
        run = search.Proxy.run

        def charged(self, *args, **kwargs):
            clock.charge()
            return run(self, *args, **kwargs)

        monkeypatch.setattr(search, "time", clock)
        monkeypatch.setattr(search.Proxy, "run", charged)
        return clock

    return install
