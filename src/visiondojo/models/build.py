"""Build a model from a spec string: a built-in name, ``torchvision:NAME``, ``timm:NAME`` or ``module:factory``.

No weights are ever downloaded: torchvision and timm models are built with random weights.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from torch import nn

from ..errors import ModelError
from ..plan import DataParams
from .adapt import adapt_input, adapt_model
from .detectors import BUILTIN_DETECTORS, build_detector
from .fmnist_resnet import FMNISTResNet
from .segmenters import BUILTIN_SEGMENTERS, build_segmenter

BUILTIN: dict[str, Callable[..., nn.Module]] = {"fmnist-resnet": FMNISTResNet}


LIBRARY_PREFIXES = ("torchvision", "timm", "smp")
"""Spec prefixes that name a model of a library visiondojo depends on; anything else before a
colon is a module to import."""


def imports_code(spec: str) -> bool:
    """Whether building ``spec`` imports and calls code the spec itself names
    (``package.module:factory``): what a plan or config from someone else could point anywhere."""
    prefix, sep, _ = spec.partition(":")
    return bool(sep) and prefix not in LIBRARY_PREFIXES and prefix != "python"


def check_trusted(spec: str, source: str, trust_code: bool) -> None:
    """Refuse to build a code-importing ``spec`` read from ``source`` (a plan or config file)
    unless the user opted in: a file is data, and reading data must never run code."""
    if imports_code(spec) and not trust_code:
        raise ModelError(f"{source}: the model is {spec!r}, code that building it would import and run. Pass the "
                         "model yourself (model=...), or, if you trust where the file came from, "
                         "trust_code=True (CLI: --trust-code)")


def build_for(spec: str, data: DataParams, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """``spec`` built for ``data``'s task: a detector for boxes, a segmentation model for masks, else
    a classifier; a built-in of another task is refused with the ones that fit."""
    for task, (kind, builtins) in TASK_MODELS.items():
        if spec in builtins and data.task != task:
            raise ModelError(f"model spec {spec!r} is a {kind}; the data has {_labels(data.task)}: use "
                             f"{_models_for(data.task)}")
    if data.task == "detection":
        model = build_detector(spec, data.num_classes, data.channels, (data.height, data.width), kwargs)
    elif data.task == "segmentation":
        model = build_segmenter(spec, data.num_classes, data.channels, kwargs)
    else:
        return build_model(spec, data.num_outputs, data.channels, kwargs)
    if model is not None:
        return model
    if spec in BUILTIN:
        raise ModelError(f"model spec {spec!r} is a classifier; for {data.task} use {_models_for(data.task)}")
    return build_model(spec, data.num_outputs, data.channels, kwargs)  # a factory or timm spec: the user's model


TASK_MODELS: dict[str, tuple[str, dict[str, Callable[..., nn.Module]]]] = {
    "detection": ("detector", BUILTIN_DETECTORS), "segmentation": ("segmentation model", BUILTIN_SEGMENTERS)}
"""The built-in models that belong to one task, refused on the others' data."""


def _labels(task: str) -> str:
    return {"detection": "boxes", "segmentation": "masks"}.get(task, f"class labels ({task})")


def _models_for(task: str) -> str:
    if task in TASK_MODELS:
        extra = ", smp:<architecture> (segmentation-models-pytorch)" if task == "segmentation" else ""
        return f"{', '.join(TASK_MODELS[task][1])}, torchvision:<{task} model>{extra}"
    return f"a classifier such as {', '.join(BUILTIN)}"


def adapt_for(model: nn.Module, data: DataParams, *, also_fits: tuple[int, ...] = ()) -> list[str]:
    """Fit ``model`` to ``data`` in place (``adapt=True``); a sentence per change. A detector or a
    segmentation model gets its input channels refitted only: its head was built for the classes
    by its builder."""
    if data.task in ("detection", "segmentation"):
        return adapt_input(model, data.channels)
    return adapt_model(model, data.channels, data.num_outputs, also_fits=also_fits)


def build_model(spec: str, num_outputs: int, in_channels: int, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Instantiate ``spec``. Built-ins and timm models are built for the data's outputs and channels;
    torchvision and factory models get ``kwargs`` only (use ``adapt`` to fit them)."""
    kwargs = dict(kwargs or {})
    if spec in BUILTIN:
        kwargs.setdefault("num_classes", num_outputs)
        kwargs.setdefault("in_channels", in_channels)
        return BUILTIN[spec](**kwargs)
    prefix, sep, name = spec.partition(":")
    if not sep or not name:
        raise ModelError(
            f"model spec {spec!r}: use a built-in name ({', '.join(BUILTIN)}), torchvision:NAME, "
            "timm:NAME or package.module:factory"
        )
    if prefix == "torchvision":
        import torchvision

        try:
            return torchvision.models.get_model(name, weights=None, **kwargs)
        except ValueError:
            raise ModelError(f"model spec {spec!r}: torchvision has no model {name!r} "
                             "(see torchvision.models.list_models())") from None
    if prefix == "timm":
        try:
            import timm
        except ImportError:
            raise ModelError(f"model spec {spec!r} needs timm: pip install 'visiondojo[timm]'") from None
        if not timm.is_model(name):
            raise ModelError(f"model spec {spec!r}: timm has no model {name!r} (see timm.list_models())")
        kwargs.setdefault("num_classes", num_outputs)
        kwargs.setdefault("in_chans", in_channels)
        return timm.create_model(name, pretrained=False, **kwargs)
    try:
        module = importlib.import_module(prefix)
    except ImportError as exc:
        raise ModelError(f"model spec {spec!r}: cannot import {prefix!r} ({exc})") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ModelError(f"model spec {spec!r}: {prefix} has no callable {name!r}")
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ModelError(f"model spec {spec!r}: the factory returned a {type(model).__name__}, not an nn.Module")
    return model
