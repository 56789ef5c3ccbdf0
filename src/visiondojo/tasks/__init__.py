"""Tasks: what differs between classification, detection and segmentation."""

from .base import Capabilities, Review, StepLoss, Task
from .classification import BinaryTask, MultiClassTask, MultiLabelTask, make_task

__all__ = ["BinaryTask", "Capabilities", "Review", "StepLoss", "MultiClassTask", "MultiLabelTask", "Task", "make_task"]
