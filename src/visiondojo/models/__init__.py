"""Models in: the built-in architecture, spec strings, and fitting a model to the data."""

from .adapt import adapt_model, check_output
from .build import build_model
from .fmnist_resnet import FMNISTResNet

__all__ = ["FMNISTResNet", "adapt_model", "build_model", "check_output"]
