"""Cross-entropy alone against cross-entropy + 0.5 x Dice for segmentation, everything else planned.

The measurement behind ``regularize.choose.PRIOR_DICE`` (the Dice term a segmentation run gets
when the policy search does not run). Per seed, two ``visiondojo.fit`` runs of the built-in
SmallUNet on ``fashion-scenes`` semantic masks (1,500 training, 300 validation, 300 test scenes),
the epochs pinned (8) so both train the same number of steps whatever the machine's speed, no
augmentation, the Dice weight pinned to 0 or 0.5; batch size and learning rate come from the
meta-learners as usual.

Usage (from the repository root), one seed per call::

    python bench/segmentation_dice.py --seed 0 --out bench/results/dice-0.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import visiondojo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    results = {}
    for dice in (0.0, 0.5):
        start = time.time()
        with tempfile.TemporaryDirectory() as folder:
            run = visiondojo.fit("small-unet", "fashion-scenes:train:1500", val_data="fashion-scenes:val:300",
                                 test_data="fashion-scenes:test:300", task="segmentation", epochs=args.epochs,
                                 seed=args.seed, pin={"regularization.dice": dice, "regularization.augment": []},
                                 out=f"{folder}/run", progress=False)
        results[str(dice)] = {"miou": run.metrics["test"]["miou"], "pixel_acc": run.metrics["test"]["pixel_acc"],
                              "batch": run.plan.optimization.batch_size, "lr": run.plan.optimization.lr,
                              "s": round(time.time() - start)}
        print(f"dice {dice}: {results[str(dice)]}", flush=True)
    with open(args.out, "w") as handle:
        json.dump({"seed": args.seed, "epochs": args.epochs, "results": results}, handle, indent=1)


if __name__ == "__main__":
    main()
