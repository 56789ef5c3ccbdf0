"""Tasks: what differs between classification, detection and segmentation."""

from .base import Task
from .classification import BinaryTask, MultiClassTask, MultiLabelTask, make_task

__all__ = ["BinaryTask", "MultiClassTask", "MultiLabelTask", "Task", "make_task"]
