"""Models in: the built-in architecture, spec strings, and fitting a model to the data."""

from .adapt import adapt_input, adapt_model, check_detections, check_masks, check_output
from .build import adapt_for, build_for, build_model, check_trusted, imports_code
from .fmnist_resnet import FMNISTResNet
from .small_fcos import small_fcos

__all__ = ["FMNISTResNet", "adapt_for", "adapt_input", "adapt_model", "build_for", "build_model", "check_detections",
           "check_masks", "check_output", "check_trusted", "imports_code", "small_fcos"]
