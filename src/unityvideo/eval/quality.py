"""Video-quality proxies that need no downloaded weights, and a built-in flow teacher.

    warping_error(frames, flow, valid=None)  temporal consistency along the motion (lower is better)
    frame_ssim(frames)                       mean SSIM of consecutive frames on luminance (higher = steadier)
    motion_smoothness(frames)                1 - frame-interpolation residual (higher = smoother)
    dis_flow(frames)                         forward optical flow by OpenCV's DIS (the `annotate` extra)

Frames are uint8 (F, H, W, C) / (F, H, W), or float in [0, 1]; all scores are on the [0, 1]
intensity scale. A score that needs more frames than the clip has is NaN.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["warping_error", "frame_ssim", "ssim", "motion_smoothness", "dis_flow", "luminance", "warp_backward"]

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # radius int(3.5 * 1.5 + 0.5) = 5: the usual 11 x 11 Gaussian window
SSIM_K1, SSIM_K2 = 0.01, 0.03
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601


def _as_unit_frames(frames: Any, what: str = "frames") -> np.ndarray:
    """(F, H, W, C) float64 in [0, 1] from uint8 or [0, 1] float frames ((F, H, W) gets C = 1)."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.ndim != 4:
        raise ValueError(f"{what} must be a video (F, H, W, C) or (F, H, W), got shape {frames.shape}")
    if frames.dtype == np.uint8:
        return frames.astype(np.float64) / 255.0
    if not np.issubdtype(frames.dtype, np.floating):
        raise TypeError(f"{what} must be uint8 or float in [0, 1], got dtype {frames.dtype}")
    return frames.astype(np.float64)


def luminance(frames: Any) -> np.ndarray:
    """Luma Y (F, H, W) in [0, 1] (BT.601 weights for RGB; a single channel is taken as is)."""
    frames = _as_unit_frames(frames)
    if frames.shape[-1] == 1:
        return frames[..., 0]
    if frames.shape[-1] != 3:
        raise ValueError(f"frames must have 1 or 3 channels, got {frames.shape[-1]}")
    return frames @ _LUMA


# ----------------------------------------------------------------------------- warping

def warp_backward(images: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample images (N, H, W, C) at x + flow(x) with bilinear interpolation (pixel centres at
    integer (x, y) = (col, row)); returns the warped images and where the sample fell inside."""
    n, height, width, _ = images.shape
    rows, cols = np.mgrid[0:height, 0:width]
    x = cols + flow[..., 0]
    y = rows + flow[..., 1]
    eps = 1e-6
    inside = (x >= -eps) & (x <= width - 1 + eps) & (y >= -eps) & (y <= height - 1 + eps)
    x, y = np.clip(x, 0, width - 1), np.clip(y, 0, height - 1)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    wx, wy = (x - x0)[..., None], (y - y0)[..., None]
    index = np.arange(n)[:, None, None]
    top = (1 - wx) * images[index, y0, x0] + wx * images[index, y0, x1]
    bottom = (1 - wx) * images[index, y1, x0] + wx * images[index, y1, x1]
    return (1 - wy) * top + wy * bottom, inside


def warping_error(frames: Any, flow: Any, valid: Any | None = None) -> float:
    """Temporal warping error (Lai et al., ECCV 2018): frame t+1 is warped back to frame t along the
    forward flow t -> t+1, and the squared difference (mean over channels, [0, 1] scale) is averaged
    over pixels whose sample lands inside frame t+1 and, if given, where `valid` (the non-occlusion
    mask, (F, H, W)) is true. `flow` is ground truth or estimated (e.g. `dis_flow(frames)`), with F or
    F - 1 frames; a flow for the last frame is ignored. Fewer than 2 frames -> NaN."""
    video = _as_unit_frames(frames)
    n_pairs = video.shape[0] - 1
    flow = np.asarray(flow, np.float64)
    if flow.ndim != 4 or flow.shape[-1] != 2 or flow.shape[1:3] != video.shape[1:3] or flow.shape[0] < n_pairs:
        raise ValueError(f"warping_error: flow must be (F, H, W, 2) or (F-1, H, W, 2) matching frames "
                         f"{video.shape[:3]}, got {flow.shape}")
    if n_pairs < 1:
        return float("nan")
    warped, mask = warp_backward(video[1:], flow[:n_pairs])
    if valid is not None:
        mask &= np.asarray(valid, bool)[:n_pairs]
    error = ((video[:-1] - warped) ** 2).mean(axis=-1)[mask]
    return float(error.mean()) if error.size else float("nan")


# ----------------------------------------------------------------------------- SSIM

def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM (Wang et al. 2004) of images (..., H, W) in [0, 1]: Gaussian window sigma 1.5
    (11 x 11), K1 = 0.01, K2 = 0.03, reflected borders, population (co)variances."""
    sigma = (0,) * (a.ndim - 2) + (SSIM_SIGMA, SSIM_SIGMA)

    def blur(x: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(x, sigma, mode="reflect", truncate=SSIM_TRUNCATE)

    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))


def _crop_border(values: np.ndarray) -> np.ndarray:
    """Drop the window radius at the borders (where reflection fakes structure) if the image allows."""
    radius = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    if min(values.shape[-2:]) > 2 * radius:
        return values[..., radius:-radius, radius:-radius]
    return values


def ssim(a: Any, b: Any) -> float:
    """Mean SSIM of two images or stacks (..., H, W) in [0, 1] (uint8 is scaled by 1/255)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"ssim: images must have the same shape, got {a.shape} and {b.shape}")
    scale = 1 / 255.0 if a.dtype == np.uint8 else 1.0
    return float(_crop_border(ssim_map(a.astype(np.float64) * scale, b.astype(np.float64) * scale)).mean())


def frame_ssim(frames: Any) -> float:
    """Mean SSIM between consecutive frames on luminance: 1 for a still video, ~0 for independent
    noise. Static content scores high; use with a motion measure. Fewer than 2 frames -> NaN."""
    y = luminance(frames)
    if y.shape[0] < 2:
        return float("nan")
    return float(_crop_border(ssim_map(y[:-1], y[1:])).mean())


# ----------------------------------------------------------------------------- smoothness

def motion_smoothness(frames: Any) -> float:
    """1 - mean |I_t - (I_{t-1} + I_{t+1}) / 2| over t = 1..F-2, pixels and channels ([0, 1] scale).

    The residual of predicting each frame by linearly interpolating its neighbours — VBench's
    motion-smoothness score with a weight-free blend in place of its learned interpolator. It is
    half the mean absolute second-order temporal difference, so 1 means intensities change at a
    constant rate (still video, steady fades) and jitter and flicker lower it. Large but smooth
    motion also lowers it (blending does not move pixels): compare videos of similar dynamics.
    Fewer than 3 frames -> NaN.
    """
    video = _as_unit_frames(frames)
    if video.shape[0] < 3:
        return float("nan")
    residual = np.abs(video[1:-1] - 0.5 * (video[:-2] + video[2:]))
    return float(1.0 - residual.mean())


# ----------------------------------------------------------------------------- DIS flow teacher

DIS_PRESETS = ("ultrafast", "fast", "medium")


def dis_flow(frames: Any, preset: str = "medium") -> np.ndarray:
    """Forward optical flow (F, H, W, 2) float32, (dx, dy) in pixels from frame t to t+1, by OpenCV's
    DIS (Kroeger et al. 2016) on luminance — an independent, weight-free flow teacher for scoring
    controllability. The last frame has no successor: it repeats the previous frame's flow (a
    constant-velocity guess; zeros for a 1-frame clip), matching the layout of `WorldClip.flow`.
    Needs OpenCV: `pip install 'unityvideo[annotate]'`."""
    try:
        import cv2
    except ImportError as error:
        raise ImportError("dis_flow needs OpenCV: pip install 'unityvideo[annotate]'") from error
    if preset not in DIS_PRESETS:
        raise ValueError(f"dis_flow: preset must be one of {DIS_PRESETS}, got {preset!r}")
    grey = np.rint(luminance(frames) * 255.0).clip(0, 255).astype(np.uint8)
    n_frames, height, width = grey.shape
    flow = np.zeros((n_frames, height, width, 2), np.float32)
    dis = cv2.DISOpticalFlow_create(getattr(cv2, f"DISOPTICAL_FLOW_PRESET_{preset.upper()}"))
    for t in range(n_frames - 1):
        flow[t] = dis.calc(grey[t], grey[t + 1], None)
    if n_frames > 1:
        flow[-1] = flow[-2]
    return flow
