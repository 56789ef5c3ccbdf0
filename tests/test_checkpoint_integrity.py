"""Checkpoints that cannot be trusted are caught, the previous one takes over, and a run folder that
cannot hold the run is refused before training."""

from __future__ import annotations

import errno
import shutil
import tempfile
from collections import namedtuple

import pytest
import torch

import visiondojo
from visiondojo.engine import checkpoint
from visiondojo.errors import VisionDojoError

from conftest import FAST, TinyNet, make_problem


def test_a_flipped_byte_or_a_truncated_file_is_named_as_damaged(tmp_path) -> None:
    path = tmp_path / "state.safetensors"
    checkpoint.save_state(path, {"w": torch.arange(10.0), "loop": {"epoch": 3}})
    assert checkpoint.load_state(path)["loop"]["epoch"] == 3
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # inside the last tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(checkpoint.DamagedCheckpoint, match="does not match its checksum"):
        checkpoint.load_state(path)
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(checkpoint.DamagedCheckpoint, match="truncated or damaged"):
        checkpoint.load_state(path)
    weights = tmp_path / "model.safetensors"
    checkpoint.save_weights(TinyNet(), weights)
    weights.write_bytes(weights.read_bytes()[:-7])
    with pytest.raises(checkpoint.DamagedCheckpoint):
        checkpoint.load_weights(TinyNet(), weights)


def test_each_save_keeps_the_one_before(tmp_path) -> None:
    path = tmp_path / "last.safetensors"
    for epoch in (1, 2):
        checkpoint.save_state(path, {"loop": {"epoch": epoch}})
    assert checkpoint.load_state(path)["loop"]["epoch"] == 2
    assert checkpoint.load_state(checkpoint.previous(path))["loop"]["epoch"] == 1
    assert not list(tmp_path.glob("*.tmp"))


def test_resume_falls_back_to_the_previous_checkpoint_when_the_last_is_damaged(tmp_path) -> None:
    train, test = make_problem(192, seed=3), make_problem(64, seed=4)
    whole = visiondojo.fit(TinyNet(), train, test_data=test, out=tmp_path / "whole", **{**FAST, "epochs": 3})
    plan = whole.dir / "plan.yaml"
    cut = tmp_path / "cut"
    visiondojo.train(TinyNet(), train, test_data=test, plan=plan, out=cut, progress=False)
    last = cut / "checkpoints" / "last.safetensors"
    last.write_bytes(last.read_bytes()[:100])  # the disk lost the last one (epoch 3)
    (cut / "model.safetensors").unlink()
    with pytest.warns(UserWarning, match="truncated or damaged; resuming from the checkpoint before it.*epoch 2"):
        again = visiondojo.train(TinyNet(), train, test_data=test, plan=plan, out=cut, resume=True, progress=False)
    # Epoch 3 is trained again from epoch 2's state: the same weights as the uninterrupted run.
    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[name]), name
    for path in (last, checkpoint.previous(last)):
        path.write_bytes(b"not a checkpoint")
    with pytest.raises(VisionDojoError, match="cannot be read"):
        visiondojo.train(TinyNet(), train, test_data=test, plan=plan, out=cut, resume=True, progress=False)


def test_a_folder_that_cannot_hold_the_run_is_refused_before_training(tmp_path, monkeypatch) -> None:
    train = make_problem(64, seed=3)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**20, 9 * 2**20, 2**20))
    with pytest.raises(VisionDojoError, match=r"1 MB free on its disk, but the run needs about \d+ MB"):
        visiondojo.fit(TinyNet(), train, out=tmp_path / "full", **FAST)
    monkeypatch.undo()

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", read_only)
    with pytest.raises(VisionDojoError, match="cannot be written \\(Read-only file system\\)"):
        visiondojo.fit(TinyNet(), train, out=tmp_path / "ro", **FAST)
