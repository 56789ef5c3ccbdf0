"""Tasks: what differs between classification, detection and segmentation."""

from .base import Capabilities, StepLoss, Task
from .classification import BinaryTask, MultiClassTask, MultiLabelTask, make_task

__all__ = ["BinaryTask", "Capabilities", "StepLoss", "MultiClassTask", "MultiLabelTask", "Task", "make_task"]
