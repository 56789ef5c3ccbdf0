"""Batched, per-sample augmentation on the training device: geometry, color, erasing, mixing."""

from .geometry import Geometry, warp_boxes, warp_images, warp_keypoints, warp_masks
from .mixing import mix, smooth
from .policy import OPS, RGB_ONLY, Augmenter, check_ops, ops_for, trivial_augment

__all__ = ["Augmenter", "Geometry", "OPS", "RGB_ONLY", "check_ops", "mix", "ops_for", "smooth", "trivial_augment",
           "warp_boxes", "warp_images", "warp_keypoints", "warp_masks"]
