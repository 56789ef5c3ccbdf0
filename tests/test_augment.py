"""Properties of the on-device augmentation (``visiondojo.augment``).

Checked here: magnitude 0 and p=0 are exact no-ops; every sample draws its own strength, and the
draws replay from the generator's seed; boxes, masks and keypoints move with their images (the
same forward matrix, nearest-sampled masks marking unknown pixels); strength grows with magnitude;
grayscale images pass the RGB-only ops untouched; mixup/CutMix targets match the pixels they
describe; and a policy with a bad op is a clear ConfigError.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import combinations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from visiondojo.augment import (
    OPS,
    Augmenter,
    Geometry,
    check_ops,
    mix,
    smooth,
    warp_boxes,
    warp_keypoints,
    warp_masks,
)
from visiondojo.augment.geometry import GEOMETRY_OPS
from visiondojo.augment.mixing import sample_beta
from visiondojo.errors import ConfigError
from visiondojo.plan import AugmentOp

PROPERTY = settings(max_examples=25, deadline=None, derandomize=True)
"""Few, fixed examples: the suite stays fast and sees the same numbers on every run."""

CPU = torch.device("cpu")
GEOMETRY = list(GEOMETRY_OPS)
AXIS_ALIGNED = ["translate", "hflip", "vflip", "rot90"]
"""Geometric ops that keep a rectangle an axis-aligned rectangle (no rotation, shear or zoom)."""
SIZES = [(32, 32), (40, 48)]
"""(height, width): square and non-square frames (rot90 about the centre of the latter clips)."""


# ---------------------------------------------------------------- helpers

def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_images(n: int, channels: int, height: int = 16, width: int = 20, *, seed: int = 0,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n, channels, height, width) uniform pixels in [0, 1]."""
    return torch.rand(n, channels, height, width, generator=seeded(seed)).to(dtype)


def augment(images: torch.Tensor, ops: list[AugmentOp], seed: int) -> tuple[torch.Tensor, Geometry | None]:
    """Run a policy on ``images`` with a fresh generator seeded ``seed``: the images and their warp."""
    out, applied = Augmenter(ops)(images, seeded(seed))
    return out, applied.geometry


def mean_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after - before).abs().mean())


def pixel_centres(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ys, xs), each (H, W): the continuous coordinates of every pixel's centre."""
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    return ys, xs


def foreground_box(mask: torch.Tensor, label: int = 1) -> torch.Tensor | None:
    """xyxy box (pixel-edge units) enclosing the ``label`` pixels of an (H, W) mask, or None."""
    found = (mask == label).nonzero()
    if len(found) == 0:
        return None
    ys, xs = found[:, 0].float(), found[:, 1].float()
    return torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def box_centres(boxes: torch.Tensor) -> torch.Tensor:
    """(M, 2) centres (x, y) of xyxy boxes."""
    return torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], dim=1)


def mirrored(geometry: Geometry) -> torch.Tensor:
    """(N,) bool: samples whose matrix reflects (negative determinant)."""
    return torch.linalg.det(geometry.matrix[:, :2, :2]) < 0


# ---------------------------------------------------------------- 1. no-ops

@pytest.mark.parametrize("magnitude, p", [(0.0, 1.0), (1.0, 0.0)], ids=["magnitude0", "p0"])
@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("name", OPS)
def test_off_ops_leave_images_bit_for_bit(name: str, channels: int, magnitude: float, p: float) -> None:
    """Magnitude 0 (or p=0) must be an exact no-op: a policy search may switch an op 'off' this way,
    and a run must then compute exactly what it would without the op."""
    images = random_images(6, channels, seed=0)
    out, geometry = augment(images, [AugmentOp(name, magnitude, p)], seed=1)
    assert torch.equal(out, images)
    if geometry is not None:
        assert not geometry.moved.any()


def test_a_whole_policy_at_magnitude_zero_is_a_no_op() -> None:
    """Every op at once, all off: the fused geometry is the identity and no pixel op fires."""
    images = random_images(6, 3, seed=2)
    out, geometry = augment(images, [AugmentOp(name, 0.0) for name in OPS], seed=3)
    assert torch.equal(out, images)
    assert geometry is not None and torch.equal(geometry.matrix, torch.eye(3).expand(6, 3, 3))


# ---------------------------------------------------------------- 2. per-sample draws, reproducible

@pytest.mark.parametrize("name", ["rotate", "shear", "translate", "zoom", "brightness", "contrast",
                                  "gamma", "noise", "erase"])
def test_each_sample_draws_its_own_strength(name: str) -> None:
    """Identical images in one batch come out different: the strength is drawn per sample, not
    per batch (a per-batch draw would make every step's augmentation perfectly correlated)."""
    images = random_images(1, 3, seed=4).expand(8, -1, -1, -1).contiguous()
    flat = augment(images, [AugmentOp(name, 1.0)], seed=5)[0].flatten(1)
    for i, j in combinations(range(len(flat)), 2):
        assert not torch.equal(flat[i], flat[j]), (i, j)


@pytest.mark.parametrize("name", OPS)
def test_draws_replay_from_the_seed(name: str) -> None:
    """Same generator seed -> bit-identical output (resumed runs replay their augmentation);
    another seed -> another output."""
    images = random_images(16, 3, seed=6)
    ops = [AugmentOp(name, 1.0)]
    first = augment(images, ops, seed=7)[0]
    assert torch.equal(first, augment(images, ops, seed=7)[0])
    assert not torch.equal(first, augment(images, ops, seed=8)[0])


# ---------------------------------------------------------------- 3. masks, boxes, keypoints

@dataclass
class Scene:
    """One rectangle per image of a batch, and a random geometric policy."""

    size: tuple[int, int]
    boxes: torch.Tensor
    """(N, 4) xyxy with integer corners."""
    order: torch.Tensor
    """A shuffle of the samples: boxes are passed to ``warp_boxes`` in this order with it as ``index``."""
    ops: list[AugmentOp]
    seed: int

    def masks(self) -> torch.Tensor:
        """(N, H, W) long: 1 inside each image's rectangle, 0 elsewhere."""
        height, width = self.size
        masks = torch.zeros(len(self.boxes), height, width, dtype=torch.long)
        for mask, (x1, y1, x2, y2) in zip(masks, self.boxes.long().tolist()):
            mask[y1:y2, x1:x2] = 1
        return masks


@st.composite
def scenes(draw: st.DrawFn, op_names: list[str], n: int = 4) -> Scene:
    height, width = draw(st.sampled_from(SIZES))
    boxes = []
    for _ in range(n):
        x1 = draw(st.integers(0, width - 3))
        y1 = draw(st.integers(0, height - 3))
        boxes.append([x1, y1, draw(st.integers(x1 + 2, width)), draw(st.integers(y1 + 2, height))])
    op = st.builds(AugmentOp, st.sampled_from(op_names), st.floats(0.0, 1.0), st.just(1.0))
    return Scene(size=(height, width), boxes=torch.tensor(boxes, dtype=torch.float32),
                 order=torch.tensor(draw(st.permutations(range(n)))),
                 ops=draw(st.lists(op, min_size=1, max_size=3)), seed=draw(st.integers(0, 2**31 - 1)))


def warp_scene(scene: Scene) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the scene's policy on a blank batch; return (warped masks, warped boxes) per sample."""
    height, width = scene.size
    _, geometry = augment(torch.zeros(len(scene.boxes), 1, height, width), scene.ops, scene.seed)
    assert geometry is not None
    masks = warp_masks(scene.masks(), geometry)
    boxes, _ = warp_boxes(scene.boxes[scene.order], scene.order, geometry)
    back = torch.empty_like(boxes)
    back[scene.order] = boxes  # rows back in sample order
    return masks, back


@PROPERTY
@given(scene=scenes(GEOMETRY))
def test_warped_mask_lies_inside_the_warped_box(scene: Scene) -> None:
    """Under any fused geometry, the object's pixels stay inside its moved box (up to nearest
    sampling): detection and segmentation targets never disagree with their image."""
    masks, boxes = warp_scene(scene)
    for mask, box in zip(masks, boxes):
        found = foreground_box(mask)
        if found is not None:
            assert (found[:2] >= box[:2] - 1.5).all() and (found[2:] <= box[2:] + 1.5).all(), (found, box)


@PROPERTY
@given(scene=scenes(AXIS_ALIGNED))
def test_axis_aligned_geometry_moves_mask_and_box_identically(scene: Scene) -> None:
    """Translate, flips and quarter turns keep the rectangle a rectangle: the warped box and the
    warped mask's bounding box coincide (within a pixel of nearest rounding)."""
    masks, boxes = warp_scene(scene)
    for mask, box in zip(masks, boxes):
        found = foreground_box(mask)
        if found is not None:
            assert torch.allclose(found, box, atol=1.0), (found, box)


def test_boxes_translated_out_of_the_frame_are_dropped() -> None:
    """A box is kept exactly when at least one pixel of it (in width and height) stays in frame
    after clipping; a box pushed out must be dropped with its label."""
    size = height, width = (32, 32)
    n = 64
    corner = torch.arange(n) % 4  # a 4x4 box in each corner of the frame in turn
    x1 = torch.where(corner % 2 == 0, 0, width - 4).float()
    y1 = torch.where(corner < 2, 0, height - 4).float()
    boxes = torch.stack([x1, y1, x1 + 4, y1 + 4], dim=1)
    _, geometry = augment(torch.zeros(n, 1, *size), [AugmentOp("translate", 1.0)], seed=9)
    assert geometry is not None and torch.equal(geometry.matrix[:, :2, :2], torch.eye(2).expand(n, 2, 2))
    shift = geometry.matrix[:, :2, 2].repeat(1, 2)
    limits = torch.tensor([width, height, width, height], dtype=torch.float32)
    expected = torch.minimum((boxes + shift).clamp_min(0), limits)
    expected_keep = (expected[:, 2] - expected[:, 0] >= 1) & (expected[:, 3] - expected[:, 1] >= 1)
    moved, keep = warp_boxes(boxes, torch.arange(n), geometry)
    assert torch.equal(keep, expected_keep)
    assert torch.allclose(moved, expected, atol=1e-5)
    assert 0 < int(keep.sum()) < n  # both outcomes happen in this batch


def test_keypoints_leaving_the_image_become_invisible() -> None:
    """A keypoint moves with the matrix and stays visible only if it was and it lands in frame."""
    size = height, width = (32, 40)
    n, k = 32, 6
    gen = seeded(10)
    points = torch.rand(n, k, 2, generator=gen) * torch.tensor([width, height])
    visible = torch.rand(n, k, generator=gen) < 0.8
    ops = [AugmentOp("rotate", 1.0), AugmentOp("translate", 1.0), AugmentOp("zoom", 1.0)]
    _, geometry = augment(torch.zeros(n, 1, *size), ops, seed=11)
    assert geometry is not None
    moved, still = warp_keypoints(points, visible, geometry)
    matrix = geometry.matrix
    expected = torch.einsum("nij,nkj->nki", matrix[:, :2, :2], points) + matrix[:, None, :2, 2]
    inside = ((expected >= 0) & (expected < torch.tensor([width, height]))).all(dim=2)
    assert torch.allclose(moved, expected, atol=1e-4)
    assert torch.equal(still, visible & inside)
    assert (visible & ~inside).any()  # some visible points did leave


def test_flip_index_swaps_left_and_right_partners_of_mirrored_samples() -> None:
    """After a mirror, the point labelled 'left eye' must be the one on the subject's left again:
    partners swap on mirrored samples only, so 'left' stays left of 'right' in every sample."""
    size = (24, 30)
    width = size[1]
    n = 16
    left = torch.tensor([8.0, 10.0])
    right = torch.tensor([20.0, 12.0])
    points = torch.stack([left, right]).expand(n, 2, 2).clone()
    visible = torch.tensor([True, False]).expand(n, 2)
    _, geometry = augment(torch.zeros(n, 1, *size), [AugmentOp("hflip", 1.0)], seed=12)
    assert geometry is not None
    flipped = mirrored(geometry)
    assert 0 < int(flipped.sum()) < n
    moved, still = warp_keypoints(points, visible, geometry, flip_index=[1, 0])

    def mirror(point: torch.Tensor) -> torch.Tensor:
        return torch.stack([width - point[0], point[1]])

    for i in range(n):
        expected = torch.stack([mirror(right), mirror(left)]) if flipped[i] else points[i]
        assert torch.allclose(moved[i], expected), i
        assert still[i].tolist() == ([False, True] if flipped[i] else [True, False])
        assert moved[i, 0, 0] < moved[i, 1, 0]


# ---------------------------------------------------------------- 4. images and boxes, one matrix

@pytest.mark.parametrize("name", GEOMETRY)
@PROPERTY
@given(magnitude=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1))
def test_box_moves_with_its_image(name: str, magnitude: float, seed: int) -> None:
    """A bright square's intensity centroid after warping lies at its warped box's centre: images
    (resampled through the inverse) and boxes (moved forward) use the same direction of the
    matrix. An inverted matrix puts them pixels apart."""
    size, side, n = 48, 6, 16
    gen = seeded(seed)
    corners = torch.randint(size // 2 - 9, size // 2 + 3, (n, 2), generator=gen)
    images = torch.zeros(n, 1, size, size)
    for image, (x, y) in zip(images, corners.tolist()):
        image[0, y:y + side, x:x + side] = 1.0
    boxes = torch.cat([corners, corners + side], dim=1).float()
    out, geometry = augment(images, [AugmentOp(name, magnitude)], seed)
    assert geometry is not None
    moved, keep = warp_boxes(boxes, torch.arange(n), geometry)
    assert keep.all() and (moved > 0).all() and (moved < size).all()  # never clipped by design
    ys, xs = pixel_centres(size, size)
    weight = out[:, 0]
    total = weight.sum(dim=(1, 2))
    centroid = torch.stack([(weight * xs).sum(dim=(1, 2)) / total, (weight * ys).sum(dim=(1, 2)) / total], dim=1)
    assert torch.allclose(centroid, box_centres(moved), atol=1.0)


# ---------------------------------------------------------------- 5. unknown mask pixels

@pytest.mark.parametrize("ignore_index", [255, -1])
@pytest.mark.parametrize("tx, ty", [(5, 0), (0, -7), (-3, 4)])
def test_mask_pixels_from_outside_get_ignore_index(tx: int, ty: int, ignore_index: int) -> None:
    """An integer shift moves class pixels exactly; pixels whose source is outside the image get
    ``ignore_index`` (their class is unknown), never class 0 (background is a real class)."""
    height, width = 12, 10
    masks = torch.randint(0, 3, (2, height, width), generator=seeded(13))
    matrix = torch.eye(3).repeat(2, 1, 1)
    matrix[0, :2, 2] = torch.tensor([tx, ty], dtype=torch.float32)  # sample 1 stays put
    warped = warp_masks(masks, Geometry(matrix, (height, width)), ignore_index=ignore_index)
    expected = torch.full_like(masks[0], ignore_index)
    ys, xs = slice(max(ty, 0), height + min(ty, 0)), slice(max(tx, 0), width + min(tx, 0))
    source_ys, source_xs = slice(max(-ty, 0), height + min(-ty, 0)), slice(max(-tx, 0), width + min(-tx, 0))
    expected[ys, xs] = masks[0, source_ys, source_xs]
    assert torch.equal(warped[0], expected)
    assert torch.equal(warped[1], masks[1])


def test_large_translation_marks_exactly_the_pixels_from_outside() -> None:
    """Through a random translate policy: a pixel is ignore_index iff its source lies outside the
    frame (pixels within half a pixel of the border, where nearest rounding decides, are skipped)."""
    size = height, width = (20, 24)
    n = 16
    masks = torch.zeros(n, height, width, dtype=torch.long)
    _, geometry = augment(torch.zeros(n, 1, *size), [AugmentOp("translate", 1.0)], seed=14)
    assert geometry is not None
    warped = warp_masks(masks, geometry)
    ys, xs = pixel_centres(height, width)
    shift = geometry.matrix[:, :2, 2]
    source_x = xs - shift[:, 0, None, None]
    source_y = ys - shift[:, 1, None, None]
    outside = (source_x < -0.5) | (source_x > width + 0.5) | (source_y < -0.5) | (source_y > height + 0.5)
    inside = (source_x > 0.5) & (source_x < width - 0.5) & (source_y > 0.5) & (source_y < height - 0.5)
    assert outside.any()
    assert (warped[outside] == 255).all()
    assert (warped[inside] == 0).all()


# ---------------------------------------------------------------- 6. magnitude means strength

@pytest.mark.parametrize("name", ["brightness", "contrast", "rotate", "noise", "blur"])
def test_change_grows_with_magnitude(name: str) -> None:
    """Averaged over a batch, magnitude 1 changes the images more than magnitude 0.25: the knob a
    policy search turns is monotone."""
    images = random_images(32, 3, seed=15)
    changes = [mean_change(images, augment(images, [AugmentOp(name, m)], seed=16)[0]) for m in (0.25, 1.0)]
    assert 0 < changes[0] < changes[1]


# ---------------------------------------------------------------- 7. grayscale, shapes, dtypes

@pytest.mark.parametrize("name", ["saturation", "hue"])
@PROPERTY
@given(magnitude=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1))
def test_rgb_only_ops_leave_grayscale_alone(name: str, magnitude: float, seed: int) -> None:
    """Saturation and hue have no meaning for one channel: grayscale images pass unchanged."""
    images = random_images(4, 1, seed=seed % 1000)
    assert torch.equal(augment(images, [AugmentOp(name, magnitude)], seed)[0], images)


def op_cases() -> list:
    """(name, dtype, channels) for every op on float32/float64 gray and RGB images."""
    cases = []
    for dtype in (torch.float32, torch.float64):
        for channels in (1, 3):
            for name in OPS:
                cases.append(pytest.param(name, dtype, channels, id=f"{str(dtype)[6:]}-{channels}ch-{name}"))
    return cases


@pytest.mark.parametrize("name, dtype, channels", op_cases())
@settings(PROPERTY, max_examples=10)
@given(magnitude=st.floats(0.0, 1.0), size=st.sampled_from([(7, 7), (9, 14), (16, 12)]),
       seed=st.integers(0, 2**31 - 1))
def test_ops_keep_shape_and_dtype_and_stay_finite(name: str, dtype: torch.dtype, channels: int, magnitude: float,
                                                  size: tuple[int, int], seed: int) -> None:
    """On [0, 1] inputs, every op returns the same shape and dtype and finite values."""
    images = random_images(4, channels, *size, seed=seed % 1000, dtype=dtype)
    out, _ = augment(images, [AugmentOp(name, magnitude)], seed)
    assert out.shape == images.shape and out.dtype == dtype
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------- 8. mixup, CutMix, smoothing

def source_batch(n: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images whose pixels name their source: sample i is one-hot in channel i. With one-hot
    targets of class i, a mixed image's channel means are exactly the target it should have."""
    images = torch.eye(n).view(n, n, 1, 1).expand(n, n, height, width).contiguous()
    masks = torch.arange(n).view(n, 1, 1).expand(n, height, width).contiguous()
    return images, torch.eye(n), masks


MIX_MODES = {"mixup": (1, 0), "cutmix": (0, 1), "both": (1, 1)}
"""Which of (mixup, cutmix) each mode turns on."""


@pytest.mark.parametrize("mode", MIX_MODES)
@PROPERTY
@given(concentration=st.floats(0.1, 1.0), n=st.integers(2, 8), size=st.sampled_from([(8, 8), (12, 10), (5, 16)]),
       seed=st.integers(0, 2**31 - 1))
def test_mixed_targets_are_the_pixel_shares(mode: str, concentration: float, n: int, size: tuple[int, int],
                                            seed: int) -> None:
    """Each mixed target is a distribution (non-negative rows summing to 1) and equals the share
    of each source sample in the mixed image: for CutMix that is the fraction of its own pixels
    that remain, recomputed from the pasted box, not the drawn lambda."""
    use_mixup, use_cutmix = MIX_MODES[mode]
    images, targets, masks = source_batch(n, *size)
    out, mixed, out_masks = mix(images, targets, use_mixup * concentration, use_cutmix * concentration,
                                seeded(seed), masks=masks)
    assert (mixed >= 0).all()
    assert torch.allclose(mixed.sum(dim=1), torch.ones(n), atol=1e-6)
    assert torch.allclose(mixed, out.mean(dim=(2, 3)), atol=1e-5)
    assert out_masks is not None
    if mode == "mixup":  # a pixel cannot take two classes: masks stay
        assert torch.equal(out_masks, masks)
    elif mode == "cutmix":  # pasted with the same region as the pixels
        assert torch.equal(out_masks, out.argmax(dim=1))
    else:
        changed = out_masks != masks
        assert torch.equal(out.argmax(dim=1)[changed], out_masks[changed])
        assert (out.amax(dim=1)[changed] == 1).all()


@pytest.mark.parametrize("a", [0.2, 1.0])
def test_sample_beta_has_the_beta_moments(a: float) -> None:
    """Beta(a, a) has mean 1/2 and variance 1 / (4 (2a + 1)); the seeded sampler must match
    (a few thousand draws: about 4 standard errors of tolerance)."""
    draws = sample_beta(a, 4000, seeded(17), CPU)
    assert ((draws >= 0) & (draws <= 1)).all()
    assert float(draws.mean()) == pytest.approx(0.5, abs=0.025)
    assert float(draws.var()) == pytest.approx(1 / (4 * (2 * a + 1)), abs=0.01)


@pytest.mark.parametrize("epsilon, classes", [(0.1, 4), (0.3, 10), (0.05, 2)])
def test_smooth_is_label_smoothing(epsilon: float, classes: int) -> None:
    """y (1 - eps) + eps / K, and the cross-entropy against it equals torch's label_smoothing."""
    gen = seeded(18)
    labels = torch.randint(0, classes, (12,), generator=gen)
    logits = torch.randn(12, classes, generator=gen)
    hot = F.one_hot(labels, classes).float()
    smoothed = smooth(hot, epsilon, classes)
    assert torch.allclose(smoothed, hot * (1 - epsilon) + epsilon / classes)
    assert torch.allclose(smoothed.sum(dim=1), torch.ones(12))
    soft_loss = -(smoothed * logits.log_softmax(dim=1)).sum(dim=1).mean()
    assert torch.allclose(soft_loss, F.cross_entropy(logits, labels, label_smoothing=epsilon), atol=1e-6)


# ---------------------------------------------------------------- 9. config errors

def test_unknown_op_names_it_and_lists_the_choices() -> None:
    with pytest.raises(ConfigError) as error:
        check_ops([AugmentOp("rotate", 0.5), AugmentOp("wobble", 0.5)])
    message = str(error.value)
    assert "augment[1]" in message and "'wobble'" in message
    assert all(name in message for name in OPS)


@pytest.mark.parametrize("field, value", [("magnitude", -0.1), ("magnitude", 1.5), ("p", 2.0), ("p", -1.0)])
def test_out_of_range_values_are_config_errors(field: str, value: float) -> None:
    """Magnitudes and probabilities live in [0, 1]; outside it the error names the op and the field.
    The Augmenter refuses such a policy too, before any batch is touched."""
    op = AugmentOp("shear", **{field: value})
    with pytest.raises(ConfigError, match=rf"shear.*{field}.*{re.escape(str(value))}.*outside \[0, 1\]"):
        check_ops([op])
    with pytest.raises(ConfigError):
        Augmenter([op])


def test_boxes_left_with_too_little_area_in_frame_are_dropped() -> None:
    """With ``min_visible``, a box keeps its object only while that share of its moved area is
    still inside the image; the detection task drops slivers under a quarter."""
    from visiondojo.tasks.detection import MIN_VISIBLE_BOX

    size = height, width = (32, 32)
    n = 64
    corner = torch.arange(n) % 4
    x1 = torch.where(corner % 2 == 0, 0, width - 8).float()
    y1 = torch.where(corner < 2, 0, height - 8).float()
    boxes = torch.stack([x1, y1, x1 + 8, y1 + 8], dim=1)
    _, geometry = augment(torch.zeros(n, 1, *size), [AugmentOp("translate", 1.0)], seed=9)
    assert geometry is not None
    moved_full = boxes + geometry.matrix[:, :2, 2].repeat(1, 2)
    clipped, keep = warp_boxes(boxes, torch.arange(n), geometry, min_visible=MIN_VISIBLE_BOX)
    inside = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    share = inside / 64.0
    assert torch.allclose(clipped, torch.minimum(moved_full.clamp_min(0), torch.tensor([32.0] * 4)), atol=1e-5)
    assert torch.equal(keep, (share >= MIN_VISIBLE_BOX) & (clipped[:, 2] - clipped[:, 0] >= 1)
                       & (clipped[:, 3] - clipped[:, 1] >= 1))
    _, keep_any = warp_boxes(boxes, torch.arange(n), geometry)
    assert int(keep.sum()) < int(keep_any.sum())  # some slivers were kept by the default and dropped here
