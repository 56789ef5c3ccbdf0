"""A finished run: the trained model, its plan and metrics, and ways to use it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from torch import nn

from .data.batches import Normalizer
from .data.images import batch_to_nchw, pil_to_chw, resize_batch, to_tensor
from .engine.runtime import Runtime, resolve_runtime
from .engine.step import eval_outputs
from .errors import DataError
from .plan import Plan
from .rundir import REPORT
from .tasks import Predictions, make_task

__all__ = ["Predictions", "Run", "load_images"]


@dataclass
class Run:
    model: nn.Module
    plan: Plan
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    dir: Path | None = None

    @property
    def report(self) -> Path | None:
        return self.dir / REPORT if self.dir is not None else None

    def predict(self, images: Any, batch_size: int = 256) -> Any:
        """Predict for image files (paths) or an array/tensor batch; images are resized to the trained size.

        Returns the task's own form: ``Predictions`` (labels, scores, names) for classification."""
        batch = load_images(images, self.plan)
        runtime = self.inference_runtime()
        model = runtime.prepare_model(self.model).eval()
        normalizer = Normalizer(self.plan.data, runtime.device, self.plan.runtime.channels_last)
        task = make_task(self.plan.data)
        outputs = [eval_outputs(model, task, runtime, normalizer(chunk.to(runtime.device)))
                   for chunk in batch.split(batch_size)]
        return task.predictions(outputs, self.plan.data.class_names)

    def inference_runtime(self) -> Runtime:
        """Inference picks its own device and precision: the run may have trained elsewhere."""
        params, _ = resolve_runtime(self.model, "auto", "auto", self.plan.runtime.channels_last)
        return Runtime(params)


def load_images(images: Any, plan: Plan) -> torch.Tensor:
    """Paths or arrays -> (N, C, H, W) in the training data's channels, size and pixel dtype."""
    data = plan.data
    size = (data.height, data.width)
    if isinstance(images, (str, Path)):
        images = [images]
    if isinstance(images, Sequence) and images and isinstance(images[0], (str, Path)):
        tensors = []
        for path in images:
            try:
                with Image.open(path) as image:
                    tensors.append(resize_batch(pil_to_chw(image, data.channels).unsqueeze(0), size)[0])
            except (OSError, ValueError) as exc:
                raise DataError(f"{path}: cannot read the image ({exc})") from None
        batch = torch.stack(tensors)
    else:
        batch = resize_batch(batch_to_nchw(to_tensor(images, "images"), "images"), size)
    if batch.shape[1] != data.channels:
        raise DataError(f"images have {batch.shape[1]} channels but the model was trained on {data.channels}")
    trained_on_bytes = data.pixel_scale == 1.0 / 255.0 and data.pixel_offset == 0.0
    if trained_on_bytes and batch.dtype != torch.uint8:
        batch = batch * 255.0 if float(batch.max()) <= 1.0 else batch
    elif not trained_on_bytes and batch.dtype == torch.uint8:
        batch = batch.float() / 255.0
    return batch
