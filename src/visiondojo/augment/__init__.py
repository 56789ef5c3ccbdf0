"""Batched, per-sample augmentation on the training device: geometry, color, erasing, mixing, and
the detection ops that build an image from several (mosaic, box mixup)."""

from .detection_mix import box_mixup, mix_boxes, mosaic
from .geometry import Geometry, warp_boxes, warp_images, warp_keypoints, warp_masks
from .mixing import mix, smooth
from .policy import OPS, RGB_ONLY, Applied, Augmenter, check_ops, ops_for, trivial_augment

__all__ = ["Applied", "Augmenter", "Geometry", "OPS", "RGB_ONLY", "box_mixup", "check_ops", "mix", "mix_boxes", "mosaic",
           "ops_for", "smooth", "trivial_augment", "warp_boxes", "warp_images", "warp_keypoints", "warp_masks"]
