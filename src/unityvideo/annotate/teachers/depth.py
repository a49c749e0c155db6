"""Depth teachers: transformers depth-estimation models (Depth Anything V1/V2, DPT, ZoeDepth, ...)
from a local folder, with one scale for the whole clip.

Per-frame monocular depth flickers: relative models (Depth Anything, DPT) predict disparity only
up to a scale and shift *per frame*, metric ones jitter in scale. `align_clip` fixes that by fitting
every frame to the frame before (already aligned), robustly (the fit is redone without the worst
residuals, i.e. moving objects): scale + shift in disparity for relative models, scale alone in
depth for metric ones (then the clip keeps its mean metric scale).

Raw output is the CONTRACT's depth (F, H, W): metric models give metres; relative models give
relative depth = 1 / disparity after the clip's disparity is normalised to [0, 1] (so the farthest
0.5 % of the clip's pixels are at infinity, like sky). Encoded, that is exactly the normalised
disparity picture the paper's Depth Anything videos show.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Annotation, Teacher, batches, load_transformers, model_folder, resolve_device

__all__ = ["TransformersDepth", "align_clip", "fit_affine", "disparity_to_depth"]

METRIC_MODEL_TYPES = ("zoedepth", "glpn", "depth_pro")


def fit_affine(x: np.ndarray, y: np.ndarray, with_shift: bool = True, trim: float = 3.0,
               rounds: int = 3) -> tuple[float, float]:
    """Robust (scale, shift) with y ~ scale * x + shift: start from matching medians and
    inter-quartile ranges (immune to outliers), then refit by least squares `rounds` times on the
    points whose residual is within `trim` x the median absolute residual."""
    x, y = x.astype(np.float64).ravel(), y.astype(np.float64).ravel()
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    if len(x) < 2:
        return 1.0, 0.0
    qx, qy = np.percentile(x, [25, 50, 75]), np.percentile(y, [25, 50, 75])
    if with_shift:
        scale = (qy[2] - qy[0]) / max(qx[2] - qx[0], 1e-12)
        shift = qy[1] - scale * qx[1]
    else:
        scale, shift = qy[1] / max(qx[1], 1e-12), 0.0
    for _ in range(rounds):
        residual = np.abs(scale * x + shift - y)
        keep = residual <= trim * max(float(np.median(residual)), 1e-9)
        if keep.sum() < 2:
            break
        a = np.stack([x[keep], np.ones(keep.sum())], 1) if with_shift else x[keep, None]
        coef = np.linalg.lstsq(a, y[keep], rcond=None)[0]
        scale, shift = float(coef[0]), (float(coef[1]) if with_shift else 0.0)
    return float(scale), float(shift)


def align_clip(values: np.ndarray, with_shift: bool, stride: int = 4) -> np.ndarray:
    """Chain-align every frame to the aligned frame before it (pixels sampled every `stride`)."""
    out = values.astype(np.float32).copy()
    for t in range(1, len(out)):
        scale, shift = fit_affine(out[t, ::stride, ::stride], out[t - 1, ::stride, ::stride], with_shift)
        if scale <= 0:  # a degenerate fit (e.g. a blank frame) must not flip the depth order
            scale, shift = 1.0, 0.0
        out[t] = scale * out[t] + shift
    return out


def disparity_to_depth(disparity: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Relative disparity -> relative depth: normalise the clip's [low, high] percentiles to [0, 1],
    depth = 1 / disparity, disparity <= 0 -> +inf."""
    lo, hi = np.percentile(disparity, [low, high])
    norm = ((disparity - lo) / max(hi - lo, 1e-12)).clip(0.0, 1.0)
    with np.errstate(divide="ignore"):
        return np.where(norm > 0, 1.0 / np.maximum(norm, 1e-12), np.inf).astype(np.float32)


class TransformersDepth(Teacher):
    """A transformers depth-estimation model from a local folder (AutoModelForDepthEstimation)."""

    modality = "depth"

    def __init__(self, path: str | Path, device: str | None = None, batch_size: int = 4):
        folder = model_folder(path, "--depth-model")
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self._model, self._processor = load_transformers(folder, "--depth-model", "AutoModelForDepthEstimation", self.device)
        config = self._model.config
        self.metric = (config.model_type in METRIC_MODEL_TYPES
                       or getattr(config, "depth_estimation_type", "relative") == "metric")
        self.name = f"transformers-{config.model_type}:{folder.name}"

    def predict(self, frames: np.ndarray) -> np.ndarray:
        """The model's per-frame output (disparity or metric depth) at the frames' size, unaligned."""
        import torch
        import torch.nn.functional as F

        out = []
        height, width = frames.shape[1:3]
        with torch.inference_mode():
            for part in batches(len(frames), self.batch_size):
                inputs = self._processor(images=list(frames[part]), return_tensors="pt").to(self.device)
                predicted = self._model(**inputs).predicted_depth  # (B, h, w)
                predicted = F.interpolate(predicted[:, None].float(), size=(height, width), mode="bilinear",
                                          align_corners=False)[:, 0]
                out.append(predicted.cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def annotate(self, frames: np.ndarray) -> Annotation:
        predicted = self.predict(frames)
        if self.metric:
            depth = np.maximum(predicted, 1e-6)
            aligned = np.exp(align_clip(np.log(depth), with_shift=True))  # scale in depth = shift in log
            aligned *= np.exp(np.mean(np.log(depth)) - np.mean(np.log(aligned)))  # keep the clip's metric scale
            return Annotation(aligned.astype(np.float32), meta={"depth_kind": "metric"})
        aligned = align_clip(predicted, with_shift=True)
        return Annotation(disparity_to_depth(aligned), meta={"depth_kind": "relative"})
