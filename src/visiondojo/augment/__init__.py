"""Batched, per-sample augmentation on the training device: geometry, color, erasing, mixing."""

from .geometry import Geometry, warp_boxes, warp_images, warp_keypoints, warp_masks
from .mixing import mix, smooth
from .policy import OPS, Augmenter, check_ops

__all__ = ["Augmenter", "Geometry", "OPS", "check_ops", "mix", "smooth", "warp_boxes", "warp_images",
           "warp_keypoints", "warp_masks"]
