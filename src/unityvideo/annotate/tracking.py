"""Consistent ids over time: match each frame's detections (masks or boxes) to the tracks of the
frames before by IoU (Hungarian assignment), so instance 3 stays instance 3 for the whole clip.

A track survives `max_age` frames without a match (a person hidden behind a post keeps its id); ids
run 1, 2, 3, ... in order of first appearance and are capped at `max_ids` (the segmentation palette
holds 63 instances): when every id is taken, the longest-lost track's id is reused, and detections
that still find no id are dropped and counted in `tracker.dropped`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["mask_iou", "box_iou", "mask_box_iou", "masks_to_boxes", "IoUTracker", "track_masks", "masks_to_id_map"]


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of two stacks of boolean masks (N, H, W) x (M, H, W) -> (N, M)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    a = np.asarray(a, bool).reshape(len(a), -1).astype(np.float32)
    b = np.asarray(b, bool).reshape(len(b), -1).astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return inter / np.maximum(union, 1.0)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of boxes (N, 4) x (M, 4) given as (x0, y0, x1, y1)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]).clip(0) * (z[:, 3] - z[:, 1]).clip(0)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return (inter / np.maximum(union, 1e-9)).astype(np.float32)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Bounding boxes (N, 4) (x0, y0, x1, y1) of boolean masks (N, H, W); empty masks give zeros."""
    boxes = np.zeros((len(masks), 4), np.float32)
    for k, mask in enumerate(masks):
        rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        if len(rows):
            boxes[k] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def mask_box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The larger of mask IoU and the IoU of the masks' boxes: a walking person's legs barely
    overlap from one frame to the next (mask IoU 0.2-0.6 at 10 fps), their box still does."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    return np.maximum(mask_iou(a, b), box_iou(masks_to_boxes(a), masks_to_boxes(b)))


@dataclass
class _Track:
    id: int
    item: np.ndarray  # the last matched mask or box
    last_seen: int
    box: np.ndarray  # its bounding box (x0, y0, x1, y1)
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2, np.float32))  # centre px per frame
    hits: int = 1

    def predicted_box(self, frame: int) -> np.ndarray:
        """Where the box should be now, moving on at its smoothed velocity (constant-velocity model)."""
        return self.box + np.tile(self.velocity * (frame - self.last_seen), 2)

    def matched(self, item: np.ndarray, box: np.ndarray, frame: int) -> None:
        step = (_centre(box) - _centre(self.box)) / max(frame - self.last_seen, 1)
        self.velocity = step if self.hits == 1 else 0.5 * (self.velocity + step)
        self.item, self.box, self.last_seen, self.hits = item, box, frame, self.hits + 1


def _centre(box: np.ndarray) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], np.float32)


@dataclass
class IoUTracker:
    """Frame-by-frame tracker. `update(items, iou_fn)` returns one id per item (0 = dropped).

    Each detection is matched (Hungarian) to a live track by the larger of `iou_fn` with the track's
    last item and the IoU of its box with the track's box moved on at the track's velocity (people
    walking at 10 fps move most of a leg's width per frame, so last-frame IoU alone splits them).
    Detections still unmatched then join unmatched tracks whose predicted centre lies within
    `gate` x the track's box diagonal and whose size is within 2x (a person HOG boxed differently,
    or found again after an occlusion)."""

    iou_threshold: float = 0.3
    max_age: int = 5
    max_ids: int = 63
    gate: float = 0.35
    tracks: list[_Track] = field(default_factory=list)
    dropped: int = 0
    frame: int = -1
    _next_id: int = 1
    _free: list[int] = field(default_factory=list)  # ids of tracks lost for good

    def update(self, items: np.ndarray, iou_fn=mask_iou) -> list[int]:
        """Match this frame's items to the live tracks; unmatched items start new tracks."""
        self.frame += 1
        alive = [t for t in self.tracks if self.frame - t.last_seen <= self.max_age]
        self._free += sorted({t.id for t in self.tracks} - {t.id for t in alive})
        self.tracks = alive
        items = np.asarray(items)
        boxes = items.astype(np.float32).reshape(-1, 4) if items.ndim == 2 else masks_to_boxes(items)
        ids = [0] * len(items)
        if len(items) and self.tracks:
            predicted = np.stack([t.predicted_box(self.frame) for t in self.tracks])
            score = np.maximum(iou_fn(np.stack([t.item for t in self.tracks]), items), box_iou(predicted, boxes))
            rows, cols = linear_sum_assignment(-score)
            for r, c in zip(rows, cols):
                if score[r, c] >= self.iou_threshold:
                    ids[c] = self.tracks[r].id
                    self.tracks[r].matched(items[c], boxes[c], self.frame)
            self._match_near(items, boxes, ids)
        for c, item in enumerate(items):
            if ids[c] == 0:
                ids[c] = self._new_id()
                if ids[c]:
                    self.tracks.append(_Track(ids[c], item, self.frame, boxes[c]))
                else:
                    self.dropped += 1
        return ids

    def _match_near(self, items: np.ndarray, boxes: np.ndarray, ids: list[int]) -> None:
        """Second pass: unmatched detections to unmatched tracks by predicted-centre distance."""
        free_tracks = [t for t in self.tracks if t.last_seen < self.frame]
        free_items = [c for c in range(len(items)) if ids[c] == 0]
        if not free_tracks or not free_items:
            return
        cost = np.full((len(free_tracks), len(free_items)), np.inf)
        for r, track in enumerate(free_tracks):
            box = track.predicted_box(self.frame)
            diagonal = float(np.hypot(box[2] - box[0], box[3] - box[1]))
            area = max(float((box[2] - box[0]) * (box[3] - box[1])), 1e-6)
            for k, c in enumerate(free_items):
                d = float(np.linalg.norm(_centre(boxes[c]) - _centre(box)))
                ratio = float((boxes[c][2] - boxes[c][0]) * (boxes[c][3] - boxes[c][1])) / area
                if d <= self.gate * diagonal and 0.5 <= ratio <= 2.0:
                    cost[r, k] = d / max(diagonal, 1e-6)
        finite = np.where(np.isfinite(cost), cost, 1e6)
        for r, k in zip(*linear_sum_assignment(finite)):
            if np.isfinite(cost[r, k]):
                c = free_items[k]
                ids[c] = free_tracks[r].id
                free_tracks[r].matched(items[c], boxes[c], self.frame)

    def _new_id(self) -> int:
        if self._next_id <= self.max_ids:
            self._next_id += 1
            return self._next_id - 1
        if self._free:
            return self._free.pop(0)
        lost = [t for t in self.tracks if t.last_seen < self.frame]
        if not lost:
            return 0
        oldest = min(lost, key=lambda t: t.last_seen)  # reuse the longest-lost id
        self.tracks.remove(oldest)
        return oldest.id


def masks_to_id_map(masks: np.ndarray, ids: list[int], scores: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """Paint masks (N, H, W) into one uint8 id map; where masks overlap the higher score wins."""
    out = np.zeros(shape, np.uint8)
    if len(masks) == 0:
        return out
    order = np.argsort(np.zeros(len(masks)) if scores is None else np.asarray(scores), kind="stable")
    for k in order:  # lowest score first, so the best mask is painted last
        if ids[k]:
            out[masks[k]] = ids[k]
    return out


def track_masks(frames_masks: list[np.ndarray], frames_scores: list[np.ndarray] | None = None,
                shape: tuple[int, int] | None = None, **tracker_options) -> tuple[np.ndarray, IoUTracker]:
    """Per-frame instance masks [(N_t, H, W) bool] -> a (F, H, W) uint8 id map with ids kept over time.
    tracker.frame_ids[t][k] is the id given to frames_masks[t][k] (0: dropped)."""
    if shape is None:
        shape = next((m.shape[1:] for m in frames_masks if len(m)), None)
        if shape is None:
            raise ValueError("track_masks: pass shape=(H, W) when no frame has a mask")
    tracker = IoUTracker(**tracker_options)
    tracker.frame_ids = []
    out = np.zeros((len(frames_masks), *shape), np.uint8)
    for t, masks in enumerate(frames_masks):
        masks = np.asarray(masks, bool).reshape(-1, *shape)
        ids = tracker.update(masks, mask_box_iou)
        tracker.frame_ids.append(ids)
        out[t] = masks_to_id_map(masks, ids, None if frames_scores is None else frames_scores[t], shape)
    return out, tracker
