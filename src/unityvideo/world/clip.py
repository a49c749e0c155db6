"""`WorldClip`: the raw ground truth of one rendered clip (the interface the data and modality rooms use)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class WorldClip:
    """F frames of H x W pixels, P persons. Pixel (row r, col c) has its centre at (x, y) = (c, r).

    rgb uint8 (F,H,W,3); depth float32 (F,H,W) metric z-depth, +inf for sky; flow float32 (F,H,W,2)
    forward (dx, dy) from frame t to t+1; flow_valid bool (F,H,W); segmentation uint8 (F,H,W), 0 =
    background; skeleton float32 (F,P,17,3) COCO (x, y, v); densepose float32 (F,H,W,3) (I, U, V);
    intrinsics float32 (3,3); world_to_camera float32 (F,4,4).
    """

    rgb: np.ndarray
    depth: np.ndarray
    flow: np.ndarray
    flow_valid: np.ndarray
    segmentation: np.ndarray
    skeleton: np.ndarray
    densepose: np.ndarray
    caption: str
    instances: list[dict]
    person_ids: list[int]
    intrinsics: np.ndarray
    world_to_camera: np.ndarray
    meta: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        F, H, W = self.depth.shape
        return (f"WorldClip(frames={F}, size=({H}, {W}), persons={len(self.person_ids)}, "
                f"instances={len(self.instances)}, caption={self.caption!r})")

    @property
    def frames(self) -> int:
        return self.rgb.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[2]
