"""Evaluation room: per-modality accuracy metrics, controllability, weight-free video-quality proxies.

    from unityvideo.eval import modality_metrics, trivial_baseline, PRIMARY_METRIC
    modality_metrics("depth", predicted_depth, clip.depth)  # {"abs_rel": ..., "delta1": ...}
"""
from unityvideo.eval.metrics import (
    PRIMARY_METRIC, control_agreement, densepose_metrics, depth_metrics, flow_metrics, mean_metrics,
    modality_metrics, segmentation_metrics, skeleton_metrics, trivial_baseline,
)
from unityvideo.eval.quality import dis_flow, frame_ssim, motion_smoothness, ssim, warping_error

__all__ = [
    "PRIMARY_METRIC", "modality_metrics", "control_agreement", "trivial_baseline", "mean_metrics",
    "depth_metrics", "flow_metrics", "segmentation_metrics", "skeleton_metrics", "densepose_metrics",
    "warping_error", "frame_ssim", "ssim", "motion_smoothness", "dis_flow",
]
