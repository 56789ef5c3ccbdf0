"""Detectors from a spec: the built-in ``small-fcos`` and torchvision's detection models by name.

torchvision's builders need three things set that their defaults get wrong for training from
scratch on the user's data, offline:

- ``weights=None`` **and** ``weights_backbone=None``: the builders default the backbone to
  ImageNet weights and would download them. Without pretrained weights they also keep ordinary
  (trainable) BatchNorm instead of frozen statistics, and train every backbone layer.
- ``num_classes``: the data's classes plus the background class 0 that torchvision's detectors
  reserve (``BACKGROUND``); visiondojo's detection task shifts labels by it on the way in and out.
- their internal resize (``min_size``/``max_size``, 800/1333 by default, which would upscale
  128-pixel images six-fold) set to the training size, and their normalization to the identity,
  because visiondojo's batches arrive at that size and standardized. SSD models resize to their
  fixed design size (300 or 320) whatever the data: their anchors are laid out for it.

Images with other than 3 channels get the backbone's first convolution refitted (``adapt``'s rule:
its filters averaged over the old channels).
"""

from __future__ import annotations

from typing import Any

import torchvision
from torch import nn

from ..errors import ModelError
from .adapt import adapt_input
from .small_fcos import small_fcos

BACKGROUND = 1
"""Label offset: torchvision's detectors reserve class 0 for the background, so a detector for K
classes is built with K + 1, and the detection task (``tasks.detection``) shifts labels by it."""

BUILTIN_DETECTORS = {"small-fcos": small_fcos}
FIXED_SIZE = ("ssd300_vgg16", "ssdlite320_mobilenet_v3_large")
"""torchvision detectors that resize every image to their own design size."""


def detection_models() -> list[str]:
    return torchvision.models.list_models(module=torchvision.models.detection)


def build_detector(spec: str, num_classes: int, channels: int, size: tuple[int, int],
                   kwargs: dict[str, Any] | None = None) -> nn.Module | None:
    """A detector for ``num_classes`` object classes on (``channels``, *``size``) images, or None
    when ``spec`` names no detector this module builds (a ``package.module:factory`` spec)."""
    kwargs = dict(kwargs or {})
    if spec in BUILTIN_DETECTORS:
        return BUILTIN_DETECTORS[spec](num_classes + BACKGROUND, channels, size, **kwargs)
    prefix, _, name = spec.partition(":")
    if prefix != "torchvision":
        return None
    if name not in detection_models():
        raise ModelError(f"model spec {spec!r}: torchvision has no detection model {name!r}; choose one of "
                         f"{', '.join(detection_models())}, or the built-in {', '.join(BUILTIN_DETECTORS)}")
    kwargs.setdefault("num_classes", num_classes + BACKGROUND)
    kwargs.setdefault("weights_backbone", None)
    kwargs.setdefault("image_mean", [0.0] * 3)
    kwargs.setdefault("image_std", [1.0] * 3)
    if name not in FIXED_SIZE:
        kwargs.setdefault("min_size", min(size))
        kwargs.setdefault("max_size", max(size))
    if "keypoint" in name or "maskrcnn" in name:
        raise ModelError(f"model spec {spec!r}: {name} needs instance masks or keypoints, which this version "
                         "does not train; use a box detector (fasterrcnn_*, retinanet_*, fcos_*, ssd*)")
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    if channels != 3:
        model.transform.image_mean = [0.0] * channels
        model.transform.image_std = [1.0] * channels
        adapt_input(model, channels)
    return model
