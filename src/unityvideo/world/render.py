"""Render a scene into a `WorldClip`: one vectorised ray cast over all pixels of all frames.

Pipeline: pose every primitive for frames 0..F (one extra frame so the last frame has flow) ->
primary rays (culled per instance by a bounding sphere) -> per-pixel surface attributes in the hit
primitive's local frame (normal, albedo, DensePose) -> shadow rays towards the sun -> Lambertian shading
-> exact forward flow (the local hit point moved with its primitive's pose at t+1 and projected with the
camera at t+1) -> occlusion test against the depth rendered at t+1 -> keypoint visibility.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from unityvideo.world import raycast
from unityvideo.world.camera import camera_to_world, intrinsics, project, world_to_camera
from unityvideo.world.caption import describe_scene
from unityvideo.world.clip import WorldClip
from unityvideo.world.humanoid import HumanoidPose, bounding_sphere, pose_humanoid
from unityvideo.world.physics import Trajectory, simulate
from unityvideo.world.scene import COLOURS, Scene, WorldConfig, clip_seed, sample_scene

F32 = np.float32
SKY, GROUND = -2, -1                  # primitive ids of the background
SHOES = (0.13, 0.12, 0.12)
FLOW_DEPTH_TOLERANCE = (0.02, 0.03)  # relative, absolute (m): occluded if further than depth(t+1) by more
SHADOW_BIAS = 2e-3
FAR_PLANE = 100.0                     # metres of z-depth; the ground beyond is rendered as sky


@dataclass
class _Primitive:
    kind: str
    size: tuple
    rotation: np.ndarray     # (T, 3, 3) float32, local -> world
    centre: np.ndarray       # (T, 3) float32
    instance: int
    material: str            # ball | box | stripes | shirt | pants | skin | shoes | head
    colour: np.ndarray       # (3,) base albedo
    densepose: tuple = ()    # DensePose index(es) for person parts
    hair: np.ndarray | None = None


@dataclass
class _Group:
    """One instance: its primitives and a per-frame bounding sphere used to cull rays."""

    instance: int
    members: list[int]
    centre: np.ndarray       # (T, 3)
    radius: np.ndarray       # (T,)


# ----------------------------------------------------------------------------------------------- scene


def _extent(kind: str, size: tuple) -> float:
    if kind == "sphere":
        return size[0]
    if kind == "capsule":
        return size[0] + size[1]
    return math.sqrt(sum(s * s for s in size))  # box half-diagonal; cylinder hypot(r, h)


def _build_primitives(scene: Scene, traj: Trajectory, poses: list[HumanoidPose]):
    prims: list[_Primitive] = []
    groups: list[_Group] = []
    instances: list[dict] = []
    material = {"sphere": "ball", "box": "box", "cylinder": "stripes", "capsule": "stripes"}
    for i, obj in enumerate(scene.objects):
        body, inst = obj.body, len(instances) + 1
        prims.append(_Primitive(body.kind, body.size, traj.rotation[:, i].astype(F32), traj.centre[:, i].astype(F32),
                                inst, material[body.kind], np.asarray(obj.rgb, F32)))
        T = len(traj.times)
        groups.append(_Group(inst, [len(prims) - 1], prims[-1].centre, np.full(T, _extent(body.kind, body.size), F32)))
        instances.append({"id": inst, "kind": body.kind, "colour": obj.colour, "rgb": _rgb255(obj.rgb)})
    for spec, pose in zip(scene.persons, poses):
        inst = len(instances) + 1
        colours = {"shirt": COLOURS[spec.shirt], "pants": COLOURS[spec.pants], "skin": spec.skin,
                   "shoes": SHOES, "head": spec.skin}
        start = len(prims)
        for part in pose.parts:
            prims.append(_Primitive(part.kind, part.size, part.rotation.astype(F32), part.centre.astype(F32), inst,
                                    part.material, np.asarray(colours[part.material], F32), part.densepose,
                                    np.asarray(spec.hair, F32)))
        centre, radius = bounding_sphere(pose.parts)
        groups.append(_Group(inst, list(range(start, len(prims))), centre.astype(F32), radius.astype(F32)))
        instances.append({"id": inst, "kind": "person", "colour": spec.shirt, "rgb": _rgb255(COLOURS[spec.shirt])})
    return prims, groups, instances


def _rgb255(rgb) -> list[int]:
    return [int(round(255 * c)) for c in rgb]


# ------------------------------------------------------------------------------------------- ray casts


def _to_local(prim: _Primitive, frame: np.ndarray, points: np.ndarray) -> np.ndarray:
    """World points (N, 3) at per-point frames -> the primitive's local frame: R^T (x - c)."""
    return np.einsum("ni,nij->nj", points - prim.centre[frame], prim.rotation[frame])


def _dir_to_local(prim: _Primitive, frame: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    return np.einsum("ni,nij->nj", dirs, prim.rotation[frame])


def _to_world(prim: _Primitive, frame: np.ndarray, local: np.ndarray, translate: bool = True) -> np.ndarray:
    out = np.einsum("nij,nj->ni", prim.rotation[frame], local)
    return out + prim.centre[frame] if translate else out


def _cast_primary(prims, groups, eye: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closest hit per ray: distance (T, P) and primitive id (T, P) (GROUND / SKY for the background)."""
    t_best = raycast.plane_hit(eye[:, None, :], dirs)
    hit = np.where(np.isfinite(t_best), GROUND, SKY).astype(np.int16)
    for group in groups:
        mask = raycast.sphere_hit_mask(eye[:, None, :], dirs, group.centre[:, None, :], group.radius[:, None],
                                       t_max=t_best)
        f, p = np.nonzero(mask)
        if len(f) == 0:
            continue
        d = dirs[f, p]
        for k in group.members:
            prim = prims[k]
            o_local = np.einsum("ni,nij->nj", (eye - prim.centre)[f], prim.rotation[f])
            t = raycast.intersect(prim.kind, prim.size, o_local, _dir_to_local(prim, f, d))
            better = t < t_best[f, p]
            if better.any():
                t_best[f[better], p[better]] = t[better]
                hit[f[better], p[better]] = k
    return t_best, hit


def _shadowed(prims, groups, frame: np.ndarray, origin: np.ndarray, light: np.ndarray) -> np.ndarray:
    """Whether rays from `origin` towards the sun hit any primitive (ground never casts shadows)."""
    shadow = np.zeros(len(origin), dtype=bool)
    for group in groups:
        todo = np.nonzero(~shadow)[0]
        mask = raycast.sphere_hit_mask(origin[todo], light, group.centre[frame[todo]], group.radius[frame[todo]])
        rays = todo[mask]
        if len(rays) == 0:
            continue
        d = np.broadcast_to(light, (len(rays), 3))
        for k in group.members:
            prim = prims[k]
            f = frame[rays]
            t = raycast.intersect(prim.kind, prim.size, _to_local(prim, f, origin[rays]), _dir_to_local(prim, f, d),
                                  t_min=1e-4)
            shadow[rays[np.isfinite(t)]] = True
    return shadow


# -------------------------------------------------------------------------------------------- materials


def _ground_albedo(scene: Scene, points: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Checker tiles, analytically anti-aliased: the edge is blurred over one pixel footprint, so far
    tiles fade to their mean instead of shimmering. Each tile's brightness varies a little."""
    g = scene.ground
    x = (points[:, 0] + g.offset[0]) / g.tile
    z = (points[:, 2] + g.offset[1]) / g.tile
    wave = np.sin(np.pi * x) * np.sin(np.pi * z)
    blur = np.maximum(footprint / g.tile, 1e-3) * np.pi
    checker = 0.5 + 0.5 * np.clip(wave / blur, -1, 1)
    ix, iz = np.floor(x), np.floor(z)
    tile_hash = np.modf(np.abs(np.sin(ix * 12.9898 + iz * 78.233)) * 43758.5453)[0]
    variation = 1.0 + 0.12 * (tile_hash - 0.5) * np.clip(1.5 - blur, 0, 1)
    a, b = np.asarray(g.colour_a, F32), np.asarray(g.colour_b, F32)
    return ((a * checker[:, None] + b * (1 - checker[:, None])) * variation[:, None]).astype(F32)


def _stripes(angle: np.ndarray, count: int) -> np.ndarray:
    return 0.5 + 0.5 * np.clip(3.0 * np.sin(count * angle), -1, 1)


def _object_albedo(prim: _Primitive, local: np.ndarray) -> np.ndarray:
    base = np.broadcast_to(prim.colour, local.shape).astype(F32)
    light = (0.55 * prim.colour + 0.45).astype(F32)
    if prim.material == "ball":   # beach-ball segments: rolling is visible
        mix = 0.8 * _stripes(np.arctan2(local[:, 2], local[:, 0]), 3)
    elif prim.material == "stripes":
        mix = 0.6 * _stripes(np.arctan2(local[:, 2], local[:, 0]), 4)
    elif prim.material == "box":  # darker edges: the box's shape and spin are readable
        gaps = np.sort(np.asarray(prim.size, F32) - np.abs(local), axis=1)[:, 1]
        return (base * (0.6 + 0.4 * np.clip((gaps - 0.015) / 0.03, 0, 1))[:, None]).astype(F32)
    elif prim.material == "head":
        r = prim.size[0]
        hair = (local[:, 1] > 0.3 * r) | ((local[:, 2] < -0.25 * r) & (local[:, 1] > -0.4 * r))
        return np.where(hair[:, None], prim.hair, base).astype(F32)
    else:
        return base
    return (base * (1 - mix[:, None]) + light * mix[:, None]).astype(F32)


def _densepose(prim: _Primitive, local: np.ndarray) -> np.ndarray:
    """(I, U, V) from local surface coordinates (see humanoid.py for the convention)."""
    x, y, z = local[:, 0], local[:, 1], local[:, 2]
    theta = np.arctan2(x, z)
    r = prim.size[0]
    h = prim.size[1] if prim.kind == "capsule" else 0.0
    v = np.clip((h + r - y) / (2 * (h + r)), 0, 1)
    if len(prim.densepose) == 2:
        index = np.where(x < 0, prim.densepose[0], prim.densepose[1])
        u = np.abs(theta) / np.pi
    else:
        index = np.full(len(local), prim.densepose[0])
        u = (theta + np.pi) / (2 * np.pi)
    return np.stack([index.astype(F32), np.clip(u, 0, 1), v], axis=1).astype(F32)


# ----------------------------------------------------------------------------------------------- render


@dataclass
class _Rays:
    """Primary rays of every pixel of frames 0..F (F + 1: the extra frame gives the last one's flow)."""

    K: np.ndarray            # (3, 3) intrinsics
    R_c2w: np.ndarray        # (T, 3, 3)
    eye: np.ndarray          # (T, 3) camera centres
    w2c: np.ndarray          # (T, 4, 4)
    pix: np.ndarray          # (H * W, 2) pixel centres (x, y)
    ray_len: np.ndarray      # (H * W,) length of the camera-space ray through each pixel at z = 1
    dirs: np.ndarray         # (T, H * W, 3) unit world-space directions


def _primary_rays(scene: Scene, times: np.ndarray, H: int, W: int) -> _Rays:
    R_c2w, eye = camera_to_world(scene.camera, times)
    K = intrinsics(scene.camera.fov, H, W)
    rows, cols = np.mgrid[0:H, 0:W]
    pix = np.stack([cols.ravel(), rows.ravel()], axis=1).astype(F32)
    d_cam = np.stack([(pix[:, 0] - K[0, 2]) / K[0, 0], (pix[:, 1] - K[1, 2]) / K[1, 1], np.ones(H * W)], 1)
    ray_len = np.linalg.norm(d_cam, axis=1)
    dirs = np.einsum("pk,tjk->tpj", (d_cam / ray_len[:, None]).astype(F32), R_c2w.astype(F32))
    return _Rays(K, R_c2w, eye, world_to_camera(R_c2w, eye), pix, ray_len, dirs)


def _cast_depth(prims: list[_Primitive], groups: list[_Group], rays: _Rays) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t_hit, hit, depth) per frame and pixel (T, H * W): ray length, primitive id (SKY, GROUND, k)
    and z-depth (inf for sky)."""
    t_hit, hit = _cast_primary(prims, groups, rays.eye.astype(F32), rays.dirs)
    # Far plane: the ground beyond it is sky (it has faded into the horizon haze by then), so every
    # finite depth fits the depth encoding's precision.
    ray_len = rays.ray_len[None].astype(F32)
    beyond = (hit == GROUND) & (t_hit > FAR_PLANE * ray_len)
    t_hit, hit = np.where(beyond, np.inf, t_hit).astype(t_hit.dtype), np.where(beyond, SKY, hit)
    depth = np.where(hit == SKY, np.inf, t_hit / ray_len).astype(F32)
    return t_hit, hit, depth


@dataclass
class _Surfaces:
    """Per-pixel attributes of the surface each ray of frames 0..F-1 hits (N = F * H * W rows)."""

    frame_of: np.ndarray     # (N,) frame index
    t: np.ndarray            # (N,) ray length to the hit
    dirs: np.ndarray         # (N, 3) ray direction
    points: np.ndarray       # (N, 3) world-space hit point (the eye for sky)
    members: dict            # primitive id (SKY, GROUND, k) -> its rows
    normal: np.ndarray       # (N, 3)
    albedo: np.ndarray       # (N, 3)
    target: np.ndarray       # (N, 2) pixel position of the surface point at t+1
    target_z: np.ndarray     # (N,) its camera depth at t+1
    seg: np.ndarray          # (N,) instance id
    dense: np.ndarray        # (N, 3) DensePose (I, U, V)


def _surfaces(scene: Scene, prims: list[_Primitive], rays: _Rays, t_hit: np.ndarray, hit: np.ndarray,
              frames: int) -> _Surfaces:
    P = len(rays.pix)
    N = frames * P
    t_flat, hit_flat = t_hit[:frames].reshape(N), hit[:frames].reshape(N)
    dirs = rays.dirs[:frames].reshape(N, 3)
    frame_of = np.repeat(np.arange(frames), P)
    points = rays.eye.astype(F32)[frame_of] + np.where(np.isfinite(t_flat), t_flat, 0)[:, None] * dirs
    order = np.argsort(hit_flat, kind="stable")
    bounds = np.searchsorted(hit_flat[order], np.arange(SKY, len(prims) + 1))
    members = {k: order[bounds[k - SKY]:bounds[k - SKY + 1]] for k in range(SKY, len(prims))}
    s = _Surfaces(frame_of, t_flat, dirs, points, members, normal=np.zeros((N, 3), F32),
                  albedo=np.zeros((N, 3), F32), target=np.zeros((N, 2), F32), target_z=np.full(N, np.inf, F32),
                  seg=np.zeros(N, np.uint8), dense=np.zeros((N, 3), F32))
    _sky_surface(scene, rays, s, members[SKY])
    _ground_surface(scene, rays, s, members[GROUND])
    for k, prim in enumerate(prims):
        _primitive_surface(prim, rays, s, members[k])
    return s


def _sky_surface(scene: Scene, rays: _Rays, s: _Surfaces, idx: np.ndarray) -> None:
    if not len(idx):
        return
    up = np.clip(s.dirs[idx, 1], 0, 1)[:, None] ** 0.6
    s.albedo[idx] = (1 - up) * np.asarray(scene.sky_horizon, F32) + up * np.asarray(scene.sky_top, F32)
    # a point at infinity moves only with the camera's rotation
    cam = np.einsum("nij,nj->ni", rays.w2c[s.frame_of[idx] + 1, :3, :3], s.dirs[idx])
    ok = cam[:, 2] > 1e-6
    z = np.where(ok, cam[:, 2], 1.0)
    K = rays.K
    s.target[idx] = np.stack([K[0, 0] * cam[:, 0] / z + K[0, 2], K[1, 1] * cam[:, 1] / z + K[1, 2]], 1)
    s.target_z[idx] = np.where(ok, np.inf, -1.0)


def _ground_surface(scene: Scene, rays: _Rays, s: _Surfaces, idx: np.ndarray) -> None:
    if not len(idx):
        return
    s.normal[idx] = (0, 1, 0)
    footprint = s.t[idx] / rays.K[0, 0] / np.maximum(-s.dirs[idx, 1], 0.08)
    s.albedo[idx] = _ground_albedo(scene, s.points[idx], footprint)
    s.target[idx], s.target_z[idx] = project(s.points[idx].astype(np.float64), rays.w2c[s.frame_of[idx] + 1], rays.K)


def _primitive_surface(prim: _Primitive, rays: _Rays, s: _Surfaces, idx: np.ndarray) -> None:
    if not len(idx):
        return
    f = s.frame_of[idx]
    local = _to_local(prim, f, s.points[idx])
    s.normal[idx] = _to_world(prim, f, raycast.normal(prim.kind, prim.size, local), translate=False)
    s.albedo[idx] = _object_albedo(prim, local)
    s.seg[idx] = prim.instance
    if prim.densepose:
        s.dense[idx] = _densepose(prim, local)
    moved = _to_world(prim, f + 1, local)
    s.target[idx], s.target_z[idx] = project(moved.astype(np.float64), rays.w2c[f + 1], rays.K)


def _shade(scene: Scene, prims: list[_Primitive], groups: list[_Group], s: _Surfaces) -> np.ndarray:
    """uint8 (N, 3) colours: ambient + Lambertian sun light with cast shadows; sky as is; far ground hazed."""
    sky, ground = s.members[SKY], s.members[GROUND]
    light = np.asarray(scene.light, F32)
    lambert = np.clip(s.normal @ light, 0, None)
    lambert[sky] = 0
    if scene.shadows:
        lit = np.nonzero(lambert > 0)[0]
        blocked = _shadowed(prims, groups, s.frame_of[lit], s.points[lit] + SHADOW_BIAS * s.normal[lit], light)
        lambert[lit[blocked]] = 0
    shade = 0.40 * (0.85 + 0.15 * s.normal[:, 1]) + 0.72 * lambert
    colour = s.albedo * shade[:, None]
    colour[sky] = s.albedo[sky]
    if len(ground):  # aerial perspective: the far ground fades into the horizon
        haze = (1 - np.exp(-s.t[ground] / 60.0))[:, None]
        colour[ground] = colour[ground] * (1 - haze) + np.asarray(scene.sky_horizon, F32) * haze
    return np.clip(np.round(colour * 255), 0, 255).astype(np.uint8)


def render_clip(scene: Scene, frames: int, size: tuple[int, int] = (64, 64), fps: float | None = None) -> WorldClip:
    """Render `frames` frames of `scene` at `size` = (H, W) and `fps` (default: the scene's)."""
    if frames < 1:
        raise ValueError(f"render_clip: frames must be >= 1, got {frames}")
    H, W = int(size[0]), int(size[1])
    if H < 2 or W < 2:
        raise ValueError(f"render_clip: size must be at least (2, 2), got {size}")
    fps = float(fps or scene.fps)
    times = np.arange(frames + 1) / fps
    rays = _primary_rays(scene, times, H, W)
    traj = simulate([o.body for o in scene.objects], times, max_dt=1 / 60)
    poses = [pose_humanoid(p, times) for p in scene.persons]
    prims, groups, instances = _build_primitives(scene, traj, poses)
    t_hit, hit, depth_all = _cast_depth(prims, groups, rays)
    s = _surfaces(scene, prims, rays, t_hit, hit, frames)
    rgb = _shade(scene, prims, groups, s)

    flow = s.target - rays.pix[np.tile(np.arange(H * W), frames)]
    valid = _flow_valid(s.target, s.target_z, s.frame_of, depth_all, H, W)
    person_ids = [g.instance for g in groups[len(scene.objects):]]
    depth = depth_all[:frames].reshape(frames, H, W)
    skeleton = _keypoints(poses, rays.w2c, rays.K, s.seg.reshape(frames, H, W), depth, person_ids)
    return WorldClip(
        rgb=rgb.reshape(frames, H, W, 3),
        depth=depth,
        flow=flow.reshape(frames, H, W, 2).astype(F32),
        flow_valid=valid.reshape(frames, H, W),
        segmentation=s.seg.reshape(frames, H, W),
        skeleton=skeleton,
        densepose=s.dense.reshape(frames, H, W, 3),
        caption=describe_scene(scene, traj, rays.R_c2w, rays.eye),
        instances=instances,
        person_ids=person_ids,
        intrinsics=rays.K.astype(F32),
        world_to_camera=rays.w2c[:frames].astype(F32),
        meta=_meta(scene, traj, fps, frames),
    )


def _flow_valid(target, target_z, frame_of, depth_all, H, W) -> np.ndarray:
    """In frame at t+1, in front of the camera, and not behind the surface rendered there at t+1."""
    x, y = target[:, 0], target[:, 1]
    inside = (x >= -0.5) & (x < W - 0.5) & (y >= -0.5) & (y < H - 0.5) & (target_z > 0)
    col = np.clip(np.floor(x + 0.5), 0, W - 1).astype(np.int64)
    row = np.clip(np.floor(y + 0.5), 0, H - 1).astype(np.int64)
    seen = depth_all[frame_of + 1, row * W + col]
    rel, abs_ = FLOW_DEPTH_TOLERANCE
    with np.errstate(invalid="ignore"):
        return inside & (target_z <= seen * (1 + rel) + abs_)


def _keypoints(poses, w2c, K, seg, depth, person_ids) -> np.ndarray:
    """(F, P, 17, 3) COCO (x, y, v); v = 2 if the keypoint's pixel shows this person at a depth
    consistent with the keypoint, 1 if in frame but hidden, 0 (and x = y = 0) outside the frame."""
    frames, H, W = seg.shape
    out = np.zeros((frames, len(poses), 17, 3), F32)
    for p, (pose, pid) in enumerate(zip(poses, person_ids)):
        xy, z = project(pose.keypoints[:frames], w2c[:frames, None], K)
        x, y = xy[..., 0], xy[..., 1]
        inside = (z > 0) & (x >= -0.5) & (x < W - 0.5) & (y >= -0.5) & (y < H - 0.5)
        col = np.clip(np.floor(x + 0.5), 0, W - 1).astype(np.int64)
        row = np.clip(np.floor(y + 0.5), 0, H - 1).astype(np.int64)
        f = np.arange(frames)[:, None]
        visible = inside & (seg[f, row, col] == pid) & (z <= depth[f, row, col] + pose.keypoint_slack[None])
        v = np.where(visible, 2, np.where(inside, 1, 0))
        out[:, p] = np.stack([np.where(inside, x, 0), np.where(inside, y, 0), v], -1)
    return out


def _meta(scene: Scene, traj: Trajectory, fps: float, frames: int) -> dict:
    """JSON-friendly scene facts: seed, timing, camera, actions and the objects' physics traces."""
    cam = scene.camera
    return {
        "seed": int(scene.seed), "fps": fps, "frames": frames,
        "camera": {"motion": cam.motion, "rate_deg_s": cam.rate, "fov": cam.fov, "height": cam.height,
                   "distance": cam.distance},
        "light": list(scene.light),
        "actions": [p.action for p in scene.persons],
        "persons": [{"action": p.action, "heading": p.heading, "speed": p.speed, "shirt": p.shirt, "pants": p.pants}
                    for p in scene.persons],
        "objects": [{"kind": o.body.kind, "colour": o.colour, "motion": o.body.motion,
                     "centre": traj.centre[:frames, i].round(5).tolist(),
                     "bounces": [round(b, 5) for b in traj.bounces[i]]} for i, o in enumerate(scene.objects)],
    }


def generate_clip(base_seed: int, split: str, index: int, frames: int = 16, size: tuple[int, int] = (64, 64),
                  fps: float | None = None, config: WorldConfig | None = None) -> WorldClip:
    """Sample the scene of clip `index` of `split` and render it. A pure function of its arguments."""
    config = config or WorldConfig()
    fps = float(fps or config.fps)
    if (fps, frames) != (config.fps, config.frames):  # keep entities apart over the clip actually rendered
        config = replace(config, fps=fps, frames=frames)
    scene = sample_scene(clip_seed(base_seed, split, index), config)
    return render_clip(scene, frames, size, fps)
