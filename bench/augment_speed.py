"""Augmentation throughput on CPU: visiondojo's batched Augmenter against kornia and a torchvision loop.

Usage::

    python bench/augment_speed.py --out bench/results/augment_speed.json

One fixed op set with an independent draw per sample: horizontal flip (p 0.5); affine with
rotation +-15 degrees, translation +-10%, scale 0.9-1.1 and shear +-10 degrees; brightness and
contrast factors 1 +- 0.2. Three contenders apply it to a seeded float batch in [0, 1]
(256x3x32x32 and 256x1x28x28), on 2 CPU threads, without autograd:

- ``visiondojo``: ``visiondojo.augment.Augmenter`` on the whole batch (one fused warp, then color);
- ``kornia``: ``kornia.augmentation.AugmentationSequential`` on the whole batch;
- ``torchvision_loop``: ``torchvision.transforms.v2.Compose`` called on each image in a Python loop,
  the results stacked (what a per-sample ``Dataset`` transform does, minus the DataLoader).

Timing: warm-up calls, then ``--repeats`` timed rounds; each round runs every contender in turn
(round-robin, so machine noise hits all of them alike) for enough calls to take about
``--target-s`` seconds. images/s = batch size / median seconds per call. The ratios compare
contenders measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kornia
import kornia.augmentation as K
import torch
import torchvision
from torchvision.transforms import v2

import visiondojo
from visiondojo.augment import Augmenter
from visiondojo.plan import AugmentOp

THREADS = 2
SHAPES = {"rgb_32": (256, 3, 32, 32), "gray_28": (256, 1, 28, 28)}
CONTENDERS = ("visiondojo", "kornia", "torchvision_loop")
EXPECTED = {"visiondojo_vs_kornia": 3.0, "visiondojo_vs_torchvision_loop": 5.0}

# Physical ranges -> visiondojo magnitudes, per the tables in visiondojo.augment.geometry and .color.
VISIONDOJO_OPS = [
    AugmentOp("hflip", 1.0),          # flipped with probability 0.5 * m = 0.5
    AugmentOp("shear", 10 / 30),      # x and y shear angles uniform in +-30 * m = +-10 degrees
    AugmentOp("zoom", 0.1 / 0.4),     # scale uniform in 1 +- 0.4 * m = 0.9..1.1
    AugmentOp("rotate", 15 / 30),     # angle uniform in +-30 * m = +-15 degrees
    AugmentOp("translate", 0.1 / 0.3),  # shift uniform in +-0.3 * m = +-10% of width and height
    AugmentOp("brightness", 0.2 / 0.5),  # pixel factor 1 +- 0.5 * m = 1 +- 0.2
    AugmentOp("contrast", 0.2 / 0.5),    # factor 1 +- 0.5 * m = 1 +- 0.2 around the mean luminance
]
MAPPING = {
    "hflip": "m=1.0: flip probability 0.5 * m = 0.5",
    "shear": "m=10/30: x and y shear uniform in +-30*m = +-10 deg (kornia and torchvision shear=10 is x only)",
    "zoom": "m=0.1/0.4=0.25: scale uniform in 1 +- 0.4*m = 0.9..1.1",
    "rotate": "m=15/30=0.5: angle uniform in +-30*m = +-15 deg",
    "translate": "m=0.1/0.3: shift uniform in +-0.3*m = +-10% of width and height",
    "brightness": "m=0.2/0.5=0.4: factor uniform in 1 +- 0.5*m = 0.8..1.2 (multiplicative)",
    "contrast": "m=0.2/0.5=0.4: factor uniform in 1 +- 0.5*m = 0.8..1.2 around the mean luminance",
    "p": "1.0 for every op (hflip's 0.5 comes from its magnitude)",
}
KORNIA_NOTE = ("ColorJitter, not ColorJiggle: ColorJitter uses torchvision's formulas (brightness multiplies the "
               "image by a factor uniform in [0.8, 1.2], contrast blends with the grayscale mean), which match "
               "visiondojo's factor-uniform brightness and contrast; ColorJiggle's brightness is additive "
               "(factor - 1 added). ColorJitter also clamps to [0, 1] and draws a random step order per call.")

Augment = Callable[[torch.Tensor], torch.Tensor]


def log(message: str) -> None:
    print(f"[augment-speed] {message}", file=sys.stderr, flush=True)


def visiondojo_augment(seed: int) -> Augment:
    augmenter = Augmenter(VISIONDOJO_OPS)
    generator = torch.Generator().manual_seed(seed)
    return lambda images: augmenter(images, generator)[0]


def kornia_augment(seed: int) -> Augment:
    return K.AugmentationSequential(
        K.RandomHorizontalFlip(p=0.5),
        K.RandomAffine(degrees=15, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=10, p=1.0),
        K.ColorJitter(brightness=0.2, contrast=0.2, p=1.0),
    )  # draws from torch's global generator, seeded in main()


def torchvision_loop_augment(seed: int) -> Augment:
    transform = v2.Compose([
        v2.RandomHorizontalFlip(0.5),
        v2.RandomAffine(degrees=15, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=10),
        v2.ColorJitter(brightness=0.2, contrast=0.2),
    ])
    return lambda images: torch.stack([transform(image) for image in images])


FACTORIES: dict[str, Callable[[int], Augment]] = {
    "visiondojo": visiondojo_augment, "kornia": kornia_augment, "torchvision_loop": torchvision_loop_augment,
}


def sanity(augment: Augment, images: torch.Tensor) -> dict[str, Any]:
    """Does the contender transform, and differently per sample? Copies of one image must come out different."""
    out = augment(images)
    changed = (out - images).abs().flatten(1).amax(dim=1) > 1e-6
    copies = images[:1].expand_as(images).clone()
    out_copies = augment(copies)
    distinct = (out_copies - out_copies[:1]).abs().flatten(1).amax(dim=1) > 1e-6
    report = {"shape_kept": list(out.shape) == list(images.shape),
              "share_changed": round(changed.float().mean().item(), 3),
              "share_of_copies_unlike_the_first": round(distinct[1:].float().mean().item(), 3),
              "output_range": [round(out.min().item(), 3), round(out.max().item(), 3)]}
    report["ok"] = (report["shape_kept"] and report["share_changed"] > 0.9
                    and report["share_of_copies_unlike_the_first"] > 0.9)
    return report


def time_round_robin(augments: dict[str, Augment], images: torch.Tensor, repeats: int, target_s: float,
                     warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each contender, one entry per round; rounds interleave the contenders."""
    calls = {}
    for name, augment in augments.items():
        for _ in range(warmup):
            augment(images)
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < target_s / 5:  # calibrate on several calls, not one
            augment(images)
            done += 1
        calls[name] = max(1, round(target_s * done / (time.perf_counter() - start)))
    per_call: dict[str, list[float]] = {name: [] for name in augments}
    for _ in range(repeats):
        for name, augment in augments.items():
            start = time.perf_counter()
            for _ in range(calls[name]):
                augment(images)
            per_call[name].append((time.perf_counter() - start) / calls[name])
    return per_call


def bench_shape(shape: tuple[int, ...], args: argparse.Namespace) -> dict[str, Any]:
    images = torch.rand(shape, generator=torch.Generator().manual_seed(args.seed))
    augments = {name: FACTORIES[name](args.seed) for name in CONTENDERS}
    checks = {name: sanity(augment, images) for name, augment in augments.items()}
    per_call = time_round_robin(augments, images, args.repeats, args.target_s, args.warmup)
    result: dict[str, Any] = {"shape": list(shape)}
    for name in CONTENDERS:
        median = statistics.median(per_call[name])
        result[name] = {"images_per_s": round(shape[0] / median, 1), "median_ms_per_call": round(median * 1e3, 3),
                        "min_ms": round(min(per_call[name]) * 1e3, 3), "max_ms": round(max(per_call[name]) * 1e3, 3),
                        "sanity": checks[name]}
    vd = result["visiondojo"]["images_per_s"]
    result["visiondojo_vs_kornia"] = round(vd / result["kornia"]["images_per_s"], 2)
    result["visiondojo_vs_torchvision_loop"] = round(vd / result["torchvision_loop"]["images_per_s"], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--target-s", type=float, default=0.5, help="seconds per contender per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    torch.manual_seed(args.seed)
    load_before = [round(x, 2) for x in os.getloadavg()]
    log(f"load average {load_before}; {THREADS} threads")
    shapes = {}
    with torch.no_grad():
        for key, shape in SHAPES.items():
            shapes[key] = bench_shape(shape, args)
            log(f"{key} done")
    holds = all(s[k] >= v for s in shapes.values() for k, v in EXPECTED.items())
    report = {"benchmark": "augmentation images/s on CPU, one op set, per-sample randomness",
              "date": time.strftime("%Y-%m-%d"), "python": platform.python_version(), "torch": torch.__version__,
              "torchvision": torchvision.__version__, "kornia": kornia.__version__,
              "visiondojo": getattr(visiondojo, "__version__", None), "threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(), "load_average_before": load_before,
              "load_average_after": [round(x, 2) for x in os.getloadavg()],
              "timing": {"repeats": args.repeats, "target_s_per_round": args.target_s, "warmup_calls": args.warmup,
                         "statistic": "median seconds per call over rounds, contenders interleaved"},
              "visiondojo_ops": [vars(op) for op in VISIONDOJO_OPS], "visiondojo_magnitude_mapping": MAPPING,
              "kornia_color": KORNIA_NOTE, "shapes": shapes, "expected_min_ratios": EXPECTED,
              "expectations_hold": holds}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'shape':<10} {'visiondojo':>12} {'kornia':>12} {'tv loop':>12} {'vd/kornia':>10} {'vd/loop':>9}")
    for key, s in shapes.items():
        print(f"{key:<10} {s['visiondojo']['images_per_s']:>12,.0f} {s['kornia']['images_per_s']:>12,.0f} "
              f"{s['torchvision_loop']['images_per_s']:>12,.0f} {s['visiondojo_vs_kornia']:>10.2f} "
              f"{s['visiondojo_vs_torchvision_loop']:>9.2f}")
    log(f"expectations (>= {EXPECTED}) {'hold' if holds else 'do NOT hold'}; figures in {args.out}")


if __name__ == "__main__":
    main()
