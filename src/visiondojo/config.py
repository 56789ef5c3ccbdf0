"""The YAML config of ``visiondojo train``: sections data, model, training, regularization, output.

Validated with pydantic; errors are turned into ConfigError messages that name the bad key
and the allowed keys or values. ``--set section.key=value`` overrides are applied to the raw
mapping before validation, so they are checked exactly like the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from .durations import parse_duration
from .errors import ConfigError
from .plan import read_mapping


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    train: str
    """Image folder, CSV manifest, or built-in dataset name (fashion-mnist, digits)."""
    val: Optional[str] = None
    test: Optional[str] = None
    unlabeled: Optional[str] = None
    """Images without labels to learn from too (an image folder, CSV manifest or built-in name)."""
    task: Optional[Literal["binary", "multiclass", "multilabel", "detection"]] = None
    box_format: Optional[Literal["xyxy", "xywh", "cxcywh"]] = None
    """Box annotations' format when the data does not say (default xyxy)."""
    num_classes: Optional[int] = None
    class_names: Optional[list[str]] = None
    resize: Optional[tuple[int, int]] = None
    strict: bool = True
    val_fraction: float = 0.1
    data_dir: Optional[str] = None


class ModelConfig(_Section):
    spec: str = "fmnist-resnet"
    adapt: bool = False
    kwargs: dict[str, Any] = {}
    feature_layer: Optional[str] = None
    """Module whose input is the feature vector (default: the classifier head, found automatically)."""


class TrainingConfig(_Section):
    budget: Optional[Union[str, float]] = None
    seed: int = 0
    device: str = "auto"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    channels_last: Union[bool, Literal["auto"]] = "auto"
    # Pins: any value set here is used as given and the meta-learners leave it alone.
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    optimizer: Optional[Literal["adamw", "sgd", "lamb", "lars"]] = None
    schedule: Optional[Literal["cosine", "constant", "plateau"]] = None
    warmup_epochs: Optional[float] = None
    early_stopping_patience: Optional[int] = None
    bn_momentum: Optional[float] = None
    keep: Optional[Literal["last", "best"]] = None
    """Which epoch's weights the run returns: the final one (``last``) or the best validated one."""

    @field_validator("budget")
    @classmethod
    def _budget(cls, value: Any) -> Any:
        parse_duration(value, field="training.budget")
        return value

    regularization_params: Optional[str] = None
    """A saved policy (its own YAML, or a plan.yaml): used as given, the search is skipped."""

    def pins(self) -> dict[str, Any]:
        names = ("epochs", "batch_size", "lr", "optimizer", "schedule", "warmup_epochs",
                 "early_stopping_patience", "bn_momentum", "keep")
        pins = {f"optimization.{n}": getattr(self, n) for n in names if getattr(self, n) is not None}
        if self.weight_decay is not None:
            pins["regularization.weight_decay"] = self.weight_decay
        return pins


class RegularizationConfig(_Section):
    """Pins for the regularization part of the plan; a value set here is used as given."""

    augment: Optional[list[dict[str, Any]]] = None
    """Ops as {name, magnitude, p}, e.g. [{name: hflip, magnitude: 1.0}, {name: translate, magnitude: 0.3}]."""
    label_smoothing: Optional[float] = None
    mixup: Optional[float] = None
    cutmix: Optional[float] = None
    mosaic: Optional[float] = None
    """Detection: probability per image of becoming a 2x2 mosaic of four images of the batch."""
    box_mixup: Optional[float] = None
    """Detection: probability per image of being blended with another, both box sets kept."""
    adaptive_decay: Optional[bool] = None
    dropout: Optional[float] = None
    stochastic_depth: Optional[float] = None
    class_balance: Optional[Literal["auto", "none", "reweight", "resample"]] = None
    class_balance_beta: Optional[float] = None

    def pins(self) -> dict[str, Any]:
        values = self.model_dump(exclude_none=True)
        if values.get("class_balance") == "auto":
            del values["class_balance"]
        return {f"regularization.{k}": v for k, v in values.items()}


class OutputConfig(_Section):
    dir: Optional[str] = None
    overwrite: bool = False


class Config(_Section):
    data: DataConfig
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    regularization: RegularizationConfig = RegularizationConfig()
    output: OutputConfig = OutputConfig()


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply ``section.key=value`` (value read as YAML: 3e-3, true, [32, 32], cosine)."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {assignment!r}: write key=value, e.g. --set training.lr=0.003")
    value = yaml.safe_load(text) if text else None
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {assignment!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] = (), raw: dict[str, Any] | None = None) -> Config:
    """Read, override and validate a config; errors name the file, the key and what is allowed."""
    where = str(path) if path is not None else "config"
    if raw is None:
        raw = {}
        if path is not None:
            raw = read_mapping(path, "config")
    for assignment in overrides:
        apply_override(raw, assignment)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{where}: " + "; ".join(_explain(e) for e in exc.errors())) from None


def _explain(error: dict[str, Any]) -> str:
    location = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        section = _section_for(error["loc"][:-1])
        allowed = ", ".join(section.model_fields) if section is not None else ""
        return f"unknown key {location!r}; allowed keys here: {allowed}"
    if error["type"] == "missing":
        return f"missing key {location!r}"
    return f"{location}: {error['msg']} (got {error.get('input')!r})"


def _section_for(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return None
        model = field.annotation
    return model
