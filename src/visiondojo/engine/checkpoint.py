"""Checkpoints as single safetensors files, written atomically, checksummed, resumable exactly.

A training checkpoint holds model weights, optimizer and scheduler state, the epoch, RNG states
and the loop's bookkeeping. Tensors go into the safetensors body; everything else (nested
dicts with int keys, lists, numbers) is encoded as JSON in the safetensors metadata, with
tensors replaced by references. No pickle, so loading a checkpoint cannot run code.

Every file written here carries a SHA-256 of its content in its metadata; reading checks it, so
a truncated or damaged file is an error that names it (``DamagedCheckpoint``), never a model
silently resumed from garbage. A new training checkpoint is written beside the old one, flushed
to disk, and only then takes its name (an atomic rename), the old one kept as ``<name>.prev``:
a kill at any moment leaves the last complete checkpoint intact, and a damaged one has a
predecessor to fall back to.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import _remove_duplicate_names, load_file, load_model, save_file, save_model

from ..errors import VisionDojoError

_META_KEY = "visiondojo_state"
_SUM_KEY = "visiondojo_sha256"
PREVIOUS_SUFFIX = ".prev"


class DamagedCheckpoint(VisionDojoError):
    """A checkpoint that cannot be read, or whose content no longer matches its checksum."""


def _digest(tensors: dict[str, torch.Tensor], structure: str) -> str:
    """SHA-256 over the structure and every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256(structure.encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # the buffer itself, no copy
    return digest.hexdigest()


def flatten(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "t") -> Any:
    """JSON-able structure of ``obj`` with tensors moved into ``tensors``."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}/{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[k, flatten(v, tensors, prefix)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [flatten(v, tensors, prefix) for v in obj], "tuple": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}")


def unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            items = [unflatten(v, tensors) for v in obj["__list__"]]
            return tuple(items) if obj.get("tuple") else items
    return obj


def atomic_replace(tmp: Path, path: Path, *, keep_previous: bool = False) -> None:
    """``tmp`` becomes ``path`` once its bytes are on disk; with ``keep_previous`` the file it
    replaces stays as ``<path>.prev``. The folder is flushed too, so the rename itself survives
    a power cut."""
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    if keep_previous and path.exists():
        os.replace(path, previous(path))
    os.replace(tmp, path)
    _fsync_folder(path.parent)


def previous(path: Path) -> Path:
    return path.with_name(path.name + PREVIOUS_SUFFIX)


def _fsync_folder(folder: Path) -> None:
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without directory handles: the rename is as durable as it gets
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def read_checked(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a file written here, its checksum verified (files without one,
    from before checksums, are read as they are)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise DamagedCheckpoint(f"{path}: cannot be read ({exc}); the file is truncated or damaged") from None
    expected = metadata.get(_SUM_KEY)
    if expected is not None and _digest(tensors, metadata.get(_META_KEY, "")) != expected:
        raise DamagedCheckpoint(f"{path}: its content does not match its checksum; the file is damaged")
    return tensors, metadata


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (nested dicts/lists of tensors and plain values) atomically, keeping the
    file it replaces as ``<path>.prev``."""
    tensors: dict[str, torch.Tensor] = {}
    structure = json.dumps(flatten(state, tensors))
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={_META_KEY: structure, _SUM_KEY: _digest(tensors, structure)})
    atomic_replace(tmp, path, keep_previous=True)


def load_state(path: Path) -> dict[str, Any]:
    tensors, metadata = read_checked(path)
    if _META_KEY not in metadata:
        raise DamagedCheckpoint(f"{path}: not a training checkpoint (no visiondojo state in it)")
    return unflatten(json.loads(metadata[_META_KEY]), tensors)


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """Model weights only (what ``model.safetensors`` holds), checksummed, atomically. safetensors'
    ``save_model`` stores tied tensors once; the checksum covers what it stores."""
    state = model.state_dict()
    dropped = {name for group in _remove_duplicate_names(state).values() for name in group}
    stored = {name: tensor for name, tensor in state.items() if name not in dropped}
    tmp = path.with_name(path.name + ".tmp")
    save_model(model, str(tmp), metadata={_SUM_KEY: _digest(stored, "")})
    atomic_replace(tmp, path)


def load_weights(model: torch.nn.Module, path: Path, device: str | torch.device = "cpu") -> None:
    """Weights from ``save_weights`` into ``model``, the checksum verified first."""
    read_checked(path)
    load_model(model, str(path), device=str(device))


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))
