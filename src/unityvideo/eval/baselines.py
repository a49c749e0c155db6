"""The predictions an estimate is compared with, each named and marked oracle or not.

    stats = [prior_stats(clip.raw) for clip in train_clips]
    prior = Prior.fit(stats)                          # what the training split looks like on average
    for baseline in estimate_baselines("depth", prior, gt):
        baseline.name, baseline.oracle, baseline.prediction

The bar every estimate has to beat is a **prior**: the best guess of a model that never looks at
the clip, fitted on the training split (or, where an evaluation set has none, on the other
evaluated clips, leave-one-out). It is the field's "mean" baseline, and it is not an oracle:

    depth         train mean disparity   the mean disparity map of the training frames, aligned per
                                         clip like the model's estimate (the metric is relative)
    flow          zero flow              nothing moves (the mean flow of a world whose camera pans
                                         both ways)
    segmentation  train foreground prior one instance where the training frames are foreground
                                         more often than not
    skeleton      train mean pose        one person: each joint at its mean position over the
                                         training people
    densepose     train part prior       the most frequent label (a part, or background) of each
                                         pixel over the training frames

Shown beside it, never as the bar: the trivial constants (an empty mask or IUV, a constant depth)
and, for the skeleton, each GT person frozen at its own mean pose, which knows where every person
is (an oracle).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from unityvideo.eval.metrics import DENSEPOSE_PARTS, check_keypoints, metric_modality

__all__ = ["Baseline", "Prior", "prior_stats", "estimate_baselines", "trivial_baseline", "oracle_mean_pose"]

PRIOR_NAMES = {"depth": "train mean disparity", "flow": "zero flow", "segmentation": "train foreground prior",
               "skeleton": "train mean pose", "densepose": "train part prior"}


@dataclass
class Baseline:
    name: str
    oracle: bool
    prediction: np.ndarray  # raw layout of the modality, the clip's shape
    bar: bool = False       # the one a model has to beat


# ----- the prior ------------------------------------------------------------------------------------


def prior_stats(raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One clip's sums for `Prior.fit` (sums add, so a leave-one-out prior is total minus clip)."""
    stats: dict[str, np.ndarray] = {}
    if "depth" in raw:
        depth = np.asarray(raw["depth"], np.float64)
        finite = np.isfinite(depth) & (depth > 0)
        stats["disparity_sum"] = np.where(finite, 1.0 / np.where(finite, depth, 1.0), 0.0).sum(axis=0)
        stats["frames"] = np.array(float(depth.shape[0]))
    if "segmentation" in raw:
        seg = np.asarray(raw["segmentation"])
        stats["foreground_sum"] = (seg > 0).sum(axis=0).astype(np.float64)
        stats["seg_frames"] = np.array(float(seg.shape[0]))
    if "skeleton" in raw:
        keypoints = check_keypoints(raw["skeleton"], "training skeleton")
        labelled = keypoints[..., 2] > 0
        stats["joint_sum"] = (keypoints[..., :2] * labelled[..., None]).sum(axis=(0, 1))
        stats["joint_count"] = labelled.sum(axis=(0, 1)).astype(np.float64)
    if "densepose" in raw:
        part = np.rint(np.asarray(raw["densepose"])[..., 0]).clip(0, DENSEPOSE_PARTS).astype(np.int64)
        onehot = part[..., None] == np.arange(DENSEPOSE_PARTS + 1)
        stats["part_counts"] = onehot.sum(axis=0).astype(np.float64)  # (H, W, 25)
    return stats


def _add(a: dict[str, np.ndarray], b: Mapping[str, np.ndarray], sign: float = 1.0) -> dict[str, np.ndarray]:
    out = dict(a)
    for key, value in b.items():
        out[key] = out[key] + sign * value if key in out else sign * np.asarray(value, np.float64)
    return out


@dataclass
class Prior:
    """What the reference clips look like on average (see the module doc); `source` says which clips."""

    stats: dict[str, np.ndarray]
    source: str

    @classmethod
    def fit(cls, clip_stats: Sequence[Mapping[str, np.ndarray]], source: str = "training split") -> "Prior":
        total: dict[str, np.ndarray] = {}
        for stats in clip_stats:
            total = _add(total, stats)
        return cls(total, f"{source} ({len(clip_stats)} clips)")

    def without(self, clip_stats: Mapping[str, np.ndarray]) -> "Prior":
        """The prior of the same clips but one (leave-one-out)."""
        return Prior(_add(self.stats, clip_stats, -1.0), self.source + ", leave-one-out")

    def _need(self, key: str, modality: str) -> np.ndarray:
        if key not in self.stats:
            raise ValueError(f"the prior has no {modality} ground truth ({self.source}); fit it on clips "
                             f"whose raw.npz holds {modality}")
        return self.stats[key]

    def predict(self, modality: str, shape: tuple[int, ...]) -> np.ndarray:
        """The prior's prediction for a clip of `shape` (the modality's raw layout)."""
        frames = shape[0]
        if modality == "flow":
            return np.zeros(shape, np.float32)
        if modality == "depth":
            disparity = self._need("disparity_sum", modality) / max(float(self.stats["frames"]), 1.0)
            depth = np.where(disparity > 0, 1.0 / np.maximum(disparity, 1e-12), np.inf)
            return np.broadcast_to(depth, shape).astype(np.float32)
        if modality == "segmentation":
            share = self._need("foreground_sum", modality) / max(float(self.stats["seg_frames"]), 1.0)
            return np.broadcast_to((share > 0.5).astype(np.int32), shape).copy()
        if modality == "skeleton":
            count = self._need("joint_count", modality)
            mean = self.stats["joint_sum"] / np.maximum(count, 1.0)[:, None]
            person = np.concatenate([mean, np.where(count > 0, 2.0, 0.0)[:, None]], axis=-1)
            return np.broadcast_to(person, (frames, 1, 17, 3)).astype(np.float32)
        if modality == "densepose":
            part = self._need("part_counts", modality).argmax(axis=-1)
            iuv = np.stack([part, *(np.where(part > 0, 0.5, 0.0),) * 2], axis=-1)
            return np.broadcast_to(iuv, shape).astype(np.float32)
        raise ValueError(f"no prior for {modality!r}")


# ----- the trivial constants and the oracle ----------------------------------------------------------


def oracle_mean_pose(gt: np.ndarray) -> np.ndarray:
    """Each GT person frozen at its own mean pose (per joint, the mean position over the frames where
    it is labelled, v = 2; never-labelled joints stay (0, 0, 0)): an oracle, it knows where every
    person is."""
    gt = check_keypoints(gt, "reference")
    labelled = gt[..., 2] > 0
    count = labelled.sum(axis=0)  # (P, 17)
    mean_xy = (gt[..., :2] * labelled[..., None]).sum(axis=0) / np.maximum(count, 1)[..., None]
    pose = np.concatenate([mean_xy, 2.0 * (count > 0)[..., None]], axis=-1) * (count > 0)[..., None]
    return np.broadcast_to(pose, gt.shape).astype(np.float32)


def trivial_baseline(name: str, gt_raw: np.ndarray, rgb: np.ndarray | None = None) -> np.ndarray:
    """A constant that knows nothing of the clip: constant depth (any constant: the metric fits
    scale and shift), zero flow, an empty mask, no person, an empty IUV. `rgb` is unused."""
    modality = metric_modality(name)
    gt = np.asarray(gt_raw)
    if modality == "depth":
        return np.ones(gt.shape, np.float32)
    if modality == "skeleton":
        return np.zeros((gt.shape[0], 0, 17, 3), np.float32)
    return np.zeros_like(gt)


TRIVIAL_NAMES = {"depth": "constant depth", "flow": "zero flow", "segmentation": "empty mask",
                 "skeleton": "no person", "densepose": "empty IUV"}


def estimate_baselines(modality: str, prior: Prior, gt: np.ndarray) -> list[Baseline]:
    """The prior (the bar), the trivial constant (unless it is the prior, as zero flow is) and, for
    the skeleton, the oracle mean pose."""
    modality = metric_modality(modality)
    gt = np.asarray(gt)
    baselines = [Baseline(PRIOR_NAMES[modality], False, prior.predict(modality, gt.shape), bar=True)]
    if modality != "flow":
        baselines.append(Baseline(TRIVIAL_NAMES[modality], False, trivial_baseline(modality, gt)))
    if modality == "skeleton":
        baselines.append(Baseline("GT people at their mean pose", True, oracle_mean_pose(gt)))
    return baselines
