"""Registry of the streams UnityVideo learns: RGB and five visual sub-modalities.

Every modality turns its raw ground truth (the `WorldClip` arrays, see CONTRACT) into an RGB-like
uint8 video that a video VAE can encode, and back. The encodings are chosen so that a round trip
through a lossless video file is (near-)exact and a model's imperfect output still decodes:

    depth         grey disparity near/depth, sub-LSB offsets across R, G, B (1/765 steps); sky = 0
    flow          R, G = 128 + 127.5 * clip(dx|dy / max_flow, -1, 1), B = 128;
                  max_flow defaults to max(H, W) / 8 pixels
    segmentation  fixed 64-colour palette on the {0, 85, 170, 255}^3 grid, id 0 = black
    skeleton      COCO-17 limbs as lines (dim colours), then joints as discs (bright colours);
                  decoded by joining joint blobs along the skeleton graph
    densepose     R = 10 * I, G = 255 * U, B = 255 * V

Every encode/decode/visualize accepts extra keyword hints and ignores those it does not use, so a
caller may pass the same hints (near=, max_flow=, size=, persons=) to every modality.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "Modality", "MODALITIES", "MODALITY_NAMES", "STAGE1_MODALITIES", "STREAM_NAMES",
    "get_modality", "canonical_name", "depth_near", "default_max_flow", "skeleton_radius",
    "SEGMENTATION_PALETTE", "SKELETON_JOINT_COLOURS", "SKELETON_LIMB_COLOURS", "COCO_LIMBS",
    "flow_to_colour",
]

RawArray = np.ndarray
Frames = np.ndarray  # uint8 (F, H, W, 3)


# ----------------------------------------------------------------------------- helpers

def _check_frames(frames: Any, modality: str) -> Frames:
    """Validate a uint8 (F, H, W, 3) video; the error says what to pass instead."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise TypeError(f"{modality}.decode expects uint8 frames (F, H, W, 3), got dtype {frames.dtype}; "
                        "convert model output with ((x + 1) * 127.5).round().clip(0, 255).astype(np.uint8)")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{modality}.decode expects frames shaped (F, H, W, 3), got {frames.shape}")
    return frames


def _check_raw(raw: Any, ndim: int, last: int | None, modality: str, layout: str) -> np.ndarray:
    raw = np.asarray(raw)
    if raw.ndim != ndim or (last is not None and raw.shape[-1] != last):
        raise ValueError(f"{modality}.encode expects raw {layout}, got shape {raw.shape}")
    return raw


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _grid_palette_index(frames: Frames) -> np.ndarray:
    """Index 0..63 of the nearest colour on the {0, 85, 170, 255}^3 grid (exact nearest neighbour:
    on a product grid the Euclidean nearest point is the per-channel nearest level)."""
    levels = np.clip((frames.astype(np.uint16) + 42) // 85, 0, 3)
    return (levels[..., 0] * 16 + levels[..., 1] * 4 + levels[..., 2]).astype(np.int64)


def _grid_colour(index: int) -> tuple[int, int, int]:
    return (85 * (index // 16), 85 * (index // 4 % 4), 85 * (index % 4))


def _grid_index(colour: tuple[int, int, int]) -> int:
    r, g, b = (c // 85 for c in colour)
    return r * 16 + g * 4 + b


def _mode(labels: np.ndarray, classes: int, skip: int | None = None) -> np.ndarray:
    """Per-position most frequent label over axis 0 (K samples); ties go to the lowest label,
    which is the background (0) in every categorical encoding here. `skip`: a label that never
    wins (where every vote is for it, the result is label 0)."""
    flat = labels.reshape(len(labels), -1)
    counts = np.zeros((flat.shape[1], classes), np.int32)
    rows = np.arange(flat.shape[1])
    for sample in flat:
        counts[rows, sample] += 1
    if skip is not None:
        counts[:, skip] = -1
    return counts.argmax(axis=1).reshape(labels.shape[1:])


def _combine_median(samples: np.ndarray) -> Frames:
    """Continuous encodings: the per-pixel, per-channel median of the samples."""
    return _to_uint8(np.median(samples.astype(np.float32), axis=0))


def _combine_medoid(samples: np.ndarray) -> Frames:
    """Palette pictures (segmentation, skeleton): the sample whose colours disagree least with the
    others'. A per-pixel vote would mix instances that two samples colour differently (instance
    colours are arbitrary) and erase joint discs and limbs that the samples draw a pixel apart."""
    classes = _grid_palette_index(samples).reshape(len(samples), -1)
    disagreement = [(classes != classes[k]).sum() for k in range(len(samples))]
    return samples[int(np.argmin(disagreement))]


def _farthest_point_order(candidates: list[tuple[int, int, int]],
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


# ----------------------------------------------------------------------------- rgb

def _encode_rgb(raw: RawArray, **_: Any) -> Frames:
    raw = _check_raw(raw, 4, 3, "rgb", "uint8 (F, H, W, 3)")
    if raw.dtype != np.uint8:
        raise TypeError(f"rgb.encode expects uint8 frames, got dtype {raw.dtype}")
    return raw


def _decode_rgb(frames: Frames, **_: Any) -> RawArray:
    return _check_frames(frames, "rgb")


# ----------------------------------------------------------------------------- depth

def depth_near(depth: np.ndarray) -> float:
    """The clip's smallest finite positive depth (the `near` hint of the depth encoding); 1.0 if none."""
    depth = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    return float(depth[valid].min()) if valid.any() else 1.0


def _encode_depth(raw: RawArray, near: float | None = None, **_: Any) -> Frames:
    depth = _check_raw(raw, 3, None, "depth", "float (F, H, W) metres, +inf for sky").astype(np.float64)
    near = depth_near(depth) if near is None else float(near)
    if not near > 0:
        raise ValueError(f"depth.encode: near must be > 0, got {near}")
    valid = np.isfinite(depth) & (depth > 0)
    disparity = np.where(valid, near / np.where(valid, depth, 1.0), 0.0).clip(0.0, 1.0)
    # Channel k holds round(255 s + k/3 - 1/3); by Hermite's identity the channel sum is round(765 s).
    offsets = np.array([-1.0, 0.0, 1.0]) / 3.0
    return _to_uint8(255.0 * disparity[..., None] + offsets)


def _decode_depth(frames: Frames, near: float | None = 1.0, **_: Any) -> RawArray:
    frames = _check_frames(frames, "depth")
    near = 1.0 if near is None else float(near)
    total = frames.astype(np.float32).sum(axis=-1)  # = round(765 * near / depth)
    with np.errstate(divide="ignore"):
        depth = np.where(total > 0, near * 765.0 / np.maximum(total, 1e-6), np.inf)
    return depth.astype(np.float32)


def _visualize_depth(raw: RawArray, near: float | None = None, **_: Any) -> Frames:
    """Disparity through matplotlib's inferno (near = bright); sky is black."""
    from matplotlib import colormaps  # lazy: matplotlib is slow to import

    depth = np.asarray(raw, dtype=np.float64)
    near = depth_near(depth) if near is None else float(near)
    valid = np.isfinite(depth) & (depth > 0)
    disparity = np.where(valid, near / np.where(valid, depth, 1.0), 0.0).clip(0.0, 1.0)
    lut = _to_uint8(colormaps["inferno"](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0)
    image = lut[np.rint(disparity * 255).astype(np.int64)]
    image[~valid] = 0
    return image


# ----------------------------------------------------------------------------- flow

def default_max_flow(height: int, width: int) -> float:
    """Default flow range of the encoding: max(H, W) / 8 pixels (larger flows saturate)."""
    return max(height, width) / 8.0


def _encode_flow(raw: RawArray, max_flow: float | None = None, **_: Any) -> Frames:
    flow = _check_raw(raw, 4, 2, "flow", "float (F, H, W, 2) pixels (dx, dy)").astype(np.float64)
    max_flow = default_max_flow(*flow.shape[1:3]) if max_flow is None else float(max_flow)
    scaled = np.nan_to_num(flow / max_flow, nan=0.0).clip(-1.0, 1.0)
    blue = np.full(flow.shape[:-1] + (1,), 128.0)
    return _to_uint8(np.concatenate([128.0 + 127.5 * scaled, blue], axis=-1))


def _decode_flow(frames: Frames, max_flow: float | None = None, **_: Any) -> RawArray:
    frames = _check_frames(frames, "flow")
    max_flow = default_max_flow(*frames.shape[1:3]) if max_flow is None else float(max_flow)
    unit = ((frames[..., :2].astype(np.float32) - 128.0) / 127.5).clip(-1.0, 1.0)
    return (unit * max_flow).astype(np.float32)


def _colour_wheel() -> np.ndarray:
    """The Middlebury flow colour wheel (Baker et al. 2011): 55 hues, red->yellow->...->magenta."""
    stops = [((255, 0, 0), (255, 255, 0), 15), ((255, 255, 0), (0, 255, 0), 6),
             ((0, 255, 0), (0, 255, 255), 4), ((0, 255, 255), (0, 0, 255), 11),
             ((0, 0, 255), (255, 0, 255), 13), ((255, 0, 255), (255, 0, 0), 6)]
    rows = []
    for start, end, n in stops:
        steps = np.arange(n)[:, None] / n
        rows.append(np.array(start, float) + steps * (np.array(end, float) - np.array(start, float)))
    return np.concatenate(rows) / 255.0


def flow_to_colour(flow: np.ndarray, max_radius: float | None = None) -> Frames:
    """Colour-code flow (..., H, W, 2): hue = direction, saturation = magnitude / max_radius
    (default: the largest magnitude present); magnitudes beyond max_radius are dimmed."""
    flow = np.nan_to_num(np.asarray(flow, dtype=np.float64))
    u, v = flow[..., 0], flow[..., 1]
    magnitude = np.hypot(u, v)
    if max_radius is None:
        max_radius = float(magnitude.max())
    radius = magnitude / max(max_radius, 1e-9)
    wheel = _colour_wheel()
    n = len(wheel)
    position = (np.arctan2(-v, -u) / np.pi + 1.0) / 2.0 * (n - 1)
    k0 = np.floor(position).astype(np.int64) % n
    k1 = (k0 + 1) % n
    frac = (position - np.floor(position))[..., None]
    colour = (1 - frac) * wheel[k0] + frac * wheel[k1]
    inside = (radius <= 1.0)[..., None]
    colour = np.where(inside, 1.0 - radius[..., None] * (1.0 - colour), colour * 0.75)
    return _to_uint8(colour * 255.0)


def _visualize_flow(raw: RawArray, max_flow: float | None = None, **_: Any) -> Frames:
    return flow_to_colour(raw, max_flow)


# ----------------------------------------------------------------------------- segmentation

def _segmentation_palette() -> np.ndarray:
    """64 colours on the {0, 85, 170, 255}^3 grid (pairwise distance >= 85): black for the
    background, then vivid hues for the first instances, then the rest in max-min order."""
    vivid = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
             (255, 170, 0), (170, 0, 255), (0, 255, 170), (255, 0, 170), (170, 255, 0), (0, 170, 255)]
    used = {(0, 0, 0), *vivid}
    rest = [_grid_colour(i) for i in range(64) if _grid_colour(i) not in used]
    return np.array([(0, 0, 0), *vivid, *_farthest_point_order(rest, [(0, 0, 0), *vivid])], np.uint8)


SEGMENTATION_PALETTE = _segmentation_palette()
_SEGMENTATION_LUT = np.zeros(64, np.uint8)  # grid index -> instance id
_SEGMENTATION_LUT[[_grid_index(tuple(int(c) for c in col)) for col in SEGMENTATION_PALETTE]] = np.arange(64)


def _encode_segmentation(raw: RawArray, **_: Any) -> Frames:
    ids = _check_raw(raw, 3, None, "segmentation", "integer ids (F, H, W)")
    if ids.size and (ids.min() < 0 or ids.max() >= len(SEGMENTATION_PALETTE)):
        raise ValueError(f"segmentation.encode: instance ids must lie in 0..{len(SEGMENTATION_PALETTE) - 1}, "
                         f"got {ids.min()}..{ids.max()}; renumber instances per clip")
    return SEGMENTATION_PALETTE[ids.astype(np.int64)]


def _decode_segmentation(frames: Frames, **_: Any) -> RawArray:
    return _SEGMENTATION_LUT[_grid_palette_index(_check_frames(frames, "segmentation"))]


# ----------------------------------------------------------------------------- skeleton

COCO_JOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
               "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
               "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")
COCO_LIMBS = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
              (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))

# Joints are bright (a channel at 255), limbs dim (max channel 170): all 36 + black lie on the
# 85-step grid, so any two are >= 85 apart and a pixel is classified by per-channel rounding.
_BRIGHT = [_grid_colour(i) for i in range(64) if max(_grid_colour(i)) == 255 and _grid_colour(i) != (255, 255, 255)]
SKELETON_JOINT_COLOURS = np.array(_farthest_point_order(_BRIGHT, [(0, 0, 0), (255, 255, 255)])[:17], np.uint8)
SKELETON_LIMB_COLOURS = np.array([_grid_colour(i) for i in range(64) if max(_grid_colour(i)) == 170], np.uint8)
assert len(SKELETON_LIMB_COLOURS) == len(COCO_LIMBS)

# Pixel classes of the skeleton picture: -1 background, 0..16 joints, 17 unknown colour, 18.. limbs.
_SKELETON_BACKGROUND, _SKELETON_OTHER, _SKELETON_LIMB0 = -1, 17, 18
_SKELETON_LUT = np.full(64, _SKELETON_OTHER, np.int64)  # grid index -> pixel class
_SKELETON_LUT[0] = _SKELETON_BACKGROUND
for _j, _colour in enumerate(SKELETON_JOINT_COLOURS):
    _SKELETON_LUT[_grid_index(tuple(int(c) for c in _colour))] = _j
for _l, _colour in enumerate(SKELETON_LIMB_COLOURS):
    _SKELETON_LUT[_grid_index(tuple(int(c) for c in _colour))] = _SKELETON_LIMB0 + _l
_IN_FRAME = np.zeros((3, 3, 3), bool)  # 8-connectivity inside a frame, none across frames
_IN_FRAME[1] = True


def skeleton_radius(height: int, width: int) -> int:
    """Joint disc radius of the skeleton encoding: max(1, round(min(H, W) / 64)), halves rounded up."""
    return max(1, int(np.floor(min(height, width) / 64 + 0.5)))


# The five face joints lie a few pixels apart at small sizes, so they are drawn one radius smaller
# (a single pixel at radius 1), last, and the nose last of all: otherwise their discs cover each other.
SKELETON_FACE_JOINTS = (0, 1, 2, 3, 4)


def _joint_radius(joint: int, radius: int) -> int:
    return radius - 1 if joint in SKELETON_FACE_JOINTS else radius


def _disc_offsets(radius: float) -> np.ndarray:
    """Integer (dy, dx) offsets of a filled disc: dx^2 + dy^2 <= radius^2."""
    span = int(np.floor(radius))
    dy, dx = np.mgrid[-span:span + 1, -span:span + 1]
    keep = dy ** 2 + dx ** 2 <= radius ** 2 + 1e-9
    return np.stack([dy[keep], dx[keep]], axis=1)


def _stamp(canvas: np.ndarray, frame: np.ndarray, centres_yx: np.ndarray, colours: np.ndarray,
           radius: float) -> None:
    """Paint a disc of `radius` at each rounded centre (frame index, (y, x), colour) in order;
    later stamps overwrite earlier ones (numpy keeps the last write of repeated indices)."""
    if len(centres_yx) == 0:
        return
    offsets = _disc_offsets(radius)
    centre = np.rint(centres_yx).astype(np.int64)
    rows = (centre[:, None, 0] + offsets[None, :, 0]).ravel()
    cols = (centre[:, None, 1] + offsets[None, :, 1]).ravel()
    frames = np.repeat(frame, len(offsets))
    paint = np.repeat(colours, len(offsets), axis=0)
    _, height, width, _ = canvas.shape
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    canvas[frames[inside], rows[inside], cols[inside]] = paint[inside]


def _limb_samples(skeleton: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points every 1/2 pixel along every drawable limb (both ends v >= 1): frame, (y, x), colour."""
    frames, people, limbs = np.nonzero(
        (skeleton[:, :, [a for a, _ in COCO_LIMBS], 2] >= 1) & (skeleton[:, :, [b for _, b in COCO_LIMBS], 2] >= 1))
    start = skeleton[frames, people, np.array([a for a, _ in COCO_LIMBS])[limbs], :2]
    end = skeleton[frames, people, np.array([b for _, b in COCO_LIMBS])[limbs], :2]
    steps = np.ceil(np.linalg.norm(end - start, axis=1) * 2).astype(np.int64) + 1
    owner = np.repeat(np.arange(len(limbs)), steps)
    first = np.cumsum(steps) - steps
    fraction = (np.arange(steps.sum()) - first[owner]) / np.maximum(steps[owner] - 1, 1)
    xy = start[owner] + fraction[:, None] * (end[owner] - start[owner])
    return frames[owner], xy[:, ::-1], SKELETON_LIMB_COLOURS[limbs[owner]]


def _encode_skeleton(raw: RawArray, size: tuple[int, int] | None = None, **_: Any) -> Frames:
    skeleton = _check_raw(raw, 4, 3, "skeleton", "float (F, P, 17, 3) keypoints (x, y, v)").astype(np.float64)
    if skeleton.shape[2] != 17:
        raise ValueError(f"skeleton.encode expects 17 COCO joints per person, got {skeleton.shape[2]}")
    if size is None:
        raise ValueError("skeleton.encode needs the frame size: pass size=(H, W)")
    height, width = int(size[0]), int(size[1])
    skeleton = np.nan_to_num(skeleton, nan=0.0, posinf=-1e6, neginf=-1e6).clip(-1e6, 1e6)
    radius = skeleton_radius(height, width)
    canvas = np.zeros((skeleton.shape[0], height, width, 3), np.uint8)
    # Limbs first (a line = a dense row of small discs), then the body joints, then the face joints.
    _stamp(canvas, *_limb_samples(skeleton), radius=max(0.5, radius / 2))
    body = [j for j in range(17) if j not in SKELETON_FACE_JOINTS]
    for joints in (body, *([j] for j in reversed(SKELETON_FACE_JOINTS))):
        frames, people, which = np.nonzero(skeleton[:, :, joints, 2] >= 1)
        kinds = np.asarray(joints)[which]
        _stamp(canvas, frames, skeleton[frames, people, kinds, 1::-1], SKELETON_JOINT_COLOURS[kinds],
               _joint_radius(joints[0], radius))
    return canvas


def _label_classes(classes: np.ndarray, wanted: range) -> tuple[np.ndarray, np.ndarray]:
    """One id map of the 8-connected blobs of every class in `wanted` (ids global over classes and
    frames, 0 = none) and the class of each id."""
    ids = np.zeros(classes.shape, np.int64)
    kinds = [-1]
    for kind in wanted:
        labels, count = ndimage.label(classes == kind, structure=_IN_FRAME)
        ids[labels > 0] = labels[labels > 0] + len(kinds) - 1
        kinds += [kind] * count
    return ids, np.array(kinds)


def _touching(ids_a: np.ndarray, ids_b: np.ndarray) -> np.ndarray:
    """Unique (a, b) id pairs of blobs in `ids_a` that touch blobs in `ids_b` (3x3 neighbourhood),
    with the number of touching pixels; sorted by that count, largest first."""
    grown = ndimage.maximum_filter(ids_a, size=(1, 3, 3))
    where = (grown > 0) & (ids_b > 0) & (grown != ids_b)
    if not where.any():
        return np.zeros((0, 3), np.int64)
    pairs, counts = np.unique(np.stack([grown[where], ids_b[where]], 1), axis=0, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return np.concatenate([pairs[order], counts[order, None]], axis=1)


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        self.parent[self.find(i)] = self.find(j)


def _decode_skeleton(frames: Frames, persons: int | None = None, **_: Any) -> RawArray:
    """Skeleton picture -> keypoints (F, P, 17, 3), persons sorted by mean x, missing joints (0, 0, 0).

    Each joint is a blob of its colour; blobs are joined into persons along the skeleton graph (a
    limb-coloured line touching both end joints, or the two joint discs touching), and left-over
    fragments join the nearest person of the same non-black region that lacks their joints. So
    persons whose drawings touch stay apart. Joint = centroid of its blob (plus nearby pieces of the
    same colour, when another disc cut it); tiny blobs and regions are dropped as noise.
    """
    frames = _check_frames(frames, "skeleton")
    n_frames, height, width, _ = frames.shape
    radius = skeleton_radius(height, width)
    disc_area = len(_disc_offsets(radius))
    classes = _SKELETON_LUT[_grid_palette_index(frames)]
    regions, n_regions = ndimage.label(classes != _SKELETON_BACKGROUND, structure=_IN_FRAME)
    # Small thresholds: nearest-neighbour downscaling may leave only a few pixels of a disc.
    region_ok = np.bincount(regions.ravel(), minlength=n_regions + 1) >= max(2, disc_area // 4)
    region_ok[0] = False

    joint_ids, joint_kind = _label_classes(classes, range(17))
    n_blobs = len(joint_kind)
    f_idx, rows, cols = np.nonzero(joint_ids)
    blob = joint_ids[f_idx, rows, cols]
    count = np.bincount(blob, minlength=n_blobs)
    centre_x = np.bincount(blob, weights=cols, minlength=n_blobs) / np.maximum(count, 1)
    centre_y = np.bincount(blob, weights=rows, minlength=n_blobs) / np.maximum(count, 1)
    blob_frame = np.zeros(n_blobs, np.int64)
    blob_frame[blob] = f_idx
    blob_region = np.zeros(n_blobs, np.int64)
    blob_region[blob] = regions[f_idx, rows, cols]
    order = np.argsort(blob, kind="stable")
    blob_pixels = np.split(np.stack([rows, cols], 1)[order], np.cumsum(count)[:-1])  # (y, x) per blob
    valid = (count >= max(1, disc_area // 8)) & region_ok[blob_region]
    valid[0] = False

    # Join joint blobs along the skeleton graph.
    groups = _UnionFind(n_blobs)
    limb_ends = {frozenset(limb): True for limb in COCO_LIMBS}
    for a, b, _count in _touching(joint_ids, joint_ids):
        if valid[a] and valid[b] and frozenset((joint_kind[a], joint_kind[b])) in limb_ends:
            groups.union(int(a), int(b))
    limb_ids, limb_kind = _label_classes(classes, range(_SKELETON_LIMB0, _SKELETON_LIMB0 + len(COCO_LIMBS)))
    best_end: dict[tuple[int, int], int] = {}  # (limb blob, joint kind) -> the joint blob it touches most
    for line, joint, _count in _touching(limb_ids, joint_ids):
        ends = COCO_LIMBS[limb_kind[line] - _SKELETON_LIMB0]
        if valid[joint] and joint_kind[joint] in ends:
            best_end.setdefault((int(line), int(joint_kind[joint])), int(joint))
    for (line, kind), joint in best_end.items():
        other = [j for (l2, k2), j in best_end.items() if l2 == line and k2 != kind]
        if other:
            groups.union(joint, other[0])

    members: dict[int, list[int]] = {}
    for b in np.nonzero(valid)[0]:
        members.setdefault(groups.find(int(b)), []).append(int(b))
    people = _merge_fragments(list(members.values()), joint_kind, blob_region, centre_x, centre_y)

    people_per_frame: list[list[np.ndarray]] = [[] for _ in range(n_frames)]
    for group in people:
        person = np.zeros((17, 3), np.float32)
        for kind in set(int(joint_kind[b]) for b in group):
            pieces = [b for b in group if joint_kind[b] == kind]
            main = max(pieces, key=lambda b: count[b])
            near = [b for b in pieces if np.hypot(centre_x[b] - centre_x[main], centre_y[b] - centre_y[main]) <= 2 * radius + 1]
            weight = count[near]
            centroid = (np.dot(weight, centre_y[near]) / weight.sum(), np.dot(weight, centre_x[near]) / weight.sum())
            pixels = np.concatenate([blob_pixels[b] for b in near])
            y, x = _disc_centre(classes[blob_frame[main]], pixels, _joint_radius(kind, radius), centroid)
            person[kind] = (x, y, 2.0)
        people_per_frame[blob_frame[group[0]]].append(person)
    most = max((len(p) for p in people_per_frame), default=0)
    n_persons = most if persons is None else int(persons)
    out = np.zeros((n_frames, n_persons, 17, 3), np.float32)
    for f, found in enumerate(people_per_frame):
        found.sort(key=lambda p: float(p[p[:, 2] > 0, 0].mean()))
        for p, person in enumerate(found[:n_persons]):
            out[f, p] = person
    return out


def _disc_centre(classes: np.ndarray, pixels: np.ndarray, radius: int,
                 centroid: tuple[float, float]) -> tuple[float, float]:
    """Where a joint disc was stamped, from its visible pixels (y, x) in one frame's class map.

    A centroid is pulled off-centre when a later disc covers part of this one. Instead, take the
    integer centres whose disc contains every visible pixel and whose other disc pixels are all
    outside the frame or painted by a joint (joints are drawn last, so only joints can cover one);
    the nearest such centre to the centroid wins. A noisy picture with no such centre keeps the
    centroid.
    """
    offsets = _disc_offsets(radius)
    low, high = pixels.max(0) - radius, pixels.min(0) + radius
    if (low > high).any():  # wider than one disc: pieces of two joints
        return centroid
    cy, cx = np.mgrid[low[0]:high[0] + 1, low[1]:high[1] + 1]
    centres = np.stack([cy.ravel(), cx.ravel()], 1)
    reach = np.abs(pixels[None, :, :] - centres[:, None, :])
    covers = ((reach ** 2).sum(-1) <= radius ** 2 + 1e-9).all(1)
    disc = centres[:, None, :] + offsets[None, :, :]
    height, width = classes.shape
    inside = (disc[..., 0] >= 0) & (disc[..., 0] < height) & (disc[..., 1] >= 0) & (disc[..., 1] < width)
    painted = classes[disc[..., 0].clip(0, height - 1), disc[..., 1].clip(0, width - 1)]
    explained = (~inside | ((painted >= 0) & (painted < 17))).all(1)
    feasible = centres[covers & explained]
    if len(feasible) == 0:
        return centroid
    best = feasible[np.argmin(((feasible - np.array(centroid)) ** 2).sum(1))]
    return float(best[0]), float(best[1])


def _merge_fragments(groups: list[list[int]], kind: np.ndarray, region: np.ndarray, x: np.ndarray,
                     y: np.ndarray) -> list[list[int]]:
    """Join each smaller group to the nearest larger group of the same region whose joints it does
    not duplicate (a limb hidden under another person's drawing splits a skeleton in two)."""
    groups = sorted(groups, key=len, reverse=True)
    merged: list[list[int]] = []
    for group in groups:
        kinds = {int(kind[b]) for b in group}
        candidates = [m for m in merged if region[m[0]] == region[group[0]]
                      and not kinds & {int(kind[b]) for b in m}]
        if candidates:
            def gap(m: list[int]) -> float:
                return min(np.hypot(x[a] - x[b], y[a] - y[b]) for a in group for b in m)
            min(candidates, key=gap).extend(group)
        else:
            merged.append(list(group))
    return merged


def _visualize_skeleton(raw: RawArray, size: tuple[int, int] | None = None, **hints: Any) -> Frames:
    """The usual pose picture, for people (not the encoding, whose joint discs are sized to the frame so
    they survive resizing to a training size, and which make a small person a blob): each person's
    limbs as lines and joints as dots, both scaled to that person's height, in the encoding's colours."""
    skeleton = _check_raw(raw, 4, 3, "skeleton", "float (F, P, 17, 3) keypoints (x, y, v)").astype(np.float64)
    if size is None:
        raise ValueError("skeleton.visualize needs the frame size: pass size=(H, W)")
    skeleton = np.nan_to_num(skeleton, nan=0.0, posinf=-1e6, neginf=-1e6).clip(-1e6, 1e6)
    canvas = np.zeros((skeleton.shape[0], int(size[0]), int(size[1]), 3), np.uint8)
    for f, p in zip(*np.nonzero((skeleton[..., 2] >= 1).any(-1))):
        person = skeleton[f:f + 1, p:p + 1]
        visible = person[0, 0, person[0, 0, :, 2] >= 1]
        height = max(float(np.ptp(visible[:, 1])), 8.0)
        frames, centres, colours = _limb_samples(person)
        _stamp(canvas, frames + f, centres, colours, radius=max(0.5, height / 60))
        joints = np.nonzero(person[0, 0, :, 2] >= 1)[0]
        _stamp(canvas, np.full(len(joints), f), person[0, 0, joints, 1::-1], SKELETON_JOINT_COLOURS[joints],
               radius=max(1.0, height / 40))
    return canvas


# ----------------------------------------------------------------------------- densepose

def _encode_densepose(raw: RawArray, **_: Any) -> Frames:
    iuv = _check_raw(raw, 4, 3, "densepose", "float (F, H, W, 3) (I, U, V)").astype(np.float64)
    part = np.rint(np.nan_to_num(iuv[..., 0])).clip(0, 24)
    uv = np.nan_to_num(iuv[..., 1:]).clip(0.0, 1.0) * (part > 0)[..., None]
    return _to_uint8(np.concatenate([10.0 * part[..., None], 255.0 * uv], axis=-1))


def _decode_densepose(frames: Frames, **_: Any) -> RawArray:
    frames = _check_frames(frames, "densepose").astype(np.float32)
    part = np.rint(frames[..., 0] / 10.0).clip(0, 24)
    uv = frames[..., 1:] / 255.0 * (part > 0)[..., None]
    return np.concatenate([part[..., None], uv], axis=-1).astype(np.float32)


def _combine_densepose(samples: np.ndarray) -> Frames:
    """Two votes per pixel: body or background by majority (ties: background), then, on body pixels,
    the part most of the body votes name; UV is the mean of the samples that named that part. A
    one-level vote over the 25 labels would hand a pixel that most samples see as body, but split
    between neighbouring parts, to the background."""
    iuv = _decode_densepose(samples.reshape(-1, *samples.shape[2:])).reshape(*samples.shape[:-1], 3)
    parts = iuv[..., 0].astype(np.int64)
    body = 2 * (parts > 0).sum(0) > len(parts)
    part = np.where(body, _mode(parts, 25, skip=0), 0)
    agree = (parts == part[None]).astype(np.float32)
    uv = (iuv[..., 1:] * agree[..., None]).sum(0) / np.maximum(agree.sum(0), 1)[..., None]
    return _encode_densepose(np.concatenate([part[..., None].astype(np.float32), uv], axis=-1))


def _densepose_part_colours() -> np.ndarray:
    """24 hues spread round the circle, consecutive parts 7 steps apart so neighbours differ."""
    from matplotlib.colors import hsv_to_rgb

    hues = (np.arange(24) * 7 % 24) / 24.0
    hsv = np.stack([hues, np.full(24, 0.75), np.full(24, 1.0)], axis=1)
    return np.concatenate([np.zeros((1, 3)), hsv_to_rgb(hsv)])


def _visualize_densepose(raw: RawArray, **_: Any) -> Frames:
    """Parts in distinct hues, shaded by V, with U/V isolines every 1/8 (the usual DensePose look)."""
    iuv = np.asarray(raw, dtype=np.float64)
    part = np.rint(np.nan_to_num(iuv[..., 0])).clip(0, 24).astype(np.int64)
    u, v = iuv[..., 1].clip(0, 1), iuv[..., 2].clip(0, 1)
    colour = _densepose_part_colours()[part] * (0.7 + 0.3 * v)[..., None]
    isoline = (np.abs((u * 8 + 0.5) % 1 - 0.5) < 0.06) | (np.abs((v * 8 + 0.5) % 1 - 0.5) < 0.06)
    colour = np.where((isoline & (part > 0))[..., None], colour * 0.45, colour)
    return _to_uint8(colour * 255.0)


# ----------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class Modality:
    """One stream: how its raw ground truth becomes an RGB-like video and back.

    name: canonical name; aliases: other accepted spellings (e.g. the authors' `raft` for flow);
    prompt: the in-context modality prompt C_m; pixel_aligned: curriculum stage 1 (the modality is a
    dense per-pixel function of the frame); categorical: resample with nearest neighbour.
    """

    name: str
    aliases: tuple[str, ...]
    prompt: str
    pixel_aligned: bool
    categorical: bool
    encode_fn: Callable[..., Frames]
    decode_fn: Callable[..., RawArray]
    visualize_fn: Callable[..., Frames] | None = None
    combine_fn: Callable[[np.ndarray], Frames] = _combine_median

    def encode(self, raw: RawArray, **hints: Any) -> Frames:
        """Raw ground truth (WorldClip layout) -> uint8 video (F, H, W, 3)."""
        return self.encode_fn(raw, **hints)

    def decode(self, frames: Frames, **hints: Any) -> RawArray:
        """Any uint8 video (F, H, W, 3), a model's imperfect output included -> raw ground truth."""
        return self.decode_fn(frames, **hints)

    def combine(self, samples: np.ndarray | Sequence[Frames]) -> Frames:
        """K sampled videos of one clip (K, F, H, W, 3) uint8 -> one video: the test-time ensemble
        of an estimate: per-pixel median of continuous encodings, per-pixel vote of DensePose parts,
        the most typical sample (medoid) of segmentation and skeleton pictures."""
        samples = np.stack([_check_frames(f, self.name) for f in samples])
        return samples[0] if len(samples) == 1 else self.combine_fn(samples)

    def visualize(self, raw: RawArray, **hints: Any) -> Frames:
        """The field's usual picture of the raw data (identity where the encoding already is one)."""
        return (self.visualize_fn or self.encode_fn)(raw, **hints)

    def default_hints(self, raw: RawArray) -> dict[str, float]:
        """Per-clip hints to store with the clip so decode can invert encode (near, max_flow)."""
        if self.name == "depth":
            return {"near": depth_near(raw)}
        if self.name == "flow":
            return {"max_flow": default_max_flow(*np.shape(raw)[1:3])}
        return {}


MODALITIES: dict[str, Modality] = {m.name: m for m in (
    Modality("rgb", aliases=("video", "rgb_video"), prompt="rgb video", pixel_aligned=False, categorical=False,
             encode_fn=_encode_rgb, decode_fn=_decode_rgb),
    Modality("depth", aliases=("disparity",), prompt="depth map", pixel_aligned=True, categorical=False,
             encode_fn=_encode_depth, decode_fn=_decode_depth, visualize_fn=_visualize_depth),
    Modality("flow", aliases=("raft", "optical_flow"), prompt="optical flow", pixel_aligned=True, categorical=False,
             encode_fn=_encode_flow, decode_fn=_decode_flow, visualize_fn=_visualize_flow),
    Modality("segmentation", aliases=("seg", "mask"), prompt="instance segmentation mask", pixel_aligned=False,
             categorical=True, encode_fn=_encode_segmentation, decode_fn=_decode_segmentation,
             combine_fn=_combine_medoid),
    Modality("skeleton", aliases=("pose", "keypoints"), prompt="human skeleton", pixel_aligned=False,
             categorical=True, encode_fn=_encode_skeleton, decode_fn=_decode_skeleton,
             visualize_fn=_visualize_skeleton, combine_fn=_combine_medoid),
    Modality("densepose", aliases=("iuv",), prompt="densepose", pixel_aligned=True, categorical=True,
             encode_fn=_encode_densepose, decode_fn=_decode_densepose, visualize_fn=_visualize_densepose,
             combine_fn=_combine_densepose),
)}

STREAM_NAMES: tuple[str, ...] = tuple(MODALITIES)  # rgb first, then the five modalities
MODALITY_NAMES: tuple[str, ...] = STREAM_NAMES[1:]
STAGE1_MODALITIES: tuple[str, ...] = tuple(n for n in MODALITY_NAMES if MODALITIES[n].pixel_aligned)

_BY_ALIAS: dict[str, str] = {alias: m.name for m in MODALITIES.values() for alias in (m.name, *m.aliases)}


def canonical_name(name_or_alias: str) -> str:
    """Canonical stream name for a name or alias (case and surrounding space ignored)."""
    return get_modality(name_or_alias).name


def get_modality(name_or_alias: str) -> Modality:
    """Look a stream up by canonical name or alias; unknown names list every valid spelling."""
    key = str(name_or_alias).strip().lower()
    if key not in _BY_ALIAS:
        valid = "; ".join(f"{m.name} (aliases: {', '.join(m.aliases)})" for m in MODALITIES.values())
        raise ValueError(f"unknown modality {name_or_alias!r}; valid names: {valid}")
    return MODALITIES[_BY_ALIAS[key]]
