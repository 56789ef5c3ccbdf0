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
from .data.formats import letterbox, letterbox_region, unletterbox_boxes
from .tasks import DetectionTask, Masks, Predictions, SegmentationTask, make_task

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
        """Predict for image files (paths) or an array/tensor batch; images are resized to the trained
        size (a detector's and a segmenter's letterboxed, aspect kept, and their boxes or masks mapped
        back to each image's own pixels).

        Returns the task's own form: ``Predictions`` (labels, scores, names) for classification,
        ``Detections`` (boxes, scores, labels per image) for detection, ``Masks`` (a class and its
        probability per pixel, at each image's original size) for segmentation."""
        task = make_task(self.plan.data)
        boxed = isinstance(task, (DetectionTask, SegmentationTask))
        batch, letterboxes = load_letterboxed(images, self.plan) if boxed else (load_images(images, self.plan), [])
        runtime = self.inference_runtime()
        model = runtime.prepare_model(self.model).eval()
        normalizer = Normalizer(self.plan.data, runtime.device, self.plan.runtime.channels_last)
        if isinstance(task, SegmentationTask):  # chunk by chunk: no chunk's logits outlive it
            labels, scores = [], []
            for start in range(0, len(batch), batch_size):
                chunk = normalizer(batch[start:start + batch_size].to(runtime.device))
                found_labels, found_scores = _masks_back(eval_outputs(model, task, runtime, chunk),
                                                         letterboxes[start:start + batch_size])
                labels += found_labels
                scores += found_scores
            if len({tuple(m.shape) for m in labels}) == 1:  # one size: one tensor, as before
                return Masks(torch.stack(labels), torch.stack(scores), self.plan.data.class_names)
            return Masks(labels, scores, self.plan.data.class_names)
        outputs = [eval_outputs(model, task, runtime, normalizer(chunk.to(runtime.device)))
                   for chunk in batch.split(batch_size)]
        found = task.predictions(outputs, self.plan.data.class_names)
        if boxed:  # back from the training canvas to each image's own pixels
            found.boxes = [unletterbox_boxes(b, scale, pad, size) for b, (scale, pad, size) in zip(found.boxes, letterboxes)]
        return found

    def inference_runtime(self) -> Runtime:
        """Inference picks its own device and precision: the run may have trained elsewhere."""
        params, _ = resolve_runtime(self.model, "auto", "auto", self.plan.runtime.channels_last)
        return Runtime(params)


PREDICT_ELEMENTS = 2**24
"""Class scores mapped back to an image's size are worked on in bands of rows of at most this many
values (64 MB of float32), so a large photo with many classes never holds all its probabilities."""


def _masks_back(logits: torch.Tensor, letterboxes: list[tuple[float, tuple[float, float], tuple[int, int]]]
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(n, K, H, W) logits on the letterbox canvas -> per image, (h, w) labels and their
    probabilities at the image's original size.

    The canvas region the image covers is cut out and its logits resized bilinearly to the
    original size before the softmax and argmax (smooth boundaries, where resizing the labels
    would give the canvas's staircase), in bands of rows (``PREDICT_ELEMENTS``).
    """
    canvas = (int(logits.shape[-2]), int(logits.shape[-1]))
    labels, scores = [], []
    for image_logits, (_, pad, original) in zip(logits, letterboxes):
        top, left, height, width = letterbox_region(original, canvas)
        top, left = top + int(pad[1]), left + int(pad[0])
        region = image_logits[:, top:top + height, left:left + width].float()
        best_labels, best_scores = _resized_best(region, original)
        labels.append(best_labels.cpu())
        scores.append(best_scores.cpu())
    return labels, scores


def _resized_best(logits: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The argmax class and its probability of (K, h, w) ``logits`` resized bilinearly to ``size``
    (as ``F.interpolate(..., mode="bilinear", align_corners=False)`` resizes), band by band."""
    if tuple(logits.shape[-2:]) == tuple(size):
        best = logits.softmax(dim=0).max(dim=0)
        return best.indices, best.values
    height, width = size
    y0, y1, wy = _source_rows(logits.shape[1], height, logits.device)
    x0, x1, wx = _source_rows(logits.shape[2], width, logits.device)
    labels = torch.empty(size, dtype=torch.int64, device=logits.device)
    scores = torch.empty(size, dtype=torch.float32, device=logits.device)
    step = max(1, PREDICT_ELEMENTS // max(1, logits.shape[0] * width))
    for start in range(0, height, step):
        rows = slice(start, start + step)
        weight = wy[rows].view(1, -1, 1)
        band = logits[:, y0[rows]] * (1 - weight) + logits[:, y1[rows]] * weight  # (K, rows, w)
        band = band[:, :, x0] * (1 - wx) + band[:, :, x1] * wx  # (K, rows, width)
        best = band.softmax(dim=0).max(dim=0)
        labels[rows], scores[rows] = best.indices, best.values
    return labels, scores


def _source_rows(source: int, target: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each of ``target`` output rows, the two source rows it blends and the second one's
    weight: half-pixel centres, clamped at the edges (``align_corners=False``). Worked out on the
    CPU in float64 (not every accelerator has it), then moved to ``device``."""
    position = ((torch.arange(target, dtype=torch.float64) + 0.5) * (source / target) - 0.5).clamp_min(0)
    first = position.floor().long().clamp_max(source - 1)
    second = (first + 1).clamp_max(source - 1)
    return first.to(device), second.to(device), (position - first).float().to(device)


def load_letterboxed(images: Any, plan: Plan) -> tuple[torch.Tensor, list[tuple[float, tuple[float, float], tuple[int, int]]]]:
    """Paths or arrays -> (N, C, H, W) letterboxed to the training size (aspect kept, as detection
    files are read for training), and per image the (scale, pad, original size) to map boxes back.
    Images already at the training size are unchanged."""
    data = plan.data
    paths = _paths(images)
    if paths is not None:
        pictures = [_read_image(path, data.channels) for path in paths]
    else:
        pictures = list(batch_to_nchw(to_tensor(images, "images"), "images"))
    canvases, letterboxes = [], []
    for picture in pictures:
        canvas, scale, pad = letterbox(picture, (data.height, data.width))
        canvases.append(canvas)
        letterboxes.append((scale, pad, (picture.shape[1], picture.shape[2])))
    return _as_trained(torch.stack(canvases), plan), letterboxes


def _paths(images: Any) -> list[str | Path] | None:
    """The image files named by ``images`` (one path or a list of them), or None for array data."""
    if isinstance(images, (str, Path)):
        return [images]
    if isinstance(images, Sequence) and images and isinstance(images[0], (str, Path)):
        return list(images)
    return None


def _read_image(path: str | Path, channels: int) -> torch.Tensor:
    try:
        with Image.open(path) as image:
            return pil_to_chw(image, channels)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the image ({exc})") from None


def load_images(images: Any, plan: Plan) -> torch.Tensor:
    """Paths or arrays -> (N, C, H, W) in the training data's channels, size and pixel dtype."""
    data = plan.data
    size = (data.height, data.width)
    paths = _paths(images)
    if paths is not None:
        batch = torch.stack([resize_batch(_read_image(path, data.channels).unsqueeze(0), size)[0] for path in paths])
    else:
        batch = resize_batch(batch_to_nchw(to_tensor(images, "images"), "images"), size)
    return _as_trained(batch, plan)


def _as_trained(batch: torch.Tensor, plan: Plan) -> torch.Tensor:
    """Check the channels and bring the pixels to the training data's dtype and range."""
    data = plan.data
    if batch.shape[1] != data.channels:
        raise DataError(f"images have {batch.shape[1]} channels but the model was trained on {data.channels}")
    trained_on_bytes = data.pixel_scale == 1.0 / 255.0 and data.pixel_offset == 0.0
    if trained_on_bytes and batch.dtype != torch.uint8:
        batch = batch * 255.0 if float(batch.max()) <= 1.0 else batch
    elif not trained_on_bytes and batch.dtype == torch.uint8:
        batch = batch.float() / 255.0
    return batch
