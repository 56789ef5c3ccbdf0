"""Many processes: the process group torchrun asks for, set up and torn down around one call.

``torchrun --nproc-per-node N -m visiondojo train cfg.yaml`` (or ``fit``/``train`` from Python
under torchrun) sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in every process; ``process_group``
then initializes ``torch.distributed`` from them (NCCL on CUDA, each rank pinned to its local GPU;
gloo on the CPU) and destroys the group when the call ends, on success, error or Ctrl-C. A group
the user initialized is used as it is and left alone. Without torchrun nothing happens.

Under a group, a run is planned once and followed everywhere: rank 0 runs the meta-learners (their
probes are one-process trainings: ``Runtime(local=True)``) and broadcasts the plan; every rank
trains a shard of each global batch (``data.batches.DeviceBatches``) through
``DistributedDataParallel``, and only rank 0 writes the run folder.

A rank that fails stops the job with its error shown once: the first failure is claimed in the
group's key-value store, and every later one (the peers' broken collectives, the same bad input
seen by every rank) is raised as ``PeerFailed``, which the CLI leaves unprinted; torchrun then
stops the remaining processes. Without that, one bad file would print N tracebacks, N - 1 of
them about a closed connection.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
from typing import Callable, Iterator, ParamSpec, TypeVar

import torch
import torch.distributed as dist

from ..errors import ConfigError, VisionDojoError
from ..launch import launched, launched_world_size

P = ParamSpec("P")
R = TypeVar("R")
PLAN_WAIT = datetime.timedelta(days=7)
"""How long the other ranks may wait for rank 0's plan: planning takes a share of the budget, which
may be days; a process group's own timeout (10 minutes under NCCL) would end the job first."""
FAILURES = "visiondojo/failures"
_waiting_groups: dict[int, dist.ProcessGroup] = {}


class PeerFailed(VisionDojoError):
    """This rank stopped because another process of the job failed first (that one shows its error)."""


RANK_SEED_STRIDE = 7919


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s own random streams (augmentation, dropout). Ranks must not share
    them: with one seed, sample i of every rank's share would get the same crop, the same mask
    and the same dropout, so N ranks would draw 1/N of the noise one process draws for the same
    global batch. Rank 0 keeps ``seed``: one process is unchanged. (The data order is the job's,
    one seed for all: ``data.batches.BatchOrder``.)"""
    return seed + RANK_SEED_STRIDE * rank


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """The process group for one ``fit``/``train`` call under torchrun (see the module docstring)."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        yield
        return
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed; run one process")
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but {', '.join(missing)} is not set: start the "
                          "processes with torchrun (torchrun --nproc-per-node N -m visiondojo train cfg.yaml)")
    rank, world = int(os.environ["RANK"]), launched_world_size()
    if not 0 <= rank < world:
        raise ConfigError(f"RANK is {rank} but WORLD_SIZE is {world}: the processes disagree about the job's size; "
                          "start them all with one torchrun command (torchrun --nproc-per-node N ...)")
    cuda = torch.cuda.is_available()
    backend_ok = dist.is_nccl_available() if cuda else dist.is_gloo_available()
    if not backend_ok:
        raise ConfigError(f"this PyTorch build has no {'NCCL' if cuda else 'gloo'} backend for "
                          f"{'GPUs' if cuda else 'the CPU'}; install a build with it, or run one process")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local} but this machine has {torch.cuda.device_count()} GPUs: start at "
                              "most one process per GPU (--nproc-per-node)")
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
    except BaseException as exc:
        if not _first_to_fail():
            raise PeerFailed(f"rank {dist.get_rank()} stopped: another process of the job failed first "
                             f"({type(exc).__name__})") from exc
        raise
    finally:
        _waiting_groups.clear()
        dist.destroy_process_group()


def _first_to_fail() -> bool:
    """Whether this rank's failure is the job's first (counted in the group's store). A store that
    cannot be reached went down with the rank that hosted it, which therefore failed first."""
    try:
        return int(dist.distributed_c10d._get_default_store().add(FAILURES, 1)) == 1
    except Exception:  # noqa: BLE001 - any failure to reach the store means another rank went first
        return False


def broadcast_from_main(value: object) -> object:
    """Rank 0's ``value`` on every rank (itself without a group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    # The others wait while rank 0 plans, on a CPU group of their own with a long timeout (a
    # collective on the training group would time out first; see PLAN_WAIT).
    key = id(dist.group.WORLD)
    if key not in _waiting_groups:
        _waiting_groups[key] = dist.new_group(backend="gloo", timeout=PLAN_WAIT)
    holder = [value]
    dist.broadcast_object_list(holder, src=0, group=_waiting_groups[key])
    return holder[0]


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def in_process_group(function: Callable[P, R]) -> Callable[P, R]:
    """``function`` run inside ``process_group()``: what ``fit`` and ``train`` are."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with process_group():
            return function(*args, **kwargs)

    return wrapper
