"""Fault injection on Fashion-MNIST: kills, NaN episodes, out-of-memory errors and bad input.

Usage (from the repository root)::

    python bench/faults.py --out bench/results/faults.json

1. **Kills.** A plan is made once (``fit`` of ``fmnist-resnet`` on ``--train`` training images, 3
   epochs, batch 128, everything pinned so a replay is deterministic); its uninterrupted replay is
   the reference. Then ``--kills`` trials: each starts the replay in a fresh process (checkpointing
   mid-epoch every 0.5 s, so kills land around checkpoint writes too), SIGKILLs it at a random
   moment of its life (start-up, reading, training, a checkpoint write, the final evaluation or
   the report), and continues it (``resume=True`` when a checkpoint exists, else from the start)
   until it finishes. Counted: trials whose final weights are bit-identical to the reference.
2. **NaN episodes.** ``--episodes`` replays, each with NaN losses injected at 1 to 3 consecutive
   random steps (``engine.faults``): runs that finished, and their test accuracy against the
   clean replay's. Then as many with 3 consecutive NaN steps, each of which forces a roll-back
   (``engine.rollback``): the cost of going back and cutting the learning rate. The yardstick:
   the clean replays of ``--episodes`` other seeds (another batch order, nothing else changed),
   whose distance from the clean run is what any perturbation of a run of this size moves its
   accuracy by (``--test`` scored images bound the measurement too: 2,000 give a standard error
   of 0.9 points at 78 %; the whole 10,000, 0.4).
2b. **Kills of a budgeted CLI run.** ``--budgeted-kills`` runs of ``visiondojo train cfg.yaml
   --resume`` on the same images as PNG folders with a ``--budget`` (meta-learners, policy search
   and all), each SIGKILLed once (half while planning, half after the plan is written) and
   relaunched with the same command. Counted: runs that finished, and runs whose plan, when made
   before the kill, was kept (a plan measured on the clock is never bit-identical to another run's).
3. **Out of memory.** ``--episodes`` replays with an out-of-memory error injected at a random
   step: runs that finished with the plan's global batch, and their accuracy.
4. **Bad input.** The bad-input catalogue and the input fuzzer (``tests/test_bad_input.py``,
   ``tests/test_fuzz_inputs.py``) run under pytest: cases tried and unexpected exceptions.

``--parts`` runs some of them (each part draws from its own seeded stream, so a part's trials do
not depend on which others ran).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

import visiondojo
from visiondojo.data.builtin import load_fashion_mnist
from visiondojo.engine import faults

RUNNER = textwrap.dedent("""
    import sys
    import visiondojo, visiondojo.api
    from visiondojo.data.builtin import load_fashion_mnist
    visiondojo.api.CHECKPOINT_EVERY_S = 0.5
    n, plan, out, resume, m = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == "1", int(sys.argv[5])
    images, labels = load_fashion_mnist("train")
    test_images, test_labels = load_fashion_mnist("test")
    visiondojo.train("fmnist-resnet", (images[:n], labels[:n]), test_data=(test_images[:m], test_labels[:m]),
                     plan=plan, out=out, resume=resume, overwrite=not resume, progress=False)
""")


def _data(n: int, m: int) -> tuple[Any, Any]:
    images, labels = load_fashion_mnist("train")
    test_images, test_labels = load_fashion_mnist("test")
    return (images[:n], labels[:n]), (test_images[:m], test_labels[:m])


def _start(n: int, m: int, plan: Path, out: Path, resume: bool) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RUNNER, str(n), str(plan), str(out), "1" if resume else "0", str(m)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _resumable(out: Path) -> bool:
    return (out / "plan.yaml").exists() and any((out / "checkpoints").glob("last.safetensors*"))


def _same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def kills(n: int, m: int, plan: Path, root: Path, trials: int, rng: random.Random) -> dict[str, Any]:
    start = time.perf_counter()
    reference = _start(n, m, plan, root / "reference", resume=False)
    _, errors = reference.communicate()
    if reference.returncode != 0:
        raise SystemExit(errors)
    lifetime = time.perf_counter() - start
    identical, resumes = 0, 0
    for trial in range(trials):
        out = root / f"kill{trial}"
        run = _start(n, m, plan, out, resume=False)
        moment = rng.uniform(0.02, 1.0) * lifetime
        time.sleep(moment)
        run.send_signal(signal.SIGKILL)
        run.communicate()
        resumed = _resumable(out)
        resumes += resumed
        final = _start(n, m, plan, out, resume=True)  # with no checkpoint yet, --resume starts the run
        _, errors = final.communicate()
        if final.returncode != 0:
            raise SystemExit(f"trial {trial}: {errors}")
        same = _same_weights(root / "reference", out)
        identical += same
        print(f"kill {trial}: at {moment:.1f} s of {lifetime:.1f}, resumed {resumed}, identical {same}", flush=True)
    return {"trials": trials, "bit_identical": identical, "resumed_from_a_checkpoint": resumes,
            "uninterrupted_s": round(lifetime, 1)}


BUDGETED = textwrap.dedent("""
    data:
      train: {train}
      test: {test}
    model:
      spec: fmnist-resnet
    training:
      budget: {budget}
""")


def _write_pngs(images: Any, labels: Any, folder: Path) -> None:
    from PIL import Image

    for index, (image, label) in enumerate(zip(images, labels)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / str(label) / f"{index}.png")


def _launch(config: Path, out: Path) -> subprocess.Popen:
    """The command a preemptible job relaunches: the same every time, with --resume."""
    return subprocess.Popen([sys.executable, "-m", "visiondojo", "train", str(config), "--quiet", "--resume",
                             "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _stage(out: Path) -> str:
    if not (out / "plan.yaml").exists():
        return "planning"
    last = out / "checkpoints" / "last.safetensors"
    return "training, checkpointed" if last.exists() or last.with_name(last.name + ".prev").exists() else \
        "training, before the first checkpoint"


def budgeted_kills(train: Any, test: Any, root: Path, trials: int, budget: float, rng: random.Random
                   ) -> dict[str, Any]:
    """SIGKILLs of a budgeted CLI run (image folders, meta-learners included), each relaunched with
    the same command. Its plan is measured on the clock, so no two runs are bit-identical; what is
    counted: runs that finished, and whether a plan made before the kill was kept."""
    _write_pngs(*train, root / "pngs" / "train")
    _write_pngs(*test, root / "pngs" / "test")
    config = root / "budgeted.yaml"
    config.write_text(BUDGETED.format(train=root / "pngs" / "train", test=root / "pngs" / "test", budget=budget))
    start = time.perf_counter()
    reference, planned_at = _launch(config, root / "budgeted"), None
    while reference.poll() is None:
        if planned_at is None and (root / "budgeted" / "plan.yaml").exists():
            planned_at = time.perf_counter() - start
        time.sleep(0.05)
    lifetime = time.perf_counter() - start
    if reference.returncode != 0 or planned_at is None:
        raise SystemExit(reference.communicate()[1])
    clean = json.loads((root / "budgeted" / "metrics.json").read_text())["test"]["acc"]
    runs = []
    for trial in range(trials):
        out = root / f"budgeted{trial}"
        # Half the kills land while planning, half after the plan is written.
        moment = rng.uniform(0.05, 1.0) * planned_at if trial % 2 == 0 else rng.uniform(planned_at, lifetime)
        started = time.perf_counter()
        run = _launch(config, out)
        time.sleep(moment)
        run.send_signal(signal.SIGKILL)
        run.communicate()
        stage = _stage(out)
        plan_before = (out / "plan.yaml").read_bytes() if (out / "plan.yaml").exists() else None
        final = _launch(config, out)
        _, errors = final.communicate()
        finished = final.returncode == 0 and (out / "model.safetensors").exists()
        runs.append({"killed_at_s": round(moment, 1), "stage": stage, "finished": finished,
                     "plan_kept": plan_before is None or (out / "plan.yaml").read_bytes() == plan_before,
                     "test_acc": json.loads((out / "metrics.json").read_text())["test"]["acc"] if finished else None,
                     "wall_s": round(time.perf_counter() - started, 1), **({} if finished else {"error": errors[-300:]})})
        print(f"budgeted kill {trial}: {runs[-1]}", flush=True)
    return {"trials": trials, "budget_s": budget, "uninterrupted_s": round(lifetime, 1),
            "plan_written_at_s": round(planned_at, 1), "clean_test_acc": clean,
            "finished": sum(r["finished"] for r in runs), "killed_while_planning": sum(
                r["stage"] == "planning" for r in runs),
            "plan_kept_when_made": sum(r["plan_kept"] for r in runs if r["stage"] != "planning"), "runs": runs}


def _replay(plan: Path, train: Any, test: Any, out: Path, injected: faults.Faults | None = None) -> dict[str, Any]:
    try:
        with faults.injected(injected or faults.Faults()):
            run = visiondojo.train("fmnist-resnet", train, test_data=test, plan=plan, out=out, progress=False)
    except visiondojo.VisionDojoError as error:
        return {"finished": False, "error": str(error)[:300]}
    return {"finished": True, "test_acc": run.metrics["test"]["acc"], "batch_size": run.plan.optimization.batch_size,
            "injected": injected.raised if injected else [], "notes": json.loads(
                (out / "metrics.json").read_text())["notes"]}


def _reseeded(plan: Path, seed: int, root: Path) -> Path:
    """The plan with another seed: another batch order, the same everything else."""
    changed = visiondojo.Plan.load(plan)
    changed.seed = seed
    path = root / f"plan-seed{seed}.yaml"
    changed.save(path)
    return path


def episodes(plan: Path, train: Any, test: Any, root: Path, count: int, steps: int, rng: random.Random
             ) -> dict[str, Any]:
    """Fault episodes against the clean replay, and the clean replays of ``count`` other seeds: how
    far apart two fault-free runs land, the yardstick for what a fault costs."""
    clean = _replay(plan, train, test, root / "clean")
    seeds = [_replay(_reseeded(plan, seed, root), train, test, root / f"seed{seed}")["test_acc"]
             for seed in range(1, count + 1)]
    print(f"clean {clean['test_acc']}, other seeds {seeds}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {"nan": [], "rollback": [], "oom": []}
    for episode in range(count):
        first, length = rng.randint(2, steps - 4), rng.randint(1, 3)
        injected = {"nan": faults.Faults(nan_at=set(range(first, first + length))),
                    "oom": faults.Faults(oom_at={rng.randint(1, steps)})}
        first = rng.randint(2, steps - 4)
        injected["rollback"] = faults.Faults(nan_at=set(range(first, first + 3)))
        for kind, fault in injected.items():
            runs[kind].append(_replay(plan, train, test, root / f"{kind}{episode}", fault))
        print(f"episode {episode}: " + ", ".join(f"{kind} {r[-1].get('test_acc')}" for kind, r in runs.items()),
              flush=True)

    def changes(accuracies: list[float]) -> dict[str, Any]:
        deltas = [a - clean["test_acc"] for a in accuracies]
        return {"mean_change": round(statistics.fmean(deltas), 4) if deltas else None,
                "change_std": round(statistics.stdev(deltas), 4) if len(deltas) > 1 else None,
                "within_half_a_point": sum(abs(d) <= 0.005 for d in deltas)}

    def nan_summary(kind: str) -> dict[str, Any]:
        done = [r for r in runs[kind] if r["finished"]]
        return {"episodes": count, "finished": len(done), **changes([r["test_acc"] for r in done]), "runs": runs[kind]}

    batch = clean["batch_size"]
    return {"clean_test_acc": clean["test_acc"], "other_seeds": {"test_acc": seeds, **changes(seeds)},
            "nan": nan_summary("nan"), "rollback": nan_summary("rollback"),
            "oom": {"episodes": count, "finished_with_the_global_batch": sum(
                r["finished"] and r["batch_size"] == batch for r in runs["oom"]), "runs": runs["oom"]}}


def bad_input() -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_bad_input.py",
                           "tests/test_fuzz_inputs.py"], capture_output=True, text=True)
    counts = {key: int(value) for value, key in re.findall(r"(\d+) (passed|failed|errors?)", done.stdout)}
    cases = counts.get("passed", 0) + counts.get("failed", 0)
    return {"tests": cases, "failed": counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0),
            "note": "the catalogue's cases and one fuzz test of 100 drawn inputs; a failure is an unexpected exception "
                    "or a message that does not say what it should"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=6000)
    parser.add_argument("--test", type=int, default=2000, help="Fashion-MNIST test images scored")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budgeted-kills", type=int, default=8)
    parser.add_argument("--budget", type=float, default=45.0, help="seconds, for the budgeted kills")
    parser.add_argument("--parts", default="kills,budgeted_kills,episodes,bad_input",
                        help="comma-separated: kills, budgeted_kills, episodes, bad_input")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    train, test = _data(args.train, args.test)
    report: dict[str, Any] = {"benchmark": "fault injection", "train_images": args.train, "test_images": args.test, "cpu_count": os.cpu_count(),
                              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        planned = visiondojo.fit("fmnist-resnet", train, test_data=test, out=root / "plan", epochs=3, batch_size=128,
                                 lr=2e-3, pin={"optimization.optimizer": "adamw"},
                                 regularization=visiondojo.RegularizationParams(), progress=False)
        plan = planned.dir / "plan.yaml"
        steps = 3 * (len(train[1]) * 9 // 10 // 128)
        if "kills" in parts:
            report["kills"] = kills(args.train, args.test, plan, root, args.kills, random.Random(f"{args.seed}-kills"))
        if "budgeted_kills" in parts:
            report["budgeted_kills"] = budgeted_kills(train, test, root, args.budgeted_kills, args.budget,
                                                      random.Random(f"{args.seed}-budgeted"))
        if "episodes" in parts:
            report["episodes"] = episodes(plan, train, test, root, args.episodes, steps,
                                          random.Random(f"{args.seed}-episodes"))
    if "bad_input" in parts:
        report["bad_input"] = bad_input()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "episodes"}, indent=2))
    if "episodes" in report:
        print(json.dumps({kind: {k: v for k, v in summary.items() if k != "runs"} if isinstance(summary, dict) else summary
                          for kind, summary in report["episodes"].items()}, indent=2))


if __name__ == "__main__":
    main()
