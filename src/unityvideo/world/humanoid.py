"""Articulated humanoids: a capsule skeleton, action cycles, forward kinematics, COCO-17 keypoints and
DensePose part labels.

Body frame: y up, z forward (the way the person faces), x = the person's LEFT. A bone hangs along its
joint frame's -y in the rest pose; every body part is a capsule (the head a sphere) whose local frame is
its joint frame, so a part's local coordinates give DensePose-style (U, V):
  V = position along the limb axis, 0 at the proximal end, 1 at the distal end (head: 0 top, 1 chin);
  U = |angle around the axis from the front| / pi: 0 at the front, 1 at the back.
The two halves of a split DensePose part are the two sides of the plane through the limb axis and the
body's forward direction (first index: the side towards the person's right, -x; second: +x), so both
halves of every part are visible from the front and from behind. Head: 23 = right half, 24 = left half.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from unityvideo.world.transforms import rot_x, rot_y, rot_z

ACTIONS = ("walk", "run", "wave", "jump")
COCO_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
# DensePose indices per part and side: (towards the right half, towards the left half) or one index.
DENSEPOSE_PARTS = {
    "torso": (1, 2), "head": (23, 24),
    "right_hand": (3,), "left_hand": (4,), "left_foot": (5,), "right_foot": (6,),
    "right_upper_leg": (7, 9), "left_upper_leg": (8, 10), "right_lower_leg": (11, 13), "left_lower_leg": (12, 14),
    "left_upper_arm": (15, 17), "right_upper_arm": (16, 18), "left_lower_arm": (19, 21), "right_lower_arm": (20, 22),
}

# Rest-pose skeleton for a 1.0-scale (~1.75 m) person, metres.
PELVIS_HEIGHT = 0.95
NECK_ABOVE_PELVIS = 0.50
HEAD_ABOVE_NECK = 0.15
HEAD_RADIUS = 0.11
TORSO = dict(radius=0.14, bottom=0.02, top=0.42)   # capsule segment along the spine, above the pelvis
SHOULDER = (0.20, 0.46)                              # (x, y above pelvis)
HIP = (0.095, -0.03)
UPPER_ARM, LOWER_ARM, HAND = (0.29, 0.050), (0.26, 0.042), (0.11, 0.038)  # (length, radius)
UPPER_LEG, LOWER_LEG = (0.42, 0.075), (0.42, 0.055)
FOOT = dict(radius=0.045, back=0.05, front=0.15)     # capsule along the foot, forward from the ankle


@dataclass
class HumanoidSpec:
    """A person in the scene: what they do, where, and what they wear."""

    action: str                       # walk | run | wave | jump
    start: tuple[float, float]        # (x, z) of the pelvis at t = 0
    heading: float                    # yaw (rad): forward = (sin, 0, cos)
    speed: float = 0.0                # m/s along the heading (walk, run)
    scale: float = 1.0
    phase: float = 0.0                # cycle offset in [0, 1)
    shirt: str = "red"
    pants: str = "blue"
    skin: tuple[float, float, float] = (0.87, 0.69, 0.55)
    hair: tuple[float, float, float] = (0.2, 0.13, 0.08)
    waving_hand: str = "right"

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"HumanoidSpec.action must be one of {ACTIONS}, got {self.action!r}")

    def forward(self) -> np.ndarray:
        return np.array([math.sin(self.heading), 0.0, math.cos(self.heading)])

    def root_xz(self, times: np.ndarray) -> np.ndarray:
        """(T, 3) pelvis ground position over time (y = 0)."""
        start = np.array([self.start[0], 0.0, self.start[1]])
        return start + np.asarray(times)[:, None] * self.speed * self.forward()


@dataclass
class BodyPart:
    """One posed rigid part: raycast primitive `kind`/`size`, pose per frame, DensePose index(es)."""

    name: str
    kind: str
    size: tuple[float, ...]
    rotation: np.ndarray   # (T, 3, 3) local -> world
    centre: np.ndarray     # (T, 3)
    densepose: tuple[int, ...]
    material: str          # shirt | pants | skin | shoes | head


@dataclass
class HumanoidPose:
    parts: list[BodyPart]
    keypoints: np.ndarray        # (T, 17, 3) world positions in COCO order
    keypoint_slack: np.ndarray   # (17,) depth slack (m) for the visibility test: how deep inside the body


@dataclass
class _Angles:
    """Joint angles (radians) per frame; arrays of shape (T,). side-indexed dicts use +1 left, -1 right."""

    lean: np.ndarray
    shoulder_swing: dict
    shoulder_abduct: dict
    elbow_flex: dict
    elbow_raise: dict
    hip_flex: dict
    knee_flex: dict
    ankle_flex: dict
    lift: np.ndarray             # extra height of the whole body above ground contact (jump flight)


def _deg(x):
    return np.deg2rad(x)


def _cycle_angles(spec: HumanoidSpec, t: np.ndarray) -> _Angles:
    zero = np.zeros_like(t)
    both = lambda a, b: {1: a, -1: b}  # noqa: E731
    if spec.action in ("walk", "run"):
        running = spec.action == "run"
        stride = (2.4 if running else 1.4) * spec.scale
        phi = 2 * math.pi * (spec.speed / stride * t + spec.phase)
        hip, knee, arm, elbow = ((40, 85, 40, 85) if running else (24, 45, 20, 18))
        swing = np.sin(phi)
        knee_l = _deg(6 + knee * np.maximum(0, np.cos(phi)) ** 1.5)
        knee_r = _deg(6 + knee * np.maximum(0, -np.cos(phi)) ** 1.5)
        lift = 0.04 * np.abs(np.sin(phi)) if running else zero
        return _Angles(
            lean=zero + _deg(12 if running else 2),
            shoulder_swing=both(_deg(-arm) * swing, _deg(arm) * swing),
            shoulder_abduct=both(zero + _deg(8), zero + _deg(8)),
            elbow_flex=both(zero + _deg(elbow), zero + _deg(elbow)),
            elbow_raise=both(zero, zero),
            hip_flex=both(_deg(hip) * swing, -_deg(hip) * swing),
            knee_flex=both(knee_l, knee_r),
            ankle_flex=both(zero, zero),
            lift=lift,
        )
    if spec.action == "wave":
        phi = 2 * math.pi * (1.6 * t + spec.phase)
        side = 1 if spec.waving_hand == "left" else -1
        abduct = {side: zero + _deg(105), -side: zero + _deg(7)}
        raise_ = {side: _deg(55 + 30 * np.sin(phi)), -side: zero}
        return _Angles(
            lean=zero, shoulder_swing=both(zero, zero), shoulder_abduct=abduct,
            elbow_flex=both(zero + _deg(8), zero + _deg(8)), elbow_raise=raise_,
            hip_flex=both(zero + _deg(2), zero - _deg(2)), knee_flex=both(zero + _deg(4), zero + _deg(4)),
            ankle_flex=both(zero, zero), lift=zero,
        )
    # jump: crouch, take off, fly (ballistic), land, every `period` seconds
    period = 1.1
    u = np.mod(t / period + spec.phase, 1.0)
    flight_start, flight_end = 0.3, 0.8
    flying = (u >= flight_start) & (u < flight_end)
    tau = (u - flight_start) * period
    flight_time = (flight_end - flight_start) * period
    v0 = 9.81 * flight_time / 2
    lift = np.where(flying, v0 * tau - 0.5 * 9.81 * tau ** 2, 0.0)
    crouch = np.where(u < flight_start, np.sin(math.pi * u / flight_start),
                      np.where(flying, 0.0, np.sin(math.pi * (u - flight_end) / (1 - flight_end))))
    crouch = np.clip(crouch, 0, 1)
    arms = np.where(flying, np.sin(math.pi * (u - flight_start) / (flight_end - flight_start)), -0.4 * crouch)
    return _Angles(
        lean=_deg(15) * crouch,
        shoulder_swing=both(_deg(70) * arms, _deg(70) * arms),
        shoulder_abduct=both(zero + _deg(12), zero + _deg(12)),
        elbow_flex=both(zero + _deg(20), zero + _deg(20)), elbow_raise=both(zero, zero),
        hip_flex=both(_deg(60) * crouch, _deg(60) * crouch),
        knee_flex=both(_deg(100) * crouch + _deg(4), _deg(100) * crouch + _deg(4)),
        ankle_flex=both(_deg(-30) * crouch, _deg(-30) * crouch),
        lift=lift,
    )


def _apply(R: np.ndarray, v) -> np.ndarray:
    """R (T,3,3) @ v (3,) -> (T,3)."""
    return R @ np.asarray(v, dtype=np.float64)


def _limb(name, R, start, length, radius, material) -> BodyPart:
    """A capsule hanging from `start` along the frame's -y for `length` metres."""
    centre = start + _apply(R, (0.0, -length / 2, 0.0))  # local +y points back to the proximal joint
    return BodyPart(name, "capsule", (radius, length / 2), R, centre, DENSEPOSE_PARTS[name], material)


def pose_humanoid(spec: HumanoidSpec, times: np.ndarray) -> HumanoidPose:
    """Forward kinematics of `spec` at `times`: posed body parts and COCO keypoints in world space."""
    t = np.asarray(times, dtype=np.float64)
    s = spec.scale
    a = _cycle_angles(spec, t)
    root_R = rot_y(np.full_like(t, spec.heading))
    pelvis = spec.root_xz(t) + np.array([0.0, PELVIS_HEIGHT * s, 0.0])
    torso_R = root_R @ rot_x(a.lean)
    neck = pelvis + _apply(torso_R, (0, NECK_ABOVE_PELVIS * s, 0))
    head_c = neck + _apply(torso_R, (0, HEAD_ABOVE_NECK * s, 0))
    torso_c = pelvis + _apply(torso_R, (0, (TORSO["bottom"] + TORSO["top"]) / 2 * s, 0))
    parts = [
        BodyPart("torso", "capsule", (TORSO["radius"] * s, (TORSO["top"] - TORSO["bottom"]) / 2 * s),
                 torso_R, torso_c, DENSEPOSE_PARTS["torso"], "shirt"),
        BodyPart("head", "sphere", (HEAD_RADIUS * s,), torso_R, head_c, DENSEPOSE_PARTS["head"], "head"),
    ]
    joints: dict[str, np.ndarray] = {}
    for side, label in ((1, "left"), (-1, "right")):
        shoulder = pelvis + _apply(torso_R, (side * SHOULDER[0] * s, SHOULDER[1] * s, 0))
        upper_R = torso_R @ rot_z(side * a.shoulder_abduct[side]) @ rot_x(-a.shoulder_swing[side])
        elbow = shoulder + _apply(upper_R, (0, -UPPER_ARM[0] * s, 0))
        lower_R = upper_R @ rot_z(side * a.elbow_raise[side]) @ rot_x(-a.elbow_flex[side])
        wrist = elbow + _apply(lower_R, (0, -LOWER_ARM[0] * s, 0))
        hip = pelvis + _apply(root_R, (side * HIP[0] * s, HIP[1] * s, 0))
        thigh_R = root_R @ rot_x(-a.hip_flex[side])
        knee = hip + _apply(thigh_R, (0, -UPPER_LEG[0] * s, 0))
        shin_R = thigh_R @ rot_x(a.knee_flex[side])
        ankle = knee + _apply(shin_R, (0, -LOWER_LEG[0] * s, 0))
        foot_R = shin_R @ rot_x(-a.ankle_flex[side]) @ rot_x(math.pi / 2)  # local y -> forward
        foot_c = ankle + _apply(foot_R, (0, (FOOT["front"] - FOOT["back"]) / 2 * s, 0.03 * s))
        parts += [
            _limb(f"{label}_upper_arm", upper_R, shoulder, UPPER_ARM[0] * s, UPPER_ARM[1] * s, "shirt"),
            _limb(f"{label}_lower_arm", lower_R, elbow, LOWER_ARM[0] * s, LOWER_ARM[1] * s, "skin"),
            _limb(f"{label}_hand", lower_R, wrist, HAND[0] * s, HAND[1] * s, "skin"),
            _limb(f"{label}_upper_leg", thigh_R, hip, UPPER_LEG[0] * s, UPPER_LEG[1] * s, "pants"),
            _limb(f"{label}_lower_leg", shin_R, knee, LOWER_LEG[0] * s, LOWER_LEG[1] * s, "pants"),
            BodyPart(f"{label}_foot", "capsule", (FOOT["radius"] * s, (FOOT["front"] + FOOT["back"]) / 2 * s),
                     foot_R, foot_c, DENSEPOSE_PARTS[f"{label}_foot"], "shoes"),
        ]
        joints.update({f"{label}_shoulder": shoulder, f"{label}_elbow": elbow, f"{label}_wrist": wrist,
                       f"{label}_hip": hip, f"{label}_knee": knee, f"{label}_ankle": ankle})
    joints.update(_face_points(torso_R, head_c, HEAD_RADIUS * s))
    keypoints = np.stack([joints[name] for name in COCO_KEYPOINTS], axis=1)
    _stand_on_ground(parts, keypoints, a.lift)
    return HumanoidPose(parts, keypoints, _keypoint_slack(s))


def _face_points(head_R: np.ndarray, centre: np.ndarray, radius: float) -> dict[str, np.ndarray]:
    directions = {
        "nose": (0.0, -0.05, 1.0), "left_eye": (0.33, 0.22, 0.92), "right_eye": (-0.33, 0.22, 0.92),
        "left_ear": (1.0, 0.05, -0.05), "right_ear": (-1.0, 0.05, -0.05),
    }
    return {k: centre + _apply(head_R, radius * np.asarray(v) / np.linalg.norm(v)) for k, v in directions.items()}


def _keypoint_slack(scale: float) -> np.ndarray:
    """Face points lie on the head's surface; joints lie inside limbs as thick as their radius."""
    face = 0.5 * HEAD_RADIUS
    joint_radius = {"shoulder": UPPER_ARM[1], "elbow": UPPER_ARM[1], "wrist": LOWER_ARM[1],
                    "hip": UPPER_LEG[1], "knee": UPPER_LEG[1], "ankle": LOWER_LEG[1]}
    slack = [face if i < 5 else joint_radius[name.split("_")[1]] + 0.05 for i, name in enumerate(COCO_KEYPOINTS)]
    return np.asarray(slack) * scale


def _stand_on_ground(parts: list[BodyPart], keypoints: np.ndarray, lift: np.ndarray) -> None:
    """Shift the whole body vertically so the lowest point of the feet touches y = 0 (plus jump flight)."""
    lowest = np.full(len(lift), np.inf)
    for part in parts:
        if part.name.endswith("_foot"):
            r, h = part.size
            bottom = part.centre[:, 1] - np.abs(part.rotation[:, 1, 1]) * h - r
            lowest = np.minimum(lowest, bottom)
    shift = np.stack([np.zeros_like(lift), lift - lowest, np.zeros_like(lift)], axis=1)
    for part in parts:
        part.centre = part.centre + shift
    keypoints += shift[:, None, :]


def bounding_sphere(parts: list[BodyPart]) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame (centre (T,3), radius (T,)) enclosing every part."""
    centres = np.stack([p.centre for p in parts], axis=1)           # (T, K, 3)
    extents = np.array([p.size[0] + (p.size[1] if p.kind == "capsule" else 0.0) for p in parts])
    middle = 0.5 * (centres.min(axis=1) + centres.max(axis=1))
    radius = (np.linalg.norm(centres - middle[:, None], axis=-1) + extents).max(axis=1)
    return middle, radius
