"""Fit a model to the data: input channels of the first conv, output size of the classifier head.

The first layer is the first ``Conv2d`` in module order; the head is the last ``Linear`` (or a
1x1 ``Conv2d`` classifier, as in SqueezeNet) in module order. After any change a dry forward
pass checks the result, so a wrong guess is an error, never a silently broken model.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import torch
from torch import nn

from ..errors import ModelError


def _set_module(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def adapt_model(model: nn.Module, in_channels: int, num_outputs: int, *, also_fits: Collection[int] = ()) -> list[str]:
    """Change ``model`` in place; return a sentence per change.

    A head whose width is in ``also_fits`` is left alone: binary data fits a head of 2 outputs
    (trained as a 2-class softmax) as well as one of 1, and replacing a fitting head would throw
    away its weights.
    """
    changes = adapt_input(model, in_channels)
    head = find_head(model)
    if head is None:
        raise ModelError("cannot find the classifier head (no nn.Linear in the model); build the model "
                         f"with {num_outputs} outputs yourself")
    name, layer = head
    fits = {num_outputs, *also_fits}
    if isinstance(layer, nn.Linear) and layer.out_features not in fits:
        _set_module(model, name, nn.Linear(layer.in_features, num_outputs, bias=layer.bias is not None))
        changes.append(f"classifier head {name}: {layer.out_features} -> {num_outputs} outputs")
    elif isinstance(layer, nn.Conv2d) and layer.out_channels not in fits:
        _set_module(model, name, nn.Conv2d(layer.in_channels, num_outputs, layer.kernel_size, layer.stride,
                                           layer.padding, bias=layer.bias is not None))
        changes.append(f"classifier head {name}: {layer.out_channels} -> {num_outputs} outputs")
    return changes


def adapt_input(model: nn.Module, in_channels: int) -> list[str]:
    """Refit the first ``Conv2d`` (module order) to ``in_channels``; return a sentence per change."""
    first = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is None or first[1].in_channels == in_channels:
        return []
    name, conv = first
    if conv.groups != 1:
        raise ModelError(f"cannot adapt input channels of grouped conv {name!r}")
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, 1, conv.bias is not None, conv.padding_mode)
    with torch.no_grad():
        # Keep what the filters respond to: average over the old input channels, repeated.
        mean = conv.weight.mean(dim=1, keepdim=True)
        new.weight.copy_(mean.repeat(1, in_channels, 1, 1) * (conv.in_channels / in_channels))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    _set_module(model, name, new)
    return [f"input layer {name}: {conv.in_channels} -> {in_channels} input channels"]


def dry_forward(model: nn.Module, channels: int, height: int, width: int,
                forward: Callable[[nn.Module, torch.Tensor], Any] | None, errors: tuple[type[Exception], ...],
                what: str, hint: str) -> Any:
    """``forward(model, two blank images)`` (``model(x)`` without one) in eval mode without grad,
    the model's mode restored; an exception of ``errors`` becomes a ModelError naming ``what``
    failed on that input size, with ``hint``."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            blank = torch.zeros(2, channels, height, width, device=device)
            return forward(model, blank) if forward is not None else model(blank)
    except errors as exc:
        raise ModelError(f"the {what} fails on {channels}x{height}x{width} inputs ({str(exc).splitlines()[0]}); "
                         f"{hint}") from None
    finally:
        model.train(was_training)


def check_detections(model: nn.Module, channels: int, height: int, width: int,
                     forward: Callable[[nn.Module, torch.Tensor], Any]) -> None:
    """Dry evaluation forward of two blank images through the detection task's ``forward``:
    raises ModelError unless the model answers torchvision's detection protocol (one dict of
    ``boxes``, ``scores`` and ``labels`` per image)."""
    out = dry_forward(model, channels, height, width, forward,
                      (RuntimeError, TypeError, ValueError, AttributeError, IndexError, KeyError), "detector",
                      "a detector must follow torchvision's protocol: model(list of images) -> list of "
                      "{'boxes', 'scores', 'labels'}")
    keys = {"boxes", "scores", "labels"}
    if not isinstance(out, list) or len(out) != 2 or not all(isinstance(d, dict) and keys <= set(d) for d in out):
        raise ModelError(
            f"the model returned {type(out).__name__} for 2 images; a detector must follow torchvision's "
            "protocol: in eval mode model(list of images) -> one {'boxes', 'scores', 'labels'} dict per image"
        )


def check_masks(model: nn.Module, channels: int, height: int, width: int, num_classes: int,
                forward: Callable[[nn.Module, torch.Tensor], Any]) -> None:
    """Dry evaluation forward of two blank images through the segmentation task's ``forward``:
    raises ModelError unless it gives (2, num_classes, height, width) logits."""
    out = dry_forward(model, channels, height, width, forward, (RuntimeError, TypeError, ValueError, KeyError),
                      "segmentation model", "it must return (N, K, H, W) logits or a dict with 'out'")
    if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[1] != num_classes:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"the model outputs {shape} for a batch of 2 but the masks need (2, {num_classes}, H, W) "
                         f"logits, one channel per class; build it for {num_classes} classes")


def find_head(model: nn.Module) -> tuple[str, nn.Module] | None:
    """(qualified name, module) of the classifier head: the last Linear, else the last 1x1 conv."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1]
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    return convs[-1] if convs else None


def check_output(model: nn.Module, channels: int, height: int, width: int, num_outputs: int, *,
                 also_fits: Collection[int] = (),
                 forward: Callable[[nn.Module, torch.Tensor], Any] | None = None) -> int:
    """Dry forward of two blank images; return the model's output width.

    ``forward`` is the task's evaluation forward (``Task.forward_eval``): it reads the model's
    output in the task's own form (a dict's logits, say); without it, ``model(x)``.

    Raises ModelError unless the output is (2, num_outputs) or (2, w) for a ``w`` in ``also_fits``
    (binary data: 2, a 2-class softmax). Returning the width lets the caller fit the task to the
    model from this one forward pass.
    """
    out = dry_forward(model, channels, height, width, forward, (RuntimeError,), "model",
                      "set adapt: true to fit its input channels, or resize: [H, W] for a larger input size")
    if isinstance(out, (tuple, list)):
        out = out[0]
    fits = [num_outputs, *(w for w in also_fits if w != num_outputs)]
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] not in fits:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        needs = " or ".join(f"(2, {w}) ({w} logit{'s' if w != 1 else ''})" for w in fits)
        raise ModelError(
            f"the model outputs {shape} for a batch of 2 but the data needs {needs}; "
            "set adapt: true (Python: adapt=True) to replace the classifier head"
        )
    return int(out.shape[1])
