"""The Plan: every hyperparameter a run uses, as a plain serializable value.

``find_params`` fills a Plan; ``train`` does exactly what the Plan says (plus the seed), so a
plan saved as YAML can be read, edited by hand and replayed. Each choice may carry a line of
evidence in ``Plan.evidence`` (keyed by the dotted field name) so the report can say why.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

TASKS = ("binary", "multiclass", "multilabel", "detection", "segmentation")
MOVED = {"optimization.weight_decay": "regularization.weight_decay"}
"""Plan fields that moved between sections, so an older plan.yaml gets a useful error."""


@dataclass
class DataParams:
    """What inspection learned about the data (every field can be overridden)."""

    task: str = "multiclass"
    num_classes: int = 2
    channels: int = 1
    height: int = 28
    width: int = 28
    mean: list[float] = field(default_factory=lambda: [0.5])
    std: list[float] = field(default_factory=lambda: [0.5])
    pixel_scale: float = 1.0 / 255.0
    """Factor that maps stored pixel values to [0, 1] units before mean/std (1/255 for bytes)."""
    pixel_offset: float = 0.0
    """Added after ``pixel_scale``: float data stored in another range (standardized, or
    min-max) is mapped to [0, 1], the range the augmentation ops work in."""
    class_names: list[str] = field(default_factory=list)
    class_counts: list[int] = field(default_factory=list)
    train_size: int = 0
    val_size: int = 0
    resize: list[int] | None = None
    """[height, width] every image is resized to, or None to keep the stored size."""
    val_fraction: float = 0.1
    """Share of the training data held out for validation when no validation data is given."""
    ignore_index: int = 255
    """Segmentation: the mask value of pixels no loss or metric counts (borders, unknown)."""
    box_format: str | None = None
    """Detection: the box format the user declared (xyxy, xywh, cxcywh), so a replay reads boxes alike."""
    objects: dict[str, Any] = field(default_factory=dict)
    """Detection: what inspection found in the training boxes (objects per image, COCO size
    classes, tiny boxes) and how they were read (format, normalized, clipped). Segmentation:
    ``images_per_class`` (the images whose mask shows each class; ``class_counts`` are pixels)
    and, for mask files, how they were read. Empty otherwise."""
    sources: dict[str, str] = field(default_factory=dict)
    """Where the data came from (role -> folder, CSV or built-in name) when given by name, so
    ``visiondojo train --plan plan.yaml`` can replay a run without its config."""

    @property
    def num_outputs(self) -> int:
        """Logits the model must produce: one for binary, one per class otherwise (a detector
        adds its background class itself)."""
        return 1 if self.task == "binary" else self.num_classes


@dataclass
class ModelParams:
    spec: str = "fmnist-resnet"
    """Built-in name, ``torchvision:NAME``, ``timm:NAME``, ``package.module:factory``, or ``python:CLASS`` for a module passed from Python."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    adapt: bool = False
    changes: list[str] = field(default_factory=list)
    num_parameters: int = 0


@dataclass
class OptimizationParams:
    optimizer: str = "adamw"
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    momentum: float = 0.9
    batch_size: int = 256
    epochs: int = 30
    warmup_epochs: float = 1.0
    schedule: str = "cosine"
    """``cosine`` (linear warmup, then cosine to ``min_lr_ratio * lr``), ``constant``, or ``plateau``
    (constant, divided by 5 when validation stops improving; early stopping ends the run)."""
    min_lr_ratio: float = 0.0
    grad_clip_norm: float | None = None
    early_stopping_patience: int | None = 10
    budget_s: float | None = None
    bn_momentum: float | None = None
    """BatchNorm momentum during training (None: leave the model's own); restored afterwards."""
    keep: str = "last"
    """Which weights the run returns: ``last``, those of its final epoch (a run that early stopping
    ended, or whose last epoch the budget cut short, returns its best validated epoch instead), or
    ``best``, those of the epoch with the best validation metric."""


@dataclass
class AugmentOp:
    """One augmentation of the policy: op name, magnitude in [0, 1], probability per sample."""

    name: str
    magnitude: float = 0.5
    p: float = 1.0
    group: str = ""
    """Ops sharing a group form a menu: each sample gets exactly one of them (with probability p,
    the first op's), chosen uniformly. Empty: the op stands alone."""


CLASS_BALANCE = ("none", "reweight", "resample")


@dataclass
class RegularizationParams:
    """Everything that regularizes a run; saved, loaded and replayed as one policy.

    Magnitudes are in [0, 1] and map to physical units per op (see ``visiondojo.augment``);
    0 is always an exact no-op.
    """

    augment: list[AugmentOp] = field(default_factory=list)
    """Applied on the training device, in this order within each family (geometry as one fused
    warp, then color, then erasing), with an independent draw per sample."""
    label_smoothing: float = 0.0
    """Share of the target mass spread uniformly over the classes (0.1 is common)."""
    mixup: float = 0.0
    """Mixup magnitude: the Beta(a, a) concentration a of the per-sample mixing weight (0: off)."""
    cutmix: float = 0.0
    """CutMix magnitude: the Beta(a, a) concentration a of the per-sample kept area (0: off).
    With both on, each sample gets one of the two, chosen at random."""
    dice: float = 0.0
    """Segmentation: weight of a soft Dice loss added to the cross-entropy (0: cross-entropy alone).
    Dice scores each class by its overlap, whatever its pixel count, so small classes weigh as
    much as large ones; the policy search's target stage tries it (``tasks.base.LossSettings``)."""
    mosaic: float = 0.0
    """Detection: probability per sample of becoming a 2x2 mosaic of itself and three other images
    of the batch, their boxes moved along, the quadrants meeting anywhere in the middle half of
    each side (``augment.detection_mix``; 0: off)."""
    box_mixup: float = 0.0
    """Detection: probability per sample of being blended about half and half with another image of
    the batch, keeping both images' boxes (0: off)."""
    weight_decay: float = 0.05
    """Decoupled weight decay rate (p -= lr * rate * p as its own step); never on norms or biases."""
    adaptive_decay: bool = False
    """Scale each layer's decay from its measured relative update (``regularize/weight_decay.py``)."""
    dropout: float | None = None
    """Rate for the model's dropout layers, or for one inserted before its head when it has none
    (None: leave the model as it is)."""
    stochastic_depth: float | None = None
    """Drop-path rate for the model's stochastic-depth layers (None: leave them)."""
    class_balance: str = "none"
    """``none``, ``reweight`` (loss weights from the effective number of samples) or ``resample``
    (class-balanced sampling)."""
    class_balance_beta: float = 0.999
    """beta of the effective number of samples (1 - beta^n) / (1 - beta) (Cui et al. 2019)."""

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(dataclasses.asdict(self), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> "RegularizationParams":
        """Read a policy from its own YAML file or from the ``regularization`` section of a plan.yaml."""
        data = read_mapping(path, "regularization params")
        if isinstance(data.get("regularization"), dict):
            data = data["regularization"]
        return _build(cls, data, str(path))


SSL_PRETRAIN = ("none", "simclr", "barlow_twins")


@dataclass
class SSLParams:
    """Learning from unlabeled images (``visiondojo.ssl``); all of it is off without unlabeled data.

    Order: optional representation pretraining (SimCLR or Barlow Twins) on labeled + unlabeled
    images, supervised training of the whole model (the teacher), then Noisy Student rounds.
    """

    pretrain: str = "none"
    """``none``, ``simclr`` (NT-Xent over two views) or ``barlow_twins`` (cross-correlation to identity)."""
    pretrain_epochs: int = 0
    """Passes over the labeled + unlabeled images."""
    pretrain_batch_size: int = 256
    pretrain_lr: float = 0.001
    temperature: float = 0.2
    """SimCLR's softmax temperature."""
    projector_dim: int = 128
    """Output width of the projection head (attached for pretraining only, then removed)."""
    feature_layer: str | None = None
    """Module whose input is the feature vector (None: the classifier head, found automatically)."""
    noisy_student_rounds: int = 0
    """Most teacher -> student rounds; rounds stop early when a student is significantly worse than its
    teacher on validation (a paired sign test)."""
    student_epochs: int = 0
    """Epochs of each student over labeled + pseudo-labeled images."""
    pseudo_threshold: float | None = None
    """Teacher confidence a pseudo-label needs to be kept (None: calibrated on validation each round)."""
    pseudo_labels: str = "hard"
    """``hard`` (the teacher's top class) or ``soft`` (its class probabilities) as the student's targets."""
    labeled_share: float = 0.125
    """Least share of each student batch drawn from the labeled images (a round with few
    pseudo-labels uses the data's own, larger proportion): the weight of the unlabeled loss is
    (1 - share) / share relative to the labeled loss."""
    student_init: str = "teacher"
    """Where each student starts: ``scratch`` (the model's initial weights, after any pretraining) or
    ``teacher`` (its teacher's weights)."""
    student_dropout: float = 0.0
    """Students' dropout noise: inserted before the head of a model without dropout layers, or the
    least rate when the plan sets ``regularization.dropout``; a model's own dropout layers keep
    their rates otherwise."""
    teacher_share: float = 1.0
    """Share of the training time (after pretraining) for the teacher; the students share the rest."""


@dataclass
class RuntimeParams:
    device: str = "cpu"
    precision: str = "fp32"
    """``bf16`` or ``fp16`` autocast, or ``fp32``."""
    channels_last: bool = False
    num_workers: int = 0
    sync_batchnorm: bool = False
    """Under torchrun on GPUs: BatchNorm statistics over the global batch (``SyncBatchNorm``)."""


@dataclass
class Plan:
    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    optimization: OptimizationParams = field(default_factory=OptimizationParams)
    regularization: RegularizationParams = field(default_factory=RegularizationParams)
    ssl: SSLParams = field(default_factory=SSLParams)
    runtime: RuntimeParams = field(default_factory=RuntimeParams)
    seed: int = 0
    monitor: str = "acc"
    """Validation metric that picks the best checkpoint and drives early stopping (higher is better)."""
    evidence: dict[str, str] = field(default_factory=dict)
    pinned: list[str] = field(default_factory=list)
    """Dotted fields the user set; meta-learners must leave them alone."""
    measurements: dict[str, Any] = field(default_factory=dict)
    """The meta-learners' raw evidence (LR-finder curve, noise-scale trajectory, throughputs,
    timings), for the report; training does not read it."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "plan") -> "Plan":
        return _build(cls, data, where)

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        return cls.from_dict(read_mapping(path, "plan"), where=str(path))

    def set(self, dotted: str, value: Any, *, pin: bool = True) -> None:
        """Set ``section.field`` (e.g. ``optimization.lr``) and, by default, pin it."""
        section_name, _, name = dotted.partition(".")
        section = getattr(self, section_name, None)
        if section is None or not dataclasses.is_dataclass(section) or name not in _field_names(section):
            moved = f" (it moved to {MOVED[dotted]})" if dotted in MOVED else ""
            raise ConfigError(f"plan has no field {dotted!r}{moved}")
        setattr(section, name, _coerce(typing.get_type_hints(type(section))[name], value, dotted))
        if pin and dotted not in self.pinned:
            self.pinned.append(dotted)

    def is_pinned(self, dotted: str) -> bool:
        return dotted in self.pinned

    def choose(self, dotted: str, value: Any, why: str) -> None:
        """Record a meta-learner's choice and its evidence, unless the user pinned the field."""
        if self.is_pinned(dotted):
            self.evidence.setdefault(dotted, "pinned by the user")
            return
        self.set(dotted, value, pin=False)
        self.evidence[dotted] = why


def read_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping (plan, policy, config); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} file is a YAML mapping, got {type(data).__name__}")
    return data


def _field_names(obj_or_cls: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(obj_or_cls)]


def _build(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, naming any unknown key and its allowed keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    allowed = _field_names(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in allowed:
            moved = MOVED.get(f"{where.rsplit('.', 1)[-1]}.{key}")
            hint = f" (it moved to {moved})" if moved else ""
            raise ConfigError(f"{where}: unknown key {key!r}{hint}; allowed keys: {', '.join(allowed)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            value = _build(hint, value, f"{where}.{key}")
        else:
            value = _coerce(hint, value, f"{where}.{key}")
        kwargs[key] = value
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Light type check for scalar fields: ints may stand for floats, None only where allowed."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and not (type(value) is hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    if origin is list and not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    if origin is list and args and dataclasses.is_dataclass(typing.get_args(hint)[0]):
        item = typing.get_args(hint)[0]
        return [v if isinstance(v, item) else _build(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict and not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    return value
