"""What the picture formats of `unityvideo.modalities` share: input checks, rounding to bytes, and the
{0, 85, 170, 255}^3 colour grid of the palette formats (segmentation, skeleton)."""
from __future__ import annotations

from typing import Any

import numpy as np

RawArray = np.ndarray
Frames = np.ndarray  # uint8 (F, H, W, 3)


def check_frames(frames: Any, modality: str) -> Frames:
    """Validate a uint8 (F, H, W, 3) video; the error says what to pass instead."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise TypeError(f"{modality}.decode expects uint8 frames (F, H, W, 3), got dtype {frames.dtype}; "
                        "convert model output with ((x + 1) * 127.5).round().clip(0, 255).astype(np.uint8)")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{modality}.decode expects frames shaped (F, H, W, 3), got {frames.shape}")
    return frames


def check_raw(raw: Any, ndim: int, last: int | None, modality: str, layout: str) -> np.ndarray:
    raw = np.asarray(raw)
    if raw.ndim != ndim or (last is not None and raw.shape[-1] != last):
        raise ValueError(f"{modality}.encode expects raw {layout}, got shape {raw.shape}")
    return raw


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def grid_palette_index(frames: Frames) -> np.ndarray:
    """Index 0..63 of the nearest colour on the {0, 85, 170, 255}^3 grid (exact nearest neighbour:
    on a product grid the Euclidean nearest point is the per-channel nearest level)."""
    levels = np.clip((frames.astype(np.uint16) + 42) // 85, 0, 3)
    return (levels[..., 0] * 16 + levels[..., 1] * 4 + levels[..., 2]).astype(np.int64)


def grid_colour(index: int) -> tuple[int, int, int]:
    return (85 * (index // 16), 85 * (index // 4 % 4), 85 * (index % 4))


def grid_index(colour: tuple[int, int, int]) -> int:
    r, g, b = (c // 85 for c in colour)
    return r * 16 + g * 4 + b


def farthest_point_order(candidates: list[tuple[int, int, int]],
                          taken: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Greedy max-min ordering: each next colour is the one farthest from all colours so far
    (ties broken by list order), so that any prefix of the palette is as distinct as possible."""
    chosen = [np.array(c, float) for c in taken]
    rest = list(candidates)
    order = []
    while rest:
        dist = [min(np.linalg.norm(np.array(c, float) - t) for t in chosen) if chosen else 0.0 for c in rest]
        best = int(np.argmax(dist))
        order.append(rest.pop(best))
        chosen.append(np.array(order[-1], float))
    return order
