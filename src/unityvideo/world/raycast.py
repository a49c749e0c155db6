"""Vectorised ray-primitive intersection in each primitive's local frame.

Every primitive is centred at its local origin; cylinders and capsules have their axis along local y:
  sphere (r,)          box (half_x, half_y, half_z)          cylinder (r, half_height)
  capsule (r, half_length_of_segment)                        the ground plane is y = 0 in world space.
Rays are (N, 3) origins and unit directions. Intersections return the *entry* distance only (inf on a
miss or when the ray starts inside): shadow rays that start on one capsule inside an overlapping capsule
(at a joint) are therefore not shadowed by it, and primary rays always start outside everything.
"""

from __future__ import annotations

import numpy as np

INF = np.float32(np.inf)
KINDS = ("sphere", "box", "cylinder", "capsule")


def _sphere_entry(o: np.ndarray, d: np.ndarray, r: float, t_min: float) -> np.ndarray:
    b = np.einsum("ij,ij->i", o, d)
    c = np.einsum("ij,ij->i", o, o) - r * r
    disc = b * b - c
    t = -b - np.sqrt(np.maximum(disc, 0))
    return np.where((disc >= 0) & (t > t_min) & (c > 0), t, INF)


def _box_entry(o: np.ndarray, d: np.ndarray, half: tuple, t_min: float) -> np.ndarray:
    half = np.asarray(half, dtype=np.float32)
    safe = np.where(np.abs(d) < 1e-9, np.float32(1e-9), d)
    inv = 1.0 / safe
    t1 = (-half - o) * inv
    t2 = (half - o) * inv
    t_near = np.minimum(t1, t2).max(axis=1)
    t_far = np.maximum(t1, t2).min(axis=1)
    return np.where((t_near <= t_far) & (t_near > t_min), t_near, INF)


def _side_entry(o: np.ndarray, d: np.ndarray, r: float, h: float, t_min: float) -> np.ndarray:
    """Entry through the lateral surface of the y-axis cylinder of radius r, limited to |y| <= h."""
    a = d[:, 0] ** 2 + d[:, 2] ** 2
    b = o[:, 0] * d[:, 0] + o[:, 2] * d[:, 2]
    c = o[:, 0] ** 2 + o[:, 2] ** 2 - r * r
    disc = b * b - a * c
    t = (-b - np.sqrt(np.maximum(disc, 0))) / np.maximum(a, 1e-12)
    y = o[:, 1] + t * d[:, 1]
    return np.where((disc >= 0) & (a > 1e-12) & (c > 0) & (t > t_min) & (np.abs(y) <= h), t, INF)


def _cap_entry(o: np.ndarray, d: np.ndarray, r: float, h: float, t_min: float) -> np.ndarray:
    """Entry through the flat cap the ray faces (top if it starts above y = h, bottom if below -h)."""
    above = o[:, 1] > h
    below = o[:, 1] < -h
    plane = np.where(above, h, -h).astype(np.float32)
    dy = np.where(np.abs(d[:, 1]) < 1e-9, np.float32(1e-9), d[:, 1])
    t = (plane - o[:, 1]) / dy
    x = o[:, 0] + t * d[:, 0]
    z = o[:, 2] + t * d[:, 2]
    ok = (above | below) & (t > t_min) & (x * x + z * z <= r * r)
    return np.where(ok, t, INF)


def intersect(kind: str, size: tuple, o: np.ndarray, d: np.ndarray, t_min: float = 0.0) -> np.ndarray:
    """Entry distance of local-frame rays into a primitive, (N,) float32 with inf on a miss."""
    if kind == "sphere":
        return _sphere_entry(o, d, size[0], t_min)
    if kind == "box":
        return _box_entry(o, d, size, t_min)
    if kind == "cylinder":
        r, h = size
        return np.minimum(_side_entry(o, d, r, h, t_min), _cap_entry(o, d, r, h, t_min))
    if kind == "capsule":
        r, h = size
        shift = np.array([0.0, h, 0.0], dtype=np.float32)
        ends = np.minimum(_sphere_entry(o - shift, d, r, t_min), _sphere_entry(o + shift, d, r, t_min))
        return np.minimum(_side_entry(o, d, r, h, t_min), ends)
    raise ValueError(f"unknown primitive kind {kind!r}; expected one of {KINDS}")


def normal(kind: str, size: tuple, p: np.ndarray) -> np.ndarray:
    """Outward unit normals at local surface points p (N, 3)."""
    if kind == "sphere":
        n = p
    elif kind == "box":
        rel = np.abs(p) / np.asarray(size, dtype=np.float32)
        face = rel.argmax(axis=1)
        n = np.zeros_like(p)
        n[np.arange(len(p)), face] = np.sign(p[np.arange(len(p)), face])
    elif kind == "cylinder":
        r, h = size
        on_cap = np.abs(p[:, 1]) >= h - 1e-4 * max(h, 1.0)
        side = p * np.array([1, 0, 1], dtype=np.float32)
        cap = np.zeros_like(p)
        cap[:, 1] = np.sign(p[:, 1])
        n = np.where(on_cap[:, None], cap, side)
    elif kind == "capsule":
        r, h = size
        axis_point = np.zeros_like(p)
        axis_point[:, 1] = np.clip(p[:, 1], -h, h)
        n = p - axis_point
    else:
        raise ValueError(f"unknown primitive kind {kind!r}; expected one of {KINDS}")
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def sphere_hit_mask(o: np.ndarray, d: np.ndarray, centre: np.ndarray, radius: np.ndarray,
                    t_max: np.ndarray | None = None) -> np.ndarray:
    """Which rays pass within `radius` of `centre` ahead of the origin (and before t_max): a cheap cull.

    All arguments broadcast; o/centre/d end in 3.
    """
    oc = centre - o
    s = (d * oc).sum(-1)
    dist2 = (oc * oc).sum(-1) - s * s
    mask = (dist2 <= radius * radius) & (s >= -radius)
    if t_max is not None:
        mask &= s - radius < t_max
    return mask


def plane_hit(o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Distance to the ground plane y = 0 for rays starting above it; inf for rays that never reach it."""
    dy = d[..., 1]
    t = -o[..., 1] / np.where(dy < -1e-9, dy, np.float32(-1.0))
    return np.where(dy < -1e-9, t, INF).astype(np.float32)
