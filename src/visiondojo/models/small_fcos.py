"""SmallFCOS: a small anchor-free detector for 2-core CPUs, built from torchvision's FCOS.

The detection head, its target assignment, losses (focal, GIoU, centerness) and post-processing
are torchvision's ``FCOS``, so the built-in detector speaks torchvision's detection protocol like
any other and visiondojo owns only a small backbone: five stride-2 stages of conv-BN-ReLU pairs
with residual blocks (widths ``width`` x 1, 1, 2, 4, 8), and a feature pyramid over the last three
(strides 8, 16, 32) with ``fpn_channels`` channels, under a two-conv head (FCOS uses four).

Sizes: ``width=24, fpn_channels=64`` has about 0.9 M parameters and runs at 128x128 pixels.
FCOS assigns an object to the pyramid level whose range holds its largest center-to-edge
distance, [4s, 8s] for a level of anchor size s; torchvision sets s to the stride, which on
128-pixel scenes would put nearly every object on the finest level. Here s is half the stride,
so objects of 14-90 pixels (fashion-scenes' range) spread over the three levels.

The detector's own resize (``GeneralizedRCNNTransform``) is set to the training size, so it never
rescales the images visiondojo prepared, and its normalization is the identity: visiondojo's
batches arrive standardized.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.ops import FeaturePyramidNetwork

from .fmnist_resnet import ResidualBlock, conv_bn

STRIDES = (8, 16, 32)
SCORE_THRESHOLD = 0.05
"""Detections kept for evaluation: COCO mAP integrates over every score, so low-confidence boxes
only add recall (torchvision's FCOS default of 0.2 costs mAP)."""


class SmallBackbone(nn.Module):
    """Conv stages to strides 8, 16 and 32 with a feature pyramid on top; ``out_channels`` per level."""

    def __init__(self, in_channels: int = 3, width: int = 24, fpn_channels: int = 64):
        super().__init__()
        widths = (width, width, 2 * width, 4 * width, 8 * width)
        stages, previous = [], in_channels
        for i, w in enumerate(widths):
            block = [conv_bn(previous, w, stride=2), nn.ReLU(inplace=True)]
            if i > 0:
                block.append(ResidualBlock(w))
            stages.append(nn.Sequential(*block))
            previous = w
        self.stages = nn.ModuleList(stages)
        self.fpn = FeaturePyramidNetwork(list(widths[2:]), fpn_channels)
        self.out_channels = fpn_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = OrderedDict()
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i >= 2:
                features[f"p{i + 1}"] = x
        return self.fpn(features)


def small_fcos(num_classes: int, in_channels: int = 3, image_size: tuple[int, int] = (128, 128), *,
               width: int = 24, fpn_channels: int = 64, head_convs: int = 2) -> FCOS:
    """SmallFCOS for ``num_classes`` (as torchvision counts them: background included) on images of
    ``image_size`` (height, width) with ``in_channels`` channels."""
    backbone = SmallBackbone(in_channels, width, fpn_channels)
    anchors = AnchorGenerator(sizes=tuple((s // 2,) for s in STRIDES), aspect_ratios=((1.0,),) * len(STRIDES))
    head = FCOSHead(fpn_channels, anchors.num_anchors_per_location()[0], num_classes, num_convs=head_convs)
    return FCOS(backbone, num_classes, min_size=min(image_size), max_size=max(image_size),
                image_mean=[0.0] * in_channels, image_std=[1.0] * in_channels, anchor_generator=anchors,
                head=head, score_thresh=SCORE_THRESHOLD)
