"""The skeleton picture: COCO-17 limbs as lines in dim colours, then joints as discs in bright colours,
every colour on the {0, 85, 170, 255}^3 grid; decoded by joining joint blobs along the skeleton graph.
Registered as the `skeleton` modality in `unityvideo.modalities`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from .pictures import Frames, RawArray, check_frames, check_raw, farthest_point_order, grid_colour, grid_index, \
    grid_palette_index

COCO_JOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
               "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
               "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")
COCO_LIMBS = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
              (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))

# Joints are bright (a channel at 255), limbs dim (max channel 170): all 36 + black lie on the
# 85-step grid, so any two are >= 85 apart and a pixel is classified by per-channel rounding.
_BRIGHT = [grid_colour(i) for i in range(64) if max(grid_colour(i)) == 255 and grid_colour(i) != (255, 255, 255)]
SKELETON_JOINT_COLOURS = np.array(farthest_point_order(_BRIGHT, [(0, 0, 0), (255, 255, 255)])[:17], np.uint8)
SKELETON_LIMB_COLOURS = np.array([grid_colour(i) for i in range(64) if max(grid_colour(i)) == 170], np.uint8)
assert len(SKELETON_LIMB_COLOURS) == len(COCO_LIMBS)

# Pixel classes of the skeleton picture: -1 background, 0..16 joints, 17 unknown colour, 18.. limbs.
_SKELETON_BACKGROUND, _SKELETON_OTHER, _SKELETON_LIMB0 = -1, 17, 18
_SKELETON_LUT = np.full(64, _SKELETON_OTHER, np.int64)  # grid index -> pixel class
_SKELETON_LUT[0] = _SKELETON_BACKGROUND
for _j, _colour in enumerate(SKELETON_JOINT_COLOURS):
    _SKELETON_LUT[grid_index(tuple(int(c) for c in _colour))] = _j
for _l, _colour in enumerate(SKELETON_LIMB_COLOURS):
    _SKELETON_LUT[grid_index(tuple(int(c) for c in _colour))] = _SKELETON_LIMB0 + _l
_IN_FRAME = np.zeros((3, 3, 3), bool)  # 8-connectivity inside a frame, none across frames
_IN_FRAME[1] = True


def skeleton_radius(height: int, width: int) -> int:
    """Joint disc radius of the skeleton encoding: max(1, round(min(H, W) / 32)), halves rounded up.
    (Format 1 had min(H, W) / 64: at 64 x 64 a one-pixel disc, which a blur of one pixel erases.)"""
    return max(1, int(np.floor(min(height, width) / 32 + 0.5)))


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


def encode_skeleton(raw: RawArray, size: tuple[int, int] | None = None, **_: Any) -> Frames:
    skeleton = check_raw(raw, 4, 3, "skeleton", "float (F, P, 17, 3) keypoints (x, y, v)").astype(np.float64)
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


@dataclass
class _JointBlobs:
    """The 8-connected blobs of each joint colour in a skeleton picture (index 0 = none)."""

    ids: np.ndarray        # (F, H, W) blob id per pixel
    kind: np.ndarray       # joint index of each blob
    count: np.ndarray      # pixels per blob
    x: np.ndarray          # centroid per blob
    y: np.ndarray
    frame: np.ndarray      # frame index per blob
    region: np.ndarray     # non-black region id per blob
    pixels: list           # (y, x) pixels per blob
    valid: np.ndarray      # large enough, in a large enough region


def _joint_blobs(classes: np.ndarray, radius: int) -> _JointBlobs:
    regions, n_regions = ndimage.label(classes != _SKELETON_BACKGROUND, structure=_IN_FRAME)
    disc_area = len(_disc_offsets(radius))
    # Small thresholds: nearest-neighbour downscaling may leave only a few pixels of a disc.
    region_ok = np.bincount(regions.ravel(), minlength=n_regions + 1) >= max(2, disc_area // 4)
    region_ok[0] = False
    ids, kind = _label_classes(classes, range(17))
    n_blobs = len(kind)
    f_idx, rows, cols = np.nonzero(ids)
    blob = ids[f_idx, rows, cols]
    count = np.bincount(blob, minlength=n_blobs)
    frame, region = np.zeros(n_blobs, np.int64), np.zeros(n_blobs, np.int64)
    frame[blob] = f_idx
    region[blob] = regions[f_idx, rows, cols]
    order = np.argsort(blob, kind="stable")
    pixels = np.split(np.stack([rows, cols], 1)[order], np.cumsum(count)[:-1])
    valid = (count >= max(1, disc_area // 8)) & region_ok[region]
    valid[0] = False
    return _JointBlobs(ids, kind, count, x=np.bincount(blob, weights=cols, minlength=n_blobs) / np.maximum(count, 1),
                       y=np.bincount(blob, weights=rows, minlength=n_blobs) / np.maximum(count, 1),
                       frame=frame, region=region, pixels=pixels, valid=valid)


def _people_of(blobs: _JointBlobs, classes: np.ndarray) -> list[list[int]]:
    """Valid joint blobs grouped into persons: joined along the skeleton graph (two joint discs that
    touch, or a limb line touching both ends), then left-over fragments merged (`_merge_fragments`)."""
    groups = _UnionFind(len(blobs.kind))
    limb_ends = {frozenset(limb) for limb in COCO_LIMBS}
    valid, kind = blobs.valid, blobs.kind
    for a, b, _count in _touching(blobs.ids, blobs.ids):
        if valid[a] and valid[b] and frozenset((kind[a], kind[b])) in limb_ends:
            groups.union(int(a), int(b))
    limb_ids, limb_kind = _label_classes(classes, range(_SKELETON_LIMB0, _SKELETON_LIMB0 + len(COCO_LIMBS)))
    best_end: dict[tuple[int, int], int] = {}  # (limb blob, joint kind) -> the joint blob it touches most
    for line, joint, _count in _touching(limb_ids, blobs.ids):
        if valid[joint] and kind[joint] in COCO_LIMBS[limb_kind[line] - _SKELETON_LIMB0]:
            best_end.setdefault((int(line), int(kind[joint])), int(joint))
    for (line, end), joint in best_end.items():
        other = [j for (l2, k2), j in best_end.items() if l2 == line and k2 != end]
        if other:
            groups.union(joint, other[0])
    members: dict[int, list[int]] = {}
    for b in np.nonzero(valid)[0]:
        members.setdefault(groups.find(int(b)), []).append(int(b))
    return _merge_fragments(list(members.values()), kind, blobs.region, blobs.x, blobs.y)


def _person_keypoints(group: list[int], blobs: _JointBlobs, classes: np.ndarray, radius: int) -> np.ndarray:
    """(17, 3) keypoints of one person: per joint, the disc centre of its largest blob and nearby
    pieces of the same colour (another disc may have cut it)."""
    person = np.zeros((17, 3), np.float32)
    for kind in set(int(blobs.kind[b]) for b in group):
        pieces = [b for b in group if blobs.kind[b] == kind]
        main = max(pieces, key=lambda b: blobs.count[b])
        near = [b for b in pieces if np.hypot(blobs.x[b] - blobs.x[main], blobs.y[b] - blobs.y[main]) <= 2 * radius + 1]
        weight = blobs.count[near]
        centroid = (np.dot(weight, blobs.y[near]) / weight.sum(), np.dot(weight, blobs.x[near]) / weight.sum())
        pixels = np.concatenate([blobs.pixels[b] for b in near])
        y, x = _disc_centre(classes[blobs.frame[main]], pixels, _joint_radius(kind, radius), centroid)
        person[kind] = (x, y, 2.0)
    return person


def decode_skeleton(frames: Frames, persons: int | None = None, **_: Any) -> RawArray:
    """Skeleton picture -> keypoints (F, P, 17, 3), persons sorted by mean x, missing joints (0, 0, 0).

    Each joint is a blob of its colour; blobs are joined into persons along the skeleton graph (a
    limb-coloured line touching both end joints, or the two joint discs touching), and left-over
    fragments join the nearest person of the same non-black region that lacks their joints. So
    persons whose drawings touch stay apart. Joint = centroid of its blob (plus nearby pieces of the
    same colour, when another disc cut it); tiny blobs and regions are dropped as noise.
    """
    frames = check_frames(frames, "skeleton")
    n_frames, height, width, _ = frames.shape
    radius = skeleton_radius(height, width)
    classes = _SKELETON_LUT[grid_palette_index(frames)]
    blobs = _joint_blobs(classes, radius)
    people_per_frame: list[list[np.ndarray]] = [[] for _ in range(n_frames)]
    for group in _people_of(blobs, classes):
        people_per_frame[blobs.frame[group[0]]].append(_person_keypoints(group, blobs, classes, radius))
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


def visualize_skeleton(raw: RawArray, size: tuple[int, int] | None = None, **hints: Any) -> Frames:
    """The usual pose picture, for people (not the encoding, whose joint discs are sized to the frame so
    they survive resizing to a training size, and which make a small person a blob): each person's
    limbs as lines and joints as dots, both scaled to that person's height, in the encoding's colours."""
    skeleton = check_raw(raw, 4, 3, "skeleton", "float (F, P, 17, 3) keypoints (x, y, v)").astype(np.float64)
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
