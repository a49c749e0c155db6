"""Rigid-body physics on a ground plane: gravity, exact bounces, sliding friction, rolling.

Bodies do not interact with each other (the scene sampler keeps their paths apart instead). Each
substep integrates free flight in closed form and solves the time of impact with the ground exactly,
so free fall is exact and a bounce with restitution e returns to e^2 of the drop height.
Orientation only changes by yaw spin (boxes, cylinders) or by rolling (spheres, lying capsules), whose
angular velocity is kept consistent with rolling without slipping while in contact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from unityvideo.world.transforms import axis_angle, rot_x, rot_y, rot_z

GRAVITY = 9.81
REST_SPEED = 0.25  # m/s: a bounce slower than this settles on the ground


@dataclass
class RigidBody:
    """One rigid object. `size` follows raycast's convention for `kind` (local axis y)."""

    kind: str                       # sphere | box | cylinder | capsule
    size: tuple[float, ...]
    position: tuple[float, float, float]   # centre at t = 0 (metres)
    velocity: tuple[float, float, float] = (0.0, 0.0, 0.0)
    yaw: float = 0.0                # initial heading about +y (radians)
    pitch: float = 0.0              # spheres: initial tilt of the texture about x (radians)
    yaw_rate: float = 0.0           # spin about +y (rad/s), decays with friction on the ground
    lying: bool = False             # capsules/cylinders: axis horizontal (rolls), else upright
    restitution: float = 0.5
    friction: float = 0.4           # sliding friction coefficient (boxes, upright cylinders/capsules)
    rolling_resistance: float = 0.04
    motion: str = "rest"            # what the sampler intended: rest | bounce | fall | roll | slide

    def __post_init__(self) -> None:
        expected = {"sphere": 1, "box": 3, "cylinder": 2, "capsule": 2}
        if self.kind not in expected or len(self.size) != expected[self.kind] or min(self.size) <= 0:
            raise ValueError(f"RigidBody: a {self.kind!r} needs {expected.get(self.kind, '?')} positive sizes "
                             f"(kinds: {tuple(expected)}), got size={self.size}")

    @property
    def rolls(self) -> bool:
        return self.kind == "sphere" or (self.kind in ("capsule", "cylinder") and self.lying)

    @property
    def contact_height(self) -> float:
        """Height of the centre above the ground when the body rests on it."""
        if self.kind == "sphere" or self.lying:
            return float(self.size[0])
        if self.kind == "box":
            return float(self.size[1])
        return float(self.size[1] + (self.size[0] if self.kind == "capsule" else 0.0))

    def initial_rotation(self) -> np.ndarray:
        tilt = rot_z(math.pi / 2) if self.lying else rot_x(self.pitch)  # lying: local y axis -> world -x
        return rot_y(self.yaw) @ tilt


@dataclass
class Trajectory:
    """Poses of bodies at the requested times: centre (T, N, 3), rotation (T, N, 3, 3) local -> world."""

    times: np.ndarray
    centre: np.ndarray
    rotation: np.ndarray
    bounces: list[list[float]]      # per body: times of ground impacts


def _flight(y: float, vy: float, dt: float) -> tuple[float, float]:
    return y + vy * dt - 0.5 * GRAVITY * dt * dt, vy - GRAVITY * dt


def _impact_time(y: float, vy: float, floor: float) -> float:
    """Smallest tau >= 0 with y + vy tau - g tau^2 / 2 = floor."""
    a, b, c = -0.5 * GRAVITY, vy, y - floor
    disc = max(b * b - 4 * a * c, 0.0)
    return max((-b - math.sqrt(disc)) / (2 * a), 0.0)


class _BodyState:
    def __init__(self, body: RigidBody):
        self.body = body
        self.p = np.array(body.position, dtype=np.float64)
        self.v = np.array(body.velocity, dtype=np.float64)
        self.R = body.initial_rotation()
        self.yaw_rate = body.yaw_rate
        self.floor = body.contact_height
        self.p[1] = max(self.p[1], self.floor)
        self.grounded = self.p[1] <= self.floor + 1e-9 and self.v[1] <= 0
        if self.grounded:
            self.v[1] = 0.0
        self.omega = self._rolling_omega() if body.rolls else np.zeros(3)
        self.bounces: list[float] = []

    def _rolling_omega(self) -> np.ndarray:
        v = self.v.copy()
        if self.body.kind != "sphere":  # a lying capsule only rolls about its own axis
            axis = self.R[:, 1]
            v -= axis * (v @ axis)
        return np.array([v[2], 0.0, -v[0]]) / self.body.size[0]  # omega = y_hat x v / r

    def step(self, now: float, dt: float) -> None:
        if self.grounded:
            self._slide(dt)
        else:
            self._fly(now, dt)
        spin = self.omega.copy()
        spin[1] += self.yaw_rate
        if np.any(spin):
            self.R = axis_angle(spin * dt) @ self.R

    def _fly(self, now: float, dt: float) -> None:
        y_new, vy_new = _flight(self.p[1], self.v[1], dt)
        if y_new > self.floor:
            self.p[[0, 2]] += self.v[[0, 2]] * dt
            self.p[1], self.v[1] = y_new, vy_new
            return
        tau = min(_impact_time(self.p[1], self.v[1], self.floor), dt)
        self.p[[0, 2]] += self.v[[0, 2]] * tau
        impact_speed = -(self.v[1] - GRAVITY * tau)
        self.bounces.append(now + tau)
        self.p[1] = self.floor
        self.v[1] = self.body.restitution * impact_speed
        if self.v[1] < REST_SPEED:
            self.v[1] = 0.0
            self.grounded = True
        if self.body.rolls:
            self.omega = self._rolling_omega()
        if dt - tau > 0:  # finish the substep after the impact (the caller applies the rotation)
            self._slide(dt - tau) if self.grounded else self._fly(now + tau, dt - tau)

    def _slide(self, dt: float) -> None:
        horizontal = self.v[[0, 2]]
        speed = float(np.hypot(*horizontal))
        mu = self.body.rolling_resistance if self.body.rolls else self.body.friction
        decel = mu * GRAVITY
        if speed > 0:
            step = min(dt, speed / decel) if decel > 0 else dt
            travelled = speed * step - 0.5 * decel * step * step
            direction = horizontal / speed
            self.p[[0, 2]] += direction * travelled
            self.v[[0, 2]] = direction * max(speed - decel * dt, 0.0)
        self.yaw_rate *= math.exp(-3.0 * self.body.friction * dt)
        if self.body.rolls:
            self.omega = self._rolling_omega()


def simulate(bodies: list[RigidBody], times: np.ndarray, max_dt: float = 1 / 120) -> Trajectory:
    """Integrate `bodies` from t = 0 and record their poses at the (sorted, >= 0) `times`."""
    times = np.asarray(times, dtype=np.float64)
    T, N = len(times), len(bodies)
    centre = np.zeros((T, N, 3))
    rotation = np.zeros((T, N, 3, 3))
    states = [_BodyState(b) for b in bodies]
    now = 0.0
    for k, target in enumerate(times):
        gap = target - now
        if gap > 0:
            steps = max(1, math.ceil(gap / max_dt - 1e-9))
            for s in range(steps):
                for st in states:
                    st.step(now + s * gap / steps, gap / steps)
            now = float(target)
        for i, st in enumerate(states):
            centre[k, i], rotation[k, i] = st.p, st.R
    return Trajectory(times, centre, rotation, [st.bounces for st in states])
