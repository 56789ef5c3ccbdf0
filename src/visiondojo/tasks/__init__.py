"""Tasks: what differs between classification, detection and segmentation."""

from .base import Capabilities, LossSettings, Review, StepLoss, Task
from .classification import BinaryTask, MultiClassTask, MultiLabelTask, Predictions
from .detection import Detections, DetectionTask
from .factory import make_task
from .segmentation import Masks, SegmentationTask

__all__ = ["BinaryTask", "Capabilities", "DetectionTask", "Detections", "LossSettings", "Masks", "MultiClassTask", "MultiLabelTask",
           "Predictions", "Review", "SegmentationTask", "StepLoss", "Task", "make_task"]
