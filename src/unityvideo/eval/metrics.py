"""Per-modality accuracy metrics on raw arrays (the `WorldClip` layouts), pure numpy/scipy.

Every metric of a clip is a `Pooled` sum: a numerator and a denominator per class. Adding the
`Pooled` of several clips pools them, which is how a split is scored (`pool`); `.value` is the
number (a per-class ratio, averaged over the classes that occur). The conventions are the field's:

    depth         abs_rel, delta1        relative depth: one scale + shift per clip, fitted in
                                         disparity (MiDaS / Marigold); the mean over clips
    flow          epe, epe_moving,       end-point error over all valid pixels of the split (and over
                  fl_all                 pixels whose true flow is >= MOVING_FLOW px); KITTI outliers
    segmentation  miou, fg_iou           instances matched by the Hungarian method on clip IoU;
                                         matched IoU / (matches + misses + false instances), pooled
    skeleton      pck@0.05/0.1/0.2,      of the GT person's keypoint box, persons matched per frame;
                  pck17@0.1              nose + 12 body joints (pck17: all 17), pooled over the split
    densepose     part_miou, body_iou,   24 body parts (background not a class), intersections and
                  uv_error               unions pooled over the split (semantic-segmentation mIoU)

Pooling matters: a per-clip mean gives an empty prediction full marks on every clip without a
person; pooled, such clips add nothing to either sum. A clip with nothing to measure (all-sky depth,
no instance or person in prediction and reference) has NaN values and pools as nothing.
`modality_metrics(name, pred, gt)` gives one clip's values, `modality_scores` its `Pooled` sums,
`control_agreement` scores a control signal against the same modality re-estimated from a
generated video; `eval.baselines` has the predictions a model has to beat.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from scipy.optimize import linear_sum_assignment

from unityvideo.eval.quality import dis_flow, frame_ssim, motion_smoothness, ssim, warping_error
from unityvideo.modalities import MODALITY_NAMES, get_modality

__all__ = [
    "Pooled", "pool", "depth_metrics", "flow_metrics", "segmentation_metrics", "skeleton_metrics",
    "densepose_metrics", "modality_metrics", "modality_scores", "control_agreement",
    "mean_metrics", "metric_modality", "PRIMARY_METRIC", "HIGHER_IS_BETTER", "DENSEPOSE_PARTS", "PCK_THRESHOLDS", "PCK_JOINTS", "MOVING_FLOW",
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
HIGHER_IS_BETTER: dict[str, bool] = {
    "abs_rel": False, "delta1": True, "epe": False, "epe_moving": False, "fl_all": False, "miou": True,
    "fg_iou": True, "pck@0.05": True, "pck@0.1": True, "pck@0.2": True, "part_miou": True, "body_iou": True,
    "uv_error": False, "pck17@0.1": True, "frame_ssim": True, "motion_smoothness": True, "warping_error": False,
}
DENSEPOSE_PARTS = 24
PCK_THRESHOLDS = (0.05, 0.1, 0.2)
PCK_JOINTS = (0, *range(5, 17))  # nose, shoulders, elbows, wrists, hips, knees, ankles (COCO order)
DELTA1_THRESHOLD = 1.25
MOVING_FLOW = 0.5  # px per frame: pixels whose true flow is at least this long count as moving


@dataclass(frozen=True)
class Pooled:
    """A metric as sums that pool over clips: `num[k] / den[k]` per class k, averaged over the
    classes with `den > 0` (none: NaN). One class is a plain ratio (EPE = sum of errors / pixels);
    several are a class-averaged ratio (mIoU = intersections / unions per part). `a + b` pools."""

    num: np.ndarray
    den: np.ndarray

    @classmethod
    def ratio(cls, num: float, den: float) -> "Pooled":
        return cls(np.array([float(num)]), np.array([float(den)]))

    @classmethod
    def mean(cls, value: float) -> "Pooled":
        """A per-clip number pooled as the mean over clips (NaN: the clip adds nothing)."""
        finite = bool(np.isfinite(value))
        return cls.ratio(value if finite else 0.0, 1.0 if finite else 0.0)

    @property
    def value(self) -> float:
        present = self.den > 0
        return float(np.mean(self.num[present] / self.den[present])) if present.any() else float("nan")

    def __add__(self, other: "Pooled") -> "Pooled":
        return Pooled(self.num + other.num, self.den + other.den)


def pool(scores: Iterable[Mapping[str, Pooled]]) -> dict[str, float]:
    """The split's value of every metric: each metric's sums pooled over the clips."""
    totals: dict[str, Pooled] = {}
    for clip in scores:
        for key, score in clip.items():
            totals[key] = totals[key] + score if key in totals else score
    return {key: total.value for key, total in totals.items()}


def _values(scores: Callable[..., dict[str, Pooled]]) -> Callable[..., dict[str, float]]:
    """The one-clip numbers of a `Pooled` metric."""
    def metric(*args: Any, **kwargs: Any) -> dict[str, float]:
        return {key: score.value for key, score in scores(*args, **kwargs).items()}
    metric.__name__ = scores.__name__.removeprefix("_").removesuffix("_scores") + "_metrics"
    metric.__doc__ = scores.__doc__
    return metric


def _same_shape(pred: Any, gt: Any, metric: str, layout: str) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"{metric}: prediction {pred.shape} and reference {gt.shape} must both be {layout} "
                         "of the same clip; resize the prediction to the reference first")
    return pred, gt


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


def _depth_scores(pred_depth: np.ndarray, gt_depth: np.ndarray, valid: np.ndarray | None = None) -> dict[str, Pooled]:
    """AbsRel = mean |d - d*| / d* and delta1 = fraction with max(d/d*, d*/d) < 1.25, after per-clip
    scale+shift alignment in disparity (`align_depth`); each clip's numbers are averaged over
    clips. Pixels where the reference is sky (inf), NaN or <= 0, or outside the optional `valid`
    mask, are excluded; none left -> NaN."""
    pred, gt = _same_shape(pred_depth, gt_depth, "depth_metrics", "depth (F, H, W)")
    gt = gt.astype(np.float64)
    mask = np.isfinite(gt) & (gt > 0)
    if valid is not None:
        mask &= np.asarray(valid, bool)
    if not mask.any():
        return {"abs_rel": Pooled.mean(np.nan), "delta1": Pooled.mean(np.nan)}
    aligned = align_depth(pred, gt, mask)[mask]
    truth = gt[mask]
    ratio = np.maximum(aligned / truth, truth / aligned)
    return {"abs_rel": Pooled.mean(np.mean(np.abs(aligned - truth) / truth)),
            "delta1": Pooled.mean(np.mean(ratio < DELTA1_THRESHOLD))}


# ----------------------------------------------------------------------------- flow

def _flow_scores(pred_flow: np.ndarray, gt_flow: np.ndarray, valid: np.ndarray | None = None) -> dict[str, Pooled]:
    """EPE = mean endpoint error (pixels), over all pixels and over the moving ones (true flow >=
    MOVING_FLOW px), and Fl-all = fraction of outliers, KITTI 2015's rule: a pixel is an outlier
    when its error is > 3 px AND > 5 % of the true flow's magnitude. Over pixels where `valid`
    (F, H, W) is true (all if None) and the reference is finite, pooled over the split."""
    pred, gt = _same_shape(pred_flow, gt_flow, "flow_metrics", "flow (F, H, W, 2)")
    gt = gt.astype(np.float64)
    mask = np.isfinite(gt).all(axis=-1)
    if valid is not None:
        mask &= np.asarray(valid, bool).reshape(mask.shape)
    error = np.linalg.norm(pred.astype(np.float64)[mask] - gt[mask], axis=-1)
    error = np.nan_to_num(error, nan=np.inf)  # a NaN prediction is as wrong as can be
    magnitude = np.linalg.norm(gt[mask], axis=-1)
    outlier = (error > 3.0) & (error > 0.05 * magnitude)
    moving = magnitude >= MOVING_FLOW
    return {"epe": Pooled.ratio(error.sum(), error.size),
            "epe_moving": Pooled.ratio(error[moving].sum(), np.count_nonzero(moving)),
            "fl_all": Pooled.ratio(np.count_nonzero(outlier), outlier.size)}


flow_metrics = _values(_flow_scores)
depth_metrics = _values(_depth_scores)


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


def _segmentation_scores(pred_ids: np.ndarray, gt_ids: np.ndarray) -> dict[str, Pooled]:
    """Instance mIoU and foreground IoU (id 0 = background), pooled over the split.

    An instance's mask is its pixels over the whole clip, so an id switch mid-clip costs IoU. GT and
    predicted instances are paired one-to-one by the Hungarian method maximising total IoU; pairs
    with IoU 0 are not matches. miou = sum of matched IoUs / (matches + unmatched GT + unmatched
    predicted instances): missed and hallucinated instances both count as IoU 0. fg_iou = IoU of
    the masks id > 0. A clip with no instance in either adds nothing (NaN on its own).
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
    fg_pred, fg_gt = pred > 0, gt > 0
    return {"miou": Pooled.ratio(matched.sum(), slots),
            "fg_iou": Pooled.ratio(np.count_nonzero(fg_pred & fg_gt), np.count_nonzero(fg_pred | fg_gt))}


segmentation_metrics = _values(_segmentation_scores)


# ----------------------------------------------------------------------------- skeleton

def check_keypoints(keypoints: Any, what: str) -> np.ndarray:
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


def _skeleton_scores(pred_keypoints: np.ndarray, gt_keypoints: np.ndarray,
                     thresholds: Iterable[float] = PCK_THRESHOLDS) -> dict[str, Pooled]:
    """PCK@a: the fraction of GT-labelled joints (v > 0) whose predicted joint lies within a times
    the GT person's box size (`person_box_size`), joints pooled over the split. Scored over
    `PCK_JOINTS` (COCO's nose and 12 body joints; pck17@0.1 over all 17): the eyes and ears lie within
    a pixel or two of the nose at the sizes a video model works at, where no picture keeps them apart
    (docs/metrics.md measures the encoding's ceiling), and body-joint sets without them are the MPII /
    LSP convention.

    Persons are paired per frame by the Hungarian method on the mean over the GT person's labelled
    joints of min(distance / box size, 1), a missing predicted joint (v = 0) counting 1; predicted
    and GT persons may differ in number. Joints of an unpaired GT person, and joints the paired
    prediction lacks, are misses; extra predicted persons are not penalised (PCK is a recall).
    No labelled GT joint in the clip -> NaN (it adds nothing).
    """
    pred = check_keypoints(pred_keypoints, "prediction")
    gt = check_keypoints(gt_keypoints, "reference")
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
    scored = labelled & np.isin(np.arange(17), PCK_JOINTS)
    scores = {f"pck@{a:g}": Pooled.ratio((scored & (chosen <= a)).sum(), scored.sum()) for a in thresholds}
    scores["pck17@0.1"] = Pooled.ratio((labelled & (chosen <= 0.1)).sum(), labelled.sum())
    return scores


skeleton_metrics = _values(_skeleton_scores)


# ----------------------------------------------------------------------------- densepose

def _densepose_scores(pred_iuv: np.ndarray, gt_iuv: np.ndarray) -> dict[str, Pooled]:
    """part_miou: the mean over the 24 DensePose parts of each part's IoU, intersections and unions
    pooled over the split (background is not a class; a part in neither is left out). body_iou: IoU
    of the body masks (part > 0). uv_error: mean Euclidean (U, V) distance on pixels whose predicted
    part equals the GT part (> 0). Predicted part indices are rounded and clipped to 0..24."""
    pred, gt = _same_shape(pred_iuv, gt_iuv, "densepose_metrics", "IUV (F, H, W, 3)")
    pred_part = np.rint(np.nan_to_num(pred[..., 0].astype(np.float64))).clip(0, DENSEPOSE_PARTS).astype(np.int64)
    gt_part = np.rint(gt[..., 0].astype(np.float64)).clip(0, DENSEPOSE_PARTS).astype(np.int64)
    bins = DENSEPOSE_PARTS + 1
    joint = np.bincount((gt_part * bins + pred_part).ravel(), minlength=bins * bins).reshape(bins, bins)
    inter = np.diag(joint)[1:].astype(np.float64)
    union = joint.sum(axis=1)[1:] + joint.sum(axis=0)[1:] - inter
    body_pred, body_gt = pred_part > 0, gt_part > 0
    right = (pred_part == gt_part) & body_gt
    uv_error = np.linalg.norm(pred[..., 1:][right].astype(np.float64) - gt[..., 1:][right], axis=-1)
    return {"part_miou": Pooled(inter, union.astype(np.float64)),
            "body_iou": Pooled.ratio(np.count_nonzero(body_pred & body_gt), np.count_nonzero(body_pred | body_gt)),
            "uv_error": Pooled.ratio(uv_error.sum(), uv_error.size)}


densepose_metrics = _values(_densepose_scores)


# ----------------------------------------------------------------------------- dispatch

_SCORES = {
    "depth": _depth_scores,
    "flow": _flow_scores,
    "segmentation": _segmentation_scores,
    "skeleton": _skeleton_scores,
    "densepose": _densepose_scores,
}


def metric_modality(name: str) -> str:
    """The canonical name of a modality that has accuracy metrics (errors name the others)."""
    modality = get_modality(name).name
    if modality not in _SCORES:
        raise ValueError(f"no accuracy metric for stream {name!r}; metrics exist for {', '.join(MODALITY_NAMES)} "
                         "(score RGB with warping_error / frame_ssim / motion_smoothness)")
    return modality


def modality_scores(name: str, pred_raw: np.ndarray, gt_raw: np.ndarray, **options: Any) -> dict[str, Pooled]:
    """One clip's `Pooled` metrics against its reference, by modality name or alias (raw layouts as
    in `WorldClip`); options go to the metric (e.g. valid= for flow and depth). `pool` the clips."""
    return _SCORES[metric_modality(name)](pred_raw, gt_raw, **options)


def modality_metrics(name: str, pred_raw: np.ndarray, gt_raw: np.ndarray, **options: Any) -> dict[str, float]:
    """One clip's metric values (`modality_scores` without pooling)."""
    return {key: score.value for key, score in modality_scores(name, pred_raw, gt_raw, **options).items()}


def control_agreement(name: str, control_raw: np.ndarray, reestimated_raw: np.ndarray,
                      **options: Any) -> dict[str, Pooled]:
    """Controllability: how well a generated video follows its control signal, measured as the
    `Pooled` metrics of the modality re-estimated from the video (by a teacher, e.g. `dis_flow`)
    with the control taken as the reference."""
    return modality_scores(name, reestimated_raw, control_raw, **options)


def mean_metrics(results: Iterable[dict[str, float]]) -> dict[str, float]:
    """Average per-clip numbers key by key, skipping NaN. For the modality metrics use `pool`
    instead: a per-clip mean is not the split's metric (see the module doc)."""
    results = list(results)
    keys = list(dict.fromkeys(k for r in results for k in r))
    out = {}
    for key in keys:
        values = np.array([r[key] for r in results if key in r], np.float64)
        values = values[~np.isnan(values)]
        out[key] = float(values.mean()) if values.size else float("nan")
    return out
