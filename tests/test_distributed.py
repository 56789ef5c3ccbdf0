"""Data-parallel training under a process group (gloo on the CPU, two processes spawned here):
a 2-process run of a plan ends with the weights of a 1-process run of the same plan and global
batch, every sample trained once per epoch, and only rank 0 writing the run folder."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

import visiondojo
from visiondojo.data.batches import DeviceBatches, LoaderBatches
from visiondojo.data.sources import InMemory, Streamed
from visiondojo.errors import ConfigError
from visiondojo.plan import AugmentOp, RegularizationParams

from conftest import FAST, TinyNet, make_problem

TOLERANCE = 1e-5
"""The two runs differ only in how the gradient is summed: each rank's mean over its half of the
batch, then DDP's average of the two, against one mean over the whole batch. Float addition in
another order differs in the last bits (about 1e-7 relative per step); over 3 epochs of 9 steps
they stay far below 1e-5."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Interrupted(Exception):
    """Stands in for a crash of the whole job between epochs."""


def _worker(rank: int, world: int, port: int, plan: str, out: str, crash_in_epoch: int = 0,
            resume: bool = False) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if crash_in_epoch:  # every rank stops after that epoch's validation, before its checkpoint
        from visiondojo.engine import loop

        after_validation = loop._after_validation

        def crash(state, opt):
            if state.epoch == crash_in_epoch:
                raise Interrupted
            return after_validation(state, opt)

        loop._after_validation = crash
    train, test = make_problem(288, seed=3), make_problem(96, seed=4)
    run = visiondojo.train(TinyNet(seed=5 if resume else 0), train, test_data=test, plan=plan, out=out,
                           progress=False, resume=resume)
    torch.save({"metrics": run.metrics, "state": run.model.state_dict(), "history": run.history}, f"{out}-rank{rank}.pt")


@pytest.mark.parametrize("batch", [32, 33])
def test_two_processes_train_the_weights_of_one(tmp_path, batch) -> None:
    """32 splits 16 + 16; 33 splits 17 + 16, each rank's loss weighted by its share."""
    train, test = make_problem(288, seed=3), make_problem(96, seed=4)
    pins = {**FAST, "epochs": 3, "batch_size": batch}
    single = visiondojo.fit(TinyNet(), train, test_data=test, out=tmp_path / "one", regularization=RegularizationParams(),
                            **pins)
    out = str(tmp_path / "two")
    mp.spawn(_worker, args=(2, _free_port(), str(single.dir / "plan.yaml"), out), nprocs=2, join=True)
    one = load_file(str(single.dir / "model.safetensors"))
    two = load_file(f"{out}/model.safetensors")  # written by rank 0 alone
    assert one.keys() == two.keys()
    assert max(float((one[k] - two[k]).abs().max()) for k in one) < TOLERANCE
    assert not all(torch.equal(one[k], TinyNet().state_dict()[k]) for k in one)  # it trained
    ranks = [torch.load(f"{out}-rank{r}.pt") for r in range(2)]
    assert all(torch.equal(ranks[0]["state"][k], ranks[1]["state"][k]) for k in one)  # ranks agree exactly
    assert ranks[0]["metrics"] == ranks[1]["metrics"]
    assert abs(ranks[0]["metrics"]["test"]["acc"] - single.metrics["test"]["acc"]) < 0.02
    if batch == 33:
        assert "shares one image apart" in " ".join(json.loads((tmp_path / "two" / "metrics.json").read_text())["notes"])
        return
    # The noise scale from the ranks' gradients, per epoch in the history (no extra backward pass).
    assert all(0 < row["noise_scale"] < float("inf") for row in ranks[0]["history"])
    assert "noise_scale" in (tmp_path / "two" / "history.csv").read_text().splitlines()[0]
    assert "<h2>Gradient noise scale</h2>" in (tmp_path / "two" / "report.html").read_text()


class _Numbered(torch.utils.data.Dataset):
    """Image i is the number i: what a batch holds is readable from its pixels."""

    def __len__(self) -> int:
        return 100

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.full((1, 1, 1), float(index)), 0


@pytest.mark.parametrize("batcher", [DeviceBatches, LoaderBatches])
def test_each_rank_trains_its_share_of_every_global_batch(batcher) -> None:
    images = torch.arange(100).view(100, 1, 1, 1).float()
    labels = torch.zeros(100, dtype=torch.int64)
    source = (InMemory(images, labels, None, "test") if batcher is DeviceBatches
              else Streamed(_Numbered(), labels, None, "test", 1, (1, 1)))
    extra = {} if batcher is DeviceBatches else {"num_workers": 0}
    single = batcher(source, 20, torch.device("cpu"), shuffle=True, drop_last=True, seed=1, **extra)
    for world in (2, 3):  # 20 splits evenly over 2; over 3 in shares of 7, 7 and 6
        shards = [batcher(source, 20, torch.device("cpu"), shuffle=True, drop_last=True, seed=1, shard=(r, world),
                          **extra) for r in range(world)]
        for epoch in (0, 1):
            for batches in (single, *shards):
                batches.set_epoch(epoch)
            whole = [b[0].flatten() for b in single]
            parts = [[b[0].flatten() for b in s] for s in shards]
            assert all(len(part) == len(whole) == 5 for part in parts)  # every rank steps together
            for step, batch in enumerate(whole):  # the same global batches, split between the ranks
                assert torch.equal(torch.cat([part[step] for part in parts]), batch)
            seen = torch.cat([h for part in parts for h in part]).long()
            assert sorted(seen.tolist()) == list(range(100))  # every sample once per epoch
        # The weights make DDP's plain average of the ranks' mean gradients the global batch's mean.
        sizes = [len(part[0]) for part in parts]
        # Each image's weight in that average: the rank's weight / world size / its share = 1 / 20.
        assert all(s.share_weight / world / size == pytest.approx(1 / 20) for s, size in zip(shards, sizes))
        assert [s.share_weight for s in shards] == ([1.0, 1.0] if world == 2 else [1.05, 1.05, 0.9])
    with pytest.raises(ConfigError, match="global batch of 2 cannot be shared by 3 processes"):
        batcher(source, 2, torch.device("cpu"), shuffle=True, drop_last=True, shard=(0, 3), **extra)
    blocks = [[b[0].flatten() for b in batcher(source, 16, torch.device("cpu"), shuffle=False, drop_last=False,
                                               shard=(r, 3), **extra)] for r in range(3)]
    assert torch.cat([torch.cat(block) for block in blocks]).long().tolist() == list(range(100))  # evaluation: blocks


def test_a_two_process_run_resumes_bit_exactly(tmp_path) -> None:
    """With augmentation, mixup and dropout, whose draws differ per rank: each rank's random streams
    are in the checkpoint."""
    train, test = make_problem(288, seed=3), make_problem(96, seed=4)
    policy = RegularizationParams(augment=[AugmentOp("translate", 0.3), AugmentOp("noise", 0.4, p=0.5)], mixup=0.2,
                                  dropout=0.2)
    planned = visiondojo.fit(TinyNet(), train, test_data=test, out=tmp_path / "plan",
                             regularization=policy, **{**FAST, "epochs": 3, "batch_size": 32})
    plan = str(planned.dir / "plan.yaml")
    whole, cut = str(tmp_path / "whole"), str(tmp_path / "cut")
    mp.spawn(_worker, args=(2, _free_port(), plan, whole), nprocs=2, join=True)
    with pytest.raises(mp.ProcessRaisedException, match="Interrupted"):
        mp.spawn(_worker, args=(2, _free_port(), plan, cut, 3), nprocs=2, join=True)
    assert not os.path.exists(f"{cut}/model.safetensors")  # it did not finish
    other = tmp_path / "cut-in-one"
    shutil.copytree(cut, other)
    with pytest.warns(UserWarning, match="written by 2 process.*resumes in 1.*not reproduce"):
        in_one = visiondojo.train(TinyNet(), train, test_data=test, plan=plan, out=other, resume=True, progress=False)
    assert "resumed in 1 process(es) from a checkpoint of 2" in " ".join(
        json.loads((other / "metrics.json").read_text())["notes"])
    assert in_one.metrics["test"]["acc"] > 0.5
    mp.spawn(_worker, args=(2, _free_port(), plan, cut, 0, True), nprocs=2, join=True)
    a, b = load_file(f"{whole}/model.safetensors"), load_file(f"{cut}/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.load(f"{whole}-rank0.pt")["metrics"] == torch.load(f"{cut}-rank0.pt")["metrics"]


def _regression_worker(rank: int, world: int, port: int, out: str, sigma: float, offset: float) -> None:
    """Linear regression under DDP with the rank-based estimator; the weights stay where they are
    (no optimizer step), as in the one-process estimator's test. With two ranks B_big = 2 B_small,
    so the two norms differ little: a long average (decay 0.995 over 1,000 steps) tames the noise."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    from visiondojo.optimize.gradient_noise import RankNoiseScale

    dist.init_process_group("gloo")
    d, share = 20, 32
    setup = torch.Generator().manual_seed(0)
    w_star = torch.randn(d, generator=setup)
    model = nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(w_star + offset * torch.randn(d, generator=setup))
    ddp = DistributedDataParallel(model)
    noise = RankNoiseScale(share, share * world, decay=0.995)
    ddp.register_comm_hook(None, noise.hook)
    data = torch.Generator().manual_seed(100 + rank)  # each rank its own samples
    for _ in range(1000):
        x = torch.randn(share, d, generator=data)
        y = x @ w_star + sigma * torch.randn(share, generator=data)
        ddp.zero_grad()
        (0.5 * (ddp(x)[:, 0] - y).square().mean()).backward()
        noise.close_step()
    torch.save({"b_noise": noise.end_epoch(), "delta": model.weight.detach()[0] - w_star}, f"{out}-{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("sigma, offset", [(0.5, 0.3), (2.0, 0.5)])
def test_the_rank_based_noise_scale_matches_linear_regression(tmp_path, sigma, offset) -> None:
    from test_optimize import linear_regression_noise_scale

    out = str(tmp_path / "noise")
    mp.spawn(_regression_worker, args=(2, _free_port(), out, sigma, offset), nprocs=2, join=True)
    found = [torch.load(f"{out}-{rank}.pt") for rank in range(2)]
    expected = linear_regression_noise_scale(20, sigma, found[0]["delta"])
    for rank in found:  # each rank's own estimate (its share against the all-reduced batch)
        assert rank["b_noise"] == pytest.approx(expected, rel=0.2)


def _evaluation_worker(rank: int, world: int, port: int, run_dir: str, out: str) -> None:
    """Evaluation under the user's own process group: each rank its block, every rank the whole's numbers."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo")
    torch.save(_evaluations(run_dir), f"{out}-{rank}.pt")
    dist.destroy_process_group()


def _evaluations(run_dir: str) -> dict:
    """The run's metrics on 97 images (blocks of 48 and 49 under two ranks), and every collected
    score, target, loss and hit in batches of 16 (several per block)."""
    from visiondojo.data.batches import Normalizer, make_batches
    from visiondojo.engine.evaluate import evaluate
    from visiondojo.engine.runtime import Runtime
    from visiondojo.tasks import make_task

    images, labels = make_problem(97, seed=4)
    run = visiondojo.load(run_dir, model=TinyNet())
    runtime = Runtime(run.plan.runtime)
    source = InMemory(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels), None, "test")  # (N, 1, H, W)
    batches = make_batches(source, 16, runtime.device, train=False, shard=(runtime.rank, runtime.world_size))
    collected = evaluate(run.model, make_task(run.plan.data), batches, Normalizer(run.plan.data, runtime.device),
                         runtime, collect=True)
    return {"metrics": visiondojo.evaluate(run, (images, labels)), "collected": collected}


def test_evaluation_is_sharded_and_every_rank_reports_the_whole(tmp_path) -> None:
    train = make_problem(288, seed=3)
    single = visiondojo.fit(TinyNet(), train, out=tmp_path / "one", regularization=RegularizationParams(),
                            **{**FAST, "epochs": 2})
    alone = _evaluations(str(single.dir))
    out = str(tmp_path / "eval")
    mp.spawn(_evaluation_worker, args=(2, _free_port(), str(single.dir), out), nprocs=2, join=True)
    for rank in range(2):
        found = torch.load(f"{out}-{rank}.pt", weights_only=False)
        assert found["metrics"] == alone["metrics"]
        assert found["collected"].metrics == alone["collected"].metrics
        for name in ("scores", "targets", "losses", "correct"):  # all 97, in data order
            assert torch.equal(getattr(found["collected"], name), getattr(alone["collected"], name)), name
    assert len(alone["collected"].correct) == 97


class FailsOnRankOne(TinyNet):
    """A model whose fifth training forward raises on rank 1 alone: a failure mid-training."""

    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and os.environ.get("RANK") == "1":
            FailsOnRankOne.calls += 1
            if FailsOnRankOne.calls == 5:
                raise RuntimeError("boom on rank 1")
        return super().forward(x)


def _failing_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        visiondojo.fit(FailsOnRankOne(), make_problem(288, seed=3), out=out, regularization=RegularizationParams(),
                       **{**FAST, "epochs": 3})
        outcome = "finished"
    except Exception as exc:  # what each rank raised, for the test to read
        outcome = f"{type(exc).__name__}: {exc}"
    with open(f"{out}-{rank}.txt", "w") as f:
        f.write(outcome)


def test_a_failing_rank_stops_the_job_and_its_error_is_the_one_shown(tmp_path) -> None:
    out = str(tmp_path / "run")
    mp.spawn(_failing_worker, args=(2, _free_port(), out), nprocs=2, join=True)  # no hang: both return
    first = open(f"{out}-1.txt").read()
    second = open(f"{out}-0.txt").read()
    assert first == "RuntimeError: boom on rank 1"  # the failing rank's own error, as it was
    assert second.startswith("PeerFailed: rank 0 stopped: another process of the job failed first")


def test_under_torchrun_the_cli_prints_a_failing_rank_error_once(tmp_path) -> None:
    """The real launcher: ``torchrun --nproc-per-node 2 -m visiondojo train``, rank 1's model raising."""
    (tmp_path / "flaky.py").write_text(
        "import os\nfrom conftest import TinyNet\n\n"
        "class Flaky(TinyNet):\n"
        "    def forward(self, x):\n"
        "        if self.training and os.environ['RANK'] == '1':\n"
        "            raise RuntimeError('rank 1 cannot go on')\n"
        "        return super().forward(x)\n\n"
        "def build(**kwargs):\n    return Flaky(outputs=10)\n")
    (tmp_path / "config.yaml").write_text(
        "data:\n  train: digits\n"
        "model:\n  spec: flaky:build\n"
        "training:\n  epochs: 2\n  batch_size: 32\n  lr: 0.01\n"
        "output:\n  dir: run\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.path.dirname(__file__),
                                                        os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(_free_port()), "-m", "visiondojo", "train", "config.yaml", "--quiet",
                           "--trust-code"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert done.stderr.count("rank 1 cannot go on") >= 1
    # Rank 1's traceback once (torchrun's own summary names the rank that failed first); nothing
    # from rank 0, whose collective broke when rank 1 left.
    assert done.stderr.count("[rank1]: Traceback") == 1, done.stderr
    assert "[rank0]" not in done.stderr and "PeerFailed" not in done.stderr, done.stderr
    assert "Root Cause (first observed failure)" in done.stderr and "rank      : 1" in done.stderr


def _budget_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if rank == 1:  # a slower clock on rank 1 must not matter: rank 0's decides
        from visiondojo.engine import epoch, loop

        loop.time = epoch.time = _SlowClock()
    run = visiondojo.fit(TinyNet(), make_problem(288, seed=3), out=out, budget=12, batch_size=32, lr=0.01,
                         regularization=RegularizationParams(), progress=False)
    torch.save({"history": run.history, "state": run.model.state_dict(), "plan": run.plan.to_dict()},
               f"{out}-rank{rank}.pt")


class _SlowClock:
    """``time`` for the loop of rank 1: its clock runs at twice the speed, as if it were far behind."""

    def __init__(self) -> None:
        import time

        self.time, self.start = time, time.perf_counter()

    def perf_counter(self) -> float:
        return self.start + 2 * (self.time.perf_counter() - self.start)


def test_a_budgeted_run_follows_one_clock_on_every_rank(tmp_path) -> None:
    out = str(tmp_path / "budget")
    mp.spawn(_budget_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    ranks = [torch.load(f"{out}-rank{r}.pt", weights_only=False) for r in range(2)]
    assert ranks[0]["plan"] == ranks[1]["plan"]  # planned once, on rank 0, followed by both
    untimed = [[{k: v for k, v in row.items() if not k.endswith("_s")} for row in rank["history"]] for rank in ranks]
    assert untimed[0] == untimed[1] != []  # the same epochs, steps and re-plans
    assert all(torch.equal(ranks[0]["state"][k], ranks[1]["state"][k]) for k in ranks[0]["state"])
    metrics = json.loads((tmp_path / "budget" / "metrics.json").read_text())
    assert metrics["timing"]["total_s"] <= 12 + 3


def test_planning_for_ranks_rounds_the_batch_and_states_the_batchnorm_rule() -> None:
    from types import SimpleNamespace

    from torch import nn

    from visiondojo.choose import _choose_for_ranks
    from visiondojo.plan import Plan

    plan = Plan()
    plan.choose("optimization.batch_size", 32, "B_noise 30")
    bn_model = SimpleNamespace(model=nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))
    _choose_for_ranks(plan, bn_model, "cpu", 3)
    assert plan.optimization.batch_size == 33 and "rounded to a multiple of the 3 processes" in \
        plan.evidence["optimization.batch_size"]
    assert plan.runtime.sync_batchnorm is False and "GPUs only" in plan.evidence["runtime.sync_batchnorm"]
    _choose_for_ranks(plan, bn_model, "cuda", 8)  # 33 over 8: pinned by nobody, rounded to 32, 4 per GPU
    assert plan.optimization.batch_size == 32 and plan.runtime.sync_batchnorm is True
    pinned = Plan()
    pinned.set("optimization.batch_size", 30)  # the user's batch stays; shares one apart train it
    _choose_for_ranks(pinned, SimpleNamespace(model=nn.Linear(2, 2)), "cuda", 4)
    assert pinned.optimization.batch_size == 30 and "runtime.sync_batchnorm" not in pinned.evidence


def test_a_launch_that_does_not_add_up_is_refused_before_any_connection(monkeypatch) -> None:
    from visiondojo.engine.distributed import process_group

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_PORT", raising=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="MASTER_PORT is not set: start the processes with torchrun"):
        with process_group():
            pass
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ConfigError, match="RANK is 2 but WORLD_SIZE is 2"):
        with process_group():
            pass
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(torch.distributed, "is_gloo_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no gloo backend"):
        with process_group():
            pass
