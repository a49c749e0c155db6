"""Evaluation room: per-modality accuracy metrics pooled over a split, the baselines a model has to
beat, verdicts with a bootstrap interval, controllability, weight-free video-quality proxies.

    from unityvideo.eval import modality_scores, pool, PRIMARY_METRIC
    pool(modality_scores("depth", pred, clip.depth) for pred, clip in pairs)  # {"abs_rel": ..., "delta1": ...}
"""
from unityvideo.eval.baselines import Prior, estimate_baselines, oracle_mean_pose, prior_stats, trivial_baseline
from unityvideo.eval.compare import Comparison, bootstrap_improvement, compare_rows, verdict
from unityvideo.eval.metrics import (
    PRIMARY_METRIC, Pooled, control_agreement, densepose_metrics, depth_metrics, flow_metrics, mean_metrics,
    modality_metrics, modality_scores, pool, segmentation_metrics, skeleton_metrics,
)
from unityvideo.eval.quality import dis_flow, frame_ssim, motion_smoothness, ssim, warping_error

__all__ = [
    "PRIMARY_METRIC", "Pooled", "pool", "modality_scores", "modality_metrics", "control_agreement", "mean_metrics",
    "depth_metrics", "flow_metrics", "segmentation_metrics", "skeleton_metrics", "densepose_metrics",
    "Prior", "prior_stats", "estimate_baselines", "trivial_baseline", "oracle_mean_pose",
    "Comparison", "compare_rows", "bootstrap_improvement", "verdict",
    "warping_error", "frame_ssim", "ssim", "motion_smoothness", "dis_flow",
]
