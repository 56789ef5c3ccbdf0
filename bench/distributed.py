"""One process against two under a process group: step time and the equality of the trained weights.

Usage (from the repository root)::

    python bench/distributed.py --out bench/results/distributed.json

A plan is made once (``fit`` of the built-in ``fmnist-resnet`` on ``--train`` Fashion-MNIST
training images, batch 128, AdamW 1e-3, ``--epochs`` epochs, no augmentation: every choice pinned
so that both runs train the same steps), then replayed (``visiondojo.train``) by one process with
all the cores and by two processes (gloo, spawned here as torchrun would start them) with one
core each. Reported: the training seconds per epoch and images per second of each (from the
runs' history), the largest absolute difference between the two final weights, and the test
accuracy of each. On a GPU machine the same replay under ``torchrun --nproc-per-node N`` gives the
scaling efficiency (not measured here).

The gradient noise scale two ways: the two-process run's own (``noise_scale`` per epoch in its
history: each rank's gradient of its 64 images against the all-reduced 128, no extra backward
pass) against the one-process probe the batch-size meta-learner uses (``estimate_noise_scale``:
one batch of 128 split into 2 micro-batches of 64, the same two batch sizes), run ``--probes``
times with different seeds on the untrained model (to compare with epoch 1) and on the
one-process run's trained weights (to compare with the last epoch). Those two move with training
(B_noise grows as the loss falls) and look at different moments, so the direct check comes last:
both estimators on the same frozen trained weights and the same ``--frozen-steps`` global
batches (rank r's share = micro-batch r), with the same EMA (decay 0.99) — equal up to float
summation order if the DDP hook reads the right tensors.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

import visiondojo
from visiondojo.data.batches import Normalizer, make_batches
from visiondojo.data.builtin import load_fashion_mnist
from visiondojo.data.sources import DataOptions
from visiondojo.engine.runtime import Runtime
from visiondojo.engine.step import forward_loss
from visiondojo.optimize.gradient_noise import NoiseScaleEMA, RankNoiseScale
from visiondojo.optimize.noise_scale import estimate_noise_scale, micro_batch_gradients
from visiondojo.plan import Plan
from visiondojo.prepare import prepare


def _data(train_size: int) -> tuple[Any, Any]:
    images, labels = load_fashion_mnist("train")
    test_images, test_labels = load_fashion_mnist("test")
    return (images[:train_size], labels[:train_size]), (test_images[:2000], test_labels[:2000])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _replay(rank: int, world: int, port: int, plan: str, out: str, train_size: int) -> None:
    if world > 1:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    train, test = _data(train_size)
    visiondojo.train("fmnist-resnet", train, test_data=test, plan=plan, out=out, progress=False)


def _summary(run_dir: Path, seconds: float) -> dict[str, Any]:
    history = json.loads((run_dir / "metrics.json").read_text())
    train_s, rate = _history_column(run_dir, "train_s"), _history_column(run_dir, "train_images_per_s")
    return {"train_s_per_epoch": round(sum(train_s) / len(train_s), 2), "train_images_per_s": round(sum(rate) / len(rate), 1),
            "wall_s": round(seconds, 1), "test_acc": history["test"]["acc"]}


def _probe_noise_scales(plan_path: str, train: Any, weights: str | None, seeds: int) -> list[float]:
    """The one-process probe's B_noise (batch 128 in 2 micro-batches of 64) from ``weights`` (None:
    the untrained model), once per seed."""
    prep, runtime, normalizer, plan = _setup(plan_path, train, weights)
    return [round(estimate_noise_scale(prep.model, prep.task, prep.train, runtime, normalizer, plan.optimization,
                                       b_big=128, micro=2, seed=seed, max_seconds=60.0).b_noise, 1)
            for seed in range(seeds)]


def _setup(plan_path: str, train: Any, weights: str | None) -> tuple[Any, Runtime, Normalizer, Plan]:
    """The plan's prepared data and model (with ``weights``, in train mode), runtime and normalizer."""
    plan = Plan.load(plan_path)
    prep = prepare("fmnist-resnet", train, options=DataOptions(), seed=plan.seed, known=plan.data,
                   model_kwargs=plan.model.kwargs)
    if weights is not None:
        prep.model.load_state_dict(load_file(weights))
    runtime = Runtime(plan.runtime)
    prep.model = runtime.prepare_model(prep.model).train()
    return prep, runtime, Normalizer(plan.data, runtime.device, plan.runtime.channels_last), plan


def _frozen_ranks(rank: int, world: int, port: int, plan_path: str, train_size: int, weights: str, steps: int,
                  out: str) -> None:
    """The ranks' estimator (a DDP hook) over ``steps`` global batches of 128, weights never stepped."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo")
    prep, runtime, normalizer, _ = _setup(plan_path, _data(train_size)[0], weights)
    ddp = DistributedDataParallel(prep.model)
    noise = RankNoiseScale(128 // world, 128)
    ddp.register_comm_hook(None, noise.hook)
    batches = make_batches(prep.train, 128, runtime.device, train=True, seed=1, shard=(rank, world))
    for _, (images, targets) in zip(range(steps), batches):
        ddp.zero_grad()
        forward_loss(ddp, prep.task, runtime, normalizer(images), targets).loss.backward()
        noise.close_step()
    b_noise = noise.end_epoch()
    if rank == 0:
        Path(out).write_text(json.dumps(b_noise))
    dist.destroy_process_group()


def _frozen_micro_batches(plan_path: str, train: Any, weights: str, steps: int) -> float:
    """The probe's arithmetic (``micro_batch_gradients``, 2 micro-batches) on the same batches and weights."""
    prep, runtime, normalizer, _ = _setup(plan_path, train, weights)
    params = [p for p in prep.model.parameters() if p.requires_grad]
    ema = NoiseScaleEMA(64, 128, decay=0.99)
    batches = make_batches(prep.train, 128, runtime.device, train=True, seed=1)

    def batch_loss(images: torch.Tensor, targets: Any) -> torch.Tensor:
        return forward_loss(prep.model, prep.task, runtime, normalizer(images), targets).loss

    for _, (images, targets) in zip(range(steps), batches):
        small_sq, big_sq, _ = micro_batch_gradients(params, batch_loss, images, targets, 2)
        ema.update(small_sq, big_sq)
    return ema.b_noise


def _history_column(run_dir: Path, name: str) -> list[float]:
    rows = [line.split(",") for line in (run_dir / "history.csv").read_text().splitlines()]
    return [float(row[rows[0].index(name)]) for row in rows[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=12_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--probes", type=int, default=3, help="seeds of the one-process noise-scale probe")
    parser.add_argument("--frozen-steps", type=int, default=90, help="global batches of the same-batches check")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    train, test = _data(args.train)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        planned = visiondojo.fit("fmnist-resnet", train, test_data=test, out=root / "plan", epochs=args.epochs,
                                 batch_size=128, lr=1e-3, pin={"optimization.optimizer": "adamw",
                                                               "regularization.augment": []}, progress=False)
        plan = str(planned.dir / "plan.yaml")
        results: dict[str, Any] = {}
        for world in (1, 2):
            out = root / f"world{world}"
            start = time.perf_counter()
            if world == 1:
                _replay(0, 1, 0, plan, str(out), args.train)
            else:
                mp.spawn(_replay, args=(world, _free_port(), plan, str(out), args.train), nprocs=world, join=True)
            results[f"{world}_process"] = _summary(out, time.perf_counter() - start)
            print(world, results[f"{world}_process"], flush=True)
        one, two = (load_file(str(root / f"world{w}" / "model.safetensors")) for w in (1, 2))
        results["max_weight_difference"] = max(float((one[k].float() - two[k].float()).abs().max()) for k in one)
        results["noise_scale"] = {
            "ranks_per_epoch": _history_column(root / "world2", "noise_scale"),
            "probe_untrained": _probe_noise_scales(plan, train, None, args.probes),
            "probe_trained": _probe_noise_scales(plan, train, str(root / "world1" / "model.safetensors"), args.probes),
        }
        weights, found = str(root / "world1" / "model.safetensors"), root / "frozen.json"
        mp.spawn(_frozen_ranks, args=(2, _free_port(), plan, args.train, weights, args.frozen_steps, str(found)),
                 nprocs=2, join=True)
        ranks = json.loads(found.read_text())
        micro = _frozen_micro_batches(plan, train, weights, args.frozen_steps)
        results["noise_scale"]["same_batches_frozen"] = {"steps": args.frozen_steps, "ranks": round(ranks, 3),
                                                         "micro_batches": round(micro, 3),
                                                         "relative_difference": abs(ranks - micro) / micro}
    report = {"benchmark": "one process vs two (gloo)", "train_images": args.train, "epochs": args.epochs,
              "cpu_count": os.cpu_count(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), **results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
