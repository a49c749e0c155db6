"""Evaluation metrics: hand-computed cases, degenerate inputs, and a real world clip."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from unityvideo.eval.baselines import trivial_baseline
from unityvideo.eval.metrics import (
    PRIMARY_METRIC, Pooled, align_depth, control_agreement, densepose_metrics, depth_metrics, flow_metrics,
    mean_metrics, modality_metrics, modality_scores, pool, segmentation_metrics, skeleton_metrics,
)
from unityvideo.eval.quality import dis_flow, frame_ssim, motion_smoothness, ssim, warping_error
from unityvideo.modalities import MODALITY_NAMES, get_modality
from unityvideo.world import WorldConfig, generate_clip


# ----------------------------------------------------------------------------- depth

def test_depth_perfect_and_invariant_to_scale_and_shift_of_disparity():
    rng = np.random.default_rng(0)
    gt = rng.uniform(1.0, 20.0, (3, 8, 10)).astype(np.float32)
    gt[:, :2] = np.inf  # sky rows are excluded, whatever the prediction says there
    assert depth_metrics(gt, gt) == pytest.approx({"abs_rel": 0.0, "delta1": 1.0}, abs=1e-9)
    pred = 1.0 / (3.0 / gt + 0.2)  # disparity 3 d* + 0.2
    pred[:, :2] = rng.uniform(0.1, 5.0, (3, 2, 10))
    assert depth_metrics(pred, gt) == pytest.approx({"abs_rel": 0.0, "delta1": 1.0}, abs=1e-6)
    assert depth_metrics(gt * 7.5, gt)["abs_rel"] == pytest.approx(0.0, abs=1e-6)  # scale only


def test_depth_constant_prediction_is_the_mean_disparity_plane():
    gt = np.array([[[1.0, 2.0, np.inf]]])
    # Aligned disparity = mean(1, 1/2) = 3/4 -> depth 4/3: errors 1/3 and 1/3; ratios 4/3 and 3/2.
    assert depth_metrics(np.full_like(gt, 5.0), gt) == pytest.approx({"abs_rel": 1 / 3, "delta1": 0.0})
    assert depth_metrics(np.full_like(gt, np.inf), gt) == pytest.approx({"abs_rel": 1 / 3, "delta1": 0.0})


def test_depth_all_sky_is_nan_and_negative_aligned_disparity_is_clipped():
    sky = np.full((2, 4, 4), np.inf, np.float32)
    assert all(np.isnan(v) for v in depth_metrics(np.ones_like(sky), sky).values())
    # gt disparity (1, 0.1, 0.1) against pred disparity (0, 0.5, 1): the fit s = -0.9, b = 0.85 gives
    # -0.05 at the last pixel; it is clipped to the GT range instead of becoming a negative depth.
    gt = np.array([[[1.0, 10.0, 10.0]]])
    pred = np.array([[[np.inf, 2.0, 1.0]]])
    aligned = align_depth(pred, gt, np.isfinite(gt))
    assert np.all(np.isfinite(aligned)) and aligned.min() >= 1.0 and aligned.max() <= 10.0
    metrics = depth_metrics(pred, gt)
    assert np.isfinite(metrics["abs_rel"]) and 0.0 <= metrics["delta1"] <= 1.0


def test_depth_bad_predicted_values_and_shape_mismatch():
    gt = np.array([[[1.0, 2.0, 4.0, 8.0]]])
    pred = np.array([[[1.0, 2.0, np.nan, 0.0]]])  # NaN and 0 count as infinitely far
    assert np.isfinite(depth_metrics(pred, gt)["abs_rel"])
    with pytest.raises(ValueError, match="same clip"):
        depth_metrics(np.ones((1, 2, 2)), np.ones((1, 2, 3)))


# ----------------------------------------------------------------------------- flow

def test_flow_known_epe_and_outlier_boundaries():
    gt = np.zeros((1, 1, 6, 2))
    pred = np.zeros((1, 1, 6, 2))
    pred[0, 0, 0] = (3.0, 0.0)       # error exactly 3 px: not an outlier (> 3 required)
    pred[0, 0, 1] = (3.001, 0.0)     # > 3 px and > 5 % of 0: outlier
    gt[0, 0, 2:5] = (100.0, 0.0)
    pred[0, 0, 2] = (105.0, 0.0)     # 5 px = exactly 5 % of 100: not an outlier
    pred[0, 0, 3] = (105.1, 0.0)     # 5.1 px > 5 %: outlier
    pred[0, 0, 4] = (100.0, 2.9)     # 2.9 px < 3 px: not an outlier
    metrics = flow_metrics(pred, gt)
    assert metrics["epe"] == pytest.approx((3 + 3.001 + 5 + 5.1 + 2.9 + 0) / 6)
    assert metrics["epe_moving"] == pytest.approx((5 + 5.1 + 2.9) / 3)  # the three pixels with true flow
    assert metrics["fl_all"] == pytest.approx(2 / 6)
    still = flow_metrics(np.full((2, 3, 3, 2), [3.0, 4.0]), np.zeros((2, 3, 3, 2)))
    assert still["epe"] == pytest.approx(5.0) and still["fl_all"] == 1.0 and np.isnan(still["epe_moving"])


def test_flow_valid_mask():
    gt = np.zeros((1, 2, 2, 2))
    pred = gt.copy()
    pred[0, 0, 0] = (30.0, 40.0)
    valid = np.ones((1, 2, 2), bool)
    assert flow_metrics(pred, gt)["epe"] == pytest.approx(50.0 / 4)
    valid[0, 0, 0] = False
    assert flow_metrics(pred, gt, valid)["epe"] == 0.0 and flow_metrics(pred, gt, valid)["fl_all"] == 0.0
    assert all(np.isnan(v) for v in flow_metrics(pred, gt, np.zeros_like(valid)).values())


# ----------------------------------------------------------------------------- segmentation

def test_segmentation_iou_of_two_known_rectangles():
    gt = np.zeros((1, 8, 8), np.uint8)
    pred = np.zeros((1, 8, 8), np.uint8)
    gt[0, 0:4, 0:4] = 1
    pred[0, 2:6, 2:6] = 7  # overlap 2 x 2 = 4 px, union 16 + 16 - 4 = 28
    assert segmentation_metrics(pred, gt) == pytest.approx({"miou": 4 / 28, "fg_iou": 4 / 28})


def test_segmentation_hungarian_matching_ignores_id_permutation():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 4, (3, 10, 12))
    lut = np.array([0, 5, 1, 9])  # 1 -> 5, 2 -> 1, 3 -> 9
    assert segmentation_metrics(lut[gt], gt) == pytest.approx({"miou": 1.0, "fg_iou": 1.0})


def test_segmentation_missed_and_hallucinated_instances_count_as_zero():
    gt = np.zeros((1, 4, 8), np.int64)
    gt[0, :, :2], gt[0, :, 4:6] = 1, 2
    missed = np.where(gt == 2, 0, gt)
    assert segmentation_metrics(missed, gt)["miou"] == pytest.approx(1 / 2)
    extra = gt.copy()
    extra[0, :, 7] = 3
    assert segmentation_metrics(extra, gt)["miou"] == pytest.approx(2 / 3)
    switched = gt.copy()
    switched[0, 2:, :2] = 4  # an id switch inside instance 1 halves its clip-level IoU
    assert segmentation_metrics(switched, gt)["miou"] == pytest.approx((1 + 0.5) / 3)


def test_segmentation_empty_masks():
    empty = np.zeros((2, 4, 4), np.uint8)
    some = empty.copy()
    some[0, 1, 1] = 3
    assert all(np.isnan(v) for v in segmentation_metrics(empty, empty).values())  # nothing to measure
    assert segmentation_metrics(some, empty) == {"miou": 0.0, "fg_iou": 0.0}
    assert segmentation_metrics(empty, some) == {"miou": 0.0, "fg_iou": 0.0}


# ----------------------------------------------------------------------------- skeleton

def _person(x0: float, y0: float, frames: int = 2) -> np.ndarray:
    """One person, joints spread over a 100 x 50 box (size 100) at (x0, y0), all visible."""
    joints = np.stack([x0 + np.linspace(0, 100, 17), y0 + np.linspace(0, 50, 17), np.full(17, 2.0)], -1)
    return np.repeat(joints[None, None], frames, axis=0)


def test_skeleton_pck_on_a_known_offset():
    gt = _person(10, 20)
    for offset, expected in [((3.0, 4.0), (1.0, 1.0)),    # 5 px = 0.05 * 100: inside both (<=)
                             ((6.0, 0.0), (0.0, 1.0)),    # between 5 and 10 px
                             ((0.0, 10.5), (0.0, 0.0))]:
        pred = gt.copy()
        pred[..., :2] += offset
        assert skeleton_metrics(pred, gt) == pytest.approx({"pck@0.05": expected[0], "pck@0.1": expected[1],
                                                            "pck@0.2": 1.0, "pck17@0.1": expected[1]})


def test_skeleton_persons_matched_per_frame_and_visibility_rules():
    gt = np.concatenate([_person(0, 0), _person(300, 0)], axis=1)  # (2, 2, 17, 3)
    pred = gt[:, ::-1].copy()  # persons listed in the other order
    assert skeleton_metrics(pred, gt) == pytest.approx({"pck@0.05": 1.0, "pck@0.1": 1.0, "pck@0.2": 1.0,
                                                        "pck17@0.1": 1.0})
    pred[0, 0, :4, 2] = 0  # 4 predicted joints missing (v = 0): misses
    gt_half = gt.copy()
    gt_half[1, 1, :, 2] = 0  # GT joints with v = 0 are not counted; v = 1 (occluded) is
    gt_half[1, 0, :, 2] = 1
    # 51 labelled joints, 39 of them scored (no eyes or ears); of the 4 missing, only the nose is scored
    assert skeleton_metrics(pred, gt_half)["pck17@0.1"] == pytest.approx((51 - 4) / 51)
    assert skeleton_metrics(pred, gt_half)["pck@0.1"] == pytest.approx((39 - 1) / 39)
    # One predicted person for two GT persons: the other GT person's joints miss; extras are free.
    assert skeleton_metrics(gt[:, :1], gt)["pck@0.1"] == pytest.approx(0.5)
    assert skeleton_metrics(gt, gt[:, :1])["pck@0.1"] == pytest.approx(1.0)


def test_skeleton_no_persons():
    none = np.zeros((3, 0, 17, 3))
    assert all(np.isnan(v) for v in skeleton_metrics(none, none).values())
    assert all(np.isnan(v) for v in skeleton_metrics(_person(0, 0, 3), np.zeros((3, 1, 17, 3))).values())
    assert skeleton_metrics(none, _person(0, 0, 3)) == {"pck@0.05": 0.0, "pck@0.1": 0.0, "pck@0.2": 0.0,
                                                        "pck17@0.1": 0.0}
    with pytest.raises(ValueError, match="frames"):
        skeleton_metrics(_person(0, 0, 2), _person(0, 0, 3))


# ----------------------------------------------------------------------------- densepose

def test_densepose_part_iou_and_uv_error():
    gt = np.zeros((1, 2, 8, 3))
    gt[0, :, :2, 0], gt[0, :, 2:4, 0] = 1, 2  # 4 px of part 1, 4 px of part 2
    gt[..., 1:] = np.where(gt[..., :1] > 0, 0.5, 0.0)
    assert densepose_metrics(gt, gt) == {"part_miou": 1.0, "body_iou": 1.0, "uv_error": 0.0}
    pred = gt.copy()
    pred[0, :, :4, 0] = 1  # part 1 on 8 px: IoU(1) = 4/8, IoU(2) = 0
    pred[..., 1:] += [0.3, 0.4]  # UV off by 0.5 where the part is right (part 1)
    assert densepose_metrics(pred, gt) == pytest.approx({"part_miou": 0.25, "body_iou": 1.0, "uv_error": 0.5})


def test_densepose_empty():
    empty = np.zeros((1, 4, 4, 3))
    person = empty.copy()
    person[0, 1:3, 1:3] = (5, 0.2, 0.7)
    assert all(np.isnan(v) for v in densepose_metrics(empty, empty).values())  # nothing to measure
    assert densepose_metrics(empty, person)["part_miou"] == 0.0 and densepose_metrics(empty, person)["body_iou"] == 0.0


# ----------------------------------------------------------------------------- dispatch

def test_dispatch_aliases_primary_metric_and_control_agreement():
    assert set(PRIMARY_METRIC) == set(MODALITY_NAMES)
    flow = np.zeros((1, 2, 2, 2))
    assert modality_metrics("raft", flow + [3.0, 4.0], flow)["epe"] == pytest.approx(5.0)
    with pytest.raises(ValueError, match="no accuracy metric"):
        modality_metrics("rgb", flow, flow)
    with pytest.raises(ValueError, match="unknown modality"):
        modality_metrics("normals", flow, flow)
    control = _person(0, 0)  # control: one person; the generated video shows two
    reestimated = np.concatenate([_person(300, 0), _person(0, 0)], axis=1)
    assert control_agreement("pose", control, reestimated)["pck@0.1"].value == 1.0
    assert modality_metrics("pose", control, reestimated)["pck@0.1"] == 0.5


def test_mean_metrics_skips_nan():
    assert mean_metrics([{"a": 1.0, "b": np.nan}, {"a": 3.0, "b": 2.0}]) == {"a": 2.0, "b": 2.0}


# ----------------------------------------------------------------------------- video quality

def _texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    from scipy import ndimage
    noise = np.random.default_rng(seed).uniform(0, 1, (height, width, 3))
    smooth = ndimage.gaussian_filter(noise, (1.5, 1.5, 0))
    return (smooth - smooth.min()) / (smooth.max() - smooth.min())


def _translating(frames: int, dx: int, dy: int, height: int = 32, width: int = 40) -> np.ndarray:
    """Frames of a texture moving by (dx, dy) px per frame: I_{t+1}(x + d) = I_t(x)."""
    pad = frames * max(abs(dx), abs(dy))
    canvas = _texture(height + 2 * pad, width + 2 * pad)
    return np.stack([canvas[pad - t * dy:pad - t * dy + height, pad - t * dx:pad - t * dx + width]
                     for t in range(frames)])


def test_warping_error_zero_for_translation_with_exact_flow():
    video = _translating(4, 2, -1)
    flow = np.broadcast_to(np.array([2.0, -1.0]), video.shape[:3] + (2,))
    assert warping_error(video, flow) == pytest.approx(0.0, abs=1e-12)
    assert warping_error(video, np.zeros_like(flow)) > 1e-3
    # Sub-pixel motion of a linear ramp: bilinear sampling is exact on linear images.
    ramp = np.linspace(0, 1, 40)[None, None, :, None] * np.ones((3, 16, 40, 1))
    ramp[1] = np.clip(ramp[1] - 0.25 / 39, 0, 1)  # moves right by 0.25 px
    ramp[2] = np.clip(ramp[2] - 0.5 / 39, 0, 1)
    sub = np.broadcast_to(np.array([0.25, 0.0]), (2, 16, 40, 2))
    valid = np.ones((2, 16, 40), bool)
    valid[..., :2] = False  # the clipped left edge is not a translation
    assert warping_error(ramp, sub, valid) == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(warping_error(video[:1], flow[:1]))
    assert np.isnan(warping_error(video, flow, np.zeros(video.shape[:3], bool)))


def test_ssim_identical_is_one_and_independent_noise_is_near_zero():
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    assert frame_ssim(np.stack([frame, frame, frame])) == pytest.approx(1.0)
    noise = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    assert abs(frame_ssim(noise)) < 0.05
    assert ssim(noise[0, ..., 0], noise[0, ..., 0]) == pytest.approx(1.0)
    assert np.isnan(frame_ssim(noise[:1]))


def test_motion_smoothness():
    still = np.repeat(_texture(16, 16)[None], 5, axis=0)
    assert motion_smoothness(still) == pytest.approx(1.0)
    fade = still * np.linspace(0.2, 1.0, 5)[:, None, None, None]  # constant rate of change
    assert motion_smoothness(fade) == pytest.approx(1.0)
    flicker = np.where(np.arange(5)[:, None, None, None] % 2 == 0, 0.2, 0.6) * np.ones((5, 4, 4, 3))
    assert motion_smoothness(flicker) == pytest.approx(1.0 - 0.4)  # |0.6 - 0.2| residual each frame
    assert np.isnan(motion_smoothness(still[:2]))


def test_dis_flow_recovers_a_translation():
    pytest.importorskip("cv2", reason="dis_flow needs OpenCV (the annotate extra)")
    video = (_translating(3, 3, 2, 64, 80) * 255).round().astype(np.uint8)
    flow = dis_flow(video)
    assert flow.shape == (3, 64, 80, 2) and flow.dtype == np.float32
    interior = flow[:2, 12:-12, 12:-12]
    assert np.median(np.linalg.norm(interior - [3.0, 2.0], axis=-1)) < 0.5
    np.testing.assert_array_equal(flow[2], flow[1])


def test_dis_flow_without_opencv_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ImportError, match=r"unityvideo\[annotate\]"):
        dis_flow(np.zeros((2, 8, 8, 3), np.uint8))


# ----------------------------------------------------------------------------- a real world clip

@pytest.fixture(scope="module")
def clip():
    return generate_clip(0, "test", 0, frames=6, size=(48, 64), config=WorldConfig(persons=(1, 2)))


def test_world_clip_ground_truth_is_perfect_and_baselines_are_worse(clip):
    perfect = {"depth": {"abs_rel": 0.0, "delta1": 1.0}, "flow": {"epe": 0.0, "epe_moving": 0.0, "fl_all": 0.0},
               "segmentation": {"miou": 1.0, "fg_iou": 1.0},
               "skeleton": {"pck@0.05": 1.0, "pck@0.1": 1.0, "pck@0.2": 1.0, "pck17@0.1": 1.0},
               "densepose": {"part_miou": 1.0, "body_iou": 1.0, "uv_error": 0.0}}
    for name in MODALITY_NAMES:
        gt = getattr(clip, name)
        assert modality_metrics(name, gt, gt) == pytest.approx(perfect[name], abs=1e-9), name
        key, higher = PRIMARY_METRIC[name]
        score = modality_metrics(name, trivial_baseline(name, gt, clip.rgb), gt)[key]
        assert (score < perfect[name][key]) if higher else (score > perfect[name][key]), (name, score)


def test_world_clip_decoded_encodings_score_near_perfect(clip):
    for name, key, bound in [("depth", "abs_rel", 0.02), ("segmentation", "miou", 0.999),
                             ("densepose", "part_miou", 0.999)]:
        modality = get_modality(name)
        gt = getattr(clip, name)
        decoded = modality.decode(modality.encode(gt, **modality.default_hints(gt)), **modality.default_hints(gt))
        score = modality_metrics(name, decoded, gt)[key]
        assert score <= bound if not PRIMARY_METRIC[name][1] else score >= bound, (name, score)


def test_world_clip_video_quality(clip):
    exact = warping_error(clip.rgb, clip.flow, clip.flow_valid)
    assert exact < warping_error(clip.rgb, np.zeros_like(clip.flow), clip.flow_valid)
    assert 0.0 < frame_ssim(clip.rgb) < 1.0
    assert 0.0 < motion_smoothness(clip.rgb) <= 1.0
