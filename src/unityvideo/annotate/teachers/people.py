"""Finding people, built in: OpenCV's HOG people detector (Dalal & Triggs 2005, its SVM ships inside
OpenCV) plus person tracks over a clip.

MediaPipe's pose and person-segmentation models are made for one person filling the picture; on a
street or surveillance shot (people 80 px tall) they find nobody. So the built-in segmentation and
skeleton teachers run them on an upscaled square crop around every tracked HOG detection, and on
the whole frame when HOG finds nobody (close-ups, where HOG's 64x128 window does not fit).
The ViTPose teacher (top-down, it needs boxes) uses the same boxes.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..tracking import IoUTracker, box_iou

__all__ = ["PersonBoxes", "detect_people", "square_crop", "PEOPLE_CACHE"]


@dataclass
class PersonBoxes:
    """Per frame: boxes (N, 4) as (x0, y0, x1, y1), HOG scores (N,) and track ids (N,) >= 1."""

    boxes: list[np.ndarray]
    scores: list[np.ndarray]
    ids: list[np.ndarray]

    @property
    def track_ids(self) -> list[int]:
        return sorted({int(i) for ids in self.ids for i in ids})


def _nms(boxes: np.ndarray, scores: np.ndarray, overlap: float) -> np.ndarray:
    """Indices kept by non-maximum suppression on intersection over the *smaller* box's area (HOG
    also fires on a box around a person plus background, which plain IoU would keep)."""
    order = np.argsort(-scores)
    keep: list[int] = []
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for i in order:
        if all(_inter(boxes[i], boxes[j]) / max(min(area[i], area[j]), 1e-9) < overlap for j in keep):
            keep.append(int(i))
    return np.array(keep, np.int64)


def _inter(a: np.ndarray, b: np.ndarray) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0.0) * max(h, 0.0)


def _area(box: np.ndarray) -> float:
    return float(max(box[2] - box[0], 0) * max(box[3] - box[1], 0))


class _HOG:
    def __init__(self):
        import cv2

        if not hasattr(cv2, "HOGDescriptor"):
            raise ImportError(f"OpenCV {cv2.__version__} has no HOGDescriptor (removed in OpenCV 5); "
                              "install opencv-contrib-python<5 (the `annotate` extra pins it)")
        self.cv2 = cv2
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

    def __call__(self, frame: np.ndarray, upscale: float, min_score: float) -> tuple[np.ndarray, np.ndarray]:
        grey = self.cv2.cvtColor(frame, self.cv2.COLOR_RGB2GRAY)
        if upscale != 1.0:
            grey = self.cv2.resize(grey, None, fx=upscale, fy=upscale, interpolation=self.cv2.INTER_LINEAR)
        if grey.shape[0] < 128 or grey.shape[1] < 64:  # smaller than HOG's window (OpenCV would crash)
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        rects, weights = self.hog.detectMultiScale(grey, winStride=(8, 8), padding=(8, 8), scale=1.05)
        if len(rects) == 0:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        rects = np.asarray(rects, np.float32) / upscale
        boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], 1)
        scores = np.asarray(weights, np.float32).ravel()
        good = scores >= min_score
        boxes, scores = boxes[good], scores[good]
        keep = _nms(boxes, scores, overlap=0.6)
        return boxes[keep], scores[keep]


_HOG_INSTANCE: _HOG | None = None


class _Cache:
    """The last clip's detections, so the segmentation and skeleton teachers detect once."""

    def __init__(self):
        self.key: str | None = None
        self.value: PersonBoxes | None = None


PEOPLE_CACHE = _Cache()


def import_mediapipe(teacher: str):
    """mediapipe, or a TeacherUnavailable naming the built-in `teacher` that needs it."""
    from .base import TeacherUnavailable

    try:
        import mediapipe
    except ImportError as error:
        raise TeacherUnavailable(f"the built-in {teacher} teacher needs mediapipe==0.10.14 ({error}); "
                                 "pip install 'unityvideo[annotate]'") from None
    return mediapipe


def detect_people(frames: np.ndarray, upscale: float = 1.0, min_score: float = 0.3,
                  max_age: int = 8) -> PersonBoxes:
    """HOG person boxes in every frame, tracked over the clip (`IoUTracker`: IoU with the predicted box
    >= 0.2, else a near predicted centre, keeps an id; settings chosen on frames 0-199 of vtest.avi,
    benchmarks/tracking_vtest.py). A track
    HOG misses for up to `max_age` frames keeps a box where it should be now (its last box moved on
    at its velocity, score 0), so the teachers still look for that person (HOG's recall per frame is
    well below its recall per track)."""
    global _HOG_INSTANCE
    digest = hashlib.blake2b(np.ascontiguousarray(frames).data, digest_size=16).hexdigest()
    key = f"{digest}-{frames.shape}-{upscale}-{min_score}-{max_age}"
    if PEOPLE_CACHE.key == key:
        return PEOPLE_CACHE.value
    if _HOG_INSTANCE is None:
        _HOG_INSTANCE = _HOG()
    tracker = IoUTracker(iou_threshold=0.2, max_age=max_age, max_ids=63, gate=0.6)
    boxes, scores, ids = [], [], []
    for frame in frames:
        b, s = _HOG_INSTANCE(frame, upscale, min_score)
        track = np.array(tracker.update(b, box_iou), np.int64)
        keep = track > 0
        b, s, track = b[keep], s[keep], track[keep]
        missed = [(t, t.predicted_box(tracker.frame)) for t in tracker.tracks if t.last_seen < tracker.frame]
        missed = [(t, box) for t, box in missed if not any(_inter(box, d) / max(_area(box), 1e-9) > 0.5 for d in b)]
        if missed:
            b = np.concatenate([b, np.stack([box for _, box in missed])]).astype(np.float32)
            s = np.concatenate([s, np.zeros(len(missed), np.float32)])
            track = np.concatenate([track, [t.id for t, _ in missed]])
        boxes.append(b), scores.append(s), ids.append(track)
    PEOPLE_CACHE.key, PEOPLE_CACHE.value = key, PersonBoxes(boxes, scores, ids)
    return PEOPLE_CACHE.value


def square_crop(box: np.ndarray, height: int, width: int, margin: float = 1.2) -> tuple[int, int, int, int]:
    """An integer square window (x0, y0, x1, y1) around a box, `margin` x its longer side, clipped
    to the frame (MediaPipe's models expect a roughly square input with the person centred)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half = max(box[2] - box[0], box[3] - box[1]) * margin / 2
    x0, y0 = int(max(0, np.floor(cx - half))), int(max(0, np.floor(cy - half)))
    x1, y1 = int(min(width, np.ceil(cx + half))), int(min(height, np.ceil(cy + half)))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)
