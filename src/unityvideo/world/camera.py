"""Pinhole camera paths: static, panning (yaw about its own position) or orbiting the scene centre.

Camera frame follows OpenCV: x right, y down, z forward. Pixel (row r, col c) has its centre at
(x, y) = (c, r); the principal point is the image centre ((W - 1) / 2, (H - 1) / 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from unityvideo.world.transforms import normalize, rot_y

MOTIONS = ("static", "pan", "orbit")


@dataclass
class CameraSpec:
    """Where the camera is and how it moves. Angles in degrees, rates in degrees per second."""

    motion: str = "static"
    azimuth: float = 0.0          # camera position around the target: 0 = on the -z side looking +z
    distance: float = 7.0         # horizontal distance to the target (m)
    height: float = 1.6           # camera height (m)
    target: tuple[float, float, float] = (0.0, 0.6, 0.0)
    fov: float = 55.0             # horizontal field of view
    rate: float = 0.0             # pan: yaw rate (+ = turns right); orbit: azimuth rate (+ = moves right)

    def __post_init__(self) -> None:
        if self.motion not in MOTIONS:
            raise ValueError(f"CameraSpec.motion must be one of {MOTIONS}, got {self.motion!r}")

    def start_position(self) -> np.ndarray:
        return self._position(0.0)

    def _position(self, azimuth_offset) -> np.ndarray:
        az = np.deg2rad(self.azimuth + np.asarray(azimuth_offset, dtype=np.float64))
        tx, _, tz = self.target
        return np.stack([tx - self.distance * np.sin(az), np.full_like(az, self.height),
                         tz - self.distance * np.cos(az)], axis=-1)


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Camera-to-world rotations (T, 3, 3) whose columns are the camera's right, down, forward."""
    forward = normalize(target - eye)
    right = normalize(np.cross(forward, np.array([0.0, 1.0, 0.0])))
    down = np.cross(forward, right)
    return np.stack([right, down, forward], axis=-1)


def camera_to_world(spec: CameraSpec, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation (T, 3, 3) and position (T, 3) of the camera at `times` (seconds)."""
    t = np.asarray(times, dtype=np.float64)
    target = np.broadcast_to(np.asarray(spec.target, dtype=np.float64), (len(t), 3))
    if spec.motion == "orbit":
        # in this parameterisation a growing azimuth moves the camera towards its right
        eye = spec._position(spec.rate * t)
        return look_at(eye, target), eye
    eye = np.broadcast_to(spec.start_position(), (len(t), 3)).copy()
    R = look_at(eye, target)
    if spec.motion == "pan":
        # turning right = yaw towards the camera's right; about world +y that is a negative angle
        R = rot_y(-np.deg2rad(spec.rate) * t) @ R
    return R, eye


def intrinsics(fov_deg: float, height: int, width: int) -> np.ndarray:
    """3x3 K with square pixels, horizontal field of view `fov_deg`, principal point at the centre."""
    f = (width / 2) / math.tan(math.radians(fov_deg) / 2)
    return np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1]], dtype=np.float64)


def world_to_camera(R_c2w: np.ndarray, eye: np.ndarray) -> np.ndarray:
    """(T, 4, 4) extrinsics mapping world points to camera coordinates."""
    T = len(eye)
    out = np.zeros((T, 4, 4))
    Rt = np.swapaxes(R_c2w, 1, 2)
    out[:, :3, :3] = Rt
    out[:, :3, 3] = -(Rt @ eye[:, :, None])[:, :, 0]
    out[:, 3, 3] = 1
    return out


def project(points: np.ndarray, w2c: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points (..., 3) with matching extrinsics (..., 4, 4) -> pixel (x, y) (..., 2) and z (...)."""
    cam = (w2c[..., :3, :3] @ points[..., None])[..., 0] + w2c[..., :3, 3]
    z = cam[..., 2]
    safe = np.where(np.abs(z) < 1e-9, 1e-9, z)
    x = K[0, 0] * cam[..., 0] / safe + K[0, 2]
    y = K[1, 1] * cam[..., 1] / safe + K[1, 2]
    return np.stack([x, y], axis=-1), z
