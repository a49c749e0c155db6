"""Registry of the streams UnityVideo learns: RGB and five visual sub-modalities.

Every modality turns its raw ground truth (the `WorldClip` arrays, see CONTRACT) into an RGB-like
uint8 video that a video VAE can encode, and back. The encodings are chosen so that a round trip
through a lossless video file is (near-)exact and a model's imperfect output still decodes:

    depth         grey disparity near/depth, sub-LSB offsets across R, G, B (1/765 steps); sky = 0
    flow          R, G = 128 + 127.5 * clip(dx|dy / max_flow, -1, 1), B = 128;
                  max_flow defaults to max(H, W) / 8 pixels
    segmentation  fixed 64-colour palette on the {0, 85, 170, 255}^3 grid, id 0 = black
    skeleton      COCO-17 limbs as lines, then joints as discs, coloured by a body code (height in
                  a standing pose, side) read from channel ratios; decoded where each joint's code
                  matches best, people split along the skeleton tree
    densepose     part I as a cell of a 5x5 grid over (R, G) (cell centres 57.75 apart), U and V as
                  offsets of +-12 inside the cell, B = 255 on the body; background black

Every encode/decode/visualize accepts extra keyword hints and ignores those it does not use, so a
caller may pass the same hints (near=, max_flow=, size=, persons=) to every modality.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .pictures import Frames, RawArray, check_frames, check_raw, farthest_point_order, grid_colour, grid_index, \
    grid_palette_index, to_uint8
from .skeleton_picture import (COCO_JOINTS, COCO_LIMBS, SKELETON_CODES, SKELETON_JOINT_COLOURS, decode_skeleton,
                               encode_skeleton, skeleton_radius, visualize_skeleton)

__all__ = [
    "Modality", "MODALITIES", "MODALITY_NAMES", "STAGE1_MODALITIES", "STREAM_NAMES",
    "get_modality", "canonical_name", "depth_near", "default_max_flow", "picture_hints", "skeleton_radius",
    "SEGMENTATION_PALETTE", "SKELETON_JOINT_COLOURS", "SKELETON_CODES", "COCO_JOINTS", "COCO_LIMBS",
    "flow_to_colour", "DENSEPOSE_CELL_STEP", "DENSEPOSE_UV_SPAN", "ENCODING_VERSIONS", "check_encodings", "stale_encodings",
]

# ----------------------------------------------------------------------------- ensembles

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
    return to_uint8(np.median(samples.astype(np.float32), axis=0))


def _combine_medoid(samples: np.ndarray) -> Frames:
    """Palette pictures (segmentation, skeleton): the sample whose colours disagree least with the
    others'. A per-pixel vote would mix instances that two samples colour differently (instance
    colours are arbitrary) and erase joint discs and limbs that the samples draw a pixel apart."""
    classes = grid_palette_index(samples).reshape(len(samples), -1)
    disagreement = [(classes != classes[k]).sum() for k in range(len(samples))]
    return samples[int(np.argmin(disagreement))]

# ----------------------------------------------------------------------------- rgb

def _encode_rgb(raw: RawArray, **_: Any) -> Frames:
    raw = check_raw(raw, 4, 3, "rgb", "uint8 (F, H, W, 3)")
    if raw.dtype != np.uint8:
        raise TypeError(f"rgb.encode expects uint8 frames, got dtype {raw.dtype}")
    return raw


def _decode_rgb(frames: Frames, **_: Any) -> RawArray:
    return check_frames(frames, "rgb")


# ----------------------------------------------------------------------------- depth

def depth_near(depth: np.ndarray) -> float:
    """The clip's smallest finite positive depth (the `near` hint of the depth encoding); 1.0 if none."""
    depth = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    return float(depth[valid].min()) if valid.any() else 1.0


def _encode_depth(raw: RawArray, near: float | None = None, **_: Any) -> Frames:
    depth = check_raw(raw, 3, None, "depth", "float (F, H, W) metres, +inf for sky").astype(np.float64)
    near = depth_near(depth) if near is None else float(near)
    if not near > 0:
        raise ValueError(f"depth.encode: near must be > 0, got {near}")
    valid = np.isfinite(depth) & (depth > 0)
    disparity = np.where(valid, near / np.where(valid, depth, 1.0), 0.0).clip(0.0, 1.0)
    # Channel k holds round(255 s + k/3 - 1/3); by Hermite's identity the channel sum is round(765 s).
    offsets = np.array([-1.0, 0.0, 1.0]) / 3.0
    return to_uint8(255.0 * disparity[..., None] + offsets)


def _decode_depth(frames: Frames, near: float | None = 1.0, **_: Any) -> RawArray:
    frames = check_frames(frames, "depth")
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
    lut = to_uint8(colormaps["inferno"](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0)
    image = lut[np.rint(disparity * 255).astype(np.int64)]
    image[~valid] = 0
    return image


# ----------------------------------------------------------------------------- flow

def default_max_flow(height: int, width: int) -> float:
    """Default flow range of the encoding: max(H, W) / 8 pixels (larger flows saturate)."""
    return max(height, width) / 8.0


def picture_hints(size: Sequence[int], near: float | None = None, max_flow: float | None = None) -> dict[str, Any]:
    """The keyword hints of every encode / decode / visualize (each reads its own and ignores the rest):
    the frame size (skeleton), depth's `near` (None: 1, relative depth) and flow's range (None: the
    default for the size)."""
    height, width = int(size[0]), int(size[1])
    return {"size": (height, width), "near": 1.0 if near is None else float(near),
            "max_flow": default_max_flow(height, width) if max_flow is None else float(max_flow)}


def _encode_flow(raw: RawArray, max_flow: float | None = None, **_: Any) -> Frames:
    flow = check_raw(raw, 4, 2, "flow", "float (F, H, W, 2) pixels (dx, dy)").astype(np.float64)
    max_flow = default_max_flow(*flow.shape[1:3]) if max_flow is None else float(max_flow)
    scaled = np.nan_to_num(flow / max_flow, nan=0.0).clip(-1.0, 1.0)
    blue = np.full(flow.shape[:-1] + (1,), 128.0)
    return to_uint8(np.concatenate([128.0 + 127.5 * scaled, blue], axis=-1))


def _decode_flow(frames: Frames, max_flow: float | None = None, **_: Any) -> RawArray:
    frames = check_frames(frames, "flow")
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
    return to_uint8(colour * 255.0)


def _visualize_flow(raw: RawArray, max_flow: float | None = None, **_: Any) -> Frames:
    return flow_to_colour(raw, max_flow)


# ----------------------------------------------------------------------------- segmentation

def _segmentation_palette() -> np.ndarray:
    """64 colours on the {0, 85, 170, 255}^3 grid (pairwise distance >= 85): black for the
    background, then vivid hues for the first instances, then the rest in max-min order."""
    vivid = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
             (255, 170, 0), (170, 0, 255), (0, 255, 170), (255, 0, 170), (170, 255, 0), (0, 170, 255)]
    used = {(0, 0, 0), *vivid}
    rest = [grid_colour(i) for i in range(64) if grid_colour(i) not in used]
    return np.array([(0, 0, 0), *vivid, *farthest_point_order(rest, [(0, 0, 0), *vivid])], np.uint8)


SEGMENTATION_PALETTE = _segmentation_palette()
_SEGMENTATION_LUT = np.zeros(64, np.uint8)  # grid index -> instance id
_SEGMENTATION_LUT[[grid_index(tuple(int(c) for c in col)) for col in SEGMENTATION_PALETTE]] = np.arange(64)


def _encode_segmentation(raw: RawArray, **_: Any) -> Frames:
    ids = check_raw(raw, 3, None, "segmentation", "integer ids (F, H, W)")
    if ids.size and (ids.min() < 0 or ids.max() >= len(SEGMENTATION_PALETTE)):
        raise ValueError(f"segmentation.encode: instance ids must lie in 0..{len(SEGMENTATION_PALETTE) - 1}, "
                         f"got {ids.min()}..{ids.max()}; renumber instances per clip")
    return SEGMENTATION_PALETTE[ids.astype(np.int64)]


def _decode_segmentation(frames: Frames, **_: Any) -> RawArray:
    return _SEGMENTATION_LUT[grid_palette_index(check_frames(frames, "segmentation"))]

# ----------------------------------------------------------------------------- densepose

# The part is a cell of a 5x5 grid over (R, G), U and V a small offset inside the cell, B a body flag.
# A regression's blur between two parts stays between their cells and decodes to one of them, where a
# single-channel code (R = 10 I, the IUV file layout) turns any error over 5 levels into another part.
DENSEPOSE_CELL_STEP = (255.0 - 24.0) / 4      # cell centres 12, 69.75, ..., 243
DENSEPOSE_UV_SPAN = 24.0                      # U, V in [0, 1] move R, G by -12..+12 around the centre


def _densepose_cells(part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grid row and column of parts 1..24 (row-major: 1..5 in row 0, ..., 21..24 in row 4)."""
    cell = np.maximum(part.astype(np.int64) - 1, 0)
    return cell // 5, cell % 5


def _encode_densepose(raw: RawArray, **_: Any) -> Frames:
    iuv = check_raw(raw, 4, 3, "densepose", "float (F, H, W, 3) (I, U, V)").astype(np.float64)
    part = np.rint(np.nan_to_num(iuv[..., 0])).clip(0, 24)
    uv = np.nan_to_num(iuv[..., 1:]).clip(0.0, 1.0)
    row, col = _densepose_cells(part)
    centre = 12.0 + DENSEPOSE_CELL_STEP * np.stack([row, col], axis=-1)
    rg = centre + DENSEPOSE_UV_SPAN * (uv - 0.5)
    body = (part > 0)[..., None]
    return to_uint8(np.concatenate([rg, np.full(part.shape + (1,), 255.0)], axis=-1) * body)


def _decode_densepose(frames: Frames, **_: Any) -> RawArray:
    """Body where B >= 128, the part of the nearest cell (per-channel rounding on the product grid), U
    and V from the offset inside it."""
    frames = check_frames(frames, "densepose").astype(np.float32)
    cells = np.rint((frames[..., :2] - 12.0) / DENSEPOSE_CELL_STEP).clip(0, 4)
    body = frames[..., 2] >= 128
    part = np.where(body, np.minimum(1 + 5 * cells[..., 0] + cells[..., 1], 24), 0)
    offset = frames[..., :2] - (12.0 + DENSEPOSE_CELL_STEP * cells)
    uv = (offset / DENSEPOSE_UV_SPAN + 0.5).clip(0.0, 1.0) * body[..., None]
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
    return to_uint8(colour * 255.0)


# ----------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class Modality:
    """One stream: how its raw ground truth becomes an RGB-like video and back.

    name: canonical name; aliases: other accepted spellings (e.g. the authors' `raft` for flow);
    prompt: the in-context modality prompt C_m; pixel_aligned: curriculum stage 1 (the modality is a
    dense per-pixel function of the frame); categorical: resample with nearest neighbour; version: of the
    picture format, raised whenever encode changes, so that data and checkpoints made with another
    format are refused instead of misread (densepose 2: the grid code, 1 was R = 10 I; skeleton 3: the
    body-code colours, 2 had a fixed colour per joint and limb with joint discs of radius min(H, W) / 32,
    1 with / 64).
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
    version: int = 1

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
        samples = np.stack([check_frames(f, self.name) for f in samples])
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
             categorical=True, encode_fn=encode_skeleton, decode_fn=decode_skeleton,
             visualize_fn=visualize_skeleton, combine_fn=_combine_medoid, version=3),
    Modality("densepose", aliases=("iuv",), prompt="densepose", pixel_aligned=True, categorical=True,
             encode_fn=_encode_densepose, decode_fn=_decode_densepose, visualize_fn=_visualize_densepose,
             combine_fn=_combine_densepose, version=2),
)}

STREAM_NAMES: tuple[str, ...] = tuple(MODALITIES)  # rgb first, then the five modalities
MODALITY_NAMES: tuple[str, ...] = STREAM_NAMES[1:]
STAGE1_MODALITIES: tuple[str, ...] = tuple(n for n in MODALITY_NAMES if MODALITIES[n].pixel_aligned)

ENCODING_VERSIONS: dict[str, int] = {n: m.version for n, m in MODALITIES.items()}


def stale_encodings(recorded: dict[str, int], names: Sequence[str]) -> dict[str, int]:
    """The streams of `names` whose recorded picture format (`recorded`: name -> version; missing = 1,
    from before versions were kept) differs from this version's, with the version recorded."""
    return {n: recorded.get(n, 1) for n in names if recorded.get(n, 1) != ENCODING_VERSIONS[n]}


def check_encodings(recorded: dict[str, int], names: Sequence[str], source: str, fix: str) -> None:
    """Refuse streams whose picture format differs from this version's encoders and decoders."""
    stale = stale_encodings(recorded, names)
    if stale:
        found = ", ".join(f"{n} format {v} (this version reads {ENCODING_VERSIONS[n]})" for n, v in stale.items())
        raise ValueError(f"{source} was made with another picture format: {found}; {fix}")


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
