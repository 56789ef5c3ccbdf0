"""The backbone of a classifier, as self-supervised pretraining sees it: the input of one layer.

Pretraining needs the model's feature vector, not its logits. Rather than cut the model apart
(every architecture nests its head differently), we keep the user's module whole and read the
input of its *feature layer* with a forward pre-hook: by default the classifier head that
``models.adapt.find_head`` finds (the last ``nn.Linear``, else the last 1x1 conv), so the
features are exactly what the head will classify after pretraining. The projection head that
pretraining trains on top is a separate module owned by the pretraining code and never
registered in the user's model, so the model keeps its architecture and state_dict keys.
"""

from __future__ import annotations

import difflib
from types import TracebackType
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..errors import ModelError
from ..models.adapt import find_head

CANDIDATES = 5
"""Close module names an error message suggests for a misspelt ``feature_layer``."""


def find_feature_layer(model: nn.Module, override: str | None = None) -> str:
    """Qualified name of the module whose input is the feature vector.

    ``override`` (``ssl.feature_layer``) names it explicitly, for models whose head
    ``find_head`` would misidentify (e.g. a Linear inside an attention pooling after the
    backbone) or to pretrain a deeper cut of the network.
    """
    if override is not None:
        names = [name for name, _ in model.named_modules() if name]
        if override not in names:
            close = difflib.get_close_matches(override, names, n=CANDIDATES, cutoff=0.4)
            suggestion = (f"close matches: {', '.join(close)}" if close
                          else f"its last modules are {', '.join(names[-CANDIDATES:])}")
            raise ModelError(
                f"feature layer {override!r} is not a module of the model ({suggestion}); set ssl.feature_layer "
                "(Python: feature_layer=) to a name from model.named_modules() whose input is the feature vector"
            )
        return override
    head = find_head(model)
    if head is None:
        raise ModelError(
            "cannot find the model's classifier head (no nn.Linear or 1x1 conv) to take features from; set "
            "ssl.feature_layer (Python: feature_layer=) to the module whose input is the feature vector"
        )
    return head[0]


def pooled(features: torch.Tensor) -> torch.Tensor:
    """(N, D) features: a 4-D map (N, C, H, W) is averaged over space, anything else flattened."""
    if features.ndim == 4:
        return features.mean(dim=(2, 3))
    return features.flatten(1)


class FeatureTap:
    """Context manager that records the input of ``model``'s module ``layer`` on every forward.

    ``tap.features`` is the last forward's input to that module as (N, D), with its autograd
    graph kept so a loss on it trains everything before the layer. The hook is removed on exit,
    also when the body raises. A module called more than once per forward keeps its last input.
    """

    def __init__(self, model: nn.Module, layer: str):
        self.module = model.get_submodule(layer)
        self.layer = layer
        self._features: torch.Tensor | None = None
        self._handle: RemovableHandle | None = None

    def _record(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if not args or not isinstance(args[0], torch.Tensor):
            raise ModelError(f"feature layer {self.layer!r} is not called with a tensor; set ssl.feature_layer "
                             "(Python: feature_layer=) to a module whose input is the feature vector")
        self._features = pooled(args[0])

    def __enter__(self) -> "FeatureTap":
        self._handle = self.module.register_forward_pre_hook(self._record)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @property
    def features(self) -> torch.Tensor:
        if self._features is None:
            raise ModelError(f"feature layer {self.layer!r} was not called in the model's forward; set "
                             "ssl.feature_layer (Python: feature_layer=) to a module the forward pass uses")
        return self._features


def feature_dim(model: nn.Module, layer: str, channels: int, height: int, width: int) -> int:
    """Width D of the features at ``layer``: one dry forward of two blank images in eval mode."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FeatureTap(model, layer) as tap:
            model(torch.zeros(2, channels, height, width, device=device))
            return tap.features.shape[1]
    finally:
        model.train(was_training)
