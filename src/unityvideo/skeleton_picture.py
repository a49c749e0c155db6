"""The skeleton picture (format 3): a body-coordinate field, which a regression can learn.

Every drawn pixel says where on a standing body it lies: v, the height of the joint in a standing pose
(0 head, 1 ankles), and s, its side (+1 the person's left, -1 right, 0 centre). Joints are discs of
their own (v, s); limbs are lines whose (v, s) runs from one end joint's to the other's. The colour is
(1 - v, v, (1 + s) / 2) scaled so its largest channel is 255, and the code is read back from ratios of
channels. So a dimmed colour (a regression unsure whether a line is there) keeps its meaning and a
blurred one (unsure where it is) means a nearby part of the body, where format 2's arbitrary joint
colours averaged to a colour of no joint (docs/world.md measures both).

Decoded per connected drawing: each joint where its code is matched best; a drawing with several
people (the most common number of separate exact matches over the joints) is split along the skeleton
tree. Registered as the `skeleton` modality in `unityvideo.modalities`.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from .pictures import Frames, RawArray, check_frames, check_raw

COCO_JOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
               "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
               "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")
COCO_LIMBS = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
              (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))
_NEIGHBOURS = {j: [b if a == j else a for a, b in COCO_LIMBS if j in (a, b)] for j in range(17)}

# (v, s) of each COCO joint. Arms sit at |s| = 1 and hips and legs at 0.5, so a wrist hanging beside
# a hip keeps a code of its own; any two joints are >= 0.16 apart in the decoder's distance (ears and
# shoulders; eight times the rounding of a uint8 colour). The eyes sit below the nose so that the line
# between them does not pass through the nose's code.
SKELETON_CODES = np.array([(0.0, 0.0), (0.08, 0.5), (0.08, -0.5), (0.04, 1.0), (0.04, -1.0),
                           (0.2, 1.0), (0.2, -1.0), (0.4, 1.0), (0.4, -1.0), (0.6, 1.0), (0.6, -1.0),
                           (0.5, 0.5), (0.5, -0.5), (0.75, 0.5), (0.75, -0.5), (1.0, 0.5), (1.0, -0.5)])
SIDE_WEIGHT = 0.5      # s spans [-1, 1], v [0, 1]: the decoder's distance weighs s by half
DRAWN_LEVEL = 40       # a pixel whose largest channel is below this is background
EXACT_MATCH = 0.02     # code distance of a pixel painted with the joint's own colour (uint8 rounding)
NEAR_MATCH = 0.04      # a joint's pixels: within this of its best match in the drawing ...
FAR_MATCH = 0.1        # ... unless even that is further than this: the joint is missing (the codes of
                       # other joints and of limbs not ending at it lie >= 0.12 from its own)
LIMB_MARGIN = 0.03     # limb codes stay this far from their end joints' (> EXACT_MATCH)
_IN_FRAME = np.ones((3, 3), bool)  # 8-connectivity


def code_colours(codes: np.ndarray) -> np.ndarray:
    """(..., 2) body codes (v, s) -> uint8 (..., 3) colours."""
    v, side = codes[..., 0], codes[..., 1]
    weights = np.stack([1 - v, v, (1 + side) / 2], -1)
    return np.rint(255 * weights / weights.max(-1, keepdims=True)).astype(np.uint8)


def colour_codes(frames: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) colours -> float32 (..., 2) body codes; brightness does not matter."""
    c = frames.astype(np.float32)
    red_green = np.maximum(c[..., 0] + c[..., 1], 1e-3)
    return np.stack([c[..., 1] / red_green, 2 * c[..., 2] / red_green - 1], -1)


SKELETON_JOINT_COLOURS = code_colours(SKELETON_CODES)


def _code_gap(gap: np.ndarray) -> np.ndarray:
    """Length of (..., 2) differences of body codes, s weighed by SIDE_WEIGHT."""
    return np.sqrt(gap[..., 0] ** 2 + (SIDE_WEIGHT * gap[..., 1]) ** 2)


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
    """Points every 1/2 pixel along every drawable limb (both ends v >= 1): frame, (y, x), body code
    (interpolated between the end joints')."""
    starts, ends = np.array([a for a, _ in COCO_LIMBS]), np.array([b for _, b in COCO_LIMBS])
    frames, people, limbs = np.nonzero((skeleton[:, :, starts, 2] >= 1) & (skeleton[:, :, ends, 2] >= 1))
    start = skeleton[frames, people, starts[limbs], :2]
    end = skeleton[frames, people, ends[limbs], :2]
    steps = np.ceil(np.linalg.norm(end - start, axis=1) * 2).astype(np.int64) + 1
    owner = np.repeat(np.arange(len(limbs)), steps)
    first = np.cumsum(steps) - steps
    fraction = ((np.arange(steps.sum()) - first[owner]) / np.maximum(steps[owner] - 1, 1))[:, None]
    xy = start[owner] + fraction * (end[owner] - start[owner])
    code_a, code_b = SKELETON_CODES[starts[limbs]][owner], SKELETON_CODES[ends[limbs]][owner]
    # The code runs from LIMB_MARGIN past one end's to LIMB_MARGIN short of the other's, so no limb pixel
    # passes for a joint disc (which would pull the decoded joint along the limb).
    span = _code_gap(code_b - code_a)
    margin = np.minimum(LIMB_MARGIN / np.maximum(span, 1e-6), 0.25)[:, None]
    along = margin + (1 - 2 * margin) * fraction
    return frames[owner], xy[:, ::-1], code_a * (1 - along) + code_b * along


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
    frames, centres, codes = _limb_samples(skeleton)
    _stamp(canvas, frames, centres, code_colours(codes), radius=max(0.5, radius / 2))
    body = [j for j in range(17) if j not in SKELETON_FACE_JOINTS]
    for joints in (body, *([j] for j in reversed(SKELETON_FACE_JOINTS))):
        frames, people, which = np.nonzero(skeleton[:, :, joints, 2] >= 1)
        kinds = np.asarray(joints)[which]
        _stamp(canvas, frames, skeleton[frames, people, kinds, 1::-1], SKELETON_JOINT_COLOURS[kinds],
               _joint_radius(joints[0], radius))
    return canvas


# ----------------------------------------------------------------------------- decoding

def _code_distance(frames: np.ndarray) -> np.ndarray:
    """(F, H, W, 17) distance of each pixel's body code to each joint's."""
    return _code_gap(colour_codes(frames)[..., None, :] - SKELETON_CODES.astype(np.float32))


@dataclass
class _Drawing:
    """One connected drawing of one frame: its pixels, their brightness and code distances."""

    ys: np.ndarray
    xs: np.ndarray
    level: np.ndarray        # largest channel per pixel
    distance: np.ndarray     # (pixels, 17)
    classes: np.ndarray      # the frame's (H, W) map: joint where painted exactly, 17 other, -1 background
    radius: int


def _candidates(drawing: _Drawing, joint: int) -> list[tuple[float, float, float]]:
    """Where `joint` may be in the drawing, as (pixels, x, y) per separate group of its best-matching
    pixels (pieces closer than a disc's width are one group: noise breaks a disc into pieces); a group
    of exact matches is located by its disc centre (`_disc_centre`)."""
    distance = drawing.distance[:, joint]
    best = distance.min()
    if best > FAR_MATCH:
        return []
    exact = best < EXACT_MATCH
    chosen = distance < EXACT_MATCH if exact else distance <= best + NEAR_MATCH
    ys, xs, level = drawing.ys[chosen], drawing.xs[chosen], drawing.level[chosen]
    mask = np.zeros(drawing.classes.shape, bool)
    mask[ys, xs] = True
    pieces = ndimage.label(mask, structure=_IN_FRAME)[0][ys, xs]
    groups = _nearby_pieces(pieces, ys, xs, 2 * drawing.radius + 1)
    found = []
    for group in range(groups.max() + 1):
        here = groups == group
        weight = level[here]
        y, x = np.dot(weight, ys[here]) / weight.sum(), np.dot(weight, xs[here]) / weight.sum()
        if exact:
            pixels = np.stack([ys[here], xs[here]], 1)
            y, x = _disc_centre(drawing.classes, pixels, _joint_radius(joint, drawing.radius), (y, x))
        found.append((float(here.sum()), float(x), float(y)))
    return found


def _nearby_pieces(pieces: np.ndarray, ys: np.ndarray, xs: np.ndarray, reach: float) -> np.ndarray:
    """Group id (0..) per pixel: pieces (labels 1..) join, largest first, the first group whose first
    piece's centroid lies within `reach` pixels of theirs."""
    sizes = np.bincount(pieces)
    centres = np.stack([np.bincount(pieces, ys), np.bincount(pieces, xs)], 1) / np.maximum(sizes, 1)[:, None]
    group_of = np.zeros(len(sizes), np.int64)
    heads: list[int] = []
    for piece in np.argsort(-sizes[1:], kind="stable") + 1:
        near = [g for g, head in enumerate(heads) if np.hypot(*(centres[piece] - centres[head])) <= reach]
        if near:
            group_of[piece] = near[0]
        else:
            group_of[piece] = len(heads)
            heads.append(int(piece))
    return group_of[pieces]


def _people(candidates: list[list[tuple[float, float, float]]]) -> np.ndarray:
    """(people, 17, 3) keypoints of one drawing. The number of people is the most common number of
    candidates over the joints that have any; with one, each joint takes its largest candidate; with
    several, joints are assigned along the skeleton tree (each child's candidates to the people by
    distance to the parent), starting from the joint with that many candidates (else more: its largest)
    and the most pixels."""
    counts = np.array([len(c) for c in candidates])
    if not counts.any():
        return np.zeros((0, 17, 3), np.float32)
    n_people = int(np.median(counts[counts > 0]))  # >= 1: every count in it is
    people = np.zeros((n_people, 17, 3), np.float32)
    if n_people == 1:
        for joint, found in enumerate(candidates):
            if found:
                _, x, y = max(found)
                people[0, joint] = (x, y, 2)
        return people
    root = max((j for j in range(17) if counts[j] >= n_people), key=lambda j: (counts[j] == n_people,
                                                                                sum(a for a, _, _ in candidates[j])))
    for p, (_, x, y) in enumerate(sorted(candidates[root], reverse=True)[:n_people]):
        people[p, root] = (x, y, 2)
    seen, queue = {root}, deque([root])
    while queue:
        parent = queue.popleft()
        for child in _NEIGHBOURS[parent]:
            if child in seen:
                continue
            seen.add(child)
            queue.append(child)
            placed = np.nonzero(people[:, parent, 2] > 0)[0]
            if not candidates[child] or not len(placed):
                continue
            points = np.array([(x, y) for _, x, y in candidates[child]])
            cost = np.linalg.norm(people[placed, None, parent, :2] - points[None], axis=-1)
            for row, col in zip(*linear_sum_assignment(cost)):
                people[placed[row], child] = (*points[col], 2)
    return people


def decode_skeleton(frames: Frames, persons: int | None = None, **_: Any) -> RawArray:
    """Skeleton picture -> keypoints (F, P, 17, 3), persons sorted by mean x, missing joints (0, 0, 0)."""
    frames = check_frames(frames, "skeleton")
    n_frames, height, width, _ = frames.shape
    radius = skeleton_radius(height, width)
    min_pixels = max(2, len(_disc_offsets(radius)) // 4)  # a lone face joint is a smaller disc
    level = frames.max(-1)
    drawn = level >= DRAWN_LEVEL
    distance = _code_distance(frames)
    nearest = distance.min(-1)
    classes = np.where(drawn & (nearest < EXACT_MATCH), distance.argmin(-1), np.where(drawn, 17, -1))
    people_per_frame: list[list[np.ndarray]] = []
    for f in range(n_frames):
        regions = ndimage.label(drawn[f], structure=_IN_FRAME)[0]
        found = []
        pixels = ndimage.value_indices(regions, ignore_value=0)  # one pass, not one scan per region
        for ys, xs in (pixels[r] for r in sorted(pixels)):
            if len(ys) >= min_pixels:
                drawing = _Drawing(ys, xs, level[f, ys, xs].astype(np.float32), distance[f, ys, xs], classes[f], radius)
                found.extend(p for p in _people([_candidates(drawing, j) for j in range(17)]) if (p[:, 2] > 0).any())
        people_per_frame.append(sorted(found, key=lambda p: float(p[p[:, 2] > 0, 0].mean())))
    most = max((len(p) for p in people_per_frame), default=0)
    n_persons = most if persons is None else int(persons)
    out = np.zeros((n_frames, n_persons, 17, 3), np.float32)
    for f, found in enumerate(people_per_frame):
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
        frames, centres, codes = _limb_samples(person)
        _stamp(canvas, frames + f, centres, code_colours(codes), radius=max(0.5, height / 60))
        joints = np.nonzero(person[0, 0, :, 2] >= 1)[0]
        _stamp(canvas, np.full(len(joints), f), person[0, 0, joints, 1::-1], SKELETON_JOINT_COLOURS[joints],
               radius=max(1.0, height / 40))
    return canvas
