"""Bring the user's model and data into shape once: sources, split, inspection, task, fitted model."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import builtin
from .data.inspect import check_geometry, check_targets, inspect_data
from .data.sources import DataOptions, Source, align_classes, as_source
from .data.split import validation_split
from .errors import DataError, ModelError
from .models import adapt_for, build_for, check_detections, check_masks, check_output
from .plan import DataParams, ModelParams
from .tasks import Task, make_task


@dataclass
class Prepared:
    train: Source
    val: Source
    test: Source | None
    data: DataParams
    task: Task
    model: nn.Module
    model_params: ModelParams
    options: DataOptions
    evidence: dict[str, str] = field(default_factory=dict)
    """Why a data or model field is what it is (plan.evidence keys), for choices made here."""


SOFTMAX_HEAD = ("binary data, and the model has 2 outputs: trained as a 2-class softmax (cross-entropy); "
                "a model with 1 output keeps the sigmoid")
SIGMOID_HEAD = ("binary data, and the model has 1 output: one sigmoid logit (binary cross-entropy); "
                "a model with 2 outputs would train as a 2-class softmax")


def model_spec(model: Any) -> str:
    if isinstance(model, str):
        return model
    return f"python:{type(model).__module__}.{type(model).__qualname__}"


def prepare(model: nn.Module | str | None, train_data: Any, val_data: Any = None, test_data: Any = None, *,
            options: DataOptions, adapt: bool = False, seed: int = 0, model_kwargs: dict | None = None,
            known: DataParams | None = None, spec: str | None = None) -> Prepared:
    """Adapt, split and inspect the data, then build/fit the model to it.

    ``known`` (from a saved plan) replaces inspection so a replay uses the very same statistics.
    """
    if train_data is None:
        raise DataError("train_data: no training data given")
    train = as_source(train_data, options, role="train_data")
    if test_data is None and isinstance(train_data, str) and train_data.partition(":")[0] in builtin.NAMES \
            and not train_data.endswith(":test"):
        test_data = f"{train_data.partition(':')[0]}:test"
    if val_data is None:
        if len(train) < 2:
            raise DataError(f"{train.origin}: 1 sample is too few to hold out validation data; "
                            "pass more images, or validation data as val_data")  # as_source refused 0
        train, val = validation_split(train, options.val_fraction, seed)
    else:
        val = as_source(val_data, options, role="val_data", default_split="val")
    if len(train) < 2:  # a batch of one: BatchNorm has no statistics, a step no average
        held_out = " after holding out validation data" if val_data is None else ""
        raise DataError(f"{train.origin}: only {len(train)} training sample{held_out}; a batch needs two or more "
                        "(BatchNorm has no statistics of one): pass more images")
    test = as_source(test_data, options, role="test_data", default_split="test") if test_data is not None else None

    data = copy.deepcopy(known) if known is not None else inspect_data(train, options)
    data.train_size, data.val_size = len(train), len(val)
    data.val_fraction = options.val_fraction
    data.box_format = options.box_format
    data.sources = {role: str(value) for role, value in
                    (("train", train_data), ("val", val_data), ("test", test_data)) if isinstance(value, (str, Path))}
    for source in (train, val, test):
        if source is not None:
            align_classes(source, data.class_names)
            check_targets(source, data.task, data.num_classes)
            check_geometry(source, data)

    built = _build_model(model, spec, data, seed, model_kwargs)
    changes, evidence = _fit_model(built, data, adapt=adapt, replay=known is not None)
    params = ModelParams(spec=model_spec(model if model is not None else spec), kwargs=dict(model_kwargs or {}),
                         adapt=adapt, changes=changes, num_parameters=sum(p.numel() for p in built.parameters()))
    return Prepared(train, val, test, data, make_task(data), built, params, options, evidence)


def _build_model(model: nn.Module | str | None, spec: str | None, data: DataParams, seed: int,
                 model_kwargs: dict | None) -> nn.Module:
    """The user's module as it is, or one built from a spec (or the plan's ``spec``) for the data."""
    if model is None:
        if spec is None:
            raise ModelError("model: no model given; pass an nn.Module or a spec such as 'fmnist-resnet'")
        model = spec
    if isinstance(model, nn.Module):
        return model
    if not isinstance(model, str):
        raise ModelError(f"model: expected an nn.Module or a spec string, got {type(model).__name__}")
    torch.manual_seed(seed)  # the initial weights are part of what a plan + seed reproduce
    if model.startswith("python:"):
        raise ModelError(f"this plan was made with a model passed from Python ({model}); pass that model again")
    return build_for(model, data, model_kwargs)


def _fit_model(model: nn.Module, data: DataParams, *, adapt: bool, replay: bool) -> tuple[list[str], dict[str, str]]:
    """Adapt ``model`` if asked, check its output with one dry forward, and fit the task to its head.

    Binary data fits a head of 1 output (a sigmoid) or of 2: ``nn.Linear(features, 2)`` with
    cross-entropy is how most people build a binary classifier, so such a model trains as a 2-class
    softmax instead of being refused. This is the one place the task follows the model: ``data.task``
    becomes ``multiclass`` (2 classes), so training, replay, evaluation, prediction and loading all
    read a 2-class softmax from the plan. A replay (``replay``) keeps its plan's task as it is.
    Returns the adapt changes and the evidence for the task.
    """
    binary = data.task == "binary" and not replay
    also_fits = (2,) if binary else ()
    changes = adapt_for(model, data, also_fits=also_fits) if adapt else []
    if data.task == "detection":  # the head is the detector's own: num_classes went to its builder
        check_detections(model, data.channels, data.height, data.width, make_task(data).forward_eval)
        return changes, {}
    if data.task == "segmentation":
        check_masks(model, data.channels, data.height, data.width, data.num_classes, make_task(data).forward_eval)
        return changes, {}
    for change in changes:
        warnings.warn(f"adapt: {change}", stacklevel=4)
    outputs = check_output(model, data.channels, data.height, data.width, data.num_outputs, also_fits=also_fits,
                           forward=make_task(data).forward_eval)
    if not binary:
        return changes, {}
    if outputs == 2:
        data.task = "multiclass"
        return changes, {"data.task": SOFTMAX_HEAD}
    return changes, {"data.task": SIGMOID_HEAD}


def options_from_plan(data: DataParams, base: DataOptions | None = None) -> DataOptions:
    """DataOptions that reproduce a plan's view of the data (task, classes, resize, split)."""
    options = copy.copy(base) if base is not None else DataOptions()
    options.task = data.task
    options.num_classes = data.num_classes
    options.class_names = list(data.class_names) or None
    options.resize = tuple(data.resize) if data.resize else None  # type: ignore[assignment]
    options.val_fraction = data.val_fraction
    options.box_format = data.box_format
    return options
