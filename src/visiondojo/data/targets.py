"""Targets of any shape: one container that sources hold and batchers gather from.

- ``DenseTargets``: one fixed-shape target per sample in a single tensor: class indices (N,),
  multi-hot labels (N, K), masks (N, H, W). A batch of them is the tensor slice, exactly what the
  classification losses have always taken.
- ``RaggedTargets``: a variable number of objects per sample (boxes, their labels, later instance
  masks and keypoints): every field's values flat along the first dimension, plus per-sample
  offsets, as torch's nested and jagged layouts keep them. A batch of them is a ``RaggedBatch``:
  the objects of the batch flat, with the index of the image each belongs to, so the augmentation
  engine moves every box of a batch in one call (``augment.warp_boxes`` takes exactly that).

Both answer the questions that splitting, inspection and batching ask: ``len``, ``subset``,
``to(device)``, ``gather`` (a batch), ``class_counts`` and a ``stratify_key``. Nothing outside this
module indexes targets densely except the classification code that knows it holds class labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import torch

Index = Union[torch.Tensor, slice]
IGNORE_INDEX = 255
"""The mask value of pixels no loss or metric counts (Pascal VOC's borders; pixels a warp brought
in from outside the image)."""


@dataclass
class DenseTargets:
    """One fixed-shape target per sample, stacked: (N,) class ids, (N, K) multi-hot, (N, H, W) masks."""

    values: torch.Tensor

    def __len__(self) -> int:
        return len(self.values)

    def subset(self, indices: torch.Tensor) -> "DenseTargets":
        return DenseTargets(self.values[indices])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "DenseTargets":
        return DenseTargets(self.values.to(device, non_blocking=non_blocking))

    def gather(self, indices: Index) -> torch.Tensor:
        """The batch of samples ``indices`` (a slice for evaluation's in-order batches)."""
        return self.values[indices]

    def class_counts(self, num_classes: int, ignore_index: int | None = None) -> list[int]:
        """Samples per class (class ids), positives per label (multi-hot) or pixels per class (masks)."""
        values = self.values
        if values.ndim == 2 and values.is_floating_point():  # multi-hot
            return [int(c) for c in values.sum(dim=0).round().long()]
        flat = values.reshape(-1).long()
        if ignore_index is not None:
            flat = flat[flat != ignore_index]
        return torch.bincount(flat, minlength=num_classes)[:num_classes].tolist()

    def stratify_key(self) -> torch.Tensor | None:
        """Class ids stratify a split; multi-hot labels and masks have no single class per sample."""
        return self.values if self.values.ndim == 1 and not self.values.is_floating_point() else None


@dataclass
class RaggedBatch:
    """The objects of one batch: every field flat (M, ...), ``image`` (M,) the sample each belongs to."""

    fields: dict[str, torch.Tensor]
    image: torch.Tensor
    size: int
    """Samples in the batch (some may have no objects)."""

    def __len__(self) -> int:
        return self.size

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "RaggedBatch":
        return RaggedBatch({k: v.to(device, non_blocking=non_blocking) for k, v in self.fields.items()},
                           self.image.to(device, non_blocking=non_blocking), self.size)

    def replace(self, **fields: torch.Tensor) -> "RaggedBatch":
        return RaggedBatch({**self.fields, **fields}, self.image, self.size)

    def keep(self, mask: torch.Tensor) -> "RaggedBatch":
        """Only the objects where ``mask`` (M,) is true (boxes pushed out of the frame go, labels with them)."""
        return RaggedBatch({k: v[mask] for k, v in self.fields.items()}, self.image[mask], self.size)

    def chunk(self, chunks: int) -> list["RaggedBatch"]:
        """Consecutive groups of samples, sized as ``Tensor.chunk`` sizes them, so a batch of images
        and its targets split alike (the noise-scale estimator's micro-batches)."""
        step = -(-self.size // chunks)
        parts = []
        for start in range(0, self.size, step):
            stop = min(start + step, self.size)
            mine = (self.image >= start) & (self.image < stop)
            parts.append(RaggedBatch({k: v[mine] for k, v in self.fields.items()}, self.image[mine] - start,
                                     stop - start))
        return parts

    def per_image(self) -> list[dict[str, torch.Tensor]]:
        """One dict of fields per sample, in batch order: the form torchvision's detectors take."""
        order = torch.argsort(self.image, stable=True)
        counts = torch.bincount(self.image, minlength=self.size).tolist()
        split = {k: torch.split(v[order], counts) for k, v in self.fields.items()}
        return [{k: parts[i] for k, parts in split.items()} for i in range(self.size)]


@dataclass
class RaggedTargets:
    """Per-sample objects: each field's values flat (M_total, ...), sample i owning rows
    ``offsets[i]:offsets[i + 1]``. A ``labels`` field (int64 class ids) is what counts and
    stratifies; images without objects are valid."""

    fields: dict[str, torch.Tensor]
    offsets: torch.Tensor = field(default_factory=lambda: torch.zeros(1, dtype=torch.int64))

    def __post_init__(self) -> None:
        total = int(self.offsets[-1])
        for name, values in self.fields.items():
            if len(values) != total:
                raise ValueError(f"ragged field {name!r} has {len(values)} rows; the offsets say {total}")

    @classmethod
    def from_samples(cls, samples: list[dict[str, torch.Tensor]]) -> "RaggedTargets":
        """From one dict of fields per sample (every sample with the same field names)."""
        if not samples:
            raise ValueError("no samples")
        names = list(samples[0])
        counts = torch.tensor([len(s[names[0]]) for s in samples], dtype=torch.int64)
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
        return cls({k: torch.cat([torch.as_tensor(s[k]) for s in samples]) for k in names}, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def counts(self) -> torch.Tensor:
        """(N,) objects per sample."""
        return self.offsets.diff()

    def _rows(self, indices: Index) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of the samples ``indices``, in their order, and the batch position each belongs to."""
        if isinstance(indices, slice):
            indices = torch.arange(len(self), device=self.offsets.device)[indices]
        indices = torch.as_tensor(indices, dtype=torch.int64, device=self.offsets.device)
        counts = self.counts[indices]
        owner = torch.repeat_interleave(torch.arange(len(indices), device=indices.device), counts)
        first_row = torch.cumsum(counts, 0) - counts
        rows = self.offsets[indices][owner] + torch.arange(len(owner), device=indices.device) - first_row[owner]
        return rows, owner

    def subset(self, indices: torch.Tensor) -> "RaggedTargets":
        rows, _ = self._rows(indices)
        counts = self.counts[torch.as_tensor(indices, dtype=torch.int64)]
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64, device=counts.device), counts.cumsum(0)])
        return RaggedTargets({k: v[rows] for k, v in self.fields.items()}, offsets)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "RaggedTargets":
        return RaggedTargets({k: v.to(device, non_blocking=non_blocking) for k, v in self.fields.items()},
                             self.offsets.to(device, non_blocking=non_blocking))

    def gather(self, indices: Index) -> RaggedBatch:
        rows, owner = self._rows(indices)
        size = len(torch.arange(len(self))[indices]) if isinstance(indices, slice) else len(indices)
        return RaggedBatch({k: v[rows] for k, v in self.fields.items()}, owner, size)

    def class_counts(self, num_classes: int, ignore_index: int | None = None) -> list[int]:
        """Objects per class."""
        return torch.bincount(self.fields["labels"].long().cpu(), minlength=num_classes)[:num_classes].tolist()

    def stratify_key(self) -> torch.Tensor:
        """Per sample, the rarest class among its objects (``num_classes`` present + 1 for none):
        a split stratified on it keeps rare classes on both sides, as with one label per image."""
        labels = self.fields["labels"].long().cpu()
        empty = int(labels.max()) + 1 if len(labels) else 0
        rarity = torch.bincount(labels, minlength=empty)
        owner = torch.repeat_interleave(torch.arange(len(self)), self.counts.cpu())
        # Rarest first, the lower id on ties: one integer per object, the smallest wins per sample.
        rank = rarity[labels] * (empty + 1) + labels
        best = torch.full((len(self),), torch.iinfo(torch.int64).max, dtype=torch.int64)
        best.scatter_reduce_(0, owner, rank, reduce="amin")
        return torch.where(best == torch.iinfo(torch.int64).max, torch.tensor(empty), best % (empty + 1))


Targets = Union[DenseTargets, RaggedTargets]
BatchTargets = Union[torch.Tensor, RaggedBatch]


def as_targets(targets: "Targets | torch.Tensor") -> Targets:
    """A bare tensor (one target per sample) as ``DenseTargets``; containers pass through."""
    return DenseTargets(targets) if isinstance(targets, torch.Tensor) else targets
