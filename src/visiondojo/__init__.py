"""visiondojo: train computer-vision models automatically.

``fit(model, data)`` inspects the data, chooses the hyperparameters (the Plan), trains, and
returns a Run with the trained model, the plan and the metrics; the run folder holds the
weights, plan.yaml, metrics.json, history.csv and report.html.
"""

from .api import evaluate, find_params, fit, load, train
from .errors import ConfigError, DataError, ModelError, RunExistsError, VisionDojoError
from .models import FMNISTResNet
from .plan import AugmentOp, Plan, RegularizationParams
from .run import Predictions, Run

__version__ = "0.1.0"

__all__ = [
    "AugmentOp", "ConfigError", "DataError", "FMNISTResNet", "ModelError", "Plan", "Predictions",
    "RegularizationParams", "Run", "RunExistsError",
    "VisionDojoError", "evaluate", "find_params", "fit", "load", "train",
]
