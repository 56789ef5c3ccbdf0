"""Batching: in-memory data on the training device, disk data through DataLoader workers.

Both give the same thing: an iterable of (raw images, targets) batches on the device, a fresh
seeded permutation per epoch (epoch ``e`` always sees the same order, so a resumed run replays
it exactly). Both gather a batch's targets from the source's targets container
(``data.targets``): a tensor slice for dense targets, a ``RaggedBatch`` of flat objects for
boxes; the DataLoader's workers only read images. ``Normalizer`` then turns raw pixels into the
model's float input on the device.
"""

from __future__ import annotations

import os
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler, WeightedRandomSampler

from ..errors import ConfigError
from ..plan import DataParams
from .sources import InMemory, Source, Streamed
from .targets import BatchTargets

Batch = tuple[torch.Tensor, BatchTargets]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator that orders epoch ``epoch``: a pure function of (seed, epoch)."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def _checked_sample_weights(sample_weights: torch.Tensor | None, n: int, *, shuffle: bool) -> torch.Tensor | None:
    """Drawing weights as the samplers need them: one per sample, float64, on the CPU.

    On the CPU because the epoch generators are CPU generators; float64 because that is what
    ``WeightedRandomSampler`` draws from, so both batchers see the same weights. Weighted draws
    replace the shuffle, so without one (evaluation, which must see every sample once) they are
    a caller's mistake rather than something to ignore.
    """
    if sample_weights is None:
        return None
    if not shuffle:
        raise ValueError("sample_weights only apply to shuffled (training) batches")
    if tuple(sample_weights.shape) != (n,):
        raise ValueError(f"sample_weights has shape {tuple(sample_weights.shape)}; expected ({n},), one per sample")
    return sample_weights.detach().to("cpu", torch.float64)


class DeviceBatches:
    """Slices of one device-resident tensor: a randperm per epoch, no per-sample Python.

    With ``sample_weights`` each epoch instead draws N indices with replacement in proportion to
    them (class-balanced sampling); an epoch keeps its N samples and so its number of steps.

    With ``shard = (rank, world_size)`` (training under a process group) ``batch_size`` is the
    global batch and this rank yields its ``batch_size / world_size`` share of each: the same
    epoch order as one process, every sample in exactly one rank's share, and every rank the same
    number of steps, so data-parallel training steps as one process with the global batch would.
    """

    def __init__(self, source: InMemory, batch_size: int, device: torch.device, *,
                 shuffle: bool, drop_last: bool, seed: int = 0, sample_weights: torch.Tensor | None = None,
                 shard: tuple[int, int] = (0, 1)):
        self.images = source.images.to(device, non_blocking=True)
        self.targets = source.targets.to(device, non_blocking=True)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last and len(self.targets) > batch_size
        self.seed = seed
        self.sample_weights = _checked_sample_weights(sample_weights, len(self.targets), shuffle=shuffle)
        self.epoch = 0
        self.rank, self.world_size = shard
        if batch_size % self.world_size:
            raise ConfigError(f"optimization.batch_size: a global batch of {batch_size} does not split evenly over "
                              f"{self.world_size} processes; pin it to a multiple of {self.world_size}")
        self.drop_last = self.drop_last or self.world_size > 1  # a ragged last batch would not split evenly

    def __len__(self) -> int:
        n = len(self.targets)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        order = self._epoch_order() if self.shuffle else None
        share = self.batch_size // self.world_size
        for step in range(len(self)):
            start = step * self.batch_size + self.rank * share
            end = start + (share if self.world_size > 1 else self.batch_size)
            index = slice(start, end) if order is None else order[start:end]
            yield self.images[index], self.targets.gather(index)

    def _epoch_order(self) -> torch.Tensor:
        """This epoch's sample indices on the device: a pure function of (seed, epoch)."""
        n = len(self.targets)
        generator = epoch_generator(self.seed, self.epoch)
        if self.sample_weights is None:
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.multinomial(self.sample_weights, n, replacement=True, generator=generator)
        return order.to(self.images.device)


class LoaderBatches:
    """A DataLoader with persistent workers; the sampler is reseeded per epoch.

    ``sample_weights`` as in ``DeviceBatches``, through a ``WeightedRandomSampler``.
    """

    def __init__(self, source: Streamed, batch_size: int, device: torch.device, *,
                 shuffle: bool, drop_last: bool, seed: int = 0, num_workers: int | None = None,
                 sample_weights: torch.Tensor | None = None):
        self.device = device
        self.seed = seed
        self.epoch = 0
        self.targets = source.targets
        self.generator = torch.Generator()
        weights = _checked_sample_weights(sample_weights, len(source), shuffle=shuffle)
        sampler = _loader_sampler(source.dataset, self.generator, shuffle=shuffle, sample_weights=weights)
        workers = default_num_workers() if num_workers is None else num_workers
        # The loader draws its workers' base seed from ``generator`` (reseeded per epoch), never
        # from the global RNG, so the model's random stream is the same in a resumed run.
        self.loader = DataLoader(
            _ImagesWithIndex(source.dataset), batch_size=batch_size, sampler=sampler,
            drop_last=drop_last and len(source) > batch_size, num_workers=workers,
            persistent_workers=workers > 0, pin_memory=device.type == "cuda", generator=self.generator,
        )

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        self.generator.manual_seed(epoch_generator(self.seed, self.epoch).initial_seed())
        for images, indices in self.loader:
            targets = self.targets.gather(indices)
            yield images.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)


class _ImagesWithIndex(Dataset):
    """A source's dataset yielding (image, its index): the targets come from the container, so a
    sample's objects never go through the default collate (which cannot stack ragged ones)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.dataset[index][0], index


def _loader_sampler(dataset: Dataset, generator: torch.Generator, *, shuffle: bool,
                   sample_weights: torch.Tensor | None) -> Sampler[int]:
    """Weighted draws with replacement, a shuffle, or the dataset's order, all from ``generator``."""
    if sample_weights is not None:
        return WeightedRandomSampler(sample_weights, len(sample_weights), replacement=True, generator=generator)
    return RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)


def default_num_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def make_batches(source: Source, batch_size: int, device: torch.device, *, train: bool, seed: int = 0,
                 num_workers: int | None = None, sample_weights: torch.Tensor | None = None,
                 shard: tuple[int, int] = (0, 1)) -> DeviceBatches | LoaderBatches:
    """Training batches shuffle and drop a ragged last batch; evaluation batches keep order and every sample.

    ``sample_weights`` (training only; one per sample, e.g. ``regularize.class_balance.sample_weights``)
    replace the shuffle with draws in proportion to them: class-balanced sampling. ``shard``
    (rank, world size): this rank's share of every global training batch (``DeviceBatches``).
    """
    if isinstance(source, InMemory):
        return DeviceBatches(source, batch_size, device, shuffle=train, drop_last=train, seed=seed,
                             sample_weights=sample_weights, shard=shard)
    if shard[1] > 1:
        raise ConfigError("data read from disk by DataLoader workers is not sharded over processes yet; "
                         "hold it in memory (raise memory_limit_gb) to train it under torchrun")
    return LoaderBatches(source, batch_size, device, shuffle=train, drop_last=train, seed=seed,
                         num_workers=num_workers, sample_weights=sample_weights)


class Normalizer:
    """Raw pixels (uint8 or float) -> normalized float32 on the device, optionally channels_last.

    One fused multiply-add per pixel: x * (scale / std) + (offset - mean) / std. Augmentation works in
    between, on pixels in [0, 1]-like units: ``unit`` goes there, ``standardize`` the rest of the way.
    """

    def __init__(self, params: DataParams, device: torch.device, channels_last: bool = False):
        std = torch.tensor(params.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        mean = torch.tensor(params.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale, self.offset = params.pixel_scale, params.pixel_offset
        self.gain = params.pixel_scale / std
        self.bias = (params.pixel_offset - mean) / std
        self.inv_std = 1.0 / std
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = torch.addcmul(self.bias, images.to(torch.float32), self.gain)
        return out.contiguous(memory_format=self.memory_format)

    def unit(self, images: torch.Tensor) -> torch.Tensor:
        """Raw pixels -> float32 in [0, 1] units (stored value * pixel_scale + pixel_offset)."""
        return images.to(torch.float32) * self.scale + self.offset

    def standardize(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1]-like pixels (from ``unit``) -> the model's input: (x - mean) / std."""
        out = torch.addcmul(self.bias, images, self.inv_std)
        return out.contiguous(memory_format=self.memory_format)
