"""Scene sampling: a deterministic function of a seed and a `WorldConfig`.

A scene is a small scene graph: a camera path, a light, a textured ground, rigid objects with their
initial state and intended motion, and humanoids with an action. Entities are placed one at a time and
re-drawn until their ground footprint stays clear of every other entity and of the camera for the
whole clip (objects do not collide during the clip; bouncing ones only fall straight down onto free
ground).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np

from unityvideo.world.camera import MOTIONS, CameraSpec, camera_to_world
from unityvideo.world.humanoid import ACTIONS, HumanoidSpec
from unityvideo.world.physics import RigidBody, simulate

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10), "green": (0.16, 0.62, 0.20), "blue": (0.12, 0.28, 0.85),
    "yellow": (0.95, 0.84, 0.15), "orange": (0.96, 0.50, 0.10), "purple": (0.52, 0.20, 0.70),
    "white": (0.92, 0.92, 0.90), "cyan": (0.10, 0.78, 0.84), "pink": (0.96, 0.46, 0.66),
    "black": (0.07, 0.07, 0.08), "brown": (0.48, 0.29, 0.14), "grey": (0.50, 0.50, 0.52),
}
GROUNDS = (  # (name, tile colour a, tile colour b)
    ("grass", (0.30, 0.52, 0.22), (0.24, 0.44, 0.18)),
    ("stone", (0.62, 0.60, 0.56), (0.46, 0.45, 0.43)),
    ("sand", (0.80, 0.70, 0.50), (0.70, 0.60, 0.42)),
    ("wood", (0.55, 0.38, 0.22), (0.44, 0.29, 0.16)),
    ("tiles", (0.80, 0.80, 0.82), (0.30, 0.32, 0.36)),
)
OBJECT_KINDS = ("sphere", "box", "cylinder", "capsule")
SKIN_TONES = ((0.94, 0.78, 0.66), (0.87, 0.69, 0.55), (0.70, 0.50, 0.36), (0.48, 0.33, 0.23), (0.33, 0.22, 0.15))
HAIR = ((0.12, 0.09, 0.06), (0.35, 0.22, 0.10), (0.70, 0.55, 0.30), (0.05, 0.05, 0.05), (0.55, 0.55, 0.55))


@dataclass
class WorldConfig:
    """What scenes look like. Ranges are inclusive (min, max)."""

    objects: tuple[int, int] = (1, 4)
    persons: tuple[int, int] = (0, 2)
    fps: float = 8.0
    frames: int = 16                       # clip length the sampler keeps entities apart for
    camera_motion: dict = field(default_factory=lambda: {"static": 0.4, "pan": 0.3, "orbit": 0.3})
    pan_rate: tuple[float, float] = (6.0, 14.0)     # deg/s
    orbit_rate: tuple[float, float] = (8.0, 18.0)   # deg/s
    fov: tuple[float, float] = (50.0, 60.0)
    camera_height: tuple[float, float] = (1.2, 2.5)
    camera_distance: tuple[float, float] = (2.8, 5.0)
    scene_radius: float = 1.6               # objects start within this distance of the scene centre
    object_kinds: tuple[str, ...] = OBJECT_KINDS
    actions: tuple[str, ...] = ACTIONS
    shadows: bool = True

    def __post_init__(self) -> None:
        for name in ("objects", "persons"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"WorldConfig.{name} must be (min, max) with 0 <= min <= max, got {(lo, hi)}")
        if self.persons[1] > 2:
            raise ValueError(f"WorldConfig.persons allows at most 2 persons, got max {self.persons[1]}")
        if self.objects[1] > 8:
            raise ValueError(f"WorldConfig.objects allows at most 8 objects, got max {self.objects[1]}")
        if self.fps <= 0:
            raise ValueError(f"WorldConfig.fps must be positive, got {self.fps}")
        unknown = set(self.camera_motion) - set(MOTIONS)
        if unknown or not self.camera_motion or min(self.camera_motion.values()) < 0:
            raise ValueError(f"WorldConfig.camera_motion must map some of {MOTIONS} to probabilities >= 0, "
                             f"got {self.camera_motion}")
        bad = [k for k in self.object_kinds if k not in OBJECT_KINDS] + [a for a in self.actions if a not in ACTIONS]
        if bad or not self.object_kinds or not self.actions:
            raise ValueError(f"WorldConfig: unknown or empty object_kinds/actions {bad}; "
                             f"choose from {OBJECT_KINDS} and {ACTIONS}")


@dataclass
class SceneObject:
    body: RigidBody
    colour: str

    @property
    def rgb(self) -> tuple[float, float, float]:
        return COLOURS[self.colour]


@dataclass
class Ground:
    name: str
    colour_a: tuple[float, float, float]
    colour_b: tuple[float, float, float]
    tile: float          # checker tile size (m)
    offset: tuple[float, float]


@dataclass
class Scene:
    """Everything needed to render a clip of any length."""

    seed: int
    fps: float
    camera: CameraSpec
    light: tuple[float, float, float]     # unit vector towards the sun
    ground: Ground
    sky_top: tuple[float, float, float]
    sky_horizon: tuple[float, float, float]
    objects: list[SceneObject]
    persons: list[HumanoidSpec]
    shadows: bool = True


def clip_seed(base_seed: int, split: str, index: int) -> int:
    """A 63-bit seed that is a pure function of (base_seed, split, index); splits never share seeds' streams."""
    if index < 0 or base_seed < 0:
        raise ValueError(f"clip_seed needs base_seed >= 0 and index >= 0, got {base_seed}, {index}")
    split_code = zlib.crc32(split.encode("utf-8"))
    state = np.random.SeedSequence([base_seed, split_code, index]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def sample_scene(seed: int, config: WorldConfig | None = None) -> Scene:
    """Draw a scene from `config` deterministically from `seed`."""
    config = config or WorldConfig()
    rng = np.random.default_rng(seed)
    camera = _sample_camera(rng, config)
    horizon = np.arange(0.0, (config.frames + 1) / config.fps + 1e-9, 0.1)
    cam_path = camera_to_world(camera, horizon)[1]
    in_view = _view_test(camera, horizon[len(horizon) // 2])
    placed: list[tuple[np.ndarray, float]] = []       # (T, 2) footprint centres and radius
    persons = []
    for _ in range(rng.integers(config.persons[0], config.persons[1] + 1)):
        spec = _place(rng, lambda: _sample_person(rng, config, camera, horizon), _person_footprint,
                      placed, cam_path, in_view, horizon)
        if spec is not None:
            persons.append(spec)
    objects = []
    used_colours: set[str] = set()
    for _ in range(rng.integers(config.objects[0], config.objects[1] + 1)):
        obj = _place(rng, lambda: _sample_object(rng, config, used_colours), _object_footprint,
                     placed, cam_path, in_view, horizon)
        if obj is not None:
            objects.append(obj)
            used_colours.add(obj.colour)
    ground_name, a, b = GROUNDS[rng.integers(len(GROUNDS))]
    light_az, light_el = rng.uniform(0, 2 * math.pi), math.radians(rng.uniform(35, 65))
    light = (math.cos(light_el) * math.sin(light_az), math.sin(light_el), math.cos(light_el) * math.cos(light_az))
    top = tuple(np.clip(np.array([0.25, 0.45, 0.85]) + rng.uniform(-0.08, 0.08, 3), 0, 1).tolist())
    horizon_colour = tuple(np.clip(np.array([0.75, 0.85, 0.95]) + rng.uniform(-0.05, 0.05, 3), 0, 1).tolist())
    ground = Ground(ground_name, a, b, float(rng.uniform(0.5, 1.0)), tuple(rng.uniform(0, 10, 2).tolist()))
    return Scene(seed=seed, fps=config.fps, camera=camera, light=light, ground=ground, sky_top=top,
                 sky_horizon=horizon_colour, objects=objects, persons=persons, shadows=config.shadows)


def _sample_camera(rng: np.random.Generator, config: WorldConfig) -> CameraSpec:
    names = list(config.camera_motion)
    probs = np.array([config.camera_motion[n] for n in names], dtype=np.float64)
    motion = names[rng.choice(len(names), p=probs / probs.sum())]
    sign = rng.choice([-1.0, 1.0])
    rate = {"static": 0.0, "pan": sign * rng.uniform(*config.pan_rate),
            "orbit": sign * rng.uniform(*config.orbit_rate)}[motion]
    return CameraSpec(motion=motion, azimuth=float(rng.uniform(0, 360)),
                      distance=float(rng.uniform(*config.camera_distance)),
                      height=float(rng.uniform(*config.camera_height)),
                      target=(0.0, float(rng.uniform(0.4, 0.8)), 0.0), fov=float(rng.uniform(*config.fov)),
                      rate=float(rate))


def _place(rng, draw, footprint, placed, cam_path, in_view, horizon, tries: int = 30):
    """Draw entities until one is in view mid-clip and keeps clear of everything placed so far
    (and of the camera) for the whole clip; None if none does."""
    for _ in range(tries):
        entity = draw()
        path, radius = footprint(entity, horizon)
        if not in_view(path[len(path) // 2]):
            continue
        if np.min(np.linalg.norm(path - cam_path[:, [0, 2]], axis=1)) < radius + 1.2:
            continue
        if all(np.min(np.linalg.norm(path - other, axis=1)) > radius + r + 0.1 for other, r in placed):
            placed.append((path, radius))
            return entity
    return None


def _view_test(camera: CameraSpec, time: float):
    """Whether a ground point (x, z) lies inside the central 85% of the view at `time`, 1.5 m or more away."""
    R, eye = camera_to_world(camera, np.array([time]))
    half_width = math.tan(math.radians(camera.fov) / 2) * 0.85

    def in_view(xz: np.ndarray) -> bool:
        cam = R[0].T @ (np.array([xz[0], 0.5, xz[1]]) - eye[0])
        return bool(cam[2] > 1.5 and abs(cam[0]) < half_width * cam[2])

    return in_view


def _person_footprint(spec: HumanoidSpec, times: np.ndarray) -> tuple[np.ndarray, float]:
    reach = 0.65 if spec.action == "wave" else 0.45
    return spec.root_xz(times)[:, [0, 2]], reach * spec.scale


def _object_footprint(obj: SceneObject, times: np.ndarray) -> tuple[np.ndarray, float]:
    body = obj.body
    path = simulate([body], times, max_dt=1 / 30).centre[:, 0, :][:, [0, 2]]
    if body.kind == "box":
        radius = math.hypot(body.size[0], body.size[2])
    elif body.lying:
        radius = body.size[1] + body.size[0]
    else:
        radius = body.size[0]
    return path, radius


def _random_direction(rng) -> np.ndarray:
    a = rng.uniform(0, 2 * math.pi)
    return np.array([math.sin(a), math.cos(a)])


def _sample_person(rng, config: WorldConfig, camera: CameraSpec, horizon: np.ndarray) -> HumanoidSpec:
    action = config.actions[rng.integers(len(config.actions))]
    speed = {"walk": rng.uniform(1.0, 1.5), "run": rng.uniform(2.4, 3.4)}.get(action, 0.0)
    middle = rng.uniform(-1, 1, 2) * config.scene_radius * 0.6
    if speed > 0:
        heading = rng.uniform(0, 2 * math.pi)
    else:  # standing actions face the camera, give or take 60 degrees
        to_camera = camera.start_position()[[0, 2]] - middle
        heading = math.atan2(to_camera[0], to_camera[1]) + math.radians(rng.uniform(-60, 60))
    forward = np.array([math.sin(heading), math.cos(heading)])
    start = middle - forward * speed * horizon[-1] / 2
    shirt, pants = rng.choice(list(COLOURS), 2, replace=False)
    return HumanoidSpec(action=action, start=(float(start[0]), float(start[1])), heading=float(heading),
                        speed=float(speed), scale=float(rng.uniform(0.9, 1.1)), phase=float(rng.uniform()),
                        shirt=str(shirt), pants=str(pants),
                        skin=SKIN_TONES[rng.integers(len(SKIN_TONES))], hair=HAIR[rng.integers(len(HAIR))],
                        waving_hand=str(rng.choice(["left", "right"])))


def _sample_object(rng, config: WorldConfig, used_colours: set[str]) -> SceneObject:
    kind = config.object_kinds[rng.integers(len(config.object_kinds))]
    free = [c for c in COLOURS if c not in used_colours] or list(COLOURS)
    colour = str(free[rng.integers(len(free))])
    xz = rng.uniform(-1, 1, 2) * config.scene_radius
    while np.hypot(*xz) > config.scene_radius:
        xz = rng.uniform(-1, 1, 2) * config.scene_radius
    xz = [float(v) for v in xz]
    yaw = float(rng.uniform(0, 2 * math.pi))
    if kind == "sphere":
        r = rng.uniform(0.22, 0.45)
        motion = rng.choice(["bounce", "roll", "rest"], p=[0.4, 0.4, 0.2])
        body = RigidBody("sphere", (r,), (xz[0], r, xz[1]), yaw=yaw, pitch=float(rng.uniform(0, math.pi)),
                         restitution=float(rng.uniform(0.55, 0.8)), motion=str(motion))
        if motion == "bounce":
            body.position = (xz[0], float(rng.uniform(0.9, 1.8)), xz[1])
            body.velocity = tuple(np.insert(_random_direction(rng) * rng.uniform(0.0, 0.8), 1, 0.0).tolist())
        elif motion == "roll":
            body.velocity = tuple(np.insert(_random_direction(rng) * rng.uniform(0.8, 2.0), 1, 0.0).tolist())
    elif kind == "box":
        half = tuple(rng.uniform(0.2, 0.45, 3).tolist())
        motion = rng.choice(["slide", "fall", "rest"], p=[0.4, 0.3, 0.3])
        body = RigidBody("box", half, (xz[0], half[1], xz[1]), yaw=yaw, restitution=float(rng.uniform(0.1, 0.3)),
                         friction=float(rng.uniform(0.3, 0.6)), motion=str(motion))
        if motion == "slide":
            body.velocity = tuple(np.insert(_random_direction(rng) * rng.uniform(1.5, 3.0), 1, 0.0).tolist())
            body.yaw_rate = float(rng.uniform(-2.0, 2.0))
        elif motion == "fall":
            body.position = (xz[0], float(rng.uniform(0.8, 1.5)), xz[1])
            body.yaw_rate = float(rng.uniform(-1.5, 1.5))
    else:
        r = rng.uniform(0.18, 0.35) if kind == "cylinder" else rng.uniform(0.15, 0.28)
        h = rng.uniform(0.25, 0.55) if kind == "cylinder" else rng.uniform(0.2, 0.45)
        lying = bool(rng.uniform() < 0.5)
        motion = rng.choice(["roll", "rest"] if lying else ["slide", "fall", "rest"])
        body = RigidBody(kind, (r, h), (xz[0], 0.0, xz[1]), yaw=yaw, lying=lying,
                         restitution=float(rng.uniform(0.2, 0.4)), friction=float(rng.uniform(0.3, 0.6)),
                         motion=str(motion))
        body.position = (xz[0], body.contact_height, xz[1])
        if motion == "roll":  # the lying axis is (-cos yaw, 0, sin yaw): roll along (sin yaw, 0, cos yaw)
            across = np.array([math.sin(yaw), math.cos(yaw)]) * rng.choice([-1, 1])
            body.velocity = tuple(np.insert(across * rng.uniform(0.8, 1.8), 1, 0.0).tolist())
        elif motion == "slide":
            body.velocity = tuple(np.insert(_random_direction(rng) * rng.uniform(1.5, 2.5), 1, 0.0).tolist())
        elif motion == "fall":
            body.position = (xz[0], body.contact_height + float(rng.uniform(0.5, 1.2)), xz[1])
    return SceneObject(body, colour)
