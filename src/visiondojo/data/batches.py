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
from torch.utils.data import DataLoader, Dataset, Sampler

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


class BatchOrder(Sampler[list[int]]):
    """Which samples each batch holds, epoch by epoch: the one ordering both batchers follow.

    Training (``shuffle``) takes a fresh permutation per epoch, a pure function of (seed, epoch), so
    a resumed run replays it exactly; with ``sample_weights`` each epoch instead draws N indices with
    replacement in proportion to them (class-balanced sampling) and keeps its N samples and so its
    number of steps. Evaluation keeps the data's order and every sample.

    ``shard = (rank, world_size)``: this process's part under a process group. In training
    ``batch_size`` is the global batch and the rank takes its share of each: the same epoch order
    as one process, every sample in exactly one rank's share, every rank the same number of steps
    (a ragged last batch is dropped: it would not split), so data-parallel training steps as one
    process with the global batch would. A global batch that does not divide by the world size
    (a plan replayed on another number of processes) is split into shares one sample apart, and
    ``share_weight`` (share x world size / global batch) weights the rank's mean loss so that
    DDP's plain average of the ranks' gradients is still the global batch's mean. In evaluation each
    rank takes a contiguous block, nothing padded or dropped: the metrics reduced over the ranks
    are those of one process, and the ranks' outputs in rank order are in data order.

    As a ``Sampler`` (a DataLoader's ``batch_sampler``) it yields lists of indices; ``DeviceBatches``
    reads ``order()`` and ``spans()`` instead and slices its device tensors without Python per sample.
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, drop_last: bool, seed: int = 0,
                 sample_weights: torch.Tensor | None = None, shard: tuple[int, int] = (0, 1)):
        self.rank, self.world_size = shard
        if shuffle and batch_size < self.world_size:
            raise ConfigError(f"optimization.batch_size: a global batch of {batch_size} cannot be shared by "
                              f"{self.world_size} processes; pin it to at least {self.world_size}, or start fewer")
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        base, extra = divmod(batch_size, self.world_size) if shuffle else (batch_size, 0)
        self.share = base + (self.rank < extra)
        self.offset = self.rank * base + min(self.rank, extra) if shuffle else 0
        self.drop_last = (drop_last and n > batch_size) or (shuffle and self.world_size > 1)
        self.sample_weights = _checked_sample_weights(sample_weights, n, shuffle=shuffle)
        self.epoch = self.start_step = 0
        # Evaluation: this rank's contiguous block of the data.
        self.first = self.rank * n // self.world_size if not shuffle else 0
        self.last = (self.rank + 1) * n // self.world_size if not shuffle else n

    def __len__(self) -> int:
        n = self.last - self.first
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Yield epoch ``epoch`` from its batch ``start_step`` on (a checkpoint taken mid-epoch)."""
        self.epoch, self.start_step = epoch, start_step

    @property
    def share_weight(self) -> float:
        """The weight of this rank's mean training loss (1 unless the shares differ; see above)."""
        return self.share * self.world_size / self.batch_size if self.shuffle else 1.0

    def order(self) -> torch.Tensor | None:
        """This epoch's sample indices (on the CPU), or None for the data's own order."""
        if not self.shuffle:
            return None
        generator = epoch_generator(self.seed, self.epoch)
        if self.sample_weights is None:
            return torch.randperm(self.n, generator=generator)
        return torch.multinomial(self.sample_weights, self.n, replacement=True, generator=generator)

    def spans(self) -> Iterator[tuple[int, int]]:
        """(start, end) of each of this rank's batches: positions in ``order()`` (or in the data)."""
        for step in range(self.start_step, len(self)):
            start = self.first + step * self.batch_size + self.offset
            yield start, min(start + self.share, self.last)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order()
        for start, end in self.spans():
            yield list(range(start, end)) if order is None else order[start:end].tolist()


class _Batcher:
    """What both batchers answer from their ``BatchOrder``."""

    batches: BatchOrder

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.batches.set_epoch(epoch, start_step)

    @property
    def share_weight(self) -> float:
        return self.batches.share_weight


class DeviceBatches(_Batcher):
    """Slices of one device-resident tensor, in ``BatchOrder``'s order: one index tensor per
    epoch moved to the device, no per-sample Python."""

    def __init__(self, source: InMemory, batch_size: int, device: torch.device, *,
                 shuffle: bool, drop_last: bool, seed: int = 0, sample_weights: torch.Tensor | None = None,
                 shard: tuple[int, int] = (0, 1)):
        self.batches = BatchOrder(len(source.targets), batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed,
                                  sample_weights=sample_weights, shard=shard)
        self.images = source.images.to(device, non_blocking=True)
        self.targets = source.targets.to(device, non_blocking=True)

    def __iter__(self) -> Iterator[Batch]:
        order = self.batches.order()
        order = None if order is None else order.to(self.images.device)
        for start, end in self.batches.spans():
            index = slice(start, end) if order is None else order[start:end]
            yield self.images[index], self.targets.gather(index)


class LoaderBatches(_Batcher):
    """A DataLoader with persistent workers, its batches drawn from a ``BatchOrder``."""

    def __init__(self, source: Streamed, batch_size: int, device: torch.device, *,
                 shuffle: bool, drop_last: bool, seed: int = 0, num_workers: int | None = None,
                 sample_weights: torch.Tensor | None = None, shard: tuple[int, int] = (0, 1)):
        self.device = device
        self.targets = source.targets
        self.batches = BatchOrder(len(source), batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed,
                                  sample_weights=sample_weights, shard=shard)
        self.generator = torch.Generator()
        workers = default_num_workers() if num_workers is None else num_workers
        # The loader draws its workers' base seed from ``generator`` (reseeded per epoch), never
        # from the global RNG, so the model's random stream is the same in a resumed run.
        self.loader = DataLoader(
            _ImagesWithIndex(source.dataset), batch_sampler=self.batches, num_workers=workers,
            persistent_workers=workers > 0, pin_memory=device.type == "cuda", generator=self.generator,
        )

    def __iter__(self) -> Iterator[Batch]:
        self.generator.manual_seed(epoch_generator(self.batches.seed, self.batches.epoch).initial_seed())
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


def default_num_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def make_batches(source: Source, batch_size: int, device: torch.device, *, train: bool, seed: int = 0,
                 num_workers: int | None = None, sample_weights: torch.Tensor | None = None,
                 shard: tuple[int, int] = (0, 1)) -> DeviceBatches | LoaderBatches:
    """Training batches shuffle and drop a ragged last batch; evaluation batches keep order and every sample.

    ``sample_weights`` (training only; one per sample, e.g. ``regularize.class_balance.sample_weights``)
    replace the shuffle with draws in proportion to them: class-balanced sampling. ``shard``
    (rank, world size): this process's part of the data under a process group (``BatchOrder``).
    """
    if isinstance(source, InMemory):
        return DeviceBatches(source, batch_size, device, shuffle=train, drop_last=train, seed=seed,
                             sample_weights=sample_weights, shard=shard)
    return LoaderBatches(source, batch_size, device, shuffle=train, drop_last=train, seed=seed,
                         num_workers=num_workers, sample_weights=sample_weights, shard=shard)


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
