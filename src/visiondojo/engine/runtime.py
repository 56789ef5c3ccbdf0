"""Device, precision, memory format and distribution, resolved in one place (as Lightning Fabric's
connector does).

``auto`` picks: CUDA when present, else CPU; bf16 autocast where the hardware has bf16 units
(CUDA with bf16; CPUs with AMX or AVX-512-BF16), fp16 + GradScaler on older CUDA GPUs, else
fp32; channels_last for conv nets (oneDNN and cuDNN both run NHWC convolutions faster).

``Runtime`` is the live side: the autocast context, and the one place a loss becomes an optimizer
step (scaled backward, unscale, clipping, step), so a GradScaler or a clip is never handled twice.
It also answers the distribution questions (``rank``, ``world_size``, ``is_main``) and does the
collectives (``all_reduce``, ``all_gather_object``, ``broadcast``, ``barrier``): in one process they are trivial; under an
initialized ``torch.distributed`` process group they are the group's. Whatever writes the run folder
asks ``is_main`` first.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from ..errors import ConfigError
from ..plan import RuntimeParams

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_REDUCE_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
T = TypeVar("T")


def cpu_has_bf16() -> bool:
    """True on CPUs with AMX tiles or AVX-512-BF16, where bf16 autocast is a real speed-up."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def resolve_runtime(model: nn.Module, device: str = "auto", precision: str = "auto",
                    channels_last: bool | str = "auto") -> tuple[RuntimeParams, dict[str, str]]:
    """RuntimeParams for this machine plus one line of evidence per choice."""
    evidence: dict[str, str] = {}
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        evidence["runtime.device"] = "CUDA is available" if device == "cuda" else "no CUDA device: training on the CPU"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} asked for but CUDA is not available; use device: auto or cpu")
    else:
        evidence["runtime.device"] = "set by the user"
    kind = torch.device(device).type
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if kind == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            evidence["runtime.precision"] = ("GPU supports bf16" if precision == "bf16"
                                             else "GPU lacks bf16: fp16 autocast with a GradScaler")
        elif kind == "cpu" and cpu_has_bf16():
            precision = "bf16"
            evidence["runtime.precision"] = "CPU has bf16 units (AMX or AVX-512-BF16)"
        else:
            precision = "fp32"
            evidence["runtime.precision"] = "no fast low-precision path on this device"
    else:
        evidence["runtime.precision"] = "set by the user"
    if precision == "fp16" and kind != "cuda":
        raise ConfigError("precision: fp16 is for CUDA devices; use bf16 or fp32 on the CPU")
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    batches_itself = isinstance(getattr(model, "transform", None), GeneralizedRCNNTransform)
    if channels_last == "auto":
        channels_last = has_conv and not batches_itself
        evidence["runtime.channels_last"] = (
            "the detector batches its images itself, in NCHW: NHWC weights would convert at every layer "
            "(SmallFCOS trained 5-10% slower with them on a CPU)" if batches_itself else
            "conv net: NHWC convolutions are faster" if has_conv else "no convolutions")
    else:
        evidence["runtime.channels_last"] = "set by the user"
    return RuntimeParams(device=device, precision=precision, channels_last=bool(channels_last)), evidence


@dataclass
class Runtime:
    """The resolved choices as live objects: device, autocast context, grad scaler."""

    params: RuntimeParams
    local: bool = False
    """One process's view even under a process group: the meta-learners' probes, which rank 0
    runs alone while the others wait for its plan (a collective there would never be answered)."""

    def __post_init__(self) -> None:
        self.device = torch.device(self.params.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.params.precision == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = _AUTOCAST_DTYPES.get(self.params.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.params.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def backward_and_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, *,
                          grad_clip_norm: float | None = None) -> bool:
        """Zero the gradients, backpropagate ``loss`` and step (``backward`` then ``step``)."""
        optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        return self.step(optimizer, grad_clip_norm=grad_clip_norm)

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` (scaled under fp16), adding to the gradients already there: a
        batch in micro-batches calls this once per micro-batch, then ``step`` once."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, *, grad_clip_norm: float | None = None) -> bool:
        """Clip the optimizer's parameters to ``grad_clip_norm`` (after unscaling) and step. Hooks
        on the optimizer (the decoupled weight decay) run with the step; a step the GradScaler
        skips skips them too.

        Returns whether the step was taken. Without a GradScaler, a step whose gradients are not
        finite (a NaN or infinite loss makes them so) is skipped, gradients dropped: one host
        sync per step, as a GradScaler makes. Under DDP the gradients are the all-reduced ones,
        so every rank skips alike. With a GradScaler the scaler's own skip logic rules (its
        skips are routine, not failures) and this returns True (``train_step`` then counts a
        step whose loss is not finite as skipped)."""
        if self.scaler is not None:
            if grad_clip_norm:
                self.scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(_parameters(optimizer), grad_clip_norm)
            self.scaler.step(optimizer)
            self.scaler.update()
            return True
        parameters = _parameters(optimizer)
        if grad_clip_norm:
            norm = nn.utils.clip_grad_norm_(parameters, grad_clip_norm)
        else:
            norm = nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
        if not bool(torch.isfinite(norm)):
            optimizer.zero_grad(set_to_none=True)
            return False
        optimizer.step()
        return True

    # --- distribution: trivial in one process ----------------------------------------------------

    @property
    def distributed(self) -> bool:
        return not self.local and dist.is_available() and dist.is_initialized()

    @property
    def rank(self) -> int:
        return dist.get_rank() if self.distributed else 0

    @property
    def world_size(self) -> int:
        return dist.get_world_size() if self.distributed else 1

    @property
    def is_main(self) -> bool:
        """The process that writes the run folder and shows progress."""
        return self.rank == 0

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """``tensor`` reduced over every process (``sum``, ``max`` or ``min``), in place; returned."""
        if op not in _REDUCE_OPS:
            raise ValueError(f"all_reduce: op {op!r} is not one of {', '.join(_REDUCE_OPS)}")
        if self.world_size > 1:
            dist.all_reduce(tensor, op=_REDUCE_OPS[op])
        return tensor

    def broadcast(self, value: T, src: int = 0) -> T:
        """Process ``src``'s ``value`` (any picklable object: a plan, a decision) on every process."""
        if self.world_size == 1:
            return value
        holder: list[Any] = [value]
        dist.broadcast_object_list(holder, src=src)
        return holder[0]

    def all_gather_object(self, value: T) -> list[T]:
        """Every process's ``value`` (picklable), in rank order, on every process."""
        if self.world_size == 1:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def decide(self, *, from_main: list[bool], from_any: list[int]) -> list[int]:
        """Decisions every process takes alike: ``from_main`` as rank 0 sees them (its clock rules
        the job: the budget, periodic checkpoints), ``from_any`` as the largest over the ranks (a
        signal that reached any of them). One small all-reduce on the device; the caller asks only
        where a decision is due."""
        if self.world_size == 1:
            return [int(flag) for flag in [*from_main, *from_any]]
        mains = [int(flag) if self.is_main else 0 for flag in from_main]
        votes = torch.tensor([*mains, *[int(flag) for flag in from_any]], device=self.device)
        dist.all_reduce(votes, op=dist.ReduceOp.MAX)
        return votes.tolist()

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm's running statistics) on every rank. DDP broadcasts them
        before each training forward, but the last forward of an epoch updates each rank's own
        from its own share of the batch: without this, ranks would validate different models."""
        if self.world_size > 1:
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def _parameters(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]
