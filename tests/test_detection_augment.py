"""Detection augmentation: boxes against the pixels they describe.

Filled rectangles (value 1 on a 0 background) are drawn into images with their boxes; after an op
the box of each object is recomputed from the output's bright pixels and compared with the box the
op produced. Checked here: mosaic (boxes scaled and moved into their quadrant, cut ones dropped
below ``min_visible``, unpicked samples untouched), box mixup (the image is the blend, both box sets
kept), exact no-ops at probability 0, replay from the seed, the configuration errors, the
regularization plug-in on a detection task, and every geometric op of the policy (alone and in
random compositions) through ``DetectionTask.move_targets``.
"""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from visiondojo.augment import Applied, Augmenter, box_mixup, mix_boxes, mosaic
from visiondojo.augment.detection_mix import (
    BOX_MIXUP_CONCENTRATION,
    MOSAIC_SHIFT,
    MosaicLayout,
    apply_mosaic,
    mixup_draws,
    mosaic_layout,
)
from visiondojo.augment.erase import hidden_share
from visiondojo.augment.geometry import GEOMETRY_OPS
from visiondojo.data.batches import Normalizer
from visiondojo.data.targets import RaggedBatch, RaggedTargets
from visiondojo.errors import ConfigError
from visiondojo.plan import AugmentOp, DataParams, RegularizationParams
from visiondojo.regularize.batch import BatchRegularizer, check, check_supported
from visiondojo.tasks import DetectionTask
from visiondojo.tasks.classification import MultiClassTask
from visiondojo.tasks.detection import MIN_VISIBLE_BOX

CPU = torch.device("cpu")
LABELS = 2
"""Object k of an image (at most one per label) is drawn in channel k only, so each object's pixels
are told apart from its neighbours' even where two rectangles overlap."""
SLIVER = 16
"""Pixels: a box this thin has each edge off by up to half a pixel of rounding to the pixel grid,
which alone takes IoU below 0.9; such boxes (cropped at the border) are held to 1 px per edge."""
AXIS_ALIGNED = frozenset({"hflip", "vflip", "rot90", "translate", "zoom"})
"""Geometric ops that keep a rectangle an axis-aligned rectangle."""


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rectangles(n: int, size: tuple[int, int], seed: int, sides: tuple[int, int] = (24, 56),
               margin: int = 0) -> tuple[torch.Tensor, RaggedBatch]:
    """(n, LABELS, H, W) black images with one or two filled rectangles, object k in channel k, and
    their boxes (pixel edges, xyxy) and labels as a batch; rows in a shuffled order, as a batch may
    hold them."""
    height, width = size
    gen = seeded(seed)
    images = torch.zeros(n, LABELS, height, width)
    boxes, labels, owner = [], [], []
    for i in range(n):
        for k in range(LABELS) if bool(torch.rand(1, generator=gen) < 0.7) else [int(i % LABELS)]:
            w, h = (int(torch.randint(sides[0], sides[1] + 1, (1,), generator=gen)) for _ in range(2))
            x = int(torch.randint(margin, width - w - margin + 1, (1,), generator=gen))
            y = int(torch.randint(margin, height - h - margin + 1, (1,), generator=gen))
            images[i, k, y:y + h, x:x + w] = 1.0
            boxes.append([x, y, x + w, y + h])
            labels.append(k)
            owner.append(i)
    order = torch.randperm(len(boxes), generator=gen)
    batch = RaggedBatch({"boxes": torch.tensor(boxes, dtype=torch.float32)[order],
                         "labels": torch.tensor(labels)[order]}, torch.tensor(owner)[order], n)
    return images, batch


def pixel_box(plane: torch.Tensor, region: tuple[int, int, int, int] | None = None) -> torch.Tensor | None:
    """xyxy box (pixel edges) of the pixels brighter than 1/2 in an (H, W) plane, within ``region``
    (x1, y1, x2, y2 in whole pixels) if given; None when there are none."""
    bright = plane > 0.5
    if region is not None:
        x1, y1, x2, y2 = region
        inside = torch.zeros_like(bright)
        inside[y1:y2, x1:x2] = True
        bright &= inside
    found = bright.nonzero()
    if len(found) == 0:
        return None
    ys, xs = found[:, 0].float(), found[:, 1].float()
    return torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(box_iou(a[None], b[None])[0, 0])


def objects(batch: RaggedBatch) -> list[list[tuple[int, tuple[float, ...]]]]:
    """Per image, its (label, box) pairs sorted: the batch compared as sets of objects."""
    return [sorted(zip(o["labels"].tolist(), map(tuple, o["boxes"].tolist()))) for o in batch.per_image()]


def detection_regularizer(params: RegularizationParams, seed: int = 0) -> BatchRegularizer:
    """On CPU for LABELS-channel float images already in [0, 1] (scale 1, mean 0, std 1)."""
    data = DataParams(task="detection", channels=LABELS, mean=[0.0] * LABELS, std=[1.0] * LABELS, pixel_scale=1.0,
                      pixel_offset=0.0)
    return BatchRegularizer(params, DetectionTask(LABELS), Normalizer(data, CPU), CPU, seed=seed)


# ---------------------------------------------------------------- 1. mosaic against its pixels

@pytest.mark.parametrize("size", [(256, 256), (192, 256)], ids=["square", "wide"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_kept_mosaic_box_matches_its_rectangle_in_the_output(size: tuple[int, int], seed: int) -> None:
    """Each quadrant of a mosaic shows one source image: every object of it is either dropped (too
    little of it left in the quadrant) or has exactly one box there, and that box is the box of
    the object's bright pixels in the output (IoU >= 0.9; cropped slivers, whose size the
    resampling blurs by a pixel, within a pixel on each edge). No box is left unaccounted for."""
    n = 8
    images, targets = rectangles(n, size, seed, sides=(64, 120))
    out, moved = mosaic(images, targets, 1.0, seeded(seed), min_visible=MIN_VISIBLE_BOX)
    layout = mosaic_layout(n, size, 1.0, 1.0, seeded(seed), CPU)  # the same draws, to know the quadrants
    region, scale, _ = layout.quadrants()
    assert layout.chosen.all() and out.shape == images.shape and moved.size == n
    source_objects = objects(targets)
    kept = dropped = tight = 0
    for i, found in enumerate(objects(moved)):
        unmatched = list(found)
        for q in range(4):
            quadrant = tuple(int(v) for v in region[i, q].tolist())
            x1, y1, x2, y2 = quadrant
            for label, box in source_objects[int(layout.sources[i, q])]:
                # Share of the object still shown, from pixels: bright pixels in the quadrant over its scaled area.
                area = (box[2] - box[0]) * (box[3] - box[1]) * float(scale[i, q]) ** 2
                shown = float((out[i, label, y1:y2, x1:x2] > 0.5).sum()) / area
                mine = [(k, b) for k, b in unmatched if k == label and x1 <= (b[0] + b[2]) / 2 <= x2
                        and y1 <= (b[1] + b[3]) / 2 <= y2]
                if shown < MIN_VISIBLE_BOX - 0.08:
                    assert not mine, (i, q, box, mine)
                    dropped += 1
                    continue
                if shown > MIN_VISIBLE_BOX + 0.08:
                    assert len(mine) == 1, (i, q, box, shown, mine)
                if mine:
                    unmatched.remove(mine[0])
                    got = torch.tensor(mine[0][1])
                    truth = pixel_box(out[i, label], quadrant)
                    assert truth is not None
                    sliver = float((got[2:] - got[:2]).min()) < SLIVER
                    assert (got - truth).abs().max() <= 1.0 and (sliver or iou(got, truth) >= 0.9), (got, truth)
                    kept += 1
                    tight += not sliver
        assert not unmatched, (i, unmatched)
    assert dropped > 0 and tight > 0.6 * kept > 6  # both outcomes happen; most boxes are checked for IoU


def quadrant_scene() -> tuple[torch.Tensor, RaggedBatch, MosaicLayout]:
    """Two 128x128 images; image 0 becomes a mosaic meeting at (32, 64), its top-left quadrant
    (32 x 64, source scaled by 1/2 and pushed 32 px out of the left edge) showing image 1."""
    images = torch.zeros(2, 1, 128, 128)
    boxes = torch.tensor([[0.0, 10, 64, 40],  # -> x in [-32, 0]: gone
                          [40, 50, 80, 90],  # -> [-12, 8]: 8 of 20 px shown, kept
                          [30, 100, 70, 120],  # -> [-17, 3]: 3 of 20 px, under a quarter: dropped
                          [70, 0, 110, 30]])  # -> [3, 23]: inside
    for x1, y1, x2, y2 in boxes.long().tolist():
        images[1, 0, y1:y2, x1:x2] = 1.0
    targets = RaggedBatch({"boxes": boxes, "labels": torch.arange(4)}, torch.tensor([1, 1, 1, 1]), 2)
    layout = MosaicLayout(chosen=torch.tensor([True, False]), sources=torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]]),
                          centre=torch.tensor([[32.0, 64.0], [64.0, 64.0]]), size=(128, 128))
    return images, targets, layout


def test_boxes_cut_by_the_quadrant_below_min_visible_are_dropped() -> None:
    """By hand: the top-left quadrant shows image 1 at half size with its corner at the centre.
    A box keeping 8 of its 20 scaled pixels of width (40 %) stays, clipped to the quadrant; one
    keeping 3 of 20 (15 %) goes, as does one pushed out entirely; labels follow their boxes."""
    images, targets, layout = quadrant_scene()
    out, moved = apply_mosaic(images, targets, layout, min_visible=MIN_VISIBLE_BOX)
    top_left = [(label, box) for label, box in objects(moved)[0] if box[0] < 32 and box[1] < 64]
    assert top_left == [(1, (0.0, 25.0, 8.0, 45.0)), (3, (3.0, 0.0, 23.0, 15.0))]
    for label, box in top_left:
        assert pixel_box(out[0, 0], (0, 0, 32, 64)) is not None
        assert iou(torch.tensor(box), pixel_box(out[0, 0], tuple(int(v) for v in box))) >= 0.9, label
    # Without a visibility threshold the 15 % sliver stays (the box pushed out entirely still goes).
    _, loose = apply_mosaic(images, targets, layout, min_visible=0.0)
    assert [label for label, box in objects(loose)[0] if box[0] < 32 and box[1] < 64] == [1, 2, 3]
    # Image 1 was not picked: its pixels and boxes are exactly what they were.
    assert torch.equal(out[1], images[1]) and objects(moved)[1] == objects(targets)[1]


def test_mosaic_at_magnitude_zero_is_the_half_size_grid() -> None:
    """With the centre kept in the middle every quadrant is its source at exactly half size, whole:
    the mosaic's pixels are the sources' 2x2 averages, and no box is cut or dropped."""
    n, size = 4, (64, 64)
    images, targets = rectangles(n, size, seed=3, sides=(8, 20))
    images = images + torch.rand(images.shape, generator=seeded(4))  # texture, so the averages show
    out, moved = mosaic(images, targets, 1.0, seeded(5), magnitude=0.0, min_visible=MIN_VISIBLE_BOX)
    layout = mosaic_layout(n, size, 1.0, 0.0, seeded(5), CPU)
    assert torch.equal(layout.centre, torch.tensor([[32.0, 32.0]] * n))
    halves = torch.nn.functional.avg_pool2d(images, 2)
    for i in range(n):
        for q, (x, y) in enumerate([(0, 0), (32, 0), (0, 32), (32, 32)]):
            torch.testing.assert_close(out[i, :, y:y + 32, x:x + 32], halves[layout.sources[i, q]])
    assert len(moved.image) == int(torch.bincount(targets.image, minlength=n)[layout.sources].sum())
    assert all(i in layout.sources[i] for i in range(n)) and (layout.sources != torch.arange(n)[:, None]).sum() == 3 * n


@pytest.mark.parametrize("size", [(24, 24), (20, 36)])
def test_every_mosaic_pixel_comes_from_its_quadrants_source_alone(size: tuple[int, int]) -> None:
    """Images of one flat value each: every pixel of a quadrant is exactly its source's value, so
    no pixel blends two images (across a seam of the mosaic, or across the batch's images, which
    the resampling reads as one tall image)."""
    n = 16
    values = torch.linspace(0.05, 1.0, n)
    images = values.view(n, 1, 1, 1).expand(n, 3, *size).clone()
    empty = RaggedBatch({"boxes": torch.zeros(0, 4)}, torch.zeros(0, dtype=torch.int64), n)
    out, _ = mosaic(images, empty, 1.0, seeded(23))
    layout = mosaic_layout(n, size, 1.0, 1.0, seeded(23), CPU)
    region, _, _ = layout.quadrants()
    for i in range(n):
        for q in range(4):
            x1, y1, x2, y2 = (int(v) for v in region[i, q].tolist())
            patch = out[i, :, y1:y2, x1:x2]
            assert patch.numel() > 0
            torch.testing.assert_close(patch, torch.full_like(patch, float(values[layout.sources[i, q]])),
                                       atol=1e-6, rtol=0)


def test_mosaic_centres_stay_in_the_range_the_magnitude_allows() -> None:
    size, n = (100, 200), 512
    for magnitude in (0.3, 1.0):
        centre = mosaic_layout(n, size, 1.0, magnitude, seeded(6), CPU).centre
        shift = (centre / torch.tensor([200.0, 100.0]) - 0.5).abs()
        assert float(shift.max()) <= MOSAIC_SHIFT * magnitude + 0.01
        assert float(shift.max()) >= 0.8 * MOSAIC_SHIFT * magnitude  # the whole range is used


# ---------------------------------------------------------------- 2. box mixup

def test_box_mixup_blends_the_images_and_keeps_both_box_sets() -> None:
    """A mixed sample's image is lambda * own + (1 - lambda) * partner's, with lambda near 1/2, and
    its objects are its own plus its partner's, labels unchanged; the others are untouched."""
    n = 12
    images, targets = rectangles(n, (48, 40), seed=7, sides=(6, 14))
    images = images + 0.1 * torch.rand(images.shape, generator=seeded(8))
    out, mixed_targets = box_mixup(images, targets, 0.5, seeded(9))
    mixed, partner, lam = mixup_draws(n, 0.5, BOX_MIXUP_CONCENTRATION, seeded(9), CPU)
    assert 0 < int(mixed.sum()) < n and (partner != torch.arange(n)).all()
    assert float((lam - 0.5).abs().max()) < 0.25
    before, after = objects(targets), objects(mixed_targets)
    for i in range(n):
        if mixed[i]:
            torch.testing.assert_close(out[i], lam[i] * images[i] + (1 - lam[i]) * images[partner[i]])
            assert after[i] == sorted(before[i] + before[int(partner[i])])
        else:
            assert torch.equal(out[i], images[i]) and after[i] == before[i]
    assert mixed_targets.size == n and mixed_targets.fields["labels"].dtype == targets.fields["labels"].dtype


def test_box_mixup_of_a_single_image_does_nothing() -> None:
    images, targets = rectangles(1, (16, 16), seed=10, sides=(4, 8))
    out, same = box_mixup(images, targets, 1.0, seeded(0))
    assert out is images and same is targets


# ---------------------------------------------------------------- 3. no-ops and replay

def test_probability_zero_is_an_exact_no_op_that_draws_nothing() -> None:
    images, targets = rectangles(6, (32, 32), seed=11, sides=(4, 12))
    gen = seeded(12)
    state = gen.get_state()
    for fn in (mosaic, box_mixup):
        out, same = fn(images, targets, 0.0, gen)
        assert out is images and same is targets
    out, same = mix_boxes(images, targets, 0.0, 0.0, gen, min_visible=MIN_VISIBLE_BOX)
    assert out is images and same is targets and torch.equal(gen.get_state(), state)
    # The plug-in with both at 0 is the plain normalization: same pixels, the very same targets.
    reg = detection_regularizer(RegularizationParams(mosaic=0.0, box_mixup=0.0))
    assert not reg.active
    pixels, same = reg(images, targets)
    assert torch.equal(pixels, images) and same is targets


def test_samples_a_mosaic_does_not_pick_keep_image_and_boxes_bit_for_bit() -> None:
    n = 16
    images, targets = rectangles(n, (40, 40), seed=13, sides=(6, 16))
    out, moved = mosaic(images, targets, 0.5, seeded(14), min_visible=MIN_VISIBLE_BOX)
    chosen = mosaic_layout(n, (40, 40), 0.5, 1.0, seeded(14), CPU).chosen
    assert 0 < int(chosen.sum()) < n
    before, after = objects(targets), objects(moved)
    for i in range(n):
        if not chosen[i]:
            assert torch.equal(out[i], images[i]) and after[i] == before[i]
        else:
            assert not torch.equal(out[i], images[i])


def test_the_same_seed_replays_the_same_mosaics_and_blends() -> None:
    images, targets = rectangles(10, (48, 48), seed=15, sides=(6, 20))

    def run(seed: int) -> tuple[torch.Tensor, RaggedBatch]:
        return mix_boxes(images, targets, 0.7, 0.5, seeded(seed), min_visible=MIN_VISIBLE_BOX)

    (a, ta), (b, tb), (c, _) = run(16), run(16), run(17)
    assert torch.equal(a, b) and objects(ta) == objects(tb)
    assert torch.equal(ta.image, tb.image) and torch.equal(ta.fields["boxes"], tb.fields["boxes"])
    assert not torch.equal(a, c)


def test_empty_images_and_an_empty_batch_of_objects_are_fine() -> None:
    images = torch.rand(4, 1, 16, 16, generator=seeded(18))
    empty = RaggedBatch({"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
                        torch.zeros(0, dtype=torch.int64), 4)
    out, targets = mix_boxes(images, empty, 1.0, 1.0, seeded(19), min_visible=MIN_VISIBLE_BOX)
    assert out.shape == images.shape and len(targets.image) == 0 and targets.size == 4
    assert [len(o["boxes"]) for o in targets.per_image()] == [0, 0, 0, 0]


def test_targets_without_boxes_are_refused() -> None:
    images = torch.rand(2, 1, 8, 8)
    with pytest.raises(TypeError, match="boxes"):
        mosaic(images, torch.tensor([0, 1]), 1.0, seeded(0))  # type: ignore[arg-type]


# ---------------------------------------------------------------- 4. configuration

@pytest.mark.parametrize("name", ["mosaic", "box_mixup"])
@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_probabilities_outside_0_1_are_refused_by_name(name: str, value: float) -> None:
    with pytest.raises(ConfigError, match=rf"regularization\.{name}: probability {value} is outside \[0, 1\]"):
        check(RegularizationParams(**{name: value}))


@pytest.mark.parametrize("name", ["mosaic", "box_mixup"])
def test_tasks_without_boxes_refuse_mosaic_and_box_mixup(name: str) -> None:
    params = RegularizationParams(**{name: 0.5})
    with pytest.raises(ConfigError, match=rf"regularization\.{name}: the multiclass task .*set it to 0"):
        check_supported(params, MultiClassTask(3))
    normalizer = Normalizer(DataParams(channels=1, mean=[0.0], std=[1.0]), CPU)
    with pytest.raises(ConfigError, match=name):
        BatchRegularizer(params, MultiClassTask(3), normalizer, CPU)
    check_supported(params, DetectionTask(3))  # the detection task has the capability
    assert DetectionTask(3).capabilities.box_mixing and not MultiClassTask(3).capabilities.box_mixing


# ---------------------------------------------------------------- 5. the plug-in on a detection task

def test_the_regularizer_applies_mosaic_and_mixup_after_the_policy_and_replays_each_epoch() -> None:
    """Geometry, then mosaic and box mixup: a batch of the same size whose objects all belong to
    its images and lie in the frame, the same again after reseeding for the same epoch."""
    n, size = 8, (64, 64)
    images, targets = rectangles(n, size, seed=20, sides=(10, 24))
    params = RegularizationParams(augment=[AugmentOp("hflip", 1.0), AugmentOp("brightness", 0.3)], mosaic=1.0,
                                  box_mixup=0.5)
    reg = detection_regularizer(params, seed=3)
    assert reg.active
    pixels, out = reg(images, targets)
    assert pixels.shape == images.shape and isinstance(out, RaggedBatch) and out.size == n
    boxes = out.fields["boxes"]
    assert len(boxes) == len(out.fields["labels"]) == len(out.image) > 0
    assert ((out.image >= 0) & (out.image < n)).all() and len(out.per_image()) == n
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 64).all() and (boxes[:, 3] <= 64).all()
    assert (boxes[:, 2:] - boxes[:, :2] >= 1).all()
    assert not torch.equal(pixels, images)
    reg.set_epoch(0)
    again, out_again = reg(images, targets)
    assert torch.equal(again, pixels) and objects(out_again) == objects(out)
    reg.set_epoch(1)
    assert not torch.equal(reg(images, targets)[0], pixels)


def test_mosaic_on_the_plug_in_keeps_boxes_on_their_rectangles() -> None:
    """Through the plug-in (with the detection task's visibility threshold): every box of the
    output covers bright pixels of its own label's channel, tightly."""
    n, size = 8, (96, 96)
    images, targets = rectangles(n, size, seed=21)
    pixels, out = detection_regularizer(RegularizationParams(mosaic=1.0), seed=4)(images, targets)
    checked = 0
    for i, found in enumerate(objects(out)):
        for label, box in found:
            got = torch.tensor(box)
            truth = pixel_box(pixels[i, label], tuple(int(round(v)) for v in box))
            assert truth is not None and (got - truth).abs().max() <= 1.0, (got, truth)
            checked += 1
    assert checked > n


# ---------------------------------------------------------------- 6. every geometric op against its pixels

def warped(ops: list[AugmentOp], seed: int, n: int = 16) -> tuple[torch.Tensor, RaggedBatch, RaggedBatch]:
    """Rectangles (in from the border) through a policy, boxes moved by the detection task:
    (warped images, moved boxes, the boxes before)."""
    images, targets = rectangles(n, (128, 128), seed, sides=(32, 56), margin=12)
    out, applied = Augmenter(ops)(images, seeded(seed))
    assert applied.geometry is not None
    return out, DetectionTask(LABELS).move_targets(targets, applied), targets


def assert_boxes_match_pixels(out: torch.Tensor, moved: RaggedBatch, tight: bool) -> int:
    """Every moved box against its object's warped pixels: the box encloses them (within the pixel
    that resampling blurs an edge over) and, when ``tight``, IoU >= 0.9 with their box."""
    worst = 1.0
    count = 0
    for i, found in enumerate(objects(moved)):
        for label, box in found:
            got = torch.tensor(box)
            truth = pixel_box(out[i, label])
            assert truth is not None
            assert (truth[:2] >= got[:2] - 1.0).all() and (truth[2:] <= got[2:] + 1.0).all(), (got, truth)
            worst = min(worst, iou(got, truth))
            count += 1
    if tight:
        assert worst >= 0.9, worst
    return count


@pytest.mark.parametrize("name", list(GEOMETRY_OPS))
@pytest.mark.parametrize("seed", [0, 1])
def test_each_geometric_op_moves_boxes_onto_their_warped_rectangles(name: str, seed: int) -> None:
    """At full magnitude. Flips, quarter turns, translation and zoom keep a rectangle a rectangle:
    its box and the box of its warped pixels agree (IoU >= 0.9). Rotation and shear turn it into a
    parallelogram, whose enclosing box is what a box can say: there the moved box must enclose the
    warped pixels (and, being the enclosing box of the same moved corners, it stays within IoU 0.8)."""
    out, moved, before = warped([AugmentOp(name, 1.0)], seed)
    count = assert_boxes_match_pixels(out, moved, tight=name in AXIS_ALIGNED)
    assert count > 0.5 * len(before.image)
    if name not in AXIS_ALIGNED:
        worst = min(iou(torch.tensor(b), pixel_box(out[i, k])) for i, found in enumerate(objects(moved))
                    for k, b in found)
        assert worst >= 0.8, worst


@pytest.mark.parametrize("seed", range(6))
def test_random_geometric_compositions_move_boxes_onto_their_warped_rectangles(seed: int) -> None:
    """A random policy of two to four geometric ops at random magnitudes, fused into one warp:
    boxes enclose their warped rectangles, tightly when every op keeps rectangles axis-aligned."""
    gen = seeded(100 + seed)
    names = list(GEOMETRY_OPS) if seed % 2 else sorted(AXIS_ALIGNED)
    picked = torch.randperm(len(names), generator=gen)[: 2 + seed % 3].tolist()
    ops = [AugmentOp(names[j], float(torch.rand(1, generator=gen)) * 0.8 + 0.2) for j in picked]
    out, moved, _ = warped(ops, seed)
    assert assert_boxes_match_pixels(out, moved, tight=all(op.name in AXIS_ALIGNED for op in ops)) > 0


def test_the_ragged_helpers_round_trip() -> None:
    """Sanity of the test's own scene builder: every box is the box of its channel's pixels."""
    images, targets = rectangles(4, (32, 48), seed=22, sides=(4, 10))
    for i, found in enumerate(objects(targets)):
        for label, box in found:
            assert torch.equal(pixel_box(images[i, label]), torch.tensor(box))
    assert isinstance(RaggedTargets.from_samples(targets.per_image()), RaggedTargets)


# ---------------------------------------------------------------- 7. erasing drops the boxes it hides

def test_erasing_drops_a_box_it_mostly_hides_and_keeps_one_it_half_hides() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [20, 20, 40, 40], [0, 0, 10, 10]], dtype=torch.float32)
    batch = RaggedBatch({"boxes": boxes, "labels": torch.tensor([0, 1, 0])}, torch.tensor([0, 0, 1]), 2)
    erased = torch.zeros(2, 1, 48, 48, dtype=torch.bool)
    erased[0, 0, 0:10, 0:9] = True  # 90% of the first box
    erased[0, 0, 20:30, 20:40] = True  # half of the second
    assert hidden_share(boxes, batch.image, erased).tolist() == pytest.approx([0.9, 0.5, 0.0])
    kept = DetectionTask(LABELS).move_targets(batch, Applied(erased=erased))
    assert kept.fields["boxes"].tolist() == boxes[1:].tolist() and kept.image.tolist() == [0, 1]


def test_the_augmenter_reports_the_pixels_it_erased() -> None:
    images = torch.zeros(8, 1, 32, 32)
    out, applied = Augmenter([AugmentOp("erase", 1.0), AugmentOp("hflip", 1.0)])(images, seeded(4))
    assert applied.geometry is not None and applied.erased is not None
    assert torch.equal(applied.erased, out != 0) and bool(applied.erased.any())
