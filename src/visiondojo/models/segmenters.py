"""Segmentation models by name, built offline for the data's classes and channels.

- ``small-unet``: the built-in SmallUNet (``small_unet.py``) for 2-core CPUs;
- ``torchvision:<segmentation model>`` (``lraspp_mobilenet_v3_large``, ``deeplabv3_*``,
  ``fcn_*``): built with ``weights=None`` **and** ``weights_backbone=None`` (the builders default
  the backbone to ImageNet weights and would download), ``num_classes`` from the data, and the
  first convolution refitted when the data is not RGB. Their dict output (``out``, ``aux``) is
  read by the segmentation task.
- ``smp:<architecture>`` (``Unet``, ``FPN``, ``DeepLabV3Plus``, ...): segmentation-models-pytorch,
  the optional ``smp`` extra, through its ``create_model`` with ``encoder_weights=None`` (its default
  downloads ImageNet weights), ``in_channels`` and ``classes`` from the data; the encoder is a
  keyword (``model_kwargs={"encoder_name": "resnet18"}``; smp's default is ``resnet34``).
"""

from __future__ import annotations

from typing import Any, Callable

import torchvision
from torch import nn

from ..errors import ModelError
from .adapt import adapt_input
from .small_unet import SmallUNet

BUILTIN_SEGMENTERS: dict[str, Callable[..., nn.Module]] = {"small-unet": SmallUNet}


def segmentation_models() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models.segmentation))


def build_segmenter(spec: str, num_classes: int, channels: int, kwargs: dict[str, Any] | None = None) -> nn.Module | None:
    """A segmentation model for ``num_classes`` on ``channels``-channel images, or None when
    ``spec`` names none this module builds (a ``timm:`` or ``package.module:factory`` spec)."""
    kwargs = dict(kwargs or {})
    if spec in BUILTIN_SEGMENTERS:
        return BUILTIN_SEGMENTERS[spec](num_classes, in_channels=channels, **kwargs)
    prefix, _, name = spec.partition(":")
    if prefix == "smp":
        return _build_smp(spec, name, num_classes, channels, kwargs)
    if prefix != "torchvision":
        return None
    if name not in segmentation_models():
        raise ModelError(f"model spec {spec!r}: torchvision has no segmentation model {name!r}; choose one of "
                         f"{', '.join(segmentation_models())}, or the built-in {', '.join(BUILTIN_SEGMENTERS)}")
    kwargs.setdefault("num_classes", num_classes)
    kwargs.setdefault("weights_backbone", None)
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    adapt_input(model, channels)
    return model


def _build_smp(spec: str, name: str, num_classes: int, channels: int, kwargs: dict[str, Any]) -> nn.Module:
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        raise ModelError(f"model spec {spec!r} needs segmentation-models-pytorch: pip install 'visiondojo[smp]'") from None
    architectures = {arch.lower(): arch for arch in smp.MODEL_ARCHITECTURES_MAPPING}
    if name.lower() not in architectures:
        raise ModelError(f"model spec {spec!r}: segmentation-models-pytorch has no architecture {name!r}; choose one of "
                         f"{', '.join(sorted(architectures))}")
    if kwargs.get("encoder_weights") is not None:
        raise ModelError(f"model spec {spec!r}: encoder_weights={kwargs['encoder_weights']!r} would download weights; "
                         "visiondojo trains without downloads (leave encoder_weights out, or pass your own module)")
    kwargs.update(encoder_weights=None, in_channels=channels, classes=num_classes)
    try:
        return smp.create_model(name, **kwargs)
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelError(f"model spec {spec!r} with {kwargs}: segmentation-models-pytorch refused it ({exc})") from None
