"""Semi-supervised learning: unlabeled data in every form, pseudo-labels, the SSL choice, Noisy Student end to end."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from PIL import Image

import visiondojo
from visiondojo.data.sources import DataOptions, as_source
from visiondojo.engine.runtime import Runtime
from visiondojo.errors import DataError, VisionDojoError
from visiondojo.plan import Plan, RuntimeParams
from visiondojo.prepare import prepare
from visiondojo.ssl import choose as ssl_choose
from visiondojo.ssl.choose import choose_ssl
from visiondojo.ssl.pseudo import choose_threshold, select
from visiondojo.ssl.unlabeled import UNKNOWN, as_unlabeled, check_unlabeled, concat_sources, drop_known

from conftest import FAST, TinyNet, make_problem, state_dicts_equal


# --- unlabeled data in any form ---------------------------------------------------------------


def _check_unlabeled(source, n: int, shape: tuple[int, int, int]) -> None:
    assert len(source) == n
    assert (source.targets.values == UNKNOWN).all() and source.class_names is None
    assert tuple(source.images_at(torch.arange(2)).shape[1:]) == shape


def test_unlabeled_arrays_pairs_and_datasets() -> None:
    images, labels = make_problem(20, size=8, seed=1)
    options = DataOptions()
    _check_unlabeled(as_unlabeled(images, options), 20, (1, 8, 8))
    _check_unlabeled(as_unlabeled(torch.as_tensor(images), options), 20, (1, 8, 8))
    _check_unlabeled(as_unlabeled((images, labels), options), 20, (1, 8, 8))  # labels ignored

    class ImagesOnly(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 20

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.as_tensor(images[i])

    _check_unlabeled(as_unlabeled(ImagesOnly(), options), 20, (1, 8, 8))
    _check_unlabeled(as_unlabeled(torch.utils.data.DataLoader(ImagesOnly(), batch_size=4), options), 20, (1, 8, 8))


def test_unlabeled_folders_and_manifests(tmp_path) -> None:
    images, _ = make_problem(6, size=8, seed=2, dtype="uint8")
    (tmp_path / "raw" / "nested").mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "raw" / ("nested" if i % 2 else "") / f"{i}.png")
    (tmp_path / "raw" / ".hidden.png").write_bytes(b"")  # hidden files are not images to learn from
    _check_unlabeled(as_unlabeled(tmp_path / "raw", DataOptions()), 6, (1, 8, 8))
    manifest = tmp_path / "unlabeled.csv"
    manifest.write_text("path\nraw/0.png\nraw/nested/1.png\nraw/2.png\n")
    _check_unlabeled(as_unlabeled(str(manifest), DataOptions()), 3, (1, 8, 8))
    with pytest.raises(DataError, match="neither an image folder"):
        as_unlabeled(tmp_path / "missing", DataOptions())


def test_unlabeled_must_look_like_the_labeled_images() -> None:
    images, labels = make_problem(40, size=8, seed=3)
    prep = prepare(TinyNet(), (images, labels), options=DataOptions())
    other_size, _ = make_problem(10, size=12, seed=3)
    with pytest.raises(DataError, match="training images are 1x8x8"):
        check_unlabeled(as_unlabeled(other_size, DataOptions()), prep.data, prep.train)
    as_bytes, _ = make_problem(10, size=8, seed=3, dtype="uint8")
    with pytest.raises(DataError, match="uint8 but the labeled images are torch.float32"):
        check_unlabeled(as_unlabeled(as_bytes, DataOptions()), prep.data, prep.train)
    with pytest.raises(DataError, match="map to -30..119 where the labeled images reach 1.27"):
        check_unlabeled(as_unlabeled(images[:10] * 100, DataOptions()), prep.data, prep.train)
    with pytest.raises(DataError, match="give the unlabeled images the labeled images' scale"):  # 100x darker
        check_unlabeled(as_unlabeled(images[:10] / 100, DataOptions()), prep.data, prep.train)


def test_unlabeled_copies_of_labeled_images_are_left_out(tmp_path) -> None:
    images, labels = make_problem(320, size=8, seed=3)
    known = {"training": as_source((images[:200], labels[:200]), DataOptions()),
             "validation": as_source((images[200:250], labels[200:250]), DataOptions()),
             "test": as_source((images[250:300], labels[250:300]), DataOptions())}
    unlabeled = np.concatenate([images[:10], images[300:], images[205:208], images[260:261]])
    with pytest.warns(UserWarning, match=r"14 of 34 unlabeled images are also labeled \(10 in the training data, "
                                         r"3 in the validation data, 1 in the test data\)"):
        kept = drop_known(as_unlabeled(unlabeled, DataOptions()), known)
    assert torch.equal(kept.images_at(torch.arange(len(kept))), torch.as_tensor(images[300:]).unsqueeze(1))
    with pytest.raises(DataError, match="every unlabeled image is also in the labeled data"):
        drop_known(as_unlabeled(images[:5], DataOptions()), known)

    # Image files: the same file below another folder (a labeled class folder inside the unlabeled one).
    pixels, _ = make_problem(6, size=8, seed=2, dtype="uint8")
    for i, image in enumerate(pixels):
        (tmp_path / "all" / ("shirt" if i < 2 else "more")).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / "all" / ("shirt" if i < 2 else "more") / f"{i}.png")
    labeled = as_source(tmp_path / "all", DataOptions())
    with pytest.raises(DataError, match="every unlabeled image"):
        drop_known(as_unlabeled(tmp_path / "all", DataOptions()), {"training": labeled})
    shirts = labeled.subset(torch.tensor([i for i in range(6) if "shirt" in str(labeled.dataset.paths[i])]))
    with pytest.warns(UserWarning, match=r"2 of 6 .*\(2 in the training data\)"):
        assert len(drop_known(as_unlabeled(tmp_path / "all", DataOptions()), {"training": shirts})) == 4


def test_concat_keeps_order_and_relabels() -> None:
    images, labels = make_problem(10, size=8, seed=4)
    labeled = as_source((images[:4], labels[:4]), DataOptions())
    unlabeled = as_unlabeled(images[4:], DataOptions())
    both = concat_sources(labeled, unlabeled, torch.cat([labeled.targets.values, torch.full((6,), 2)]))
    assert torch.equal(both.images_at(torch.arange(10)), torch.as_tensor(images).unsqueeze(1))
    assert both.targets.values.tolist() == labels[:4].tolist() + [2] * 6
    assert (concat_sources(labeled, unlabeled).targets.values == UNKNOWN).all()


# --- pseudo-labels ----------------------------------------------------------------------------


def test_threshold_halves_the_validation_errors() -> None:
    # 100 validation predictions: confidence 0.99..0.50; the 20 least confident are all wrong.
    confidence = torch.linspace(0.99, 0.5, 100)
    probs = torch.stack([confidence, 1 - confidence], dim=1)
    targets = torch.zeros(100, dtype=torch.int64)
    targets[80:] = 1  # accuracy 0.80 -> target precision 0.90
    threshold, why = choose_threshold(probs, targets)
    kept = confidence >= threshold
    precision = float((targets[kept] == 0).double().mean())
    assert precision >= 0.9 and int(kept.sum()) == 88  # the most images at that precision: 80 right, 8 wrong
    assert "accuracy 0.800" in why
    assert choose_threshold(probs[:10], targets[:10])[0] == pytest.approx(0.7)  # too few to calibrate: default
    assert choose_threshold(probs, 1 - targets)[0] == math.inf  # the surest predictions are wrong: keep none
    # ties: a cut inside equal confidences would keep unchecked ones, so the cut moves before them
    tied = torch.tensor([0.9] * 20 + [0.8] * 20)
    right = torch.tensor([1] * 20 + [1] * 15 + [0] * 5, dtype=torch.int64)  # accuracy .875 -> target .9375
    threshold, _ = choose_threshold(torch.stack([1 - tied, tied], dim=1), right)
    assert threshold == pytest.approx(0.9)  # all 0.8s together are 0.875 right: below the target


def test_pseudo_labels_respect_threshold_and_class_balance() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3000, 4, generator=generator) * 2
    logits[:, 0] += 1.5  # the teacher likes class 0
    probs = logits.softmax(dim=1)
    pseudo = select(probs, threshold=0.6)
    assert (pseudo.confidence >= 0.6).all()
    assert torch.equal(pseudo.labels, probs[pseudo.index].argmax(dim=1))
    confident = probs.max(dim=1).values >= 0.6
    per_class = torch.bincount(probs[confident].argmax(dim=1), minlength=4).tolist()
    assert per_class[0] > 2 * sorted(per_class)[2]  # really skewed before balancing
    assert pseudo.counts == [min(c, pseudo.cap) for c in per_class] == torch.bincount(pseudo.labels).tolist()
    # the cap keeps the MOST confident of a large class
    top = probs[confident & (probs.argmax(dim=1) == 0), 0].sort(descending=True).values[:pseudo.cap]
    assert torch.equal(pseudo.confidence[pseudo.labels == 0].sort(descending=True).values, top)
    assert torch.equal(pseudo.probs, probs[pseudo.index])  # the soft pseudo-labels
    # every class gets the same share of the draws
    weights = pseudo.sample_weights()
    shares = torch.zeros(4, dtype=torch.float64).index_add_(0, pseudo.labels, weights)
    assert torch.allclose(shares, torch.full((4,), 0.25, dtype=torch.float64))


def test_a_student_is_rejected_only_when_significantly_worse() -> None:
    from visiondojo.ssl.noisy_student import student_holds

    targets = torch.zeros(100, dtype=torch.int64)

    def probs(right: torch.Tensor) -> torch.Tensor:  # right -> class 0, wrong -> class 1
        return torch.stack([right.float(), 1 - right.float()], dim=1)

    teacher = torch.ones(100, dtype=torch.bool)
    teacher[:9] = False  # 91 % right
    student = teacher.clone()
    student[:2], student[10:16] = True, False  # 87 % right: 2 gained, 6 lost
    accepted, why = student_holds(probs(teacher), probs(student), targets)
    assert accepted and "2 only the student and 6 only the teacher" in why  # p = 0.145: within the noise
    student[16:22] = False  # 12 lost
    accepted, why = student_holds(probs(teacher), probs(student), targets)
    assert not accepted and "p = 0.006" in why
    assert student_holds(probs(teacher), probs(teacher), targets)[0]  # no disagreement, no evidence


# --- the SSL choice ---------------------------------------------------------------------------


def _choice(n_labeled: int, n_unlabeled: int, budget: float | None, task: str = "multiclass") -> Plan:
    images, labels = make_problem(n_labeled + 50, task=task, size=8, seed=5)
    prep = prepare(TinyNet(), (images, labels), options=DataOptions(val_fraction=50 / (n_labeled + 50)))
    plan = Plan(data=prep.data, runtime=RuntimeParams())
    unlabeled = as_unlabeled(make_problem(n_unlabeled, size=8, seed=6)[0], DataOptions()) if n_unlabeled else None
    deadline = time.perf_counter() + budget if budget is not None else None
    choose_ssl(plan, prep, unlabeled, Runtime(plan.runtime), deadline=deadline)
    return plan


def test_no_unlabeled_data_no_ssl() -> None:
    plan = _choice(200, 0, 60)
    assert plan.ssl.pretrain == "none" and plan.ssl.noisy_student_rounds == 0
    assert "no unlabeled data" in plan.evidence["ssl"]


def test_short_budget_many_unlabeled_chooses_noisy_student(monkeypatch) -> None:
    monkeypatch.setattr(ssl_choose, "measure_throughput", _fixed_speed(2000.0))
    plan = _choice(200, 2000, 60)
    ssl = plan.ssl
    assert ssl.pretrain == "none" and "two-view passes" in plan.evidence["ssl.pretrain"]
    # students: (1 - share) * ~60 s at (200 + 0.7 * 2000) / 2000 s per epoch -> capped at MAX_ROUNDS rounds
    assert ssl.noisy_student_rounds == ssl_choose.MAX_ROUNDS and ssl.student_epochs >= ssl_choose.MIN_STUDENT_EPOCHS
    assert ssl.labeled_share == pytest.approx(max(200 / 2200, 1 / 8), abs=1e-4)
    assert ssl_choose.TEACHER_SHARE[0] <= ssl.teacher_share <= ssl_choose.TEACHER_SHARE[1]


def test_long_budget_pretrains_and_multilabel_skips_noisy_student(monkeypatch) -> None:
    monkeypatch.setattr(ssl_choose, "measure_throughput", _fixed_speed(50_000.0))
    plan = _choice(200, 2000, 600, task="multilabel")
    assert plan.ssl.pretrain == "barlow_twins"  # a CPU batch of 256: no negatives needed
    assert plan.ssl.pretrain_epochs == ssl_choose.MAX_PRETRAIN_EPOCHS
    assert plan.ssl.noisy_student_rounds == 0 and "multi-label" in plan.evidence["ssl.noisy_student_rounds"]


def _fixed_speed(images_per_s: float):
    from visiondojo.optimize.length import Throughput

    return lambda *args, **kwargs: Throughput(256, images_per_s, 4 * images_per_s, 0.1)


# --- end to end -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def few_labels():
    """40 labeled training and 40 validation images of the stripes problem, 1200 unlabeled, 400 for test."""
    images, labels = make_problem(1680, size=8, seed=7)
    return ((images[:40], labels[:40]), (images[40:80], labels[40:80]), images[80:1280],
            (images[1280:], labels[1280:]))


def test_fit_with_unlabeled_runs_noisy_student(tmp_path, few_labels) -> None:
    """A teacher trained briefly on 40 labels is ~75 % right; its student, on 1200 pseudo-labels, is near 100 %."""
    labeled, val, unlabeled, test = few_labels
    pins = {"optimization.batch_size": 16, "optimization.lr": 0.01, "optimization.epochs": 6,
            "regularization.augment": [], "ssl.pretrain": "none", "ssl.noisy_student_rounds": 2,
            "ssl.student_epochs": 4}
    model = TinyNet()
    keys = {k: v.shape for k, v in model.state_dict().items()}
    run = visiondojo.fit(model, labeled, val, test_data=test, unlabeled=unlabeled, out=tmp_path / "semi", pin=pins,
                         progress=False)
    assert {k: v.shape for k, v in run.model.state_dict().items()} == keys  # the user's architecture, nothing added
    rounds = run.plan.measurements["noisy_student"]["rounds"]
    first = rounds[0]
    assert first["teacher_metric"] <= 0.85 and first["accepted"] and first["student_metric"] >= 0.95
    assert first["kept"] > 300 and sum(first["counts"]) == first["kept"]
    assert max(first["counts"]) <= 1.0 * first["kept"] / 2  # no class dominates the pseudo-labels
    assert first["labeled_share"] == run.plan.ssl.labeled_share == pytest.approx(1 / 8)
    for r in rounds:
        p = float(r["verdict"].rpartition("p = ")[2].rstrip(")"))
        assert r["accepted"] == (p >= 0.05)
    assert run.metrics["test"]["acc"] >= 0.95
    stages = [row["stage"] for row in run.history]
    assert stages[0] == "teacher" and "student 1" in stages
    report = (run.dir / "report.html").read_text()
    assert "Semi-supervised learning" in report and "pseudo-labels" in report
    saved = Plan.load(run.dir / "plan.yaml")
    assert saved.ssl == run.plan.ssl and "noisy_student" in saved.measurements

    with pytest.raises(VisionDojoError, match="pass them again as unlabeled"):
        visiondojo.train(TinyNet(), labeled, val, plan=run.dir / "plan.yaml", out=tmp_path / "replay", progress=False)
    replay = visiondojo.train(TinyNet(), labeled, val, unlabeled=unlabeled, plan=run.dir / "plan.yaml",
                              out=tmp_path / "replay", progress=False)
    assert state_dicts_equal(replay.model, run.model)  # the whole pipeline replays exactly


def test_soft_pseudo_labels_teach_the_student(tmp_path, few_labels, monkeypatch) -> None:
    """Soft pseudo-labels: labeled images as one-hot rows, pseudo-labeled ones as the teacher's
    probabilities; a student trained on them still learns the task."""
    from visiondojo.ssl import noisy_student as module

    seen = []

    def spy(first, second, targets):
        seen.append(targets)
        return concat_sources(first, second, targets)

    monkeypatch.setattr(module, "concat_sources", spy)
    labeled, val, unlabeled, test = few_labels
    pins = {"optimization.batch_size": 16, "optimization.lr": 0.01, "optimization.epochs": 6,
            "regularization.augment": [], "ssl.pretrain": "none", "ssl.noisy_student_rounds": 1,
            "ssl.student_epochs": 4, "ssl.pseudo_labels": "soft"}
    run = visiondojo.fit(TinyNet(), labeled, val, test_data=test, unlabeled=unlabeled, out=tmp_path / "soft", pin=pins,
                         progress=False)
    targets = seen[0]
    assert targets.dtype == torch.float32 and targets.shape == (40 + run.plan.measurements["noisy_student"]["rounds"][0]
                                                                ["kept"], 4)
    assert torch.equal(targets[:40], torch.nn.functional.one_hot(torch.as_tensor(labeled[1]), 4).float())
    assert torch.allclose(targets.sum(dim=1), torch.ones(len(targets)))
    assert (targets[40:].max(dim=1).values < 1).any()  # really soft, not one-hot
    assert run.plan.measurements["noisy_student"]["rounds"][0]["accepted"] and run.metrics["test"]["acc"] >= 0.95


def test_binary_soft_pseudo_labels_are_the_teachers_probability(tmp_path, monkeypatch) -> None:
    """A binary task's soft pseudo-labels are p (its loss's target shape), the labeled ones 0 or 1;
    unlabeled copies of the training images are left out on the way in through ``fit``."""
    from visiondojo.ssl import noisy_student as module

    seen = []

    def spy(first, second, targets):
        seen.append(targets)
        return concat_sources(first, second, targets)

    monkeypatch.setattr(module, "concat_sources", spy)
    images, labels = make_problem(1480, task="binary", size=8, seed=9)
    labeled, val, test = (images[:40], labels[:40]), (images[40:80], labels[40:80]), (images[1280:], labels[1280:])
    unlabeled = np.concatenate([images[80:1280], images[:10]])  # 10 copies of training images
    pins = {"optimization.batch_size": 16, "optimization.lr": 0.01, "optimization.epochs": 6,
            "regularization.augment": [], "ssl.pretrain": "none", "ssl.noisy_student_rounds": 1,
            "ssl.student_epochs": 4, "ssl.pseudo_labels": "soft"}
    with pytest.warns(UserWarning, match=r"10 of 1210 unlabeled images are also labeled \(10 in the training data\)"):
        run = visiondojo.fit(TinyNet(outputs=1), labeled, val, test_data=test, unlabeled=unlabeled,
                             out=tmp_path / "binary", pin=pins, progress=False)
    first = run.plan.measurements["noisy_student"]["rounds"][0]
    targets = seen[0]
    assert targets.dtype == torch.float32 and targets.shape == (40 + first["kept"],)
    assert torch.equal(targets[:40], torch.as_tensor(labels[:40]).float())
    pseudo = targets[40:]
    assert ((pseudo >= 0) & (pseudo <= 1)).all() and ((pseudo > 0) & (pseudo < 1)).any()  # probabilities
    assert first["accepted"] and run.metrics["test"]["acc"] >= 0.95


def test_fit_without_unlabeled_is_unchanged(tmp_path, few_labels) -> None:
    labeled, val, _, _ = few_labels
    run = visiondojo.fit(TinyNet(), labeled, val, out=tmp_path / "plain", **FAST)
    assert run.plan.ssl == Plan().ssl
    assert "stage" not in run.history[0]
    assert "Semi-supervised learning" not in (run.dir / "report.html").read_text()


def test_fit_pretrains_on_labeled_and_unlabeled_images(tmp_path, few_labels) -> None:
    labeled, val, unlabeled, _ = few_labels
    pins = {"ssl.pretrain": "simclr", "ssl.pretrain_epochs": 2, "ssl.pretrain_batch_size": 128,
            "ssl.noisy_student_rounds": 0, "regularization.augment": []}
    model = TinyNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run = visiondojo.fit(model, labeled, val, unlabeled=unlabeled, feature_layer="4", out=tmp_path / "pre", pin=pins,
                         **{k: v for k, v in FAST.items() if k != "progress"}, progress=False)
    pretrained = run.plan.measurements["ssl_pretrain"]
    assert pretrained["method"] == "simclr" and pretrained["epochs"] == 2 and len(pretrained["losses"]) == 2
    assert pretrained["steps"] == 2 * ((40 + 1200) // 128) and pretrained["feature_layer"] == "4"
    assert run.model.state_dict().keys() == before.keys()
    assert "pretraining: 2 epochs" in (run.dir / "report.html").read_text()
    with pytest.raises(visiondojo.errors.ModelError, match="'fc'"):
        visiondojo.fit(TinyNet(), labeled, val, unlabeled=unlabeled, feature_layer="fc", out=tmp_path / "bad",
                       pin=pins, **FAST)


def test_bad_ssl_settings_fail_before_training(tmp_path, few_labels) -> None:
    labeled, val, unlabeled, _ = few_labels
    for pins, message in [({"ssl.pretrain": "byol"}, "ssl.pretrain = 'byol'; choose one of none, simclr"),
                          ({"ssl.student_init": "scrach"}, "ssl.student_init = 'scrach'"),
                          ({"ssl.labeled_share": 0.0}, r"ssl.labeled_share = 0.0 is outside \(0, 1\]"),
                          ({"ssl.pseudo_labels": "fuzzy"}, "ssl.pseudo_labels = 'fuzzy'; choose one of hard, soft")]:
        with pytest.raises(visiondojo.errors.ConfigError, match=message):
            visiondojo.fit(TinyNet(), labeled, val, unlabeled=unlabeled, out=tmp_path / "bad", pin=pins, **FAST)
        assert not (tmp_path / "bad").exists()  # nothing claimed


def test_multilabel_pretraining_ignores_the_targets(tmp_path) -> None:
    images, labels = make_problem(120, task="multilabel", size=8, seed=8)
    pins = {"ssl.pretrain": "barlow_twins", "ssl.pretrain_epochs": 1, "ssl.pretrain_batch_size": 64}
    run = visiondojo.fit(TinyNet(), (images[:80], labels[:80]), unlabeled=images[80:], out=tmp_path / "ml", pin=pins,
                         **FAST)
    assert run.plan.ssl.noisy_student_rounds == 0 and run.plan.measurements["ssl_pretrain"]["epochs"] == 1


def test_student_noise_respects_the_models_own_dropout() -> None:
    from torch import nn

    from visiondojo.ssl.noisy_student import student_plan

    plan = Plan()
    plan.data.train_size, plan.optimization.batch_size, plan.ssl.student_dropout = 100, 10, 0.2
    plan.regularization.augment = []
    plain = student_plan(plan, 50, TinyNet())
    assert plain.regularization.dropout == 0.2  # inserted before the head
    assert {op.name for op in plain.regularization.augment} & {"vflip", "rot90"} == set()  # orientation kept
    assert len({op.group for op in plain.regularization.augment}) == 1  # one TrivialAugment menu
    with_dropout = student_plan(plan, 50, nn.Sequential(TinyNet(), nn.Dropout(0.5)))
    assert with_dropout.regularization.dropout is None  # the model's 0.5 stays
