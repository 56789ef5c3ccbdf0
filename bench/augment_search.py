"""Augmentation-policy search benchmark: no augmentation, a fixed policy, TrivialAugment-style, and
visiondojo's searched policy, at equal wall-clock with the search counted.

Usage::

    python bench/augment_search.py --budget 600 --out bench/results/augment_search.json

Fashion-MNIST, a freshly seeded FMNIST-ResNet, ``visiondojo.fit`` for every contender with the
same budget (so all get the same optimization meta-learners); they differ only in regularization:

- ``none``: no augmentation, no soft labels (pinned);
- ``fixed``: horizontal flip (p 0.5) and translation +-10 % (pinned);
- ``trivial``: TrivialAugment-style (Müller & Hutter 2021): every sample gets ONE op drawn
  uniformly from visiondojo's whole op set, at a strength uniform in [0, the op's full range]
  (one menu of all ops at magnitude 1; pinned);
- ``searched``: ``fit`` as it runs by default: the policy search within 20 % of the time left,
  then training with its policy in the rest.

Each contender runs in its own child process (``fmnist.py``'s machinery). Reported: test
accuracy, the search's time, and its number of proxy trainings next to the size of the full
(op, magnitude) policy space.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from fmnist import contender_parser, log, run_contender_in_child, run_contender_here, run_visiondojo
from visiondojo.augment import trivial_augment
from visiondojo.plan import AugmentOp

CONTENDERS = ("none", "fixed", "trivial", "searched")
OFF = {"label_smoothing": 0.0, "mixup": 0.0, "cutmix": 0.0}
POLICIES: dict[str, dict[str, Any] | None] = {
    "none": {"augment": [], **OFF},
    "fixed": {"augment": [AugmentOp("hflip", 1.0), AugmentOp("translate", 1 / 3)], **OFF},
    "trivial": {"augment": trivial_augment(channels=1), **OFF},
    "searched": None,
}


def run(name: str, budget_s: float, seed: int) -> dict[str, Any]:
    result = run_visiondojo(budget_s, seed, f"augsearch-{name}", POLICIES[name])
    search = result["plan"]["measurements"].get("augment_search")
    if search:
        result["search"] = {"seconds": search["seconds"], "proxy_trainings": search["space"]["proxy_trainings"],
                            "space": search["space"], "stopped": search["stopped"],
                            "chosen": [op["group"] for op in result["plan"]["regularization"]["augment"]],
                            "soft": {k: result["plan"]["regularization"][k] for k in OFF}}
    return result


def main() -> None:
    parser = contender_parser(__doc__, CONTENDERS, 600.0)
    args = parser.parse_args()
    if args.contender is not None:
        run_contender_here(args.contender, args.budget, args.seed, args.out, runner=run)
        return
    names = [n for n in args.contenders.split(",") if n]
    results = {name: run_contender_in_child(name, args.budget, args.seed, script=Path(__file__)) for name in names}
    summary = {name: {"test_acc": r["test_acc"], "epochs": r["epochs"], **({"search": r["search"]} if "search" in r
                                                                          else {})}
               for name, r in results.items()}
    report: dict[str, Any] = {"benchmark": "augment-search", "budget_s": args.budget, "seed": args.seed,
                              "cpu_count": len(os.sched_getaffinity(0)), "torch": torch.__version__,
                              "date": time.strftime("%Y-%m-%d"), "summary": summary, **results}
    if "searched" in results:
        searched = results["searched"]["test_acc"]
        report["searched_minus"] = {n: round(searched - r["test_acc"], 6) for n, r in results.items() if n != "searched"}
        report["searched_beats_all"] = all(v > 0 for v in report["searched_minus"].values())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"summary: {json.dumps(summary)}")


if __name__ == "__main__":
    main()
