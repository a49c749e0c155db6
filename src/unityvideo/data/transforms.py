"""Aligned sampling: one set of frame indices and one crop/resize plan applied to every stream.

Geometry: scale so the clip covers the target size (aspect ratio kept), then crop the target
window (centred, or at a random place). Continuous streams (rgb, depth, flow) are resampled
bilinearly with antialiasing; categorical ones (segmentation, skeleton, densepose) by nearest
neighbour, so their palettes survive. Both use pixel-centre geometry, so streams stay aligned.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["CropPlan", "sample_frame_indices", "plan_crop", "apply_crop", "frames_to_tensor",
           "tensor_to_frames", "crop_raw"]


def sample_frame_indices(total: int, frames: int, stride: int = 1,
                         rng: np.random.Generator | None = None) -> np.ndarray:
    """`frames` indices `stride` apart inside a clip of `total` frames, starting at 0 or (with rng)
    at a random offset. Raises ValueError when the clip is too short."""
    if frames < 1 or stride < 1:
        raise ValueError(f"frames and frame_stride must be >= 1, got {frames} and {stride}")
    span = (frames - 1) * stride + 1
    if total < span:
        raise ValueError(f"clip has {total} frames, {span} needed for {frames} frames at stride {stride}")
    start = int(rng.integers(0, total - span + 1)) if rng is not None else 0
    return start + stride * np.arange(frames)


@dataclass(frozen=True)
class CropPlan:
    """Resize (h, w) -> `resized` by `scale`, then keep rows top:top+H and columns left:left+W."""

    source: tuple[int, int]
    resized: tuple[int, int]
    target: tuple[int, int]
    top: int
    left: int

    @property
    def scale(self) -> float:
        return max(self.resized[0] / self.source[0], self.resized[1] / self.source[1])

    @property
    def resizes(self) -> bool:
        return self.resized != self.source


def plan_crop(source: tuple[int, int], target: tuple[int, int] | None,
              rng: np.random.Generator | None = None) -> CropPlan:
    """The smallest uniform rescale that covers `target`, then a centred (or random) crop."""
    h, w = int(source[0]), int(source[1])
    if target is None:
        return CropPlan((h, w), (h, w), (h, w), 0, 0)
    th, tw = int(target[0]), int(target[1])
    scale = max(th / h, tw / w)
    resized = (h, w) if scale == 1.0 else (max(th, round(h * scale)), max(tw, round(w * scale)))
    spare_h, spare_w = resized[0] - th, resized[1] - tw
    if rng is not None:
        top, left = int(rng.integers(0, spare_h + 1)), int(rng.integers(0, spare_w + 1))
    else:
        top, left = spare_h // 2, spare_w // 2
    return CropPlan((h, w), resized, (th, tw), top, left)


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float32 (3, F, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0)


def tensor_to_frames(video: torch.Tensor) -> np.ndarray:
    """float (3, F, H, W) in [-1, 1] (a model's output too) -> uint8 (F, H, W, 3)."""
    video = video.detach().float().cpu().add(1.0).mul(127.5).round().clamp(0, 255)
    return video.to(torch.uint8).permute(1, 2, 3, 0).contiguous().numpy()


def apply_crop(frames: np.ndarray, plan: CropPlan, categorical: bool) -> torch.Tensor:
    """uint8 (F, h, w, 3) -> float32 (3, F, H, W) in [-1, 1], resampled and cropped by `plan`."""
    if tuple(frames.shape[1:3]) != plan.source:
        raise ValueError(f"frames are {frames.shape[1:3]}, the plan was made for {plan.source}")
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # (F, 3, h, w)
    if plan.resizes:
        if categorical:
            video = F.interpolate(video, size=plan.resized, mode="nearest-exact")
        else:
            video = F.interpolate(video, size=plan.resized, mode="bilinear", align_corners=False,
                                  antialias=True).clamp_(0, 255)
    th, tw = plan.target
    video = video[:, :, plan.top:plan.top + th, plan.left:plan.left + tw]
    return video.permute(1, 0, 2, 3).contiguous().div_(127.5).sub_(1.0)


def crop_raw(raw: dict[str, Any], indices: np.ndarray, total_frames: int, plan: CropPlan) -> dict[str, Any]:
    """Select frames and crop the raw ground truth like the videos (only without resizing: resampling
    depth edges, flow or keypoints would invent ground truth). Arrays whose first axis has
    `total_frames` entries are indexed by frame; (F, H, W, ...) arrays are cropped; keypoints and the
    intrinsics' principal point are shifted, keypoints leaving the window get v = 0."""
    if plan.resizes:
        raise ValueError("raw ground truth is only returned when no resize is needed")
    th, tw = plan.target
    h, w = plan.source
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(value, np.ndarray) or value.ndim == 0:
            out[key] = value
            continue
        if value.shape[0] == total_frames:
            value = value[indices]
            if value.ndim >= 3 and value.shape[1:3] == (h, w):
                value = value[:, plan.top:plan.top + th, plan.left:plan.left + tw]
        if key == "skeleton" and value.ndim == 4 and value.shape[-1] == 3:
            value = value.copy()
            value[..., 0] -= plan.left
            value[..., 1] -= plan.top
            outside = (value[..., 0] < -0.5) | (value[..., 0] > tw - 0.5) | (value[..., 1] < -0.5) | (value[..., 1] > th - 0.5)
            value[outside] = 0.0
        if key == "intrinsics" and value.shape == (3, 3):
            value = value.copy()
            value[0, 2] -= plan.left
            value[1, 2] -= plan.top
        out[key] = value
    return out
