"""Tasks: what differs between classification, detection and segmentation."""

from .base import Capabilities, Review, StepLoss, Task
from .detection import Detections, DetectionTask
from .classification import BinaryTask, MultiClassTask, MultiLabelTask, Predictions
from .factory import make_task

__all__ = ["BinaryTask", "Capabilities", "DetectionTask", "Detections", "Review", "StepLoss", "MultiClassTask", "MultiLabelTask", "Predictions", "Task", "make_task"]
