"""Turn arrays, tensors and PIL images into the (C, H, W) / (N, C, H, W) tensors visiondojo uses.

Layout rule: a 3-D batch is (N, H, W); a 4-D batch is channels-last (N, H, W, C) when the last
axis has 1, 3 or 4 entries and axis 1 does not, otherwise channels-first (N, C, H, W). Pixels
keep a compact dtype: uint8 stays uint8 (four times less memory than float); other integers in
[0, 255] become uint8; floats become float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import DataError

_CHANNEL_COUNTS = (1, 3, 4)


def to_tensor(array: Any, origin: str) -> torch.Tensor:
    """Numpy array or tensor -> tensor on CPU, without copying when possible."""
    if isinstance(array, torch.Tensor):
        return array.detach().cpu()
    if isinstance(array, np.ndarray):
        if array.dtype.kind in "US O".replace(" ", ""):
            raise DataError(f"{origin}: images must be numeric arrays, got dtype {array.dtype}")
        array = np.ascontiguousarray(array)
        if not array.flags.writeable:
            # torch cannot share a read-only buffer (it warns, and a write would be undefined): copy it.
            array = array.copy()
        return torch.from_numpy(array)
    hint = (": np.stack a list of same-sized images into one array, or pass images of several sizes as a Dataset "
            "or a folder (with resize)" if isinstance(array, (list, tuple)) else "")
    raise DataError(f"{origin}: expected a numpy array or a torch tensor, got {type(array).__name__}{hint}")


def batch_to_nchw(images: torch.Tensor, origin: str) -> torch.Tensor:
    """(N,H,W), (N,H,W,C) or (N,C,H,W) -> (N,C,H,W) in a compact dtype."""
    if images.ndim == 3:
        images = images.unsqueeze(1)
    elif images.ndim == 4:
        last_is_channel = images.shape[-1] in _CHANNEL_COUNTS
        first_is_channel = images.shape[1] in _CHANNEL_COUNTS
        if last_is_channel and not first_is_channel:
            images = images.permute(0, 3, 1, 2)
        elif not first_is_channel:
            raise DataError(
                f"{origin}: cannot tell the channel axis of shape {tuple(images.shape)}; "
                "pass images as (N,C,H,W) or (N,H,W,C) with C in 1, 3 or 4"
            )
    else:
        raise DataError(
            f"{origin}: images must be shaped (N,H,W), (N,H,W,C) or (N,C,H,W), got shape {tuple(images.shape)}"
        )
    return compact_dtype(images.contiguous(), origin)


def image_to_chw(image: Any, origin: str) -> torch.Tensor:
    """One image (PIL, array or tensor; HW, HWC or CHW) -> (C, H, W)."""
    if isinstance(image, Image.Image):
        return pil_to_chw(image)
    tensor = to_tensor(image, origin)
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
    elif tensor.ndim == 3:
        if tensor.shape[-1] in _CHANNEL_COUNTS and tensor.shape[0] not in _CHANNEL_COUNTS:
            tensor = tensor.permute(2, 0, 1)
    else:
        raise DataError(f"{origin}: an image must be HW, HWC or CHW, got shape {tuple(tensor.shape)}")
    return compact_dtype(tensor.contiguous(), origin)


def pil_to_chw(image: Image.Image, channels: int | None = None) -> torch.Tensor:
    """PIL image -> uint8 (C,H,W); ``channels`` 1 or 3 forces grayscale or RGB."""
    mode = {1: "L", 3: "RGB"}.get(channels or 0)
    if mode is None:
        mode = "L" if image.mode in ("1", "L", "I", "I;16", "F") else "RGB"
    array = np.asarray(image.convert(mode))
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def compact_dtype(images: torch.Tensor, origin: str) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return images
    if images.dtype == torch.bool:
        return images.to(torch.uint8) * 255
    if not images.dtype.is_floating_point:
        if images.numel() == 0:  # nothing to range over (empty data is refused by the caller)
            return images.to(torch.uint8)
        low, high = int(images.min()), int(images.max())
        if low >= 0 and high <= 255:
            return images.to(torch.uint8)
        return images.to(torch.float32)
    return images.to(torch.float32)


def check_finite(images: torch.Tensor, origin: str, offset: int = 0) -> None:
    """Raise DataError naming the first sample with a NaN or infinite pixel."""
    if not images.dtype.is_floating_point:
        return
    bad = ~torch.isfinite(images.flatten(1)).all(dim=1)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0]) + offset
        raise DataError(
            f"{origin}: sample {first} has NaN or infinite pixels ({int(bad.sum())} samples in all); "
            "clean or drop them before training"
        )


def resize_batch(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize (N,C,H,W) with antialiasing, keeping the input dtype."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    resized = F.interpolate(images.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    if images.dtype == torch.uint8:
        return resized.round_().clamp_(0, 255).to(torch.uint8)
    return resized
