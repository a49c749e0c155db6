"""Per-modality accuracy metrics on raw arrays (the `WorldClip` layouts), pure numpy/scipy.

Every metric compares one clip's prediction with its reference and returns a dict of floats:

    depth         abs_rel, delta1       after one scale+shift per clip, fitted in disparity space
    flow          epe, fl_all           KITTI outliers: error > 3 px and > 5 % of the true magnitude
    segmentation  miou, fg_iou          instances matched by the Hungarian method on clip IoU
    skeleton      pck@0.05, pck@0.1     of the GT person's keypoint box, persons matched per frame
    densepose     part_miou, uv_error   24 body parts; UV error where the part is right

Fractions (delta1, fl_all, IoUs, PCK) lie in [0, 1]. A metric with nothing to measure (all-sky
depth, no GT person, no pixel with the right part) is NaN; average clips with `mean_metrics`,
which skips NaNs. `modality_metrics(name, pred, gt)` dispatches by modality name or alias,
`control_agreement` scores a control signal against the same modality re-estimated from a
generated video, and `trivial_baseline` gives the floor a model has to beat.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
from scipy.optimize import linear_sum_assignment

from unityvideo.eval.quality import dis_flow, frame_ssim, motion_smoothness, ssim, warping_error
from unityvideo.modalities import MODALITY_NAMES, get_modality

__all__ = [
    "depth_metrics", "flow_metrics", "segmentation_metrics", "skeleton_metrics", "densepose_metrics",
    "modality_metrics", "control_agreement", "trivial_baseline", "mean_metrics", "PRIMARY_METRIC",
    "DENSEPOSE_PARTS", "PCK_THRESHOLDS",
    "warping_error", "frame_ssim", "ssim", "motion_smoothness", "dis_flow",
]

# The number each modality is ranked by, and whether higher is better.
PRIMARY_METRIC: dict[str, tuple[str, bool]] = {
    "depth": ("abs_rel", False),
    "flow": ("epe", False),
    "segmentation": ("miou", True),
    "skeleton": ("pck@0.1", True),
    "densepose": ("part_miou", True),
}
DENSEPOSE_PARTS = 24
PCK_THRESHOLDS = (0.05, 0.1)
DELTA1_THRESHOLD = 1.25


def _same_shape(pred: Any, gt: Any, metric: str, layout: str) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"{metric}: prediction {pred.shape} and reference {gt.shape} must both be {layout} "
                         "of the same clip; resize the prediction to the reference first")
    return pred, gt


def _mean_or_nan(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


# ----------------------------------------------------------------------------- depth

def _fit_scale_shift(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares (s, b) minimising sum (s x + b - y)^2; a constant x gets s = 0, b = mean(y)."""
    x_mean, y_mean = x.mean(), y.mean()
    variance = np.mean((x - x_mean) ** 2)
    if variance <= 1e-12 * max(x_mean ** 2, 1e-30):
        return 0.0, float(y_mean)
    scale = np.mean((x - x_mean) * (y - y_mean)) / variance
    return float(scale), float(y_mean - scale * x_mean)


def align_depth(pred_depth: np.ndarray, gt_depth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Prediction aligned to the reference with one scale and shift per clip, fitted by least
    squares on disparity (1/depth) over `valid`, as video depth papers evaluate relative depth.

    Predicted depth that is inf, NaN or <= 0 counts as disparity 0 (infinitely far). The aligned
    disparity is clipped to the clip's reference disparity range before inversion, so a negative
    or zero aligned disparity (possible when the fit is poor) never becomes a negative or infinite
    depth — the per-clip analogue of capping predictions at the dataset's max depth.
    """
    pred = np.asarray(pred_depth, np.float64)
    usable = np.isfinite(pred) & (pred > 0)
    pred_disparity = np.where(usable, 1.0 / np.where(usable, pred, 1.0), 0.0)
    gt_disparity = 1.0 / gt_depth[valid].astype(np.float64)
    scale, shift = _fit_scale_shift(pred_disparity[valid], gt_disparity)
    aligned = (scale * pred_disparity + shift).clip(gt_disparity.min(), gt_disparity.max())
    return 1.0 / aligned


def depth_metrics(pred_depth: np.ndarray, gt_depth: np.ndarray, valid: np.ndarray | None = None) -> dict[str, float]:
    """AbsRel = mean |d - d*| / d* and delta1 = fraction with max(d/d*, d*/d) < 1.25, after per-clip
    scale+shift alignment in disparity (`align_depth`). Pixels where the reference is sky (inf),
    NaN or <= 0, or outside the optional `valid` mask, are excluded; none left -> NaN."""
    pred, gt = _same_shape(pred_depth, gt_depth, "depth_metrics", "depth (F, H, W)")
    gt = gt.astype(np.float64)
    mask = np.isfinite(gt) & (gt > 0)
    if valid is not None:
        mask &= np.asarray(valid, bool)
    if not mask.any():
        return {"abs_rel": float("nan"), "delta1": float("nan")}
    aligned = align_depth(pred, gt, mask)[mask]
    truth = gt[mask]
    ratio = np.maximum(aligned / truth, truth / aligned)
    return {"abs_rel": float(np.mean(np.abs(aligned - truth) / truth)),
            "delta1": float(np.mean(ratio < DELTA1_THRESHOLD))}


# ----------------------------------------------------------------------------- flow

def flow_metrics(pred_flow: np.ndarray, gt_flow: np.ndarray, valid: np.ndarray | None = None) -> dict[str, float]:
    """EPE = mean endpoint error (pixels) and Fl-all = fraction of outliers, KITTI 2015's rule: a
    pixel is an outlier when its error is > 3 px AND > 5 % of the true flow's magnitude. Averaged
    over pixels where `valid` (F, H, W) is true (all if None) and the reference is finite."""
    pred, gt = _same_shape(pred_flow, gt_flow, "flow_metrics", "flow (F, H, W, 2)")
    gt = gt.astype(np.float64)
    mask = np.isfinite(gt).all(axis=-1)
    if valid is not None:
        mask &= np.asarray(valid, bool).reshape(mask.shape)
    error = np.linalg.norm(pred.astype(np.float64)[mask] - gt[mask], axis=-1)
    error = np.nan_to_num(error, nan=np.inf)  # a NaN prediction is as wrong as can be
    magnitude = np.linalg.norm(gt[mask], axis=-1)
    outlier = (error > 3.0) & (error > 0.05 * magnitude)
    return {"epe": _mean_or_nan(error), "fl_all": _mean_or_nan(outlier)}


# ----------------------------------------------------------------------------- segmentation

def _label_overlap(pred_labels: np.ndarray, gt_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intersections (n_gt, n_pred) of every GT label with every predicted label, and their areas."""
    gt_values, gt_index = np.unique(gt_labels, return_inverse=True)
    pred_values, pred_index = np.unique(pred_labels, return_inverse=True)
    joint = np.bincount(gt_index.ravel() * len(pred_values) + pred_index.ravel(),
                        minlength=len(gt_values) * len(pred_values))
    joint = joint.reshape(len(gt_values), len(pred_values))
    return joint, gt_values, pred_values


def instance_iou(pred_ids: np.ndarray, gt_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU matrix (n_gt, n_pred) of the non-zero instance ids over the whole clip (space and time),
    with the GT and predicted ids of its rows and columns."""
    joint, gt_values, pred_values = _label_overlap(pred_ids, gt_ids)
    gt_area, pred_area = joint.sum(axis=1), joint.sum(axis=0)
    rows, cols = gt_values != 0, pred_values != 0
    inter = joint[np.ix_(rows, cols)].astype(np.float64)
    union = gt_area[rows, None] + pred_area[None, cols] - inter
    return inter / np.maximum(union, 1), gt_values[rows], pred_values[cols]


def segmentation_metrics(pred_ids: np.ndarray, gt_ids: np.ndarray) -> dict[str, float]:
    """Instance mIoU and foreground IoU of one clip (id 0 = background).

    An instance's mask is its pixels over the whole clip, so an id switch mid-clip costs IoU. GT and
    predicted instances are paired one-to-one by the Hungarian method maximising total IoU; pairs
    with IoU 0 are not matches. miou = sum of matched IoUs / (matches + unmatched GT + unmatched
    predicted instances): missed and hallucinated instances both count as IoU 0. fg_iou = IoU of
    the masks id > 0. With no instance in either, both are 1 (the prediction is exactly right).
    """
    pred, gt = _same_shape(pred_ids, gt_ids, "segmentation_metrics", "instance ids (F, H, W)")
    pred, gt = pred.astype(np.int64), gt.astype(np.int64)
    iou, gt_values, pred_values = instance_iou(pred, gt)
    if iou.size:
        rows, cols = linear_sum_assignment(iou, maximize=True)
        matched = iou[rows, cols][iou[rows, cols] > 0]
    else:
        matched = np.zeros(0)
    slots = len(gt_values) + len(pred_values) - len(matched)
    miou = float(matched.sum() / slots) if slots else 1.0
    fg_pred, fg_gt = pred > 0, gt > 0
    fg_union = np.count_nonzero(fg_pred | fg_gt)
    fg_iou = np.count_nonzero(fg_pred & fg_gt) / fg_union if fg_union else 1.0
    return {"miou": miou, "fg_iou": float(fg_iou)}


# ----------------------------------------------------------------------------- skeleton

def _check_keypoints(keypoints: Any, what: str) -> np.ndarray:
    keypoints = np.asarray(keypoints, np.float64)
    if keypoints.ndim != 4 or keypoints.shape[2:] != (17, 3):
        raise ValueError(f"skeleton_metrics: {what} must be COCO keypoints (F, P, 17, 3) (x, y, v), "
                         f"got shape {keypoints.shape}")
    return keypoints


def person_box_size(gt: np.ndarray) -> np.ndarray:
    """(F, P) size of each GT person's box: max(width, height) of the extent of its labelled
    (v > 0) keypoints, at least 1 px; 0 where the person has no labelled keypoint."""
    labelled = gt[..., 2] > 0
    xy = gt[..., :2]
    low = np.where(labelled[..., None], xy, np.inf).min(axis=2)
    high = np.where(labelled[..., None], xy, -np.inf).max(axis=2)
    size = np.where(labelled.any(axis=2), np.maximum((high - low).max(axis=-1), 1.0), 0.0)
    return size


def _match_persons(cost: np.ndarray, present: np.ndarray, n_pred: int) -> np.ndarray:
    """Per frame, the predicted person (or -1) paired with each GT person by the Hungarian method."""
    n_frames, n_gt = present.shape
    assignment = np.full((n_frames, n_gt), -1, np.int64)
    if n_pred == 0:
        return assignment
    for f in range(n_frames):
        people = np.nonzero(present[f])[0]
        if len(people):
            rows, cols = linear_sum_assignment(cost[f, people])
            assignment[f, people[rows]] = cols
    return assignment


def skeleton_metrics(pred_keypoints: np.ndarray, gt_keypoints: np.ndarray,
                     thresholds: Iterable[float] = PCK_THRESHOLDS) -> dict[str, float]:
    """PCK@a: the fraction of GT-labelled joints (v > 0) whose predicted joint lies within a times
    the GT person's box size (`person_box_size`), pooled over the clip.

    Persons are paired per frame by the Hungarian method on the mean over the GT person's labelled
    joints of min(distance / box size, 1), a missing predicted joint (v = 0) counting 1; predicted
    and GT persons may differ in number. Joints of an unpaired GT person, and joints the paired
    prediction lacks, are misses; extra predicted persons are not penalised (PCK is a recall).
    No labelled GT joint in the clip -> NaN.
    """
    pred = _check_keypoints(pred_keypoints, "prediction")
    gt = _check_keypoints(gt_keypoints, "reference")
    if pred.shape[0] != gt.shape[0]:
        raise ValueError(f"skeleton_metrics: prediction has {pred.shape[0]} frames, reference {gt.shape[0]}")
    labelled = gt[..., 2] > 0  # (F, G, 17)
    size = person_box_size(gt)  # (F, G)
    distance = np.linalg.norm(gt[:, :, None, :, :2] - pred[:, None, :, :, :2], axis=-1)  # (F, G, P, 17)
    normalised = np.where(pred[:, None, :, :, 2] > 0, distance / np.maximum(size, 1.0)[..., None, None], np.inf)
    per_joint = np.where(labelled[:, :, None], np.minimum(normalised, 1.0), 0.0)
    cost = per_joint.sum(-1) / np.maximum(labelled.sum(-1), 1)[..., None]
    assignment = _match_persons(cost, labelled.any(-1), pred.shape[1])
    # Normalised distance of each GT joint to its paired prediction (F, G, 17); inf when unpaired.
    padded = np.concatenate([normalised, np.full(normalised.shape[:2] + (1, 17), np.inf)], axis=2)
    unpaired = normalised.shape[2]  # index of the all-inf column
    column = np.where(assignment >= 0, assignment, unpaired)[..., None, None]
    chosen = np.take_along_axis(padded, column, axis=2)[:, :, 0]
    total = labelled.sum()
    return {f"pck@{a:g}": float((labelled & (chosen <= a)).sum() / total) if total else float("nan")
            for a in thresholds}


# ----------------------------------------------------------------------------- densepose

def densepose_metrics(pred_iuv: np.ndarray, gt_iuv: np.ndarray) -> dict[str, float]:
    """part_miou: mean over the 24 DensePose parts present in the reference or the prediction of
    the part's IoU over the clip (background excluded; neither has any part -> 1). uv_error: mean
    Euclidean (U, V) distance on pixels whose predicted part equals the GT part (> 0); none -> NaN.
    Predicted part indices are rounded and clipped to 0..24."""
    pred, gt = _same_shape(pred_iuv, gt_iuv, "densepose_metrics", "IUV (F, H, W, 3)")
    pred_part = np.rint(np.nan_to_num(pred[..., 0].astype(np.float64))).clip(0, DENSEPOSE_PARTS).astype(np.int64)
    gt_part = np.rint(gt[..., 0].astype(np.float64)).clip(0, DENSEPOSE_PARTS).astype(np.int64)
    bins = DENSEPOSE_PARTS + 1
    joint = np.bincount((gt_part * bins + pred_part).ravel(), minlength=bins * bins).reshape(bins, bins)
    inter = np.diag(joint)[1:].astype(np.float64)
    union = joint.sum(axis=1)[1:] + joint.sum(axis=0)[1:] - inter
    present = union > 0
    part_miou = float(np.mean(inter[present] / union[present])) if present.any() else 1.0
    right = (pred_part == gt_part) & (gt_part > 0)
    uv_error = np.linalg.norm(pred[..., 1:][right].astype(np.float64) - gt[..., 1:][right], axis=-1)
    return {"part_miou": part_miou, "uv_error": _mean_or_nan(uv_error)}


# ----------------------------------------------------------------------------- dispatch

_METRICS = {
    "depth": depth_metrics,
    "flow": flow_metrics,
    "segmentation": segmentation_metrics,
    "skeleton": skeleton_metrics,
    "densepose": densepose_metrics,
}


def _metric_modality(name: str) -> str:
    modality = get_modality(name).name
    if modality not in _METRICS:
        raise ValueError(f"no accuracy metric for stream {name!r}; metrics exist for {', '.join(MODALITY_NAMES)} "
                         "(score RGB with warping_error / frame_ssim / motion_smoothness)")
    return modality


def modality_metrics(name: str, pred_raw: np.ndarray, gt_raw: np.ndarray, **options: Any) -> dict[str, float]:
    """Metrics of one clip's prediction against its reference, by modality name or alias (raw
    layouts as in `WorldClip`); options go to the metric (e.g. valid= for flow and depth)."""
    return _METRICS[_metric_modality(name)](pred_raw, gt_raw, **options)


def control_agreement(name: str, control_raw: np.ndarray, reestimated_raw: np.ndarray,
                      **options: Any) -> dict[str, float]:
    """Controllability: how well a generated video follows its control signal, measured as the
    metrics of the modality re-estimated from the video (by a teacher, e.g. `dis_flow`) with the
    control taken as the reference."""
    return modality_metrics(name, reestimated_raw, control_raw, **options)


def trivial_baseline(name: str, gt_raw: np.ndarray, rgb: np.ndarray | None = None) -> np.ndarray:
    """The prediction of a model that learned nothing about the clip but its statistics; a model
    must beat it. `rgb` is accepted for baselines that look at the video and unused by these.

    depth: a constant plane at the clip's mean finite depth (sky excluded); flow: zero; segmentation:
    all background; skeleton: each GT person frozen at its mean pose (per joint, the mean position
    over the frames where it is labelled, v = 2; never-labelled joints stay (0, 0, 0)) in every frame
    — a static-person baseline that knows where the person is but not how it moves; densepose: no
    person (all zeros).
    """
    modality = _metric_modality(name)
    gt = np.asarray(gt_raw)
    if modality == "depth":
        finite = gt[np.isfinite(gt) & (gt > 0)]
        return np.full(gt.shape, finite.mean() if finite.size else 1.0, np.float32)
    if modality == "skeleton":
        gt = _check_keypoints(gt, "reference")
        labelled = gt[..., 2] > 0
        count = labelled.sum(axis=0)  # (P, 17)
        mean_xy = (gt[..., :2] * labelled[..., None]).sum(axis=0) / np.maximum(count, 1)[..., None]
        pose = np.concatenate([mean_xy, 2.0 * (count > 0)[..., None]], axis=-1) * (count > 0)[..., None]
        return np.broadcast_to(pose, gt.shape).astype(np.float32)
    return np.zeros_like(gt)


def mean_metrics(results: Iterable[dict[str, float]]) -> dict[str, float]:
    """Average per-clip metric dicts key by key, skipping NaN (a clip with nothing to measure)."""
    results = list(results)
    keys = list(dict.fromkeys(k for r in results for k in r))
    out = {}
    for key in keys:
        values = np.array([r[key] for r in results if key in r], np.float64)
        values = values[~np.isnan(values)]
        out[key] = float(values.mean()) if values.size else float("nan")
    return out
