"""The task for a plan's data: the one place that maps ``DataParams.task`` to a Task."""

from __future__ import annotations

from ..plan import DataParams
from .base import Task
from .classification import BinaryTask, MultiClassTask, MultiLabelTask
from .detection import DetectionTask
from .segmentation import SegmentationTask


def make_task(params: DataParams) -> Task:
    if params.task == "detection":
        return DetectionTask(params.num_classes)
    if params.task == "segmentation":
        return SegmentationTask(params.num_classes, params.ignore_index)
    if params.task == "binary":
        return BinaryTask()
    if params.task == "multilabel":
        return MultiLabelTask(params.num_classes)
    return MultiClassTask(params.num_classes)
