"""Skeleton teachers: COCO-17 keypoints (F, P, 17, 3) as (x, y, v), persons kept in the same row
over the clip by IoU-tracking their keypoint boxes.

- `MediaPipePose` (built in): BlazePose (pose_landmark_full.tflite, shipped in mediapipe 0.10.14) on
  a crop around every tracked HOG person (whole frame when HOG finds nobody); its 33 landmarks are
  mapped to COCO-17. v = 2 where the landmark is in frame and visible (visibility >= 0.5), 1 in frame
  but likely occluded, 0 outside the frame.
- `TransformersViTPose`: ViTPose / ViTPose++ (top-down) from a local folder on the same person boxes;
  v = 2 where the keypoint score >= threshold, else 0 (not drawn).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..tracking import IoUTracker, box_iou
from .base import Annotation, Teacher, TeacherUnavailable, load_transformers, model_folder, resolve_device
from .people import detect_people, import_mediapipe, square_crop

__all__ = ["MediaPipePose", "TransformersViTPose", "BLAZEPOSE_TO_COCO", "persons_to_rows"]

# COCO-17 joint k is BlazePose landmark BLAZEPOSE_TO_COCO[k] (both use the subject's left/right).
BLAZEPOSE_TO_COCO = np.array([0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28])
CROP_SIZE = 256
MAX_PERSONS = 16


def _keypoint_box(person: np.ndarray) -> np.ndarray:
    seen = person[person[:, 2] > 0, :2]
    if len(seen) == 0:
        return np.zeros(4, np.float32)
    return np.concatenate([seen.min(0), seen.max(0)]).astype(np.float32)


def _dedupe(people: list[np.ndarray], overlap: float = 0.5) -> list[np.ndarray]:
    """Drop a person whose keypoint box overlaps a more confident one (two crops, one person)."""
    people = sorted(people, key=lambda p: -(p[:, 2] > 0).sum())
    kept: list[np.ndarray] = []
    for person in people:
        box = _keypoint_box(person)[None]
        if not kept or box_iou(box, np.stack([_keypoint_box(k) for k in kept])).max() < overlap:
            kept.append(person)
    return kept


def persons_to_rows(frames_people: list[list[np.ndarray]], max_persons: int = MAX_PERSONS) -> tuple[np.ndarray, int]:
    """Per-frame person keypoints [(17, 3), ...] -> (F, P, 17, 3): a track per row, rows in order of
    first appearance, P = number of tracks (at most max_persons; the rest counted as dropped)."""
    tracker = IoUTracker(iou_threshold=0.2, max_age=5, max_ids=max_persons)
    frames_ids = []
    for people in frames_people:
        boxes = np.stack([_keypoint_box(p) for p in people]) if people else np.zeros((0, 4), np.float32)
        frames_ids.append(tracker.update(boxes, box_iou))
    rows = max((max(ids) for ids in frames_ids if ids), default=0)
    out = np.zeros((len(frames_people), rows, 17, 3), np.float32)
    for t, (people, ids) in enumerate(zip(frames_people, frames_ids)):
        for person, track in zip(people, ids):
            if track:
                out[t, track - 1] = person
    return out, tracker.dropped


class MediaPipePose(Teacher):
    """BlazePose on HOG person crops, mapped to COCO-17 (see the module notes)."""

    modality = "skeleton"
    name = "mediapipe-pose-full+opencv-hog"

    def __init__(self, visibility: float = 0.5, hog_upscale: float = 1.0, complexity: int = 1):
        mp = import_mediapipe("skeleton")
        import cv2

        self._cv2 = cv2
        # Every crop is a new picture: static mode (no tracking between unrelated crops).
        self._pose = mp.solutions.pose.Pose(static_image_mode=True, model_complexity=complexity)
        self.visibility, self.hog_upscale = visibility, hog_upscale

    def _pose_in(self, frame: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray | None:
        x0, y0, x1, y1 = window
        crop = frame[y0:y1, x0:x1]
        if (x1 - x0) != CROP_SIZE or (y1 - y0) != CROP_SIZE:
            scale = CROP_SIZE / max(x1 - x0, y1 - y0)
            crop = self._cv2.resize(crop, None, fx=scale, fy=scale, interpolation=self._cv2.INTER_CUBIC)
        result = self._pose.process(np.ascontiguousarray(crop))
        if result.pose_landmarks is None:
            return None
        marks = np.array([(m.x, m.y, m.visibility) for m in result.pose_landmarks.landmark], np.float32)[BLAZEPOSE_TO_COCO]
        height, width = frame.shape[:2]
        x = x0 + marks[:, 0] * (x1 - x0)
        y = y0 + marks[:, 1] * (y1 - y0)
        inside = (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
        v = np.where(inside, np.where(marks[:, 2] >= self.visibility, 2.0, 1.0), 0.0)
        return np.stack([np.where(inside, x, 0), np.where(inside, y, 0), v], 1).astype(np.float32)

    def annotate(self, frames: np.ndarray) -> Annotation:
        height, width = frames.shape[1:3]
        people = detect_people(frames, upscale=self.hog_upscale)
        frames_people = []
        for frame, boxes in zip(frames, people.boxes):
            windows = [square_crop(b, height, width) for b in boxes] or [(0, 0, width, height)]
            found = [p for p in (self._pose_in(frame, w) for w in windows) if p is not None and (p[:, 2] > 0).any()]
            frames_people.append(_dedupe(found))
        skeleton, dropped = persons_to_rows(frames_people)
        return Annotation(skeleton, meta={"persons": skeleton.shape[1], "tracking_dropped": dropped})


class TransformersViTPose(Teacher):
    """ViTPose (VitPoseForPoseEstimation) from a local folder, top-down on tracked HOG person boxes
    (the whole frame is one box when HOG finds nobody)."""

    modality = "skeleton"

    def __init__(self, path: str | Path, device: str | None = None, threshold: float = 0.3, hog_upscale: float = 1.0):
        folder = model_folder(path, "--skeleton-model")
        self.device = resolve_device(device)
        self.threshold, self.hog_upscale = threshold, hog_upscale
        self._model, self._processor = load_transformers(folder, "--skeleton-model", "VitPoseForPoseEstimation", self.device)
        if self._model.config.num_labels < 17:
            raise TeacherUnavailable(f"--skeleton-model {folder}: predicts {self._model.config.num_labels} keypoints; "
                                     "a COCO-17 (or COCO-WholeBody) ViTPose is needed")
        backbone = getattr(self._model.config, "backbone_config", None)
        self._experts = int(getattr(backbone, "num_experts", 1) or 1)
        self.name = f"transformers-vitpose+opencv-hog:{folder.name}"

    def _frame(self, frame: np.ndarray, boxes: np.ndarray) -> list[np.ndarray]:
        import torch

        height, width = frame.shape[:2]
        if len(boxes) == 0:
            boxes = np.array([[0, 0, width, height]], np.float32)
        coco_boxes = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)  # x, y, w, h
        inputs = self._processor(images=frame, boxes=[coco_boxes.tolist()], return_tensors="pt").to(self.device)
        extra = {}
        if self._experts > 1:  # ViTPose++: pick the COCO expert
            extra["dataset_index"] = torch.zeros(len(coco_boxes), dtype=torch.long, device=self.device)
        outputs = self._model(**inputs, **extra)
        results = self._processor.post_process_pose_estimation(outputs, boxes=[coco_boxes.tolist()])[0]
        people = []
        for result in results:
            xy = result["keypoints"][:17].float().cpu().numpy()
            score = result["scores"][:17].float().cpu().numpy()
            inside = (xy[:, 0] >= 0) & (xy[:, 0] <= width - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= height - 1)
            v = np.where(inside & (score >= self.threshold), 2.0, 0.0)
            people.append(np.concatenate([xy * (v[:, None] > 0), v[:, None]], 1).astype(np.float32))
        return [p for p in people if (p[:, 2] > 0).any()]

    def annotate(self, frames: np.ndarray) -> Annotation:
        import torch

        people = detect_people(frames, upscale=self.hog_upscale)
        with torch.inference_mode():
            frames_people = [_dedupe(self._frame(f, b)) for f, b in zip(frames, people.boxes)]
        skeleton, dropped = persons_to_rows(frames_people)
        return Annotation(skeleton, meta={"persons": skeleton.shape[1], "tracking_dropped": dropped})
