"""Kills and signals: a run stopped by SIGTERM mid-epoch checkpoints its exact position and resumes to
the weights of an uninterrupted run, bit for bit; SIGKILL at random moments loses nothing either."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file

import visiondojo
from visiondojo.cli import main
from visiondojo.engine.interrupt import Interrupted
from visiondojo.plan import AugmentOp, RegularizationParams

from conftest import FAST, TinyNet, make_problem

POLICY = RegularizationParams(augment=[AugmentOp("translate", 0.3), AugmentOp("noise", 0.4, p=0.5)], mixup=0.2,
                              dropout=0.2)


class SignalsItself(TinyNet):
    """Sends ``signum`` to its own process during its ``at``-th training forward."""

    def __init__(self, at: int, signum: int = signal.SIGTERM):
        super().__init__()
        self.at, self.signum, self.calls = at, signum, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                os.kill(os.getpid(), self.signum)
        return super().forward(x)


def _plan(tmp_path):
    train, test = make_problem(288, seed=3), make_problem(96, seed=4)
    planned = visiondojo.fit(TinyNet(), train, test_data=test, out=tmp_path / "plan", regularization=POLICY,
                             **{**FAST, "epochs": 3, "batch_size": 32})
    return planned, train, test


def test_sigterm_mid_epoch_checkpoints_and_resumes_bit_exactly(tmp_path) -> None:
    planned, train, test = _plan(tmp_path)
    plan = planned.dir / "plan.yaml"
    whole = visiondojo.train(TinyNet(), train, test_data=test, plan=plan, out=tmp_path / "whole", progress=False)
    with pytest.raises(Interrupted, match=r"stopped by SIGTERM in epoch 2 after step 5 of 8.*resume=True") as caught:
        visiondojo.train(SignalsItself(at=13), train, test_data=test, plan=plan, out=tmp_path / "cut", progress=False)
    assert caught.value.exit_code == 143
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are put back
    resumed = visiondojo.train(TinyNet(), train, test_data=test, plan=plan, out=tmp_path / "cut", resume=True,
                               progress=False)
    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert resumed.metrics == whole.metrics
    assert [row["train_loss"] for row in resumed.history] == [row["train_loss"] for row in whole.history]


def test_the_cli_prints_the_command_that_continues(tmp_path, monkeypatch, capsys) -> None:
    planned, train, test = _plan(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.yaml").write_text("data:\n  train: digits\nmodel:\n  spec: fmnist-resnet\n  kwargs: {width: 4}\n"
                                       "training:\n  epochs: 2\n  batch_size: 64\n  lr: 0.01\n")
    from visiondojo.engine import loop

    original = loop.train_one_epoch

    def interrupted_once(*args, **kwargs):  # Ctrl-C during the user's run (not the planning probes)
        if kwargs["stop"] is not None and not getattr(loop, "_sent", False):
            loop._sent = True
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "train_one_epoch", interrupted_once)
    assert main(["train", "cfg.yaml", "--out", "run", "--overwrite", "--quiet"]) == 130
    err = capsys.readouterr().err
    assert "interrupted: stopped by SIGINT in epoch 1 after step 1" in err
    assert "continue with: visiondojo train cfg.yaml --quiet --resume --out run" in err
    assert main(["train", "cfg.yaml", "--quiet", "--resume", "--out", "run"]) == 0
    # Stopped while planning (no plan.yaml yet): the same resume command starts the run again.
    assert main(["train", "cfg.yaml", "--quiet", "--resume", "--out", "planning"]) == 0
    assert "resume: planning holds no run yet (none was started there, or it stopped while planning); it starts" \
        in capsys.readouterr().err
    assert (tmp_path / "planning" / "model.safetensors").exists()


def test_resuming_a_run_stopped_before_its_first_checkpoint_starts_it_with_its_plan(tmp_path, capsys) -> None:
    planned, train, test = _plan(tmp_path)
    whole = visiondojo.train(TinyNet(), train, test_data=test, plan=planned.dir / "plan.yaml", out=tmp_path / "whole",
                             progress=False)
    # What a kill leaves after planning, before the first checkpoint: the plan and an empty checkpoint folder.
    stopped = tmp_path / "stopped"
    (stopped / "checkpoints").mkdir(parents=True)
    (stopped / "plan.yaml").write_bytes((planned.dir / "plan.yaml").read_bytes())
    (stopped / "notes.txt").write_text("the user's own file")
    plan = planned.dir / "plan.yaml"
    resumed = visiondojo.train(TinyNet(), train, test_data=test, plan=plan, out=stopped, resume=True, progress=True)
    assert "has no checkpoint yet (the run stopped before its first); it starts from its first step with the plan " \
           "it had made" in capsys.readouterr().err
    assert (stopped / "notes.txt").read_text() == "the user's own file"
    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    # A folder holding another tool's files is no run to start: refused, nothing removed.
    foreign = tmp_path / "foreign"
    (foreign / "checkpoints").mkdir(parents=True)
    (foreign / "checkpoints" / "epoch=3.ckpt").write_text("someone else's")
    with pytest.raises(visiondojo.RunExistsError, match="no run to resume"):
        visiondojo.train(TinyNet(), train, test_data=test, plan=plan, out=foreign, resume=True, progress=False)
    assert (foreign / "checkpoints" / "epoch=3.ckpt").read_text() == "someone else's"
    # A finished run is not started again: resuming it continues from its last checkpoint, at the end.
    again = visiondojo.train(TinyNet(), train, test_data=test, plan=plan, out=stopped, resume=True, progress=True)
    assert "no checkpoint yet" not in capsys.readouterr().err
    assert again.history == resumed.history and again.metrics["test"] == resumed.metrics["test"]


def test_a_run_that_stopped_early_and_is_resumed_trains_no_further(tmp_path, monkeypatch) -> None:
    """Killed during its final evaluation, an early-stopped (or budget-cut) run relaunched with
    --resume only finishes: it does not train the epochs it had decided against."""
    from visiondojo.engine import loop

    planned, train, test = _plan(tmp_path)
    original = loop._after_validation
    monkeypatch.setattr(loop, "_after_validation",
                        lambda state, opt: loop.Decision.STOP if state.epoch == 2 else original(state, opt))
    stopped = visiondojo.train(TinyNet(), train, test_data=test, plan=planned.dir / "plan.yaml", out=tmp_path / "run",
                               progress=False)
    reason = json.loads((stopped.dir / "metrics.json").read_text())["stop_reason"]
    assert len(stopped.history) == 2 and reason.startswith("early stopping")
    monkeypatch.setattr(loop, "_after_validation", original)
    again = visiondojo.train(TinyNet(), train, test_data=test, plan=planned.dir / "plan.yaml", out=tmp_path / "run",
                             resume=True, progress=False)
    assert again.history == stopped.history
    assert json.loads((again.dir / "metrics.json").read_text())["stop_reason"] == reason
    for name, value in stopped.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[name]), name


RUNNER = textwrap.dedent("""
    import sys
    import visiondojo.api
    visiondojo.api.CHECKPOINT_EVERY_S = 0.05  # checkpoints mid-epoch too, so kills land around them
    from visiondojo.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _start(tmp_path, plan, out, resume: bool) -> subprocess.Popen:
    args = ["train", "--plan", str(plan), "--out", str(out), "--quiet"]
    args += ["--resume"] if resume else ["--overwrite"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", RUNNER, *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _resumable(out) -> bool:
    return any((out / "checkpoints").glob("last.safetensors*")) and (out / "plan.yaml").exists()


def _until_checkpointed(run: subprocess.Popen, out) -> float:
    """When ``run`` (re)writes its first checkpoint; the process may also end first."""
    last = out / "checkpoints" / "last.safetensors"
    before = last.stat().st_mtime_ns if last.exists() else None
    while run.poll() is None:
        if last.exists() and last.stat().st_mtime_ns != before:
            break
        time.sleep(0.01)
    return time.perf_counter()


def test_sigkill_at_random_moments_resumes_to_the_same_weights(tmp_path) -> None:
    """Three SIGKILLs at random moments of a CLI replay (during training, checkpoint writes, the
    final evaluation, or before the first checkpoint), each followed by --resume (or a fresh start
    when nothing was checkpointed yet): the final weights equal the uninterrupted run's."""
    (tmp_path / "cfg.yaml").write_text("data:\n  train: digits\nmodel:\n  spec: fmnist-resnet\n  kwargs: {width: 4}\n"
                                       "training:\n  epochs: 3\n  batch_size: 64\n  lr: 0.01\nregularization:\n  augment: []\n")
    assert main(["train", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "plan"), "--quiet"]) == 0
    plan = tmp_path / "plan" / "plan.yaml"
    start = time.perf_counter()
    reference = _start(tmp_path, plan, tmp_path / "ref", resume=False)
    first = _until_checkpointed(reference, tmp_path / "ref") - start
    _, errors = reference.communicate(timeout=300)
    assert reference.returncode == 0, errors
    training = time.perf_counter() - start - first  # from the first checkpoint to the end
    out, rng, resumed = tmp_path / "killed", random.Random(7), 0
    for kill in range(3):
        resumed += _resumable(out)
        run = _start(tmp_path, plan, out, resume=kill > 0)  # --resume restarts a run with no checkpoint yet
        if kill:  # the first kill lands anywhere (start-up, reading, before any checkpoint)
            _until_checkpointed(run, out)
        time.sleep(rng.uniform(0.05, 0.9) * (first if kill == 0 else training))
        run.send_signal(signal.SIGKILL)
        run.communicate(timeout=60)  # reaps it and closes its pipe
    resumed += _resumable(out)
    final = _start(tmp_path, plan, out, resume=True)
    _, errors = final.communicate(timeout=300)
    assert final.returncode == 0, errors
    expected, found = load_file(str(tmp_path / "ref" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert expected.keys() == found.keys() and all(torch.equal(expected[k], found[k]) for k in expected)
    assert resumed >= 2  # kills after checkpoints: the resume path ran, not only fresh starts
