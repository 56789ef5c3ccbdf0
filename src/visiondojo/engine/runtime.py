"""Device, precision and memory format, resolved in one place (as Lightning Fabric does).

``auto`` picks: CUDA when present, else CPU; bf16 autocast where the hardware has bf16 units
(CUDA with bf16; CPUs with AMX or AVX-512-BF16), fp16 + GradScaler on older CUDA GPUs, else
fp32; channels_last for conv nets (oneDNN and cuDNN both run NHWC convolutions faster).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..plan import RuntimeParams

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
    if channels_last == "auto":
        channels_last = has_conv
        evidence["runtime.channels_last"] = "conv net: NHWC convolutions are faster" if has_conv else "no convolutions"
    else:
        evidence["runtime.channels_last"] = "set by the user"
    return RuntimeParams(device=device, precision=precision, channels_last=bool(channels_last)), evidence


@dataclass
class Runtime:
    """The resolved choices as live objects: device, autocast context, grad scaler."""

    params: RuntimeParams

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
